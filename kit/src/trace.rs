//! Trace context across broker hops: W3C `traceparent`/`tracestate` written
//! into the headers of every published event and read back by consumers, so
//! the handler's span is a child of the span that emitted the event.
//!
//! Span shapes follow OpenTelemetry's messaging conventions: emitting an
//! event opens a `create <subject>` producer span (a child of the emitting
//! handler's or request's span, [`produce`]) whose context the message
//! carries; a handler's `process <subject>` consumer span is its child; a
//! batch handler's span is the child of its first event's and links the
//! others' ([`link`]).
//!
//! Spans are `tracing` spans; the OpenTelemetry layer installed by
//! [`crate::telemetry`] (or by a test, with an in-memory exporter) gives them
//! trace ids. Without that layer these functions do nothing, and an emitted
//! event carries on the consumed event's trace context as it was.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use sluice_broker::Headers;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct HeaderExtractor<'a>(&'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

/// Writes the current span's trace context into `headers` (when the current
/// span belongs to a trace).
pub fn inject(headers: &mut Headers) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// Opens the `create <subject>` producer span of a message being emitted
/// (a child of the current span) and writes its context into the message's
/// headers.
pub fn produce(message: &mut sluice_broker::OutboundMessage) {
    let span = tracing::info_span!(
        "create",
        otel.name = %format_args!("create {}", message.subject),
        otel.kind = "producer",
        messaging.operation.type = "create",
        messaging.operation.name = "create",
        messaging.destination.name = %message.subject,
        messaging.message.id = message.headers.get(sluice_proto::envelope::CE_ID).unwrap_or_default(),
        messaging.message.conversation_id = message.headers.get(sluice_proto::envelope::CORRELATION_ID).unwrap_or_default(),
        sluice.key = message.headers.get(sluice_proto::envelope::CE_SUBJECT).unwrap_or_default(),
    );
    span.in_scope(|| inject(&mut message.headers));
}

/// Links `span` to the trace context carried in `headers`, if any (a batch
/// handler's span and the events after its first).
pub fn link(span: &tracing::Span, headers: &Headers) {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let remote = cx.span().span_context().clone();
    if remote.is_valid() {
        span.add_link(remote);
    }
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn set_parent(span: &tracing::Span, headers: &Headers) {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        // Fails only when the span is disabled or already started a trace.
        let _ = span.set_parent(cx);
    }
}
