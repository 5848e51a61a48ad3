//! The projections that keep the edge's read models: the catalogue with
//! stock (`edge-products`) and the orders (`edge-orders`). Each writes its
//! rows in the kit's transaction with its checkpoint, so it is applied once
//! and can be rebuilt from the beginning of the log.

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryTrait,
};
use serde::{Deserialize, Serialize};
use sluice_kit::{BatchOutcome, HandlerError, Item as Event, ProjectionCtx};
use sluice_proto::shop::accounts::v1::{ApiKeyCreated, ApiKeyRevoked};
use sluice_proto::shop::inventory::v1::{
    ProductCreated, ProductDeleted, ProductUpdated, ReservedLine, StockAdjusted, StockReleased,
    StockReserved,
};
use sluice_proto::shop::media::v1::{ImageRejected, ImageThumbnailed, ImageUploaded};
use sluice_proto::shop::orders::v1::{
    OrderCancellationRequested, OrderCancelled, OrderConfirmed, OrderPlaced,
};

use crate::tables::{api_keys, orders, product_images, products};

/// One line of an order, as stored and as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Item {
    /// The product.
    pub(crate) product_id: String,
    /// Units.
    pub(crate) quantity: i64,
    /// Unit price in minor units (0 until the order is priced).
    pub(crate) price_cents: i64,
}

/// When the event happened (µs since the epoch): the read models' times
/// come from the events, so a rebuild from the log gives the same rows.
fn at<S>(ctx: &ProjectionCtx<S>) -> i64 {
    micros(ctx.envelope())
}

fn need_id(id: &str) -> Result<(), HandlerError> {
    if id.is_empty() {
        return Err(HandlerError::Permanent("event without an id".into()));
    }
    Ok(())
}

/// On `ProductCreated`.
pub(crate) async fn product_created(
    ctx: ProjectionCtx<()>,
    p: ProductCreated,
) -> Result<(), HandlerError> {
    need_id(&p.product_id)?;
    products::Entity::insert(products::ActiveModel {
        id: Set(p.product_id),
        sku: Set(p.sku),
        name: Set(p.name),
        price_cents: Set(p.price_cents),
        currency: Set(p.currency),
        stock: Set(p.stock),
        updated_at: Set(at(&ctx)),
    })
    .on_conflict(
        OnConflict::column(products::Column::Id)
            .update_columns([
                products::Column::Sku,
                products::Column::Name,
                products::Column::PriceCents,
                products::Column::Currency,
                products::Column::Stock,
                products::Column::UpdatedAt,
            ])
            .to_owned(),
    )
    .exec_without_returning(ctx.db())
    .await?;
    Ok(())
}

/// On `ProductUpdated`.
pub(crate) async fn product_updated(
    ctx: ProjectionCtx<()>,
    p: ProductUpdated,
) -> Result<(), HandlerError> {
    need_id(&p.product_id)?;
    products::Entity::update_many()
        .col_expr(products::Column::Sku, Expr::value(p.sku))
        .col_expr(products::Column::Name, Expr::value(p.name))
        .col_expr(products::Column::PriceCents, Expr::value(p.price_cents))
        .col_expr(products::Column::Currency, Expr::value(p.currency))
        .col_expr(products::Column::UpdatedAt, Expr::value(at(&ctx)))
        .filter(products::Column::Id.eq(p.product_id))
        .exec(ctx.db())
        .await?;
    Ok(())
}

/// On `ProductDeleted`: the product and its images' rows (the files stay
/// in the media store).
pub(crate) async fn product_deleted(
    ctx: ProjectionCtx<()>,
    p: ProductDeleted,
) -> Result<(), HandlerError> {
    product_images::Entity::delete_many()
        .filter(product_images::Column::ProductId.eq(p.product_id.as_str()))
        .exec(ctx.db())
        .await?;
    products::Entity::delete_by_id(p.product_id)
        .exec(ctx.db())
        .await?;
    Ok(())
}

/// An image's status while its thumbnails are made.
pub(crate) const PROCESSING: &str = "processing";
/// An image's status once it has its thumbnails.
pub(crate) const READY: &str = "ready";
/// An image's status when it could not be decoded.
pub(crate) const REJECTED: &str = "rejected";

/// One thumbnail as the edge keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Thumb {
    /// Its key in the media store.
    pub(crate) key: String,
    /// `image/jpeg` or `image/png`.
    pub(crate) content_type: String,
}

/// On `ImageUploaded`: the image, processing.
pub(crate) async fn image_uploaded(
    ctx: ProjectionCtx<()>,
    i: ImageUploaded,
) -> Result<(), HandlerError> {
    need_id(&i.image_id)?;
    product_images::Entity::insert(product_images::ActiveModel {
        image_id: Set(i.image_id),
        product_id: Set(i.product_id),
        key: Set(i.key),
        content_type: Set(i.content_type),
        width: Set(i64::from(i.width)),
        height: Set(i64::from(i.height)),
        size_bytes: Set(i64::try_from(i.size_bytes).unwrap_or(i64::MAX)),
        thumbnails: Set("{}".to_owned()),
        status: Set(PROCESSING.to_owned()),
        created_at: Set(at(&ctx)),
    })
    .on_conflict(
        OnConflict::column(product_images::Column::ImageId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(ctx.db())
    .await?;
    Ok(())
}

/// On `ImageThumbnailed`: the image is ready, with its thumbnails by size.
pub(crate) async fn image_thumbnailed(
    ctx: ProjectionCtx<()>,
    i: ImageThumbnailed,
) -> Result<(), HandlerError> {
    let thumbs: std::collections::BTreeMap<String, Thumb> = i
        .thumbnails
        .into_iter()
        .map(|t| {
            (
                t.size,
                Thumb {
                    key: t.key,
                    content_type: t.content_type,
                },
            )
        })
        .collect();
    let thumbs = serde_json::to_string(&thumbs).map_err(HandlerError::permanent)?;
    product_images::Entity::update_many()
        .col_expr(product_images::Column::Thumbnails, Expr::value(thumbs))
        .col_expr(product_images::Column::Status, Expr::value(READY))
        .filter(product_images::Column::ImageId.eq(i.image_id))
        .exec(ctx.db())
        .await?;
    Ok(())
}

/// On `ImageRejected`: the image is not shown.
pub(crate) async fn image_rejected(
    ctx: ProjectionCtx<()>,
    i: ImageRejected,
) -> Result<(), HandlerError> {
    product_images::Entity::update_many()
        .col_expr(product_images::Column::Status, Expr::value(REJECTED))
        .filter(product_images::Column::ImageId.eq(i.image_id))
        .exec(ctx.db())
        .await?;
    Ok(())
}

/// Adds `delta` to the stock of `product`. Stock events are applied as
/// deltas, which commute, so events of different keys may apply in any
/// order.
async fn add_stock(ctx: &ProjectionCtx<()>, product: &str, delta: i64) -> Result<(), HandlerError> {
    products::Entity::update_many()
        .col_expr(
            products::Column::Stock,
            Expr::col(products::Column::Stock).add(delta),
        )
        .col_expr(products::Column::UpdatedAt, Expr::value(at(ctx)))
        .filter(products::Column::Id.eq(product))
        .exec(ctx.db())
        .await?;
    Ok(())
}

/// On `StockAdjusted`.
pub(crate) async fn stock_adjusted(
    ctx: ProjectionCtx<()>,
    s: StockAdjusted,
) -> Result<(), HandlerError> {
    add_stock(&ctx, &s.product_id, s.delta).await
}

async fn add_lines(
    ctx: &ProjectionCtx<()>,
    lines: &[ReservedLine],
    sign: i64,
) -> Result<(), HandlerError> {
    for l in lines {
        add_stock(ctx, &l.product_id, sign * i64::from(l.quantity)).await?;
    }
    Ok(())
}

/// On `StockReserved`: the units are taken.
pub(crate) async fn stock_reserved(
    ctx: ProjectionCtx<()>,
    s: StockReserved,
) -> Result<(), HandlerError> {
    add_lines(&ctx, &s.lines, -1).await
}

/// On `StockReleased`: the units are back.
pub(crate) async fn stock_released(
    ctx: ProjectionCtx<()>,
    s: StockReleased,
) -> Result<(), HandlerError> {
    add_lines(&ctx, &s.lines, 1).await
}

/// The orders projection's state: the cache of its rows, told what each
/// transaction changes.
pub(crate) type OrdersState = std::sync::Arc<crate::cache::RowCache<orders::Model>>;

/// µs since the epoch of an event's time.
fn micros(envelope: &sluice_proto::Envelope) -> i64 {
    i64::try_from(envelope.time.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// Rows per statement: 11 columns each stays well below SQLite's 32,766
/// bound parameters.
const RUN: usize = 1000;

/// `items` cut into runs of at most [`RUN`] without a repeated key, in
/// order: one statement may not change a row twice (PostgreSQL refuses),
/// and a repeated event must apply after the one before it.
fn runs<T>(items: Vec<(String, T)>) -> Vec<Vec<(String, T)>> {
    let mut runs: Vec<Vec<(String, T)>> = Vec::new();
    let mut keys = std::collections::HashSet::new();
    for (key, item) in items {
        if !keys.insert(key.clone()) || keys.len() > RUN || runs.is_empty() {
            keys.clear();
            keys.insert(key.clone());
            runs.push(Vec::new());
        }
        if let Some(run) = runs.last_mut() {
            run.push((key, item));
        }
    }
    runs
}

/// The items of a batch with an order id, and the outcome failing the others.
fn with_ids<T>(
    items: Vec<Event<T>>,
    id: impl Fn(&T) -> &str,
) -> (Vec<(String, Event<T>)>, BatchOutcome) {
    let mut outcome = BatchOutcome::ok();
    let mut kept = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let key = id(&item.event).to_owned();
        if key.is_empty() {
            outcome = outcome.fail(i, HandlerError::Permanent("event without an id".into()));
        } else {
            kept.push((key, item));
        }
    }
    (kept, outcome)
}

/// `OrderPlaced` in batches: the order, priced (created when the edge did
/// not take it, e.g. during a rebuild).
pub(crate) async fn order_placed_batch(
    ctx: ProjectionCtx<OrdersState>,
    items: Vec<Event<OrderPlaced>>,
) -> Result<BatchOutcome, HandlerError> {
    let changed = [
        orders::Column::Items,
        orders::Column::TotalCents,
        orders::Column::Currency,
        orders::Column::Step,
        orders::Column::UpdatedAt,
    ];
    upsert_orders(
        &ctx,
        items,
        |o| &o.order_id,
        changed,
        |id, o, now| {
            let lines: Vec<Item> = o
                .lines
                .iter()
                .map(|l| Item {
                    product_id: l.product_id.clone(),
                    quantity: i64::from(l.quantity),
                    price_cents: l.price_cents,
                })
                .collect();
            Ok(orders::ActiveModel {
                id: Set(id),
                customer_id: Set(o.customer_id),
                status: Set(sluice_orders::status::PENDING.to_owned()),
                step: Set("placed".to_owned()),
                items: Set(serde_json::to_string(&lines).map_err(HandlerError::permanent)?),
                total_cents: Set(o.total_cents),
                currency: Set(o.currency),
                reason: Set(String::new()),
                created_at: Set(now),
                updated_at: Set(now),
                version: Set(1),
            })
        },
    )
    .await
}

/// `OrderCancelled` in batches (an order not seen yet — one refused before
/// it was placed — is created cancelled).
pub(crate) async fn order_cancelled_batch(
    ctx: ProjectionCtx<OrdersState>,
    items: Vec<Event<OrderCancelled>>,
) -> Result<BatchOutcome, HandlerError> {
    let changed = [
        orders::Column::Status,
        orders::Column::Step,
        orders::Column::Reason,
        orders::Column::UpdatedAt,
    ];
    upsert_orders(
        &ctx,
        items,
        |o| &o.order_id,
        changed,
        |id, o, now| {
            Ok(orders::ActiveModel {
                id: Set(id),
                customer_id: Set(o.customer_id),
                status: Set(sluice_orders::status::CANCELLED.to_owned()),
                step: Set("cancelled".to_owned()),
                items: Set("[]".to_owned()),
                total_cents: Set(0),
                currency: Set(String::new()),
                reason: Set(o.reason),
                created_at: Set(now),
                updated_at: Set(now),
                version: Set(1),
            })
        },
    )
    .await
}

/// One order row per event, made by `row(order id, event, event time)`,
/// inserted with one statement per run of distinct orders, each built while
/// the one before runs; an order that exists takes the `changed` columns
/// from the new row and a version bump.
async fn upsert_orders<T, const N: usize>(
    ctx: &ProjectionCtx<OrdersState>,
    items: Vec<Event<T>>,
    id: impl Fn(&T) -> &str,
    changed: [orders::Column; N],
    row: impl Fn(String, T, i64) -> Result<orders::ActiveModel, HandlerError> + Send,
) -> Result<BatchOutcome, HandlerError>
where
    T: Send,
{
    let (kept, outcome) = with_ids(items, id);
    let backend = ctx.db().get_database_backend();
    let statements = runs(kept).into_iter().map(move |run| {
        let mut rows = Vec::with_capacity(run.len());
        for (id, item) in run {
            ctx.state().touch(&id);
            rows.push(row(id, item.event, micros(&item.envelope))?);
        }
        Ok::<_, HandlerError>(
            orders::Entity::insert_many(rows)
                .on_conflict(
                    OnConflict::column(orders::Column::Id)
                        .update_columns(changed)
                        .value(
                            orders::Column::Version,
                            Expr::col((orders::Entity, orders::Column::Version)).add(1),
                        )
                        .to_owned(),
                )
                .build(backend),
        )
    });
    sluice_kit::db::execute_pipelined(ctx.db(), statements).await?;
    Ok(outcome)
}

/// `OrderConfirmed` in batches: one update per run of distinct orders (an
/// order without a row is left alone).
pub(crate) async fn order_confirmed_batch(
    ctx: ProjectionCtx<OrdersState>,
    items: Vec<Event<OrderConfirmed>>,
) -> Result<BatchOutcome, HandlerError> {
    let (kept, outcome) = with_ids(items, |o| &o.order_id);
    for run in runs(kept) {
        let mut times = sea_orm::sea_query::CaseStatement::new();
        let mut ids = Vec::with_capacity(run.len());
        for (id, item) in &run {
            ctx.state().touch(id);
            times = times.case(
                orders::Column::Id.eq(id.as_str()),
                Expr::value(micros(&item.envelope)),
            );
            ids.push(id.clone());
        }
        orders::Entity::update_many()
            .col_expr(
                orders::Column::Status,
                Expr::value(sluice_orders::status::CONFIRMED),
            )
            .col_expr(orders::Column::Step, Expr::value("confirmed"))
            .col_expr(
                orders::Column::UpdatedAt,
                times.finally(Expr::col(orders::Column::UpdatedAt)).into(),
            )
            .col_expr(
                orders::Column::Version,
                Expr::col(orders::Column::Version).add(1),
            )
            .filter(orders::Column::Id.is_in(ids))
            .exec(ctx.db())
            .await?;
    }
    Ok(outcome)
}

/// On `OrderCancellationRequested`: still pending, with the finer step.
pub(crate) async fn cancellation_requested(
    ctx: ProjectionCtx<OrdersState>,
    o: OrderCancellationRequested,
) -> Result<(), HandlerError> {
    ctx.state().touch(&o.order_id);
    orders::Entity::update_many()
        .col_expr(orders::Column::Step, Expr::value("cancellation_requested"))
        .col_expr(orders::Column::UpdatedAt, Expr::value(at(&ctx)))
        .col_expr(
            orders::Column::Version,
            Expr::col(orders::Column::Version).add(1),
        )
        .filter(orders::Column::Id.eq(o.order_id))
        .filter(orders::Column::Status.eq(sluice_orders::status::PENDING))
        .exec(ctx.db())
        .await?;
    Ok(())
}

/// On `ApiKeyCreated`: the key is accepted (by its hash).
pub(crate) async fn api_key_created(
    ctx: ProjectionCtx<()>,
    k: ApiKeyCreated,
) -> Result<(), HandlerError> {
    need_id(&k.key_id)?;
    if k.key_hash.is_empty() {
        return Err(HandlerError::Permanent(format!(
            "API key {} has no hash",
            k.key_id
        )));
    }
    api_keys::Entity::insert(api_keys::ActiveModel {
        key_id: Set(k.key_id),
        account_id: Set(k.account_id),
        scopes: Set(k.scopes.join(" ")),
        key_hash: Set(k.key_hash),
        revoked: Set(false),
    })
    .on_conflict(
        OnConflict::column(api_keys::Column::KeyId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(ctx.db())
    .await?;
    Ok(())
}

/// On `ApiKeyRevoked`: the key is refused from now on.
pub(crate) async fn api_key_revoked(
    ctx: ProjectionCtx<()>,
    k: ApiKeyRevoked,
) -> Result<(), HandlerError> {
    api_keys::Entity::update_many()
        .col_expr(api_keys::Column::Revoked, Expr::value(true))
        .filter(api_keys::Column::KeyId.eq(k.key_id))
        .exec(ctx.db())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_a_repeated_key_and_keep_the_order() {
        let items: Vec<(String, u32)> = ["a", "b", "a", "c", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, k)| ((*k).to_owned(), i as u32))
            .collect();
        let keys: Vec<Vec<u32>> = runs(items)
            .into_iter()
            .map(|r| r.into_iter().map(|(_, i)| i).collect())
            .collect();
        assert_eq!(keys, vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
        let many: Vec<(String, ())> = (0..2500).map(|i| (i.to_string(), ())).collect();
        let sizes: Vec<usize> = runs(many).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
    }
}
