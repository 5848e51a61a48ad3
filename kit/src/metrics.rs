//! Metrics in Prometheus format: per subject and consumer group, events
//! received, handled, failed, retried and dead-lettered, handler latency;
//! and each service's outbox backlog.
//!
//! One [`Metrics`] per process (shared by every service `sluice up` runs),
//! rendered by [`Metrics::render`] for a `/metrics` endpoint.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of per-subscription metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubjectLabels {
    /// The event's subject.
    pub subject: String,
    /// The consumer group.
    pub group: String,
}

/// Labels of consumer lag.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    /// The subscription's subject filter.
    pub filter: String,
    /// The consumer group.
    pub group: String,
}

/// Labels of per-service metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service.
    pub service: String,
}

#[derive(Clone)]
struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        // 100 µs to ~6.5 s.
        Histogram::new(exponential_buckets(0.0001, 2.0, 17))
    }
}

/// The process's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    received: Family<SubjectLabels, Counter>,
    handled: Family<SubjectLabels, Counter>,
    failed: Family<SubjectLabels, Counter>,
    retried: Family<SubjectLabels, Counter>,
    dead_lettered: Family<SubjectLabels, Counter>,
    duplicates: Family<SubjectLabels, Counter>,
    duration: Family<SubjectLabels, Histogram, LatencyBuckets>,
    outbox_backlog: Family<ServiceLabels, Gauge>,
    lag: Family<LagLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the kit's metrics, all prefixed `sluice_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let m = Self {
            registry: Arc::new(Mutex::new(Registry::default())),
            received: Family::default(),
            handled: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            duplicates: Family::default(),
            duration: Family::new_with_constructor(LatencyBuckets),
            outbox_backlog: Family::default(),
            lag: Family::default(),
        };
        registry.register(
            "consumer_received",
            "Events received by a consumer group's handlers",
            m.received.clone(),
        );
        registry.register(
            "consumer_handled",
            "Events handled successfully (committed and acked)",
            m.handled.clone(),
        );
        registry.register(
            "consumer_failed",
            "Handler failures (each failed delivery counts)",
            m.failed.clone(),
        );
        registry.register(
            "consumer_retried",
            "Deliveries handed back for redelivery after a backoff",
            m.retried.clone(),
        );
        registry.register(
            "consumer_dead_lettered",
            "Events moved to the dead-letter subject",
            m.dead_lettered.clone(),
        );
        registry.register(
            "consumer_duplicates",
            "Redelivered events the inbox had already seen (acked, not handled again)",
            m.duplicates.clone(),
        );
        registry.register_with_unit(
            "handler_duration",
            "Time spent in a handler",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Outbox rows waiting to be published",
            m.outbox_backlog.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages a consumer group has not acked yet (RabbitMQ: ready messages only)",
            m.lag.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        m
    }

    /// The metrics of consumer group `group`.
    pub fn consumer(&self, group: &str) -> ConsumerMetrics {
        ConsumerMetrics {
            metrics: self.clone(),
            group: group.to_owned(),
            cache: Arc::default(),
        }
    }

    /// The counters of consumer group `group` for `subject`.
    pub fn counts(&self, group: &str, subject: &str) -> ConsumerCounts {
        let labels = SubjectLabels {
            subject: subject.to_owned(),
            group: group.to_owned(),
        };
        let get = |f: &Family<SubjectLabels, Counter>| f.get(&labels).map_or(0, |c| c.get());
        ConsumerCounts {
            received: get(&self.received),
            handled: get(&self.handled),
            failed: get(&self.failed),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            duplicates: get(&self.duplicates),
        }
    }

    /// Sets the outbox backlog of `service`.
    pub fn set_outbox_backlog(&self, service: &str, rows: u64) {
        self.outbox_backlog
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .set(i64::try_from(rows).unwrap_or(i64::MAX));
    }

    /// Sets the lag of `group` on `filter`.
    pub fn set_lag(&self, group: &str, filter: &str, messages: u64) {
        self.lag
            .get_or_create(&LagLabels {
                filter: filter.to_owned(),
                group: group.to_owned(),
            })
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    /// The last lag reported for `group` on `filter`.
    pub fn lag(&self, group: &str, filter: &str) -> Option<i64> {
        self.lag
            .get(&LagLabels {
                filter: filter.to_owned(),
                group: group.to_owned(),
            })
            .map(|g| g.get())
    }

    /// The metrics in the OpenMetrics text format (which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The counters of one consumer group and subject.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerCounts {
    /// Events that reached a handler.
    pub received: u64,
    /// Events handled and acked.
    pub handled: u64,
    /// Failed deliveries.
    pub failed: u64,
    /// Deliveries retried after a backoff.
    pub retried: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Redelivered duplicates acked without handling.
    pub duplicates: u64,
}

/// One consumer group's view of the metrics, with each subject's handles
/// cached (the hot path does one map lookup, no label allocation).
#[derive(Clone, Debug)]
pub struct ConsumerMetrics {
    metrics: Metrics,
    group: String,
    cache: Arc<std::sync::RwLock<std::collections::HashMap<String, Arc<SubjectMetrics>>>>,
}

impl ConsumerMetrics {
    /// Sets this group's lag on `filter`.
    pub(crate) fn set_lag(&self, filter: &str, messages: u64) {
        self.metrics.set_lag(&self.group, filter, messages);
    }

    /// The counters of one subject.
    pub(crate) fn labels(&self, subject: &str) -> Arc<SubjectMetrics> {
        if let Some(m) = self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(subject)
        {
            return m.clone();
        }
        let labels = SubjectLabels {
            subject: subject.to_owned(),
            group: self.group.clone(),
        };
        let m = &self.metrics;
        let handles = Arc::new(SubjectMetrics {
            subject: subject.to_owned(),
            received: m.received.get_or_create_owned(&labels),
            handled: m.handled.get_or_create_owned(&labels),
            failed: m.failed.get_or_create_owned(&labels),
            retried: m.retried.get_or_create_owned(&labels),
            dead_lettered: m.dead_lettered.get_or_create_owned(&labels),
            duplicates: m.duplicates.get_or_create_owned(&labels),
            duration: m.duration.get_or_create_owned(&labels),
        });
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subject.to_owned(), handles.clone());
        handles
    }
}

/// The metric handles of one subject and group.
#[derive(Debug)]
pub(crate) struct SubjectMetrics {
    subject: String,
    received: Counter,
    handled: Counter,
    failed: Counter,
    retried: Counter,
    dead_lettered: Counter,
    duplicates: Counter,
    duration: Histogram,
}

impl SubjectMetrics {
    pub(crate) fn subject(&self) -> &str {
        &self.subject
    }
    pub(crate) fn received(&self) {
        self.received.inc();
    }
    pub(crate) fn handled(&self) {
        self.handled.inc();
    }
    pub(crate) fn failed(&self) {
        self.failed.inc();
    }
    pub(crate) fn retried(&self) {
        self.retried.inc();
    }
    pub(crate) fn duplicate(&self) {
        self.duplicates.inc();
    }
    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.inc();
    }
    pub(crate) fn observe(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }
}
