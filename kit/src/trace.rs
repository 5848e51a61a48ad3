//! Trace context across broker hops: W3C `traceparent`/`tracestate` written
//! into the headers of every published event and read back by consumers, so
//! the handler's span is a child of the span that emitted the event.
//!
//! Span shapes follow OpenTelemetry's messaging conventions: emitting an
//! event makes a `create <subject>` producer span (a child of the emitting
//! handler's or request's span, [`produce`]) whose context the message
//! carries; a handler's `process <subject>` consumer span is its child; a
//! batch handler's span is the child of its first event's and links the
//! others' ([`process`]).
//!
//! These two spans, one or two per event, are neither `tracing` spans
//! bridged by `tracing-opentelemetry` nor SDK spans: the handler's thread
//! records only their ids, times and strings, and [`crate::spans`] turns
//! them into the SDK's span data on a thread of its own (the SDK's spans
//! cost several times as much on the path every event takes: the kit
//! benchmark's telemetry overhead). They are recorded through the
//! [`MessagingSpans`] layer that [`crate::telemetry`] installs beside the
//! bridge (or a test, with an in-memory exporter), at `info` for target
//! `sluice_kit::trace`. A handler runs with its `process` span as
//! OpenTelemetry's current context, so `tracing` spans it opens are the
//! span's children. Without that layer nothing is made, and an emitted
//! event carries on the consumed event's trace context as it was.

use std::time::SystemTime;

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, Status, TraceContextExt, TraceFlags};
use sluice_broker::Headers;
use sluice_proto::envelope;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::spans::{MessagingRecorder, Operation, Record};

/// Writes `sc`'s W3C trace context into `headers`: `traceparent`, exactly
/// as OpenTelemetry's `TraceContextPropagator` formats it, and
/// `tracestate` when the span has one (the propagator writes an empty one
/// for every span, which W3C reads as absent, and every header is stored
/// with the event in the outbox and the log). Written directly: this runs
/// for every emitted event, and formatting through the propagator's
/// `format!` and its `Injector` cost a third of making the `create` span.
fn write_context(sc: &SpanContext, headers: &mut Headers) {
    let Some(traceparent) = traceparent_of(sc) else {
        return;
    };
    headers.insert("traceparent", traceparent);
    let state = sc.trace_state().header();
    if !state.is_empty() {
        headers.insert("tracestate", state);
    }
}

/// `sc`'s `traceparent` ("00-" trace id "-" span id "-" flags, with only
/// the sampled flag); `None` for an invalid context.
fn traceparent_of(sc: &SpanContext) -> Option<String> {
    if !sc.is_valid() {
        return None;
    }
    // Written into a fixed buffer: this runs for every emitted event.
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    crate::hex::write(&mut out[3..35], &sc.trace_id().to_bytes());
    crate::hex::write(&mut out[36..52], &sc.span_id().to_bytes());
    crate::hex::write(
        &mut out[53..55],
        &[(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    // Only ASCII digits and dashes were written, so this is never `None`.
    String::from_utf8(out.to_vec()).ok()
}

/// The context whose parent is the remote span `sc` (when there is one),
/// on top of the current one.
fn child_of(sc: Option<SpanContext>) -> Context {
    match sc {
        Some(sc) => Context::current().with_remote_span_context(sc),
        None => Context::current(),
    }
}

/// The remote span context carried in `headers`, if valid.
fn carried_in(headers: &Headers) -> Option<SpanContext> {
    crate::spans::remote_context(
        headers.get(envelope::TRACEPARENT),
        headers.get(envelope::TRACESTATE),
    )
}

/// The recorder of the kit's messaging spans, found in the `tracing`
/// subscriber (a layer that does nothing else, so [`process`] and
/// [`produce`] reach the same tracer provider as the `tracing` bridge).
#[derive(Debug, Clone)]
pub struct MessagingSpans {
    recorder: MessagingRecorder,
}

impl MessagingSpans {
    /// Messaging spans recorded into `traces`' provider.
    pub fn new(traces: &crate::spans::Traces) -> Self {
        Self {
            recorder: traces.recorder().clone(),
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for MessagingSpans {}

/// Calls `f` with the messaging spans' recorder when spans are made: the
/// subscriber has a [`MessagingSpans`] layer and `info` is enabled for
/// this module.
fn with_recorder<R>(f: impl FnOnce(&MessagingRecorder) -> R) -> Option<R> {
    if !tracing::enabled!(tracing::Level::INFO) {
        return None;
    }
    let mut f = Some(f);
    tracing::dispatcher::get_default(|d| {
        let spans = d.downcast_ref::<MessagingSpans>()?;
        f.take().map(|f| f(&spans.recorder))
    })
}

/// The remote span context an event's envelope carries, if valid.
fn carried(envelope: &sluice_proto::Envelope) -> Option<SpanContext> {
    crate::spans::remote_context(
        envelope.traceparent.as_deref(),
        envelope.tracestate.as_deref(),
    )
}

/// The context a new span is the child of: the current `tracing` span's
/// when it belongs to a trace (an HTTP request, a span a handler opened),
/// else OpenTelemetry's current context (a handler's `process` span).
fn current() -> Context {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        Context::current()
    }
}

/// Writes the current span's trace context into `headers` (when the current
/// span belongs to a trace).
pub fn inject(headers: &mut Headers) {
    write_context(current().span().span_context(), headers);
}

/// The current span's W3C `traceparent`, to keep with work done later
/// outside it (see [`produce_within`]); `None` outside a trace.
pub fn traceparent() -> Option<String> {
    traceparent_of(current().span().span_context())
}

/// Makes the `create <subject>` producer span of a message being emitted (a
/// child of the current span) and writes its context into the message's
/// headers.
pub fn produce(message: &mut sluice_broker::OutboundMessage) {
    produce_from(message, None, current);
}

/// [`produce`] for a message just built from `envelope`
/// ([`sluice_broker::OutboundMessage::event`]): the span's attributes are
/// taken from the envelope rather than looked up in the headers.
pub(crate) fn produce_event(
    message: &mut sluice_broker::OutboundMessage,
    envelope: &sluice_proto::Envelope,
) {
    produce_from(message, Some(envelope), current);
}

/// [`produce`] for a message emitted later, outside the span that caused
/// it: its `create` span is the child of `traceparent` (from
/// [`traceparent`], kept with the work), or of the current span without one.
pub fn produce_within(message: &mut sluice_broker::OutboundMessage, traceparent: Option<&str>) {
    produce_from(message, None, || match traceparent {
        Some(tp) => child_of(crate::spans::remote_context(Some(tp), None)),
        None => current(),
    });
}

/// Makes the `create` span, the child of `parent()` (worked out only when
/// spans are made); its attributes from the envelope the message was
/// `built_from` when given, else from the message's headers.
fn produce_from(
    message: &mut sluice_broker::OutboundMessage,
    built_from: Option<&sluice_proto::Envelope>,
    parent: impl FnOnce() -> Context,
) {
    let made = with_recorder(|recorder| {
        let parent = parent();
        let span = parent.span();
        let parent = Some(span.span_context()).filter(|sc| sc.is_valid());
        let (context, sampled) = recorder.start(parent, Operation::Create);
        if sampled {
            let h = &message.headers;
            let [id, correlation, key] = match built_from {
                Some(e) => [
                    e.id.as_str(),
                    e.correlation_id.as_deref().unwrap_or_default(),
                    e.subject.as_deref().unwrap_or_default(),
                ],
                None => [
                    envelope::CE_ID,
                    envelope::CORRELATION_ID,
                    envelope::CE_SUBJECT,
                ]
                .map(|name| h.get(name).unwrap_or_default()),
            };
            recorder.record(Record::new(
                context.clone(),
                parent,
                Operation::Create,
                SystemTime::now(),
                [&message.subject, id, "", correlation, key],
            ));
        }
        context
    });
    if let Some(sc) = made {
        write_context(&sc, &mut message.headers);
    }
}

/// What a `process` span says about the event (or the first of a batch).
pub(crate) struct Process<'a> {
    /// `messaging.system`: the broker's kind.
    pub(crate) system: &'static str,
    /// The event's subject.
    pub(crate) subject: &'a str,
    /// The event's envelope (its trace context, read from its headers).
    pub(crate) envelope: &'a sluice_proto::Envelope,
    /// Its `ce-id`.
    pub(crate) id: &'a str,
    /// The consumer group.
    pub(crate) group: &'a str,
    /// Its correlation id.
    pub(crate) correlation_id: Option<&'a str>,
    /// Its aggregate key (`ce-subject`).
    pub(crate) key: Option<&'a str>,
    /// How many times it has been delivered.
    pub(crate) delivered: u32,
}

/// Starts the `process <subject>` consumer span of handling an event, the
/// child of the trace context in its headers and linked to those of
/// `links` (a batch's other events); returns the context to run the
/// handler in, `None` when no span is made. Run the handler with [`traced`].
pub(crate) fn process<'a>(
    p: &Process<'_>,
    links: impl Iterator<Item = &'a sluice_proto::Envelope>,
) -> Option<Context> {
    with_recorder(|recorder| {
        let parent = carried(p.envelope);
        let operation = Operation::Process {
            system: p.system,
            delivered: p.delivered,
        };
        let (context, sampled) = recorder.start(parent.as_ref(), operation);
        let record = sampled.then(|| {
            Record::new(
                context.clone(),
                parent.as_ref(),
                operation,
                SystemTime::now(),
                [
                    p.subject,
                    p.id,
                    p.group,
                    p.correlation_id.unwrap_or_default(),
                    p.key.unwrap_or_default(),
                ],
            )
            .with_links(links.filter_map(carried).collect())
        });
        Context::current().with_span(recorder.span(context, record))
    })
}

/// Runs a handler's future with the `process` span of `cx` (from
/// [`process`]) as OpenTelemetry's current context, then ends the span,
/// marked failed with the error's message when the handler failed.
pub(crate) async fn traced<T, E: std::fmt::Display>(
    cx: Option<Context>,
    handler: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use opentelemetry::context::FutureExt as _;
    let Some(cx) = cx else {
        return handler.await;
    };
    let r = handler.with_context(cx.clone()).await;
    let span = cx.span();
    if let Err(e) = &r {
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
    r
}

/// Makes `span` a child of the trace context carried in `headers`, if any.
pub fn set_parent(span: &tracing::Span, headers: &Headers) {
    if let Some(sc) = carried_in(headers) {
        // Fails only when the span is disabled or already started a trace.
        let _ = span.set_parent(child_of(Some(sc)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use opentelemetry::propagation::{Injector, TextMapPropagator as _};
    use opentelemetry::trace::{SpanId, TraceId, TraceState};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    struct Collect(Vec<(String, String)>);

    impl Injector for Collect {
        fn set(&mut self, key: &str, value: String) {
            self.0.push((key.to_owned(), value));
        }
    }

    #[test]
    fn written_context_is_what_the_propagator_writes_without_an_empty_tracestate() {
        let state = TraceState::from_key_value([("vendor", "v1"), ("other", "x")]).unwrap();
        let contexts = [
            (1, 1, TraceFlags::SAMPLED, TraceState::default()),
            (
                u128::MAX,
                u64::MAX,
                TraceFlags::default(),
                TraceState::default(),
            ),
            (
                0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
                0xb7ad_6b71_6920_3331,
                TraceFlags::SAMPLED,
                state,
            ),
            // Flags beyond "sampled" are not propagated.
            (0x10, 0x20, TraceFlags::new(0xff), TraceState::default()),
        ];
        for (trace, span, flags, state) in contexts {
            let sc = SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, true, state);
            let mut ours = Headers::new();
            write_context(&sc, &mut ours);
            let mut theirs = Collect(Vec::new());
            TraceContextPropagator::new()
                .inject_context(&Context::new().with_remote_span_context(sc), &mut theirs);
            let mut theirs: Vec<(String, String)> = theirs
                .0
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .collect();
            theirs.sort();
            let ours: Vec<(String, String)> = ours
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            assert_eq!(ours, theirs);
            assert_eq!(ours[0].0, "traceparent");
        }
        let mut none = Headers::new();
        write_context(&SpanContext::empty_context(), &mut none);
        assert_eq!(none.iter().count(), 0);
    }
}
