//! The reference shop's inventory service: products and their stock.
//!
//! - Commands (request/reply): `inventory.cmd.create_product`,
//!   `update_product`, `delete_product` and `adjust_stock` — answered with
//!   a `ProductResult`; they emit `inventory.product.created`, `.updated`,
//!   `.deleted` and `inventory.stock.adjusted`.
//! - Events: on `orders.order.placed` it reserves every line or none
//!   (`inventory.stock.reserved` / `inventory.stock.rejected` with the
//!   reason); on `orders.order.cancelled` it gives back what the order
//!   reserved (`inventory.stock.released`). Stock never goes negative, even
//!   with concurrent orders for the last item: every take is a guarded
//!   update, and the column has a check constraint.
//!
//! It owns its database (`products`, `reservations`, and the kit's tables).

mod commands;
pub use commands::MAX_STOCK;
pub mod migration;
mod stock;
pub mod tables;

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use sluice_broker::Broker;
use sluice_kit::outbox::Emitter;
use sluice_kit::{ConsumerError, KitConfig, Metrics, Reactor, Service, Shutdown};
use sluice_proto::shop::inventory::v1::ProductResult;

/// The service's name: its consumer group and `ce-source` (`/sluice/inventory`).
pub const NAME: &str = "inventory";

/// The subjects the service uses, built from the two domains it touches
/// (tests use unique domains).
#[derive(Debug, Clone)]
pub struct Subjects {
    /// `orders.order.placed`.
    pub order_placed: String,
    /// `orders.order.cancelled`.
    pub order_cancelled: String,
    /// `inventory.cmd.create_product`.
    pub create_product: String,
    /// `inventory.cmd.update_product`.
    pub update_product: String,
    /// `inventory.cmd.delete_product`.
    pub delete_product: String,
    /// `inventory.cmd.adjust_stock`.
    pub adjust_stock: String,
    /// `inventory.product.created`.
    pub product_created: String,
    /// `inventory.product.updated`.
    pub product_updated: String,
    /// `inventory.product.deleted`.
    pub product_deleted: String,
    /// `inventory.stock.adjusted`.
    pub stock_adjusted: String,
    /// `inventory.stock.reserved`.
    pub stock_reserved: String,
    /// `inventory.stock.rejected`.
    pub stock_rejected: String,
    /// `inventory.stock.released`.
    pub stock_released: String,
}

impl Subjects {
    /// The subjects with `orders` and `inventory` as the domains' names.
    pub fn new(orders: &str, inventory: &str) -> Self {
        Self {
            order_placed: format!("{orders}.order.placed"),
            order_cancelled: format!("{orders}.order.cancelled"),
            create_product: format!("{inventory}.cmd.create_product"),
            update_product: format!("{inventory}.cmd.update_product"),
            delete_product: format!("{inventory}.cmd.delete_product"),
            adjust_stock: format!("{inventory}.cmd.adjust_stock"),
            product_created: format!("{inventory}.product.created"),
            product_updated: format!("{inventory}.product.updated"),
            product_deleted: format!("{inventory}.product.deleted"),
            stock_adjusted: format!("{inventory}.stock.adjusted"),
            stock_reserved: format!("{inventory}.stock.reserved"),
            stock_rejected: format!("{inventory}.stock.rejected"),
            stock_released: format!("{inventory}.stock.released"),
        }
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("orders", "inventory")
    }
}

/// What the handlers share.
pub struct Inventory {
    db: DatabaseConnection,
    emitter: Emitter,
    subjects: Subjects,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("subjects", &self.subjects)
            .finish_non_exhaustive()
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Migrating the schema failed.
    #[error("cannot migrate the inventory schema: {0}")]
    Migrate(sea_orm::DbErr),
    /// A consumer could not subscribe.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// Request serving could not start.
    #[error("cannot serve inventory commands: {0}")]
    Serve(sluice_broker::BrokerError),
}

/// The running inventory service: its consumers and its command servers.
pub type Running = sluice_kit::RunningWithTasks;

/// Migrates `db` and starts the service on `broker`.
///
/// # Errors
/// Migration, subscribing or serving failed.
pub async fn start(
    broker: Arc<dyn Broker>,
    db: DatabaseConnection,
    config: &KitConfig,
    metrics: Metrics,
    subjects: Subjects,
) -> Result<Running, StartError> {
    migration::Migrator::up(&db, None)
        .await
        .map_err(StartError::Migrate)?;
    // Event handlers emit through their context (the kit's outbox and
    // relay); only the commands use an emitter, made once the relay runs.
    let handler_state = Inventory {
        db: db.clone(),
        emitter: Emitter::new(NAME, None),
        subjects: subjects.clone(),
    };
    let reactor = Reactor::new(NAME, handler_state)
        .on(&subjects.order_placed, stock::reserve)
        .on(&subjects.order_cancelled, stock::release)
        .configured(config);
    let service = Service::new(NAME, broker.clone(), db.clone())
        .metrics(metrics)
        .reactor(reactor)
        .start()
        .await?;
    let inventory = Arc::new(Inventory {
        db,
        emitter: Emitter::new(NAME, service.relay_waker()),
        subjects: subjects.clone(),
    });
    let shutdown = Shutdown::new();
    let mut commands = Vec::new();
    let served = [
        serve(
            &broker,
            &subjects.create_product,
            &inventory,
            commands::create_product,
            &shutdown,
        )
        .await,
        serve(
            &broker,
            &subjects.update_product,
            &inventory,
            commands::update_product,
            &shutdown,
        )
        .await,
        serve(
            &broker,
            &subjects.delete_product,
            &inventory,
            commands::delete_product,
            &shutdown,
        )
        .await,
        serve(
            &broker,
            &subjects.adjust_stock,
            &inventory,
            commands::adjust_stock,
            &shutdown,
        )
        .await,
    ];
    for r in served {
        match r {
            Ok(task) => commands.push(task),
            Err(e) => {
                shutdown.trigger();
                service.stop().await;
                return Err(StartError::Serve(e));
            }
        }
    }
    Ok(Running::new(service, shutdown, commands))
}

/// Serves one product command on `subject` (consumer group: the service).
async fn serve<Req, F, Fut>(
    broker: &Arc<dyn Broker>,
    subject: &str,
    inventory: &Arc<Inventory>,
    handler: F,
    shutdown: &Shutdown,
) -> Result<tokio::task::JoinHandle<()>, sluice_broker::BrokerError>
where
    Req: prost::Message + prost::Name + Default + 'static,
    F: Fn(Arc<Inventory>, sluice_proto::Envelope, Req) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<ProductResult, sluice_kit::HandlerError>>
        + Send
        + 'static,
{
    sluice_kit::rpc::serve(
        broker.clone(),
        NAME,
        subject,
        NAME,
        inventory.clone(),
        handler,
        shutdown.listener(),
    )
    .await
}

/// How long a command may take before the caller gives up (for requesters).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the service's own process serves `/healthz`, `/readyz` and
/// `/metrics` unless `SLUICE_LISTEN` says otherwise.
pub const LISTEN: &str = "127.0.0.1:9102";

/// Starts the service on a process's resources with the default subjects
/// (the `sluice-inventory` binary and `sluice serve inventory`).
///
/// # Errors
/// As [`start`].
pub async fn from_resources(r: sluice_kit::app::Resources) -> Result<Running, StartError> {
    start(r.broker, r.db, &r.config, r.metrics, Subjects::default()).await
}
