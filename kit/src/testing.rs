//! The test harness: a service's tests run its handlers against the embedded
//! broker and SQLite in milliseconds, and the same test bodies against NATS,
//! RabbitMQ and PostgreSQL in the integration suite.
//!
//! Every broker and database made here is unique to one test (a random
//! domain, exchange or database name) and removed by `cleanup`. Backends are
//! never skipped: a missing server is a panic saying how to provide it
//! (`scripts/test.sh` provisions everything).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use sluice_broker::testing::unique;
use sluice_broker::{
    Acker, Broker, BrokerError, BrokerKind, Delivery, InboundMessage, OutboundMessage, PublishAck,
    Requests, SubscribeOptions, Subscription, dead_letter,
};

pub use sluice_broker::testing::{NatsServer, amqp_url, unique as unique_name};

/// Which broker a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerBackend {
    /// The embedded SQLite log in a temporary folder.
    Embedded,
    /// A `nats-server` started for the test on a free port.
    Nats,
    /// The local RabbitMQ (`SLUICE_TEST_AMQP_URL`), with a unique exchange.
    Amqp,
}

/// A broker for one test, with a domain (first subject token) of its own.
pub struct TestBroker {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// The test's domain.
    pub domain: String,
    amqp: Option<Arc<sluice_broker::amqp::AmqpBroker>>,
    _guard: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBroker")
            .field("kind", &self.broker.kind())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl TestBroker {
    /// Starts (or connects to) a broker of `backend`.
    ///
    /// # Panics
    /// When the backend's server cannot be reached or started.
    pub async fn start(backend: BrokerBackend) -> Self {
        let domain = unique("kt");
        match backend {
            BrokerBackend::Embedded => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
                let broker = sluice_broker::embedded::EmbeddedBroker::open(
                    &dir.path().join("log.db"),
                    Default::default(),
                )
                .await
                .unwrap_or_else(|e| panic!("open the embedded log: {e}"));
                Self {
                    broker: Arc::new(broker),
                    domain,
                    amqp: None,
                    _guard: Box::new(dir),
                }
            }
            BrokerBackend::Nats => {
                let server = NatsServer::start();
                let broker =
                    sluice_broker::nats::NatsBroker::connect(&server.url(), Default::default())
                        .await
                        .unwrap_or_else(|e| panic!("connect to the test nats-server: {e}"));
                Self {
                    broker: Arc::new(broker),
                    domain,
                    amqp: None,
                    _guard: Box::new(server),
                }
            }
            BrokerBackend::Amqp => {
                let url = amqp_url();
                let options = sluice_broker::amqp::AmqpOptions::for_tests(&unique("sluice-test-"));
                let broker = Arc::new(
                    sluice_broker::amqp::AmqpBroker::connect(&url, options)
                        .await
                        .unwrap_or_else(|e| {
                            panic!("RabbitMQ at {url} is required (run scripts/test.sh): {e}")
                        }),
                );
                Self {
                    broker: broker.clone(),
                    domain,
                    amqp: Some(broker),
                    _guard: Box::new(()),
                }
            }
        }
    }

    /// `<domain>.<rest>`.
    pub fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.domain)
    }

    /// Deletes the test's streams, queues and exchange, and closes the broker.
    ///
    /// # Panics
    /// When the broker refuses.
    pub async fn cleanup(self) {
        // Also removes the domain's dead letters.
        if let Err(e) = self.broker.delete_domain(&self.domain).await {
            panic!("cleanup of {} failed: {e}", self.domain);
        }
        if let Some(amqp) = &self.amqp {
            amqp.delete_topology()
                .await
                .unwrap_or_else(|e| panic!("delete the test exchange and queues: {e}"));
        }
        self.broker.close().await;
    }
}

/// The reasons of the first `n` dead letters of `domain` (subjects
/// `dlq.<domain>.>`, read from the beginning), sorted.
///
/// # Panics
/// When fewer than `n` arrive within `within`, or one has no reason.
pub async fn dead_letter_reasons(
    broker: &dyn Broker,
    domain: &str,
    n: usize,
    within: Duration,
) -> Vec<String> {
    let o = SubscribeOptions::new(unique("dlq-reader"), format!("dlq.{domain}.>"))
        .start(sluice_broker::StartPosition::Beginning);
    let mut dlq = broker
        .subscribe(o)
        .await
        .unwrap_or_else(|e| panic!("subscribe to the dead letters of {domain}: {e}"));
    let mut reasons = Vec::with_capacity(n);
    while reasons.len() < n {
        let d = match tokio::time::timeout(within, dlq.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => panic!("reading dead letters: {e}"),
            Ok(None) => panic!("the dead letters of {domain} ended"),
            Err(_) => panic!(
                "{} of {n} dead letters of {domain}: {reasons:?}",
                reasons.len()
            ),
        };
        let reason = dead_letter::reason(&d.message)
            .unwrap_or_else(|| panic!("a dead letter without a reason: {:?}", d.message.headers))
            .to_owned();
        reasons.push(reason);
        d.ack()
            .await
            .unwrap_or_else(|e| panic!("ack a dead letter: {e}"));
    }
    dlq.close().await;
    reasons.sort();
    reasons
}

/// Runs each named scenario, `async fn(BrokerBackend, DbBackend)`, as four
/// tests in a module of its name: `embedded_sqlite` (the one-machine
/// setup), `embedded_postgres`, `nats_postgres` and `amqp_postgres` (the
/// scaled-out ones). The calling crate needs tokio with `macros`.
#[macro_export]
macro_rules! backend_matrix {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                use $crate::testing::{BrokerBackend, DbBackend};

                #[tokio::test(flavor = "multi_thread")]
                async fn embedded_sqlite() {
                    super::$scenario(BrokerBackend::Embedded, DbBackend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn embedded_postgres() {
                    super::$scenario(BrokerBackend::Embedded, DbBackend::Postgres).await;
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn nats_postgres() {
                    super::$scenario(BrokerBackend::Nats, DbBackend::Postgres).await;
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn amqp_postgres() {
                    super::$scenario(BrokerBackend::Amqp, DbBackend::Postgres).await;
                }
            }
        )*
    };
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbBackend {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A fresh database on the local PostgreSQL (`SLUICE_TEST_DATABASE_URL`).
    Postgres,
}

/// The PostgreSQL server tests use: `SLUICE_TEST_DATABASE_URL`, else the
/// local one as user postgres.
pub fn postgres_url() -> String {
    std::env::var("SLUICE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database for one test, with the kit's tables.
#[derive(Debug)]
pub struct TestDb {
    /// The open connection (pool).
    pub db: DatabaseConnection,
    /// Its URL, to open it again (a restarted service).
    pub url: String,
    postgres: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A fresh database of `backend`.
    ///
    /// # Panics
    /// When PostgreSQL cannot be reached.
    pub async fn start(backend: DbBackend) -> Self {
        match backend {
            DbBackend::Sqlite => {
                let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("service.db").display()
                );
                let db = crate::db::open(&url, 1)
                    .await
                    .unwrap_or_else(|e| panic!("open {url}: {e}"));
                Self {
                    db,
                    url,
                    postgres: None,
                    _dir: Some(dir),
                }
            }
            DbBackend::Postgres => {
                let admin = postgres_url();
                let name = unique("sluice_test_");
                let conn = sea_orm::Database::connect(&admin)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL at {} is required (run scripts/test.sh): {e}",
                            crate::db::redact(&admin)
                        )
                    });
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap_or_else(|e| panic!("create database {name}: {e}"));
                let _ = conn.close().await;
                let url = with_database(&admin, &name);
                let db = crate::db::open(&url, 8)
                    .await
                    .unwrap_or_else(|e| panic!("open {name}: {e}"));
                Self {
                    db,
                    url,
                    postgres: Some(name),
                    _dir: None,
                }
            }
        }
    }

    /// Opens the same database again (as a restarted process would).
    ///
    /// # Panics
    /// When it cannot be opened.
    pub async fn reopen(&self) -> DatabaseConnection {
        crate::db::open(&self.url, 8)
            .await
            .unwrap_or_else(|e| panic!("reopen {}: {e}", crate::db::redact(&self.url)))
    }

    /// Closes the connection and drops a PostgreSQL test database.
    pub async fn cleanup(self) {
        let _ = self.db.close().await;
        if let Some(name) = self.postgres
            && let Ok(conn) = sea_orm::Database::connect(&postgres_url()).await
        {
            let _ = conn
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
            let _ = conn.close().await;
        }
    }
}

/// `url` (a PostgreSQL URL) pointing at database `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > base.find("://").map_or(0, |s| s + 2) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// A broker wrapper that injects faults: lost acks (the broker redelivers
/// after the ack wait, as after a crash between commit and ack) and a
/// publish that hangs after the broker accepted it (a relay killed between
/// publish and marking rows sent).
pub struct FaultyBroker {
    inner: Arc<dyn Broker>,
    lose_acks: Arc<AtomicBool>,
    hang_after_publish: AtomicBool,
}

impl std::fmt::Debug for FaultyBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyBroker").finish_non_exhaustive()
    }
}

impl FaultyBroker {
    /// Wraps `inner`; no fault is on.
    pub fn new(inner: Arc<dyn Broker>) -> Self {
        Self {
            inner,
            lose_acks: Arc::new(AtomicBool::new(false)),
            hang_after_publish: AtomicBool::new(false),
        }
    }

    /// While on, acks are dropped instead of sent.
    pub fn lose_acks(&self, on: bool) {
        self.lose_acks.store(on, Ordering::SeqCst);
    }

    /// While on, publishes reach the broker and then never return.
    pub fn hang_after_publish(&self, on: bool) {
        self.hang_after_publish.store(on, Ordering::SeqCst);
    }

    async fn maybe_hang(&self) {
        if self.hang_after_publish.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Broker for FaultyBroker {
    fn kind(&self) -> BrokerKind {
        self.inner.kind()
    }

    async fn publish(&self, message: OutboundMessage) -> Result<PublishAck, BrokerError> {
        let r = self.inner.publish(message).await;
        self.maybe_hang().await;
        r
    }

    async fn publish_batch(
        &self,
        messages: Vec<OutboundMessage>,
    ) -> Vec<Result<PublishAck, BrokerError>> {
        let r = self.inner.publish_batch(messages).await;
        self.maybe_hang().await;
        r
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, BrokerError> {
        let group: Arc<str> = Arc::from(options.group.as_str());
        let (prefetch, max) = (options.prefetch, options.max_deliveries);
        let mut inner = self.inner.subscribe(options).await?;
        let lose = self.lose_acks.clone();
        Ok(Subscription::spawn(prefetch, max, move |h| {
            tokio::spawn(async move {
                let mut stop = h.stop.clone();
                loop {
                    let item = tokio::select! {
                        _ = stop.changed() => break,
                        item = inner.next() => item,
                    };
                    let Some(item) = item else { break };
                    let item = item.map(|d| {
                        let message = d.message.clone();
                        Delivery::new(
                            message,
                            group.clone(),
                            Box::new(FaultyAcker {
                                inner: std::sync::Mutex::new(Some(d)),
                                lose: lose.clone(),
                            }),
                        )
                    });
                    let ok = match item {
                        Ok(d) => h.deliver(d).await,
                        Err(e) => h.tx.send(Err(e)).await.is_ok(),
                    };
                    if !ok {
                        break;
                    }
                }
                inner.close().await;
            })
        }))
    }

    async fn request(
        &self,
        message: OutboundMessage,
        timeout: Duration,
    ) -> Result<InboundMessage, BrokerError> {
        self.inner.request(message, timeout).await
    }

    async fn serve(&self, subject: &str, group: &str) -> Result<Requests, BrokerError> {
        self.inner.serve(subject, group).await
    }

    async fn delete_group(&self, filter: &str, group: &str) -> Result<(), BrokerError> {
        self.inner.delete_group(filter, group).await
    }

    async fn delete_domain(&self, domain: &str) -> Result<(), BrokerError> {
        self.inner.delete_domain(domain).await
    }

    async fn close(&self) {}
}

struct FaultyAcker {
    inner: std::sync::Mutex<Option<Delivery>>,
    lose: Arc<AtomicBool>,
}

impl FaultyAcker {
    fn take(&self) -> Result<Delivery, BrokerError> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| BrokerError::Ack("already settled".into()))
    }
}

#[async_trait]
impl Acker for FaultyAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        let d = self.take()?;
        if self.lose.load(Ordering::SeqCst) {
            // Dropped unacked: the broker delivers it again after the ack wait.
            drop(d);
            return Ok(());
        }
        d.ack().await
    }

    async fn nack(&self, delay: Duration) -> Result<(), BrokerError> {
        self.take()?.nack(delay).await
    }

    async fn dead_letter(&self, dead_letter: OutboundMessage) -> Result<(), BrokerError> {
        let reason = dead_letter
            .headers
            .get(dead_letter::REASON)
            .unwrap_or("rejected")
            .to_owned();
        self.take()?.dead_letter(&reason).await
    }
}

/// A plain blocking HTTP/1.1 GET of `path` on `addr` (`host:port`):
/// the status and the body.
///
/// # Panics
/// When the server cannot be reached or answers something that is not HTTP.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("send to {addr}: {e}"));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The lines a child process writes to a pipe, read on a thread of their own.
#[derive(Debug)]
pub struct Lines(std::sync::mpsc::Receiver<String>);

impl Lines {
    /// Starts reading `pipe` (a child's stderr or stdout).
    pub fn read(pipe: impl std::io::Read + Send + 'static) -> Self {
        use std::io::BufRead;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// The first line containing `needle`, waiting at most `within`.
    ///
    /// # Panics
    /// When no such line comes in time.
    pub fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line containing {needle:?} within {within:?}"),
            }
        }
    }
}

/// The `host:port` after `http://` in a log line.
pub fn address_in(line: &str) -> Option<&str> {
    line.split("http://").nth(1)?.split('/').next()
}

/// The process's spans, kept in memory: on first use installs the global
/// `tracing` subscriber with an OpenTelemetry layer exporting to an
/// in-memory exporter (a trace test is a test binary of its own, as only one
/// global subscriber can be set), and returns the provider (to flush) and
/// the exporter (to read the finished spans).
///
/// # Panics
/// When another global subscriber is already installed.
pub fn traces() -> &'static (
    opentelemetry_sdk::trace::SdkTracerProvider,
    opentelemetry_sdk::trace::InMemorySpanExporter,
) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    static TRACES: std::sync::OnceLock<(
        opentelemetry_sdk::trace::SdkTracerProvider,
        opentelemetry_sdk::trace::InMemorySpanExporter,
    )> = std::sync::OnceLock::new();
    TRACES.get_or_init(|| {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let simple = opentelemetry_sdk::trace::SimpleSpanProcessor::new(exporter.clone());
        let traces = crate::spans::Traces::new(vec![Box::new(simple)], None, "sluice-test")
            .unwrap_or_else(|e| panic!("cannot set up the span pipeline: {e}"));
        let provider = traces.provider().clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("sluice-test")))
            .with(crate::trace::MessagingSpans::new(&traces));
        tracing::subscriber::set_global_default(subscriber)
            .unwrap_or_else(|e| panic!("another global subscriber is installed: {e}"));
        (provider, exporter)
    })
}

/// Checks `text` (a `/metrics` body) with `promtool check metrics`: the
/// exposition parses and follows Prometheus's naming conventions. promtool
/// comes with Debian's `prometheus` package (`scripts/test.sh` installs it);
/// `SLUICE_PROMTOOL` names another binary.
///
/// # Panics
/// When promtool is missing (never a skip) or finds a problem, with its
/// complaints and the text.
pub fn assert_promtool_accepts(text: &str) {
    use std::io::Write;
    let promtool = std::env::var("SLUICE_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned());
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {promtool} ({e}): install Debian's prometheus package \
                 (scripts/test.sh does) or set SLUICE_PROMTOOL"
            )
        });
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("writing to promtool: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/metrics` of the process at `addr` once it has a line starting with
/// `prefix` (gauges such as the consumer lag appear after the first poll),
/// checked with [`assert_promtool_accepts`].
///
/// # Panics
/// When no such line comes within 30 s, or promtool rejects the text.
pub fn scrape_metrics(addr: &str, prefix: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(addr, "/metrics");
        if status == 200 && body.lines().any(|l| l.starts_with(prefix)) {
            assert_promtool_accepts(&body);
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {prefix} in /metrics of {addr} within 30 s (status {status}):\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_name_replaces_the_one_in_the_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t3"),
            "postgres://h:5432/t3"
        );
    }
}
