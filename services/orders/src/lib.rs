//! The reference shop's orders service: the order aggregate and its saga.
//!
//! ```text
//! orders.cmd.place ─▶ OrderPlaced ─▶ (inventory) StockReserved ─▶ payments.cmd.charge
//!                                  └▶ StockRejected ─▶ OrderCancelled
//! (payments) PaymentCaptured ─▶ OrderConfirmed
//!            PaymentDeclined ─▶ OrderCancelled (inventory releases the stock)
//! orders.cmd.cancel: PENDING ─▶ OrderCancellationRequested, cancelled at the
//!                    saga's next step; CONFIRMED ─▶ payments.cmd.refund + OrderCancelled
//! ```
//!
//! Every state change is a row update and an event in one transaction (the
//! kit's outbox), and every step is driven by an event, so the saga
//! survives a restart at any step: whatever was not committed is
//! redelivered. The order's status is `PENDING`, `CONFIRMED` or `CANCELLED`;
//! the finer step is kept beside it.
//!
//! Orders are priced from the service's own copy of the catalogue, a
//! projection of the inventory's product events. It owns its database
//! (`orders`, `order_lines`, `catalogue`, and the kit's tables).

mod catalogue;
pub mod migration;
mod saga;
pub mod tables;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use sluice_broker::Broker;
use sluice_kit::{ConsumerError, KitConfig, Metrics, Projection, Reactor, RunningService, Service};

/// The service's name: its saga's consumer group and `ce-source`
/// (`/sluice/orders`).
pub const NAME: &str = "orders";

/// The consumer group of the price list projection.
pub const CATALOGUE: &str = "orders-catalogue";

/// Order statuses, as clients see them.
pub mod status {
    /// The saga is under way.
    pub const PENDING: &str = "PENDING";
    /// Stock reserved and payment captured.
    pub const CONFIRMED: &str = "CONFIRMED";
    /// Ended without being fulfilled (see the reason).
    pub const CANCELLED: &str = "CANCELLED";
}

/// The subjects the service uses, built from the three domains it touches
/// (tests use unique domains).
#[derive(Debug, Clone)]
pub struct Subjects {
    /// `orders.cmd.place`.
    pub place: String,
    /// `orders.cmd.cancel`.
    pub cancel: String,
    /// `orders.order.placed`.
    pub order_placed: String,
    /// `orders.order.confirmed`.
    pub order_confirmed: String,
    /// `orders.order.cancelled`.
    pub order_cancelled: String,
    /// `orders.order.cancellation_requested`.
    pub cancellation_requested: String,
    /// `inventory.stock.reserved`.
    pub stock_reserved: String,
    /// `inventory.stock.rejected`.
    pub stock_rejected: String,
    /// `inventory.product.created`.
    pub product_created: String,
    /// `inventory.product.updated`.
    pub product_updated: String,
    /// `inventory.product.deleted`.
    pub product_deleted: String,
    /// `payments.cmd.charge`.
    pub charge: String,
    /// `payments.cmd.refund`.
    pub refund: String,
    /// `payments.payment.captured`.
    pub payment_captured: String,
    /// `payments.payment.declined`.
    pub payment_declined: String,
    /// `payments.payment.refunded`.
    pub payment_refunded: String,
}

impl Subjects {
    /// The subjects with `orders`, `inventory` and `payments` as the
    /// domains' names.
    pub fn new(orders: &str, inventory: &str, payments: &str) -> Self {
        Self {
            place: format!("{orders}.cmd.place"),
            cancel: format!("{orders}.cmd.cancel"),
            order_placed: format!("{orders}.order.placed"),
            order_confirmed: format!("{orders}.order.confirmed"),
            order_cancelled: format!("{orders}.order.cancelled"),
            cancellation_requested: format!("{orders}.order.cancellation_requested"),
            stock_reserved: format!("{inventory}.stock.reserved"),
            stock_rejected: format!("{inventory}.stock.rejected"),
            product_created: format!("{inventory}.product.created"),
            product_updated: format!("{inventory}.product.updated"),
            product_deleted: format!("{inventory}.product.deleted"),
            charge: format!("{payments}.cmd.charge"),
            refund: format!("{payments}.cmd.refund"),
            payment_captured: format!("{payments}.payment.captured"),
            payment_declined: format!("{payments}.payment.declined"),
            payment_refunded: format!("{payments}.payment.refunded"),
        }
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("orders", "inventory", "payments")
    }
}

/// What the saga's handlers share.
#[derive(Debug)]
pub struct Orders {
    subjects: Subjects,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Migrating the schema failed.
    #[error("cannot migrate the orders schema: {0}")]
    Migrate(sea_orm::DbErr),
    /// A consumer could not subscribe.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

/// Deliveries of a `PlaceOrder` naming a product the price list does not
/// have yet (its `ProductCreated` may still be in flight) before the order
/// is cancelled as naming an unknown product. Below the kit's default of 5
/// deliveries, so the cancellation is the service's answer, not a dead
/// letter.
pub const PRICE_ATTEMPTS: u32 = 3;

/// Migrates `db` and starts the saga and the price list on `broker`.
///
/// # Errors
/// Migration or subscribing failed.
pub async fn start(
    broker: Arc<dyn Broker>,
    db: DatabaseConnection,
    config: &KitConfig,
    metrics: Metrics,
    subjects: Subjects,
) -> Result<RunningService, StartError> {
    migration::Migrator::up(&db, None)
        .await
        .map_err(StartError::Migrate)?;
    let prices = Projection::new(CATALOGUE, ())
        .on(&subjects.product_created, catalogue::created)
        .on(&subjects.product_updated, catalogue::updated)
        .on(&subjects.product_deleted, catalogue::deleted)
        .configured(config);
    let saga = Reactor::new(
        NAME,
        Orders {
            subjects: subjects.clone(),
        },
    )
    .on(&subjects.place, saga::place)
    .on(&subjects.cancel, saga::cancel)
    .on(&subjects.stock_reserved, saga::stock_reserved)
    .on(&subjects.stock_rejected, saga::stock_rejected)
    .on(&subjects.payment_captured, saga::payment_captured)
    .on(&subjects.payment_declined, saga::payment_declined)
    .on(&subjects.payment_refunded, saga::payment_refunded)
    .configured(config);
    Ok(Service::new(NAME, broker, db)
        .metrics(metrics)
        .projection(prices)
        .reactor(saga)
        .start()
        .await?)
}

/// Where the service's own process serves `/healthz`, `/readyz` and
/// `/metrics` unless `SLUICE_LISTEN` says otherwise.
pub const LISTEN: &str = "127.0.0.1:9103";

/// Starts the service on a process's resources with the default subjects
/// (the `sluice-orders` binary and `sluice serve orders`).
///
/// # Errors
/// As [`start`].
pub async fn from_resources(r: sluice_kit::app::Resources) -> Result<RunningService, StartError> {
    start(r.broker, r.db, &r.config, r.metrics, Subjects::default()).await
}
