//! Publishing to JetStream: headers as they are, `Nats-Msg-Id` = `ce-id`.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};

use super::NatsBroker;
use crate::{BrokerError, OutboundMessage, PublishAck, dead_letter};

/// The NATS headers of a message, with `Nats-Msg-Id` for de-duplication.
pub(super) fn headers(message: &OutboundMessage) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in message.headers.iter() {
        h.insert(k, v);
    }
    if let Some(id) = dead_letter::dedup_key(&message.headers) {
        h.insert("Nats-Msg-Id", id);
    }
    h
}

async fn send(
    js: &jetstream::Context,
    message: OutboundMessage,
) -> Result<PublishAckFuture, BrokerError> {
    let h = headers(&message);
    let subject = message.subject;
    js.send_publish(
        subject.clone(),
        PublishMessage::build().payload(message.payload).headers(h),
    )
    .await
    .map_err(|e| BrokerError::Publish {
        subject,
        reason: e.to_string(),
    })
}

async fn confirm(subject: String, ack: PublishAckFuture) -> Result<PublishAck, BrokerError> {
    let ack = ack.await.map_err(|e| BrokerError::Publish {
        subject,
        reason: e.to_string(),
    })?;
    Ok(PublishAck {
        sequence: Some(ack.sequence),
        duplicate: ack.duplicate,
    })
}

/// Publishes one message and waits for its ack.
pub(super) async fn publish_one(
    js: &jetstream::Context,
    message: OutboundMessage,
) -> Result<PublishAck, BrokerError> {
    let subject = message.subject.clone();
    let ack = send(js, message).await?;
    confirm(subject, ack).await
}

/// Publishes in order with up to `publish_window` acks outstanding.
pub(super) async fn publish_batch(
    broker: &NatsBroker,
    messages: Vec<OutboundMessage>,
) -> Vec<Result<PublishAck, BrokerError>> {
    let js = &broker.js;
    crate::pipeline::publish_pipelined(
        messages,
        broker.options.publish_window,
        |key| async move { broker.ensure_stream_known(&key).await },
        |m| send(js, m),
        confirm,
    )
    .await
}
