//! `sluice up`: everything on one machine.
//!
//! Today this is the embedded broker only: the reference services and the REST
//! edge are built in later work and are not started (nor pretended to be).

use std::path::PathBuf;

use anyhow::Context;
use sluice_broker::Broker;
use sluice_broker::embedded::{EmbeddedBroker, EmbeddedOptions};

/// Arguments of `sluice up`.
#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Where the embedded log and service databases live.
    #[arg(long, default_value = "data", env = "SLUICE_DATA_DIR")]
    data_dir: PathBuf,
}

/// Opens the embedded log and keeps it open until ctrl-c or SIGTERM.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join("broker.db");
    let broker = EmbeddedBroker::open(&path, EmbeddedOptions::default())
        .await
        .with_context(|| format!("opening the embedded log at {}", path.display()))?;
    tracing::info!(
        log = %path.display(),
        url = %format!("embedded:{}", path.display()),
        "embedded broker ready; no services run yet: the reference services and REST edge are not built"
    );
    sluice_kit::shutdown::wait_for_signal().await;
    tracing::info!("shutting down");
    broker.close().await;
    Ok(())
}
