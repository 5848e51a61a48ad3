//! Metrics in Prometheus format: per subject and consumer group, events
//! received, handled, failed, retried and dead-lettered, handler latency
//! and end-to-end latency (event time to handled); events published per
//! service and subject; consumer lag; each service's outbox backlog; and
//! HTTP requests by route and status with their latency.
//!
//! One [`Metrics`] per process (shared by every service `sluice up` runs),
//! rendered by [`Metrics::render`] (OpenMetrics) or [`Metrics::render_text`]
//! (Prometheus text format 0.0.4) for a `/metrics` endpoint.

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

/// Labels of published events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishedLabels {
    /// The publishing service.
    pub service: String,
    /// The event's subject.
    pub subject: String,
}

/// Labels of HTTP requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The request method.
    pub method: String,
    /// The matched route template (`/v1/orders/{id}`), or `unmatched`.
    pub route: String,
    /// The response status code.
    pub status: u16,
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
    event_latency: Family<SubjectLabels, Histogram, LatencyBuckets>,
    published: Family<PublishedLabels, Counter>,
    outbox_backlog: Family<ServiceLabels, Gauge>,
    lag: Family<LagLabels, Gauge>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram, LatencyBuckets>,
    /// `false`: nothing is recorded (benchmarks of the kit without metrics).
    enabled: bool,
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
            event_latency: Family::new_with_constructor(LatencyBuckets),
            published: Family::default(),
            outbox_backlog: Family::default(),
            lag: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(LatencyBuckets),
            enabled: true,
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
        registry.register_with_unit(
            "event_latency",
            "Time from an event's ce-time to its handling (end to end)",
            Unit::Seconds,
            m.event_latency.clone(),
        );
        registry.register(
            "published",
            "Events published to the broker (from a service's outbox)",
            m.published.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests served, by method, route and status",
            m.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to serve an HTTP request (until its response head)",
            Unit::Seconds,
            m.http_duration.clone(),
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

    /// Metrics that record nothing (and a consumer with them samples no
    /// lag): what the kit costs without metrics, for benchmarks.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::new()
        }
    }

    /// Whether anything is recorded.
    pub fn is_enabled(&self) -> bool {
        self.enabled
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

    /// Counts `n` events of `subject` published by `service`.
    pub fn published(&self, service: &str, subject: &str, n: u64) {
        if !self.enabled {
            return;
        }
        self.published
            .get_or_create(&PublishedLabels {
                service: service.to_owned(),
                subject: subject.to_owned(),
            })
            .inc_by(n);
    }

    /// How many events of `subject` `service` has published.
    pub fn published_count(&self, service: &str, subject: &str) -> u64 {
        self.published
            .get(&PublishedLabels {
                service: service.to_owned(),
                subject: subject.to_owned(),
            })
            .map_or(0, |c| c.get())
    }

    /// Records one HTTP request served.
    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        if !self.enabled {
            return;
        }
        let labels = HttpLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        };
        self.http_requests.get_or_create(&labels).inc();
        self.http_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
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

    /// The metrics in Prometheus's text format 0.0.4, which every scraper
    /// and `promtool check metrics` read: [`Metrics::render`] with each
    /// counter's family named by its samples (`…_total`), and without the
    /// OpenMetrics-only `# UNIT` and `# EOF` lines.
    pub fn render_text(&self) -> String {
        to_text_format(&self.render())
    }

    /// Every sample name a process exports (`…_total`, `…_bucket`, `…_sum`, `…_count`, gauges).
    pub fn exported_names() -> std::collections::BTreeSet<String> {
        // A family without samples renders nothing, so each is touched
        // once with placeholder labels (a new family must be added here).
        let m = Self::new();
        let subject = m.consumer("group").labels("subject");
        subject.received();
        subject.handled();
        subject.failed();
        subject.retried();
        subject.duplicate();
        subject.dead_lettered();
        subject.observe(Duration::ZERO);
        subject.handled_after(time::OffsetDateTime::now_utc());
        m.published("service", "subject", 1);
        m.http_request("GET", "/", 200, Duration::ZERO);
        m.set_lag("group", "filter", 0);
        m.set_outbox_backlog("service", 0);
        m.samples().into_iter().map(|s| s.name).collect()
    }
}

/// OpenMetrics text (as `prometheus_client` writes it) to Prometheus text
/// format 0.0.4.
fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
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

    /// Whether anything is recorded.
    pub(crate) fn is_enabled(&self) -> bool {
        self.metrics.enabled
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
            latency: m.event_latency.get_or_create_owned(&labels),
            enabled: m.enabled,
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
    latency: Histogram,
    enabled: bool,
}

impl SubjectMetrics {
    pub(crate) fn subject(&self) -> &str {
        &self.subject
    }
    pub(crate) fn received(&self) {
        if self.enabled {
            self.received.inc();
        }
    }
    pub(crate) fn handled(&self) {
        if self.enabled {
            self.handled.inc();
        }
    }
    pub(crate) fn failed(&self) {
        if self.enabled {
            self.failed.inc();
        }
    }
    pub(crate) fn retried(&self) {
        if self.enabled {
            self.retried.inc();
        }
    }
    pub(crate) fn duplicate(&self) {
        if self.enabled {
            self.duplicates.inc();
        }
    }
    pub(crate) fn dead_lettered(&self) {
        if self.enabled {
            self.dead_lettered.inc();
        }
    }
    pub(crate) fn observe(&self, elapsed: Duration) {
        if self.enabled {
            self.duration.observe(elapsed.as_secs_f64());
        }
    }
    /// Records how long after its `ce-time` an event was handled (a clock
    /// behind the producer's counts as 0).
    pub(crate) fn handled_after(&self, event_time: time::OffsetDateTime) {
        if !self.enabled {
            return;
        }
        let seconds = (time::OffsetDateTime::now_utc() - event_time).as_seconds_f64();
        self.latency.observe(seconds.max(0.0));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_text_format_names_counters_by_their_samples_and_drops_openmetrics_lines() {
        let m = Metrics::new();
        m.published("orders", "orders.order.placed", 3);
        m.http_request("POST", "/v1/orders", 202, Duration::from_millis(4));
        m.set_lag("edge-orders", "orders.order.>", 7);
        let text = m.render_text();
        for line in [
            "# HELP sluice_published_total Events published to the broker (from a service's outbox).",
            "# TYPE sluice_published_total counter",
            "sluice_published_total{service=\"orders\",subject=\"orders.order.placed\"} 3",
            "# TYPE sluice_http_requests_total counter",
            "sluice_http_requests_total{method=\"POST\",route=\"/v1/orders\",status=\"202\"} 1",
            "# TYPE sluice_http_request_duration_seconds histogram",
            "sluice_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/orders\",status=\"202\"} 1",
            "# TYPE sluice_consumer_lag gauge",
            "sluice_consumer_lag{filter=\"orders.order.>\",group=\"edge-orders\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            m.render().ends_with("# EOF\n"),
            "OpenMetrics stays as it is"
        );
        assert_eq!(m.published_count("orders", "orders.order.placed"), 3);
    }

    #[test]
    fn exported_names_are_the_samples_of_every_family() {
        let names = Metrics::exported_names();
        let mut expected: Vec<String> = [
            "consumer_received_total",
            "consumer_handled_total",
            "consumer_failed_total",
            "consumer_retried_total",
            "consumer_dead_lettered_total",
            "consumer_duplicates_total",
            "published_total",
            "http_requests_total",
            "outbox_backlog",
            "consumer_lag",
        ]
        .iter()
        .map(|n| format!("sluice_{n}"))
        .collect();
        for histogram in [
            "handler_duration_seconds",
            "event_latency_seconds",
            "http_request_duration_seconds",
        ] {
            for suffix in ["bucket", "sum", "count"] {
                expected.push(format!("sluice_{histogram}_{suffix}"));
            }
        }
        // A family registered in `new` but not touched in `exported_names`
        // renders no samples and would be missing here.
        assert_eq!(
            names,
            expected
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
        );
    }
}
