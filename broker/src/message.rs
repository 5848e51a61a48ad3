//! Messages going out to and coming in from a broker.

use std::time::SystemTime;

use bytes::Bytes;
use sluice_proto::{Envelope, Headers, envelope::CE_ID};

/// A message to publish: a subject, transport headers and an opaque payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// The subject, e.g. `orders.order.placed`.
    pub subject: String,
    /// Headers with neutral names (`ce-id`, `traceparent`, …).
    pub headers: Headers,
    /// The payload (protobuf-encoded event for Sluice events).
    pub payload: Bytes,
}

impl OutboundMessage {
    /// A message with the given headers and payload.
    pub fn new(subject: impl Into<String>, headers: Headers, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            headers,
            payload: payload.into(),
        }
    }

    /// A Sluice event: `envelope` as headers and `event` protobuf-encoded.
    pub fn event<T: prost::Message>(
        subject: impl Into<String>,
        envelope: &Envelope,
        event: &T,
    ) -> Self {
        let (headers, payload) = sluice_proto::encode_event(envelope, event);
        Self::new(subject, headers, payload)
    }

    /// The `ce-id` header, used for de-duplication.
    pub fn id(&self) -> Option<&str> {
        self.headers.get(CE_ID)
    }
}

/// A message received from a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    /// The subject it was published on.
    pub subject: String,
    /// Headers with neutral names.
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
    /// Position in the domain's stream, where the backend knows it.
    pub sequence: Option<u64>,
    /// How many times this message has been delivered to this group (1 = first).
    pub delivered: u32,
    /// When the broker stored it, where the backend knows it.
    pub timestamp: Option<SystemTime>,
}

impl InboundMessage {
    /// The `ce-id` header.
    pub fn id(&self) -> Option<&str> {
        self.headers.get(CE_ID)
    }

    /// Validates the envelope and decodes the payload as `T`.
    ///
    /// # Errors
    /// The message is not a valid Sluice event of type `T`.
    pub fn decode<T>(&self) -> Result<(Envelope, T), sluice_proto::EnvelopeError>
    where
        T: prost::Message + prost::Name + Default,
    {
        sluice_proto::decode_event(&self.headers, &self.payload)
    }
}

/// The broker's confirmation of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    /// Position in the domain's stream, where the backend reports it.
    pub sequence: Option<u64>,
    /// True when a message with the same `ce-id` was already stored.
    pub duplicate: bool,
}
