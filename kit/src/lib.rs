//! `sluice-kit`: what every Sluice service uses on top of the Broker trait.
//!
//! A service is a few typed handlers and a schema:
//!
//! - [`Reactor`] and [`Projection`] register `async fn(ctx, event: T)`
//!   handlers by subject pattern; reactors may emit events, projections only
//!   write their read model (and so are safe to replay);
//! - [`Service`] runs them on a broker and database: per-key ordering with
//!   parallelism across keys ([`consumer`]), the [`inbox`] (a redelivered
//!   event is handled once), the transactional [`outbox`] and its relay,
//!   retries with backoff and dead letters ([`retry`]), handler timeouts,
//!   metrics ([`metrics`]), trace context across hops ([`trace`]) and
//!   graceful shutdown ([`shutdown`]);
//! - [`config`] is typed, layered configuration; [`db`] opens the service's
//!   database (SQLite by default, PostgreSQL) and creates the kit's tables;
//!   [`telemetry`] sets up logging.

pub mod app;
pub mod config;
pub mod consumer;
pub mod db;
pub mod handler;
pub mod health;
pub mod hex;
pub mod inbox;
pub mod metrics;
mod otlp;
pub mod outbox;
pub mod retry;
pub mod router;
pub mod rpc;
pub mod samples;
pub mod service;
pub mod shutdown;
pub mod spans;
pub mod telemetry;
pub mod testing;
pub mod trace;

pub use config::{ConfigError, KitConfig, Secret, load};
pub use consumer::{Applied, Applier, ConsumerError, ConsumerOptions};
pub use handler::{BatchOutcome, Ctx, Item, ProjectionCtx, caused_by};
pub use metrics::Metrics;
pub use outbox::{Emitter, Relay, RelayOptions};
pub use retry::{Decision, HandlerError, RetryPolicy, Settled};
pub use router::{Projection, Reactor};
pub use service::{RunningService, RunningWithTasks, Service};
pub use shutdown::{Shutdown, ShutdownListener};
