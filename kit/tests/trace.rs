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
        assert_eq!(
            m.headers.get("tracestate"),
            None,
            "an empty tracestate is not written"
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
    for s in [&first, &create, &second] {
        assert!(
            s.attributes.iter().all(|kv| !kv.value.as_str().is_empty()),
            "no empty attribute on {}: {:?}",
            s.name,
            s.attributes
        );
    }
    // The emitted event is part of the placed event's conversation.
    for s in [&create, &second] {
        assert!(
            s.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "messaging.message.conversation_id"),
            "{} names its conversation",
            s.name
        );
    }
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

/// A handler's own `tracing` span is a child of its `process` span (which
/// is made with the SDK, not as a `tracing` span), and an event emitted in
/// it is that span's child; a failed handler's `process` span is marked
/// with the error.
async fn lookup_then_confirm(
    ctx: sluice_kit::Ctx<Arc<Probe>>,
    ev: sluice_proto::shop::orders::v1::OrderPlaced,
) -> Result<(), sluice_kit::HandlerError> {
    use tracing::Instrument as _;
    if ev.total_cents < 0 {
        return Err(sluice_kit::HandlerError::Permanent(
            "a negative total".into(),
        ));
    }
    async { confirm(ctx, ev).await }
        .instrument(tracing::info_span!("lookup"))
        .await
}

#[tokio::test]
async fn handler_spans_nest_under_process_and_failures_are_marked() {
    use opentelemetry::trace::Status;
    let exporter = exporter();
    let env = Env::new(BrokerBackend::Embedded, DbBackend::Sqlite).await;
    let probe = Arc::new(Probe::default());
    let placed_subject = env.subject("order.placed");
    let confirmed_subject = env.subject("order.confirmed");
    let svc = Service::new("t", env.broker(), env.tdb.db.clone())
        .reactor(
            Reactor::new("lookup", probe.clone())
                .on(&placed_subject, lookup_then_confirm)
                .options(fast_options()),
        )
        .start()
        .await
        .unwrap();
    let client = tracing::info_span!("client");
    for (key, total) in [("good", 5), ("bad", -1)] {
        let mut m = placed(&placed_subject, key, total);
        client.in_scope(|| sluice_kit::trace::inject(&mut m.headers));
        env.tb.broker.publish(m).await.unwrap();
    }
    eventually("the good event handled", || async {
        !probe.calls().is_empty()
    })
    .await;
    let process = format!("process {placed_subject}");
    eventually("the bad event's span", || async {
        provider().force_flush().unwrap();
        exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .any(|s| s.name == process && matches!(s.status, Status::Error { .. }))
    })
    .await;
    svc.stop().await;
    provider().force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let keyed = |name: &str, key: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && s.attributes
                        .iter()
                        .any(|kv| kv.key.as_str() == "sluice.key" && kv.value.as_str() == key)
            })
            .unwrap_or_else(|| panic!("span {name} of {key}"))
            .clone()
    };
    let good = keyed(&process, "good");
    assert_eq!(good.status, Status::Unset, "the good event's span");
    let lookup = spans
        .iter()
        .find(|s| s.name == "lookup" && s.parent_span_id == good.span_context.span_id())
        .expect("the handler's own span is the process span's child");
    assert_eq!(lookup.span_context.trace_id(), good.span_context.trace_id());
    let create = keyed(&format!("create {confirmed_subject}"), "good");
    assert_eq!(
        create.parent_span_id,
        lookup.span_context.span_id(),
        "an event emitted inside the handler's span is its child"
    );
    let bad = keyed(&process, "bad");
    match &bad.status {
        Status::Error { description } => {
            assert!(description.contains("a negative total"), "{description}")
        }
        other => panic!("the failed handler's span: {other:?}"),
    }
    env.cleanup().await;
}
