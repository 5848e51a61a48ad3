//! Helpers shared by the kit's integration tests: a broker and database per
//! test, a probe recording handler calls, the handlers and events.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sea_orm::sea_query::{Alias, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use sluice_broker::{
    Broker, OutboundMessage, StartPosition, SubscribeOptions, Subscription, dead_letter,
};
use sluice_kit::testing::{BrokerBackend, DbBackend, TestBroker, TestDb};
use sluice_kit::{
    ConsumerOptions, Ctx, HandlerError, Metrics, Reactor, RetryPolicy, RunningService, Service,
};
use sluice_proto::Envelope;
use sluice_proto::shop::orders::v1::{OrderConfirmed, OrderPlaced};

pub const WAIT: Duration = Duration::from_secs(30);

/// One test's broker and database.
pub struct Env {
    pub tb: TestBroker,
    pub tdb: TestDb,
}

impl Env {
    pub async fn new(b: BrokerBackend, d: DbBackend) -> Self {
        let tb = TestBroker::start(b).await;
        let tdb = TestDb::start(d).await;
        tdb.db
            .execute_unprepared(
                "CREATE TABLE kit_rows (event_id VARCHAR(64) PRIMARY KEY, \
                 k VARCHAR(64) NOT NULL, n BIGINT NOT NULL)",
            )
            .await
            .unwrap();
        Self { tb, tdb }
    }

    pub fn subject(&self, rest: &str) -> String {
        self.tb.subject(rest)
    }

    pub fn broker(&self) -> Arc<dyn Broker> {
        self.tb.broker.clone()
    }

    pub async fn rows(&self) -> i64 {
        count(&self.tdb.db, "SELECT COUNT(*) AS n FROM kit_rows").await
    }

    /// Runs `reactor` alone in a service on this test's broker and database.
    pub async fn start<S: Send + Sync + 'static>(&self, reactor: Reactor<S>) -> RunningService {
        self.start_measured(reactor, &Metrics::new()).await
    }

    /// As [`Env::start`], recording in `metrics`.
    pub async fn start_measured<S: Send + Sync + 'static>(
        &self,
        reactor: Reactor<S>,
        metrics: &Metrics,
    ) -> RunningService {
        Service::new("t", self.broker(), self.tdb.db.clone())
            .metrics(metrics.clone())
            .reactor(reactor)
            .start()
            .await
            .unwrap()
    }

    pub async fn cleanup(self) {
        self.tb.cleanup().await;
        self.tdb.cleanup().await;
    }
}

pub async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

/// What handlers saw.
#[derive(Default)]
pub struct Probe {
    pub calls: Mutex<Vec<Call>>,
    pub batches: Mutex<Vec<usize>>,
    pub fail_first: AtomicU32,
    pub delay: Mutex<Duration>,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub id: String,
    pub key: String,
    pub n: i64,
    pub at: Instant,
    pub task: Option<tokio::task::Id>,
}

impl Probe {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn record(&self, id: &str, key: &str, n: i64) {
        self.calls.lock().unwrap().push(Call {
            id: id.to_owned(),
            key: key.to_owned(),
            n,
            at: Instant::now(),
            task: tokio::task::try_id(),
        });
    }
}

pub fn insert_row(id: &str, key: &str, n: i64) -> sea_orm::sea_query::InsertStatement {
    Query::insert()
        .into_table(Alias::new("kit_rows"))
        .columns([Alias::new("event_id"), Alias::new("k"), Alias::new("n")])
        .values_panic([id.into(), key.into(), n.into()])
        .to_owned()
}

/// The trivial handler: records the call, inserts one row. Fails
/// transiently on the first `fail_first` deliveries; a negative total is a
/// permanent error.
pub async fn record(ctx: Ctx<Arc<Probe>>, ev: OrderPlaced) -> Result<(), HandlerError> {
    let probe = ctx.state().clone();
    probe.record(&ctx.envelope().id, &ev.order_id, ev.total_cents);
    if ev.total_cents < 0 {
        return Err(HandlerError::Permanent(format!(
            "negative total {}",
            ev.total_cents
        )));
    }
    if ctx.delivered() <= probe.fail_first.load(Ordering::SeqCst) {
        return Err(HandlerError::Transient(format!(
            "simulated failure on delivery {}",
            ctx.delivered()
        )));
    }
    let delay = *probe.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    } else {
        tokio::task::yield_now().await;
    }
    ctx.db()
        .execute(&insert_row(
            &ctx.envelope().id,
            &ev.order_id,
            ev.total_cents,
        ))
        .await?;
    Ok(())
}

/// Records the OrderPlaced and emits OrderConfirmed for it.
pub async fn confirm(ctx: Ctx<Arc<Probe>>, ev: OrderPlaced) -> Result<(), HandlerError> {
    ctx.state()
        .record(&ctx.envelope().id, &ev.order_id, ev.total_cents);
    let subject = ctx.subject().replace("order.placed", "order.confirmed");
    ctx.emit(
        &subject,
        &ev.order_id,
        &OrderConfirmed {
            order_id: ev.order_id.clone(),
            customer_id: ev.customer_id.clone(),
            total_cents: ev.total_cents,
            currency: ev.currency.clone(),
        },
    );
    Ok(())
}

pub async fn confirmed(ctx: Ctx<Arc<Probe>>, ev: OrderConfirmed) -> Result<(), HandlerError> {
    ctx.state()
        .record(&ctx.envelope().id, &ev.order_id, ev.total_cents);
    Ok(())
}

pub fn placed(subject: &str, key: &str, n: i64) -> OutboundMessage {
    let env = Envelope::new::<OrderPlaced>("/test").subject(key);
    OutboundMessage::event(
        subject,
        &env,
        &OrderPlaced {
            order_id: key.to_owned(),
            customer_id: "c1".into(),
            lines: vec![],
            total_cents: n,
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
        },
    )
}

/// A message whose envelope says OrderPlaced but whose payload is garbage.
pub fn garbage(subject: &str) -> OutboundMessage {
    let env = Envelope::new::<OrderPlaced>("/test").subject("poison");
    OutboundMessage::new(
        subject,
        env.to_headers(),
        Bytes::from_static(&[0xff, 0xff, 0xff]),
    )
}

pub async fn publish_all(broker: &dyn Broker, messages: Vec<OutboundMessage>) -> Vec<String> {
    let ids = messages
        .iter()
        .map(|m| m.id().unwrap().to_owned())
        .collect();
    for r in broker.publish_batch(messages).await {
        r.unwrap();
    }
    ids
}

pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn fast_options() -> ConsumerOptions {
    ConsumerOptions {
        ack_wait: Duration::from_secs(2),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            jitter: 0.0,
            ..RetryPolicy::default()
        },
        lag_interval: Duration::from_millis(50),
        ..ConsumerOptions::default()
    }
}

pub async fn dead_letters(env: &Env, want: usize) -> Vec<String> {
    let o = SubscribeOptions::new("dlq-reader", format!("dlq.{}.>", env.tb.domain))
        .start(StartPosition::Beginning);
    let mut dlq: Subscription = env.broker().subscribe(o).await.unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < want {
        let d = tokio::time::timeout(WAIT, dlq.next())
            .await
            .expect("dead letters arrive")
            .unwrap()
            .unwrap();
        reasons.push(dead_letter::reason(&d.message).unwrap().to_owned());
        d.ack().await.unwrap();
    }
    dlq.close().await;
    reasons
}
