//! Publishing to JetStream: headers as they are, `Nats-Msg-Id` = `ce-id`.

use std::collections::VecDeque;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};

use super::{NatsBroker, backend};
use crate::{BrokerError, OutboundMessage, PublishAck, dead_letter, subject};

/// The NATS headers of a message, with `Nats-Msg-Id` for de-duplication.
pub(super) fn headers(message: &OutboundMessage) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in message.headers.iter() {
        h.insert(k, v);
    }
    let id = if message.headers.get(dead_letter::GROUP).is_some() {
        dead_letter::dedup_id(message)
    } else {
        message.id().map(str::to_owned)
    };
    if let Some(id) = id {
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
    let mut results: Vec<Option<Result<PublishAck, BrokerError>>> =
        (0..messages.len()).map(|_| None).collect();
    // Streams first, so no publish fails for want of one.
    let mut keys: Vec<&str> = messages
        .iter()
        .filter(|m| subject::validate_subject(&m.subject).is_ok())
        .map(|m| subject::stream_key(&m.subject))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let mut stream_errors = Vec::new();
    for key in keys {
        if let Err(e) = broker.ensure_stream_known(key).await {
            stream_errors.push((key.to_owned(), e.to_string()));
        }
    }
    let mut in_flight: VecDeque<(usize, String, PublishAckFuture)> = VecDeque::new();
    let window = broker.options.publish_window.max(1);
    for (i, m) in messages.into_iter().enumerate() {
        if let Err(e) = subject::validate_subject(&m.subject) {
            results[i] = Some(Err(e));
            continue;
        }
        let key = subject::stream_key(&m.subject);
        if let Some((_, reason)) = stream_errors.iter().find(|(k, _)| k == key) {
            results[i] = Some(Err(BrokerError::Publish {
                subject: m.subject.clone(),
                reason: reason.clone(),
            }));
            continue;
        }
        while in_flight.len() >= window {
            if let Some((j, s, ack)) = in_flight.pop_front() {
                results[j] = Some(confirm(s, ack).await);
            }
        }
        let subject = m.subject.clone();
        match send(&broker.js, m).await {
            Ok(ack) => in_flight.push_back((i, subject, ack)),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    for (j, s, ack) in in_flight {
        results[j] = Some(confirm(s, ack).await);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(backend("publish result missing"))))
        .collect()
}
