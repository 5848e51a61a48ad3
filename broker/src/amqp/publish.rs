//! Confirmed, mandatory publishing to the events exchange.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};

use super::{Inner, headers};
use crate::{BrokerError, OutboundMessage, PublishAck};

/// Sends one message (without waiting for its confirm).
pub(super) async fn send(
    broker: &Inner,
    message: &OutboundMessage,
) -> Result<PublisherConfirm, BrokerError> {
    let props = headers::to_amqp(&message.headers, &[]);
    send_raw(
        broker,
        &broker.options.exchange,
        &message.subject,
        &message.payload,
        props,
    )
    .await
}

/// Sends a payload with `props` to `exchange` with `routing_key`.
pub(super) async fn send_raw(
    broker: &Inner,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    props: BasicProperties,
) -> Result<PublisherConfirm, BrokerError> {
    broker
        .publisher
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload,
            props,
        )
        .await
        .map_err(|e| BrokerError::Publish {
            subject: routing_key.to_owned(),
            reason: e.to_string(),
        })
}

/// Waits for a publisher confirm; a returned (unroutable) message is an error.
pub(super) async fn confirmed(
    subject: &str,
    confirm: PublisherConfirm,
) -> Result<PublishAck, BrokerError> {
    match confirm.await {
        Ok(Confirmation::Ack(None)) => Ok(PublishAck {
            sequence: None,
            duplicate: false,
        }),
        Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_))) => {
            Err(BrokerError::Unroutable(subject.to_owned()))
        }
        Ok(Confirmation::Nack(None)) => Err(BrokerError::Publish {
            subject: subject.to_owned(),
            reason: "nacked by RabbitMQ (queue full or unavailable)".into(),
        }),
        Ok(Confirmation::NotRequested) => Err(BrokerError::Publish {
            subject: subject.to_owned(),
            reason: "publisher confirms are not enabled".into(),
        }),
        Err(e) => Err(BrokerError::Publish {
            subject: subject.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Publishes in order with up to `publish_window` confirms outstanding.
pub(super) async fn publish_batch(
    broker: &Inner,
    messages: Vec<OutboundMessage>,
) -> Vec<Result<PublishAck, BrokerError>> {
    crate::pipeline::publish_pipelined(
        messages,
        broker.options.publish_window,
        |key| async move { broker.ensure_stream(&key).await },
        |m| async move { send(broker, &m).await },
        |subject, pending| async move { confirmed(&subject, pending).await },
    )
    .await
}
