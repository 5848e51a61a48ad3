//! The NATS JetStream backend.
//!
//! - One stream per stream key: the domain `orders` is stream `ORDERS` over
//!   `orders.>`; its dead letters `dlq.orders` are stream `DLQ~ORDERS` over
//!   `dlq.orders.>` (`~` cannot occur in a domain, so the names never clash).
//!   Streams are created on first use (file storage, default 2-minute
//!   duplicate window).
//! - Publish sets `Nats-Msg-Id` to the `ce-id`, so JetStream de-duplicates.
//! - A consumer group is a durable pull consumer named after the group, with
//!   explicit acks; max deliveries are enforced by [`crate::Subscription`]
//!   (JetStream only raises an advisory), which dead-letters by publishing to
//!   the dead-letter stream, confirmed, then terminating the original.
//! - Request/reply uses core NATS on `_sluice.req.<subject>`, outside every
//!   stream (a stream capturing a request would answer it with a PubAck).
//!
//! Needs NATS 2.10 or newer (multi-filter aware consumer API, `Nats-Msg-Id`
//! de-duplication, `ByStartTime`). async-nats reconnects by itself; the pump
//! re-creates its pull stream after errors and carries on from the consumer's
//! server-side position.

mod consume;
mod publish;
mod rpc;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;

use crate::{
    Broker, BrokerError, BrokerKind, InboundMessage, LogCursor, OutboundMessage, PublishAck,
    Requests, StartPosition, StreamStats, SubscribeOptions, Subscription, subject,
};

/// Options of the NATS backend.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Replicas of each stream (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// Most publishes awaiting their ack at once in `publish_batch`.
    pub publish_window: usize,
    /// Connection name shown by the server.
    pub name: String,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            replicas: 1,
            publish_window: 4096,
            name: "sluice".into(),
        }
    }
}

/// The NATS JetStream broker.
pub struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    streams: Mutex<HashSet<String>>,
    options: NatsOptions,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The JetStream stream name of a stream key.
pub fn stream_name(key: &str) -> String {
    key.to_uppercase().replace('.', "~")
}

/// The configuration of the stream of `key`: file storage over `<key>.>`.
pub(crate) fn stream_config(key: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: stream_name(key),
        subjects: vec![format!("{key}.>")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

pub(crate) fn backend(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Backend(e.to_string())
}

impl NatsBroker {
    /// Connects to `url` (comma-separated for a cluster).
    ///
    /// # Errors
    /// The server cannot be reached.
    pub async fn connect(url: &str, options: NatsOptions) -> Result<Self, BrokerError> {
        let client = async_nats::ConnectOptions::new()
            .name(&options.name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                tracing::info!(%event, "nats connection event");
            });
        // With retry_on_initial_connect the first connect does not fail, so
        // check reachability ourselves to give a clear error at once.
        let urls: Vec<&str> = url.split(',').map(str::trim).collect();
        let reachable =
            futures::future::join_all(urls.iter().map(|u| crate::connect::probe(u, 4222))).await;
        if !reachable.iter().any(|ok| *ok) {
            return Err(BrokerError::Connection(format!(
                "no NATS server answers at {url}"
            )));
        }
        let client = client
            .connect(url)
            .await
            .map_err(|e| BrokerError::Connection(format!("{url}: {e}")))?;
        let js = jetstream::new(client.clone());
        Ok(Self {
            client,
            js,
            streams: Mutex::new(HashSet::new()),
            options,
        })
    }

    /// Creates the stream of `key` unless this broker already did.
    pub(crate) async fn ensure_stream(&self, key: &str) -> Result<stream::Stream, BrokerError> {
        let name = stream_name(key);
        let known = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key);
        if known {
            return self.js.get_stream(&name).await.map_err(backend);
        }
        let s = self
            .js
            .get_or_create_stream(stream_config(key, self.options.replicas))
            .await
            .map_err(|e| BrokerError::Backend(format!("stream {name}: {e}")))?;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned());
        Ok(s)
    }

    /// Makes sure the stream of `key` exists, cheaply when already known.
    pub(crate) async fn ensure_stream_known(&self, key: &str) -> Result<(), BrokerError> {
        let known = self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key);
        if !known {
            self.ensure_stream(key).await?;
        }
        Ok(())
    }

    fn forget_stream(&self, key: &str) {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn lag(&self, filter: &str, group: &str) -> Result<Option<u64>, BrokerError> {
        let name = stream_name(subject::stream_key(filter));
        let stream = match self.js.get_stream(&name).await {
            Ok(s) => s,
            Err(_) => return Ok(None),
        };
        match stream.consumer_info(group).await {
            Ok(info) => Ok(Some(info.num_pending + info.num_ack_pending as u64)),
            Err(_) => Ok(None),
        }
    }

    async fn stream_stats(&self, domain: &str) -> Result<Option<StreamStats>, BrokerError> {
        use futures::TryStreamExt;
        let Ok(mut stream) = self.js.get_stream(stream_name(domain)).await else {
            return Ok(None);
        };
        let info = stream
            .info()
            .await
            .map_err(|e| BrokerError::Backend(e.to_string()))?;
        let (messages, last_sequence) = (info.state.messages, info.state.last_sequence);
        let groups: Vec<String> = stream
            .consumer_names()
            .try_collect()
            .await
            .map_err(|e| BrokerError::Backend(e.to_string()))?;
        Ok(Some(StreamStats {
            messages,
            last_sequence: Some(last_sequence),
            groups: Some(groups),
        }))
    }

    async fn health(&self) -> Result<(), BrokerError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(BrokerError::Connection(format!(
                "NATS connection is {state}"
            ))),
        }
    }

    fn kind(&self) -> BrokerKind {
        BrokerKind::Nats
    }

    async fn publish(&self, message: OutboundMessage) -> Result<PublishAck, BrokerError> {
        subject::validate_subject(&message.subject)?;
        self.ensure_stream_known(subject::stream_key(&message.subject))
            .await?;
        publish::publish_one(&self.js, message).await
    }

    async fn publish_batch(
        &self,
        messages: Vec<OutboundMessage>,
    ) -> Vec<Result<PublishAck, BrokerError>> {
        publish::publish_batch(self, messages).await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, BrokerError> {
        options.validate()?;
        let stream = self
            .ensure_stream(subject::stream_key(&options.filter))
            .await?;
        consume::subscribe(self.js.clone(), stream, options, self.options.replicas).await
    }

    async fn cursor(
        &self,
        filter: &str,
        start: StartPosition,
    ) -> Result<Option<Box<dyn LogCursor>>, BrokerError> {
        subject::validate_filter(filter)?;
        let stream = self.ensure_stream(subject::stream_key(filter)).await?;
        Ok(Some(Box::new(
            consume::Cursor::open(&stream, filter, start).await?,
        )))
    }

    async fn request(
        &self,
        message: OutboundMessage,
        timeout: Duration,
    ) -> Result<InboundMessage, BrokerError> {
        rpc::request(&self.client, message, timeout).await
    }

    async fn serve(&self, subject: &str, group: &str) -> Result<Requests, BrokerError> {
        rpc::serve(&self.client, subject, group).await
    }

    async fn delete_group(&self, filter: &str, group: &str) -> Result<(), BrokerError> {
        let name = stream_name(subject::stream_key(filter));
        match self.js.get_stream(&name).await {
            Ok(s) => match s.delete_consumer(group).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("not found") => Ok(()),
                Err(e) => Err(backend(e)),
            },
            Err(_) => Ok(()),
        }
    }

    async fn delete_domain(&self, domain: &str) -> Result<(), BrokerError> {
        for key in [domain.to_owned(), subject::dlq_subject(domain)] {
            self.forget_stream(&key);
            match self.js.delete_stream(stream_name(&key)).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(())
    }

    async fn close(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "nats flush on close failed");
        }
    }
}
