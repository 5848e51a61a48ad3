//! `sluice replay`: rebuild one of the edge's read models from the event
//! log without downtime (a shadow, catch up, swap: [`sluice_edge::replay`]),
//! from the broker or from an event-log file, with progress and the
//! digest of the model before and after.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, bail};
use serde_json::json;
use sluice_broker::{Broker, OutboundMessage, StartPosition};
use sluice_edge::replay::{ReplayOptions, projection_name, replay};
use sluice_eventlog::Reader;
use sluice_eventlog::convert::from_record;
use sluice_kit::KitConfig;

use super::{BrokerArg, Output, parse_when, print_line, progress_bar};

/// The edge database of a local `sluice up`.
const DEFAULT_DATABASE: &str = "sqlite://data/edge.db?mode=rwc";

/// Arguments of `sluice replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The projection: orders, products or apikeys (or edge-orders, …).
    #[arg(value_name = "PROJECTION", required_unless_present = "projection")]
    name: Option<String>,
    /// The projection (the same as the positional argument).
    #[arg(long, conflicts_with = "name")]
    projection: Option<String>,
    /// Replay every event still stored (the default).
    #[arg(long, conflicts_with_all = ["since", "file"])]
    from_beginning: bool,
    /// Replay the events stored since WHEN (RFC 3339, or a duration ago).
    #[arg(long, value_name = "WHEN", value_parser = parse_when, conflicts_with = "file")]
    since: Option<SystemTime>,
    /// Rebuild from this event-log file instead of the broker.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// The edge's database.
    #[arg(long, value_name = "URL", default_value = DEFAULT_DATABASE, env = "SLUICE_EDGE_DATABASE")]
    database: String,
    /// pretty: progress and a summary for people; json: the summary as JSON.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    broker: BrokerArg,
}

/// Replays and prints the report.
pub(crate) async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let Some(given) = args.name.as_deref().or(args.projection.as_deref()) else {
        bail!("name the projection to replay");
    };
    let name = projection_name(given);
    if !sluice_edge::PROJECTIONS.contains(&name.as_str()) {
        bail!(
            "the edge has no projection {given:?} (it has {})",
            sluice_edge::PROJECTIONS.join(", ")
        );
    }
    let config = KitConfig::default();
    let subjects = sluice_edge::Subjects::default();
    // A file is first loaded into a private embedded log, then replayed
    // from there like any broker.
    let source = match &args.file {
        Some(file) => Source::file(file).await?,
        None => Source::Broker(super::connect(&args.broker.url).await?),
    };
    let start = match args.since {
        Some(at) => StartPosition::Time(at),
        None => StartPosition::Beginning,
    };
    let live = sluice_kit::db::open(&args.database, 1)
        .await
        .with_context(|| format!("opening {}", sluice_kit::db::redact(&args.database)))?;
    let progress = progress_bar(None);
    let options = ReplayOptions {
        start,
        check_live: args.file.is_none(),
    };
    let shown = |events: i64| progress.set_position(u64::try_from(events).unwrap_or(0));
    let result = replay(
        source.broker(),
        &live,
        &config,
        &subjects,
        &name,
        options,
        &shown,
    )
    .await;
    progress.finish_and_clear();
    source.close().await;
    live.close_by_ref().await.ok();
    let report =
        result.with_context(|| format!("replaying {name} (the live model is unchanged)"))?;
    let rate = if report.build_seconds > 0.0 {
        report.events as f64 / report.build_seconds
    } else {
        0.0
    };
    match args.output {
        Output::Json => print_line(
            &mut std::io::stdout().lock(),
            &json!({
                "projection": report.projection,
                "events": report.events,
                "rows": report.rows,
                "digest_before": report.digest_before,
                "digest": report.digest,
                "changed": report.digest_before != report.digest,
                "build_seconds": report.build_seconds,
                "swap_seconds": report.swap_seconds,
                "events_per_second": rate.round(),
                "attempts": report.attempts,
            })
            .to_string(),
        )
        .map(|_| ())?,
        Output::Pretty => {
            eprintln!(
                "replayed {} events into {} ({} rows) in {:.2} s, {rate:.0} events/s; swapped in {:.3} s",
                report.events,
                report.projection,
                report.rows,
                report.build_seconds,
                report.swap_seconds
            );
            let verdict = if report.digest_before == report.digest {
                "unchanged"
            } else {
                "changed"
            };
            print_line(
                &mut std::io::stdout().lock(),
                &format!(
                    "digest {} ({verdict}; before: {})",
                    report.digest, report.digest_before
                ),
            )?;
        }
    }
    Ok(())
}

/// Where the events come from.
enum Source {
    Broker(Arc<dyn Broker>),
    File {
        broker: Arc<dyn Broker>,
        _dir: tempfile::TempDir,
    },
}

impl Source {
    /// Loads `file` into an embedded log in a temporary folder.
    async fn file(file: &std::path::Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary folder")?;
        let url = format!("embedded:{}", dir.path().join("broker.db").display());
        let broker = sluice_broker::connect(&url)
            .await
            .context("opening a private embedded log")?;
        let open =
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let reader = Reader::new(std::io::BufReader::with_capacity(1 << 20, open))
            .with_context(|| format!("reading {}", file.display()))?;
        let mut batch = Vec::with_capacity(1000);
        for record in reader {
            let record = record
                .with_context(|| format!("reading {} (nothing was replayed)", file.display()))?;
            let (subject, headers, payload) = from_record(record);
            batch.push(OutboundMessage::new(subject, headers, payload));
            if batch.len() == 1000 {
                load(&*broker, std::mem::take(&mut batch)).await?;
            }
        }
        load(&*broker, batch).await?;
        Ok(Self::File { broker, _dir: dir })
    }

    fn broker(&self) -> Arc<dyn Broker> {
        match self {
            Self::Broker(b) | Self::File { broker: b, .. } => b.clone(),
        }
    }

    async fn close(&self) {
        self.broker().close().await;
    }
}

async fn load(broker: &dyn Broker, batch: Vec<OutboundMessage>) -> anyhow::Result<()> {
    for r in broker.publish_batch(batch).await {
        r.context("loading the file into the private log")?;
    }
    Ok(())
}
