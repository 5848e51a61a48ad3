//! The RabbitMQ backend (AMQP 0-9-1 through lapin).
//!
//! Topology, every name prefixed with the exchange name (so tests isolate
//! themselves with an exchange of their own):
//! - `<x>`: a durable topic exchange; the routing key is the subject, and
//!   NATS-style filters become binding keys (`*` → `*`, `>` → `#`);
//! - `<x>.stream.<key>`: a stream queue per stream key (the domain, or
//!   `dlq.<domain>`), bound `<key>.#`, holding everything for replay;
//! - `<x>.group.<key>.<group>`: a durable quorum queue per consumer group,
//!   with at-least-once dead-lettering (`x-overflow: reject-publish`) into
//!   `<x>.dlx.<key>` as a safety net; Sluice's own dead letters are explicit
//!   (published to `dlq.<subject>`, confirmed, then the original is acked);
//! - `<x>.retry.<key>.<group>`: where a nack with a delay waits (per-message
//!   TTL) before it is dead-lettered back into the group queue;
//! - `<x>.ready.<key>.<group>`: a one-message marker queue saying the group's
//!   initial replay is complete (see `consume.rs`);
//! - `<x>.rpc`: a topic exchange for requests; replies use direct reply-to.
//!
//! Publishing uses publisher confirms and `mandatory`; a returned message is
//! an error. The connection recovers by itself (lapin's auto-recovery):
//! channels, topology and consumers are re-established; acks of deliveries
//! from the lost channel are dropped (lapin refuses them), and those messages
//! are simply delivered again.
//!
//! Needs RabbitMQ 3.10 or newer (at-least-once dead-lettering, streams).

mod consume;
mod headers;
mod publish;
mod rpc;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::{
    Broker, BrokerError, BrokerKind, InboundMessage, OutboundMessage, PublishAck, Requests,
    StreamStats, SubscribeOptions, Subscription, subject,
};

/// How long `close` waits for acks still on their way to RabbitMQ.
const ACK_FLUSH: Duration = Duration::from_secs(5);

/// Options of the RabbitMQ backend.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// The topic exchange; also the prefix of every queue name.
    pub exchange: String,
    /// `x-expires` for queues this broker declares (tests: leftovers vanish).
    pub queue_expires: Option<Duration>,
    /// Most publishes awaiting their confirm at once in `publish_batch`.
    pub publish_window: usize,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            exchange: "sluice.events".into(),
            queue_expires: None,
            publish_window: 2048,
        }
    }
}

impl AmqpOptions {
    /// Options for a test: exchange `name`, queues that expire when unused.
    pub fn for_tests(name: &str) -> Self {
        Self {
            exchange: name.to_owned(),
            queue_expires: Some(Duration::from_secs(600)),
            ..Self::default()
        }
    }
}

/// The RabbitMQ broker.
pub struct AmqpBroker {
    inner: Arc<Inner>,
    rpc: rpc::Rpc,
}

impl std::ops::Deref for AmqpBroker {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// What the broker's consumers and ackers share.
pub struct Inner {
    conn: Connection,
    publisher: Channel,
    options: AmqpOptions,
    declared_streams: Mutex<HashSet<String>>,
    /// Every queue and exchange this instance declared (for `delete_topology`).
    declared: Mutex<HashSet<(bool, String)>>,
    dedup: Mutex<HashMap<String, Arc<Mutex<consume::RecentIds>>>>,
    /// Acks handed to lapin and not yet written: `close` waits for them.
    acks_in_flight: tokio::sync::watch::Sender<usize>,
    /// The subscriptions' open channels and their consumer tags:
    /// `close` cancels and closes them before the connection.
    consumer_channels: Mutex<HashMap<u64, (Channel, Vec<ShortString>)>>,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

pub(crate) fn backend(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Backend(e.to_string())
}

/// The binding key of a NATS-style filter.
pub(crate) fn binding_key(filter: &str) -> String {
    filter
        .split('.')
        .map(|t| if t == ">" { "#" } else { t })
        .collect::<Vec<_>>()
        .join(".")
}

/// Declares the durable topic exchange `name`.
pub(crate) async fn declare_topic_exchange(
    channel: &Channel,
    name: &str,
) -> Result<(), BrokerError> {
    channel
        .exchange_declare(
            ShortString::from(name),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| BrokerError::Backend(format!("declaring exchange {name}: {e}")))
}

pub(crate) fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

impl AmqpBroker {
    /// Connects to `url` (`amqp://user:pass@host:port/vhost`).
    ///
    /// # Errors
    /// The server cannot be reached or refuses the credentials.
    pub async fn connect(url: &str, options: AmqpOptions) -> Result<Self, BrokerError> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from("sluice"))
            .enable_auto_recover();
        let port = if url.starts_with("amqps://") {
            5671
        } else {
            5672
        };
        if !crate::connect::probe(url, port).await {
            return Err(BrokerError::Connection(format!(
                "no RabbitMQ server answers at {}",
                crate::redact_url(url)
            )));
        }
        let conn = tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, props))
            .await
            .map_err(|_| {
                BrokerError::Connection(format!(
                    "{}: no answer within 10 s",
                    crate::redact_url(url)
                ))
            })?
            .map_err(|e| BrokerError::Connection(format!("{}: {e}", crate::redact_url(url))))?;
        let publisher = conn.create_channel().await.map_err(backend)?;
        publisher
            .confirm_select(Default::default())
            .await
            .map_err(backend)?;
        declare_topic_exchange(&publisher, &options.exchange).await?;
        let rpc = rpc::Rpc::start(&conn, &options.exchange).await?;
        let broker = Self {
            inner: Arc::new(Inner {
                conn,
                publisher,
                declared_streams: Mutex::new(HashSet::new()),
                declared: Mutex::new(HashSet::new()),
                dedup: Mutex::new(HashMap::new()),
                acks_in_flight: tokio::sync::watch::Sender::new(0),
                consumer_channels: Mutex::new(HashMap::new()),
                options,
            }),
            rpc,
        };
        broker.remember(false, &broker.options.exchange.clone());
        broker.remember(false, &rpc::exchange_name(&broker.options.exchange));
        Ok(broker)
    }
}

impl Inner {
    fn remember(&self, queue: bool, name: &str) {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((queue, name.to_owned()));
    }

    pub(crate) fn name(&self, kind: &str, key: &str, group: Option<&str>) -> String {
        match group {
            Some(g) => format!("{}.{kind}.{key}.{g}", self.options.exchange),
            None => format!("{}.{kind}.{key}", self.options.exchange),
        }
    }

    /// Declares a durable queue (`kind` = quorum, stream or classic).
    pub(crate) async fn declare_queue(
        &self,
        channel: &Channel,
        name: &str,
        kind: &str,
        mut args: FieldTable,
    ) -> Result<lapin::Queue, BrokerError> {
        args.insert(ShortString::from("x-queue-type"), long(kind));
        if kind != "stream"
            && let Some(exp) = self.options.queue_expires
        {
            let ms = i64::try_from(exp.as_millis()).unwrap_or(i64::MAX);
            args.insert(ShortString::from("x-expires"), AMQPValue::LongLongInt(ms));
        }
        let queue = channel
            .queue_declare(
                ShortString::from(name),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map_err(|e| BrokerError::Backend(format!("declaring queue {name}: {e}")))?;
        self.remember(true, name);
        Ok(queue)
    }

    /// Binds `queue` to the events exchange with `key`.
    pub(crate) async fn bind(
        &self,
        channel: &Channel,
        queue: &str,
        key: &str,
    ) -> Result<(), BrokerError> {
        channel
            .queue_bind(
                ShortString::from(queue),
                ShortString::from(self.options.exchange.as_str()),
                ShortString::from(key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::Backend(format!("binding {queue} to {key}: {e}")))
    }

    /// Declares the stream queue of `key` unless already done.
    pub(crate) async fn ensure_stream(&self, key: &str) -> Result<(), BrokerError> {
        if self
            .declared_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
        {
            return Ok(());
        }
        let name = self.name("stream", key, None);
        self.declare_queue(&self.publisher, &name, "stream", FieldTable::default())
            .await?;
        self.bind(&self.publisher, &name, &format!("{key}.#"))
            .await?;
        self.declared_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned());
        Ok(())
    }

    /// Declares the classic marker queue `name` (at most one message) and
    /// says whether it holds a message. A marker is a message rather than
    /// the queue's existence because a passive declare of a missing queue
    /// closes the channel with an error.
    pub(crate) async fn marker_set(
        &self,
        channel: &Channel,
        name: &str,
    ) -> Result<bool, BrokerError> {
        let mut args = FieldTable::default();
        args.insert(ShortString::from("x-max-length"), AMQPValue::LongLongInt(1));
        let queue = self.declare_queue(channel, name, "classic", args).await?;
        Ok(queue.message_count() > 0)
    }

    /// The number of ready messages in queue `name`, `None` if it does not exist.
    pub(crate) async fn passive_count(&self, name: &str) -> Result<Option<u64>, BrokerError> {
        // A passive declare of a missing queue closes its channel: use a
        // channel of its own.
        let ch = self.conn.create_channel().await.map_err(backend)?;
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let r = ch
            .queue_declare(name.into(), options, Default::default())
            .await;
        let _ = ch.close(200, "count".into()).await;
        Ok(r.ok().map(|q| u64::from(q.message_count())))
    }

    /// Puts the message into marker queue `name` (declared by `marker_set`).
    pub(crate) async fn set_marker(&self, name: &str) -> Result<(), BrokerError> {
        let props = lapin::BasicProperties::default().with_delivery_mode(2);
        let confirm = publish::send_raw(self, "", name, b"ready", props).await?;
        publish::confirmed(name, confirm).await.map(|_| ())
    }

    pub(crate) async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        // Deleting a missing queue is not an error in RabbitMQ 3.x.
        let ch = self.conn.create_channel().await.map_err(backend)?;
        let r = ch
            .queue_delete(ShortString::from(name), QueueDeleteOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| BrokerError::Backend(format!("deleting queue {name}: {e}")));
        let _ = ch.close(200, ShortString::from("ok")).await;
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(true, name.to_owned()));
        r
    }

    /// Deletes every queue and exchange this broker instance declared.
    ///
    /// # Errors
    /// RabbitMQ refused a deletion.
    pub async fn delete_topology(&self) -> Result<(), BrokerError> {
        let all: Vec<(bool, String)> = self
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for (_, name) in all.iter().filter(|(q, _)| *q) {
            self.delete_queue(name).await?;
        }
        let ch = self.conn.create_channel().await.map_err(backend)?;
        for (_, name) in all.iter().filter(|(q, _)| !*q) {
            ch.exchange_delete(
                ShortString::from(name.as_str()),
                ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(|e| BrokerError::Backend(format!("deleting exchange {name}: {e}")))?;
        }
        let _ = ch.close(200, ShortString::from("ok")).await;
        self.declared_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    pub(crate) fn recent_ids(&self, queue: &str) -> Arc<Mutex<consume::RecentIds>> {
        self.dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(queue.to_owned())
            .or_default()
            .clone()
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    /// Ready messages of the group's queue (RabbitMQ does not report
    /// unacked ones over AMQP): a lower bound of the lag.
    async fn lag(&self, filter: &str, group: &str) -> Result<Option<u64>, BrokerError> {
        let key = subject::stream_key(filter);
        let Some(waiting) = self
            .inner
            .passive_count(&self.inner.name("group", key, Some(group)))
            .await?
        else {
            return Ok(None);
        };
        // A group still replaying the stream has no `ready` marker yet: what
        // it has left of the replay is not in its queue, so it counts as at
        // least one more (never 0 before the replay is done).
        let replayed = self
            .inner
            .passive_count(&self.inner.name("ready", key, Some(group)))
            .await?
            .is_some_and(|n| n > 0);
        Ok(Some(waiting + u64::from(!replayed)))
    }

    async fn stream_stats(&self, domain: &str) -> Result<Option<StreamStats>, BrokerError> {
        // RabbitMQ lists queues only through its management API: the groups
        // are not known here.
        let count = self
            .inner
            .passive_count(&self.inner.name("stream", domain, None))
            .await?;
        Ok(count.map(|messages| StreamStats {
            messages,
            last_sequence: None,
            groups: None,
        }))
    }

    async fn health(&self) -> Result<(), BrokerError> {
        if self.inner.conn.status().connected() {
            Ok(())
        } else {
            let status = self.inner.conn.status();
            let state = if status.closed() {
                "closed"
            } else if status.errored() {
                "failed"
            } else {
                "reconnecting"
            };
            Err(BrokerError::Connection(format!(
                "RabbitMQ connection is {state}"
            )))
        }
    }

    fn kind(&self) -> BrokerKind {
        BrokerKind::Amqp
    }

    async fn publish(&self, message: OutboundMessage) -> Result<PublishAck, BrokerError> {
        subject::validate_subject(&message.subject)?;
        self.ensure_stream(subject::stream_key(&message.subject))
            .await?;
        let confirm = publish::send(self, &message).await?;
        publish::confirmed(&message.subject, confirm).await
    }

    async fn publish_batch(
        &self,
        messages: Vec<OutboundMessage>,
    ) -> Vec<Result<PublishAck, BrokerError>> {
        publish::publish_batch(self, messages).await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, BrokerError> {
        options.validate()?;
        consume::subscribe(self.inner.clone(), options).await
    }

    async fn request(
        &self,
        message: OutboundMessage,
        timeout: Duration,
    ) -> Result<InboundMessage, BrokerError> {
        self.rpc.request(message, timeout).await
    }

    async fn serve(&self, subject: &str, group: &str) -> Result<Requests, BrokerError> {
        rpc::serve(self, subject, group).await
    }

    async fn delete_group(&self, filter: &str, group: &str) -> Result<(), BrokerError> {
        let key = subject::stream_key(filter);
        for kind in ["group", "retry", "ready"] {
            self.delete_queue(&self.name(kind, key, Some(group)))
                .await?;
        }
        // A group made again under this name (a rebuild from the beginning)
        // must see every id again, not have them dropped as duplicates.
        let queue = self.name("group", key, Some(group));
        self.dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&queue);
        Ok(())
    }

    async fn delete_domain(&self, domain: &str) -> Result<(), BrokerError> {
        for key in [domain.to_owned(), subject::dlq_subject(domain)] {
            self.delete_queue(&self.name("stream", &key, None)).await?;
            self.delete_queue(&self.name("dlx", &key, None)).await?;
            self.declared_streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        Ok(())
    }

    async fn close(&self) {
        if let Err(e) = self.publisher.wait_for_confirms().await {
            tracing::warn!(error = %e, "waiting for confirms on close failed");
        }
        // Closing the connection drops the acks lapin has not written yet:
        // their messages would come back to the group.
        let mut acks = self.inner.acks_in_flight.subscribe();
        let written = acks.wait_for(|n| *n == 0);
        if tokio::time::timeout(ACK_FLUSH, written).await.is_err() {
            tracing::warn!("closing with acks not yet written; they will be redelivered");
        }
        // RabbitMQ (3.10) drops the acks of a quorum queue's consumer that
        // it has read but not yet applied when the channel ends under the
        // consumer (the conformance suite lost a third of a member's last
        // 50 acks that way); a consumer's cancel-ok comes after them.
        let channels: Vec<(Channel, Vec<ShortString>)> = self
            .inner
            .consumer_channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        let closed = futures::future::join_all(channels.iter().map(|(ch, tags)| async move {
            for tag in tags {
                let _ = ch.basic_cancel(tag.clone(), Default::default()).await;
            }
            let _ = ch.close(200, ShortString::from("closing")).await;
        }));
        if tokio::time::timeout(ACK_FLUSH, closed).await.is_err() {
            tracing::warn!("consumers did not stop in time; their last acks may be redelivered");
        }
        let _ = self.conn.close(200, ShortString::from("bye")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_error_messages() {
        assert_eq!(
            crate::redact_url("amqp://guest:s3cret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(crate::redact_url("amqp://host:5672"), "amqp://host:5672");
    }

    #[test]
    fn nats_filters_become_binding_keys() {
        assert_eq!(binding_key("orders.>"), "orders.#");
        assert_eq!(binding_key("orders.*.placed"), "orders.*.placed");
    }
}
