//! `sluice publish`: JSON in, protobuf events with CloudEvents headers out.
//!
//! One event from `--json`, or one per line from `--file` or standard input.
//! Every line is encoded before anything is sent, so a bad line publishes
//! nothing; lines are then published in pipelined batches, and a broker
//! failure stops after the failing batch with how many were published.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::json;
use sluice_broker::{Broker, OutboundMessage};
use sluice_proto::{Envelope, Registry};

use super::{BrokerArg, Output, print_line, progress_bar};

/// The `ce-source` of events published from the command line.
const SOURCE: &str = "/sluice/cli";

/// Arguments of `sluice publish`.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("input").required(true).args(["json", "file", "stdin"])
))]
pub(crate) struct PublishArgs {
    /// The subject to publish on, e.g. orders.order.placed.
    subject: String,
    /// `-`: read JSON lines from standard input, one event per line.
    #[arg(value_name = "-", value_parser = ["-"])]
    stdin: Option<String>,
    /// The protobuf type of the event, e.g. shop.orders.v1.OrderPlaced.
    #[arg(long = "type", value_name = "PROTO_TYPE")]
    event_type: String,
    /// One event as JSON (proto3 JSON mapping).
    #[arg(long, value_name = "JSON")]
    json: Option<String>,
    /// A JSON lines file: one event per line (blank lines are skipped).
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// The ordering key (`ce-subject`); by default each event's own id.
    #[arg(long)]
    key: Option<String>,
    /// Events per pipelined batch.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// pretty: ids and a summary for people; json: one JSON object per line.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    broker: BrokerArg,
}

/// One encoded event and the input line it came from (1-based, 0 for `--json`).
struct Encoded {
    line: usize,
    message: OutboundMessage,
}

/// Encodes the input, connects, publishes, and prints ids and a summary.
pub(crate) async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let registry = Registry::global().context("loading the event descriptors")?;
    registry.message(&args.event_type)?;
    let events = match &args.json {
        Some(json) => vec![encode(registry, &args, 0, json)?],
        None => encode_lines(registry, &args)?,
    };
    if events.is_empty() {
        bail!("no events in the input (every line was blank)");
    }
    let broker = super::connect(&args.broker.url).await?;
    let result = if args.json.is_some() {
        publish_one(&*broker, &args, events).await
    } else {
        publish_many(&broker, &args, events).await
    };
    broker.close().await;
    result
}

fn encode(
    registry: &Registry,
    args: &PublishArgs,
    line: usize,
    json: &str,
) -> anyhow::Result<Encoded> {
    let payload = registry.from_json(&args.event_type, json)?;
    let envelope = Envelope::with_type(args.event_type.clone(), SOURCE);
    let key = args.key.clone().unwrap_or_else(|| envelope.id.clone());
    let envelope = envelope.subject(key);
    let message = OutboundMessage::new(args.subject.clone(), envelope.to_headers(), payload);
    Ok(Encoded { line, message })
}

/// Every non-blank line of the file or standard input, encoded; the first
/// line that does not fit is an error naming it, and nothing is published.
fn encode_lines(registry: &Registry, args: &PublishArgs) -> anyhow::Result<Vec<Encoded>> {
    let (name, reader): (String, Box<dyn BufRead>) = match &args.file {
        Some(path) => (
            path.display().to_string(),
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            )),
        ),
        None => (
            "standard input".to_owned(),
            Box::new(std::io::stdin().lock()),
        ),
    };
    let mut events = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let number = i + 1;
        let line = line.with_context(|| format!("reading line {number} of {name}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = encode(registry, args, number, &line)
            .with_context(|| format!("line {number} of {name}: nothing was published"))?;
        events.push(event);
    }
    Ok(events)
}

async fn publish_one(
    broker: &dyn Broker,
    args: &PublishArgs,
    mut events: Vec<Encoded>,
) -> anyhow::Result<()> {
    let Some(event) = events.pop() else {
        bail!("no event to publish");
    };
    let id = event.message.id().unwrap_or_default().to_owned();
    let ack = broker
        .publish(event.message)
        .await
        .with_context(|| format!("publishing to {}", args.subject))?;
    let line = match args.output {
        Output::Pretty => id,
        Output::Json => json!({
            "id": id,
            "subject": args.subject,
            "sequence": ack.sequence,
            "duplicate": ack.duplicate,
        })
        .to_string(),
    };
    print_line(&mut std::io::stdout().lock(), &line)?;
    Ok(())
}

async fn publish_many(
    broker: &Arc<dyn Broker>,
    args: &PublishArgs,
    events: Vec<Encoded>,
) -> anyhow::Result<()> {
    let total = events.len();
    let progress = progress_bar(Some(total as u64));
    let started = Instant::now();
    let mut published = 0usize;
    let mut failed = 0usize;
    let mut first_failure: Option<(usize, String)> = None;
    let mut stdout = std::io::stdout().lock();
    let mut reading = true;
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() && first_failure.is_none() {
        let chunk: Vec<Encoded> = events.by_ref().take(args.batch as usize).collect();
        let lines: Vec<usize> = chunk.iter().map(|e| e.line).collect();
        let messages: Vec<OutboundMessage> = chunk.into_iter().map(|e| e.message).collect();
        let ids: Vec<String> = messages
            .iter()
            .map(|m| m.id().unwrap_or_default().to_owned())
            .collect();
        let results = broker.publish_batch(messages).await;
        for ((result, line), id) in results.into_iter().zip(lines).zip(ids) {
            match result {
                Ok(ack) => {
                    published += 1;
                    if reading {
                        let text = match args.output {
                            Output::Pretty => id,
                            Output::Json => json!({
                                "id": id,
                                "line": line,
                                "sequence": ack.sequence,
                                "duplicate": ack.duplicate,
                            })
                            .to_string(),
                        };
                        reading = print_line(&mut stdout, &text)?;
                    }
                }
                Err(e) => {
                    failed += 1;
                    if first_failure.is_none() {
                        first_failure = Some((line, e.to_string()));
                    }
                }
            }
        }
        progress.set_position((published + failed) as u64);
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 {
        published as f64 / seconds
    } else {
        0.0
    };
    match args.output {
        Output::Json => {
            if reading {
                let summary = json!({
                    "published": published,
                    "failed": failed,
                    "total": total,
                    "seconds": seconds,
                    "events_per_second": rate.round(),
                });
                print_line(&mut stdout, &summary.to_string())?;
            }
        }
        Output::Pretty => eprintln!(
            "published {published} of {total} events to {} ({failed} failed) in {seconds:.2} s, {rate:.0} events/s",
            args.subject
        ),
    }
    if let Some((line, error)) = first_failure {
        bail!(
            "published {published} of {total} events before line {line} failed ({failed} failed, the rest not sent): {error}"
        );
    }
    Ok(())
}
