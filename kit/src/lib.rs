//! `sluice-kit`: what every Sluice service uses on top of the Broker trait.
//!
//! Built so far: [`config`], typed layered configuration (defaults, a TOML
//! file, `SLUICE_…` environment variables) with secrets that never print;
//! [`retry`], how a handler's outcome settles its delivery (ack, redeliver
//! with exponential backoff and jitter, or dead-letter with the reason);
//! [`shutdown`], one graceful-shutdown signal for every task (SIGTERM or
//! ctrl-c); [`telemetry`], the process's log subscriber (pretty or JSON).
//! The handler router, inbox, transactional outbox, metrics and OTLP export
//! follow (issue 3).

pub mod config;
pub mod retry;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, KitConfig, Secret, load};
pub use retry::{Decision, HandlerError, RetryPolicy, Settled};
pub use shutdown::{Shutdown, ShutdownListener};
