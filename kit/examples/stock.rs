//! The shortest honest Sluice service: it reserves stock for placed orders.
//!
//! On `orders.order.placed` it takes the stock of every line — all lines or
//! none — in one transaction with the kit's inbox and outbox, and emits
//! `inventory.stock.reserved` or `inventory.stock.rejected`.
//!
//! Run it with `cargo run -p sluice-kit --example stock`; it uses the
//! embedded broker and `./data/stock.db` unless `SLUICE_BROKER__URL` and
//! `DATABASE_URL` say otherwise, and serves /healthz, /readyz and /metrics
//! on 127.0.0.1:9090 (`SLUICE_LISTEN`).

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction};
use sluice_kit::{Ctx, HandlerError, Reactor, Service};
use sluice_proto::shop::inventory::v1::{ReservedLine, StockRejected, StockReserved};
use sluice_proto::shop::orders::v1::{OrderLine, OrderPlaced};

/// The service's state, shared by its handlers (nothing needed here).
struct Stock;

/// Takes the stock of every line, or none of it.
async fn reserve(ctx: Ctx<Stock>, order: OrderPlaced) -> Result<(), HandlerError> {
    let mut taken: Vec<&OrderLine> = Vec::new();
    for line in &order.lines {
        if adjust(ctx.db(), line, -1).await? {
            taken.push(line);
            continue;
        }
        // Not enough: give back what this transaction took, and say why.
        for l in taken {
            adjust(ctx.db(), l, 1).await?;
        }
        let rejected = StockRejected {
            order_id: order.order_id.clone(),
            reason: format!("not enough {}", line.product_id),
        };
        ctx.emit("inventory.stock.rejected", &order.order_id, &rejected);
        return Ok(());
    }
    let reserved = StockReserved {
        order_id: order.order_id.clone(),
        lines: order
            .lines
            .iter()
            .map(|l| ReservedLine {
                product_id: l.product_id.clone(),
                quantity: l.quantity,
            })
            .collect(),
    };
    ctx.emit("inventory.stock.reserved", &order.order_id, &reserved);
    Ok(())
}

/// Moves `line.quantity` units out of (`sign` -1) or back into (+1) stock.
/// Taking is guarded by `available >= quantity`, so stock never goes
/// negative, even with concurrent orders for the last item.
async fn adjust(
    db: &DatabaseTransaction,
    line: &OrderLine,
    sign: i64,
) -> Result<bool, HandlerError> {
    let quantity = i64::from(line.quantity);
    let available = Alias::new("available");
    let mut update = Query::update();
    update
        .table(Alias::new("stock"))
        .value(
            available.clone(),
            Expr::col(available.clone()).add(sign * quantity),
        )
        .and_where(Expr::col(Alias::new("sku")).eq(line.product_id.as_str()));
    if sign < 0 {
        update.and_where(Expr::col(available).gte(quantity));
    }
    Ok(db.execute(&update).await?.rows_affected() == 1)
}

/// The whole process: configuration, telemetry, broker and database,
/// /healthz /readyz /metrics, graceful stop on SIGTERM or ctrl-c — all in
/// `app::main`; the service only says what it runs.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_kit::app::main("stock", "127.0.0.1:9090", |r| async move {
        r.db.execute_unprepared(
            "CREATE TABLE IF NOT EXISTS stock (sku VARCHAR(64) PRIMARY KEY, available BIGINT NOT NULL)",
        )
        .await?;
        let service = Service::new("stock", r.broker, r.db)
            .metrics(r.metrics)
            .reactor(
                Reactor::new("stock", Stock)
                    .on("orders.order.placed", reserve)
                    .configured(&r.config),
            )
            .start()
            .await?;
        Ok::<_, anyhow::Error>(service)
    })
    .await
}
