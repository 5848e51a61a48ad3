//! The reference shop's payments service.
//!
//! - `payments.cmd.charge` (`ChargePayment`, from the order saga): charges
//!   the order's amount through the provider once per order, whatever the
//!   redeliveries or repeated commands, and emits `payments.payment.captured`
//!   or `payments.payment.declined`. A provider that times out is retried
//!   (the delivery is nacked with backoff) up to `max_attempts`, then the
//!   payment is declined, so the saga can compensate.
//! - `payments.cmd.refund` (`RefundPayment`): gives back a captured payment
//!   once (`payments.payment.refunded`).
//!
//! The provider is simulated: `tok_visa` approves, `tok_chargeDeclined`
//! declines, `tok_timeout` times out.

mod charge;
pub mod migration;
pub mod provider;
pub mod tables;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use sluice_broker::Broker;
use sluice_kit::{ConsumerError, KitConfig, Metrics, Reactor, RunningService, Service};

use crate::provider::SimulatedProvider;

/// The service's name: its consumer group and `ce-source` (`/sluice/payments`).
pub const NAME: &str = "payments";

/// The subjects the service uses (tests use a unique domain).
#[derive(Debug, Clone)]
pub struct Subjects {
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
    /// The subjects with `payments` as the domain's name.
    pub fn new(payments: &str) -> Self {
        Self {
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
        Self::new("payments")
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct Payments {
    subjects: Subjects,
    provider: SimulatedProvider,
    max_attempts: u32,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Migrating the schema failed.
    #[error("cannot migrate the payments schema: {0}")]
    Migrate(sea_orm::DbErr),
    /// A consumer could not subscribe.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

/// Attempts at a provider that times out before the payment is declined.
/// Below the kit's default of 5 deliveries, so the decline is the
/// service's answer, not a dead letter.
pub const MAX_ATTEMPTS: u32 = 3;

/// Migrates `db` and starts the service on `broker`.
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
    let state = Payments {
        subjects: subjects.clone(),
        provider: SimulatedProvider,
        max_attempts: MAX_ATTEMPTS,
    };
    let reactor = Reactor::new(NAME, state)
        .on(&subjects.charge, charge::charge)
        .on(&subjects.refund, charge::refund)
        .configured(config);
    Ok(Service::new(NAME, broker, db)
        .metrics(metrics)
        .reactor(reactor)
        .start()
        .await?)
}

/// Where the service's own process serves `/healthz`, `/readyz` and
/// `/metrics` unless `SLUICE_LISTEN` says otherwise.
pub const LISTEN: &str = "127.0.0.1:9104";

/// Starts the service on a process's resources with the default subjects
/// (the `sluice-payments` binary and `sluice serve payments`).
///
/// # Errors
/// As [`start`].
pub async fn from_resources(r: sluice_kit::app::Resources) -> Result<RunningService, StartError> {
    start(r.broker, r.db, &r.config, r.metrics, Subjects::default()).await
}
