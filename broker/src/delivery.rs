//! Deliveries and the subscriptions that yield them; requests to answer.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sluice_proto::{Envelope, Headers, Registry};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{BrokerError, InboundMessage, OutboundMessage, dead_letter};

/// How a backend settles one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// The message was handled; do not deliver it again to this group.
    async fn ack(&self) -> Result<(), BrokerError>;
    /// The message could not be handled now; deliver it again after `delay`.
    async fn nack(&self, delay: Duration) -> Result<(), BrokerError>;
    /// Store `dead_letter` durably, then stop delivering the original.
    async fn dead_letter(&self, dead_letter: OutboundMessage) -> Result<(), BrokerError>;
}

/// One message delivered to a consumer group member, to be settled once.
pub struct Delivery {
    /// The message.
    pub message: InboundMessage,
    group: std::sync::Arc<str>,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery of `message` to `group`, settled through `acker`.
    pub fn new(message: InboundMessage, group: std::sync::Arc<str>, acker: Box<dyn Acker>) -> Self {
        Self {
            message,
            group,
            acker,
        }
    }

    /// The consumer group this was delivered to.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Acknowledges the message.
    ///
    /// # Errors
    /// The broker could not be told; the message will be delivered again.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.acker.ack().await
    }

    /// Asks for redelivery after `delay`.
    ///
    /// # Errors
    /// The broker could not be told; it redelivers after the ack wait instead.
    pub async fn nack(self, delay: Duration) -> Result<(), BrokerError> {
        self.acker.nack(delay).await
    }

    /// Publishes the message to its dead-letter subject with `reason`, then
    /// stops its redelivery.
    ///
    /// # Errors
    /// The dead letter was not confirmed; the original stays pending and is
    /// delivered again, so nothing is lost.
    pub async fn dead_letter(self, reason: &str) -> Result<(), BrokerError> {
        let dl = dead_letter::build(&self.message, &self.group, reason);
        tracing::warn!(
            subject = %self.message.subject,
            group = %self.group,
            deliveries = self.message.delivered,
            reason,
            "message dead-lettered"
        );
        self.acker.dead_letter(dl).await
    }

    /// Checks that the message is a valid Sluice event: a valid envelope and a
    /// payload that decodes as its `ce-type` (using the compiled descriptors).
    ///
    /// # Errors
    /// A one-line reason naming what is wrong.
    pub fn validate(&self) -> Result<Envelope, String> {
        let envelope = Envelope::from_headers(&self.message.headers).map_err(|e| e.to_string())?;
        let registry = Registry::global().map_err(|e| e.to_string())?;
        let desc = registry
            .message(&envelope.event_type)
            .map_err(|e| e.to_string())?;
        prost_reflect::DynamicMessage::decode(desc, self.message.payload.as_ref())
            .map_err(|e| format!("payload does not decode as {}: {e}", envelope.event_type))?;
        Ok(envelope)
    }
}

/// A member of a consumer group: yields deliveries until closed.
///
/// Deliveries past the group's `max_deliveries` never reach the caller: they
/// are dead-lettered with the reason `exceeded max deliveries (N)`.
pub struct Subscription {
    rx: mpsc::Receiver<Result<Delivery, BrokerError>>,
    returned: Returned,
    stop: watch::Sender<bool>,
    pump: Option<JoinHandle<()>>,
    max_deliveries: u32,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("max_deliveries", &self.max_deliveries)
            .finish_non_exhaustive()
    }
}

/// What a backend's pump task gets to feed a [`Subscription`].
#[derive(Debug)]
pub struct PumpHandle {
    /// Where deliveries go; `send` fails once the subscription is closing.
    pub tx: mpsc::Sender<Result<Delivery, BrokerError>>,
    /// Becomes `true` when the subscription is closing: stop fetching.
    pub stop: watch::Receiver<bool>,
    returned: Returned,
}

/// Deliveries a closing pump could not hand out, nacked after it stopped.
type Returned = std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>;

impl PumpHandle {
    /// Hands a delivery to the subscriber. When the subscription is closing
    /// or gone, the delivery is handed back (see [`PumpHandle::hand_back`])
    /// and `false` is returned: stop pumping.
    pub async fn deliver(&self, delivery: Delivery) -> bool {
        match self.tx.send(Ok(delivery)).await {
            Ok(()) => true,
            Err(mpsc::error::SendError(item)) => {
                if let Ok(d) = item {
                    self.hand_back(d);
                }
                false
            }
        }
    }

    /// Gives back a delivery fetched but not handed out. Once the pump has
    /// stopped (and so stopped fetching), `Subscription::close` nacks it for
    /// immediate redelivery, after the deliveries buffered before it, so a
    /// later subscriber sees them in their original order.
    pub fn hand_back(&self, delivery: Delivery) {
        self.returned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(delivery);
    }
}

impl Subscription {
    /// Builds a subscription whose deliveries come from a pump task made by
    /// `spawn_pump`; `buffer` bounds deliveries waiting for the caller.
    pub fn spawn<F>(buffer: usize, max_deliveries: u32, spawn_pump: F) -> Self
    where
        F: FnOnce(PumpHandle) -> JoinHandle<()>,
    {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let returned = Returned::default();
        let pump = spawn_pump(PumpHandle {
            tx,
            stop: stop_rx,
            returned: returned.clone(),
        });
        Self {
            rx,
            returned,
            stop,
            pump: Some(pump),
            max_deliveries,
        }
    }

    /// The next delivery; `None` once the subscription is closed.
    ///
    /// # Errors
    /// A backend error the pump could not recover from by itself (it keeps
    /// trying; the caller may continue calling `next`).
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        loop {
            let item = self.rx.recv().await?;
            match item {
                Ok(d) if d.message.delivered > self.max_deliveries => {
                    let reason = format!("exceeded max deliveries ({})", self.max_deliveries);
                    if let Err(e) = d.dead_letter(&reason).await {
                        tracing::error!(error = %e, "could not dead-letter; it will be redelivered");
                    }
                }
                other => return Some(other),
            }
        }
    }

    /// The next delivery that is a valid Sluice event; invalid ones (missing
    /// `ce-*` headers, a payload that does not decode as its `ce-type`) are
    /// dead-lettered with the reason and skipped.
    ///
    /// # Errors
    /// As [`Subscription::next`].
    pub async fn next_valid(&mut self) -> Option<Result<(Envelope, Delivery), BrokerError>> {
        loop {
            match self.next().await? {
                Ok(d) => match d.validate() {
                    Ok(env) => return Some(Ok((env, d))),
                    Err(reason) => {
                        if let Err(e) = d.dead_letter(&reason).await {
                            tracing::error!(error = %e, "could not dead-letter; it will be redelivered");
                        }
                    }
                },
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Stops fetching, hands back deliveries not yet taken (redelivered at
    /// once to other members), and waits for the backend to let go.
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        // Refuse further deliveries and wait until the pump stopped fetching,
        // so nothing handed back below is delivered to this member again.
        self.rx.close();
        let mut buffered = Vec::new();
        while let Some(item) = self.rx.recv().await {
            buffered.extend(item.ok());
        }
        if let Some(pump) = self.pump.take() {
            let _ = pump.await;
        }
        let returned =
            std::mem::take(&mut *self.returned.lock().unwrap_or_else(|p| p.into_inner()));
        // The earliest first, so a later subscriber sees them in order.
        for d in buffered.into_iter().chain(returned) {
            let _ = d.nack(Duration::ZERO).await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// How a backend answers one request.
#[async_trait]
pub trait Responder: Send + Sync {
    /// Sends the reply.
    async fn respond(&self, headers: Headers, payload: Bytes) -> Result<(), BrokerError>;
}

/// A request received by [`crate::Broker::serve`].
pub struct Request {
    /// The request message.
    pub message: InboundMessage,
    responder: Box<dyn Responder>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A request answered through `responder`.
    pub fn new(message: InboundMessage, responder: Box<dyn Responder>) -> Self {
        Self { message, responder }
    }

    /// Sends the reply.
    ///
    /// # Errors
    /// The reply could not be sent (the requester may have gone).
    pub async fn respond(
        self,
        headers: Headers,
        payload: impl Into<Bytes>,
    ) -> Result<(), BrokerError> {
        self.responder.respond(headers, payload.into()).await
    }
}

/// A stream of requests to answer, from [`crate::Broker::serve`].
pub struct Requests {
    rx: mpsc::Receiver<Request>,
    stop: watch::Sender<bool>,
    pump: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests").finish_non_exhaustive()
    }
}

/// What a backend's request pump gets.
#[derive(Debug)]
pub struct RequestPump {
    /// Where requests go.
    pub tx: mpsc::Sender<Request>,
    /// Becomes `true` when serving stops.
    pub stop: watch::Receiver<bool>,
}

impl Requests {
    /// Builds a request stream fed by a pump task made by `spawn_pump`.
    pub fn spawn<F>(spawn_pump: F) -> Self
    where
        F: FnOnce(RequestPump) -> JoinHandle<()>,
    {
        let (tx, rx) = mpsc::channel(64);
        let (stop, stop_rx) = watch::channel(false);
        let pump = spawn_pump(RequestPump { tx, stop: stop_rx });
        Self {
            rx,
            stop,
            pump: Some(pump),
        }
    }

    /// The next request; `None` once closed.
    pub async fn next(&mut self) -> Option<Request> {
        self.rx.recv().await
    }

    /// Stops serving.
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        if let Some(pump) = self.pump.take() {
            let _ = pump.await;
        }
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
