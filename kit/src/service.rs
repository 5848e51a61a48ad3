//! A service: its consumers (reactors and projections), its outbox relay,
//! its database and broker, started together and stopped gracefully.
//!
//! Shutdown order: consumers stop fetching and finish (commit and ack) what
//! they hold; then the relay publishes what those handlers wrote to the
//! outbox; then the service returns. Deliveries fetched but never started
//! are handed back to the broker for immediate redelivery.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sluice_broker::Broker;
use tokio::task::JoinHandle;

use crate::consumer::{ConsumerError, Runtime};
use crate::handler::FromJob;
use crate::metrics::Metrics;
use crate::outbox::{Relay, RelayHandle, RelayOptions, RelayWaker};
use crate::router::{Projection, Reactor, Spec};
use crate::shutdown::{Shutdown, ShutdownListener};

type Starter = Box<
    dyn FnOnce(
            &Service,
            Option<RelayWaker>,
            ShutdownListener,
        )
            -> futures::future::BoxFuture<'static, Result<JoinHandle<()>, ConsumerError>>
        + Send,
>;

/// A service being assembled.
pub struct Service {
    name: String,
    broker: Arc<dyn Broker>,
    db: DatabaseConnection,
    metrics: Metrics,
    relay: Option<RelayOptions>,
    inbox_retention: Option<Duration>,
    starters: Vec<Starter>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("consumers", &self.starters.len())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service named `name` (its events' `ce-source` is `/sluice/<name>`)
    /// on `broker`, owning `db` (opened with [`crate::db::open`]).
    pub fn new(name: impl Into<String>, broker: Arc<dyn Broker>, db: DatabaseConnection) -> Self {
        Self {
            name: name.into(),
            broker,
            db,
            metrics: Metrics::new(),
            relay: Some(RelayOptions::default()),
            inbox_retention: Some(Duration::from_secs(7 * 24 * 3600)),
            starters: Vec::new(),
        }
    }

    /// Records metrics in `metrics` (shared by the services of a process).
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sets the outbox relay's options; `None` runs no relay (another
    /// process publishes this database's outbox).
    #[must_use]
    pub fn relay(mut self, options: Option<RelayOptions>) -> Self {
        self.relay = options;
        self
    }

    /// How long handled event ids stay in the inbox (default 7 days; they
    /// are pruned hourly). A redelivery older than this is not recognised
    /// as a duplicate, so keep it well above any broker's redelivery
    /// horizon. `None` keeps them forever.
    #[must_use]
    pub fn inbox_retention(mut self, retention: Option<Duration>) -> Self {
        self.inbox_retention = retention;
        self
    }

    /// Adds a reactor.
    #[must_use]
    pub fn reactor<S: Send + Sync + 'static>(self, reactor: Reactor<S>) -> Self {
        self.consumer(reactor.0, false)
    }

    /// Adds a projection.
    #[must_use]
    pub fn projection<S: Send + Sync + 'static>(self, projection: Projection<S>) -> Self {
        self.consumer(projection.0, true)
    }

    fn consumer<S, C>(mut self, spec: Spec<S, C>, projection: bool) -> Self
    where
        S: Send + Sync + 'static,
        C: FromJob<S>,
    {
        self.starters.push(Box::new(move |svc, waker, shutdown| {
            let metrics = svc.metrics.consumer(&spec.name);
            let runtime = Arc::new(Runtime::new(
                spec,
                svc.db.clone(),
                &format!("/sluice/{}", svc.name),
                waker,
                projection,
                metrics,
                broker_kind(svc.broker.as_ref()),
            ));
            let broker = svc.broker.clone();
            Box::pin(async move { runtime.start(broker, shutdown).await })
        }));
        self
    }

    /// The service's database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Starts the relay and every consumer; returns once all are subscribed.
    ///
    /// # Errors
    /// A consumer could not subscribe (those already started are stopped).
    pub async fn start(mut self) -> Result<RunningService, ConsumerError> {
        let shutdown = Shutdown::new();
        let relay = self.relay.clone().map(|o| {
            Relay::new(self.db.clone(), self.broker.clone(), o)
                .with_metrics(self.metrics.clone(), &self.name)
                .spawn()
        });
        let waker = relay.as_ref().map(RelayHandle::waker);
        let mut consumers = Vec::new();
        for starter in std::mem::take(&mut self.starters) {
            match starter(&self, waker.clone(), shutdown.listener()).await {
                Ok(task) => consumers.push(task),
                Err(e) => {
                    let running = RunningService {
                        name: self.name.clone(),
                        shutdown,
                        consumers,
                        relay,
                    };
                    running.stop().await;
                    return Err(e);
                }
            }
        }
        if let Some(retention) = self.inbox_retention {
            consumers.push(tokio::spawn(prune_inbox(
                self.db.clone(),
                retention,
                shutdown.listener(),
            )));
        }
        tracing::info!(service = %self.name, "service started");
        Ok(RunningService {
            name: self.name,
            shutdown,
            consumers,
            relay,
        })
    }
}

/// Prunes inbox entries older than `retention` every hour until shutdown.
async fn prune_inbox(db: DatabaseConnection, retention: Duration, mut stop: ShutdownListener) {
    let keep = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    loop {
        let cutoff = crate::db::now_micros().saturating_sub(keep);
        match crate::inbox::prune(&db, cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "pruned the inbox"),
            Err(e) => tracing::warn!(error = %e, "pruning the inbox failed"),
        }
        tokio::select! {
            () = stop.wait() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// The name of a broker's backend, for span attributes (`messaging.system`).
fn broker_kind(broker: &dyn Broker) -> &'static str {
    match broker.kind() {
        sluice_broker::BrokerKind::Embedded => "sluice-embedded",
        sluice_broker::BrokerKind::Nats => "nats",
        sluice_broker::BrokerKind::Amqp => "rabbitmq",
    }
}

/// A started service.
#[derive(Debug)]
pub struct RunningService {
    name: String,
    shutdown: Shutdown,
    consumers: Vec<JoinHandle<()>>,
    relay: Option<RelayHandle>,
}

impl RunningService {
    /// Wakes the relay (after writing outbox rows outside a handler, e.g. in
    /// an HTTP request's transaction).
    pub fn relay_waker(&self) -> Option<RelayWaker> {
        self.relay.as_ref().map(RelayHandle::waker)
    }

    /// Runs until `stop` fires, then stops gracefully.
    pub async fn run_until(self, mut stop: ShutdownListener) {
        stop.wait().await;
        self.stop().await;
    }

    /// Stops gracefully: consumers finish and ack what they hold, then the
    /// relay publishes what is left in the outbox.
    pub async fn stop(self) {
        self.shutdown.trigger();
        for c in self.consumers {
            let _ = c.await;
        }
        if let Some(relay) = self.relay {
            relay.stop(Duration::from_secs(30)).await;
        }
        tracing::info!(service = %self.name, "service stopped");
    }

    /// Stops at once, as a crash would: nothing is acked or flushed.
    /// Unacked deliveries come back after the ack wait; unpublished outbox
    /// rows are published by the next relay.
    pub fn kill(self) {
        for c in &self.consumers {
            c.abort();
        }
        if let Some(relay) = self.relay {
            relay.abort();
        }
    }
}

/// A service with tasks of its own beside its consumers (request/reply
/// servers, a sender): `stop` tells them to stop through `shutdown` and
/// awaits them before stopping the consumers; `kill` aborts everything.
#[derive(Debug)]
pub struct RunningWithTasks {
    service: RunningService,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningWithTasks {
    /// `service` with `tasks` that stop when `shutdown` is triggered.
    pub fn new(service: RunningService, shutdown: Shutdown, tasks: Vec<JoinHandle<()>>) -> Self {
        Self {
            service,
            shutdown,
            tasks,
        }
    }

    /// Stops the tasks, then the consumers gracefully (the relay publishes
    /// what is left in the outbox).
    pub async fn stop(self) {
        self.shutdown.trigger();
        for t in self.tasks {
            let _ = t.await;
        }
        self.service.stop().await;
    }

    /// Stops at once, as a crash would.
    pub fn kill(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.service.kill();
    }
}

impl crate::app::Stop for RunningWithTasks {
    fn stop(self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(RunningWithTasks::stop(self))
    }
}
