//! `sluice bench-kit`: a trivial service handler through the whole kit —
//! decode, one row insert, one emitted event through the outbox, inbox,
//! commit, ack — against a bare consume loop (decode, ack) on the same
//! embedded log, alternating rounds in one run.
//!
//! With `--telemetry-overhead` it also measures the kit with tracing and
//! metrics on (every span exported over OTLP/HTTP to a receiver in the
//! process, every metric recorded) against both off, alternating rounds,
//! each round a child process (the tracing subscriber is process-wide).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Query};
use sluice_broker::testing::unique;
use sluice_broker::{Broker, OutboundMessage, StartPosition, SubscribeOptions};
use sluice_kit::{ConsumerOptions, Ctx, HandlerError, Metrics, Reactor, Service};
use sluice_proto::Envelope;
use sluice_proto::shop::orders::v1::{OrderConfirmed, OrderPlaced};

use super::next_or_stall;

/// Arguments of `sluice bench-kit`.
#[derive(Debug, clap::Args)]
pub(crate) struct KitBenchArgs {
    /// Events per measurement.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Distinct keys (aggregates) the events are spread over.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Kit workers.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Events per transaction.
    #[arg(long, default_value_t = 512)]
    wave: usize,
    /// Alternating bare/kit rounds; the report shows the median of each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where the logs and databases are written (a temporary directory by default).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Print results as JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Also measure the kit with tracing and metrics on against both off.
    #[arg(long)]
    telemetry_overhead: bool,
    /// One kit round in this process with telemetry on or off (what
    /// --telemetry-overhead runs in child processes).
    #[arg(long, value_enum, hide = true)]
    one_round: Option<Telemetry>,
}

/// Tracing and metrics in a kit round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Telemetry {
    /// No metrics recorded, no spans made.
    Off,
    /// Every metric recorded, every span exported over OTLP/HTTP.
    On,
}

impl KitBenchArgs {
    /// Whether this run sets up its own tracing (a round with telemetry on).
    pub(crate) fn sets_up_tracing(&self) -> bool {
        self.one_round == Some(Telemetry::On)
    }
}

/// Runs the benchmark and prints the figures.
pub(crate) async fn run(args: KitBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.events > 0 && args.keys > 0 && args.rounds > 0 && args.wave > 0,
        "--events, --keys, --wave and --rounds must be positive"
    );
    let tmp = tempfile::tempdir().context("temporary directory")?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    if let Some(mode) = args.one_round {
        let handled = telemetry_round(&args, &dir, mode).await?;
        println!("{{\"handled_seconds\":{}}}", handled.as_secs_f64());
        return Ok(());
    }
    let (mut bare, mut kit, mut relayed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        bare.push(bare_round(&args, &dir.join(format!("bare-{round}.db"))).await?);
        let (handled, published) =
            kit_round(&args, &dir.join(format!("kit-{round}")), Metrics::new()).await?;
        kit.push(handled);
        relayed.push(published);
        if args.telemetry_overhead {
            // Alternating which goes first: a round runs slower while the
            // previous one's files are still being written back.
            let order = if round % 2 == 0 {
                ["off", "on"]
            } else {
                ["on", "off"]
            };
            for mode in order {
                let took = child_round(&args, &dir.join(format!("{mode}-{round}")), mode)?;
                if mode == "on" {
                    on.push(took)
                } else {
                    off.push(took)
                }
            }
        }
    }
    let rate = |d: Duration| args.events as f64 / d.as_secs_f64().max(1e-9);
    // on/off of each round's pair, run back to back: the machine's drift
    // between rounds cancels out of the ratio, not out of the medians.
    let mut ratios: Vec<f64> = off
        .iter()
        .zip(&on)
        .map(|(off, on)| off.as_secs_f64() / on.as_secs_f64().max(1e-9))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN);
    let (lowest, highest) = (
        ratios.first().copied().unwrap_or(f64::NAN),
        ratios.last().copied().unwrap_or(f64::NAN),
    );
    let (bare, kit, relayed) = (median(bare), median(kit), median(relayed));
    let rows = [
        ("bare consume loop (decode, ack)", rate(bare)),
        (
            "kit handler (decode, insert, emit; inbox, commit, ack)",
            rate(kit),
        ),
        ("kit, until the outbox is published", rate(relayed)),
    ];
    if args.json {
        for (what, r) in rows {
            println!(
                "{{\"backend\":\"embedded\",\"database\":\"sqlite\",\"what\":\"{what}\",\"events\":{},\"events_per_s\":{r:.0}}}",
                args.events
            );
        }
        println!("{{\"kit_over_bare\":{:.3}}}", rate(kit) / rate(bare));
        if args.telemetry_overhead {
            let (off, on) = (median(off), median(on));
            println!(
                "{{\"telemetry_off_events_per_s\":{:.0},\"telemetry_on_events_per_s\":{:.0},\"telemetry_on_over_off\":{ratio:.3},\"telemetry_on_over_off_lowest\":{lowest:.3},\"telemetry_on_over_off_highest\":{highest:.3}}}",
                rate(off),
                rate(on),
            );
        }
    } else {
        println!(
            "{} events over {} keys, embedded log + SQLite, median of {} rounds",
            args.events, args.keys, args.rounds
        );
        for (what, r) in rows {
            println!("  {what:<58} {r:>10.0} events/s");
        }
        println!(
            "  kit / bare                                                 {:>10.3}",
            rate(kit) / rate(bare)
        );
        if args.telemetry_overhead {
            let (off, on) = (median(off), median(on));
            println!(
                "  {:<58} {:>10.0} events/s",
                "kit, tracing and metrics off",
                rate(off)
            );
            println!(
                "  {:<58} {:>10.0} events/s",
                "kit, tracing (OTLP export) and metrics on",
                rate(on)
            );
            println!(
                "  on / off, median of the rounds' pairs (lowest–highest)      {ratio:>10.3} ({lowest:.3}–{highest:.3})"
            );
        }
    }
    Ok(())
}

/// How often a round counts what was handled (±10 ms on rounds of seconds).
const POLL: Duration = Duration::from_millis(20);

/// Rows the handler inserted.
async fn handled_rows(db: &sea_orm::DatabaseConnection) -> anyhow::Result<u64> {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM bench_orders",
        ))
        .await?
        .context("a count")?;
    Ok(u64::try_from(row.try_get::<i64>("", "n")?).unwrap_or(0))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn events(args: &KitBenchArgs, subject: &str) -> Vec<OutboundMessage> {
    (0..args.events)
        .map(|i| {
            let key = format!("o-{}", i % args.keys);
            let env = Envelope::new::<OrderPlaced>("/sluice/bench").subject(&key);
            OutboundMessage::event(
                subject,
                &env,
                &OrderPlaced {
                    order_id: key,
                    customer_id: "c-1".into(),
                    lines: vec![],
                    total_cents: i64::try_from(i).unwrap_or(i64::MAX),
                    currency: "EUR".into(),
                    payment_token: "tok_visa".into(),
                },
            )
        })
        .collect()
}

async fn publish(broker: &dyn Broker, messages: Vec<OutboundMessage>) -> anyhow::Result<()> {
    let mut it = messages.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<_> = it.by_ref().take(1000).collect();
        for r in broker.publish_batch(chunk).await {
            r.context("publish")?;
        }
    }
    Ok(())
}

async fn open_log(path: &std::path::Path) -> anyhow::Result<Arc<dyn Broker>> {
    Ok(Arc::new(
        sluice_broker::embedded::EmbeddedBroker::open(path, Default::default())
            .await
            .context("open the embedded log")?,
    ))
}

async fn bare_round(args: &KitBenchArgs, path: &std::path::Path) -> anyhow::Result<Duration> {
    let broker = open_log(path).await?;
    let domain = unique("bench");
    publish(
        broker.as_ref(),
        events(args, &format!("{domain}.order.placed")),
    )
    .await?;
    let start = Instant::now();
    let options = SubscribeOptions::new("bare", format!("{domain}.>"))
        .start(StartPosition::Beginning)
        .prefetch(1000);
    let mut sub = broker.subscribe(options).await?;
    for _ in 0..args.events {
        let d = next_or_stall(sub.next())
            .await?
            .context("subscription ended")??;
        let (_env, event) = d.message.decode::<OrderPlaced>()?;
        std::hint::black_box(event);
        d.ack().await?;
    }
    let elapsed = start.elapsed();
    sub.close().await;
    broker.close().await;
    Ok(elapsed)
}

async fn handle(ctx: Ctx<()>, ev: OrderPlaced) -> Result<(), HandlerError> {
    let insert = Query::insert()
        .into_table(Alias::new("bench_orders"))
        .columns([Alias::new("id"), Alias::new("total_cents")])
        .values_panic([ctx.envelope().id.clone().into(), ev.total_cents.into()])
        .to_owned();
    ctx.db().execute(&insert).await?;
    let subject = ctx.subject().replace("order.placed", "order.confirmed");
    ctx.emit(
        &subject,
        &ev.order_id,
        &OrderConfirmed {
            order_id: ev.order_id.clone(),
            customer_id: ev.customer_id,
            total_cents: ev.total_cents,
            currency: ev.currency,
        },
    );
    Ok(())
}

/// Runs one kit round in a child process (`--one-round MODE`); how long
/// handling took.
fn child_round(args: &KitBenchArgs, dir: &std::path::Path, mode: &str) -> anyhow::Result<Duration> {
    let exe = std::env::current_exe().context("the sluice binary")?;
    let out = std::process::Command::new(exe)
        .args(["bench-kit", "--one-round", mode])
        .args(["--events", &args.events.to_string()])
        .args(["--keys", &args.keys.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--wave", &args.wave.to_string()])
        .arg("--dir")
        .arg(dir)
        // Spans are made at info: on, they are all exported; off, none is
        // made (logs are warnings only either way: the kit logs no event).
        .env("RUST_LOG", if mode == "on" { "info" } else { "warn" })
        .output()
        .context("running a kit round")?;
    anyhow::ensure!(
        out.status.success(),
        "the {mode} round failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("the {mode} round printed {stdout:?}"))?;
    let secs = v["handled_seconds"]
        .as_f64()
        .with_context(|| format!("the {mode} round printed {stdout:?}"))?;
    Ok(Duration::from_secs_f64(secs))
}

/// One kit round with telemetry `mode` (in a child process): on, spans go
/// through the OpenTelemetry layer and a batch exporter to an OTLP/HTTP
/// receiver in this process and every metric is recorded; off, neither.
async fn telemetry_round(
    args: &KitBenchArgs,
    dir: &std::path::Path,
    mode: Telemetry,
) -> anyhow::Result<Duration> {
    match mode {
        Telemetry::Off => Ok(kit_round(args, dir, Metrics::disabled()).await?.0),
        Telemetry::On => {
            let receiver = std::net::TcpListener::bind("127.0.0.1:0")?;
            receiver.set_nonblocking(true)?;
            let endpoint = format!("http://{}", receiver.local_addr()?);
            // The receiver stands in for a collector, a process of its own:
            // it runs on its own thread so it does not share the service's
            // runtime workers.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    // Reads every request whole, chunk by chunk, without
                    // gathering a body it does not decode.
                    let app = axum::Router::new().route(
                        "/v1/traces",
                        axum::routing::post(|body: axum::body::Body| async move {
                            use futures::StreamExt as _;
                            let mut chunks = body.into_data_stream();
                            let mut read = 0;
                            while let Some(Ok(chunk)) = chunks.next().await {
                                read += chunk.len();
                            }
                            std::hint::black_box(read);
                            ""
                        }),
                    );
                    axum::serve(tokio::net::TcpListener::from_std(receiver)?, app).await
                })
            });
            let config = sluice_kit::config::TelemetryConfig {
                otlp_endpoint: Some(endpoint),
                ..Default::default()
            };
            // Logs at warn, as the off round; spans at info for the exporter.
            let telemetry = sluice_kit::telemetry::init(&config, "bench")?;
            let handled = kit_round(args, dir, Metrics::new()).await?.0;
            telemetry.shutdown().await;
            Ok(handled)
        }
    }
}

async fn kit_round(
    args: &KitBenchArgs,
    dir: &std::path::Path,
    metrics: Metrics,
) -> anyhow::Result<(Duration, Duration)> {
    std::fs::create_dir_all(dir)?;
    let broker = open_log(&dir.join("broker.db")).await?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("service.db").display());
    let db = sluice_kit::db::open(&url, 1).await?;
    db.execute_unprepared(
        "CREATE TABLE bench_orders (id VARCHAR(64) PRIMARY KEY, total_cents BIGINT NOT NULL)",
    )
    .await?;
    let domain = unique("bench");
    let subject = format!("{domain}.order.placed");
    publish(broker.as_ref(), events(args, &subject)).await?;
    let rows = sluice_kit::db::readers(&db, 1).await?;
    let options = ConsumerOptions {
        concurrency: args.concurrency,
        max_wave: args.wave,
        max_in_flight: args.wave * args.concurrency * 2,
        prefetch: 1000,
        ..ConsumerOptions::default()
    };
    let start = Instant::now();
    let service = Service::new("bench", broker.clone(), db.clone())
        .metrics(metrics.clone())
        .reactor(
            Reactor::new("bench", ())
                .on(&subject, handle)
                .options(options),
        )
        .start()
        .await?;
    let want = u64::try_from(args.events).unwrap_or(u64::MAX);
    let mut last = (0, Instant::now());
    loop {
        // Counted in the database whether metrics are on or off, so both
        // rounds pay the same for watching (a count every 2 ms cost the off
        // round ~10 % when only it counted in the database).
        let handled = handled_rows(&rows).await?;
        if handled >= want {
            break;
        }
        if handled != last.0 {
            last = (handled, Instant::now());
        }
        anyhow::ensure!(
            last.1.elapsed() < Duration::from_secs(30),
            "no progress for 30 s ({handled} of {want} handled)"
        );
        tokio::time::sleep(POLL).await;
    }
    let handled = start.elapsed();
    while sluice_kit::outbox::backlog(&db).await? > 0 {
        anyhow::ensure!(
            start.elapsed() < handled * 10 + Duration::from_secs(30),
            "the outbox did not drain"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let relayed = start.elapsed();
    service.stop().await;
    broker.close().await;
    db.close().await?;
    Ok((handled, relayed))
}
