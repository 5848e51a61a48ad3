//! The CloudEvents 1.0 envelope (binary content mode) and transport headers.
//!
//! Header names here are the transport-neutral ones used by the NATS
//! CloudEvents binding and the embedded log (`ce-id`, `ce-type`, …). Backends
//! whose binding names them differently (AMQP: `cloudEvents:id`) translate at
//! their edge, so code above the broker only ever sees these names.

use std::collections::BTreeMap;

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    /// An empty header map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` (lowercased) to `value`, replacing any previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let mut name = name.into();
        name.make_ascii_lowercase();
        self.0.insert(name, value.into());
    }

    /// The value of `name`, if present (names are case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.0.get(&name.to_ascii_lowercase()).map(String::as_str)
        } else {
            self.0.get(name).map(String::as_str)
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0.remove(&name.to_ascii_lowercase())
    }

    /// Iterates over `(name, value)` pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
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
