//! The Broker abstraction: durable publish, consumer groups, dead letters and
//! request/reply, with the same semantics on three backends.
//!
//! - [`embedded`]: a durable local log in one SQLite file (no server);
//! - [`nats`]: NATS JetStream, one stream per domain, durable pull consumers;
//! - [`amqp`]: RabbitMQ, a topic exchange, one quorum queue per consumer group
//!   and a stream queue per domain for replay.
//!
//! Services are written against [`Broker`] (usually as `Arc<dyn Broker>`,
//! obtained from [`connect`]) and never know which backend runs underneath.
//! Subjects are dot-separated (`orders.order.placed`); the first token is the
//! domain, which maps to one stream. Filters use NATS wildcards (`*` one token,
//! `>` the rest). Messages that fail too often, or that a consumer rejects, go
//! to the dead-letter subject `dlq.<original subject>` with the reason in
//! `sluice-dlq-*` headers ([`dead_letter`]).

mod broker;
mod connect;
pub mod dead_letter;
mod delivery;
mod error;
mod message;
mod options;
#[cfg(any(feature = "nats", feature = "amqp"))]
mod pipeline;
pub mod scan;
pub mod subject;
pub mod testing;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "embedded")]
pub mod embedded;
#[cfg(feature = "nats")]
pub mod nats;

pub use broker::{Broker, BrokerKind, LogCursor, StreamStats};
pub use connect::{BrokerUrl, connect, redact_url};
pub use delivery::{
    Acker, Delivery, PumpHandle, Request, RequestPump, Requests, Responder, Subscription,
};
pub use error::BrokerError;
pub use message::{InboundMessage, OutboundMessage, PublishAck};
pub use options::{StartPosition, SubscribeOptions};
pub use sluice_proto::Headers;
