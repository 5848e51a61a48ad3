//! Logs and traces for a service process, set up once from
//! [`TelemetryConfig`]: human-readable lines for terminals, or one JSON
//! object per line for log collectors (level filter from `RUST_LOG`,
//! default `info`); and, when an OTLP endpoint is configured
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`), every span exported over OTLP in
//! batches: HTTP/protobuf (`<endpoint>/v1/traces`) by default, gRPC when
//! `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`.
//!
//! [`init`] returns a [`Telemetry`] guard; [`Telemetry::shutdown`] flushes
//! the spans still buffered, the last step of a graceful shutdown.

use std::io::Write;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};

pub use crate::spans::Traces;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use crate::config::{LogFormat, OtlpProtocol, TelemetryConfig};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A global subscriber is already installed in this process.
    #[error("telemetry is already initialised: {0}")]
    AlreadyInitialised(String),
    /// The span pipeline's thread could not be started.
    #[error("cannot start the span pipeline: {0}")]
    Pipeline(String),
    /// The OTLP exporter could not be built.
    #[error("cannot export traces to {endpoint}: {reason}")]
    Otlp {
        /// The configured endpoint.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// A subscriber writing logs to `writer` in the configured format, and
/// spans to `traces` when given.
pub fn subscriber<W>(
    config: &TelemetryConfig,
    writer: W,
    traces: Option<&Traces>,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer as _;
    // Spans carry their own attributes; source locations, thread names and
    // busy/idle times per span would cost every event on the hot path. The
    // per-event messaging spans are recorded by `crate::trace` through
    // `crate::spans`, beside this bridge.
    let otel = traces.map(|t| {
        let p = t.provider();
        let spans = crate::trace::MessagingSpans::new(t);
        let bridge = tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sluice"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            // `crate::trace` takes the trace context from the current
            // `tracing` span itself, so entering a span need not start it and
            // attach its context on every poll. (A handler's `process` span,
            // which is no `tracing` span, is attached while it runs.)
            .with_context_activation(false);
        bridge.and_then(spans)
    });
    let registry = tracing_subscriber::registry().with(filter()).with(otel);

    match config.log_format {
        LogFormat::Pretty => {
            Box::new(registry.with(tracing_subscriber::fmt::layer().with_writer(writer)))
        }
        LogFormat::Json => Box::new(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(writer),
            ),
        ),
    }
}

/// A tracer provider exporting to the OTLP/HTTP endpoint `endpoint` (the
/// base URL, as in `OTEL_EXPORTER_OTLP_ENDPOINT`) as service `service`.
/// Call from within a Tokio runtime.
///
/// # Errors
/// The exporter could not be built.
pub fn otlp_provider(endpoint: &str, service: &str) -> Result<Traces, TelemetryError> {
    otlp_provider_with(endpoint, OtlpProtocol::HttpProtobuf, service)
}

/// A tracer provider exporting to `endpoint` over `protocol` as service
/// `service`. Call from within a Tokio runtime.
///
/// # Errors
/// The exporter could not be built.
pub fn otlp_provider_with(
    endpoint: &str,
    protocol: OtlpProtocol,
    service: &str,
) -> Result<Traces, TelemetryError> {
    traces(
        vec![Box::new(batch_processor(endpoint, protocol)?)],
        service,
    )
}

/// Traces of service `service` handed to `processors`.
fn traces(
    processors: Vec<Box<dyn SpanProcessor>>,
    service: &str,
) -> Result<Traces, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    Traces::new(processors, Some(resource), "sluice")
        .map_err(|e| TelemetryError::Pipeline(e.to_string()))
}

/// A batch span processor exporting to `endpoint` over `protocol`.
///
/// The SDK's batch processor: ending a span puts it on a queue without
/// waking anything (its thread wakes when a batch is full or the delay is
/// up) — the async-runtime variant woke its task for every span, a futex
/// call per span on the handler's path. Its thread runs exports to
/// completion, so they run on a runtime of their own ([`OwnRuntime`]).
fn batch_processor(
    endpoint: &str,
    protocol: OtlpProtocol,
) -> Result<opentelemetry_sdk::trace::BatchSpanProcessor, TelemetryError> {
    let failed = |reason: String| TelemetryError::Otlp {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let config = batch_config();
    // The exporters spawn their connections' tasks where they are built.
    Ok(match protocol {
        OtlpProtocol::HttpProtobuf => {
            let url = if endpoint.ends_with("/v1/traces") {
                endpoint.to_owned()
            } else {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            };
            let exporter = {
                let _in_runtime = runtime.enter();
                crate::otlp::HttpExporter::new(url)
            }
            .map_err(failed)?;
            own_runtime(exporter, runtime, config)
        }
        OtlpProtocol::Grpc => {
            let exporter = {
                let _in_runtime = runtime.enter();
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_timeout(Duration::from_secs(10))
                    .build()
            }
            .map_err(|e| failed(e.to_string()))?;
            own_runtime(exporter, runtime, config)
        }
    })
}

/// A batch span processor handing its batches to `exporter` on `runtime`.
fn own_runtime<E: opentelemetry_sdk::trace::SpanExporter + 'static>(
    exporter: E,
    runtime: tokio::runtime::Runtime,
    config: opentelemetry_sdk::trace::BatchConfig,
) -> opentelemetry_sdk::trace::BatchSpanProcessor {
    opentelemetry_sdk::trace::BatchSpanProcessor::builder(OwnRuntime {
        exporter: std::sync::Arc::new(exporter),
        runtime: Some(runtime),
    })
    .with_batch_config(config)
    .build()
}

/// An OTLP exporter whose exports run on a Tokio runtime of its own (one
/// worker thread): the batch processor's thread waits for them, and the
/// encoding of thousands of spans never holds a worker of the service's
/// runtime.
#[derive(Debug)]
struct OwnRuntime<E> {
    exporter: std::sync::Arc<E>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl<E: opentelemetry_sdk::trace::SpanExporter + 'static> opentelemetry_sdk::trace::SpanExporter
    for OwnRuntime<E>
{
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        use opentelemetry_sdk::error::OTelSdkError;
        let exporter = self.exporter.clone();
        let handle = self.runtime.as_ref().map(|r| r.handle().clone());
        async move {
            let Some(handle) = handle else {
                return Err(OTelSdkError::AlreadyShutdown);
            };
            handle
                .spawn(async move { exporter.export(batch).await })
                .await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called before the first export, while nothing else holds it.
        if let Some(exporter) = std::sync::Arc::get_mut(&mut self.exporter) {
            exporter.set_resource(resource);
        }
    }
}

impl<E> Drop for OwnRuntime<E> {
    fn drop(&mut self) {
        // Dropped on the batch processor's thread, or in an async context
        // on a failed set-up: never block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The batch exporter's settings: the SDK's defaults (a 2,048-span queue,
/// batches of 512 every 5 s) drop spans at a few thousand events a second,
/// so the queue holds 65,536 spans, sent in batches of 4,096 every second;
/// the `OTEL_BSP_*` variables still override each.
fn batch_config() -> opentelemetry_sdk::trace::BatchConfig {
    let unset = |name: &str| std::env::var_os(name).is_none();
    let mut config = opentelemetry_sdk::trace::BatchConfigBuilder::default();
    if unset("OTEL_BSP_MAX_QUEUE_SIZE") {
        config = config.with_max_queue_size(65_536);
    }
    if unset("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
        config = config.with_max_export_batch_size(4_096);
    }
    if unset("OTEL_BSP_SCHEDULE_DELAY") {
        config = config.with_scheduled_delay(Duration::from_secs(1));
    }
    config.build()
}

/// What [`init`] set up; flush it on the way out.
#[derive(Debug)]
pub struct Telemetry {
    traces: Option<Traces>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.traces.is_some()
    }

    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(t) = self.traces {
            flush(t).await;
        }
    }
}

/// Shuts `traces`' provider down, exporting what it buffered. The SDK
/// blocks until the batch processor's thread has sent the rest, so it runs
/// on a blocking thread.
pub async fn flush(traces: Traces) {
    match tokio::task::spawn_blocking(move || traces.provider().shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not flush traces"),
        Err(e) => tracing::warn!(error = %e, "could not flush traces"),
    }
}

/// Installs the process-wide subscriber (logs to stderr; spans to OTLP when
/// configured) for service `service`. Call from within a Tokio runtime.
///
/// # Errors
/// A subscriber was already installed, or the exporter could not be built.
pub fn init(config: &TelemetryConfig, service: &str) -> Result<Telemetry, TelemetryError> {
    let traces = match &config.otlp_endpoint {
        Some(endpoint) => Some(otlp_provider_with(endpoint, config.otlp_protocol, service)?),
        None => None,
    };
    tracing::subscriber::set_global_default(subscriber(config, std::io::stderr, traces.as_ref()))
        .map_err(|e| TelemetryError::AlreadyInitialised(e.to_string()))?;
    if let Some(endpoint) = &config.otlp_endpoint {
        tracing::info!(endpoint, protocol = ?config.otlp_protocol, "exporting traces over OTLP");
    }
    Ok(Telemetry { traces })
}

/// The most recent finished spans of this process, kept in memory (a span
/// processor of the tracer provider) so the dashboard can show what a
/// request caused without an external trace store. Bounded: the oldest
/// spans go first.
#[derive(Debug, Clone)]
pub struct RecentSpans {
    spans: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<SpanData>>>,
    capacity: usize,
}

/// One span as the dashboard shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpanView {
    /// Its trace.
    pub trace_id: String,
    /// Its id.
    pub span_id: String,
    /// Its parent's id (`0000000000000000` for a root).
    pub parent_id: String,
    /// Its name (`process orders.order.placed`).
    pub name: String,
    /// `server`, `producer`, `consumer`, `client` or `internal`.
    pub kind: String,
    /// Start, in microseconds since the Unix epoch.
    pub start_micros: i64,
    /// How long it took, in microseconds.
    pub duration_micros: i64,
    /// Its attributes (messaging.*, http.*, sluice.*).
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// The spans of one trace, in start order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceView {
    /// The trace id.
    pub trace_id: String,
    /// Its spans, earliest first.
    pub spans: Vec<SpanView>,
}

/// Spans kept by default (a few thousand orders' worth).
pub const RECENT_SPANS: usize = 50_000;

impl RecentSpans {
    /// Keeps the last `capacity` spans.
    pub fn new(capacity: usize) -> Self {
        Self {
            spans: std::sync::Arc::default(),
            capacity,
        }
    }

    /// The most recent traces (newest first, at most `limit`) with a span
    /// whose `sluice.key` (the event's aggregate key, e.g. an order id) is
    /// `key`.
    pub fn traces_of_key(&self, key: &str, limit: usize) -> Vec<TraceView> {
        let spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        let mut traces: Vec<opentelemetry::trace::TraceId> = Vec::new();
        for s in spans.iter().rev() {
            let id = s.span_context.trace_id();
            let matches = s
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "sluice.key" && kv.value.as_str() == key);
            if matches && !traces.contains(&id) {
                traces.push(id);
                if traces.len() == limit {
                    break;
                }
            }
        }
        traces
            .into_iter()
            .map(|id| {
                let mut members: Vec<SpanView> = spans
                    .iter()
                    .filter(|s| s.span_context.trace_id() == id)
                    .map(view)
                    .collect();
                members.sort_by_key(|s| s.start_micros);
                TraceView {
                    trace_id: id.to_string(),
                    spans: members,
                }
            })
            .collect()
    }
}

fn micros(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn view(s: &SpanData) -> SpanView {
    let start = micros(s.start_time);
    SpanView {
        trace_id: s.span_context.trace_id().to_string(),
        span_id: s.span_context.span_id().to_string(),
        parent_id: s.parent_span_id.to_string(),
        name: s.name.to_string(),
        kind: format!("{:?}", s.span_kind).to_lowercase(),
        start_micros: start,
        duration_micros: micros(s.end_time).saturating_sub(start).max(0),
        attributes: s
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect(),
    }
}

impl opentelemetry_sdk::trace::SpanProcessor for RecentSpans {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        if spans.len() >= self.capacity {
            spans.pop_front();
        }
        spans.push_back(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// A tracer provider keeping the recent spans in `recent`, and exporting
/// them over OTLP as well when `config` names an endpoint; service
/// `service`. Call from within a Tokio runtime.
///
/// # Errors
/// The OTLP exporter could not be built.
pub fn provider_with_recent(
    config: &TelemetryConfig,
    service: &str,
    recent: &RecentSpans,
) -> Result<Traces, TelemetryError> {
    let mut processors: Vec<Box<dyn SpanProcessor>> = vec![Box::new(recent.clone())];
    if let Some(endpoint) = &config.otlp_endpoint {
        processors.push(Box::new(batch_processor(endpoint, config.otlp_protocol)?));
    }
    traces(processors, service)
}

/// [`init`] for a process that also keeps its recent spans (`sluice up`,
/// for the dashboard).
///
/// # Errors
/// As [`init`].
pub fn init_with_recent(
    config: &TelemetryConfig,
    service: &str,
    recent: &RecentSpans,
) -> Result<Telemetry, TelemetryError> {
    let traces = provider_with_recent(config, service, recent)?;
    tracing::subscriber::set_global_default(subscriber(config, std::io::stderr, Some(&traces)))
        .map_err(|e| TelemetryError::AlreadyInitialised(e.to_string()))?;
    if let Some(endpoint) = &config.otlp_endpoint {
        tracing::info!(endpoint, protocol = ?config.otlp_protocol, "exporting traces over OTLP");
    }
    Ok(Telemetry {
        traces: Some(traces),
    })
}

/// A writer that appends to a shared buffer (tests read what was logged).
#[derive(Debug, Clone, Default)]
pub struct MemoryWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl MemoryWriter {
    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for MemoryWriter {
    type Writer = MemoryWriter;

    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn log_with(format: LogFormat) -> String {
        let out = MemoryWriter::default();
        let config = TelemetryConfig {
            log_format: format,
            otlp_endpoint: None,
            otlp_protocol: Default::default(),
        };
        tracing::subscriber::with_default(subscriber(&config, out.clone(), None), || {
            tracing::info!(order_id = "o-1", "order placed");
        });
        out.contents()
    }

    #[test]
    fn recent_spans_find_the_traces_of_a_key_newest_first() {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::{Span as _, Tracer as _};
        use opentelemetry_sdk::trace::SpanProcessor as _;
        let recent = RecentSpans::new(3);
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(recent.clone())
            .build();
        let tracer = provider.tracer("test");
        let mut traced = Vec::new();
        for (name, key) in [("a", "o1"), ("b", "o2"), ("c", "o1"), ("d", "o1")] {
            let mut span = tracer.start(name);
            span.set_attribute(KeyValue::new("sluice.key", key));
            traced.push(span.span_context().trace_id().to_string());
            span.end();
        }
        // Three kept: "a" went first.
        let found = recent.traces_of_key("o1", 5);
        let names: Vec<&str> = found.iter().map(|t| t.spans[0].name.as_str()).collect();
        assert_eq!(names, ["d", "c"]);
        assert_eq!(found[0].trace_id, traced[3]);
        assert_eq!(found[0].spans[0].attributes["sluice.key"], "o1");
        assert_eq!(recent.traces_of_key("o1", 1).len(), 1);
        assert!(recent.traces_of_key("nope", 5).is_empty());
        assert!(recent.force_flush().is_ok());
    }

    #[test]
    fn json_logs_are_one_object_per_line_with_the_fields() {
        let text = log_with(LogFormat::Json);
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["message"], "order placed");
        assert_eq!(line["order_id"], "o-1");
        assert_eq!(line["level"], "INFO");
    }

    #[test]
    fn pretty_logs_are_text_lines() {
        let text = log_with(LogFormat::Pretty);
        assert!(
            text.contains("order placed") && text.contains("order_id"),
            "{text}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
    }
}
