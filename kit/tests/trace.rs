//! Trace context crosses every broker hop: a client span, the handler of
//! the event it published, the `create` producer span of the event that
//! handler emitted through the outbox, and that event's handler share one
//! trace, each the child of the one before.
//!
//! Its own test binary: the OpenTelemetry layer is the process's global
//! subscriber (a per-thread one misses callsites other tests registered
//! first), and spans are told apart by each test's unique subjects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use sluice_kit::testing::{BrokerBackend, DbBackend};
use sluice_kit::{Reactor, Service};

fn telemetry() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    sluice_kit::testing::traces()
}

fn exporter() -> InMemorySpanExporter {
    telemetry().1.clone()
}

fn provider() -> &'static SdkTracerProvider {
    &telemetry().0
}

async fn trace_context_crosses_every_hop(b: BrokerBackend, d: DbBackend) {
    let exporter = exporter();
    let env = Env::new(b, d).await;
    let probe = Arc::new(Probe::default());
    let placed_subject = env.subject("order.placed");
    let confirmed_subject = env.subject("order.confirmed");
    let svc = Service::new("t", env.broker(), env.tdb.db.clone())
        .reactor(
            Reactor::new("confirm", probe.clone())
                .on(&placed_subject, confirm)
                .options(fast_options()),
        )
        .reactor(
            Reactor::new("confirmed", probe.clone())
                .on(&confirmed_subject, confirmed)
                .options(fast_options()),
        )
        .start()
        .await
        .unwrap();
    {
        let span = tracing::info_span!("send", otel.name = %format_args!("send {placed_subject}"));
        let mut m = placed(&placed_subject, "k", 1);
        span.in_scope(|| sluice_kit::trace::inject(&mut m.headers));
        assert!(
            m.headers.get("traceparent").is_some(),
            "the client span has a trace"
        );
        env.tb.broker.publish(m).await.unwrap();
    }
    eventually("both hops", || async { probe.calls().len() >= 2 }).await;
    svc.stop().await;
    provider().force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "span {name} in {:?}",
                    spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
                )
            })
            .clone()
    };
    let send = find(&format!("send {placed_subject}"));
    let first = find(&format!("process {placed_subject}"));
    let second = find(&format!("process {confirmed_subject}"));
    let trace = send.span_context.trace_id();
    assert_eq!(
        first.span_context.trace_id(),
        trace,
        "same trace after one hop"
    );
    assert_eq!(
        second.span_context.trace_id(),
        trace,
        "same trace after the outbox hop"
    );
    assert_eq!(first.parent_span_id, send.span_context.span_id());
    // The handler's emission is a producer span between the two handlers.
    let create = find(&format!("create {confirmed_subject}"));
    assert_eq!(create.span_kind, opentelemetry::trace::SpanKind::Producer);
    assert_eq!(create.parent_span_id, first.span_context.span_id());
    assert_eq!(second.parent_span_id, create.span_context.span_id());
    assert_eq!(first.span_kind, opentelemetry::trace::SpanKind::Consumer);
    env.cleanup().await;
}

#[tokio::test]
async fn embedded_sqlite() {
    trace_context_crosses_every_hop(BrokerBackend::Embedded, DbBackend::Sqlite).await;
}

#[tokio::test]
async fn embedded_postgres() {
    trace_context_crosses_every_hop(BrokerBackend::Embedded, DbBackend::Postgres).await;
}

#[tokio::test]
async fn nats_postgres() {
    trace_context_crosses_every_hop(BrokerBackend::Nats, DbBackend::Postgres).await;
}

#[tokio::test]
async fn amqp_postgres() {
    trace_context_crosses_every_hop(BrokerBackend::Amqp, DbBackend::Postgres).await;
}
