//! The built-in dashboard: `/dashboard` is one static page (HTML, CSS and a
//! small script, no framework) that follows `/dashboard/stream`, a
//! Server-Sent Events stream of [`Snapshot`]s made every second from the
//! process's own metrics ([`sluice_kit::Metrics::samples`], the numbers
//! Prometheus scrapes): event rates per subject, the topology seen in the
//! traffic (service → subject → consumer group), each group's lag, outcomes,
//! dead letters and handler latency percentiles, and HTTP requests. Dead
//! letters are listed, redriven and purged on the page through
//! `/v1/admin/dlq` with an API key holding the scope `ops`. The most
//! recent traces of an order come from `/dashboard/traces?key=<order id>`:
//! the spans the process kept ([`RecentSpans`]) of every trace that touched
//! the order, in causal order with their timings.
//!
//! In `sluice up` every service shares the edge's metrics, so the page
//! shows the whole shop; a `sluice serve edge` shows what the edge sees.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use sluice_kit::Metrics;
use sluice_kit::samples::Sample;
use sluice_kit::telemetry::RecentSpans;

/// How often the stream sends a snapshot.
const EVERY: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("dashboard.html");

/// `/dashboard`, `/dashboard/snapshot`, `/dashboard/stream` over `metrics`,
/// and `/dashboard/traces` over `recent`.
pub(crate) fn router(metrics: Metrics, recent: Option<RecentSpans>) -> Router {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/snapshot", get(snapshot))
        .route("/dashboard/stream", get(stream))
        .with_state(metrics)
        .merge(
            Router::new()
                .route("/dashboard/traces", get(traces))
                .with_state(recent),
        )
}

/// `GET /dashboard/traces` query.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TracesQuery {
    /// The aggregate key the traces touched: an order id.
    key: String,
    /// At most this many traces, newest first (default 5, at most 20).
    limit: Option<usize>,
}

/// The most recent traces that touched a key (an order), each span with
/// its parent, timing and messaging attributes: what a command caused.
async fn traces(
    State(recent): State<Option<RecentSpans>>,
    crate::json::Params(q): crate::json::Params<TracesQuery>,
) -> Result<Response, crate::problem::Problem> {
    let Some(recent) = recent else {
        return Err(crate::problem::Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "no-traces",
            "this process keeps no spans (sluice up does)",
        ));
    };
    let key = q.key.trim();
    if key.is_empty() || key.len() > 256 {
        return Err(crate::problem::Problem::bad_request(
            "key: an order id (1 to 256 characters)",
        ));
    }
    let limit = q.limit.unwrap_or(5).clamp(1, 20);
    let traces = recent.traces_of_key(key, limit);
    Ok(axum::Json(serde_json::json!({ "key": key, "traces": traces })).into_response())
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

async fn snapshot(State(metrics): State<Metrics>) -> Response {
    let now = Snapshot::of(&metrics.samples(), None);
    axum::Json(now).into_response()
}

async fn stream(State(metrics): State<Metrics>) -> Response {
    let start: Option<(Instant, Snapshot)> = None;
    let events = futures::stream::unfold(start, move |previous| {
        let metrics = metrics.clone();
        async move {
            if previous.is_some() {
                tokio::time::sleep(EVERY).await;
            }
            let at = Instant::now();
            let before = previous.as_ref().map(|(t, s)| (at.duration_since(*t), s));
            let now = Snapshot::of(&metrics.samples(), before);
            let event = Event::default()
                .event("snapshot")
                .json_data(&now)
                .unwrap_or_else(|_| Event::default().comment("unserialisable snapshot"));
            Some((Ok::<_, std::convert::Infallible>(event), Some((at, now))))
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// What the page shows at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Snapshot {
    /// Per subject: events published and handled, with their rates.
    subjects: Vec<SubjectRow>,
    /// Per consumer group: lag, outcomes and handler latency.
    groups: Vec<GroupRow>,
    /// Who publishes what and who consumes it, as seen in the traffic.
    topology: Topology,
    /// HTTP requests by method, route and status.
    http: Vec<HttpRow>,
}

/// One subject's traffic.
#[derive(Debug, Clone, Default, Serialize)]
struct SubjectRow {
    subject: String,
    published: f64,
    handled: f64,
    /// Events published per second since the last snapshot.
    published_rate: f64,
    /// Events handled per second (all groups) since the last snapshot.
    handled_rate: f64,
}

/// One consumer group.
#[derive(Debug, Clone, Default, Serialize)]
struct GroupRow {
    group: String,
    lag: f64,
    handled: f64,
    failed: f64,
    retried: f64,
    dead_lettered: f64,
    /// Handler latency percentiles in seconds (since the process started).
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    /// 95th percentile of the event's age when handled (end to end).
    e2e_p95: Option<f64>,
}

/// The edges of the topology.
#[derive(Debug, Clone, Default, Serialize)]
struct Topology {
    /// Service → subject, with how many events.
    publishes: Vec<Edge>,
    /// Subject → consumer group, with how many events.
    consumes: Vec<Edge>,
}

/// One edge of the topology.
#[derive(Debug, Clone, Serialize)]
struct Edge {
    from: String,
    to: String,
    events: f64,
}

/// HTTP requests of one method, route and status.
#[derive(Debug, Clone, Serialize)]
struct HttpRow {
    method: String,
    route: String,
    status: String,
    requests: f64,
}

impl Snapshot {
    /// The snapshot of `samples`; rates against `before` (how long ago it
    /// was taken, and it), zero without one.
    fn of(samples: &[Sample], before: Option<(Duration, &Snapshot)>) -> Snapshot {
        let mut subjects: BTreeMap<String, SubjectRow> = BTreeMap::new();
        let mut groups: BTreeMap<String, GroupRow> = BTreeMap::new();
        let mut durations: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut ages: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut topology = Topology::default();
        let mut http = Vec::new();
        for s in samples {
            let v = s.value;
            match s.name.as_str() {
                "sluice_published_total" => {
                    subject_row(&mut subjects, s.label("subject")).published += v;
                    topology.publishes.push(Edge {
                        from: s.label("service").to_owned(),
                        to: s.label("subject").to_owned(),
                        events: v,
                    });
                }
                "sluice_consumer_handled_total" => {
                    subject_row(&mut subjects, s.label("subject")).handled += v;
                    group(&mut groups, s.label("group")).handled += v;
                }
                "sluice_consumer_received_total" => topology.consumes.push(Edge {
                    from: s.label("subject").to_owned(),
                    to: s.label("group").to_owned(),
                    events: v,
                }),
                "sluice_consumer_failed_total" => group(&mut groups, s.label("group")).failed += v,
                "sluice_consumer_retried_total" => {
                    group(&mut groups, s.label("group")).retried += v
                }
                "sluice_consumer_dead_lettered_total" => {
                    group(&mut groups, s.label("group")).dead_lettered += v;
                }
                "sluice_consumer_lag" => group(&mut groups, s.label("group")).lag += v,
                "sluice_handler_duration_seconds_bucket" => {
                    add_bucket(&mut durations, s);
                }
                "sluice_event_latency_seconds_bucket" => add_bucket(&mut ages, s),
                "sluice_http_requests_total" => http.push(HttpRow {
                    method: s.label("method").to_owned(),
                    route: s.label("route").to_owned(),
                    status: s.label("status").to_owned(),
                    requests: v,
                }),
                _ => {}
            }
        }
        for (name, buckets) in &durations {
            let g = group(&mut groups, name);
            g.p50 = quantile(0.5, buckets);
            g.p95 = quantile(0.95, buckets);
            g.p99 = quantile(0.99, buckets);
        }
        for (name, buckets) in &ages {
            group(&mut groups, name).e2e_p95 = quantile(0.95, buckets);
        }
        let mut subjects: Vec<SubjectRow> = subjects.into_values().collect();
        if let Some((elapsed, previous)) = before {
            let secs = elapsed.as_secs_f64().max(0.001);
            for row in &mut subjects {
                if let Some(p) = previous.subjects.iter().find(|p| p.subject == row.subject) {
                    row.published_rate = ((row.published - p.published) / secs).max(0.0);
                    row.handled_rate = ((row.handled - p.handled) / secs).max(0.0);
                }
            }
        }
        // Edges with no events yet (a consumer that only saw duplicates) are
        // not traffic.
        topology.publishes.retain(|e| e.events > 0.0);
        topology.consumes.retain(|e| e.events > 0.0);
        Snapshot {
            subjects,
            groups: groups.into_values().collect(),
            topology,
            http,
        }
    }
}

fn group<'a>(rows: &'a mut BTreeMap<String, GroupRow>, name: &str) -> &'a mut GroupRow {
    rows.entry(name.to_owned()).or_insert_with(|| GroupRow {
        group: name.to_owned(),
        ..GroupRow::default()
    })
}

fn subject_row<'a>(
    rows: &'a mut BTreeMap<String, SubjectRow>,
    subject: &str,
) -> &'a mut SubjectRow {
    rows.entry(subject.to_owned())
        .or_insert_with(|| SubjectRow {
            subject: subject.to_owned(),
            ..SubjectRow::default()
        })
}

/// Adds a `_bucket` sample to its group's cumulative buckets (summed over
/// subjects: the buckets are the same for every series).
fn add_bucket(into: &mut BTreeMap<String, Vec<(f64, f64)>>, s: &Sample) {
    let le = match s.label("le") {
        "+Inf" => f64::INFINITY,
        le => match le.parse::<f64>() {
            Ok(v) => v,
            Err(_) => return,
        },
    };
    let buckets = into.entry(s.label("group").to_owned()).or_default();
    match buckets.iter_mut().find(|(b, _)| *b == le) {
        Some((_, count)) => *count += s.value,
        None => buckets.push((le, s.value)),
    }
}

/// The `q` quantile of cumulative histogram buckets `(upper bound, count)`,
/// interpolated linearly within the bucket as Prometheus's
/// `histogram_quantile` does; `None` without observations.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut buckets = buckets.to_vec();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            if le.is_infinite() {
                // Above the highest finite bound: that bound is all we know.
                return Some(lower.0);
            }
            let inside = count - lower.1;
            let fraction = if inside > 0.0 {
                (rank - lower.1) / inside
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let buckets = [(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &buckets), Some(0.1));
        assert!((quantile(0.75, &buckets).unwrap() - 0.15).abs() < 1e-9);
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        // Everything above the highest bound.
        assert_eq!(
            quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 4.0)]),
            Some(0.1)
        );
    }

    #[test]
    fn a_snapshot_has_rates_topology_groups_and_percentiles() {
        let m = Metrics::new();
        m.published("orders", "orders.order.placed", 4);
        m.set_lag("inventory", "orders.order.>", 3);
        let first = Snapshot::of(&m.samples(), None);
        assert_eq!(first.subjects[0].published, 4.0);
        assert_eq!(first.subjects[0].published_rate, 0.0);
        m.published("orders", "orders.order.placed", 6);
        let second = Snapshot::of(&m.samples(), Some((Duration::from_secs(2), &first)));
        let row = &second.subjects[0];
        assert_eq!(
            (row.subject.as_str(), row.published),
            ("orders.order.placed", 10.0)
        );
        assert_eq!(row.published_rate, 3.0);
        assert_eq!(second.topology.publishes[0].from, "orders");
        assert_eq!(second.groups[0].group, "inventory");
        assert_eq!(second.groups[0].lag, 3.0);
    }
}
