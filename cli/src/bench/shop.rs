//! `sluice bench-shop`: orders through the whole reference shop as
//! `sluice up` runs it (embedded log, one SQLite database per service),
//! from the `orders.cmd.place` command to `orders.order.confirmed`:
//! five consumer hops (orders → inventory → orders → payments → orders),
//! each a transaction with inbox and outbox.
//!
//! Two measurements: latency at a fixed arrival rate (first, in the steady
//! state), and throughput (a burst of orders published as fast as the log
//! takes them, timed until the last is confirmed). Beside them, in the same run, the same five hops as
//! bare consumers on the same log (consume, publish the next hop, ack; no
//! database), which is the floor the broker sets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use sluice_broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use sluice_broker::{Broker, OutboundMessage, StartPosition, SubscribeOptions, Subscription};
use sluice_kit::rpc::Requester;
use sluice_kit::{KitConfig, Metrics};
use sluice_proto::Envelope;
use sluice_proto::shop::accounts::v1::{Register, RegisterResult};
use sluice_proto::shop::inventory::v1::{CreateProduct, ProductResult};
use sluice_proto::shop::orders::v1::{PlaceOrder, PlaceOrderLine};

use super::next_or_stall;
use crate::platform::Platform;

/// Arguments of `sluice bench-shop`.
#[derive(Debug, clap::Args)]
pub(crate) struct ShopBenchArgs {
    /// Orders in the throughput burst.
    #[arg(long, default_value_t = 5_000)]
    orders: usize,
    /// Arrival rate (orders/s) of the latency measurement.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds the latency measurement lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Distinct products (and customers) the orders are spread over.
    #[arg(long, default_value_t = 50)]
    products: usize,
    /// Where the log and databases are written (a temporary directory by default).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Print results as JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// Latency percentiles of one measurement.
#[derive(Debug, Default, Clone, Copy)]
struct Percentiles {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    if samples.is_empty() {
        return Percentiles::default();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i.min(samples.len() - 1)]
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Runs the benchmark and prints the figures.
pub(crate) async fn run(args: ShopBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.orders > 0 && args.rate > 0 && args.seconds > 0 && args.products > 0,
        "--orders, --rate, --seconds and --products must be positive"
    );
    let tmp = tempfile::tempdir().context("temporary directory")?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;

    // The floor: five bare hops on a log of their own.
    tracing::info!("bare chain: burst and paced");
    let raw = Chain::start(&dir.join("raw.db")).await?;
    let raw_latency = raw.paced(args.rate, args.seconds).await?;
    let raw_burst = raw.burst(args.orders).await?;
    raw.stop().await;

    tracing::info!("shop: starting, products and customers");
    let shop = Shop::start(&dir, args.products).await?;
    // Latency first, in the steady state: after the burst the services
    // would still be working off its tail (e-mails, relays).
    tracing::info!("shop: paced");
    let (latency, placed_latency, breakdown) = shop.paced(args.rate, args.seconds).await?;
    tracing::info!("shop: burst");
    let burst = shop.burst(args.orders).await?;
    shop.stop().await;

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let paced_n = (args.rate * args.seconds) as usize;
    let rows = [
        (
            "bare 5-hop chain (consume, publish, ack)",
            rate(args.orders, raw_burst),
            raw_latency,
        ),
        (
            "shop: orders.cmd.place -> orders.order.confirmed",
            rate(args.orders, burst),
            latency,
        ),
        (
            "shop: OrderPlaced (ce-time) -> orders.order.confirmed",
            rate(args.orders, burst),
            placed_latency,
        ),
    ];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if args.json {
        for (what, r, p) in rows {
            println!(
                "{{\"backend\":\"embedded\",\"database\":\"sqlite\",\"what\":\"{what}\",\"burst\":{},\"per_s\":{r:.0},\"paced_rate\":{},\"paced\":{paced_n},\"p50_ms\":{:.2},\"p90_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
                args.orders,
                args.rate,
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.max)
            );
        }
        for (what, p) in &breakdown {
            println!(
                "{{\"hop\":\"{what}\",\"p50_ms\":{:.2},\"p99_ms\":{:.2}}}",
                ms(p.p50),
                ms(p.p99)
            );
        }
        println!("{{\"peak_rss_kib\":{}}}", peak_rss_kib().unwrap_or(0));
    } else {
        println!(
            "embedded log + SQLite; {} orders/s for {} s ({paced_n} orders), then a burst of {} orders",
            args.rate, args.seconds, args.orders
        );
        println!(
            "{:<55} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "", "orders/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for (what, r, p) in rows {
            println!(
                "{what:<55} {r:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                ms(p.p50),
                ms(p.p90),
                ms(p.p99),
                ms(p.max)
            );
        }
        println!("hops of the paced orders (ce-time to ce-time; p50 / p99 ms):");
        for (what, p) in &breakdown {
            println!("  {what:<53} {:>9.2} {:>9.2}", ms(p.p50), ms(p.p99));
        }
        if let Some(kib) = peak_rss_kib() {
            println!("peak RSS {} MiB", kib / 1024);
        }
    }
    Ok(())
}

/// The process's peak resident set (VmHWM), where /proc has it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Five bare consumers, each forwarding to the next subject (pipelined:
/// publish, then ack, with many in flight).
struct Chain {
    broker: Arc<dyn Broker>,
    hops: Vec<tokio::task::JoinHandle<()>>,
}

const HOPS: usize = 5;

impl Chain {
    async fn start(path: &std::path::Path) -> anyhow::Result<Self> {
        let broker: Arc<dyn Broker> = Arc::new(
            EmbeddedBroker::open(path, EmbeddedOptions::default())
                .await
                .context("open the raw log")?,
        );
        let mut hops = Vec::new();
        for i in 0..HOPS {
            let o = SubscribeOptions::new(format!("hop{i}"), format!("chain.hop.{i}"));
            let mut sub = broker.subscribe(o).await.context("subscribe a hop")?;
            let b = broker.clone();
            hops.push(tokio::spawn(async move {
                // Up to 256 messages in flight per hop, as the kit has.
                let window = Arc::new(tokio::sync::Semaphore::new(256));
                let mut tasks = tokio::task::JoinSet::new();
                while let Some(Ok(d)) = sub.next().await {
                    let Ok(permit) = window.clone().acquire_owned().await else {
                        return;
                    };
                    let b = b.clone();
                    tasks.spawn(async move {
                        // A new event id per hop, as a service's emitted
                        // event has (the log de-duplicates on it).
                        let mut headers = d.message.headers.clone();
                        headers.insert("ce-id", uuid::Uuid::now_v7().to_string());
                        let m = OutboundMessage::new(
                            format!("chain.hop.{}", i + 1),
                            headers,
                            d.message.payload.clone(),
                        );
                        if b.publish(m).await.is_ok() {
                            let _ = d.ack().await;
                        }
                        drop(permit);
                    });
                    while tasks.try_join_next().is_some() {}
                }
            }));
        }
        Ok(Self { broker, hops })
    }

    async fn observe(&self) -> anyhow::Result<Subscription> {
        let o = SubscribeOptions::new(
            sluice_broker::testing::unique("end"),
            format!("chain.hop.{HOPS}"),
        );
        Ok(self.broker.subscribe(o).await?)
    }

    fn message(id: &str) -> OutboundMessage {
        let e = Envelope::new::<PlaceOrder>("/bench").subject(id);
        let cmd = PlaceOrder {
            order_id: id.to_owned(),
            ..Default::default()
        };
        OutboundMessage::event("chain.hop.0", &e, &cmd)
    }

    async fn burst(&self, n: usize) -> anyhow::Result<Duration> {
        let mut end = self.observe().await?;
        let start = Instant::now();
        publish_all(
            &self.broker,
            (0..n).map(|i| Self::message(&format!("b{i}"))),
        )
        .await?;
        for _ in 0..n {
            let d = next_or_stall(end.next()).await?.context("chain ended")??;
            d.ack().await?;
        }
        let took = start.elapsed();
        end.close().await;
        Ok(took)
    }

    async fn paced(&self, rate: u32, seconds: u32) -> anyhow::Result<Percentiles> {
        let mut end = self.observe().await?;
        let n = (rate * seconds) as usize;
        let sent = Arc::new(std::sync::Mutex::new(HashMap::with_capacity(n)));
        let publisher = {
            let (b, sent) = (self.broker.clone(), sent.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
                for i in 0..n {
                    tick.tick().await;
                    let id = format!("p{i}");
                    if let Ok(mut s) = sent.lock() {
                        s.insert(id.clone(), Instant::now());
                    }
                    b.publish(Self::message(&id)).await?;
                }
                anyhow::Ok(())
            })
        };
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let d = next_or_stall(end.next()).await?.context("chain ended")??;
            let now = Instant::now();
            if let Some(id) = d.message.headers.get("ce-subject")
                && let Some(t) = sent.lock().ok().and_then(|s| s.get(id).copied())
            {
                samples.push(now - t);
            }
            d.ack().await?;
        }
        publisher.await??;
        end.close().await;
        Ok(percentiles(samples))
    }

    async fn stop(self) {
        for h in self.hops {
            h.abort();
        }
        self.broker.close().await;
    }
}

/// Publishes `messages` with up to 256 in flight.
async fn publish_all(
    broker: &Arc<dyn Broker>,
    messages: impl Iterator<Item = OutboundMessage>,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let results: Vec<_> = futures::stream::iter(messages.map(|m| broker.publish(m)))
        .buffer_unordered(256)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// The shop as `sluice up` runs it, with products and customers.
struct Shop {
    broker: Arc<dyn Broker>,
    platform: Platform,
    products: Vec<String>,
    customers: Vec<String>,
    subjects: sluice_orders::Subjects,
}

impl Shop {
    async fn start(dir: &std::path::Path, products: usize) -> anyhow::Result<Self> {
        let broker: Arc<dyn Broker> = Arc::new(
            EmbeddedBroker::open(&dir.join("broker.db"), EmbeddedOptions::default())
                .await
                .context("open the shop's log")?,
        );
        let platform =
            Platform::start(broker.clone(), dir, &KitConfig::default(), &Metrics::new()).await?;
        let requester = Requester::new(broker.clone(), "bench", Duration::from_secs(30));
        let mut ids = Vec::with_capacity(products);
        let mut customers = Vec::with_capacity(products);
        for i in 0..products {
            let c = CreateProduct {
                sku: format!("bench-{i}"),
                name: format!("Bench product {i}"),
                price_cents: 1000 + i64::try_from(i).unwrap_or(0),
                currency: "EUR".into(),
                stock: 1_000_000_000,
            };
            let r: ProductResult = requester
                .request(
                    &sluice_inventory::Subjects::default().create_product,
                    &c,
                    None,
                )
                .await?;
            anyhow::ensure!(r.ok, "create product: {}", r.error);
            ids.push(r.product.map(|p| p.product_id).unwrap_or_default());
            let reg = Register {
                email: format!("bench-{i}@example.com"),
                password: "correct horse battery".into(),
            };
            let r: RegisterResult = requester
                .request(&sluice_accounts::Subjects::default().register, &reg, None)
                .await?;
            anyhow::ensure!(r.ok, "register a customer: {}", r.error);
            customers.push(r.account_id);
        }
        let shop = Self {
            broker,
            platform,
            products: ids,
            customers,
            subjects: sluice_orders::Subjects::default(),
        };
        // One order end to end: the price list and every consumer are up.
        shop.burst(1).await?;
        Ok(shop)
    }

    fn order(&self, i: usize) -> (String, OutboundMessage) {
        let id = uuid::Uuid::now_v7().to_string();
        let cmd = PlaceOrder {
            order_id: id.clone(),
            customer_id: self.customers[i % self.customers.len()].clone(),
            lines: vec![PlaceOrderLine {
                product_id: self.products[i % self.products.len()].clone(),
                quantity: 1,
            }],
            payment_token: "tok_visa".into(),
        };
        let e = Envelope::new::<PlaceOrder>("/sluice/bench").subject(&id);
        (id, OutboundMessage::event(&self.subjects.place, &e, &cmd))
    }

    async fn observe(&self) -> anyhow::Result<Subscription> {
        let o = SubscribeOptions::new(
            sluice_broker::testing::unique("bench"),
            "orders.order.>".to_owned(),
        )
        .start(StartPosition::New);
        Ok(self.broker.subscribe(o).await?)
    }

    /// Publishes `n` orders at once; the time until the last is confirmed.
    async fn burst(&self, n: usize) -> anyhow::Result<Duration> {
        let mut events = self.observe().await?;
        let (ids, messages): (Vec<_>, Vec<_>) = (0..n).map(|i| self.order(i)).unzip();
        let mut waiting: std::collections::HashSet<String> = ids.into_iter().collect();
        let start = Instant::now();
        publish_all(&self.broker, messages.into_iter()).await?;
        while !waiting.is_empty() {
            let d = next_or_stall(events.next())
                .await?
                .context("events ended")??;
            let subject = d.message.subject.clone();
            let id = d
                .message
                .headers
                .get("ce-subject")
                .unwrap_or_default()
                .to_owned();
            d.ack().await?;
            if subject == self.subjects.order_cancelled && waiting.contains(&id) {
                anyhow::bail!("order {id} was cancelled");
            }
            if subject == self.subjects.order_confirmed {
                waiting.remove(&id);
            }
        }
        let took = start.elapsed();
        events.close().await;
        Ok(took)
    }

    /// Orders at `rate` per second for `seconds`: the latencies from the
    /// command's publication, and from `OrderPlaced`'s `ce-time`, to the
    /// confirmation.
    async fn paced(
        &self,
        rate: u32,
        seconds: u32,
    ) -> anyhow::Result<(Percentiles, Percentiles, Vec<(&'static str, Percentiles)>)> {
        let mut events = self.observe().await?;
        // Every hop's event, by order and subject, with its ce-time.
        let times: Arc<std::sync::Mutex<HashMap<(String, String), SystemTime>>> = Arc::default();
        let mut collectors = Vec::new();
        for filter in ["inventory.stock.>", "payments.>"] {
            let o = SubscribeOptions::new(sluice_broker::testing::unique("hops"), filter)
                .start(StartPosition::New);
            let mut sub = self.broker.subscribe(o).await?;
            let times = times.clone();
            collectors.push(tokio::spawn(async move {
                while let Some(Ok(d)) = sub.next().await {
                    if let Ok(e) = Envelope::from_headers(&d.message.headers)
                        && let Some(id) = e.subject.clone()
                        && let Ok(mut t) = times.lock()
                    {
                        t.insert((id, d.message.subject.clone()), e.time.into());
                    }
                    let _ = d.ack().await;
                }
            }));
        }
        let n = (rate * seconds) as usize;
        let orders: Vec<_> = (0..n).map(|i| self.order(i)).collect();
        let sent = Arc::new(std::sync::Mutex::new(HashMap::with_capacity(n)));
        let publisher = {
            let (b, sent) = (self.broker.clone(), sent.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
                for (id, m) in orders {
                    tick.tick().await;
                    if let Ok(mut s) = sent.lock() {
                        s.insert(id, (Instant::now(), SystemTime::now()));
                    }
                    b.publish(m).await?;
                }
                anyhow::Ok(())
            })
        };
        let mut from_command = Vec::with_capacity(n);
        let mut from_placed = Vec::with_capacity(n);
        let mut placed_at: HashMap<String, SystemTime> = HashMap::with_capacity(n);
        while from_command.len() < n {
            let d = next_or_stall(events.next())
                .await?
                .context("events ended")??;
            let (now, wall) = (Instant::now(), SystemTime::now());
            let id = d
                .message
                .headers
                .get("ce-subject")
                .unwrap_or_default()
                .to_owned();
            if let Ok(e) = Envelope::from_headers(&d.message.headers)
                && let Ok(mut t) = times.lock()
            {
                t.insert((id.clone(), d.message.subject.clone()), e.time.into());
            }
            if d.message.subject == self.subjects.order_placed {
                if let Ok(e) = Envelope::from_headers(&d.message.headers) {
                    placed_at.insert(id, e.time.into());
                }
            } else if d.message.subject == self.subjects.order_confirmed {
                if let Ok(mut t) = times.lock() {
                    t.insert((id.clone(), "observed".into()), wall);
                }
                if let Some((t, _)) = sent.lock().ok().and_then(|s| s.get(&id).copied()) {
                    from_command.push(now - t);
                }
                if let Some(t) = placed_at.remove(&id) {
                    from_placed.push(wall.duration_since(t).unwrap_or_default());
                }
            } else if d.message.subject == self.subjects.order_cancelled {
                anyhow::bail!("order {id} was cancelled");
            }
            d.ack().await?;
        }
        publisher.await??;
        events.close().await;
        // The hops' events are published before the confirmation.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for c in collectors {
            c.abort();
        }
        let times = times.lock().map(|t| t.clone()).unwrap_or_default();
        let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
        let inventory = sluice_inventory::Subjects::default();
        let payments = sluice_payments::Subjects::default();
        let s = &self.subjects;
        let stages: [(&'static str, &str, &str); 5] = [
            (
                "orders: OrderPlaced -> inventory: StockReserved",
                &s.order_placed,
                &inventory.stock_reserved,
            ),
            (
                "inventory: StockReserved -> orders: ChargePayment",
                &inventory.stock_reserved,
                &s.charge,
            ),
            (
                "orders: ChargePayment -> payments: PaymentCaptured",
                &s.charge,
                &payments.payment_captured,
            ),
            (
                "payments: PaymentCaptured -> orders: OrderConfirmed",
                &payments.payment_captured,
                &s.order_confirmed,
            ),
            (
                "OrderConfirmed -> observed by a subscriber",
                &s.order_confirmed,
                "observed",
            ),
        ];
        let mut breakdown = Vec::new();
        let mut first = Vec::new();
        for (id, (_, at)) in &sent {
            if let Some(t) = times.get(&(id.clone(), s.order_placed.clone())) {
                first.push(t.duration_since(*at).unwrap_or_default());
            }
        }
        breakdown.push((
            "command published -> orders: OrderPlaced",
            percentiles(first),
        ));
        for (what, from, to) in stages {
            let mut samples = Vec::new();
            for id in sent.keys() {
                if let (Some(a), Some(b)) = (
                    times.get(&(id.clone(), from.to_owned())),
                    times.get(&(id.clone(), to.to_owned())),
                ) {
                    samples.push(b.duration_since(*a).unwrap_or_default());
                }
            }
            breakdown.push((what, percentiles(samples)));
        }
        Ok((
            percentiles(from_command),
            percentiles(from_placed),
            breakdown,
        ))
    }

    async fn stop(self) {
        self.platform.stop().await;
        self.broker.close().await;
    }
}
