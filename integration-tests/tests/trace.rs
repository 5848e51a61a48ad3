//! One trace per client request across every hop, on every backend: a
//! client places an order through the REST edge with its own W3C
//! `traceparent`; every span of the flow — the edge's HTTP server span, each
//! `create <subject>` producer span, each `process <subject>` consumer span
//! of orders, inventory, payments, the edge's projection and notifications
//! — has that trace id, and each one's parent is another span of the flow
//! (or the client's), so the spans form one tree across the broker hops.
//!
//! Its own test binary: the OpenTelemetry layer with an in-memory exporter
//! is the process's global subscriber; each test tells its spans apart by
//! its own trace id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use sluice_integration_tests::{Shop, WAIT};
use sluice_kit::testing::{BrokerBackend, DbBackend};

fn telemetry() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    sluice_kit::testing::traces()
}

/// The finished spans of trace `trace`.
fn spans_of(trace: TraceId) -> Vec<SpanData> {
    let (provider, exporter) = telemetry();
    provider.force_flush().unwrap();
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace)
        .collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

async fn one_trace_spans_every_hop_of_an_order(b: BrokerBackend, d: DbBackend) {
    telemetry();
    let shop = Shop::start(b, d).await;
    let product = shop.product("traced", 10).await;
    let credentials = r#"{"email":"tracy@example.com","password":"correct horse battery"}"#;
    assert_eq!(
        shop.http("POST", "/v1/accounts", &[], Some(credentials))
            .await
            .status,
        201
    );
    let token = shop
        .http("POST", "/v1/auth/token", &[], Some(credentials))
        .await;
    let bearer = format!("Bearer {}", token.json()["access_token"].as_str().unwrap());

    // The client's own span: a random trace id this test alone uses.
    let trace = TraceId::from_bytes(*uuid::Uuid::now_v7().as_bytes());
    let client = SpanId::from_bytes(uuid::Uuid::now_v7().as_bytes()[8..].try_into().unwrap());
    let traceparent = format!("00-{trace}-{client}-01");
    let body = format!(
        r#"{{"items":[{{"product_id":"{product}","quantity":1}}],"payment_token":"tok_visa"}}"#
    );
    let r = shop
        .http(
            "POST",
            "/v1/orders",
            &[
                ("Authorization", bearer.as_str()),
                ("Idempotency-Key", "traced-1"),
                ("traceparent", traceparent.as_str()),
            ],
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let settled = shop.settled(std::slice::from_ref(&id)).await;
    assert_eq!(settled[0].status, "CONFIRMED");

    let s = &shop.subjects;
    // (span name, consumer group) of every hop the order takes.
    let hops: Vec<(String, Option<&str>)> = vec![
        ("POST /v1/orders".to_owned(), None),
        (format!("create {}", s.orders.place), None),
        (format!("process {}", s.orders.place), Some("orders")),
        (format!("create {}", s.orders.order_placed), None),
        (
            format!("process {}", s.orders.order_placed),
            Some("inventory"),
        ),
        (
            format!("process {}", s.orders.order_placed),
            Some("edge-orders"),
        ),
        (format!("create {}", s.orders.stock_reserved), None),
        (
            format!("process {}", s.orders.stock_reserved),
            Some("orders"),
        ),
        (format!("create {}", s.orders.charge), None),
        (format!("process {}", s.orders.charge), Some("payments")),
        (format!("create {}", s.orders.payment_captured), None),
        (
            format!("process {}", s.orders.payment_captured),
            Some("orders"),
        ),
        (format!("create {}", s.orders.order_confirmed), None),
        (
            format!("process {}", s.orders.order_confirmed),
            Some("edge-orders"),
        ),
        (
            format!("process {}", s.orders.order_confirmed),
            Some("notifications"),
        ),
        // Emitted later by the notifications sender, after the e-mail went.
        (format!("create {}", s.notifications.email_sent), None),
    ];
    let present = |spans: &[SpanData], (name, group): &(String, Option<&str>)| {
        spans.iter().any(|sp| {
            sp.name == name.as_str()
                && group.is_none_or(|g| {
                    attribute(sp, "messaging.consumer.group.name").as_deref() == Some(g)
                })
        })
    };
    let deadline = Instant::now() + WAIT;
    let spans = loop {
        let spans = spans_of(trace);
        let missing: Vec<_> = hops.iter().filter(|h| !present(&spans, h)).collect();
        if missing.is_empty() {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "{b:?}/{d:?}: spans missing from trace {trace}: {missing:?}\nfound: {:?}",
            spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // One tree: every span's parent is the client's or another span of the
    // trace; batch spans' links point into the trace too.
    let ids: HashSet<SpanId> = spans.iter().map(|s| s.span_context.span_id()).collect();
    for sp in &spans {
        assert!(
            sp.parent_span_id == client || ids.contains(&sp.parent_span_id),
            "{}: parent {} is not in the trace",
            sp.name,
            sp.parent_span_id
        );
        for link in sp.links.iter() {
            assert_eq!(link.span_context.trace_id(), trace, "{}", sp.name);
        }
    }
    let by_id: HashMap<SpanId, &SpanData> = spans
        .iter()
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let server = spans.iter().find(|s| s.name == "POST /v1/orders").unwrap();
    assert_eq!(
        server.parent_span_id, client,
        "the edge continues the client's trace"
    );
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(
        attribute(server, "http.route").as_deref(),
        Some("/v1/orders")
    );
    // Each hop across the broker: a consumer span whose parent is the
    // producer span of the event it handles, with the messaging attributes.
    let system = match b {
        BrokerBackend::Embedded => "sluice-embedded",
        BrokerBackend::Nats => "nats",
        BrokerBackend::Amqp => "rabbitmq",
    };
    for sp in spans.iter().filter(|s| s.name.starts_with("process ")) {
        assert_eq!(sp.span_kind, SpanKind::Consumer, "{}", sp.name);
        let subject = sp.name.strip_prefix("process ").unwrap();
        let parent = by_id
            .get(&sp.parent_span_id)
            .unwrap_or_else(|| panic!("{}: no parent span", sp.name));
        assert_eq!(
            parent.name,
            format!("create {subject}"),
            "{}'s parent is its event's producer span",
            sp.name
        );
        assert_eq!(parent.span_kind, SpanKind::Producer);
        assert_eq!(
            attribute(sp, "messaging.destination.name").as_deref(),
            Some(subject)
        );
        assert_eq!(
            attribute(sp, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(
            attribute(sp, "messaging.message.id"),
            attribute(parent, "messaging.message.id"),
            "{}",
            sp.name
        );
        assert_eq!(
            attribute(sp, "messaging.system").as_deref(),
            Some(system),
            "{}",
            sp.name
        );
    }
    // The sender's `email.sent` continues the trace of the handler that
    // recorded the e-mail, though it is emitted later by another task.
    let email_sent = spans
        .iter()
        .find(|sp| sp.name == format!("create {}", s.notifications.email_sent))
        .unwrap();
    let recorded = by_id.get(&email_sent.parent_span_id).unwrap();
    assert_eq!(
        recorded.name,
        format!("process {}", s.orders.order_confirmed)
    );
    assert_eq!(
        attribute(recorded, "messaging.consumer.group.name").as_deref(),
        Some("notifications")
    );
    shop.cleanup().await;
}

sluice_kit::backend_matrix!(one_trace_spans_every_hop_of_an_order);
