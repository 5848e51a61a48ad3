//! Product commands, answered by request/reply: create, update and delete
//! a product, adjust its stock. Each runs in one transaction with the event it emits; the
//! reply says what the product now is, or why not (`invalid`, `not_found`,
//! `conflict`).

use std::sync::Arc;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set, TransactionTrait};
use sluice_kit::HandlerError;
use sluice_kit::db::now_micros;
use sluice_proto::Envelope;
use sluice_proto::shop::inventory::v1::{
    AdjustStock, CreateProduct, DeleteProduct, Product, ProductCreated, ProductDeleted,
    ProductResult, ProductUpdated, StockAdjusted, UpdateProduct,
};

use crate::Inventory;
use crate::tables::products;

fn refused(code: &str, error: impl Into<String>) -> ProductResult {
    ProductResult {
        ok: false,
        error_code: code.to_owned(),
        error: error.into(),
        product: None,
    }
}

fn product(m: &products::Model) -> Product {
    Product {
        product_id: m.id.clone(),
        sku: m.sku.clone(),
        name: m.name.clone(),
        price_cents: m.price_cents,
        currency: m.currency.clone(),
        stock: m.stock,
    }
}

/// Emits `event` about `row` on `subject` in `txn`, commits, and answers
/// with the product as it now is.
async fn answer<E: prost::Message + prost::Name>(
    inv: &Inventory,
    txn: sea_orm::DatabaseTransaction,
    subject: &str,
    request: &Envelope,
    row: &products::Model,
    event: &E,
) -> Result<ProductResult, HandlerError> {
    let correlation = request.correlation_id.as_deref();
    let m = inv.emitter.event(subject, &row.id, event, correlation);
    inv.emitter.commit(txn, &[m]).await?;
    Ok(ProductResult {
        ok: true,
        product: Some(product(row)),
        ..ProductResult::default()
    })
}

/// After a write failed on the unique sku index: `conflict` when another
/// product holds `sku` now (a concurrent write won), else the failure.
async fn sku_taken_or(
    inv: &Inventory,
    sku: &str,
    e: sea_orm::DbErr,
) -> Result<ProductResult, HandlerError> {
    match products::Entity::find()
        .filter(products::Column::Sku.eq(sku))
        .one(&inv.db)
        .await?
    {
        Some(_) => Ok(refused("conflict", format!("sku {sku} already exists"))),
        None => Err(e.into()),
    }
}

/// Most units of a product (and the largest adjustment): far beyond any
/// real stock, far from overflowing a 64-bit sum.
pub const MAX_STOCK: i64 = 1_000_000_000_000;

/// Checks a product's catalogue data.
fn validate_data(sku: &str, name: &str, price_cents: i64, currency: &str) -> Result<(), String> {
    if sku.is_empty() || sku.chars().count() > 64 {
        return Err("sku must have 1 to 64 characters".into());
    }
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err("name must have 1 to 200 characters".into());
    }
    if price_cents < 0 {
        return Err("price_cents must not be negative".into());
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("currency must be a three-letter ISO 4217 code (EUR)".into());
    }
    Ok(())
}

fn validate(c: &CreateProduct) -> Result<(), String> {
    validate_data(&c.sku, &c.name, c.price_cents, &c.currency)?;
    if !(0..=MAX_STOCK).contains(&c.stock) {
        return Err(format!("stock must be between 0 and {MAX_STOCK}"));
    }
    Ok(())
}

/// `inventory.cmd.create_product`.
pub(crate) async fn create_product(
    inv: Arc<Inventory>,
    request: Envelope,
    c: CreateProduct,
) -> Result<ProductResult, HandlerError> {
    if let Err(e) = validate(&c) {
        return Ok(refused("invalid", e));
    }
    let txn = inv.db.begin().await?;
    let taken = products::Entity::find()
        .filter(products::Column::Sku.eq(c.sku.as_str()))
        .one(&txn)
        .await?;
    if taken.is_some() {
        return Ok(refused("conflict", format!("sku {} already exists", c.sku)));
    }
    let row = products::Model {
        id: uuid::Uuid::now_v7().to_string(),
        sku: c.sku.clone(),
        name: c.name.clone(),
        price_cents: c.price_cents,
        currency: c.currency.clone(),
        stock: c.stock,
        updated_at: now_micros(),
    };
    let insert = products::Entity::insert(products::ActiveModel {
        id: Set(row.id.clone()),
        sku: Set(row.sku.clone()),
        name: Set(row.name.clone()),
        price_cents: Set(row.price_cents),
        currency: Set(row.currency.clone()),
        stock: Set(row.stock),
        updated_at: Set(row.updated_at),
    })
    .exec_without_returning(&txn)
    .await;
    if let Err(e) = insert {
        // A concurrent create of the same sku won the unique index.
        let _ = txn.rollback().await;
        return sku_taken_or(&inv, &c.sku, e).await;
    }
    let event = ProductCreated {
        product_id: row.id.clone(),
        sku: row.sku.clone(),
        name: row.name.clone(),
        price_cents: row.price_cents,
        currency: row.currency.clone(),
        stock: row.stock,
    };
    answer(
        &inv,
        txn,
        &inv.subjects.product_created,
        &request,
        &row,
        &event,
    )
    .await
}

/// `inventory.cmd.update_product`: new catalogue data, the sku still
/// unique; the stock is left as it is.
pub(crate) async fn update_product(
    inv: Arc<Inventory>,
    request: Envelope,
    u: UpdateProduct,
) -> Result<ProductResult, HandlerError> {
    if let Err(e) = validate_data(&u.sku, &u.name, u.price_cents, &u.currency) {
        return Ok(refused("invalid", e));
    }
    let txn = inv.db.begin().await?;
    let exists = products::Entity::find_by_id(u.product_id.clone())
        .one(&txn)
        .await?
        .is_some();
    if !exists {
        return Ok(refused("not_found", format!("no product {}", u.product_id)));
    }
    let taken = products::Entity::find()
        .filter(products::Column::Sku.eq(u.sku.as_str()))
        .filter(products::Column::Id.ne(u.product_id.as_str()))
        .one(&txn)
        .await?;
    if taken.is_some() {
        return Ok(refused("conflict", format!("sku {} already exists", u.sku)));
    }
    let changed = products::Entity::update_many()
        .col_expr(products::Column::Sku, Expr::value(u.sku.clone()))
        .col_expr(products::Column::Name, Expr::value(u.name.clone()))
        .col_expr(products::Column::PriceCents, Expr::value(u.price_cents))
        .col_expr(products::Column::Currency, Expr::value(u.currency.clone()))
        .col_expr(products::Column::UpdatedAt, Expr::value(now_micros()))
        .filter(products::Column::Id.eq(u.product_id.as_str()))
        .exec(&txn)
        .await;
    let changed = match changed {
        Ok(r) => r.rows_affected,
        Err(e) => {
            // A concurrent write took the sku first (unique index).
            let _ = txn.rollback().await;
            return sku_taken_or(&inv, &u.sku, e).await;
        }
    };
    if changed == 0 {
        return Ok(refused("not_found", format!("no product {}", u.product_id)));
    }
    let Some(row) = products::Entity::find_by_id(u.product_id.clone())
        .one(&txn)
        .await?
    else {
        return Ok(refused("not_found", format!("no product {}", u.product_id)));
    };
    let event = ProductUpdated {
        product_id: row.id.clone(),
        sku: row.sku.clone(),
        name: row.name.clone(),
        price_cents: row.price_cents,
        currency: row.currency.clone(),
    };
    answer(
        &inv,
        txn,
        &inv.subjects.product_updated,
        &request,
        &row,
        &event,
    )
    .await
}

/// `inventory.cmd.delete_product`: the product leaves the catalogue (new
/// orders for it are rejected; reservations already made stay as they are).
pub(crate) async fn delete_product(
    inv: Arc<Inventory>,
    request: Envelope,
    d: DeleteProduct,
) -> Result<ProductResult, HandlerError> {
    let txn = inv.db.begin().await?;
    let Some(row) = products::Entity::find_by_id(d.product_id.clone())
        .one(&txn)
        .await?
    else {
        return Ok(refused("not_found", format!("no product {}", d.product_id)));
    };
    products::Entity::delete_by_id(row.id.clone())
        .exec(&txn)
        .await?;
    let event = ProductDeleted {
        product_id: row.id.clone(),
    };
    answer(
        &inv,
        txn,
        &inv.subjects.product_deleted,
        &request,
        &row,
        &event,
    )
    .await
}

/// `inventory.cmd.adjust_stock`.
pub(crate) async fn adjust_stock(
    inv: Arc<Inventory>,
    request: Envelope,
    a: AdjustStock,
) -> Result<ProductResult, HandlerError> {
    if a.delta == 0 || !(-MAX_STOCK..=MAX_STOCK).contains(&a.delta) {
        return Ok(refused(
            "invalid",
            format!("delta must be between -{MAX_STOCK} and {MAX_STOCK}, and not zero"),
        ));
    }
    let txn = inv.db.begin().await?;
    let changed = products::Entity::update_many()
        .col_expr(
            products::Column::Stock,
            Expr::col(products::Column::Stock).add(a.delta),
        )
        .col_expr(products::Column::UpdatedAt, Expr::value(now_micros()))
        .filter(products::Column::Id.eq(a.product_id.as_str()))
        .filter(products::Column::Stock.gte(a.delta.saturating_neg()))
        .filter(products::Column::Stock.lte(MAX_STOCK - a.delta))
        .exec(&txn)
        .await?
        .rows_affected;
    let Some(row) = products::Entity::find_by_id(a.product_id.clone())
        .one(&txn)
        .await?
    else {
        return Ok(refused("not_found", format!("no product {}", a.product_id)));
    };
    if changed == 0 {
        return Ok(refused(
            "invalid",
            format!(
                "stock of {} would go out of 0 to {MAX_STOCK} ({} now)",
                a.product_id, row.stock
            ),
        ));
    }
    let event = StockAdjusted {
        product_id: row.id.clone(),
        delta: a.delta,
        stock: row.stock,
    };
    answer(
        &inv,
        txn,
        &inv.subjects.stock_adjusted,
        &request,
        &row,
        &event,
    )
    .await
}
