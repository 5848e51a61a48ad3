//! `sluice up`: everything on one machine.
//!
//! Today this is the embedded broker, the inventory and payments services
//! (each with its database beside the log: `inventory.db`, `payments.db`)
//! and the operations endpoints (`/healthz`, `/readyz`, `/metrics`). The
//! other reference services and the REST edge are built in later work and
//! are not started (nor pretended to be).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sluice_broker::Broker;
use sluice_broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use sluice_kit::health::{OpsServer, Readiness, router};
use sluice_kit::{Metrics, Shutdown};

/// Arguments of `sluice up`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Where the embedded log and service databases live.
    #[arg(long, default_value = "data", env = "SLUICE_DATA_DIR")]
    data_dir: PathBuf,
    /// Where the HTTP endpoints are served (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", env = "SLUICE_LISTEN")]
    listen: SocketAddr,
}

/// Opens the embedded log, serves the operations endpoints, and keeps both
/// up until ctrl-c or SIGTERM.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join("broker.db");
    let broker: Arc<dyn Broker> = Arc::new(
        EmbeddedBroker::open(&path, EmbeddedOptions::default())
            .await
            .with_context(|| format!("opening the embedded log at {}", path.display()))?,
    );
    let metrics = Metrics::new();
    let config = sluice_kit::KitConfig::default();
    let inventory_db = service_db(&args.data_dir, "inventory").await?;
    let inventory = sluice_inventory::start(
        broker.clone(),
        inventory_db.clone(),
        &config,
        metrics.clone(),
        sluice_inventory::Subjects::default(),
    )
    .await
    .context("starting the inventory service")?;
    let payments_db = service_db(&args.data_dir, "payments").await?;
    let payments = sluice_payments::start(
        broker.clone(),
        payments_db.clone(),
        &config,
        metrics.clone(),
        sluice_payments::Subjects::default(),
    )
    .await
    .context("starting the payments service")?;
    let readiness = Readiness::new()
        .broker("embedded", broker.clone())
        .database("inventory", inventory_db)
        .database("payments", payments_db);
    let ops = OpsServer::bind(args.listen, router(readiness, metrics))
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = ops.local_addr().context("the bound address")?;
    tracing::info!(
        log = %path.display(),
        url = %format!("embedded:{}", path.display()),
        "embedded broker ready; running: inventory, payments; not built yet: accounts, orders, notifications, media, REST edge"
    );
    tracing::info!(
        listen = %addr,
        "serving http://{addr}/healthz, /readyz and /metrics"
    );
    let shutdown = Shutdown::new();
    let server = tokio::spawn(ops.run_until(shutdown.listener()));
    shutdown.on_signal().await;
    tracing::info!("shutting down");
    inventory.stop().await;
    payments.stop().await;
    server.await.context("the HTTP server task")??;
    broker.close().await;
    Ok(())
}

/// Opens (creating) the SQLite database of `service` under `data_dir`.
async fn service_db(
    data_dir: &std::path::Path,
    service: &str,
) -> anyhow::Result<sea_orm::DatabaseConnection> {
    let url = format!(
        "sqlite://{}?mode=rwc",
        data_dir.join(format!("{service}.db")).display()
    );
    sluice_kit::db::open(&url, 1)
        .await
        .with_context(|| format!("opening the {service} database at {url}"))
}
