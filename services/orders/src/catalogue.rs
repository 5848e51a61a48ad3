//! The price list: the orders service's copy of each product's price,
//! projected from the inventory's product events.

use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, EntityTrait};
use sluice_kit::{HandlerError, ProjectionCtx};
use sluice_proto::shop::inventory::v1::{ProductCreated, ProductDeleted, ProductUpdated};

use crate::tables::catalogue;

async fn upsert(
    ctx: &ProjectionCtx<()>,
    product_id: &str,
    price_cents: i64,
    currency: &str,
) -> Result<(), HandlerError> {
    if product_id.is_empty() {
        return Err(HandlerError::Permanent(
            "product event without an id".into(),
        ));
    }
    catalogue::Entity::insert(catalogue::ActiveModel {
        product_id: Set(product_id.to_owned()),
        price_cents: Set(price_cents),
        currency: Set(currency.to_owned()),
        deleted: Set(false),
    })
    .on_conflict(
        OnConflict::column(catalogue::Column::ProductId)
            .update_columns([
                catalogue::Column::PriceCents,
                catalogue::Column::Currency,
                catalogue::Column::Deleted,
            ])
            .to_owned(),
    )
    .exec_without_returning(ctx.db())
    .await?;
    Ok(())
}

/// On `ProductCreated`.
pub(crate) async fn created(ctx: ProjectionCtx<()>, p: ProductCreated) -> Result<(), HandlerError> {
    upsert(&ctx, &p.product_id, p.price_cents, &p.currency).await
}

/// On `ProductUpdated`: new orders are priced at the new price.
pub(crate) async fn updated(ctx: ProjectionCtx<()>, p: ProductUpdated) -> Result<(), HandlerError> {
    upsert(&ctx, &p.product_id, p.price_cents, &p.currency).await
}

/// On `ProductDeleted`: the product can no longer be ordered.
pub(crate) async fn deleted(ctx: ProjectionCtx<()>, p: ProductDeleted) -> Result<(), HandlerError> {
    if p.product_id.is_empty() {
        return Err(HandlerError::Permanent(
            "product event without an id".into(),
        ));
    }
    catalogue::Entity::insert(catalogue::ActiveModel {
        product_id: Set(p.product_id.clone()),
        price_cents: Set(0),
        currency: Set(String::new()),
        deleted: Set(true),
    })
    .on_conflict(
        OnConflict::column(catalogue::Column::ProductId)
            .update_column(catalogue::Column::Deleted)
            .to_owned(),
    )
    .exec_without_returning(ctx.db())
    .await?;
    Ok(())
}
