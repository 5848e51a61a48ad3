//! `sluice up`: everything on one machine.
//!
//! The embedded broker (`broker.db`), every service of the reference shop
//! (each with its own SQLite database beside the log, see
//! [`crate::platform`]) and the operations endpoints (`/healthz`, `/readyz`,
//! `/metrics`), and the REST edge serving `/v1/…` beside them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sluice_broker::Broker;
use sluice_broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use sluice_kit::health::{Readiness, router};
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
    // Logs on stderr; spans kept for the dashboard's order traces, and
    // exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let recent = sluice_kit::telemetry::RecentSpans::new(sluice_kit::telemetry::RECENT_SPANS);
    let telemetry_config = sluice_kit::config::TelemetryConfig {
        otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty()),
        ..Default::default()
    };
    let telemetry = sluice_kit::telemetry::init_with_recent(&telemetry_config, "sluice", &recent)
        .context("setting up logs and traces")?;
    let result = serve(args, recent).await;
    telemetry.shutdown().await;
    result
}

async fn serve(args: UpArgs, recent: sluice_kit::telemetry::RecentSpans) -> anyhow::Result<()> {
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
    let edge_db = match crate::platform::service_db(&args.data_dir, sluice_edge::NAME).await {
        Ok(db) => db,
        Err(e) => {
            platform.stop().await;
            broker.close().await;
            return Err(e);
        }
    };
    let admin_key = match admin_key(&args.data_dir) {
        Ok(k) => k,
        Err(e) => {
            platform.stop().await;
            broker.close().await;
            return Err(e);
        }
    };
    let options = match sluice_edge::EdgeOptions::from_env(args.listen, std::env::vars()) {
        Ok(o) => sluice_edge::EdgeOptions {
            admin_key: Some(admin_key),
            images: platform.image_store.clone(),
            recent_spans: Some(recent),
            ..o
        },
        Err(e) => {
            platform.stop().await;
            broker.close().await;
            return Err(e.into());
        }
    };
    let readiness = platform.readiness(
        Readiness::new()
            .broker("embedded", broker.clone())
            .database(sluice_edge::NAME, edge_db.clone()),
    );
    let edge = match sluice_edge::start_with_ops(
        broker.clone(),
        edge_db,
        &config,
        metrics.clone(),
        sluice_edge::Subjects::default(),
        options,
        router(readiness, metrics),
    )
    .await
    {
        Ok(edge) => edge,
        Err(e) => {
            platform.stop().await;
            broker.close().await;
            return Err(e).context("starting the REST edge");
        }
    };
    let addr = edge.addr;
    tracing::info!(
        log = %path.display(),
        url = %format!("embedded:{}", path.display()),
        data = %args.data_dir.display(),
        mail = %platform.mail,
        images = %platform.images,
        "embedded broker ready; running: {}, edge",
        platform.names().join(", ")
    );
    tracing::info!(
        listen = %addr,
        "serving the API on http://{addr}/v1/ (orders, products, accounts, auth/token), the dashboard on http://{addr}/dashboard, and http://{addr}/healthz, /readyz and /metrics"
    );
    Shutdown::new().on_signal().await;
    tracing::info!("shutting down");
    edge.stop().await;
    platform.stop().await;
    broker.close().await;
    Ok(())
}

/// The edge's admin API key: `SLUICE_ADMIN_KEY`, else the one stored in
/// `<data>/admin-key`, else a new one, stored there (readable by the owner
/// only) and printed once on stderr.
fn admin_key(data_dir: &std::path::Path) -> anyhow::Result<sluice_kit::Secret> {
    if let Ok(k) = std::env::var("SLUICE_ADMIN_KEY")
        && !k.trim().is_empty()
    {
        return Ok(sluice_kit::Secret::new(k.trim()));
    }
    let path = data_dir.join("admin-key");
    match std::fs::read_to_string(&path) {
        Ok(k) if !k.trim().is_empty() => return Ok(sluice_kit::Secret::new(k.trim())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for the admin key"))?;
    let key = format!("sk_admin_{}", sluice_kit::hex::encode(&bytes));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(key.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Shown once, to the operator; later runs read it from the file.
    eprintln!(
        "sluice: admin API key (X-Api-Key, every scope): {key}\nsluice: stored in {}; set SLUICE_ADMIN_KEY to use another",
        path.display()
    );
    Ok(sluice_kit::Secret::new(key))
}
