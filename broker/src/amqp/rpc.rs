//! Request/reply over RabbitMQ: requests go through a topic exchange of their
//! own (never into a domain stream), replies come back by direct reply-to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection};
use sluice_proto::Headers;
use tokio::sync::oneshot;

use super::{AmqpBroker, backend, binding_key, headers};
use crate::delivery::RequestPump;
use crate::{BrokerError, InboundMessage, OutboundMessage, Request, Requests, Responder, subject};

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The requests exchange of the events exchange `prefix`.
pub(super) fn exchange_name(prefix: &str) -> String {
    format!("{prefix}.rpc")
}

type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<InboundMessage>>>>;

/// The requesting side: one channel consuming direct replies.
pub(super) struct Rpc {
    channel: Channel,
    exchange: String,
    waiting: Waiting,
}

fn inbound(subject: &str, d: &lapin::message::Delivery) -> InboundMessage {
    InboundMessage {
        subject: subject.to_owned(),
        headers: headers::from_amqp(&d.properties),
        payload: Bytes::from(d.data.clone()),
        sequence: None,
        delivered: 1,
        timestamp: Some(std::time::SystemTime::now()),
    }
}

impl Rpc {
    /// Declares the requests exchange and starts listening for replies.
    pub(super) async fn start(conn: &Connection, prefix: &str) -> Result<Self, BrokerError> {
        let channel = conn.create_channel().await.map_err(backend)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(backend)?;
        let exchange = exchange_name(prefix);
        super::declare_topic_exchange(&channel, &exchange).await?;
        let mut replies = channel
            .basic_consume(
                ShortString::from(REPLY_TO),
                ShortString::from("sluice-replies"),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(backend)?;
        let waiting = Waiting::default();
        let w = waiting.clone();
        tokio::spawn(async move {
            while let Some(d) = replies.next().await {
                let Ok(d) = d else { continue };
                let Some(corr) = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_owned())
                else {
                    continue;
                };
                if let Some(tx) = w.lock().unwrap_or_else(|p| p.into_inner()).remove(&corr) {
                    let _ = tx.send(inbound("", &d));
                }
            }
        });
        Ok(Self {
            channel,
            exchange,
            waiting,
        })
    }

    /// Sends a request and waits up to `timeout` for its reply.
    pub(super) async fn request(
        &self,
        message: OutboundMessage,
        timeout: Duration,
    ) -> Result<InboundMessage, BrokerError> {
        subject::validate_subject(&message.subject)?;
        let corr = uuid::Uuid::now_v7().to_string();
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(corr.clone(), tx);
        let props = headers::to_amqp(&message.headers, &[])
            .with_correlation_id(ShortString::from(corr.as_str()))
            .with_reply_to(ShortString::from(REPLY_TO))
            .with_delivery_mode(1);
        let sent = async {
            let confirm = self
                .channel
                .basic_publish(
                    ShortString::from(self.exchange.as_str()),
                    ShortString::from(message.subject.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &message.payload,
                    props,
                )
                .await
                .map_err(backend)?;
            match confirm.await.map_err(backend)? {
                Confirmation::Ack(None) => Ok(()),
                _ => Err(BrokerError::NoResponders(message.subject.clone())),
            }
        }
        .await;
        let result = match sent {
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(InboundMessage {
                    subject: message.subject.clone(),
                    ..reply
                }),
                Ok(Err(_)) => Err(BrokerError::Closed),
                Err(_) => Err(BrokerError::Timeout(timeout)),
            },
            Err(e) => Err(e),
        };
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&corr);
        result
    }
}

struct ReplyTo {
    channel: Channel,
    reply_to: String,
    correlation_id: String,
}

#[async_trait]
impl Responder for ReplyTo {
    async fn respond(&self, headers: Headers, payload: Bytes) -> Result<(), BrokerError> {
        let props = headers::to_amqp(&headers, &[])
            .with_correlation_id(ShortString::from(self.correlation_id.as_str()))
            .with_delivery_mode(1);
        self.channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(self.reply_to.as_str()),
                BasicPublishOptions::default(),
                &payload,
                props,
            )
            .await
            .map(|_| ())
            .map_err(backend)
    }
}

/// Serves requests matching `filter`; responders of one `group` share a queue.
pub(super) async fn serve(
    broker: &AmqpBroker,
    filter: &str,
    group: &str,
) -> Result<Requests, BrokerError> {
    subject::validate_filter(filter).or_else(|_| subject::validate_subject(filter))?;
    subject::validate_group(group)?;
    let channel = broker.conn.create_channel().await.map_err(backend)?;
    let exchange = exchange_name(&broker.options.exchange);
    let queue = format!("{exchange}.{group}.{filter}");
    channel
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(backend)?;
    channel
        .queue_bind(
            ShortString::from(queue.as_str()),
            ShortString::from(exchange.as_str()),
            ShortString::from(binding_key(filter)),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(backend)?;
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from(format!("responder-{}", uuid::Uuid::now_v7())),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(backend)?;
    Ok(Requests::spawn(move |pump: RequestPump| {
        tokio::spawn(async move {
            let mut stop = pump.stop;
            loop {
                let d = tokio::select! {
                    d = consumer.next() => d,
                    _ = stop.wait_for(|s| *s) => None,
                };
                let Some(d) = d else { break };
                let Ok(d) = d else { continue };
                let (Some(reply_to), Some(corr)) = (
                    d.properties.reply_to().clone(),
                    d.properties.correlation_id().clone(),
                ) else {
                    continue;
                };
                let request = Request::new(
                    inbound(d.routing_key.as_str(), &d),
                    Box::new(ReplyTo {
                        channel: channel.clone(),
                        reply_to: reply_to.as_str().to_owned(),
                        correlation_id: corr.as_str().to_owned(),
                    }),
                );
                if pump.tx.send(request).await.is_err() {
                    break;
                }
            }
            let _ = channel.close(200, ShortString::from("done")).await;
        })
    }))
}
