//! The transactional outbox and its relay.
//!
//! Events a handler (or an HTTP request) emits are written to the
//! `sluice_outbox` table in the same transaction as the state change they
//! belong to ([`append`]). The [`Relay`] publishes unsent rows in id order,
//! waits for the broker's durable acceptance, then marks them sent. A crash
//! between publish and mark makes the restarted relay publish them again
//! with the same `ce-id`, which the broker and the consumers' inboxes
//! de-duplicate: nothing is lost, nothing is handled twice.
//!
//! On PostgreSQL several replicas of a service may run relays over one
//! database: each pass holds a transaction-scoped advisory lock, so one relay
//! publishes at a time and order is kept.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, Statement, TransactionTrait,
};
use sluice_broker::{Broker, BrokerError, Headers, OutboundMessage};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::db::tables::outbox;

/// Why a relay pass failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or marking rows failed.
    #[error("outbox database error: {0}")]
    Db(#[from] DbErr),
    /// The broker did not accept a message; it stays unsent.
    #[error("publishing outbox row {id} failed: {source}")]
    Publish {
        /// The outbox row.
        id: i64,
        /// The broker's error.
        source: BrokerError,
    },
}

/// Appends `messages` to the outbox through `db` (a transaction, normally:
/// the one holding the state change they announce).
///
/// # Errors
/// The database failed.
pub async fn append(db: &impl ConnectionTrait, messages: &[OutboundMessage]) -> Result<(), DbErr> {
    if messages.is_empty() {
        return Ok(());
    }
    let now = crate::db::now_micros();
    let rows = messages.iter().map(|m| outbox::ActiveModel {
        subject: Set(m.subject.clone()),
        headers: Set(headers_to_json(&m.headers)),
        payload: Set(m.payload.to_vec()),
        created_at: Set(now),
        sent_at: Set(None),
        ..Default::default()
    });
    outbox::Entity::insert_many(rows)
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Emits events from outside a handler — an HTTP request, a command
/// answered by request/reply — through the outbox: build them with
/// [`Emitter::event`], then [`Emitter::commit`] writes them in the same
/// transaction as the state change and wakes the relay.
#[derive(Debug, Clone)]
pub struct Emitter {
    source: String,
    waker: Option<RelayWaker>,
}

impl Emitter {
    /// Events from service `service` (`ce-source` `/sluice/<service>`),
    /// waking `waker` (a running service's relay) after each commit.
    pub fn new(service: &str, waker: Option<RelayWaker>) -> Self {
        Self {
            source: format!("/sluice/{service}"),
            waker,
        }
    }

    /// An event on `subject` about aggregate `key`, correlated with
    /// `correlation_id` (the HTTP request's id), carrying the current trace
    /// context.
    pub fn event<T>(
        &self,
        subject: &str,
        key: &str,
        event: &T,
        correlation_id: Option<&str>,
    ) -> OutboundMessage
    where
        T: prost::Message + prost::Name,
    {
        let mut envelope = sluice_proto::Envelope::new::<T>(&*self.source).subject(key);
        if let Some(c) = correlation_id {
            envelope = envelope.correlation_id(c);
        }
        let mut message = OutboundMessage::event(subject, &envelope, event);
        crate::trace::produce_event(&mut message, &envelope);
        message
    }

    /// Appends `messages` to the outbox in `txn`, commits it, and wakes the
    /// relay. Nothing is published unless the commit succeeds.
    ///
    /// # Errors
    /// Writing or committing failed; the transaction is rolled back.
    pub async fn commit(
        &self,
        txn: sea_orm::DatabaseTransaction,
        messages: &[OutboundMessage],
    ) -> Result<(), DbErr> {
        append(&txn, messages).await?;
        txn.commit().await?;
        if !messages.is_empty()
            && let Some(w) = &self.waker
        {
            w.wake();
        }
        Ok(())
    }
}

/// How many rows wait to be published.
///
/// # Errors
/// The database failed.
pub async fn backlog(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    outbox::Entity::find()
        .filter(outbox::Column::SentAt.is_null())
        .count(db)
        .await
}

fn headers_to_json(headers: &Headers) -> String {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn headers_from_json(text: &str) -> Result<Headers, serde_json::Error> {
    let map: std::collections::BTreeMap<String, String> = serde_json::from_str(text)?;
    Ok(map.into_iter().collect())
}

/// Counts published events by subject (one counter update per subject).
fn count_published(metrics: &crate::metrics::Metrics, service: &str, subjects: &[String]) {
    let mut counts: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for s in subjects {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    for (subject, n) in counts {
        metrics.published(service, subject, n);
    }
}

/// The relay's settings.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Rows published per pass (pipelined).
    pub batch: usize,
    /// How often to look for rows when nobody signals new ones (rows written
    /// by other processes, retries after a broker failure).
    pub poll: Duration,
    /// How long sent rows are kept before pruning.
    pub retention: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch: 512,
            poll: Duration::from_millis(500),
            retention: Duration::from_secs(3600),
        }
    }
}

/// Publishes the outbox of one database.
#[derive(Clone)]
pub struct Relay {
    db: DatabaseConnection,
    broker: Arc<dyn Broker>,
    wake: Arc<Notify>,
    options: RelayOptions,
    metrics: Option<(crate::metrics::Metrics, String)>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Lock id of the relay's PostgreSQL advisory lock ("sluiceob").
const ADVISORY_LOCK: i64 = 0x736c_7569_6365_6f62;

impl Relay {
    /// A relay from `db`'s outbox to `broker`.
    pub fn new(db: DatabaseConnection, broker: Arc<dyn Broker>, options: RelayOptions) -> Self {
        Self {
            db,
            broker,
            wake: Arc::new(Notify::new()),
            options,
            metrics: None,
        }
    }

    /// Reports the backlog of `service`'s outbox in `metrics` (checked when
    /// the relay is idle, at most once a second).
    #[must_use]
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics, service: &str) -> Self {
        self.metrics = Some((metrics, service.to_owned()));
        self
    }

    async fn report_backlog(&self) {
        if let Some((metrics, service)) = &self.metrics
            && metrics.is_enabled()
        {
            match backlog(&self.db).await {
                Ok(n) => metrics.set_outbox_backlog(service, n),
                Err(e) => tracing::debug!(error = %e, "cannot count the outbox backlog"),
            }
        }
    }

    /// What to call after committing outbox rows, so they go out at once.
    pub fn waker(&self) -> RelayWaker {
        RelayWaker(self.wake.clone())
    }

    /// Publishes up to one batch of unsent rows in order and marks the
    /// published ones sent; returns how many were published.
    ///
    /// # Errors
    /// The database failed, or the broker refused a row: rows before it are
    /// marked sent, it and the rest stay for the next pass.
    pub async fn pump_once(&self) -> Result<usize, RelayError> {
        if crate::db::is_postgres(&self.db) {
            let txn = self.db.begin().await?;
            let locked = txn
                .query_one_raw(Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    "SELECT pg_try_advisory_xact_lock($1) AS locked",
                    [ADVISORY_LOCK.into()],
                ))
                .await?
                .map(|r| r.try_get::<bool>("", "locked"))
                .transpose()?
                .unwrap_or(false);
            if !locked {
                txn.rollback().await?;
                return Ok(0);
            }
            let r = self.publish_rows(&txn).await;
            txn.commit().await?;
            r
        } else {
            self.publish_rows(&self.db).await
        }
    }

    async fn publish_rows(&self, conn: &impl ConnectionTrait) -> Result<usize, RelayError> {
        let rows = outbox::Entity::find()
            .filter(outbox::Column::SentAt.is_null())
            .order_by_asc(outbox::Column::Id)
            .limit(self.options.batch as u64)
            .all(conn)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut messages = Vec::with_capacity(rows.len());
        let mut corrupt = Vec::new();
        for row in rows {
            match headers_from_json(&row.headers) {
                Ok(headers) => {
                    ids.push(row.id);
                    messages.push(OutboundMessage::new(row.subject, headers, row.payload));
                }
                Err(e) => {
                    tracing::error!(id = row.id, error = %e, "outbox row has unreadable headers; it is not published");
                    corrupt.push(row.id);
                }
            }
        }
        let subjects: Vec<String> = match &self.metrics {
            Some((m, _)) if m.is_enabled() => messages.iter().map(|m| m.subject.clone()).collect(),
            _ => Vec::new(),
        };
        let results = self.broker.publish_batch(messages).await;
        let mut published = 0;
        let mut failure = None;
        for (id, r) in ids.iter().zip(results) {
            match r {
                Ok(_) => published += 1,
                Err(source) => {
                    failure = Some(RelayError::Publish { id: *id, source });
                    break;
                }
            }
        }
        if let Some((metrics, service)) = &self.metrics {
            count_published(metrics, service, &subjects[..published.min(subjects.len())]);
        }
        // Only the prefix before the first failure counts as sent, so a
        // failed row is published again before anything after it.
        let mut sent: Vec<i64> = ids[..published].to_vec();
        sent.extend(corrupt);
        if !sent.is_empty() {
            outbox::Entity::update_many()
                .col_expr(outbox::Column::SentAt, Expr::value(crate::db::now_micros()))
                .filter(outbox::Column::Id.is_in(sent))
                .exec(conn)
                .await?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(published),
        }
    }

    /// Deletes sent rows older than the retention; returns how many went.
    ///
    /// # Errors
    /// The database failed.
    pub async fn prune(&self) -> Result<u64, DbErr> {
        let keep = i64::try_from(self.options.retention.as_micros()).unwrap_or(i64::MAX);
        let r = outbox::Entity::delete_many()
            .filter(outbox::Column::SentAt.lt(crate::db::now_micros().saturating_sub(keep)))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected)
    }

    /// Runs the relay in a task until [`RelayHandle::stop`].
    pub fn spawn(self) -> RelayHandle {
        let (stop, stop_rx) = watch::channel(false);
        let waker = self.waker();
        let task = tokio::spawn(self.run(stop_rx));
        RelayHandle { stop, task, waker }
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        let mut last_prune = tokio::time::Instant::now();
        let mut last_report = tokio::time::Instant::now() - Duration::from_secs(1);
        loop {
            let stopping = *stop.borrow();
            match self.pump_once().await {
                Ok(n) if n >= self.options.batch => continue,
                Ok(_) if stopping => return,
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay pass failed; retrying");
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = tokio::time::Instant::now();
                self.report_backlog().await;
            }
            if last_prune.elapsed() >= self.options.retention.min(Duration::from_secs(60)) {
                last_prune = tokio::time::Instant::now();
                if let Err(e) = self.prune().await {
                    tracing::warn!(error = %e, "pruning sent outbox rows failed");
                }
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.options.poll) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Wakes a relay after outbox rows were committed.
#[derive(Debug, Clone)]
pub struct RelayWaker(Arc<Notify>);

impl RelayWaker {
    /// Signals that rows are waiting.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    waker: RelayWaker,
}

impl RelayHandle {
    /// Wakes the relay after outbox rows were committed.
    pub fn waker(&self) -> RelayWaker {
        self.waker.clone()
    }

    /// Publishes what is left in the outbox (until a pass publishes nothing
    /// or fails), then stops. Waits at most `deadline`; rows left then are
    /// published by the next run.
    pub async fn stop(self, deadline: Duration) {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(deadline, self.task).await.is_err() {
            tracing::warn!("outbox relay did not finish within {deadline:?}; stopping it");
            abort.abort();
        }
    }

    /// Stops the relay at once, as a crash would: rows published but not
    /// yet marked sent are published again by the next relay.
    pub fn abort(self) {
        self.task.abort();
    }
}
