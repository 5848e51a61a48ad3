//! The CloudEvents 1.0 envelope (binary content mode) and transport headers.
//!
//! Header names here are the transport-neutral ones used by the NATS
//! CloudEvents binding and the embedded log (`ce-id`, `ce-type`, …). Backends
//! whose binding names them differently (AMQP: `cloudEvents:id`) translate at
//! their edge, so code above the broker only ever sees these names.

use bytes::Bytes;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// `ce-id` header: the event id (UUIDv7).
pub const CE_ID: &str = "ce-id";
/// `ce-source` header: URI-reference of the producer.
pub const CE_SOURCE: &str = "ce-source";
/// `ce-type` header: fully-qualified protobuf message name.
pub const CE_TYPE: &str = "ce-type";
/// `ce-subject` header: the aggregate id the event is about.
pub const CE_SUBJECT: &str = "ce-subject";
/// `ce-time` header: RFC 3339 timestamp of the event.
pub const CE_TIME: &str = "ce-time";
/// `ce-specversion` header: always `1.0`.
pub const CE_SPECVERSION: &str = "ce-specversion";
/// `content-type` header: `application/protobuf`.
pub const CONTENT_TYPE: &str = "content-type";
/// W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// W3C `tracestate` header.
pub const TRACESTATE: &str = "tracestate";
/// `correlation-id` header: shared by everything one request caused.
pub const CORRELATION_ID: &str = "correlation-id";
/// `causation-id` header: id of the direct cause.
pub const CAUSATION_ID: &str = "causation-id";

/// The CloudEvents spec version Sluice speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The content type of every Sluice payload.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/protobuf";

/// Transport headers of one message: an ordered map of lowercase names.
///
/// Every name and value is kept in one text buffer, with a sorted index of
/// where each header lies in it: a message's headers are two allocations,
/// not two per header (a map of `String`s cost ~20 per consumed event on
/// every backend).
#[derive(Clone, Default)]
pub struct Headers {
    /// The names and values, back to back (a replaced or removed header's
    /// bytes stay until the map is dropped).
    text: String,
    /// Per header, sorted by name: where its name starts, where its value
    /// starts (the name's end) and where its value ends in `text`.
    index: Vec<(usize, usize, usize)>,
}

impl Headers {
    /// An empty header map.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty header map with room for `headers` headers of `bytes` bytes
    /// of names and values in all.
    pub fn with_capacity(headers: usize, bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            index: Vec::with_capacity(headers),
        }
    }

    /// The headers `pairs` (later ones replacing earlier ones of the same
    /// name), sized in a first walk over them and copied in a second, so
    /// the map is allocated once: for iterators that are cheap to walk
    /// twice.
    pub fn sized_from<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Self {
        let (count, bytes) = pairs
            .clone()
            .fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len()));
        let mut headers = Self::with_capacity(count, bytes);
        for (name, value) in pairs {
            headers.insert(name, value);
        }
        headers
    }

    /// The name of index entry `entry`, as bytes.
    fn name_of(&self, &(start, end, _): &(usize, usize, usize)) -> &[u8] {
        self.text.as_bytes().get(start..end).unwrap_or_default()
    }

    /// Where `name` (lowercase) is in the index, or where it would go.
    /// Compared as bytes (the same order as `str`'s): slicing the `str`
    /// checked both ends for a character boundary at every step, and this
    /// runs for every header read of every message.
    fn find(&self, name: &[u8]) -> Result<usize, usize> {
        self.index
            .binary_search_by(|entry| self.name_of(entry).cmp(name))
    }

    /// Where `name` (any case) is in the index.
    fn position(&self, name: &str) -> Option<usize> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.find(name.to_ascii_lowercase().as_bytes()).ok()
        } else {
            self.find(name.as_bytes()).ok()
        }
    }

    /// Sets `name` (lowercased) to `value`, replacing any previous value.
    pub fn insert(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) {
        let (name, value) = (name.as_ref(), value.as_ref());
        let start = self.text.len();
        self.text.push_str(name);
        let value_start = self.text.len();
        self.text[start..].make_ascii_lowercase();
        self.text.push_str(value);
        let entry = (start, value_start, self.text.len());
        let name = &self.text.as_bytes()[start..value_start];
        // Headers mostly arrive in name order (copied from another map, a
        // sorted JSON object or a log record): then the name goes last,
        // after one comparison instead of a search.
        let at = match self.index.last() {
            Some(last) if self.name_of(last) >= name => self.find(name),
            _ => Err(self.index.len()),
        };
        match at {
            Ok(i) => self.index[i] = entry,
            Err(i) => self.index.insert(i, entry),
        }
    }

    /// The value of `name`, if present (names are case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        let (_, start, end) = self.index[self.position(name)?];
        Some(&self.text[start..end])
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let (_, start, end) = self.index.remove(self.position(name)?);
        Some(self.text[start..end].to_owned())
    }

    /// Iterates over `(name, value)` pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.index
            .iter()
            .map(|&(name, value, end)| (&self.text[name..value], &self.text[value..end]))
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.insert(k, v);
        }
        h
    }
}

/// Why a message is not a valid Sluice event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// A required CloudEvents attribute is absent.
    #[error("missing required header {0}")]
    MissingHeader(&'static str),
    /// An attribute is present but not valid.
    #[error("invalid header {name}: {reason}")]
    InvalidHeader {
        /// The header's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The event's type is not the one the consumer expected.
    #[error("unexpected ce-type {actual}, expected {expected}")]
    UnexpectedType {
        /// The type the consumer asked for.
        expected: String,
        /// The type the message carries.
        actual: String,
    },
    /// The payload does not decode as its ce-type.
    #[error("payload does not decode as {event_type}: {reason}")]
    Payload {
        /// The ce-type the payload was decoded as.
        event_type: String,
        /// The decoder's message.
        reason: String,
    },
}

/// The CloudEvents attributes of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `ce-id`: unique event id, a UUIDv7 for events Sluice creates.
    pub id: String,
    /// `ce-source`: who produced the event, e.g. `/sluice/orders`.
    pub source: String,
    /// `ce-type`: the fully-qualified protobuf name of the payload.
    pub event_type: String,
    /// `ce-subject`: the aggregate id (the ordering key), when there is one.
    pub subject: Option<String>,
    /// `ce-time`: when the event happened.
    pub time: OffsetDateTime,
    /// W3C traceparent of the producing operation.
    pub traceparent: Option<String>,
    /// W3C tracestate of the producing operation.
    pub tracestate: Option<String>,
    /// Id shared by every event one request caused.
    pub correlation_id: Option<String>,
    /// Id of the direct cause of this event.
    pub causation_id: Option<String>,
}

impl Envelope {
    /// A new envelope for an event of protobuf type `T` from `source`, with a
    /// fresh UUIDv7 id and the current time.
    pub fn new<T: prost::Name>(source: impl Into<String>) -> Self {
        Self::with_type(T::full_name(), source)
    }

    /// A new envelope for an event whose type name is only known at run time.
    pub fn with_type(event_type: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            id: Uuid::now_v7().to_string(),
            source: source.into(),
            event_type: event_type.into(),
            subject: None,
            time: OffsetDateTime::now_utc(),
            traceparent: None,
            tracestate: None,
            correlation_id: None,
            causation_id: None,
        }
    }

    /// Sets `ce-subject`, the aggregate id.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Writes the attributes as headers (neutral names).
    pub fn write_headers(&self, headers: &mut Headers) {
        headers.insert(CE_ID, self.id.clone());
        headers.insert(CE_SOURCE, self.source.clone());
        headers.insert(CE_TYPE, self.event_type.clone());
        headers.insert(CE_SPECVERSION, SPEC_VERSION);
        headers.insert(CONTENT_TYPE, PROTOBUF_CONTENT_TYPE);
        // Formatting a valid OffsetDateTime as RFC 3339 only fails for years
        // outside 0..=9999, which `now_utc` never produces.
        if let Ok(t) = self.time.format(&Rfc3339) {
            headers.insert(CE_TIME, t);
        }
        let optional = [
            (CE_SUBJECT, &self.subject),
            (TRACEPARENT, &self.traceparent),
            (TRACESTATE, &self.tracestate),
            (CORRELATION_ID, &self.correlation_id),
            (CAUSATION_ID, &self.causation_id),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                headers.insert(name, v.clone());
            }
        }
    }

    /// The attributes as a fresh header map.
    pub fn to_headers(&self) -> Headers {
        let mut h = Headers::new();
        self.write_headers(&mut h);
        h
    }

    /// Reads and validates the attributes from headers.
    ///
    /// # Errors
    /// A required attribute (`ce-id`, `ce-source`, `ce-type`, `ce-specversion`)
    /// is missing or empty, the spec version is not 1.0, the content type is
    /// not protobuf, or `ce-time` is not RFC 3339.
    pub fn from_headers(headers: &Headers) -> Result<Self, EnvelopeError> {
        let required = |name: &'static str| match headers.get(name) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err(EnvelopeError::MissingHeader(name)),
        };
        let id = required(CE_ID)?;
        let source = required(CE_SOURCE)?;
        let event_type = required(CE_TYPE)?;
        let spec = required(CE_SPECVERSION)?;
        if spec != SPEC_VERSION {
            return Err(EnvelopeError::InvalidHeader {
                name: CE_SPECVERSION,
                reason: format!("unsupported spec version {spec:?}"),
            });
        }
        if let Some(ct) = headers.get(CONTENT_TYPE)
            && ct != PROTOBUF_CONTENT_TYPE
        {
            return Err(EnvelopeError::InvalidHeader {
                name: CONTENT_TYPE,
                reason: format!("expected {PROTOBUF_CONTENT_TYPE}, got {ct:?}"),
            });
        }
        let time = match headers.get(CE_TIME) {
            Some(t) => {
                OffsetDateTime::parse(t, &Rfc3339).map_err(|e| EnvelopeError::InvalidHeader {
                    name: CE_TIME,
                    reason: e.to_string(),
                })?
            }
            None => OffsetDateTime::UNIX_EPOCH,
        };
        let opt = |name: &str| headers.get(name).map(str::to_owned);
        Ok(Self {
            id,
            source,
            event_type,
            subject: opt(CE_SUBJECT),
            time,
            traceparent: opt(TRACEPARENT),
            tracestate: opt(TRACESTATE),
            correlation_id: opt(CORRELATION_ID),
            causation_id: opt(CAUSATION_ID),
        })
    }
}

/// Encodes `event` with `envelope` into headers and a payload.
pub fn encode_event<T: prost::Message>(envelope: &Envelope, event: &T) -> (Headers, Bytes) {
    (envelope.to_headers(), Bytes::from(event.encode_to_vec()))
}

/// Validates the envelope in `headers` and decodes `payload` as `T`.
///
/// # Errors
/// The envelope is invalid, its `ce-type` is not `T`, or the payload does not
/// decode as `T`.
pub fn decode_event<T>(headers: &Headers, payload: &[u8]) -> Result<(Envelope, T), EnvelopeError>
where
    T: prost::Message + prost::Name + Default,
{
    let envelope = Envelope::from_headers(headers)?;
    let expected = T::full_name();
    if envelope.event_type != expected {
        return Err(EnvelopeError::UnexpectedType {
            expected,
            actual: envelope.event_type,
        });
    }
    let event = T::decode(payload).map_err(|e| EnvelopeError::Payload {
        event_type: expected,
        reason: e.to_string(),
    })?;
    Ok((envelope, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shop::orders::v1::OrderConfirmed;

    /// What the map must do, checked against a `BTreeMap` of lowercase
    /// names (what `Headers` was before it kept one buffer).
    #[test]
    fn headers_behave_as_a_sorted_map_of_lowercase_names() {
        use std::collections::BTreeMap;
        let mut h = Headers::new();
        let mut model = BTreeMap::new();
        let steps: &[(&str, Option<&str>)] = &[
            ("ce-type", Some("a.B")),
            ("CE-ID", Some("1")),
            ("traceparent", Some("00-x")),
            ("Ce-Id", Some("2")),
            ("ce-time", Some("")),
            ("traceparent", None),
            ("zzz", Some("é ü")),
            // The last name again: replaced, not appended.
            ("ZZZ", Some("again")),
            ("ce-type", Some("a.C, longer than before")),
            ("absent", None),
            ("a", Some("first")),
        ];
        for &(name, value) in steps {
            match value {
                Some(v) => {
                    h.insert(name, v);
                    model.insert(name.to_ascii_lowercase(), v.to_owned());
                }
                None => assert_eq!(
                    h.remove(name),
                    model.remove(&name.to_ascii_lowercase()),
                    "{name}"
                ),
            }
            let want: Vec<(&str, &str)> = model
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(h.iter().collect::<Vec<_>>(), want);
            assert_eq!(h.len(), model.len());
            for (k, v) in &model {
                assert_eq!(h.get(k), Some(v.as_str()));
                assert_eq!(h.get(&k.to_ascii_uppercase()), Some(v.as_str()));
            }
        }
        assert_eq!(h.get("traceparent"), None);
        assert_eq!(h.get("ce-"), None);
        // Equal when the headers are, whatever was replaced or removed on
        // the way (the buffer then holds more than they do).
        let fresh: Headers = model.iter().collect();
        assert_eq!(h, fresh);
        assert_eq!(format!("{h:?}"), format!("{model:?}"));
        let mut other = fresh.clone();
        other.insert("ce-id", "3");
        assert_ne!(h, other);
        assert_ne!(h, Headers::new());
        assert!(Headers::with_capacity(4, 64).is_empty());
    }

    #[test]
    fn a_sized_map_holds_what_inserting_one_by_one_gives() {
        let pairs = [("b", "2"), ("A", "1"), ("b", "3"), ("c", "")];
        let sized = Headers::sized_from(pairs.into_iter());
        assert_eq!(sized, pairs.into_iter().collect::<Headers>());
        assert_eq!(sized.get("b"), Some("3"));
        assert_eq!(sized.len(), 3);
    }

    #[test]
    fn an_envelope_survives_a_round_trip_through_headers() {
        let env = Envelope::new::<OrderConfirmed>("/sluice/orders")
            .subject("o-1")
            .correlation_id("c-1")
            .causation_id("x-1");
        let back = Envelope::from_headers(&env.to_headers()).expect("valid");
        // ce-time is written with full precision by RFC 3339.
        assert_eq!(back, env);
        assert_eq!(back.event_type, "shop.orders.v1.OrderConfirmed");
    }

    #[test]
    fn a_new_envelope_has_a_uuid_v7_id() {
        let env = Envelope::new::<OrderConfirmed>("/t");
        let id = Uuid::parse_str(&env.id).expect("uuid");
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn a_missing_required_header_is_named() {
        let mut h = Envelope::new::<OrderConfirmed>("/t").to_headers();
        h.remove(CE_TYPE);
        assert_eq!(
            Envelope::from_headers(&h),
            Err(EnvelopeError::MissingHeader(CE_TYPE))
        );
    }

    #[test]
    fn a_payload_that_does_not_decode_as_its_type_is_an_error() {
        let h = Envelope::new::<OrderConfirmed>("/t").to_headers();
        let err = decode_event::<OrderConfirmed>(&h, &[0xff, 0xff, 0xff]).expect_err("garbage");
        assert!(matches!(err, EnvelopeError::Payload { .. }), "{err}");
    }

    #[test]
    fn an_event_of_another_type_is_rejected() {
        use crate::shop::orders::v1::OrderCancelled;
        let (h, p) = encode_event(
            &Envelope::new::<OrderCancelled>("/t"),
            &OrderCancelled::default(),
        );
        let err = decode_event::<OrderConfirmed>(&h, &p).expect_err("wrong type");
        assert!(matches!(err, EnvelopeError::UnexpectedType { .. }));
    }
}
