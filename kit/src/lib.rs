//! `sluice-kit`: what every Sluice service uses on top of the Broker trait.
//!
//! Built so far: [`config`], typed layered configuration (defaults, a TOML
//! file, `SLUICE_…` environment variables) with secrets that never print.
//! The handler router, inbox, transactional outbox, retries, telemetry and
//! graceful shutdown follow (issue 3).

pub mod config;

pub use config::{ConfigError, KitConfig, Secret, load};
