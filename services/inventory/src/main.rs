//! `sluice-inventory`: the inventory service as its own process.
//!
//! Configuration as every Sluice service: `SLUICE_BROKER__URL`,
//! `DATABASE_URL` (default `sqlite://data/inventory.db?mode=rwc`),
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `SLUICE_CONSUMERS__INVENTORY__…`;
//! `SLUICE_LISTEN` (default 127.0.0.1:9102) serves /healthz, /readyz and
//! /metrics.

use std::net::SocketAddr;

use anyhow::Context;
use sluice_kit::health::{OpsServer, Readiness, router};
use sluice_kit::{KitConfig, Metrics, Shutdown};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if !env.iter().any(|(k, _)| k == "DATABASE_URL") {
        env.push((
            "DATABASE_URL".into(),
            "sqlite://data/inventory.db?mode=rwc".into(),
        ));
    }
    let config: KitConfig = sluice_kit::load(None, env)?;
    let telemetry = sluice_kit::telemetry::init(&config.telemetry, sluice_inventory::NAME)?;
    let listen: SocketAddr = std::env::var("SLUICE_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:9102".into())
        .parse()
        .context("SLUICE_LISTEN is not an address")?;
    let broker = sluice_broker::connect(config.broker.url.expose())
        .await
        .context("connect to the broker")?;
    let db = sluice_kit::db::open(config.database.url.expose(), 8).await?;
    let metrics = Metrics::new();
    let running = sluice_inventory::start(
        broker.clone(),
        db.clone(),
        &config,
        metrics.clone(),
        sluice_inventory::Subjects::default(),
    )
    .await?;
    let readiness = Readiness::new()
        .broker("main", broker)
        .database("inventory", db);
    let ops = OpsServer::bind(listen, router(readiness, metrics)).await?;
    tracing::info!(listen = %ops.local_addr()?, "inventory service running");
    let shutdown = Shutdown::new();
    let ops = tokio::spawn(ops.run_until(shutdown.listener()));
    shutdown.on_signal().await;
    running.stop().await;
    ops.await??;
    telemetry.shutdown().await;
    Ok(())
}
