//! The consumer runtime: subscribes a reactor or projection to its subjects,
//! orders work by key, runs handlers in database transactions with the inbox
//! and outbox, and settles each delivery by its outcome.
//!
//! Ordering and concurrency: the key of an event is its `ce-subject` (the
//! aggregate id), else its subject. Events of one key are handled one after
//! another in delivery order; different keys are handled in parallel by up
//! to [`ConsumerOptions::concurrency`] workers. At most
//! [`ConsumerOptions::max_in_flight`] deliveries are held at once, so a slow
//! handler slows fetching instead of filling memory.
//!
//! Transactions: a worker takes up to [`ConsumerOptions::max_wave`] waiting
//! events (from the keys it claims) and handles them in one transaction —
//! inbox entries, handler writes, outbox rows, projection checkpoint — then
//! commits once and acks each delivery. If any handler of a wave fails, the
//! wave is rolled back and each of its events is handled again alone, so one
//! failure never takes the others with it. Acks happen only after commit.
//!
//! A transient failure is redelivered after an exponential backoff with
//! jitter (nack with delay; later events of the same key are not held back
//! meanwhile); a permanent one, or the last allowed delivery, is
//! dead-lettered with the reason.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    DatabaseConnection, DatabaseTransaction, EntityTrait, NotSet, Set, TransactionTrait,
};
use sluice_broker::{
    Broker, BrokerError, Delivery, InboundMessage, OutboundMessage, StartPosition,
    SubscribeOptions, Subscription,
};
use sluice_proto::Envelope;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::db::tables::checkpoint;
use crate::handler::{FromJob, JobCtx};
use crate::metrics::ConsumerMetrics;
use crate::outbox::RelayWaker;
use crate::retry::{HandlerError, RetryPolicy, Settled};
use crate::router::{Checkpoint, Handle, Spec};
use crate::shutdown::ShutdownListener;

/// How a consumer fetches, orders, retries and drains.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Workers handling different keys at the same time.
    pub concurrency: usize,
    /// Most deliveries held (queued or being handled) at once.
    pub max_in_flight: usize,
    /// Most events handled in one transaction (and per batch-handler call).
    pub max_wave: usize,
    /// How long one handler may run before it counts as a transient failure.
    pub handler_timeout: Duration,
    /// Backoff and the number of deliveries before dead-lettering.
    pub retry: RetryPolicy,
    /// Where a new consumer group starts.
    pub start: StartPosition,
    /// How long the broker waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Deliveries the broker client fetches ahead.
    pub prefetch: usize,
    /// How long shutdown waits for in-flight events to finish.
    pub drain_timeout: Duration,
    /// How often the group's lag is asked of the broker (for metrics).
    pub lag_interval: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            max_in_flight: 512,
            max_wave: 512,
            handler_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            start: StartPosition::Beginning,
            ack_wait: Duration::from_secs(60),
            prefetch: 256,
            drain_timeout: Duration::from_secs(30),
            lag_interval: Duration::from_secs(5),
        }
    }
}

impl ConsumerOptions {
    /// These options with the overrides of `config` applied.
    #[must_use]
    pub fn with_config(mut self, config: &crate::config::ConsumerConfig) -> Self {
        let ms = Duration::from_millis;
        let c = config;
        if let Some(v) = c.concurrency {
            self.concurrency = v;
        }
        if let Some(v) = c.max_in_flight {
            self.max_in_flight = v;
        }
        if let Some(v) = c.max_wave {
            self.max_wave = v;
        }
        if let Some(v) = c.handler_timeout_ms {
            self.handler_timeout = ms(v);
        }
        if let Some(v) = c.max_deliveries {
            self.retry.max_deliveries = v;
        }
        if let Some(v) = c.initial_backoff_ms {
            self.retry.initial_backoff = ms(v);
        }
        if let Some(v) = c.max_backoff_ms {
            self.retry.max_backoff = ms(v);
        }
        if let Some(v) = c.multiplier {
            self.retry.multiplier = v;
        }
        if let Some(v) = c.jitter {
            self.retry.jitter = v;
        }
        if let Some(v) = c.ack_wait_ms {
            self.ack_wait = ms(v);
        }
        if let Some(v) = c.prefetch {
            self.prefetch = v;
        }
        if let Some(v) = c.drain_timeout_ms {
            self.drain_timeout = ms(v);
        }
        self
    }
}

/// Why a consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The consumer has no handlers.
    #[error("consumer {0} has no handlers")]
    NoRoutes(String),
    /// Subscribing failed.
    #[error("consumer {name} cannot subscribe to {filter}: {source}")]
    Subscribe {
        /// The consumer.
        name: String,
        /// The subject filter.
        filter: String,
        /// The broker's error.
        source: BrokerError,
    },
}

/// One delivery waiting for, or in, a worker.
struct Job {
    envelope: Arc<Envelope>,
    delivery: Delivery,
    key: Arc<str>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// An event a batch handler will get, decoded.
type Decoded = Box<dyn std::any::Any + Send>;

/// How one event ended.
#[derive(Debug)]
enum Outcome {
    Handled,
    Duplicate,
    Ignored,
    Failed(HandlerError),
}

/// Everything a consumer's tasks share.
pub(crate) struct Runtime<S, C> {
    spec: Spec<S, C>,
    db: DatabaseConnection,
    source: Arc<str>,
    waker: Option<RelayWaker>,
    projection: bool,
    /// Whether handled ids go to the inbox (an [`Applier::in_order`] does
    /// without).
    inbox: bool,
    metrics: ConsumerMetrics,
    broker_kind: &'static str,
}

impl<S, C> Runtime<S, C>
where
    S: Send + Sync + 'static,
    C: FromJob<S>,
{
    pub(crate) fn new(
        spec: Spec<S, C>,
        db: DatabaseConnection,
        source: &str,
        waker: Option<RelayWaker>,
        projection: bool,
        metrics: ConsumerMetrics,
        broker_kind: &'static str,
    ) -> Self {
        Self {
            spec,
            db,
            source: Arc::from(source),
            waker,
            projection,
            inbox: true,
            metrics,
            broker_kind,
        }
    }

    /// Subscribes to every filter of the consumer, then handles deliveries
    /// in a task until `shutdown`, drains in-flight events and hands back
    /// what was fetched but not started. Returns once subscribed.
    ///
    /// # Errors
    /// The consumer has no handlers, or a subscription failed.
    pub(crate) async fn start(
        self: Arc<Self>,
        broker: Arc<dyn Broker>,
        shutdown: ShutdownListener,
    ) -> Result<tokio::task::JoinHandle<()>, ConsumerError> {
        let filters = self.spec.filters();
        if filters.is_empty() {
            return Err(ConsumerError::NoRoutes(self.spec.name.clone()));
        }
        let o = &self.spec.options;
        let mut subs = Vec::with_capacity(filters.len());
        for filter in filters.clone() {
            let options = SubscribeOptions::new(self.spec.name.clone(), filter.clone())
                .start(o.start)
                .ack_wait(o.ack_wait)
                // The kit's retry policy dead-letters with the last error on
                // the last allowed delivery; the broker's limit is a backstop
                // for deliveries that never reach a handler (crashes).
                .max_deliveries(o.retry.max_deliveries.saturating_add(1))
                .prefetch(o.prefetch);
            let sub =
                broker
                    .subscribe(options)
                    .await
                    .map_err(|source| ConsumerError::Subscribe {
                        name: self.spec.name.clone(),
                        filter,
                        source,
                    })?;
            subs.push(sub);
        }
        Ok(tokio::spawn(self.serve(subs, broker, filters, shutdown)))
    }

    /// Reports the group's lag on each filter until shutdown.
    async fn sample_lag(
        self: Arc<Self>,
        broker: Arc<dyn Broker>,
        filters: Vec<String>,
        mut stop: ShutdownListener,
    ) {
        loop {
            for filter in &filters {
                match broker.lag(filter, &self.spec.name).await {
                    Ok(Some(n)) => self.metrics.set_lag(filter, n),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, %filter, "cannot read the consumer lag"),
                }
            }
            tokio::select! {
                () = stop.wait() => return,
                () = tokio::time::sleep(self.spec.options.lag_interval) => {}
            }
        }
    }

    async fn serve(
        self: Arc<Self>,
        subs: Vec<Subscription>,
        broker: Arc<dyn Broker>,
        filters: Vec<String>,
        shutdown: ShutdownListener,
    ) {
        let o = &self.spec.options;
        let mut sampler = tokio::task::JoinSet::new();
        if self.metrics.is_enabled() {
            sampler.spawn(self.clone().sample_lag(broker, filters, shutdown.clone()));
        }
        let sched = Arc::new(Sched::default());
        let window = Arc::new(Semaphore::new(o.max_in_flight.max(1)));
        // Join sets: if this task is aborted (a simulated crash), its
        // workers and dispatchers go with it.
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..o.concurrency.max(1) {
            workers.spawn(self.clone().work(sched.clone()));
        }
        let mut dispatchers = tokio::task::JoinSet::new();
        for sub in subs {
            dispatchers.spawn(dispatch(
                sub,
                sched.clone(),
                window.clone(),
                shutdown.clone(),
            ));
        }
        let mut subs = Vec::new();
        while let Some(r) = dispatchers.join_next().await {
            if let Ok(sub) = r {
                subs.push(sub);
            }
        }
        tracing::debug!(consumer = %self.spec.name, pending = sched.pending(), "fetching stopped; draining");
        // Fetching stopped: let the workers finish what they hold.
        if tokio::time::timeout(o.drain_timeout, sched.drained())
            .await
            .is_err()
        {
            tracing::warn!(
                consumer = %self.spec.name,
                left = sched.pending(),
                "in-flight events did not finish within {:?}; they will be redelivered",
                o.drain_timeout
            );
        }
        sched.close();
        if tokio::time::timeout(Duration::from_secs(1), async {
            while workers.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            workers.abort_all();
        }
        tracing::debug!(consumer = %self.spec.name, "workers stopped; handing back the rest");
        for sub in subs {
            sub.close().await;
        }
        sampler.abort_all();
        tracing::info!(consumer = %self.spec.name, "consumer stopped");
    }

    /// A worker: takes waves of events until the scheduler closes.
    async fn work(self: Arc<Self>, sched: Arc<Sched>) {
        loop {
            let notified = sched.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (keys, jobs) = sched.take(self.spec.options.max_wave.max(1));
            if jobs.is_empty() {
                if sched.is_closed() {
                    return;
                }
                notified.await;
                continue;
            }
            let n = jobs.len();
            let outcomes = self.process(&jobs).await;
            let settles = jobs
                .into_iter()
                .zip(outcomes)
                .map(|(job, outcome)| self.settle(job, outcome));
            futures::future::join_all(settles).await;
            sched.release(keys, n);
        }
    }

    async fn settle(&self, job: Job, outcome: Outcome) {
        let labels = self.metrics.labels(&job.delivery.message.subject);
        let result = match outcome {
            Outcome::Handled => {
                labels.received();
                labels.handled();
                labels.handled_after(job.envelope.time);
                job.delivery.ack().await.map(|()| Settled::Acked)
            }
            Outcome::Duplicate => {
                labels.duplicate();
                job.delivery.ack().await.map(|()| Settled::Acked)
            }
            Outcome::Ignored => job.delivery.ack().await.map(|()| Settled::Acked),
            Outcome::Failed(e) => {
                labels.received();
                labels.failed();
                self.spec.options.retry.settle(job.delivery, Err(e)).await
            }
        };
        match result {
            Ok(Settled::Retried(_)) => labels.retried(),
            Ok(Settled::DeadLettered(_)) => labels.dead_lettered(),
            Ok(Settled::Acked) => {}
            Err(e) => tracing::warn!(
                consumer = %self.spec.name,
                subject = labels.subject(),
                error = %e,
                "could not settle a delivery; the broker will deliver it again"
            ),
        }
    }

    /// Handles `jobs` in one transaction; on any failure, each alone.
    async fn process(&self, jobs: &[Job]) -> Vec<Outcome> {
        match self.attempt(jobs).await {
            Ok(outcomes) => outcomes,
            Err(e) if jobs.len() == 1 => vec![Outcome::Failed(e)],
            Err(_) => {
                let mut outcomes = Vec::with_capacity(jobs.len());
                for job in jobs {
                    let one = std::slice::from_ref(job);
                    match self.attempt(one).await {
                        Ok(mut o) => outcomes.push(o.pop().unwrap_or(Outcome::Handled)),
                        Err(e) => outcomes.push(Outcome::Failed(e)),
                    }
                }
                outcomes
            }
        }
    }

    /// One transaction over `jobs`; `Err` when anything failed (rolled back).
    async fn attempt(&self, jobs: &[Job]) -> Result<Vec<Outcome>, HandlerError> {
        let txn = Arc::new(self.db.begin().await?);
        let result = self.run_in(&txn, jobs).await;
        match result {
            Ok((outcomes, emitted)) => {
                let txn = Arc::try_unwrap(txn).map_err(|_| {
                    HandlerError::Transient(
                        "a handler kept its context after returning; its transaction cannot commit"
                            .into(),
                    )
                })?;
                txn.commit().await?;
                if emitted > 0
                    && let Some(w) = &self.waker
                {
                    w.wake();
                }
                if let Some(f) = &self.spec.after_commit {
                    f();
                }
                Ok(outcomes)
            }
            Err(e) => {
                if let Ok(txn) = Arc::try_unwrap(txn) {
                    let _ = txn.rollback().await;
                }
                Err(e)
            }
        }
    }

    /// Runs the handlers of `jobs` inside `txn`; returns the outcomes and
    /// how many events were written to the outbox.
    async fn run_in(
        &self,
        txn: &Arc<DatabaseTransaction>,
        jobs: &[Job],
    ) -> Result<(Vec<Outcome>, usize), HandlerError> {
        let name = &self.spec.name;
        let ids = jobs.iter().map(|j| j.envelope.id.as_str());
        let mut fresh = if self.inbox {
            crate::inbox::record(&**txn, name, ids).await?
        } else {
            ids.map(str::to_owned).collect()
        };
        if self.projection && self.inbox {
            self.skip_replayed(txn, jobs, &mut fresh).await?;
        }
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut emitted = Vec::new();
        // The run of consecutive events of one batch route being gathered:
        // (route index, [(job index, decoded item)]). It is handled before
        // any event of another route, so events apply in stream order.
        let mut run: Option<(usize, Vec<(usize, Decoded)>)> = None;
        for (i, job) in jobs.iter().enumerate() {
            // `remove`: a second delivery of one id within a wave is a duplicate.
            if !fresh.remove(job.envelope.id.as_str()) {
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            let message = &job.delivery.message;
            let Some(r) = self.spec.route(&message.subject) else {
                outcomes.push(Outcome::Ignored);
                continue;
            };
            if run.as_ref().is_some_and(|(route, _)| *route != r)
                && let Some((route, items)) = run.take()
            {
                self.run_batch(txn, jobs, route, items, &mut outcomes, &mut emitted)
                    .await?;
            }
            match &self.spec.routes[r].handle {
                Handle::Single(h) => {
                    let job_ctx = self.job_ctx(txn, job);
                    let out = job_ctx.emitted.clone();
                    let cx = crate::trace::process(&self.span_of(job), std::iter::empty());
                    let started = Instant::now();
                    let fut = h.start(C::from_job(job_ctx), message)?;
                    let r = crate::trace::traced(cx, guard(fut, self.spec.options.handler_timeout))
                        .await;
                    self.metrics
                        .labels(&message.subject)
                        .observe(started.elapsed());
                    r?;
                    emitted.append(&mut out.lock().unwrap_or_else(|p| p.into_inner()));
                    outcomes.push(Outcome::Handled);
                }
                Handle::Batch(b) => match b.decode(&job.envelope, message) {
                    Ok(item) => {
                        run.get_or_insert_with(|| (r, Vec::new())).1.push((i, item));
                        outcomes.push(Outcome::Handled);
                    }
                    Err(e) => {
                        // Poison: dead-letter it, commit the rest.
                        crate::inbox::forget(&**txn, name, &job.envelope.id).await?;
                        outcomes.push(Outcome::Failed(e));
                    }
                },
            }
        }
        if let Some((route, items)) = run.take() {
            self.run_batch(txn, jobs, route, items, &mut outcomes, &mut emitted)
                .await?;
        }
        crate::outbox::append(&**txn, &emitted).await?;
        if self.projection {
            self.checkpoint(txn, jobs, &outcomes).await?;
        }
        Ok((outcomes, emitted.len()))
    }

    /// Calls batch route `r`'s handler on `items` (job index, decoded).
    async fn run_batch(
        &self,
        txn: &Arc<DatabaseTransaction>,
        jobs: &[Job],
        r: usize,
        items: Vec<(usize, Decoded)>,
        outcomes: &mut [Outcome],
        emitted: &mut Vec<OutboundMessage>,
    ) -> Result<(), HandlerError> {
        let Handle::Batch(b) = &self.spec.routes[r].handle else {
            return Ok(());
        };
        let (indexes, items): (Vec<usize>, Vec<_>) = items.into_iter().unzip();
        let Some(first) = indexes.first().map(|i| &jobs[*i]) else {
            return Ok(());
        };
        let job_ctx = self.job_ctx(txn, first);
        let out = job_ctx.emitted.clone();
        let started = Instant::now();
        // One span for the batch: the child of its first event's producer,
        // linked to the others'.
        let cx = crate::trace::process(
            &self.span_of(first),
            indexes[1..].iter().map(|&i| &*jobs[i].envelope),
        );
        let fut = b.start(C::from_job(job_ctx), items);
        let outcome =
            crate::trace::traced(cx, guard(fut, self.spec.options.handler_timeout)).await?;
        self.metrics
            .labels(&first.delivery.message.subject)
            .observe(started.elapsed());
        for (k, error) in outcome.failed {
            let Some(&i) = indexes.get(k) else { continue };
            crate::inbox::forget(&**txn, &self.spec.name, &jobs[i].envelope.id).await?;
            outcomes[i] = Outcome::Failed(error);
        }
        emitted.append(&mut out.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(())
    }

    /// Leaves out of `fresh` the events a replay's rebuilt model already
    /// holds: those at or below the watermark the replay's swap left in the
    /// checkpoint. Read after the inbox insert, which waits while a swap
    /// holds the live tables, so a swap that committed meanwhile is seen.
    async fn skip_replayed(
        &self,
        txn: &DatabaseTransaction,
        jobs: &[Job],
        fresh: &mut HashSet<String>,
    ) -> Result<(), HandlerError> {
        if jobs.iter().all(|j| j.delivery.message.sequence.is_none()) {
            return Ok(());
        }
        let Some(Checkpoint {
            replayed_to: Some(to),
            replayed_until,
            ..
        }) = crate::router::checkpoint(txn, &self.spec.name).await?
        else {
            return Ok(());
        };
        for job in jobs {
            if replayed(&job.delivery.message, to, replayed_until) {
                fresh.remove(job.envelope.id.as_str());
            }
        }
        Ok(())
    }

    /// Advances the projection's checkpoint by the events it applied.
    async fn checkpoint(
        &self,
        txn: &DatabaseTransaction,
        jobs: &[Job],
        outcomes: &[Outcome],
    ) -> Result<(), HandlerError> {
        let applied = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Handled))
            .count();
        let position = jobs
            .iter()
            .filter_map(|j| j.delivery.message.sequence)
            .max()
            .and_then(|s| i64::try_from(s).ok());
        let row = checkpoint::ActiveModel {
            consumer: Set(self.spec.name.clone()),
            position: Set(position),
            events: Set(i64::try_from(applied).unwrap_or(i64::MAX)),
            updated_at: Set(crate::db::now_micros()),
            replayed_to: NotSet,
            replayed_until: NotSet,
        };
        let mut on_conflict = OnConflict::column(checkpoint::Column::Consumer);
        on_conflict
            .value(
                checkpoint::Column::Events,
                Expr::col((checkpoint::Entity, checkpoint::Column::Events))
                    .add(i64::try_from(applied).unwrap_or(i64::MAX)),
            )
            .update_column(checkpoint::Column::UpdatedAt);
        if position.is_some() {
            // Waves of different workers may commit out of order: keep the
            // highest position.
            on_conflict.value(
                checkpoint::Column::Position,
                Expr::cust(
                    "CASE WHEN sluice_checkpoint.position IS NULL \
                     OR excluded.position > sluice_checkpoint.position \
                     THEN excluded.position ELSE sluice_checkpoint.position END",
                ),
            );
        }
        checkpoint::Entity::insert(row)
            .on_conflict(on_conflict)
            .exec_without_returning(txn)
            .await?;
        Ok(())
    }

    fn job_ctx(&self, txn: &Arc<DatabaseTransaction>, job: &Job) -> JobCtx<S> {
        let m = &job.delivery.message;
        JobCtx {
            txn: txn.clone(),
            envelope: job.envelope.clone(),
            subject: Arc::from(m.subject.as_str()),
            sequence: m.sequence,
            delivered: m.delivered,
            state: self.spec.state.clone(),
            source: self.source.clone(),
            emitted: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// What the span of handling `job` says about it.
    fn span_of<'a>(&'a self, job: &'a Job) -> crate::trace::Process<'a> {
        let m = &job.delivery.message;
        crate::trace::Process {
            system: self.broker_kind,
            subject: &m.subject,
            envelope: &job.envelope,
            id: &job.envelope.id,
            group: &self.spec.name,
            correlation_id: job.envelope.correlation_id.as_deref(),
            key: job.envelope.subject.as_deref(),
            delivered: m.delivered,
        }
    }
}

/// Runs a handler future with a timeout, turning a panic into a transient
/// error (it is retried, then dead-lettered) instead of killing the worker.
async fn guard<T>(
    fut: impl std::future::Future<Output = Result<T, HandlerError>>,
    timeout: Duration,
) -> Result<T, HandlerError> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(HandlerError::Transient(format!("handler panicked: {what}")))
        }
        Err(_) => Err(HandlerError::Transient(format!(
            "handler timed out after {timeout:?}"
        ))),
    }
}

/// Settles nothing: deliveries applied by an [`Applier`] are the caller's
/// to ack.
struct NoAck;

#[async_trait::async_trait]
impl sluice_broker::Acker for NoAck {
    async fn ack(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn nack(&self, _delay: Duration) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn dead_letter(&self, _dl: OutboundMessage) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// What [`Applier::apply`] did with a batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Events applied now.
    pub applied: u64,
    /// Events applied before (their id was in the inbox) or matching no route.
    pub unchanged: u64,
    /// Events left out, each with why: not a valid event, or its handler
    /// failed permanently (the running consumer dead-letters those).
    pub skipped: Vec<(String, String)>,
}

/// Applies messages to a projection's tables directly, in the projection's
/// transactions (inbox, handlers, checkpoint), without a consumer group:
/// for replays that read the log themselves.
pub struct Applier<S>(Runtime<S, crate::handler::ProjectionCtx<S>>);

impl<S: Send + Sync + 'static> Applier<S> {
    pub(crate) fn new(
        spec: Spec<S, crate::handler::ProjectionCtx<S>>,
        db: DatabaseConnection,
    ) -> Self {
        let metrics = crate::Metrics::new().consumer(&spec.name);
        Self(Runtime::new(
            spec,
            db,
            "/sluice/replay",
            None,
            true,
            metrics,
            "replay",
        ))
    }

    /// This applier without the inbox: handled ids are not recorded, nor
    /// looked up. Only for a reader that hands over each event once, in
    /// order — a log that keeps each id once (`LogCursor::unique_ids`) read
    /// through a cursor — into a model that nothing else writes.
    #[must_use]
    pub fn in_order(mut self) -> Self {
        self.0.inbox = false;
        self
    }

    /// Applies `messages`, in order, in one transaction (each alone if that
    /// fails, as the consumer does).
    ///
    /// # Errors
    /// A handler failed transiently (e.g. the database): nothing of the
    /// failing event was applied; retry or give up.
    pub async fn apply(&self, messages: Vec<InboundMessage>) -> Result<Applied, HandlerError> {
        let mut done = Applied::default();
        let group: Arc<str> = Arc::from(self.0.spec.name.as_str());
        let mut jobs = Vec::with_capacity(messages.len());
        for message in messages {
            match Envelope::from_headers(&message.headers) {
                Ok(envelope) => {
                    let key: Arc<str> = Arc::from(
                        envelope
                            .subject
                            .as_deref()
                            .unwrap_or(message.subject.as_str()),
                    );
                    jobs.push(Job {
                        envelope: Arc::new(envelope),
                        delivery: Delivery::new(message, group.clone(), Box::new(NoAck)),
                        key,
                        _permit: None,
                    });
                }
                Err(e) => done.skipped.push((describe(&message), e.to_string())),
            }
        }
        for (job, outcome) in jobs.iter().zip(self.0.process(&jobs).await) {
            match outcome {
                Outcome::Handled => done.applied += 1,
                Outcome::Duplicate | Outcome::Ignored => done.unchanged += 1,
                Outcome::Failed(HandlerError::Permanent(reason)) => {
                    done.skipped.push((describe(&job.delivery.message), reason));
                }
                Outcome::Failed(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// Whether a replay's watermark (`to`, published up to `until`) covers `m`:
/// a sequence at or below it, and, where both are known, a log time not
/// after the watermark's (a stream made anew numbers from 1 again, later).
fn replayed(m: &InboundMessage, to: i64, until: Option<i64>) -> bool {
    let Some(sequence) = m.sequence.and_then(|s| i64::try_from(s).ok()) else {
        return false;
    };
    let published = m.timestamp.and_then(crate::db::micros);
    sequence <= to
        && match (published, until) {
            (Some(at), Some(until)) => at <= until,
            _ => true,
        }
}

/// A message as a log line names it: its id, else its subject and sequence.
fn describe(m: &InboundMessage) -> String {
    match (m.id(), m.sequence) {
        (Some(id), _) => id.to_owned(),
        (None, Some(seq)) => format!("{} #{seq}", m.subject),
        (None, None) => m.subject.clone(),
    }
}

/// Feeds one subscription's deliveries to the scheduler until shutdown;
/// returns the subscription for closing once in-flight work is done.
async fn dispatch(
    mut sub: Subscription,
    sched: Arc<Sched>,
    window: Arc<Semaphore>,
    mut stop: ShutdownListener,
) -> Subscription {
    loop {
        let permit = tokio::select! {
            biased;
            () = stop.wait() => break,
            p = window.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let item = tokio::select! {
            biased;
            () = stop.wait() => break,
            item = sub.next_valid() => item,
        };
        match item {
            None => break,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "subscription error; the backend keeps trying");
            }
            Some(Ok((envelope, delivery))) => {
                let key: Arc<str> = Arc::from(
                    envelope
                        .subject
                        .as_deref()
                        .unwrap_or(delivery.message.subject.as_str()),
                );
                sched.push(Job {
                    envelope: Arc::new(envelope),
                    delivery,
                    key,
                    _permit: Some(permit),
                });
            }
        }
    }
    sub
}

/// Per-key queues: a key is handled by at most one worker at a time.
#[derive(Default)]
struct Sched {
    state: Mutex<SchedState>,
    wake: Notify,
}

#[derive(Default)]
struct SchedState {
    queues: HashMap<Arc<str>, VecDeque<Job>>,
    busy: HashSet<Arc<str>>,
    ready: VecDeque<Arc<str>>,
    pending: usize,
    closed: bool,
}

impl Sched {
    fn lock(&self) -> std::sync::MutexGuard<'_, SchedState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, job: Job) {
        let mut s = self.lock();
        s.pending += 1;
        let key = job.key.clone();
        let queue = s.queues.entry(key.clone()).or_default();
        queue.push_back(job);
        let first = queue.len() == 1;
        if first && !s.busy.contains(&key) {
            s.ready.push_back(key);
        }
        drop(s);
        self.wake.notify_waiters();
    }

    /// Claims ready keys and takes up to `max` of their events, in order.
    fn take(&self, max: usize) -> (Vec<Arc<str>>, Vec<Job>) {
        let mut s = self.lock();
        let mut keys = Vec::new();
        let mut jobs = Vec::new();
        while jobs.len() < max {
            let Some(key) = s.ready.pop_front() else {
                break;
            };
            let mut emptied = false;
            if let Some(queue) = s.queues.get_mut(&key) {
                while jobs.len() < max {
                    match queue.pop_front() {
                        Some(j) => jobs.push(j),
                        None => break,
                    }
                }
                emptied = queue.is_empty();
            }
            if emptied {
                s.queues.remove(&key);
            }
            s.busy.insert(key.clone());
            keys.push(key);
        }
        (keys, jobs)
    }

    /// Gives back claimed keys after `n` events were settled.
    fn release(&self, keys: Vec<Arc<str>>, n: usize) {
        let mut s = self.lock();
        s.pending = s.pending.saturating_sub(n);
        for key in keys {
            s.busy.remove(&key);
            if s.queues.get(&key).is_some_and(|q| !q.is_empty()) {
                s.ready.push_back(key);
            }
        }
        drop(s);
        self.wake.notify_waiters();
    }

    fn pending(&self) -> usize {
        self.lock().pending
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_waiters();
    }

    async fn drained(&self) {
        while self.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at(sequence: Option<u64>, micros: Option<u64>) -> InboundMessage {
        InboundMessage {
            subject: "d.x".into(),
            headers: sluice_broker::Headers::new(),
            payload: Default::default(),
            sequence,
            delivered: 1,
            timestamp: micros.map(|m| UNIX_EPOCH + Duration::from_micros(m)),
        }
    }

    #[test]
    fn a_watermark_covers_sequences_up_to_it_published_until_its_time() {
        assert!(replayed(&at(Some(5), Some(100)), 5, Some(100)));
        assert!(replayed(&at(Some(1), Some(50)), 5, Some(100)));
        assert!(!replayed(&at(Some(6), Some(100)), 5, Some(100)), "past it");
        // A stream made anew numbers from 1 again, after the watermark's time.
        assert!(!replayed(&at(Some(2), Some(101)), 5, Some(100)));
        // Where a time is unknown, the sequence decides.
        assert!(replayed(&at(Some(2), None), 5, Some(100)));
        assert!(replayed(&at(Some(2), Some(101)), 5, None));
        assert!(!replayed(&at(None, Some(1)), 5, Some(100)), "no sequence");
    }
}
