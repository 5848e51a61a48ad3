//! Spans leave the process over OTLP/HTTP: a local receiver gets them, with
//! the service name and parent/child relations intact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use sluice_kit::config::{LogFormat, TelemetryConfig};
use sluice_kit::telemetry::{flush, otlp_provider, subscriber};

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

async fn receive(State(got): State<Received>, body: Bytes) -> &'static str {
    got.lock()
        .unwrap()
        .push(ExportTraceServiceRequest::decode(body).unwrap());
    ""
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_to_the_configured_endpoint() {
    let got = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let provider = otlp_provider(&format!("http://{addr}"), "orders").unwrap();
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        otlp_endpoint: Some(format!("http://{addr}")),
    };
    let sub = subscriber(&config, std::io::sink, Some(&provider));
    tracing::subscriber::with_default(sub, || {
        let parent = tracing::info_span!("place order");
        parent.in_scope(|| {
            let _child = tracing::info_span!("reserve stock").entered();
        });
    });
    flush(provider).await;

    let requests = got.lock().unwrap().clone();
    let spans: Vec<_> = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    let find = |name: &str| *spans.iter().find(|s| s.name == name).expect(name);
    let parent = find("place order");
    let child = find("reserve stock");
    assert_eq!(child.trace_id, parent.trace_id);
    assert_eq!(child.parent_span_id, parent.span_id);
    let service = requests[0].resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{v:?}"))
        .unwrap();
    assert!(service.contains("orders"), "{service}");
}
