//! What a handler receives: its context (the transaction, the event's
//! envelope, the service state and, for reactors, the outbox) and the typed
//! event; and the type-erased form the consumer runtime calls.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use sea_orm::DatabaseTransaction;
use sluice_broker::{InboundMessage, OutboundMessage};
use sluice_proto::Envelope;

use crate::retry::HandlerError;

/// A boxed, sendable future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What every handler context holds.
pub(crate) struct JobCtx<S> {
    pub(crate) txn: Arc<DatabaseTransaction>,
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) subject: Arc<str>,
    pub(crate) sequence: Option<u64>,
    pub(crate) delivered: u32,
    pub(crate) state: Arc<S>,
    pub(crate) source: Arc<str>,
    pub(crate) emitted: Arc<Mutex<Vec<OutboundMessage>>>,
}

impl<S> Clone for JobCtx<S> {
    fn clone(&self) -> Self {
        Self {
            txn: self.txn.clone(),
            envelope: self.envelope.clone(),
            subject: self.subject.clone(),
            sequence: self.sequence,
            delivered: self.delivered,
            state: self.state.clone(),
            source: self.source.clone(),
            emitted: self.emitted.clone(),
        }
    }
}

/// A context type the runtime can build for a handler.
pub(crate) trait FromJob<S>: Send + 'static {
    fn from_job(job: JobCtx<S>) -> Self;
}

macro_rules! common_accessors {
    () => {
        /// The database transaction the event is handled in; it commits
        /// (with the inbox entry) only if the handler succeeds.
        pub fn db(&self) -> &sea_orm::DatabaseTransaction {
            &self.0.txn
        }

        /// The event's CloudEvents attributes.
        pub fn envelope(&self) -> &Envelope {
            &self.0.envelope
        }

        /// The subject the event was published on.
        pub fn subject(&self) -> &str {
            &self.0.subject
        }

        /// The event's position in its stream, where the backend has one.
        pub fn sequence(&self) -> Option<u64> {
            self.0.sequence
        }

        /// How many times this event has been delivered (1 = first).
        pub fn delivered(&self) -> u32 {
            self.0.delivered
        }

        /// The service's state, shared by all its handlers.
        pub fn state(&self) -> &S {
            &self.0.state
        }
    };
}

/// The context of a reactor's handler: it may change the service's tables
/// and emit events, which go to the outbox in the same transaction.
pub struct Ctx<S>(JobCtx<S>);

impl<S> std::fmt::Debug for Ctx<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("event", &self.0.envelope.id)
            .field("subject", &self.0.subject)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static> FromJob<S> for Ctx<S> {
    fn from_job(job: JobCtx<S>) -> Self {
        Self(job)
    }
}

impl<S> Ctx<S> {
    common_accessors!();

    /// Emits `event` on `subject` about aggregate `key` (its `ce-subject`,
    /// the ordering key of its consumers). It is written to the outbox when
    /// the handler's transaction commits, and carries the consumed event's
    /// correlation id and the consumed event's id as causation id. Returns
    /// the new event's id.
    pub fn emit<T>(&self, subject: &str, key: &str, event: &T) -> String
    where
        T: prost::Message + prost::Name,
    {
        let envelope = caused_by(
            Envelope::new::<T>(&*self.0.source).subject(key),
            &self.0.envelope,
        );
        let id = envelope.id.clone();
        let mut message = OutboundMessage::event(subject, &envelope, event);
        crate::trace::produce_event(&mut message, &envelope);
        self.push(message);
        id
    }

    /// Emits a prepared message as it is (headers and all).
    pub fn emit_message(&self, mut message: OutboundMessage) {
        crate::trace::produce(&mut message);
        self.push(message);
    }

    /// Queues `message` for the outbox.
    fn push(&self, message: OutboundMessage) {
        self.0
            .emitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message);
    }
}

/// Sets the correlation and causation ids of `envelope`, an event caused by
/// the event `cause`, and carries on `cause`'s trace context (replaced by
/// the current span's when spans are traced).
pub fn caused_by(envelope: Envelope, cause: &Envelope) -> Envelope {
    let correlation = cause
        .correlation_id
        .clone()
        .unwrap_or_else(|| cause.id.clone());
    let mut envelope = envelope
        .correlation_id(correlation)
        .causation_id(cause.id.clone());
    envelope.traceparent.clone_from(&cause.traceparent);
    envelope.tracestate.clone_from(&cause.tracestate);
    envelope
}

/// The context of a projection's handler: it may only write the
/// projection's own tables (its checkpoint is kept by the kit). It has no
/// way to emit events or reach the broker, so replaying a projection from the
/// beginning of the log causes no side effects.
pub struct ProjectionCtx<S>(JobCtx<S>);

impl<S> std::fmt::Debug for ProjectionCtx<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionCtx")
            .field("event", &self.0.envelope.id)
            .field("subject", &self.0.subject)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync + 'static> FromJob<S> for ProjectionCtx<S> {
    fn from_job(job: JobCtx<S>) -> Self {
        Self(job)
    }
}

impl<S> ProjectionCtx<S> {
    common_accessors!();
}

/// One event of a batch, with its envelope.
#[derive(Debug, Clone)]
pub struct Item<T> {
    /// The event's CloudEvents attributes.
    pub envelope: Arc<Envelope>,
    /// The subject it was published on.
    pub subject: Arc<str>,
    /// The decoded event.
    pub event: T,
}

/// Which events of a batch failed; the others commit.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub(crate) failed: Vec<(usize, HandlerError)>,
}

impl BatchOutcome {
    /// Every event succeeded.
    pub fn ok() -> Self {
        Self::default()
    }

    /// The event at `index` failed with `error`: none of the handler's writes
    /// for it may be in the transaction. A permanent error dead-letters it,
    /// a transient one retries it.
    #[must_use]
    pub fn fail(mut self, index: usize, error: HandlerError) -> Self {
        self.failed.push((index, error));
        self
    }
}

/// A handler of one event type, erased for the runtime.
pub(crate) trait Single<C>: Send + Sync {
    /// Decodes the payload and starts the handler.
    fn start(
        &self,
        ctx: C,
        message: &InboundMessage,
    ) -> Result<BoxFuture<Result<(), HandlerError>>, HandlerError>;
}

/// A batch handler, erased for the runtime.
pub(crate) trait Batch<C>: Send + Sync {
    /// Decodes one payload (`Err`: poison, dead-letter it).
    fn decode(
        &self,
        envelope: &Arc<Envelope>,
        message: &InboundMessage,
    ) -> Result<Box<dyn std::any::Any + Send>, HandlerError>;
    /// Starts the handler on decoded items.
    fn start(
        &self,
        ctx: C,
        items: Vec<Box<dyn std::any::Any + Send>>,
    ) -> BoxFuture<Result<BatchOutcome, HandlerError>>;
}

/// Decodes `message` as `T`, checking its `ce-type`.
pub(crate) fn decode<T>(message: &InboundMessage) -> Result<T, HandlerError>
where
    T: prost::Message + prost::Name + Default,
{
    let expected = T::full_name();
    match message.headers.get(sluice_proto::envelope::CE_TYPE) {
        Some(t) if t == expected => {}
        other => {
            return Err(HandlerError::Permanent(format!(
                "unexpected ce-type {}, this handler takes {expected}",
                other.unwrap_or("(none)")
            )));
        }
    }
    T::decode(message.payload.as_ref())
        .map_err(|e| HandlerError::Permanent(format!("payload does not decode as {expected}: {e}")))
}

pub(crate) struct SingleFn<F, T> {
    pub(crate) f: F,
    pub(crate) _t: std::marker::PhantomData<fn() -> T>,
}

impl<C, F, T, Fut> Single<C> for SingleFn<F, T>
where
    C: Send + 'static,
    F: Fn(C, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    T: prost::Message + prost::Name + Default + 'static,
{
    fn start(
        &self,
        ctx: C,
        message: &InboundMessage,
    ) -> Result<BoxFuture<Result<(), HandlerError>>, HandlerError> {
        let event = decode::<T>(message)?;
        Ok(Box::pin((self.f)(ctx, event)))
    }
}

pub(crate) struct BatchFn<F, T> {
    pub(crate) f: F,
    pub(crate) _t: std::marker::PhantomData<fn() -> T>,
}

impl<C, F, T, Fut> Batch<C> for BatchFn<F, T>
where
    C: Send + 'static,
    F: Fn(C, Vec<Item<T>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<BatchOutcome, HandlerError>> + Send + 'static,
    T: prost::Message + prost::Name + Default + 'static,
{
    fn decode(
        &self,
        envelope: &Arc<Envelope>,
        message: &InboundMessage,
    ) -> Result<Box<dyn std::any::Any + Send>, HandlerError> {
        let event = decode::<T>(message)?;
        Ok(Box::new(Item {
            envelope: envelope.clone(),
            subject: Arc::from(message.subject.as_str()),
            event,
        }))
    }

    fn start(
        &self,
        ctx: C,
        items: Vec<Box<dyn std::any::Any + Send>>,
    ) -> BoxFuture<Result<BatchOutcome, HandlerError>> {
        let items: Vec<Item<T>> = items
            .into_iter()
            .filter_map(|b| b.downcast::<Item<T>>().ok().map(|b| *b))
            .collect();
        Box::pin((self.f)(ctx, items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::shop::orders::v1::{OrderConfirmed, OrderPlaced};

    #[test]
    fn an_event_caused_by_another_carries_its_ids_and_trace() {
        let mut cause = Envelope::new::<OrderPlaced>("/t").correlation_id("req-1");
        cause.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let effect = caused_by(Envelope::new::<OrderConfirmed>("/orders"), &cause);
        assert_eq!(effect.causation_id.as_deref(), Some(cause.id.as_str()));
        assert_eq!(effect.correlation_id.as_deref(), Some("req-1"));
        assert_eq!(effect.traceparent, cause.traceparent);

        let first = Envelope::new::<OrderPlaced>("/t");
        let effect = caused_by(Envelope::new::<OrderConfirmed>("/orders"), &first);
        assert_eq!(
            effect.correlation_id.as_deref(),
            Some(first.id.as_str()),
            "the first event starts the correlation"
        );
    }
}
