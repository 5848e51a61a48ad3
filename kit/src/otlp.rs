//! Spans sent over OTLP/HTTP as protobuf, encoded straight from the SDK's
//! [`SpanData`].
//!
//! `opentelemetry-otlp` first converts each span into the generated
//! protobuf structs (a `String` or `Vec` per id, name and attribute) and
//! then encodes them with prost, which works out each nested message's
//! length again at every level. On the kit benchmark that was ~12,000
//! instructions per span, more than half of all the work tracing added
//! (`callgrind`, docs/benchmarks.md). Here each span is measured once and
//! written once into one buffer: the same bytes prost writes (a test
//! compares them with the crate's own conversion), without the
//! intermediate structs.
//!
//! The transport is the hyper client `opentelemetry-http` provides, with
//! the OTLP/HTTP behaviour the crate's exporter had: `POST
//! <endpoint>/v1/traces`, `Content-Type: application/x-protobuf`, headers
//! from `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_TRACES_HEADERS`,
//! a timeout from `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or
//! `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds, default 10 s), and retries
//! with backoff on network errors and on 429, 502, 503 and 504 (honouring
//! `Retry-After`) until that timeout. gRPC stays with the crate's tonic
//! exporter.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_http::{Bytes, HttpClient, Request};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::SpanData;
use prost::Message as _;
use prost::encoding::{WireType, encoded_len_varint, key_len};

/// The default export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT` unset).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait before a retry; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two attempts (unless `Retry-After` asks more).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

// ---- protobuf, written by hand in field order -------------------------

/// A varint, written in place (prost's takes any `BufMut` and is not
/// inlined; most values here, every key and most lengths, are one byte).
#[inline]
fn encode_varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A field's key: its tag and wire type.
#[inline]
fn encode_key(tag: u32, wire_type: WireType, buf: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire_type as u32), buf);
}

/// Bytes of a length-delimited field `tag` holding `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The key and length of a length-delimited field.
fn put_len(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A `string`/`bytes` field; proto3 leaves an empty one out.
fn bytes_len(tag: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        field_len(tag, b.len())
    }
}

fn put_bytes(tag: u32, b: &[u8], buf: &mut Vec<u8>) {
    if !b.is_empty() {
        put_len(tag, b.len(), buf);
        buf.extend_from_slice(b);
    }
}

/// A varint field (`uint32`, `int64`, an enum); left out when zero.
fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn put_varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

fn fixed64_len(tag: u32, v: u64) -> usize {
    if v == 0 { 0 } else { key_len(tag) + 8 }
}

fn put_fixed64(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32_len(tag: u32, v: u32) -> usize {
    if v == 0 { 0 } else { key_len(tag) + 4 }
}

fn put_fixed32(tag: u32, v: u32, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// An `AnyValue`'s one field (a oneof: written even when it is the
/// default value).
enum Any<'a> {
    Bool(bool),
    Int(i64),
    Double(f64),
    Text(Cow<'a, str>),
    Array(&'a Array),
}

fn any(v: &Value) -> Any<'_> {
    match v {
        Value::Bool(b) => Any::Bool(*b),
        Value::I64(i) => Any::Int(*i),
        Value::F64(f) => Any::Double(*f),
        Value::String(s) => Any::Text(Cow::Borrowed(s.as_str())),
        Value::Array(a) => Any::Array(a),
        // A kind of value added to the API later: sent as its text.
        other => Any::Text(other.as_str()),
    }
}

/// The elements of an array value.
fn elements(a: &Array) -> Vec<Any<'_>> {
    match a {
        Array::Bool(v) => v.iter().map(|b| Any::Bool(*b)).collect(),
        Array::I64(v) => v.iter().map(|i| Any::Int(*i)).collect(),
        Array::F64(v) => v.iter().map(|f| Any::Double(*f)).collect(),
        Array::String(v) => v
            .iter()
            .map(|s| Any::Text(Cow::Borrowed(s.as_str())))
            .collect(),
        // A kind of array added to the API later: one text element.
        other => vec![Any::Text(Cow::Owned(other.to_string()))],
    }
}

/// The encoded length of an `AnyValue` message.
fn any_len(v: &Any<'_>) -> usize {
    match v {
        Any::Text(s) => field_len(1, s.len()),
        Any::Bool(_) => key_len(2) + 1,
        Any::Int(i) => key_len(3) + encoded_len_varint(*i as u64),
        Any::Double(_) => key_len(4) + 8,
        Any::Array(a) => field_len(5, array_len(&elements(a))),
    }
}

/// The encoded length of an `ArrayValue` message.
fn array_len(values: &[Any<'_>]) -> usize {
    values.iter().map(|v| field_len(1, any_len(v))).sum()
}

fn put_any(v: &Any<'_>, buf: &mut Vec<u8>) {
    match v {
        Any::Text(s) => {
            put_len(1, s.len(), buf);
            buf.extend_from_slice(s.as_bytes());
        }
        Any::Bool(b) => {
            encode_key(2, WireType::Varint, buf);
            buf.push(u8::from(*b));
        }
        Any::Int(i) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(*i as u64, buf);
        }
        Any::Double(f) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&f.to_le_bytes());
        }
        Any::Array(a) => {
            let values = elements(a);
            put_len(5, array_len(&values), buf);
            for v in &values {
                put_len(1, any_len(v), buf);
                put_any(v, buf);
            }
        }
    }
}

/// The encoded length of a `KeyValue` message whose value's is
/// `value_len`.
fn kv_len(key: &str, value_len: usize) -> usize {
    bytes_len(1, key.as_bytes()) + field_len(2, value_len)
}

/// The bytes of a repeated `KeyValue` field `tag`.
fn kvs_len<'a>(tag: u32, kvs: impl Iterator<Item = &'a KeyValue>) -> usize {
    kvs.map(|kv| field_len(tag, kv_len(kv.key.as_str(), any_len(&any(&kv.value)))))
        .sum()
}

fn put_kvs<'a>(tag: u32, kvs: impl Iterator<Item = &'a KeyValue>, buf: &mut Vec<u8>) {
    for kv in kvs {
        put_kv(tag, kv.key.as_str(), &any(&kv.value), buf);
    }
}

fn put_kv(tag: u32, key: &str, value: &Any<'_>, buf: &mut Vec<u8>) {
    let value_len = any_len(value);
    put_len(tag, kv_len(key, value_len), buf);
    put_bytes(1, key.as_bytes(), buf);
    put_len(2, value_len, buf);
    put_any(value, buf);
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A span's or link's `flags`: the W3C trace flags, and whether the
/// parent (or linked) context is remote.
fn flags(sc: &SpanContext, remote: bool) -> u32 {
    // SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
    u32::from(sc.trace_flags().to_u8()) | 0x100 | if remote { 0x200 } else { 0 }
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// A `Status` message's code and message.
fn status(s: &Status) -> (u64, &str) {
    match s {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description),
    }
}

fn status_len(s: &Status) -> usize {
    let (code, message) = status(s);
    bytes_len(2, message.as_bytes()) + varint_len(3, code)
}

fn parent_id(span: &SpanData) -> Option<[u8; 8]> {
    (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_bytes())
}

fn event_len(e: &opentelemetry::trace::Event) -> usize {
    fixed64_len(1, nanos(e.timestamp))
        + bytes_len(2, e.name.as_bytes())
        + kvs_len(3, e.attributes.iter())
        + varint_len(4, u64::from(e.dropped_attributes_count))
}

fn link_len(l: &opentelemetry::trace::Link) -> usize {
    let sc = &l.span_context;
    field_len(1, 16)
        + field_len(2, 8)
        + bytes_len(3, sc.trace_state().header().as_bytes())
        + kvs_len(4, l.attributes.iter())
        + varint_len(5, u64::from(l.dropped_attributes_count))
        + fixed32_len(6, flags(sc, sc.is_remote()))
}

/// The encoded length of a `Span` message.
fn span_len(s: &SpanData) -> usize {
    let sc = &s.span_context;
    field_len(1, 16)
        + field_len(2, 8)
        + bytes_len(3, sc.trace_state().header().as_bytes())
        + parent_id(s).map_or(0, |_| field_len(4, 8))
        + bytes_len(5, s.name.as_bytes())
        + varint_len(6, kind(&s.span_kind))
        + fixed64_len(7, nanos(s.start_time))
        + fixed64_len(8, nanos(s.end_time))
        + kvs_len(9, s.attributes.iter())
        + varint_len(10, u64::from(s.dropped_attributes_count))
        + s.events
            .events
            .iter()
            .map(|e| field_len(11, event_len(e)))
            .sum::<usize>()
        + varint_len(12, u64::from(s.events.dropped_count))
        + s.links
            .links
            .iter()
            .map(|l| field_len(13, link_len(l)))
            .sum::<usize>()
        + varint_len(14, u64::from(s.links.dropped_count))
        + field_len(15, status_len(&s.status))
        + fixed32_len(16, flags(sc, s.parent_span_is_remote))
}

fn put_span(s: &SpanData, len: usize, buf: &mut Vec<u8>) {
    let sc = &s.span_context;
    put_len(2, len, buf);
    put_bytes(1, &sc.trace_id().to_bytes(), buf);
    put_bytes(2, &sc.span_id().to_bytes(), buf);
    put_bytes(3, sc.trace_state().header().as_bytes(), buf);
    if let Some(parent) = parent_id(s) {
        put_bytes(4, &parent, buf);
    }
    put_bytes(5, s.name.as_bytes(), buf);
    put_varint(6, kind(&s.span_kind), buf);
    put_fixed64(7, nanos(s.start_time), buf);
    put_fixed64(8, nanos(s.end_time), buf);
    put_kvs(9, s.attributes.iter(), buf);
    put_varint(10, u64::from(s.dropped_attributes_count), buf);
    for e in &s.events.events {
        put_len(11, event_len(e), buf);
        put_fixed64(1, nanos(e.timestamp), buf);
        put_bytes(2, e.name.as_bytes(), buf);
        put_kvs(3, e.attributes.iter(), buf);
        put_varint(4, u64::from(e.dropped_attributes_count), buf);
    }
    put_varint(12, u64::from(s.events.dropped_count), buf);
    for l in &s.links.links {
        let lc = &l.span_context;
        put_len(13, link_len(l), buf);
        put_bytes(1, &lc.trace_id().to_bytes(), buf);
        put_bytes(2, &lc.span_id().to_bytes(), buf);
        put_bytes(3, lc.trace_state().header().as_bytes(), buf);
        put_kvs(4, l.attributes.iter(), buf);
        put_varint(5, u64::from(l.dropped_attributes_count), buf);
        put_fixed32(6, flags(lc, lc.is_remote()), buf);
    }
    put_varint(14, u64::from(s.links.dropped_count), buf);
    put_len(15, status_len(&s.status), buf);
    let (code, message) = status(&s.status);
    put_bytes(2, message.as_bytes(), buf);
    put_varint(3, code, buf);
    put_fixed32(16, flags(sc, s.parent_span_is_remote), buf);
}

fn scope_len(scope: &InstrumentationScope) -> usize {
    bytes_len(1, scope.name().as_bytes())
        + bytes_len(2, scope.version().unwrap_or_default().as_bytes())
        + kvs_len(3, scope.attributes())
}

/// The process's resource, encoded once (it is the same in every export).
#[derive(Debug, Default, Clone)]
pub(crate) struct EncodedResource {
    /// The `Resource` message's fields.
    attributes: Vec<u8>,
    /// Its schema URL.
    schema_url: String,
}

impl EncodedResource {
    /// `resource`'s attributes, encoded.
    pub(crate) fn new(resource: &Resource) -> Self {
        let mut attributes = Vec::new();
        for (k, v) in resource.iter() {
            put_kv(1, k.as_str(), &any(v), &mut attributes);
        }
        Self {
            attributes,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// `spans` as an OTLP `ExportTraceServiceRequest`: one `ResourceSpans`
/// with a `ScopeSpans` per instrumentation scope, in the order the scopes
/// first appear (as `opentelemetry-proto` groups them).
pub(crate) fn encode_request(spans: &[SpanData], resource: &EncodedResource) -> Vec<u8> {
    let lens: Vec<usize> = spans.iter().map(span_len).collect();
    let mut scopes: Vec<(&InstrumentationScope, Vec<usize>)> = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match scopes
            .iter_mut()
            .find(|(scope, _)| *scope == &s.instrumentation_scope)
        {
            Some((_, members)) => members.push(i),
            None => scopes.push((&s.instrumentation_scope, vec![i])),
        }
    }
    let scope_spans_len = |scope: &InstrumentationScope, members: &[usize]| {
        field_len(1, scope_len(scope))
            + members
                .iter()
                .map(|&i| field_len(2, lens[i]))
                .sum::<usize>()
            + bytes_len(3, scope.schema_url().unwrap_or_default().as_bytes())
    };
    let resource_spans_len = field_len(1, resource.attributes.len())
        + scopes
            .iter()
            .map(|(scope, members)| field_len(2, scope_spans_len(scope, members)))
            .sum::<usize>()
        + bytes_len(3, resource.schema_url.as_bytes());
    let mut buf = Vec::with_capacity(field_len(1, resource_spans_len));
    put_len(1, resource_spans_len, &mut buf);
    put_len(1, resource.attributes.len(), &mut buf);
    buf.extend_from_slice(&resource.attributes);
    for (scope, members) in &scopes {
        put_len(2, scope_spans_len(scope, members), &mut buf);
        put_len(1, scope_len(scope), &mut buf);
        put_bytes(1, scope.name().as_bytes(), &mut buf);
        put_bytes(2, scope.version().unwrap_or_default().as_bytes(), &mut buf);
        put_kvs(3, scope.attributes(), &mut buf);
        for &i in members {
            put_span(&spans[i], lens[i], &mut buf);
        }
        put_bytes(
            3,
            scope.schema_url().unwrap_or_default().as_bytes(),
            &mut buf,
        );
    }
    put_bytes(3, resource.schema_url.as_bytes(), &mut buf);
    buf
}

// ---- the exporter ------------------------------------------------------

/// `%XX` escapes decoded (`None` when one is malformed or the result is
/// not UTF-8).
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Headers from an `OTEL_EXPORTER_OTLP_*HEADERS` value
/// (`key1=value1,key2=value2`, values percent-encoded); a pair that is not
/// a valid header is left out with a warning.
pub(crate) fn parse_headers(value: &str) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parsed = pair.split_once('=').and_then(|(k, v)| {
            let v = v.trim();
            let v = percent_decode(v).unwrap_or_else(|| v.to_owned());
            Some((
                HeaderName::try_from(k.trim()).ok()?,
                HeaderValue::try_from(v).ok()?,
            ))
        });
        match parsed {
            Some(h) => headers.push(h),
            None => tracing::warn!(pair, "ignoring an invalid OTLP header"),
        }
    }
    headers
}

/// The part of an `ExportTraceServiceResponse` a collector fills when it
/// took only some of a batch.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<PartialSuccess>,
}

/// `ExportTracePartialSuccess`.
#[derive(Clone, PartialEq, prost::Message)]
struct PartialSuccess {
    #[prost(int64, tag = "1")]
    rejected_spans: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

/// What a collector's successful answer says it rejected, `(spans,
/// message)`, when it rejected any or said why.
fn rejected(body: &[u8]) -> Option<(i64, String)> {
    let p = ExportResponse::decode(body).ok()?.partial_success?;
    (p.rejected_spans > 0 || !p.error_message.is_empty())
        .then_some((p.rejected_spans, p.error_message))
}

/// Exports spans to an OTLP/HTTP endpoint as protobuf.
#[derive(Debug)]
pub(crate) struct HttpExporter {
    client: opentelemetry_http::hyper::HyperClient,
    url: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    resource: EncodedResource,
}

impl HttpExporter {
    /// An exporter posting to `url` (the full `…/v1/traces` address), with
    /// headers and timeout from the environment. Call within a Tokio
    /// runtime: the client's connections run there.
    ///
    /// # Errors
    /// As [`HttpExporter::with_env`].
    pub(crate) fn new(url: String) -> Result<Self, String> {
        Self::with_env(url, |name| std::env::var(name).ok())
    }

    /// [`HttpExporter::new`] with the variables read through `var`.
    ///
    /// # Errors
    /// `url` is not a valid URI, the timeout is not a number, or a
    /// compression was asked for (none is built in).
    fn with_env(url: String, var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        url.parse::<axum::http::Uri>()
            .map_err(|e| format!("invalid endpoint {url:?}: {e}"))?;
        // The first of `names` set (and not blank).
        let env = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| var(n).filter(|v| !v.trim().is_empty()))
        };
        if let Some(c) = env(&[
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ]) && c.trim() != "none"
        {
            return Err(format!(
                "OTLP compression {c:?} is not supported (only \"none\")"
            ));
        }
        let timeout =
            match env(&[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ]) {
                Some(ms) => Duration::from_millis(ms.trim().parse().map_err(|_| {
                    format!("the OTLP timeout {ms:?} is not a number of milliseconds")
                })?),
                None => DEFAULT_TIMEOUT,
            };
        let mut headers = Vec::new();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(v) = var(name) {
                for (k, v) in parse_headers(&v) {
                    // The traces' own variable overrides the shared one.
                    headers.retain(|(have, _)| *have != k);
                    headers.push((k, v));
                }
            }
        }
        Ok(Self {
            client: opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None),
            url,
            headers,
            timeout,
            resource: EncodedResource::default(),
        })
    }

    /// One POST of `body`.
    async fn post(&self, body: Bytes) -> Result<(StatusCode, Option<Duration>, Bytes), String> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .map_err(|e| e.to_string())?;
        for (k, v) in &self.headers {
            request.headers_mut().insert(k.clone(), v.clone());
        }
        let response = self
            .client
            .send_bytes(request)
            .await
            .map_err(|e| format!("network error: {e}"))?;
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Ok((response.status(), retry_after, response.into_body()))
    }

    /// Posts `body`, retrying what OTLP calls retryable until the timeout.
    async fn send(&self, body: Bytes) -> OTelSdkResult {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let failed = match tokio::time::timeout(left, self.post(body.clone())).await {
                Err(_) => format!("no answer within {:?}", self.timeout),
                Ok(Ok((status, _, answer))) if status.is_success() => {
                    if let Some((spans, error)) = rejected(&answer) {
                        tracing::warn!(url = %self.url, rejected_spans = spans, error, "the OTLP collector rejected spans");
                    }
                    return Ok(());
                }
                Ok(Ok((status, retry_after, _)))
                    if matches!(status.as_u16(), 429 | 502 | 503 | 504) =>
                {
                    let failed = format!("HTTP {status}");
                    if let Some(wait) = retry_after {
                        backoff = backoff.max(wait);
                    }
                    failed
                }
                Ok(Ok((status, _, _))) => {
                    return Err(OTelSdkError::InternalFailure(format!(
                        "OTLP export to {} failed: HTTP {status}",
                        self.url
                    )));
                }
                Ok(Err(e)) => e,
            };
            if Instant::now() + backoff >= deadline {
                return Err(OTelSdkError::InternalFailure(format!(
                    "OTLP export to {} failed: {failed}",
                    self.url
                )));
            }
            tracing::debug!(url = %self.url, error = %failed, ?backoff, "retrying an OTLP export");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

impl opentelemetry_sdk::trace::SpanExporter for HttpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let body = Bytes::from(encode_request(&batch, &self.resource));
        drop(batch);
        self.send(body).await
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use opentelemetry::trace::{
        Event, Link, SpanContext, TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry::trace::{Span as _, TraceContextExt as _};
    use opentelemetry::{Context, KeyValue, StringValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use prost::Message as _;

    use super::*;

    /// Spans of every shape: each kind, every attribute type (negative and
    /// empty values too), events, links with trace state, statuses,
    /// remote and local parents, roots, and two instrumentation scopes.
    fn spans() -> Vec<SpanData> {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let sluice = provider.tracer("sluice");
        let other = provider.tracer_with_scope(
            InstrumentationScope::builder("other")
                .with_version("1.2.3")
                .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
                .with_attributes([KeyValue::new("scope.attr", 7)])
                .build(),
        );
        let state = TraceState::from_key_value([("vendor", "v1")]).unwrap();
        let remote = SpanContext::new(
            TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c_u128),
            SpanId::from(0xb7ad_6b71_6920_3331_u64),
            TraceFlags::SAMPLED,
            true,
            state.clone(),
        );
        let parent = Context::new().with_remote_span_context(remote.clone());
        let kinds = [
            SpanKind::Internal,
            SpanKind::Server,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Consumer,
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            let tracer = if i % 2 == 0 { &sluice } else { &other };
            let mut builder = tracer
                .span_builder(format!("span {i}"))
                .with_kind(kind)
                .with_attributes([
                    KeyValue::new("s", "text"),
                    KeyValue::new("empty", ""),
                    KeyValue::new("b", i % 2 == 0),
                    KeyValue::new("f", false),
                    KeyValue::new("i", -(i as i64) - 1),
                    KeyValue::new("zero", 0_i64),
                    KeyValue::new("big", i64::MAX),
                    KeyValue::new("d", 1.5 / (i as f64 + 1.0)),
                    KeyValue::new("ab", Value::Array(Array::Bool(vec![true, false]))),
                    KeyValue::new("ai", Value::Array(Array::I64(vec![-1, 0, 300]))),
                    KeyValue::new("af", Value::Array(Array::F64(vec![0.0, -2.5]))),
                    KeyValue::new(
                        "as",
                        Value::Array(Array::String(vec![
                            StringValue::from("x"),
                            StringValue::from(""),
                        ])),
                    ),
                    KeyValue::new("ae", Value::Array(Array::I64(vec![]))),
                ]);
            if i == 1 {
                builder = builder.with_links(vec![
                    Link::with_context(remote.clone()),
                    Link::new(
                        SpanContext::new(
                            TraceId::from(5_u128),
                            SpanId::from(6_u64),
                            TraceFlags::default(),
                            false,
                            TraceState::default(),
                        ),
                        vec![KeyValue::new("link.attr", "l")],
                        2,
                    ),
                ]);
            }
            if i == 2 {
                builder = builder.with_events(vec![
                    Event::new("first", SystemTime::now(), vec![KeyValue::new("e", 1)], 0),
                    Event::with_name("second"),
                ]);
            }
            let mut span = if i == 0 {
                builder.start(tracer)
            } else {
                builder.start_with_context(tracer, &parent)
            };
            match i {
                3 => span.set_status(Status::error("it failed: ünïcode")),
                4 => span.set_status(Status::Ok),
                _ => {}
            }
            if i == 0 {
                // A local child of a local span.
                let cx = Context::current_with_span(span);
                let child = sluice.start_with_context("child", &cx);
                drop(child);
                cx.span().end();
            } else {
                span.end();
            }
        }
        provider.force_flush().unwrap();
        exporter.get_finished_spans().unwrap()
    }

    #[test]
    fn requests_are_the_bytes_the_otlp_crate_encodes() {
        let spans = spans();
        assert_eq!(spans.len(), 6);
        let resources = [
            Resource::builder().with_service_name("bench").build(),
            Resource::builder_empty()
                .with_schema_url(
                    [KeyValue::new("a", 1), KeyValue::new("service.name", "x")],
                    "https://opentelemetry.io/schemas/1.26.0",
                )
                .build(),
            Resource::builder_empty().build(),
        ];
        for resource in &resources {
            let ours = encode_request(&spans, &EncodedResource::new(resource));
            let theirs = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(
                    spans.clone(),
                    &ResourceAttributesWithSchema::from(resource),
                ),
            };
            assert_eq!(
                ExportTraceServiceRequest::decode(ours.as_slice()).unwrap(),
                theirs
            );
            assert_eq!(ours, theirs.encode_to_vec());
            // One span alone, and none.
            let one = encode_request(&spans[3..4], &EncodedResource::new(resource));
            let theirs = ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(
                    spans[3..4].to_vec(),
                    &ResourceAttributesWithSchema::from(resource),
                ),
            };
            assert_eq!(one, theirs.encode_to_vec());
        }
        let two_scopes = ExportTraceServiceRequest::decode(
            encode_request(&spans, &EncodedResource::default()).as_slice(),
        )
        .unwrap();
        assert_eq!(two_scopes.resource_spans[0].scope_spans.len(), 2);
    }

    #[test]
    fn settings_come_from_the_traces_variables_before_the_shared_ones() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let url = || "http://127.0.0.1:4318/v1/traces".to_owned();
        let e = HttpExporter::with_env(
            url(),
            vars(&[
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=shared,b=shared"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=traces"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", " "),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ]),
        )
        .unwrap();
        let headers: Vec<(&str, &str)> = e
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(headers, [("a", "shared"), ("b", "traces")]);
        assert_eq!(e.timeout, Duration::from_millis(2500));
        let e = HttpExporter::with_env(url(), vars(&[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "7")]));
        assert_eq!(e.unwrap().timeout, Duration::from_millis(7));
        assert_eq!(
            HttpExporter::with_env(url(), |_| None).unwrap().timeout,
            DEFAULT_TIMEOUT
        );
        for bad in [
            vars(&[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")]),
            vars(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]),
        ] {
            assert!(HttpExporter::with_env(url(), bad).is_err());
        }
        assert!(HttpExporter::with_env("not a url".to_owned(), |_| None).is_err());
    }

    #[test]
    fn a_partial_success_is_read_from_the_answer() {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceResponse,
        };
        let answer = |rejected_spans, error_message: &str| {
            ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans,
                    error_message: error_message.to_owned(),
                }),
            }
            .encode_to_vec()
        };
        assert_eq!(rejected(&answer(3, "quota")), Some((3, "quota".to_owned())));
        assert_eq!(
            rejected(&answer(0, "slow down")),
            Some((0, "slow down".to_owned()))
        );
        assert_eq!(rejected(&answer(0, "")), None);
        assert_eq!(
            rejected(&ExportTraceServiceResponse::default().encode_to_vec()),
            None
        );
        assert_eq!(rejected(b""), None);
        assert_eq!(rejected(b"\xff\xff not protobuf"), None);
    }

    #[test]
    fn headers_are_parsed_and_percent_decoded() {
        let headers = parse_headers(" api-key = a%20b%3D ,x-tenant=t1,broken,=v,bad key=1, ");
        let headers: Vec<(String, String)> = headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(
            headers,
            [
                ("api-key".to_owned(), "a b=".to_owned()),
                ("x-tenant".to_owned(), "t1".to_owned())
            ]
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("100%"), None);
        assert_eq!(percent_decode("%C3%BC").as_deref(), Some("ü"));
    }
}
