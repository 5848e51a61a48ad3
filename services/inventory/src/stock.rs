//! Reserving stock for placed orders (all lines or none) and releasing it
//! for cancelled ones.

use std::collections::BTreeMap;

use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set, TransactionTrait};
use sluice_kit::db::now_micros;
use sluice_kit::{Ctx, HandlerError};
use sluice_proto::shop::inventory::v1::{
    ReservedLine, StockRejected, StockReleased, StockReserved,
};
use sluice_proto::shop::orders::v1::{OrderCancelled, OrderPlaced};

use crate::Inventory;
use crate::tables::{products, reservations};

/// The lines of `order`, one per product (quantities of repeated products
/// added up), in product order so concurrent reservations lock rows in the
/// same order.
///
/// # Errors
/// Permanent: no lines, an empty product id, or a zero quantity.
fn lines(order: &OrderPlaced) -> Result<BTreeMap<String, i64>, HandlerError> {
    if order.lines.is_empty() {
        return Err(HandlerError::Permanent(format!(
            "order {} has no lines",
            order.order_id
        )));
    }
    let mut out = BTreeMap::new();
    for line in &order.lines {
        if line.product_id.is_empty() || line.quantity == 0 {
            return Err(HandlerError::Permanent(format!(
                "order {}: invalid line (product {:?}, quantity {})",
                order.order_id, line.product_id, line.quantity
            )));
        }
        *out.entry(line.product_id.clone()).or_insert(0) += i64::from(line.quantity);
    }
    Ok(out)
}

/// On `OrderPlaced`: reserves every line, or none and says why.
pub(crate) async fn reserve(ctx: Ctx<Inventory>, order: OrderPlaced) -> Result<(), HandlerError> {
    let wanted = lines(&order)?;
    let subjects = &ctx.state().subjects;
    let already = reservations::Entity::find()
        .filter(reservations::Column::OrderId.eq(order.order_id.as_str()))
        .one(ctx.db())
        .await?;
    if already.is_some() {
        // Reserved by an earlier copy of this order's event.
        return Ok(());
    }
    // A savepoint: a line that cannot be taken undoes the lines before it.
    let sp = ctx.db().begin().await?;
    for (product, quantity) in &wanted {
        let taken = products::Entity::update_many()
            .col_expr(
                products::Column::Stock,
                Expr::col(products::Column::Stock).sub(*quantity),
            )
            .col_expr(products::Column::UpdatedAt, Expr::value(now_micros()))
            .filter(products::Column::Id.eq(product.as_str()))
            .filter(products::Column::Stock.gte(*quantity))
            .exec(&sp)
            .await?
            .rows_affected;
        if taken == 1 {
            continue;
        }
        let reason = match products::Entity::find_by_id(product.clone())
            .one(&sp)
            .await?
        {
            None => format!("unknown product {product}"),
            Some(p) => format!(
                "not enough stock of {product}: {} wanted, {} left",
                quantity, p.stock
            ),
        };
        sp.rollback().await?;
        tracing::info!(order = %order.order_id, %reason, "stock rejected");
        ctx.emit(
            &subjects.stock_rejected,
            &order.order_id,
            &StockRejected {
                order_id: order.order_id.clone(),
                reason,
            },
        );
        return Ok(());
    }
    reservations::Entity::insert_many(wanted.iter().map(|(product, quantity)| {
        reservations::ActiveModel {
            order_id: Set(order.order_id.clone()),
            product_id: Set(product.clone()),
            quantity: Set(*quantity),
        }
    }))
    .exec_without_returning(&sp)
    .await?;
    sp.commit().await?;
    ctx.emit(
        &subjects.stock_reserved,
        &order.order_id,
        &StockReserved {
            order_id: order.order_id.clone(),
            lines: reserved_lines(&wanted),
        },
    );
    Ok(())
}

/// On `OrderCancelled`: gives back what the order reserved, once.
pub(crate) async fn release(
    ctx: Ctx<Inventory>,
    order: OrderCancelled,
) -> Result<(), HandlerError> {
    let held = reservations::Entity::find()
        .filter(reservations::Column::OrderId.eq(order.order_id.as_str()))
        .all(ctx.db())
        .await?;
    if held.is_empty() {
        // Nothing was reserved (rejected, or already released).
        return Ok(());
    }
    let mut given = BTreeMap::new();
    for r in &held {
        products::Entity::update_many()
            .col_expr(
                products::Column::Stock,
                Expr::col(products::Column::Stock).add(r.quantity),
            )
            .col_expr(products::Column::UpdatedAt, Expr::value(now_micros()))
            .filter(products::Column::Id.eq(r.product_id.as_str()))
            .exec(ctx.db())
            .await?;
        given.insert(r.product_id.clone(), r.quantity);
    }
    reservations::Entity::delete_many()
        .filter(reservations::Column::OrderId.eq(order.order_id.as_str()))
        .exec(ctx.db())
        .await?;
    ctx.emit(
        &ctx.state().subjects.stock_released,
        &order.order_id,
        &StockReleased {
            order_id: order.order_id.clone(),
            lines: reserved_lines(&given),
        },
    );
    Ok(())
}

fn reserved_lines(lines: &BTreeMap<String, i64>) -> Vec<ReservedLine> {
    lines
        .iter()
        .map(|(product, quantity)| ReservedLine {
            product_id: product.clone(),
            quantity: u32::try_from(*quantity).unwrap_or(u32::MAX),
        })
        .collect()
}
