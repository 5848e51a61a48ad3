//! Consumer groups as durable pull consumers, and the pump feeding a
//! [`Subscription`] from one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, stream::Stream};
use async_trait::async_trait;
use futures::StreamExt;

use super::{backend, publish, rpc::from_nats};
use crate::delivery::PumpHandle;
use crate::{
    Acker, BrokerError, Delivery, InboundMessage, OutboundMessage, StartPosition, SubscribeOptions,
    Subscription,
};

fn deliver_policy(start: StartPosition) -> DeliverPolicy {
    match start {
        StartPosition::New => DeliverPolicy::New,
        StartPosition::Beginning => DeliverPolicy::All,
        StartPosition::Sequence(start_sequence) => {
            DeliverPolicy::ByStartSequence { start_sequence }
        }
        StartPosition::Time(t) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from(t),
        },
    }
}

/// The group's consumer: the existing one (resume), else a new one at `start`.
async fn consumer(stream: &Stream, o: &SubscribeOptions) -> Result<PullConsumer, BrokerError> {
    if let Ok(c) = stream.get_consumer::<pull::Config>(&o.group).await {
        return Ok(c);
    }
    let config = pull::Config {
        durable_name: Some(o.group.clone()),
        filter_subject: o.filter.clone(),
        deliver_policy: deliver_policy(o.start),
        ack_policy: AckPolicy::Explicit,
        ack_wait: o.ack_wait,
        // Sluice enforces max deliveries itself, to dead-letter with a reason.
        max_deliver: -1,
        max_ack_pending: i64::try_from(o.prefetch.saturating_mul(4).max(1024)).unwrap_or(i64::MAX),
        ..Default::default()
    };
    match stream.create_consumer(config).await {
        Ok(c) => Ok(c),
        // Another member created it at the same moment.
        Err(e) => stream
            .get_consumer::<pull::Config>(&o.group)
            .await
            .map_err(|_| BrokerError::Backend(format!("consumer {}: {e}", o.group))),
    }
}

/// Joins the group `o.group` on `stream`.
pub(super) async fn subscribe(
    js: jetstream::Context,
    stream: Stream,
    o: SubscribeOptions,
    replicas: usize,
) -> Result<Subscription, BrokerError> {
    let c = consumer(&stream, &o).await?;
    let ctx = Ctx {
        js,
        group: Arc::from(o.group.as_str()),
        replicas,
    };
    Ok(Subscription::spawn(
        o.prefetch,
        o.max_deliveries,
        move |h| tokio::spawn(pump(ctx, stream, o, c, h)),
    ))
}

/// What every delivery of one subscription needs.
struct Ctx {
    js: jetstream::Context,
    group: Arc<str>,
    /// Replicas of a dead-letter stream an acker may have to create.
    replicas: usize,
}

/// How long one pull request waits for messages. It bounds how long closing
/// a subscription takes: the pump finishes its outstanding requests (so no
/// message is in flight to a dead inbox) and hands back what they bring.
const PULL_EXPIRES: Duration = Duration::from_millis(500);

async fn pull(c: &PullConsumer, want: usize) -> Result<pull::Batch, BrokerError> {
    c.batch()
        .max_messages(want)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(backend)
}

/// Feeds one member, one pull request at a time. Overlapping requests on
/// separate inboxes would break per-subject order: the server spreads
/// messages across a consumer's waiting requests.
async fn pump(ctx: Ctx, stream: Stream, o: SubscribeOptions, mut c: PullConsumer, h: PumpHandle) {
    let (group, prefetch) = (ctx.group.clone(), o.prefetch);
    let want = prefetch.max(1);
    let mut backoff = Duration::from_millis(100);
    let mut open = true;
    let mut current: Option<pull::Batch> = None;
    loop {
        let closing = !open || *h.stop.borrow();
        if current.is_none() {
            if closing {
                break;
            }
            match pull(&c, want).await {
                Ok(b) => current = Some(b),
                Err(e) => {
                    tracing::warn!(error = %e, group = %group, "pull request failed; retrying");
                    c = recover(&stream, &o, &h, &mut backoff, c).await;
                    continue;
                }
            }
        }
        let Some(batch) = current.as_mut() else {
            continue;
        };
        match batch.next().await {
            Some(Ok(m)) => {
                backoff = Duration::from_millis(100);
                let d = match delivery(&ctx, m) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "message without JetStream metadata");
                        continue;
                    }
                };
                let closing = !open || *h.stop.borrow();
                if closing {
                    // Closing: what the outstanding request still brings goes back.
                    open = false;
                    h.hand_back(d);
                } else if !h.deliver(d).await {
                    open = false;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, group = %group, "pull error");
                current = None;
                c = recover(&stream, &o, &h, &mut backoff, c).await;
            }
            None => current = None,
        }
    }
}

/// After a failed pull: waits out the backoff, then returns the consumer to
/// pull from: found again, or created again at the member's start position
/// if it is gone (a server that lost it) — unless the member is closing. A
/// closed member's pump runs on for up to one pull request; when its group
/// was deleted meanwhile (a reset after the service stopped), creating it
/// again would bring the group back at the old member's start position, and
/// the next member would resume there instead of starting afresh.
async fn recover(
    stream: &Stream,
    o: &SubscribeOptions,
    h: &PumpHandle,
    backoff: &mut Duration,
    c: PullConsumer,
) -> PullConsumer {
    pause(h, backoff).await;
    if *h.stop.borrow() {
        return c;
    }
    consumer(stream, o).await.unwrap_or(c)
}

async fn pause(h: &PumpHandle, backoff: &mut Duration) {
    let mut stop = h.stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

/// The message as Sluice sees it, and how many messages the consumer had
/// pending after it.
/// `m` as the broker hands it on, with the stream's pending count after it
/// and its consumer sequence.
fn inbound(m: &jetstream::Message) -> Result<(InboundMessage, u64, u64), BrokerError> {
    let info = m.info().map_err(backend)?;
    let message = InboundMessage {
        subject: m.subject.to_string(),
        headers: from_nats(m.headers.as_ref()),
        payload: m.payload.clone(),
        sequence: Some(info.stream_sequence),
        delivered: u32::try_from(info.delivered).unwrap_or(u32::MAX),
        timestamp: Some(SystemTime::from(info.published)),
    };
    Ok((message, info.pending, info.consumer_sequence))
}

fn delivery(ctx: &Ctx, m: jetstream::Message) -> Result<Delivery, BrokerError> {
    let (message, _, _) = inbound(&m)?;
    let acker = NatsAcker {
        js: ctx.js.clone(),
        message: m,
        replicas: ctx.replicas,
    };
    Ok(Delivery::new(message, ctx.group.clone(), Box::new(acker)))
}

struct NatsAcker {
    js: jetstream::Context,
    message: jetstream::Message,
    /// Replicas of a dead-letter stream this acker may have to create.
    replicas: usize,
}

#[async_trait]
impl Acker for NatsAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.message
            .ack_with(AckKind::Ack)
            .await
            .map_err(|e| BrokerError::Ack(e.to_string()))
    }

    async fn nack(&self, delay: Duration) -> Result<(), BrokerError> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.message
            .ack_with(AckKind::Nak(delay))
            .await
            .map_err(|e| BrokerError::Ack(e.to_string()))
    }

    async fn dead_letter(&self, dead_letter: OutboundMessage) -> Result<(), BrokerError> {
        let key = crate::subject::stream_key(&dead_letter.subject).to_owned();
        // The dead-letter stream may not exist yet.
        let js = self.js.clone();
        let ack = match publish::publish_one(&js, dead_letter.clone()).await {
            Ok(a) => Ok(a),
            Err(_) => {
                js.get_or_create_stream(super::stream_config(&key, self.replicas))
                    .await
                    .map_err(backend)?;
                publish::publish_one(&js, dead_letter).await
            }
        };
        ack?;
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| BrokerError::Ack(e.to_string()))
    }
}

/// How long a cursor at the stream's end waits for one more message before
/// it reports the end (what is published meanwhile comes with a later page).
const AT_END: Duration = Duration::from_millis(200);

/// How long a cursor waits for a message the stream said it holds.
const STALLED: Duration = Duration::from_secs(30);

/// Messages a cursor asks the server for per pull request. The ordered
/// consumer of async-nats asks for 500, which left reading a large stream
/// waiting on round trips (export from NATS +14–35 %, replay +12–16 % with
/// 4,096, alternated on 300,000 events).
const CURSOR_BATCH: usize = 4096;

/// How often in a row a cursor makes its consumer again (waiting 200 ms
/// more each time, ~3 s in all) before it reports the error.
const CURSOR_RETRIES: u32 = 5;

/// A cursor: an ephemeral pull consumer without acks, in memory, one
/// replica, read in large pull requests. Like async-nats' ordered consumer
/// it is made again from the next stream sequence when the server loses it
/// or a message goes missing (a gap in the consumer's sequence). The
/// pending count that comes with each message tells when the stream's end
/// is reached.
pub(super) struct Cursor {
    stream: Stream,
    filter: String,
    /// Where the first consumer started.
    start: StartPosition,
    messages: pull::Stream,
    /// The stream sequence of the last message read.
    last: Option<u64>,
    /// The consumer sequence of the last message read from this consumer.
    consumer_seq: u64,
    /// Messages the stream holds past the last one read.
    pending: u64,
}

impl Cursor {
    pub(super) async fn open(
        stream: &Stream,
        filter: &str,
        start: StartPosition,
    ) -> Result<Self, BrokerError> {
        let (messages, pending) = Self::consume(stream, filter, deliver_policy(start)).await?;
        Ok(Self {
            stream: stream.clone(),
            filter: filter.to_owned(),
            start,
            messages,
            last: None,
            consumer_seq: 0,
            pending,
        })
    }

    async fn consume(
        stream: &Stream,
        filter: &str,
        deliver_policy: DeliverPolicy,
    ) -> Result<(pull::Stream, u64), BrokerError> {
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.to_owned(),
                deliver_policy,
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(backend)?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer
            .stream()
            .max_messages_per_batch(CURSOR_BATCH)
            .messages()
            .await
            .map_err(backend)?;
        Ok((messages, pending))
    }

    /// Makes the consumer again, from the message after the last one read.
    async fn resume(&mut self) -> Result<(), BrokerError> {
        let policy = match self.last {
            Some(seq) => DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            },
            None => deliver_policy(self.start),
        };
        let (messages, pending) = Self::consume(&self.stream, &self.filter, policy).await?;
        self.messages = messages;
        self.pending = pending;
        self.consumer_seq = 0;
        Ok(())
    }

    /// Makes the consumer again after `why`, waiting longer each time;
    /// the error once `retries` reaches [`CURSOR_RETRIES`].
    async fn recover(&mut self, mut why: String, retries: &mut u32) -> Result<(), BrokerError> {
        loop {
            if *retries >= CURSOR_RETRIES {
                return Err(BrokerError::Backend(format!(
                    "the cursor's consumer failed {CURSOR_RETRIES} times: {why}"
                )));
            }
            *retries += 1;
            tracing::debug!(
                why,
                retries = *retries,
                "making the cursor's consumer again"
            );
            tokio::time::sleep(Duration::from_millis(200) * *retries).await;
            match self.resume().await {
                Ok(()) => return Ok(()),
                Err(e) => why = e.to_string(),
            }
        }
    }
}

#[async_trait]
impl crate::LogCursor for Cursor {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<InboundMessage>, BrokerError> {
        let max = max.max(1);
        let mut out = Vec::with_capacity(crate::broker::page_capacity(max));
        let mut retries = 0;
        while out.len() < max {
            let at_end = self.pending == 0;
            if at_end && !out.is_empty() {
                break;
            }
            let wait = if at_end { AT_END } else { STALLED };
            let m = match tokio::time::timeout(wait, self.messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    self.recover(e.to_string(), &mut retries).await?;
                    continue;
                }
                Ok(None) => return Err(BrokerError::Closed),
                Err(_) if at_end => break,
                Err(_) => return Err(BrokerError::Timeout(STALLED)),
            };
            let (message, pending, consumer_seq) = inbound(&m)?;
            if consumer_seq != self.consumer_seq + 1 {
                // A message went missing: start again after the last one read.
                let why = format!(
                    "its sequence skipped from {} to {consumer_seq}",
                    self.consumer_seq
                );
                self.recover(why, &mut retries).await?;
                continue;
            }
            self.consumer_seq = consumer_seq;
            self.last = message.sequence;
            self.pending = pending;
            retries = 0;
            out.push(message);
        }
        Ok(out)
    }
}
