//! Spans leave the process over OTLP — HTTP/protobuf and gRPC: a local
//! receiver of each gets them, with the service name and parent/child
//! relations intact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use sluice_kit::config::{LogFormat, OtlpProtocol, TelemetryConfig};
use sluice_kit::telemetry::{flush, otlp_provider, otlp_provider_with, subscriber};

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
        otlp_protocol: Default::default(),
    };
    emit_place_order_then_reserve_stock(&config, provider).await;

    assert_place_order_then_reserve_stock(&got.lock().unwrap(), "orders");
}

/// Two spans, a parent and its child, through `provider`; then flushed.
async fn emit_place_order_then_reserve_stock(
    config: &TelemetryConfig,
    provider: sluice_kit::telemetry::Traces,
) {
    let sub = subscriber(config, std::io::sink, Some(&provider));
    tracing::subscriber::with_default(sub, || {
        let parent = tracing::info_span!("place order");
        parent.in_scope(|| {
            let _child = tracing::info_span!("reserve stock").entered();
        });
    });
    flush(provider).await;
}

/// The export requests hold both spans, the child under the parent, from
/// service `service`.
fn assert_place_order_then_reserve_stock(requests: &[ExportTraceServiceRequest], service: &str) {
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
    let found = requests[0].resource_spans[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|a| a.key == "service.name")
        .and_then(|a| a.value.as_ref())
        .map(|v| format!("{v:?}"))
        .unwrap();
    assert!(found.contains(service), "{found}");
}

/// The gRPC receiver: keeps every export request.
#[derive(Clone, Default)]
struct GrpcReceiver(Received);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_over_grpc_when_asked() {
    let got = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(GrpcReceiver(got.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        otlp_endpoint: Some(format!("http://{addr}")),
        otlp_protocol: OtlpProtocol::Grpc,
    };
    let provider =
        otlp_provider_with(&format!("http://{addr}"), OtlpProtocol::Grpc, "payments").unwrap();
    emit_place_order_then_reserve_stock(&config, provider).await;
    assert_place_order_then_reserve_stock(&got.lock().unwrap(), "payments");
}

/// A receiver that answers the first `refuse` requests with 503 (and
/// `Retry-After: 0`), then takes them.
async fn flaky_receiver(refuse: usize) -> (String, Received, Arc<Mutex<usize>>) {
    let got = Received::default();
    let attempts = Arc::new(Mutex::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(
                move |State((got, attempts)): State<(Received, Arc<Mutex<usize>>)>,
                      headers: axum::http::HeaderMap,
                      body: Bytes| async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    let n = {
                        let mut a = attempts.lock().unwrap();
                        *a += 1;
                        *a
                    };
                    if n <= refuse {
                        return (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "0")],
                        );
                    }
                    got.lock()
                        .unwrap()
                        .push(ExportTraceServiceRequest::decode(body).unwrap());
                    (
                        axum::http::StatusCode::OK,
                        [("content-type", "application/x-protobuf")],
                    )
                },
            ),
        )
        .with_state((got.clone(), attempts.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got, attempts)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_the_collector_cannot_take_yet_is_sent_again() {
    let (endpoint, got, attempts) = flaky_receiver(2).await;
    let provider = otlp_provider(&endpoint, "orders").unwrap();
    let config = TelemetryConfig {
        log_format: LogFormat::Json,
        otlp_endpoint: Some(endpoint),
        otlp_protocol: Default::default(),
    };
    emit_place_order_then_reserve_stock(&config, provider).await;

    // Refused twice, taken the third time: both spans arrive, once.
    assert_eq!(*attempts.lock().unwrap(), 3);
    let got = got.lock().unwrap();
    let spans: usize = got
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum();
    assert_eq!(spans, 2);
    assert_place_order_then_reserve_stock(&got, "orders");
}
