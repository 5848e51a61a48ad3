//! `sluice up`: everything on one machine.
//!
//! Today this is the embedded broker and the operations endpoints
//! (`/healthz`, `/readyz`, `/metrics`); the reference services and the REST
//! edge are built in later work and are not started (nor pretended to be).

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
    let readiness = Readiness::new().broker("embedded", broker.clone());
    let ops = OpsServer::bind(args.listen, router(readiness, Metrics::new()))
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = ops.local_addr().context("the bound address")?;
    tracing::info!(
        log = %path.display(),
        url = %format!("embedded:{}", path.display()),
        "embedded broker ready; no services run yet: the reference services and REST edge are not built"
    );
    tracing::info!(
        listen = %addr,
        "serving http://{addr}/healthz, /readyz and /metrics"
    );
    let shutdown = Shutdown::new();
    let server = tokio::spawn(ops.run_until(shutdown.listener()));
    shutdown.on_signal().await;
    tracing::info!("shutting down");
    server.await.context("the HTTP server task")??;
    broker.close().await;
    Ok(())
}
