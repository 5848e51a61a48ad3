//! The [`Broker`] trait: the small, stable centre every backend implements.

use std::time::Duration;

use async_trait::async_trait;

use crate::{
    BrokerError, InboundMessage, OutboundMessage, PublishAck, Requests, StartPosition,
    SubscribeOptions, Subscription,
};

/// Which backend a broker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrokerKind {
    /// The embedded SQLite log.
    Embedded,
    /// NATS JetStream.
    Nats,
    /// RabbitMQ over AMQP 0-9-1.
    Amqp,
}

impl std::fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BrokerKind::Embedded => "embedded",
            BrokerKind::Nats => "nats",
            BrokerKind::Amqp => "amqp",
        })
    }
}

/// What a domain's stream holds (`sluice stats`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// Messages stored now.
    pub messages: u64,
    /// The sequence of the last message stored, where the backend has one.
    pub last_sequence: Option<u64>,
    /// The consumer groups on the stream, where the backend can list them.
    pub groups: Option<Vec<String>>,
}

/// A message broker with durable, at-least-once delivery.
///
/// Semantics every backend keeps (checked by the conformance suite in
/// `broker/tests/conformance.rs`):
/// - `publish` returns only after the broker durably accepted the message;
///   a message whose `ce-id` was already accepted is reported as a duplicate
///   and stored once.
/// - A consumer *group* is durable: it is created by the first `subscribe`
///   with its start position, and later subscribes resume after the last
///   acked message. Subscribers of one group share its messages; every group
///   receives every matching message.
/// - Deliveries are acked, nacked with a redelivery delay, or dead-lettered
///   with a reason. Unacked deliveries come back after `ack_wait`. A message
///   delivered more than `max_deliveries` times is dead-lettered.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Which backend this is.
    fn kind(&self) -> BrokerKind;

    /// Publishes one message and waits until the broker durably accepted it.
    ///
    /// # Errors
    /// The broker refused or did not confirm the message, the message was
    /// unroutable, or the connection failed.
    async fn publish(&self, message: OutboundMessage) -> Result<PublishAck, BrokerError>;

    /// Publishes many messages with their acknowledgements pipelined, in order.
    ///
    /// Returns one result per message, so a caller knows exactly which were
    /// accepted when some were not.
    async fn publish_batch(
        &self,
        messages: Vec<OutboundMessage>,
    ) -> Vec<Result<PublishAck, BrokerError>>;

    /// Joins (creating if needed) a durable consumer group.
    ///
    /// # Errors
    /// Invalid options, or the broker could not create the consumer.
    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, BrokerError>;

    /// Sends a request on `subject` and waits up to `timeout` for one reply.
    ///
    /// Requests are not stored: they reach only responders serving now.
    ///
    /// # Errors
    /// [`BrokerError::Timeout`] when no reply came in time,
    /// [`BrokerError::NoResponders`] when the backend knows nobody listens.
    async fn request(
        &self,
        message: OutboundMessage,
        timeout: Duration,
    ) -> Result<InboundMessage, BrokerError>;

    /// Serves requests matching `subject` (a filter); responders sharing a
    /// `group` split the requests between them.
    ///
    /// # Errors
    /// The broker could not set up the listener.
    async fn serve(&self, subject: &str, group: &str) -> Result<Requests, BrokerError>;

    /// Opens a cursor over what `filter` holds from `start`, in stream
    /// order, outside any consumer group: nothing is acked, redelivered or
    /// recorded on the broker. `None` where the backend has no such read;
    /// then read through a consumer group (as [`crate::scan::scan`] does).
    ///
    /// # Errors
    /// A malformed filter, or the broker could not be asked.
    async fn cursor(
        &self,
        filter: &str,
        start: StartPosition,
    ) -> Result<Option<Box<dyn LogCursor>>, BrokerError> {
        let _ = start;
        crate::subject::validate_filter(filter)?;
        Ok(None)
    }

    /// Deletes a consumer group and its pending messages.
    ///
    /// # Errors
    /// The broker refused.
    async fn delete_group(&self, filter: &str, group: &str) -> Result<(), BrokerError>;

    /// Deletes a domain's stream and its dead letters (tests and operators).
    ///
    /// # Errors
    /// The broker refused.
    async fn delete_domain(&self, domain: &str) -> Result<(), BrokerError>;

    /// How many messages consumer group `group` on `filter` has not acked
    /// yet (waiting and in flight), or `None` when the backend cannot tell
    /// (e.g. the group is unknown here).
    ///
    /// # Errors
    /// The broker could not be asked.
    async fn lag(&self, filter: &str, group: &str) -> Result<Option<u64>, BrokerError> {
        let _ = (filter, group);
        Ok(None)
    }

    /// What `domain`'s stream (a stream key: `orders`, `dlq.orders`) holds
    /// now, or `None` when the backend cannot tell.
    ///
    /// # Errors
    /// The broker could not be asked.
    async fn stream_stats(&self, domain: &str) -> Result<Option<StreamStats>, BrokerError> {
        let _ = domain;
        Ok(None)
    }

    /// Whether the connection to the broker is up now (readiness probes).
    ///
    /// # Errors
    /// [`BrokerError::Connection`] saying what state the connection is in.
    async fn health(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Flushes and closes connections; later calls fail.
    async fn close(&self);
}

/// A reading position in a stream, outside any consumer group
/// ([`Broker::cursor`]).
#[async_trait]
pub trait LogCursor: Send {
    /// Up to `max` messages matching the cursor's filter after the last one
    /// returned, of what the stream holds now, in stream order; empty when
    /// it holds no more now.
    ///
    /// # Errors
    /// The broker could not be read.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<InboundMessage>, BrokerError>;

    /// Whether the stream keeps each message id (`ce-id`) once for good, so
    /// the cursor never returns an id twice. `false` where de-duplication
    /// has a window (NATS) or none.
    fn unique_ids(&self) -> bool {
        false
    }
}

/// The capacity a cursor's page starts with for `max` messages: sized once
/// rather than grown by doubling (each growth a copy, and for a large page
/// fresh memory the kernel zeroes), up to a bound.
pub(crate) fn page_capacity(max: usize) -> usize {
    max.min(16_384)
}
