//! `sluice bench`: durable publish and consume throughput of 256-byte events,
//! through the Broker trait and through the raw client of the same backend,
//! side by side in one run (this machine is shared and noisy, so only figures
//! from the same run are compared).
//!
//! Both paths use the same settings: the same CloudEvents headers, payload
//! size, publish window (`--batch` messages in flight, then wait for their
//! acks) and consumer prefetch, a durable stream/queue, per-message acks.

pub(crate) mod http;
pub(crate) mod kit;
mod raw_amqp;
mod raw_nats;
pub(crate) mod shop;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use sluice_broker::testing::unique;
use sluice_broker::{Broker, OutboundMessage, SubscribeOptions};
use sluice_proto::Envelope;

/// Arguments of `sluice bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Backends to measure.
    #[arg(long, value_delimiter = ',', default_value = "embedded,nats,amqp")]
    backends: Vec<Backend>,
    /// Messages per measurement.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages in flight per publish window.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Consumer prefetch (unacked messages in flight).
    #[arg(long, default_value_t = 1000)]
    prefetch: usize,
    /// NATS server; when absent, a temporary one is started from .tools/bin/nats-server.
    #[arg(long)]
    nats_url: Option<String>,
    /// RabbitMQ server.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Where the embedded log is written (a temporary directory by default).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Alternating raw/Sluice rounds; the report shows the median of each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print results as JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Embedded,
    Nats,
    Amqp,
}

/// One measured figure.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    backend: &'static str,
    path: &'static str,
    operation: &'static str,
    messages: usize,
    elapsed: Duration,
}

impl Figure {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The settings both paths share.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) messages: usize,
    pub(crate) payload: Bytes,
    pub(crate) batch: usize,
    pub(crate) prefetch: usize,
}

impl Load {
    /// The CloudEvents headers of one event (fresh id each call).
    pub(crate) fn headers(&self) -> sluice_proto::Headers {
        Envelope::with_type("shop.orders.v1.OrderPlaced", "/sluice/bench")
            .subject("bench")
            .to_headers()
    }
}

/// Awaits `next`, failing after 30 s without progress. No timer is armed when
/// an item is ready, so the measurement is not one timer per message.
pub(crate) async fn next_or_stall<F: std::future::Future>(next: F) -> anyhow::Result<F::Output> {
    use futures::FutureExt;
    let mut next = std::pin::pin!(next);
    if let Some(v) = next.as_mut().now_or_never() {
        return Ok(v);
    }
    tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .map_err(|_| anyhow::anyhow!("no delivery for 30 s"))
}

/// Runs the benchmark and prints the figures.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.messages > 0 && args.batch > 0 && args.prefetch > 0 && args.rounds > 0,
        "--messages, --batch, --prefetch and --rounds must be positive"
    );
    let load = Load {
        messages: args.messages,
        payload: Bytes::from(vec![0x5a; args.size]),
        batch: args.batch,
        prefetch: args.prefetch,
    };
    let mut figures = Vec::new();
    // Raw and Sluice runs alternate, `--rounds` times, and the report takes
    // the median of each: the machine is shared, so a single pair is noise.
    for round in 0..args.rounds {
        for backend in &args.backends {
            tracing::info!(round, ?backend, "measuring");
            figures.extend(measure(*backend, &args, &load).await?);
        }
    }
    report(&figures, args.json);
    Ok(())
}

async fn measure(backend: Backend, args: &BenchArgs, load: &Load) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let load = load.clone();
    match backend {
        Backend::Embedded => {
            let tmp = tempfile::tempdir().context("temporary directory")?;
            let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
            let path = dir.join(format!("{}.db", unique("bench-")));
            let broker = sluice_broker::embedded::EmbeddedBroker::open(&path, Default::default())
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            let broker = Arc::new(broker);
            figures.extend(through_trait("embedded", broker.clone(), &load).await?);
            broker.close().await;
        }
        Backend::Nats => {
            let server = match &args.nats_url {
                Some(_) => None,
                None => Some(sluice_broker::testing::NatsServer::start()),
            };
            let url = args
                .nats_url
                .clone()
                .or_else(|| server.as_ref().map(|s| s.url()))
                .unwrap_or_default();
            figures.extend(
                raw_nats::run(&url, &load)
                    .await
                    .context("raw NATS client")?,
            );
            let broker = sluice_broker::nats::NatsBroker::connect(&url, Default::default())
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let broker = Arc::new(broker);
            figures.extend(through_trait("nats", broker.clone(), &load).await?);
            broker.close().await;
        }
        Backend::Amqp => {
            figures.extend(
                raw_amqp::run(&args.amqp_url, &load)
                    .await
                    .context("raw lapin client")?,
            );
            let name = unique("sluice-bench-");
            let broker = Arc::new(
                sluice_broker::amqp::AmqpBroker::connect(
                    &args.amqp_url,
                    sluice_broker::amqp::AmqpOptions::for_tests(&name),
                )
                .await
                .with_context(|| format!("connecting to {}", args.amqp_url))?,
            );
            let result = through_trait("amqp", broker.clone(), &load).await;
            broker
                .delete_topology()
                .await
                .context("deleting the bench exchange and queues")?;
            broker.close().await;
            figures.extend(result?);
        }
    }
    Ok(figures)
}

/// Publishes `load.messages` events through the trait in windows of
/// `load.batch`, then consumes them all with a fresh group.
async fn through_trait(
    backend: &'static str,
    broker: Arc<dyn Broker>,
    load: &Load,
) -> anyhow::Result<Vec<Figure>> {
    let domain = unique("bench");
    let subject = format!("{domain}.order.placed");
    // Create the consumer group before publishing, as the raw runs declare
    // their queue/consumer first: consumption is then measured from the
    // group's own queue (on RabbitMQ the quorum queue, not a stream replay).
    let options = SubscribeOptions::new("bench", format!("{domain}.>"))
        .prefetch(load.prefetch)
        .max_deliveries(100);
    broker
        .subscribe(options.clone())
        .await
        .context("creating the consumer group")?
        .close()
        .await;
    let started = Instant::now();
    let mut sent = 0;
    while sent < load.messages {
        let n = load.batch.min(load.messages - sent);
        let batch: Vec<OutboundMessage> = (0..n)
            .map(|_| OutboundMessage::new(subject.clone(), load.headers(), load.payload.clone()))
            .collect();
        for r in broker.publish_batch(batch).await {
            r.context("publish through the Broker trait")?;
        }
        sent += n;
    }
    let publish = Figure {
        backend,
        path: "sluice",
        operation: "publish",
        messages: load.messages,
        elapsed: started.elapsed(),
    };
    let started = Instant::now();
    let mut sub = broker.subscribe(options).await.context("subscribe")?;
    let mut received = 0;
    while received < load.messages {
        let d = next_or_stall(sub.next())
            .await?
            .context("subscription ended")?
            .context("delivery")?;
        d.ack().await.context("ack")?;
        received += 1;
    }
    let consume = Figure {
        backend,
        path: "sluice",
        operation: "consume",
        messages: received,
        elapsed: started.elapsed(),
    };
    sub.close().await;
    broker.delete_domain(&domain).await.context("cleanup")?;
    Ok(vec![publish, consume])
}

fn report(figures: &[Figure], json: bool) {
    let mut out = String::new();
    if json {
        for f in figures {
            out.push_str(&format!(
                "{{\"backend\":\"{}\",\"path\":\"{}\",\"operation\":\"{}\",\"messages\":{},\"seconds\":{:.3},\"per_second\":{:.0}}}\n",
                f.backend, f.path, f.operation, f.messages, f.elapsed.as_secs_f64(), f.rate()
            ));
        }
    } else {
        out.push_str("backend   operation  raw msg/s   sluice msg/s  sluice/raw  (medians)\n");
        let mut rows: Vec<(&str, &str)> = Vec::new();
        for f in figures {
            if !rows.contains(&(f.backend, f.operation)) {
                rows.push((f.backend, f.operation));
            }
        }
        for (backend, operation) in rows {
            let median = |path: &str| {
                let mut rates: Vec<f64> = figures
                    .iter()
                    .filter(|f| f.backend == backend && f.operation == operation && f.path == path)
                    .map(Figure::rate)
                    .collect();
                rates.sort_by(f64::total_cmp);
                rates.get(rates.len() / 2).copied()
            };
            let (raw, ours) = (median("raw"), median("sluice"));
            let show = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.0}"));
            let ratio = match (raw, ours) {
                (Some(r), Some(o)) => format!("{:.0}%", 100.0 * o / r),
                _ => "-".to_owned(),
            };
            out.push_str(&format!(
                "{backend:<9} {operation:<10} {:>10} {:>13} {ratio:>11}\n",
                show(raw),
                show(ours)
            ));
        }
    }
    // The command's output is its result, so it goes to stdout.
    use std::io::Write;
    let _ = std::io::stdout().write_all(out.as_bytes());
}
