//! The kit's per-event messaging spans (`process <subject>`, `create
//! <subject>`), recorded without the SDK's span machinery, and the span
//! processor that hands them on with every other span.
//!
//! An SDK span builds its whole [`SpanData`] on the thread that makes it: a
//! `String` for the name and each attribute, a `Vec` of `KeyValue`s, the
//! sampler's result, a mutex around the span. For the two spans the kit
//! makes for every event that was most of what tracing cost a handler (the
//! kit benchmark's telemetry overhead, docs/benchmarks.md). Here a handler's
//! thread keeps only the ids, the times and the event's strings in one
//! buffer ([`Record`]) and queues it; a thread of the [`SpanPipeline`]
//! turns the queued records into `SpanData` (the same names, kinds,
//! attributes and links the SDK spans had) and hands them to the same
//! processors as the SDK's own spans (the batch exporter, the dashboard's
//! recent spans, a test's in-memory exporter).
//!
//! The pipeline is the tracer provider's one span processor: spans the SDK
//! makes (the `tracing` bridge's) pass straight through it, and its
//! `force_flush` and `shutdown` first hand on every queued record, so a
//! flushed provider has exported every span ended before the flush.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SdkTracerProvider, ShouldSample, SpanData, SpanEvents, SpanLinks,
    SpanProcessor,
};

/// Records queued at most; more are dropped (and counted), as the batch
/// exporter drops spans when its queue is full.
const MAX_QUEUED: usize = 65_536;
/// Queued records that wake the pipeline's thread before its interval.
const WAKE_AT: usize = 2_048;
/// How long a record waits at most before it is handed on.
const INTERVAL: Duration = Duration::from_millis(100);
/// Attributes, events and links a handler may add to its span (the SDK's
/// default limits).
const MAX_ADDED: usize = 128;

/// The messaging operation a [`Record`] is a span of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// A consumer's handling of an event (`process <subject>`).
    Process {
        /// `messaging.system`: the broker's kind.
        system: &'static str,
        /// How many times the event has been delivered.
        delivered: u32,
    },
    /// An event being emitted (`create <subject>`).
    Create,
}

/// The strings of a record, in this order, in one buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Text {
    /// `messaging.destination.name`.
    Subject,
    /// `messaging.message.id`.
    Id,
    /// `messaging.consumer.group.name` (process spans).
    Group,
    /// `messaging.message.conversation_id` (left out when empty).
    Correlation,
    /// `sluice.key` (left out when empty).
    Key,
}

impl Operation {
    /// Its name (the span name's first word) and the span's kind.
    fn verb_and_kind(self) -> (&'static str, SpanKind) {
        match self {
            Operation::Process { .. } => ("process", SpanKind::Consumer),
            Operation::Create => ("create", SpanKind::Producer),
        }
    }
}

const TEXTS: usize = 5;

/// One finished messaging span, as a handler's thread queues it.
#[derive(Debug)]
pub(crate) struct Record {
    context: SpanContext,
    parent: SpanId,
    parent_remote: bool,
    operation: Operation,
    start: SystemTime,
    end: SystemTime,
    text: String,
    ends: [u32; TEXTS],
    links: Vec<SpanContext>,
    added: Option<Box<Added>>,
}

/// What a handler added to its span through OpenTelemetry's API (rare).
#[derive(Debug, Default)]
struct Added {
    name: Option<Cow<'static, str>>,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    links: Vec<Link>,
    status: Status,
    dropped_attributes: u32,
    dropped_events: u32,
    dropped_links: u32,
}

impl Record {
    /// A record of `operation`, spanning `start` to `start`, for the span
    /// `context` whose parent is `parent`; `texts` in [`Text`] order.
    pub(crate) fn new(
        context: SpanContext,
        parent: Option<&SpanContext>,
        operation: Operation,
        start: SystemTime,
        texts: [&str; TEXTS],
    ) -> Self {
        let mut text = String::with_capacity(texts.iter().map(|t| t.len()).sum());
        let mut ends = [0; TEXTS];
        for (end, t) in ends.iter_mut().zip(texts) {
            text.push_str(t);
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Self {
            context,
            parent: parent.map_or(SpanId::INVALID, |p| p.span_id()),
            parent_remote: parent.is_some_and(|p| p.is_remote()),
            operation,
            start,
            end: start,
            text,
            ends,
            links: Vec::new(),
            added: None,
        }
    }

    /// The record with `links` (a batch's other events' contexts).
    pub(crate) fn with_links(mut self, links: Vec<SpanContext>) -> Self {
        self.links = links;
        self
    }

    fn text(&self, which: Text) -> &str {
        let i = which as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text
            .get(start..self.ends[i] as usize)
            .unwrap_or_default()
    }

    fn added(&mut self) -> &mut Added {
        self.added.get_or_insert_with(Box::default)
    }

    /// The span as the SDK's processors and exporters take it (`shared`
    /// holds the values of the last spans' subject and consumer group).
    fn into_span_data(self, scope: &InstrumentationScope, shared: &mut SharedValues) -> SpanData {
        let subject = self.text(Text::Subject);
        let (verb, kind) = self.operation.verb_and_kind();
        let mut attributes = Vec::with_capacity(8);
        match self.operation {
            Operation::Process { system, delivered } => attributes.extend([
                KeyValue::new("messaging.system", system),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new(
                    "messaging.destination.name",
                    SharedValues::of(&mut shared.subject, subject),
                ),
                KeyValue::new("messaging.message.id", self.text(Text::Id).to_owned()),
                KeyValue::new(
                    "messaging.consumer.group.name",
                    SharedValues::of(&mut shared.group, self.text(Text::Group)),
                ),
                KeyValue::new("sluice.delivery", i64::from(delivered)),
            ]),
            Operation::Create => attributes.extend([
                KeyValue::new("messaging.operation.type", "create"),
                KeyValue::new("messaging.operation.name", "create"),
                KeyValue::new(
                    "messaging.destination.name",
                    SharedValues::of(&mut shared.subject, subject),
                ),
                KeyValue::new("messaging.message.id", self.text(Text::Id).to_owned()),
            ]),
        }
        for (key, which) in [
            ("messaging.message.conversation_id", Text::Correlation),
            ("sluice.key", Text::Key),
        ] {
            let v = self.text(which);
            if !v.is_empty() {
                attributes.push(KeyValue::new(key, v.to_owned()));
            }
        }
        let mut name = String::with_capacity(verb.len() + 1 + subject.len());
        name.push_str(verb);
        name.push(' ');
        name.push_str(subject);
        let mut links: Vec<Link> = self.links.into_iter().map(Link::with_context).collect();
        let mut data = SpanData {
            span_context: self.context,
            parent_span_id: self.parent,
            parent_span_is_remote: self.parent_remote,
            span_kind: kind,
            name: Cow::Owned(name),
            start_time: self.start,
            end_time: self.end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        };
        if let Some(added) = self.added {
            let added = *added;
            if let Some(name) = added.name {
                data.name = name;
            }
            data.attributes.extend(added.attributes);
            data.dropped_attributes_count = added.dropped_attributes;
            data.events.events = added.events;
            data.events.dropped_count = added.dropped_events;
            links.extend(added.links);
            data.links.dropped_count = added.dropped_links;
            data.status = added.status;
        }
        data.links.links = links;
        data
    }
}

/// Attribute values that repeat from span to span (a consumer's subject
/// and group), shared rather than copied for each span.
#[derive(Debug, Default)]
struct SharedValues {
    subject: Option<Arc<str>>,
    group: Option<Arc<str>>,
}

impl SharedValues {
    /// `value`, sharing `last` when it is the same, else becoming it.
    fn of(last: &mut Option<Arc<str>>, value: &str) -> Arc<str> {
        match last {
            Some(v) if &**v == value => v.clone(),
            _ => last.insert(Arc::from(value)).clone(),
        }
    }
}

/// A `traceparent` in its canonical form (version `00`, lower-case hex,
/// 55 bytes): the form every OpenTelemetry SDK writes. `None` for anything
/// else, which [`remote_context`] leaves to the SDK's propagator.
fn canonical_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    use crate::hex::parse;
    if v.len() != 55 || !v.starts_with(b"00-") || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace = parse(&v[3..35])?;
    let span = u64::try_from(parse(&v[36..52])?).ok()?;
    let flags = u8::try_from(parse(&v[53..55])?).ok()?;
    Some((
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

/// The remote span context a message's `traceparent` and `tracestate`
/// carry, read as OpenTelemetry's W3C propagator reads them; `None` when
/// there is none or it is invalid.
pub(crate) fn remote_context(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Option<SpanContext> {
    let traceparent = traceparent?;
    let Some((trace, span, flags)) = canonical_traceparent(traceparent.as_bytes()) else {
        return propagated(traceparent, tracestate);
    };
    let state = match tracestate {
        Some(s) => s.parse::<TraceState>().unwrap_or_default(),
        None => TraceState::default(),
    };
    let sc = SpanContext::new(trace, span, flags, true, state);
    sc.is_valid().then_some(sc)
}

/// [`remote_context`] through the SDK's propagator (any other form).
fn propagated(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
    struct Pair<'a>(&'a str, Option<&'a str>);
    impl Extractor for Pair<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => Some(self.0),
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract_with_context(&Context::new(), &Pair(traceparent, tracestate));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// A non-zero random id of `N` bytes.
fn random_id<const N: usize>() -> [u8; N] {
    use rand::Rng as _;
    let mut rng = rand::rng();
    loop {
        let mut bytes = [0; N];
        rng.fill_bytes(&mut bytes);
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

/// The sampler the environment asks for (`OTEL_TRACES_SAMPLER`,
/// `OTEL_TRACES_SAMPLER_ARG`), as the SDK reads them: parent-based,
/// always on, by default. Both the provider's spans and the kit's follow it.
pub(crate) fn sampler_from_env() -> Sampler {
    let ratio = || {
        std::env::var("OTEL_TRACES_SAMPLER_ARG")
            .ok()
            .and_then(|r| r.parse::<f64>().ok())
            .unwrap_or(1.0)
    };
    let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
    match std::env::var("OTEL_TRACES_SAMPLER").as_deref() {
        Ok("always_on") => Sampler::AlwaysOn,
        Ok("always_off") => Sampler::AlwaysOff,
        Ok("traceidratio") => Sampler::TraceIdRatioBased(ratio()),
        Ok("parentbased_always_off") => parent_based(Sampler::AlwaysOff),
        Ok("parentbased_traceidratio") => parent_based(Sampler::TraceIdRatioBased(ratio())),
        _ => parent_based(Sampler::AlwaysOn),
    }
}

/// What the pipeline's threads share.
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Held while records are handed on, so a flush waits for a hand-over
    /// in progress.
    handing: Mutex<()>,
    downstream: RwLock<Vec<Box<dyn SpanProcessor>>>,
    sampler: Sampler,
    scope: InstrumentationScope,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("sampler", &self.sampler)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Queue {
    records: Vec<Record>,
    stopped: bool,
}

impl Shared {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The processors behind the pipeline.
    fn downstream(&self) -> std::sync::RwLockReadGuard<'_, Vec<Box<dyn SpanProcessor>>> {
        self.downstream.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands every queued record on, then calls `f` on each processor
    /// behind the pipeline (all of them); the first error.
    fn hand_on_then(&self, f: impl Fn(&dyn SpanProcessor) -> OTelSdkResult) -> OTelSdkResult {
        self.hand_on(&mut Vec::new());
        self.downstream()
            .iter()
            .map(|p| f(p.as_ref()))
            .fold(Ok(()), Result::and)
    }

    /// Hands every queued record on, reusing `spare`'s allocation for the
    /// queue.
    fn hand_on(&self, spare: &mut Vec<Record>) {
        let _handing = self.handing.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut q = self.lock_queue();
            std::mem::swap(&mut q.records, spare);
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, "messaging spans dropped: the span queue was full");
        }
        if spare.is_empty() {
            return;
        }
        let downstream = self.downstream();
        let mut shared = SharedValues::default();
        for record in spare.drain(..) {
            end_in(&downstream, record.into_span_data(&self.scope, &mut shared));
        }
    }
}

/// Hands `span` to each of `processors`.
fn end_in(processors: &[Box<dyn SpanProcessor>], span: SpanData) {
    if let Some((last, rest)) = processors.split_last() {
        for p in rest {
            p.on_end(span.clone());
        }
        last.on_end(span);
    }
}

/// The handle the kit's spans are recorded through (kept by the `tracing`
/// layer [`crate::trace::MessagingSpans`]).
#[derive(Debug, Clone)]
pub struct MessagingRecorder {
    shared: Arc<Shared>,
}

impl MessagingRecorder {
    /// The context of a new span of `operation` that is the child of
    /// `parent` (a new trace without one), and whether it is sampled (to
    /// be recorded).
    pub(crate) fn start(
        &self,
        parent: Option<&SpanContext>,
        operation: Operation,
    ) -> (SpanContext, bool) {
        let trace_id = match parent {
            Some(p) => p.trace_id(),
            None => TraceId::from_bytes(random_id()),
        };
        let sampled = match (&self.shared.sampler, parent) {
            (Sampler::ParentBased(_), Some(p)) => p.is_sampled(),
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (sampler, parent) => {
                let (verb, kind) = operation.verb_and_kind();
                let cx = parent.map(|p| Context::new().with_remote_span_context(p.clone()));
                let result = sampler.should_sample(cx.as_ref(), trace_id, verb, &kind, &[], &[]);
                result.decision == SamplingDecision::RecordAndSample
            }
        };
        let flags = parent
            .map(|p| p.trace_flags())
            .unwrap_or_default()
            .with_sampled(sampled);
        let state = parent.map(|p| p.trace_state().clone()).unwrap_or_default();
        let context = SpanContext::new(
            trace_id,
            SpanId::from_bytes(random_id()),
            flags,
            false,
            state,
        );
        (context, sampled)
    }

    /// Queues a finished span (dropped when the queue is full or the
    /// pipeline has shut down).
    pub(crate) fn record(&self, record: Record) {
        let mut q = self.shared.lock_queue();
        if q.stopped {
            return;
        }
        if q.records.len() >= MAX_QUEUED {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.records.push(record);
        if q.records.len() == WAKE_AT {
            self.shared.wake.notify_one();
        }
    }

    /// A span for a handler to run in (see [`crate::trace::process`]):
    /// recording `record` when given, ended when it ends or is dropped.
    pub(crate) fn span(&self, context: SpanContext, record: Option<Record>) -> MessagingSpan {
        MessagingSpan {
            context,
            record,
            recorder: self.clone(),
        }
    }
}

/// A `process` span as OpenTelemetry's API sees it: what a handler's
/// `tracing` spans are children of, and what it may add attributes,
/// events or a status to.
#[derive(Debug)]
pub(crate) struct MessagingSpan {
    context: SpanContext,
    record: Option<Record>,
    recorder: MessagingRecorder,
}

impl opentelemetry::trace::Span for MessagingSpan {
    fn add_event_with_timestamp<T>(
        &mut self,
        name: T,
        timestamp: SystemTime,
        attributes: Vec<KeyValue>,
    ) where
        T: Into<Cow<'static, str>>,
    {
        if let Some(r) = &mut self.record {
            let added = r.added();
            if added.events.len() < MAX_ADDED {
                added
                    .events
                    .push(Event::new(name, timestamp, attributes, 0));
            } else {
                added.dropped_events += 1;
            }
        }
    }

    fn span_context(&self) -> &SpanContext {
        &self.context
    }

    fn is_recording(&self) -> bool {
        self.record.is_some()
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        if let Some(r) = &mut self.record {
            let added = r.added();
            if added.attributes.len() < MAX_ADDED {
                added.attributes.push(attribute);
            } else {
                added.dropped_attributes += 1;
            }
        }
    }

    fn set_status(&mut self, status: Status) {
        if let Some(r) = &mut self.record {
            let added = r.added();
            // As the SDK: Ok is final, an error replaces Unset or an error.
            if added.status != Status::Ok {
                added.status = status;
            }
        }
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        if let Some(r) = &mut self.record {
            r.added().name = Some(new_name.into());
        }
    }

    fn add_link(&mut self, span_context: SpanContext, attributes: Vec<KeyValue>) {
        if let Some(r) = &mut self.record {
            let carried = r.links.len();
            let added = r.added();
            if added.links.len() + carried < MAX_ADDED {
                added.links.push(Link::new(span_context, attributes, 0));
            } else {
                added.dropped_links += 1;
            }
        }
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        if let Some(mut r) = self.record.take() {
            r.end = timestamp;
            self.recorder.record(r);
        }
    }
}

impl Drop for MessagingSpan {
    fn drop(&mut self) {
        use opentelemetry::trace::Span as _;
        self.end();
    }
}

/// The tracer provider's span processor: SDK spans pass straight through
/// to the processors behind it; the kit's queued messaging spans are
/// handed on by a thread of its own, and by every flush and shutdown.
#[derive(Debug)]
pub struct SpanPipeline {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SpanPipeline {
    /// A pipeline handing spans to `processors`, sampling the kit's spans
    /// with `sampler`, their instrumentation scope `scope`; and the handle
    /// the kit records them through.
    ///
    /// # Errors
    /// Its thread could not be started.
    pub fn new(
        processors: Vec<Box<dyn SpanProcessor>>,
        sampler: Sampler,
        scope: &'static str,
    ) -> std::io::Result<(Self, MessagingRecorder)> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
            handing: Mutex::new(()),
            downstream: RwLock::new(processors),
            sampler,
            scope: InstrumentationScope::builder(scope).build(),
            dropped: AtomicU64::new(0),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-spans".into())
            .spawn(move || run(&worker))?;
        Ok((
            Self {
                shared: shared.clone(),
                thread: Mutex::new(Some(thread)),
            },
            MessagingRecorder { shared },
        ))
    }

    fn stop(&self) {
        self.shared.lock_queue().stopped = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The pipeline's thread: hands the queued records on every [`INTERVAL`],
/// or sooner when [`WAKE_AT`] are queued, until stopped.
fn run(shared: &Shared) {
    let mut spare = Vec::new();
    loop {
        {
            let mut q = shared.lock_queue();
            if q.records.len() < WAKE_AT && !q.stopped {
                q = shared
                    .wake
                    .wait_timeout(q, INTERVAL)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if q.stopped {
                return;
            }
        }
        shared.hand_on(&mut spare);
    }
}

impl SpanProcessor for SpanPipeline {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        let downstream = self.shared.downstream();
        for p in downstream.iter() {
            p.on_start(span, cx);
        }
    }

    fn on_end(&self, span: SpanData) {
        let downstream = self.shared.downstream();
        end_in(&downstream, span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.shared.hand_on_then(|p| p.force_flush())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.stop();
        // Records queued before the stop; later ones are dropped.
        self.shared
            .hand_on_then(|p| p.shutdown_with_timeout(timeout))
    }

    fn set_resource(&mut self, resource: &Resource) {
        let mut downstream = self
            .shared
            .downstream
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for p in downstream.iter_mut() {
            p.set_resource(resource);
        }
    }
}

impl Drop for SpanPipeline {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tracer provider and the handle the kit records its messaging spans
/// into it through: what [`crate::telemetry`] and tests set up.
#[derive(Debug, Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
    recorder: MessagingRecorder,
}

impl Traces {
    /// A provider whose spans go to `processors`, with `resource`; the
    /// kit's spans have the instrumentation scope `scope`. The sampler is
    /// the environment's ([`sampler_from_env`]).
    ///
    /// # Errors
    /// The pipeline's thread could not be started.
    pub fn new(
        processors: Vec<Box<dyn SpanProcessor>>,
        resource: Option<Resource>,
        scope: &'static str,
    ) -> std::io::Result<Self> {
        let sampler = sampler_from_env();
        let (pipeline, recorder) = SpanPipeline::new(processors, sampler.clone(), scope)?;
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_span_processor(pipeline);
        if let Some(resource) = resource {
            builder = builder.with_resource(resource);
        }
        Ok(Self {
            provider: builder.build(),
            recorder,
        })
    }

    /// The tracer provider (for the `tracing` bridge, flushes, shutdown).
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// The handle the kit's messaging spans are recorded through.
    pub fn recorder(&self) -> &MessagingRecorder {
        &self.recorder
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use opentelemetry::propagation::TextMapPropagator as _;

    use super::*;

    /// What the SDK's propagator reads from the headers `tp` and `ts`.
    fn via_propagator(tp: &str, ts: Option<&str>) -> Option<SpanContext> {
        let mut headers =
            std::collections::HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
        if let Some(ts) = ts {
            headers.insert("tracestate".to_owned(), ts.to_owned());
        }
        let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&headers);
        let sc = cx.span().span_context().clone();
        sc.is_valid().then_some(sc)
    }

    #[test]
    fn traceparents_read_as_the_propagator_reads_them() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut cases: Vec<String> = vec![
            good.into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff".into(),
            "00-00000000000000000000000000000000-b7ad6b7169203331-01".into(),
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01".into(),
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01".into(),
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra".into(),
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            " 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 ".into(),
            "00-af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1".into(),
            "".into(),
            "garbage".into(),
        ];
        // Every single-byte change of the canonical form.
        for i in 0..good.len() {
            for b in [b'0', b'f', b'g', b'-', b'A', b'+', b' '] {
                let mut v = good.as_bytes().to_vec();
                v[i] = b;
                cases.push(String::from_utf8(v).unwrap());
            }
        }
        for tp in &cases {
            for ts in [None, Some("vendor=v1,other=x"), Some("not a state")] {
                let ours = remote_context(Some(tp), ts);
                let theirs = via_propagator(tp, ts);
                assert_eq!(ours, theirs, "{tp:?} {ts:?}");
            }
        }
        let sc = remote_context(Some(good), None).unwrap();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(remote_context(None, Some("a=b")), None);
    }

    fn record(recorder: &MessagingRecorder, parent: Option<&SpanContext>, n: usize) -> Record {
        let operation = Operation::Process {
            system: "nats",
            delivered: 2,
        };
        let (context, sampled) = recorder.start(parent, operation);
        assert!(sampled);
        let id = format!("id-{n}");
        Record::new(
            context,
            parent,
            operation,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1),
            ["shop.orders.placed", &id, "billing", "", "o-1"],
        )
    }

    #[test]
    fn queued_spans_reach_the_processors_on_a_flush_as_sdk_span_data() {
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor};
        let exporter = InMemorySpanExporter::default();
        let traces = Traces::new(
            vec![Box::new(SimpleSpanProcessor::new(exporter.clone()))],
            None,
            "test",
        )
        .unwrap();
        let recorder = traces.recorder();
        let parent = remote_context(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            None,
        )
        .unwrap();
        let linked = remote_context(
            Some("00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"),
            None,
        )
        .unwrap();
        // A handler's span: attributes, an event and a failure added.
        let first = record(recorder, Some(&parent), 1).with_links(vec![linked.clone()]);
        let context = first.context.clone();
        let cx = Context::new().with_span(recorder.span(context.clone(), Some(first)));
        cx.span().set_attribute(KeyValue::new("handler.note", "x"));
        cx.span().add_event("retrying", vec![]);
        cx.span().set_status(Status::error("boom"));
        cx.span().end();
        // An emitted event's span, ended at once.
        let (created, _) = recorder.start(Some(&context), Operation::Create);
        recorder.record(Record::new(
            created.clone(),
            Some(&context),
            Operation::Create,
            SystemTime::UNIX_EPOCH,
            ["shop.orders.confirmed", "id-2", "", "corr-1", ""],
        ));
        traces.provider().force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 2, "{spans:?}");
        let process = &spans[0];
        assert_eq!(process.name, "process shop.orders.placed");
        assert_eq!(process.span_kind, SpanKind::Consumer);
        assert_eq!(process.span_context, context);
        assert_eq!(process.parent_span_id, parent.span_id());
        assert!(process.parent_span_is_remote);
        assert_eq!(process.status, Status::error("boom"));
        assert_eq!(process.events.events[0].name, "retrying");
        assert_eq!(process.links.links[0].span_context, linked);
        assert_eq!(process.instrumentation_scope.name(), "test");
        let attributes: Vec<(String, String)> = process
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        let expected = [
            ("messaging.system", "nats"),
            ("messaging.operation.type", "process"),
            ("messaging.destination.name", "shop.orders.placed"),
            ("messaging.message.id", "id-1"),
            ("messaging.consumer.group.name", "billing"),
            ("sluice.delivery", "2"),
            ("sluice.key", "o-1"),
            ("handler.note", "x"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(attributes, expected);
        let create = &spans[1];
        assert_eq!(create.name, "create shop.orders.confirmed");
        assert_eq!(create.span_kind, SpanKind::Producer);
        assert_eq!(create.parent_span_id, context.span_id());
        assert!(!create.parent_span_is_remote);
        assert_eq!(create.span_context, created);
        let keys: Vec<&str> = create.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "messaging.operation.type",
                "messaging.operation.name",
                "messaging.destination.name",
                "messaging.message.id",
                "messaging.message.conversation_id",
            ]
        );
    }

    /// Counts the spans it is handed.
    #[derive(Debug, Clone, Default)]
    struct Count(Arc<AtomicU64>);

    impl SpanProcessor for Count {
        fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}
        fn on_end(&self, _span: SpanData) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    #[test]
    fn the_pipelines_thread_hands_spans_on_and_a_shutdown_the_rest() {
        let count = Count::default();
        let traces = Traces::new(vec![Box::new(count.clone())], None, "test").unwrap();
        let recorder = traces.recorder();
        let handed = || count.0.load(Ordering::SeqCst);
        // More than wake the thread: handed on without a flush.
        let many = WAKE_AT as u64 + 10;
        for n in 0..many {
            recorder.record(record(recorder, None, n as usize));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while handed() < many {
            assert!(std::time::Instant::now() < deadline, "not handed on");
            std::thread::sleep(Duration::from_millis(10));
        }
        recorder.record(record(recorder, None, 0));
        // The shutdown hands on what is queued; later spans are dropped.
        traces.provider().shutdown().unwrap();
        recorder.record(record(recorder, None, 1));
        let _ = traces.provider().force_flush();
        assert_eq!(handed(), many + 1);
    }

    const PROCESS: Operation = Operation::Process {
        system: "nats",
        delivered: 1,
    };

    #[test]
    fn children_carry_the_trace_and_the_sampling_decision() {
        let (_pipeline, recorder) =
            SpanPipeline::new(Vec::new(), sampler_from_env(), "test").unwrap();
        let parent = remote_context(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("vendor=v1"),
        )
        .unwrap();
        let (child, sampled) = recorder.start(Some(&parent), PROCESS);
        assert!(sampled && child.is_sampled() && !child.is_remote());
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.span_id(), parent.span_id());
        assert_eq!(child.trace_state().header(), "vendor=v1");
        let unsampled = remote_context(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            None,
        )
        .unwrap();
        let (child, sampled) = recorder.start(Some(&unsampled), PROCESS);
        assert!(!sampled && !child.is_sampled() && child.is_valid());
        let (root, sampled) = recorder.start(None, Operation::Create);
        assert!(sampled && root.is_valid());
        assert_ne!(root.trace_id(), parent.trace_id());
    }
}
