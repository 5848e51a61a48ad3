//! `sluice export` and `sluice import`: event-log files (docs/event-log-format.md).
//!
//! Export reads a subject filter from a start position up to the end of the
//! stream (a throwaway consumer group, [`sluice_broker::scan`]) into a file
//! written beside its final name and renamed once complete, so a stopped
//! export never leaves a file that looks whole.
//!
//! Import checks the whole file first (every checksum and the end marker),
//! so a damaged file publishes nothing; then it publishes the events with
//! their original headers and ids, in order, pipelined in batches. A second
//! import adds nothing, also long after the broker's own de-duplication
//! window: the ids already in the destination streams are read first and
//! skipped (the embedded log de-duplicates ids forever by itself).

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{Context, bail};
use serde_json::json;
use sluice_broker::scan::{Flow, ScanError, scan, scan_all};
use sluice_broker::{Broker, BrokerKind, OutboundMessage, StartPosition};
use sluice_eventlog::convert::{from_record, to_record};
use sluice_eventlog::{Reader, Writer};
use sluice_proto::sluice::v1::EventLogHeader;

use super::{BrokerArg, Output, parse_when, print_line, progress_bar, timestamp};

/// Arguments of `sluice export`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// The subject filter, e.g. orders.> (its first token must be literal).
    filter: String,
    /// Only events stored at or after this time: RFC 3339, or a duration ago (10m, 2h).
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    since: Option<SystemTime>,
    /// Only events stored before this time: RFC 3339, or a duration ago.
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    until: Option<SystemTime>,
    /// The event-log file to write (replaced if it exists).
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: PathBuf,
    /// pretty: a summary line on stderr; json: the summary as JSON on stdout.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    broker: BrokerArg,
}

/// Arguments of `sluice import`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// The event-log file.
    file: PathBuf,
    /// Publish under this prefix: orders.order.placed becomes <PREFIX>.orders.order.placed.
    #[arg(long, value_name = "PREFIX")]
    to_subject_prefix: Option<String>,
    /// Events per pipelined batch (one commit on the embedded log; its acks
    /// are awaited before the next batch is sent, which keeps the file's order).
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// pretty: a summary line on stderr; json: the summary as JSON on stdout.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    broker: BrokerArg,
}

/// Exports, then prints a summary.
pub(crate) async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let start = match args.since {
        Some(at) => StartPosition::Time(at),
        None => StartPosition::Beginning,
    };
    sluice_broker::SubscribeOptions::new("export", args.filter.as_str())
        .validate()
        .context("invalid subject filter")?;
    let header = EventLogHeader {
        format_version: u32::from(sluice_eventlog::VERSION),
        created: Some(timestamp(SystemTime::now())),
        writer: format!("sluice {}", env!("CARGO_PKG_VERSION")),
        source: sluice_broker::redact_url(&args.broker.url),
        filter: args.filter.clone(),
        since: args.since.map(timestamp),
        until: args.until.map(timestamp),
    };
    let broker = super::connect(&args.broker.url).await?;
    let partial = partial_name(&args.out);
    let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut writer = Writer::new(BufWriter::with_capacity(1 << 20, file), &header)
        .with_context(|| format!("writing {}", partial.display()))?;
    let started = Instant::now();
    let progress = progress_bar(None);
    let until = args.until;
    let mut count = 0u64;
    let result = scan(&*broker, "export", &args.filter, start, |m| {
        if until.is_some_and(|u| m.timestamp.is_some_and(|t| t >= u)) {
            return Ok(Flow::Stop);
        }
        writer.append(&to_record(&m.subject, &m.headers, &m.payload))?;
        count += 1;
        progress.inc(1);
        Ok::<_, sluice_eventlog::WriteError>(Flow::Continue)
    })
    .await;
    broker.close().await;
    progress.finish_and_clear();
    let finished = match result {
        Ok(_) => writer
            .finish()
            .map_err(anyhow::Error::new)
            .and_then(|w| {
                w.into_inner()
                    .map_err(|e| anyhow::Error::new(e.into_error()))
            })
            .and_then(|f| f.sync_all().map_err(anyhow::Error::new)),
        Err(ScanError::Broker(e)) => Err(anyhow::Error::new(e).context("reading the events")),
        Err(ScanError::Caller(e)) => Err(anyhow::Error::new(e)),
    };
    let exported = match finished {
        Ok(()) => std::fs::rename(&partial, &args.out)
            .with_context(|| format!("renaming {} to {}", partial.display(), args.out.display())),
        Err(e) => Err(e),
    };
    if let Err(e) = exported {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("exporting {} (no file written)", args.filter)));
    }
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    let seconds = started.elapsed().as_secs_f64();
    let rate = per_second(count, seconds);
    match args.output {
        Output::Json => {
            let summary = json!({
                "exported": count,
                "file": args.out.display().to_string(),
                "bytes": bytes,
                "seconds": seconds,
                "events_per_second": rate.round(),
            });
            print_line(&mut std::io::stdout().lock(), &summary.to_string())?;
        }
        Output::Pretty => eprintln!(
            "exported {count} events on {} to {} ({bytes} bytes) in {seconds:.2} s, {rate:.0} events/s",
            args.filter,
            args.out.display()
        ),
    }
    Ok(())
}

fn partial_name(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn open(path: &Path) -> anyhow::Result<Reader<BufReader<File>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Reader::new(BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("reading {}", path.display()))
}

/// The subject an event is imported on.
fn target(prefix: Option<&str>, subject: String) -> String {
    match prefix {
        Some(p) => format!("{}.{subject}", p.trim_end_matches('.')),
        None => subject,
    }
}

/// Checks the file, reads what the destination holds, publishes the rest.
pub(crate) async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let prefix = args.to_subject_prefix.as_deref();
    if let Some(p) = prefix {
        sluice_broker::subject::validate_subject(&format!("{}.x", p.trim_end_matches('.')))
            .context("invalid --to-subject-prefix")?;
    }
    // First pass: every checksum, and the domains the events go to.
    let mut domains = BTreeSet::new();
    let mut reader = open(&args.file)?;
    for (i, record) in reader.by_ref().enumerate() {
        let record = record
            .with_context(|| format!("reading {}: nothing was imported", args.file.display()))?;
        let number = i + 1;
        let subject = target(prefix, record.broker_subject);
        sluice_broker::subject::validate_subject(&subject)
            .with_context(|| format!("record {number}: nothing was imported"))?;
        domains.insert(sluice_broker::subject::stream_key(&subject).to_owned());
    }
    let total = reader.records();
    let broker = super::connect(&args.broker.url).await?;
    let result = publish_file(&broker, &args, &domains, total).await;
    broker.close().await;
    let summary = result?;
    match args.output {
        Output::Json => {
            print_line(&mut std::io::stdout().lock(), &summary.to_string())?;
        }
        Output::Pretty => eprintln!(
            "imported {} of {total} events from {} ({} already in the destination) in {:.2} s, {:.0} events/s",
            summary["imported"],
            args.file.display(),
            summary["skipped"],
            summary["seconds"].as_f64().unwrap_or_default(),
            summary["events_per_second"].as_f64().unwrap_or_default(),
        ),
    };
    Ok(())
}

/// The ids already stored in `domains`: none on the embedded log, which
/// refuses a known id forever by itself.
async fn existing_ids(
    broker: &dyn Broker,
    domains: &BTreeSet<String>,
) -> anyhow::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    if broker.kind() == BrokerKind::Embedded {
        return Ok(ids);
    }
    for domain in domains {
        let filter = format!("{domain}.>");
        scan_all(broker, "import", &filter, StartPosition::Beginning, |m| {
            if let Some(id) = m.id() {
                ids.insert(id.to_owned());
            }
        })
        .await
        .with_context(|| format!("reading the ids already in {domain}: nothing was imported"))?;
    }
    Ok(ids)
}

/// Events of the file to publish in one batch, and how many records before
/// them were left out as already in the destination.
struct Batch {
    messages: Vec<OutboundMessage>,
    skipped: u64,
}

impl Batch {
    fn with_capacity(size: usize) -> Self {
        Self {
            messages: Vec::with_capacity(size),
            skipped: 0,
        }
    }
}

/// Reads `args.file` into batches on a thread of its own, so the next batch
/// is decompressed and decoded while the one before is being published.
/// Stops at the first unreadable record (sent as the last item) or when
/// nobody takes the batches any more.
fn read_batches(
    args: &ImportArgs,
    existing: HashSet<String>,
    batches: tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
) -> tokio::task::JoinHandle<()> {
    let (file, prefix, size) = (
        args.file.clone(),
        args.to_subject_prefix.clone(),
        args.batch as usize,
    );
    tokio::task::spawn_blocking(move || {
        if let Err(e) = send_batches(&file, prefix.as_deref(), size, &existing, &batches) {
            let _ = batches.blocking_send(Err(e));
        }
    })
}

/// [`read_batches`]' work: sends full batches, then the rest.
fn send_batches(
    file: &Path,
    prefix: Option<&str>,
    size: usize,
    existing: &HashSet<String>,
    batches: &tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
) -> anyhow::Result<()> {
    let mut batch = Batch::with_capacity(size);
    for record in open(file)? {
        let record = record?;
        if existing.contains(&record.id) {
            batch.skipped += 1;
            continue;
        }
        let (subject, headers, payload) = from_record(record);
        batch.messages.push(OutboundMessage::new(
            target(prefix, subject),
            headers,
            payload,
        ));
        if batch.messages.len() == size {
            let full = std::mem::replace(&mut batch, Batch::with_capacity(size));
            if batches.blocking_send(Ok(full)).is_err() {
                return Ok(());
            }
        }
    }
    if !batch.messages.is_empty() || batch.skipped > 0 {
        let _ = batches.blocking_send(Ok(batch));
    }
    Ok(())
}

/// Publishes the file's events not yet in the destination, one batch at a
/// time (batches in flight together could interleave on the broker and
/// break the file's order).
async fn publish_file(
    broker: &std::sync::Arc<dyn Broker>,
    args: &ImportArgs,
    domains: &BTreeSet<String>,
    total: u64,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let existing = existing_ids(&**broker, domains).await?;
    let progress = progress_bar(Some(total));
    let (mut imported, mut skipped, mut duplicates) = (0u64, 0u64, 0u64);
    let (tx, mut batches) = tokio::sync::mpsc::channel(2);
    let reader = read_batches(args, existing, tx);
    while let Some(batch) = batches.recv().await {
        let batch = batch.with_context(|| {
            format!(
                "reading {} after {imported} of {total} events were imported",
                args.file.display()
            )
        })?;
        skipped += batch.skipped;
        progress.inc(batch.skipped);
        let n = batch.messages.len() as u64;
        for (i, result) in broker
            .publish_batch(batch.messages)
            .await
            .into_iter()
            .enumerate()
        {
            match result {
                Ok(ack) if ack.duplicate => duplicates += 1,
                Ok(_) => imported += 1,
                Err(e) => bail!(
                    "imported {imported} of {total} events from {} before event {} failed (the rest not sent): {e}",
                    args.file.display(),
                    imported + skipped + duplicates + i as u64 + 1
                ),
            }
        }
        progress.inc(n);
    }
    // The batches end with the file, or early if the reader died (a panic
    // would otherwise look like the end of the file).
    reader.await.with_context(|| {
        format!(
            "reading {} stopped after {imported} of {total} events were imported",
            args.file.display()
        )
    })?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "imported": imported,
        "skipped": skipped,
        "duplicates": duplicates,
        "total": total,
        "seconds": seconds,
        "events_per_second": per_second(imported + skipped + duplicates, seconds).round(),
    }))
}
