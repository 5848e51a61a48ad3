//! `sluice up`: everything on one machine.
//!
//! The embedded broker (`broker.db`), every service of the reference shop
//! (each with its own SQLite database beside the log, see
//! [`crate::platform`]) and the operations endpoints (`/healthz`, `/readyz`,
//! `/metrics`). The REST edge is built in later work and is not started
//! (nor pretended to be).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sluice_broker::Broker;
use sluice_broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use sluice_kit::health::{OpsServer, Readiness, router};
use sluice_kit::{Metrics, Shutdown};

use crate::platform::Platform;

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

/// Opens the embedded log, starts every service of the shop, serves the
/// operations endpoints, and keeps everything up until ctrl-c or SIGTERM.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let path = args.data_dir.join("broker.db");
    let broker: Arc<dyn Broker> = Arc::new(
        EmbeddedBroker::open(&path, EmbeddedOptions::default())
            .await
            .with_context(|| format!("opening the embedded log at {}", path.display()))?,
    );
    let metrics = Metrics::new();
    let config = sluice_kit::KitConfig::default();
    let platform = match Platform::start(broker.clone(), &args.data_dir, &config, &metrics).await {
        Ok(p) => p,
        Err(e) => {
            broker.close().await;
            return Err(e);
        }
    };
    let readiness = platform.readiness(Readiness::new().broker("embedded", broker.clone()));
    let ops = match OpsServer::bind(args.listen, router(readiness, metrics)).await {
        Ok(ops) => ops,
        Err(e) => {
            platform.stop().await;
            broker.close().await;
            return Err(e).with_context(|| format!("listening on {}", args.listen));
        }
    };
    let addr = ops.local_addr().context("the bound address")?;
    tracing::info!(
        log = %path.display(),
        url = %format!("embedded:{}", path.display()),
        data = %args.data_dir.display(),
        mail = %platform.mail,
        images = %platform.images,
        "embedded broker ready; running: {}; not built yet: REST edge",
        platform.names().join(", ")
    );
    tracing::info!(
        listen = %addr,
        "serving http://{addr}/healthz, /readyz and /metrics"
    );
    let shutdown = Shutdown::new();
    let server = tokio::spawn(ops.run_until(shutdown.listener()));
    shutdown.on_signal().await;
    tracing::info!("shutting down");
    platform.stop().await;
    server.await.context("the HTTP server task")??;
    broker.close().await;
    Ok(())
}
