//! The process around one service: configuration, telemetry, broker and
//! database connections, the operations endpoints, and a graceful stop on
//! SIGTERM or ctrl-c. Each service's `main` is one call to [`run`].
//!
//! Environment: `SLUICE_BROKER__URL`, `DATABASE_URL` (default
//! `sqlite://data/<service>.db?mode=rwc`), `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `SLUICE_CONSUMERS__<NAME>__…`, and `SLUICE_LISTEN` for `/healthz`,
//! `/readyz` and `/metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::future::BoxFuture;
use sea_orm::DatabaseConnection;
use sluice_broker::Broker;

use crate::health::{OpsServer, Readiness, router};
use crate::{KitConfig, Metrics, Shutdown};

/// A started service that can be stopped gracefully.
pub trait Stop: Send + 'static {
    /// Stops: finish in-flight work, flush the outbox.
    fn stop(self) -> BoxFuture<'static, ()>;
}

impl Stop for crate::RunningService {
    fn stop(self) -> BoxFuture<'static, ()> {
        Box::pin(crate::RunningService::stop(self))
    }
}

/// What a service's start function gets.
#[derive(Clone)]
pub struct Resources {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// The service's database (the kit's tables are migrated).
    pub db: DatabaseConnection,
    /// The loaded configuration.
    pub config: KitConfig,
    /// The process's metrics.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field("broker", &self.broker.kind())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a service process could not run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// Telemetry could not be set up.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// `SLUICE_LISTEN` is not an address.
    #[error("SLUICE_LISTEN={0:?} is not an address (host:port)")]
    Listen(String),
    /// The broker is unreachable.
    #[error("cannot connect to the broker: {0}")]
    Broker(sluice_broker::BrokerError),
    /// The database is unreachable.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The service did not start.
    #[error("cannot start {service}: {reason}")]
    Start {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// The operations endpoints failed.
    #[error("operations endpoints: {0}")]
    Ops(std::io::Error),
}

/// [`run`] for a binary's `main`: a failure is one line on stderr
/// (`sluice-<name>: …`) and exit code 1.
pub async fn main<F, Fut, S, E>(
    name: &str,
    default_listen: &str,
    start: F,
) -> std::process::ExitCode
where
    F: FnOnce(Resources) -> Fut,
    Fut: Future<Output = Result<S, E>>,
    S: Stop,
    E: std::fmt::Display,
{
    main_with(name, default_listen, std::env::vars().collect(), start).await
}

/// [`main`] with the environment given (`sluice serve` adds its flags to
/// the process's own).
pub async fn main_with<F, Fut, S, E>(
    name: &str,
    default_listen: &str,
    env: Vec<(String, String)>,
    start: F,
) -> std::process::ExitCode
where
    F: FnOnce(Resources) -> Fut,
    Fut: Future<Output = Result<S, E>>,
    S: Stop,
    E: std::fmt::Display,
{
    match run_with(name, default_listen, env, start).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The binary's edge: logs may be off, the reason must show.
            eprintln!("sluice-{name}: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Runs service `name` until SIGTERM or ctrl-c, then stops it gracefully.
/// `default_listen` is where `/healthz`, `/readyz` and `/metrics` are
/// served unless `SLUICE_LISTEN` says otherwise.
///
/// # Errors
/// Configuration, connections, start-up or the endpoints failed.
pub async fn run<F, Fut, S, E>(name: &str, default_listen: &str, start: F) -> Result<(), AppError>
where
    F: FnOnce(Resources) -> Fut,
    Fut: Future<Output = Result<S, E>>,
    S: Stop,
    E: std::fmt::Display,
{
    run_with(name, default_listen, std::env::vars().collect(), start).await
}

/// [`run`] with the environment given instead of the process's.
///
/// # Errors
/// Configuration, connections, start-up or the endpoints failed.
pub async fn run_with<F, Fut, S, E>(
    name: &str,
    default_listen: &str,
    mut env: Vec<(String, String)>,
    start: F,
) -> Result<(), AppError>
where
    F: FnOnce(Resources) -> Fut,
    Fut: Future<Output = Result<S, E>>,
    S: Stop,
    E: std::fmt::Display,
{
    if !env.iter().any(|(k, _)| k == "DATABASE_URL") {
        env.push((
            "DATABASE_URL".into(),
            format!("sqlite://data/{name}.db?mode=rwc"),
        ));
    }
    // The last value of a name wins, as with overrides appended to the
    // process's environment.
    let listen_text = env
        .iter()
        .rev()
        .find(|(k, _)| k == "SLUICE_LISTEN")
        .map_or_else(|| default_listen.to_owned(), |(_, v)| v.clone());
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| AppError::Listen(listen_text.clone()))?;
    let config: KitConfig = crate::load(None, env)?;
    let telemetry = crate::telemetry::init(&config.telemetry, name)?;
    let broker = sluice_broker::connect(config.broker.url.expose())
        .await
        .map_err(AppError::Broker)?;
    let db = crate::db::open(config.database.url.expose(), 8).await?;
    let metrics = Metrics::new();
    let readiness = Readiness::new()
        .broker("main", broker.clone())
        .database(name, db.clone());
    let resources = Resources {
        broker,
        db,
        config,
        metrics: metrics.clone(),
    };
    let running = start(resources).await.map_err(|e| AppError::Start {
        service: name.to_owned(),
        reason: e.to_string(),
    })?;
    let ops = OpsServer::bind(listen, router(readiness, metrics))
        .await
        .map_err(AppError::Ops)?;
    let bound = ops.local_addr().map_err(AppError::Ops)?;
    tracing::info!(service = name, listen = %bound, "service running; serving http://{bound}/readyz");
    let shutdown = Shutdown::new();
    let ops = tokio::spawn(ops.run_until(shutdown.listener()));
    shutdown.on_signal().await;
    running.stop().await;
    match ops.await {
        Ok(r) => r.map_err(AppError::Ops)?,
        Err(e) => tracing::warn!(error = %e, "operations endpoints task failed"),
    }
    telemetry.shutdown().await;
    Ok(())
}
