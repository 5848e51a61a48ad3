//! Consumer groups on RabbitMQ: a quorum queue per group, a retry queue for
//! delayed redelivery, client-side ack wait, and the initial replay from the
//! domain's stream queue for groups that start before "now".
//!
//! Initial replay (start = beginning, sequence or time, when the group has no
//! `ready` marker yet): the group queue is bound first (it captures everything
//! from then on), a *seam* marker is published through the exchange, and the
//! stream queue is read from the start offset up to the seam. Then the group
//! queue is consumed, skipping messages before the seam that the replay
//! already delivered (by id; unknown ones are delivered, so nothing is lost).
//! The `ready` marker (a message in a one-message queue) is set once every
//! replayed delivery is settled; a subscriber that stops earlier leaves no marker, and the next one
//! replays again (duplicates, never loss). Replayed deliveries that are nacked
//! go through the retry queue into the group queue, like any other.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};

use super::{Inner, backend, binding_key, headers, long, publish};
use crate::delivery::PumpHandle;
use crate::{
    Acker, BrokerError, Delivery, InboundMessage, OutboundMessage, StartPosition, SubscribeOptions,
    Subscription, subject,
};

/// Ids a group has seen lately in this process (consumer-side de-duplication).
#[derive(Debug, Default)]
pub(crate) struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    const CAPACITY: usize = 100_000;

    /// Records `id`; false when it was already there.
    fn first_seen(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= Self::CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.set.insert(id.to_owned());
        true
    }
}

struct Names {
    key: String,
    group: String,
    retry: String,
    ready: String,
}

struct Replay {
    offset: AMQPValue,
    after_ms: Option<i64>,
    seam: String,
}

fn offset(start: StartPosition) -> (AMQPValue, Option<i64>) {
    match start {
        StartPosition::Sequence(seq) => (
            AMQPValue::LongLongInt(i64::try_from(seq.saturating_sub(1)).unwrap_or(i64::MAX)),
            None,
        ),
        StartPosition::Time(t) => {
            let ms = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            // Stream timestamps are per chunk and in seconds: start a second
            // early and drop what is older client-side.
            let secs = u64::try_from(ms / 1000).unwrap_or(0).saturating_sub(1);
            (AMQPValue::Timestamp(secs), Some(ms))
        }
        StartPosition::New | StartPosition::Beginning => (long("first"), None),
    }
}

/// Joins (creating) the group `o.group`.
pub(super) async fn subscribe(
    inner: Arc<Inner>,
    o: SubscribeOptions,
) -> Result<Subscription, BrokerError> {
    let key = subject::stream_key(&o.filter).to_owned();
    inner.ensure_stream(&key).await?;
    let names = Names {
        group: inner.name("group", &key, Some(&o.group)),
        retry: inner.name("retry", &key, Some(&o.group)),
        ready: inner.name("ready", &key, Some(&o.group)),
        key,
    };
    let ch = inner.conn.create_channel().await.map_err(backend)?;
    let dlx = inner.name("dlx", &names.key, None);
    inner
        .declare_queue(&ch, &dlx, "quorum", FieldTable::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-dead-letter-exchange"), long(""));
    args.insert(ShortString::from("x-dead-letter-routing-key"), long(&dlx));
    args.insert(
        ShortString::from("x-dead-letter-strategy"),
        long("at-least-once"),
    );
    args.insert(ShortString::from("x-overflow"), long("reject-publish"));
    inner
        .declare_queue(&ch, &names.group, "quorum", args)
        .await?;
    let mut args = FieldTable::default();
    args.insert(ShortString::from("x-dead-letter-exchange"), long(""));
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        long(&names.group),
    );
    inner
        .declare_queue(&ch, &names.retry, "classic", args)
        .await?;
    inner
        .bind(&ch, &names.group, &binding_key(&o.filter))
        .await?;

    let replay = if inner.marker_set(&ch, &names.ready).await? {
        None
    } else if o.start == StartPosition::New {
        inner.set_marker(&names.ready).await?;
        None
    } else {
        let seam = uuid::Uuid::now_v7().to_string();
        let seam_key = format!("{}.sluice-seam.{}", names.key, o.group);
        inner.bind(&ch, &names.group, &seam_key).await?;
        let props = headers::to_amqp(&Default::default(), &[(headers::SEAM, long(&seam))]);
        let confirm =
            publish::send_raw(&inner, &inner.options.exchange, &seam_key, b"", props).await?;
        publish::confirmed(&seam_key, confirm).await?;
        let (offset, after_ms) = offset(o.start);
        Some(Replay {
            offset,
            after_ms,
            seam,
        })
    };
    ch.basic_qos(
        u16::try_from(o.prefetch).unwrap_or(u16::MAX),
        BasicQosOptions::default(),
    )
    .await
    .map_err(backend)?;
    let dedup = inner.recent_ids(&names.group);
    let prefetch = o.prefetch;
    let max = o.max_deliveries;
    Ok(Subscription::spawn(prefetch, max, move |h| {
        tokio::spawn(pump(inner, ch, o, names, replay, dedup, h))
    }))
}

/// A delivery handed out and not yet settled.
struct Pending {
    deadline: Instant,
    acker: Arc<Settle>,
}

type PendingMap = Arc<Mutex<HashMap<u64, Pending>>>;

/// Everything needed to settle one delivery, shared by its acker and the
/// ack-wait sweeper (whoever removes it from the pending map settles it).
struct Settle {
    inner: Arc<Inner>,
    lapin: lapin::Acker,
    /// From the stream queue (cannot be requeued: redelivery goes through the retry queue).
    replayed: bool,
    props: BasicProperties,
    subject: String,
    payload: Bytes,
    delivered: u32,
    retry_queue: Arc<str>,
    /// Keeps the channel open while this delivery or its ack is in flight.
    channel: Arc<ChannelGuard>,
    outstanding: Option<Arc<AtomicUsize>>,
}

impl Settle {
    fn done(&self) {
        if let Some(o) = &self.outstanding {
            o.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn ack(&self) {
        // Not awaited: waiting for the frame to be written would cap a caller
        // acking one by one near 15,000/s. lapin queues the ack behind its
        // internal task, where the channel's close could overtake it (the
        // delivery would come back): the task holds the channel open until
        // the ack is written, and the broker's `close` waits for it.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Polled outside Tokio: hand it to lapin's queue and go on.
            let _ = self.lapin.ack(Default::default()).now_or_never();
            self.done();
            return;
        };
        let (acker, channel, inner) =
            (self.lapin.clone(), self.channel.clone(), self.inner.clone());
        inner.acks_in_flight.send_modify(|n| *n += 1);
        rt.spawn(async move {
            let _ = acker.ack(Default::default()).await;
            drop(channel);
            inner.acks_in_flight.send_modify(|n| *n -= 1);
        });
        self.done();
    }

    async fn requeue(&self, delay: Duration) -> Result<(), BrokerError> {
        if delay.is_zero() && !self.replayed {
            self.lapin
                .reject(BasicRejectOptions { requeue: true })
                .await
                .map_err(|e| BrokerError::Ack(e.to_string()))?;
            self.done();
            return Ok(());
        }
        let mut table = self.props.headers().clone().unwrap_or_default();
        table.insert(
            ShortString::from(headers::DELIVERIES),
            AMQPValue::LongLongInt(i64::from(self.delivered)),
        );
        // The retry queue dead-letters it back by queue name: keep the subject.
        table.insert(ShortString::from(headers::SUBJECT), long(&self.subject));
        let ms = delay.as_millis().to_string();
        let props = self
            .props
            .clone()
            .with_headers(table)
            .with_expiration(ShortString::from(ms));
        let confirm =
            publish::send_raw(&self.inner, "", &self.retry_queue, &self.payload, props).await?;
        publish::confirmed(&self.subject, confirm).await?;
        self.ack();
        Ok(())
    }
}

struct AmqpAcker {
    tag: u64,
    pending: PendingMap,
    settle: Arc<Settle>,
}

impl AmqpAcker {
    /// Takes the delivery out of the pending map; `false` if the ack-wait
    /// sweeper already handed it back (it is on its way to a redelivery).
    fn claim(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.tag)
            .is_some()
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        if self.claim() {
            self.settle.ack();
        }
        Ok(())
    }

    async fn nack(&self, delay: Duration) -> Result<(), BrokerError> {
        if self.claim() {
            self.settle.requeue(delay).await?;
        }
        Ok(())
    }

    async fn dead_letter(&self, dead_letter: OutboundMessage) -> Result<(), BrokerError> {
        let key = subject::stream_key(&dead_letter.subject).to_owned();
        self.settle.inner.ensure_stream(&key).await?;
        let confirm = publish::send(&self.settle.inner, &dead_letter).await?;
        publish::confirmed(&dead_letter.subject, confirm).await?;
        if self.claim() {
            self.settle.ack();
        }
        Ok(())
    }
}

/// Closes a subscription's channel once the pump and every delivery from
/// it are gone (closing earlier would requeue deliveries still being handled).
struct ChannelGuard {
    ch: Channel,
    inner: Arc<Inner>,
    /// Its entry in `Inner::consumer_channels` (not the channel id, which
    /// lapin reuses once a channel is closed).
    key: u64,
}

/// Keys of `Inner::consumer_channels`.
static CHANNEL_KEYS: AtomicU64 = AtomicU64::new(0);

impl ChannelGuard {
    /// Guards `ch`, recorded in `inner` for the broker's `close`.
    fn new(ch: Channel, inner: Arc<Inner>) -> Self {
        let key = CHANNEL_KEYS.fetch_add(1, Ordering::Relaxed);
        inner
            .consumer_channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (ch.clone(), Vec::new()));
        Self { ch, inner, key }
    }

    /// Records consumer `tag` of the channel (cancelled by the broker's `close`).
    fn consuming(&self, tag: ShortString) {
        if let Some((_, tags)) = self
            .inner
            .consumer_channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.key)
        {
            tags.push(tag);
        }
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        let ch = self.ch.clone();
        self.inner
            .consumer_channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = ch
                    .close(200, ShortString::from("subscription closed"))
                    .await;
            });
        }
    }
}

struct Pump {
    inner: Arc<Inner>,
    ch: Channel,
    o: SubscribeOptions,
    names: Names,
    group: Arc<str>,
    retry: Arc<str>,
    pending: PendingMap,
    channel: Arc<ChannelGuard>,
    h: PumpHandle,
    open: bool,
}

async fn pump(
    inner: Arc<Inner>,
    ch: Channel,
    o: SubscribeOptions,
    names: Names,
    replay: Option<Replay>,
    dedup: Arc<Mutex<RecentIds>>,
    h: PumpHandle,
) {
    let channel = Arc::new(ChannelGuard::new(ch.clone(), inner.clone()));
    let mut p = Pump {
        group: Arc::from(o.group.as_str()),
        retry: Arc::from(names.retry.as_str()),
        inner,
        ch,
        o,
        names,
        pending: PendingMap::default(),
        channel,
        h,
        open: true,
    };
    let mut replayed_ids = HashSet::new();
    let mut seam = None;
    if let Some(r) = replay {
        let outstanding = Arc::new(AtomicUsize::new(0));
        if let Err(e) = p.replay(&r, &outstanding, &mut replayed_ids).await {
            tracing::error!(error = %e, group = %p.group, "initial replay failed; it runs again next time");
            let _ = p.h.tx.send(Err(e)).await;
        } else if p.open {
            let (inner, ready) = (p.inner.clone(), p.names.ready.clone());
            tokio::spawn(async move {
                while outstanding.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if let Err(e) = inner.set_marker(&ready).await {
                    tracing::warn!(error = %e, "could not mark the replay complete; it runs again next time");
                }
            });
        }
        seam = Some(r.seam);
    }
    if p.open
        && let Err(e) = p.live(seam, replayed_ids, dedup).await
    {
        tracing::error!(error = %e, group = %p.group, "consuming failed");
        let _ = p.h.tx.send(Err(e)).await;
    }
}

impl Pump {
    async fn consume(&self, queue: &str, args: FieldTable) -> Result<lapin::Consumer, BrokerError> {
        let tag = ShortString::from(format!("{}-{}", self.group, uuid::Uuid::now_v7()));
        let consumer = self
            .ch
            .basic_consume(
                ShortString::from(queue),
                tag.clone(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(|e| BrokerError::Backend(format!("consuming {queue}: {e}")))?;
        self.channel.consuming(tag);
        Ok(consumer)
    }

    /// Reads the stream queue from the start offset up to the seam.
    async fn replay(
        &mut self,
        r: &Replay,
        outstanding: &Arc<AtomicUsize>,
        ids: &mut HashSet<String>,
    ) -> Result<(), BrokerError> {
        let mut args = FieldTable::default();
        args.insert(ShortString::from("x-stream-offset"), r.offset.clone());
        let stream = self.inner.name("stream", &self.names.key, None);
        let mut consumer = self.consume(&stream, args).await?;
        let mut sweeper = self.sweeper();
        while let Some(d) = self.next(&mut consumer, &mut sweeper).await? {
            let seam = headers::raw(&d.properties, headers::SEAM).map(headers::text);
            if let Some(s) = seam {
                let _ = d.acker.ack(Default::default()).await;
                if s.as_deref() == Some(r.seam.as_str()) {
                    break;
                }
                continue;
            }
            let ts = headers::raw(&d.properties, headers::TS).and_then(headers::int);
            let too_old = matches!((r.after_ms, ts), (Some(after), Some(ts)) if ts < after);
            if too_old || !subject::matches(&self.o.filter, d.routing_key.as_str()) {
                let _ = d.acker.ack(Default::default()).await;
                continue;
            }
            if let Some(id) = d.properties.message_id() {
                ids.insert(id.as_str().to_owned());
            }
            outstanding.fetch_add(1, Ordering::SeqCst);
            self.hand_out(d, true, Some(outstanding.clone())).await;
        }
        let _ = self
            .ch
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        if self.open {
            // Past the seam: the group queue has these too.
            while let Some(Some(Ok(d))) = consumer.next().now_or_never() {
                let _ = d.acker.ack(Default::default()).await;
            }
        } else {
            self.drain(&mut consumer, true, Some(outstanding)).await;
        }
        Ok(())
    }

    /// Consumes the group queue until the subscription closes.
    async fn live(
        &mut self,
        seam: Option<String>,
        replayed: HashSet<String>,
        dedup: Arc<Mutex<RecentIds>>,
    ) -> Result<(), BrokerError> {
        let mut seam_passed = seam.is_none();
        let mut consumer = self
            .consume(&self.names.group.clone(), FieldTable::default())
            .await?;
        let mut sweeper = self.sweeper();
        while let Some(d) = self.next(&mut consumer, &mut sweeper).await? {
            if let Some(s) = headers::raw(&d.properties, headers::SEAM) {
                if seam.is_some() && headers::text(s) == seam {
                    seam_passed = true;
                }
                let _ = d.acker.ack(Default::default()).await;
                continue;
            }
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|i| i.as_str().to_owned());
            if !seam_passed && id.as_ref().is_some_and(|i| replayed.contains(i)) {
                let _ = d.acker.ack(Default::default()).await;
                continue;
            }
            if delivered(&d.properties) == 1
                && let Some(id) = &id
                && !dedup
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .first_seen(id)
            {
                tracing::debug!(id, "duplicate publish dropped");
                let _ = d.acker.ack(Default::default()).await;
                continue;
            }
            self.hand_out(d, false, None).await;
        }
        let _ = self
            .ch
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        self.open = false;
        self.drain(&mut consumer, false, None).await;
        Ok(())
    }

    /// A ticker for the ack-wait sweep (one timer for the whole subscription,
    /// not one per message).
    fn sweeper(&self) -> tokio::time::Interval {
        let tick =
            (self.o.ack_wait / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
        let mut i = tokio::time::interval(tick);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    }

    /// The next raw delivery, sweeping expired ones meanwhile; `None` once closing.
    async fn next(
        &mut self,
        consumer: &mut lapin::Consumer,
        sweeper: &mut tokio::time::Interval,
    ) -> Result<Option<lapin::message::Delivery>, BrokerError> {
        let mut stop = self.h.stop.clone();
        loop {
            if !self.open || *stop.borrow() {
                return Ok(None);
            }
            tokio::select! {
                d = consumer.next() => match d {
                    Some(Ok(d)) => return Ok(Some(d)),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, group = %self.group, "consumer interrupted; waiting for recovery");
                        self.ch.wait_for_recovery(e).await.map_err(backend)?;
                    }
                    None => return Ok(None),
                },
                _ = sweeper.tick() => self.sweep().await,
                () = async { let _ = stop.wait_for(|s| *s).await; } => return Ok(None),
            }
        }
    }

    /// Hands back deliveries whose ack wait ran out.
    async fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Arc<Settle>> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let tags: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(t, _)| *t)
                .collect();
            tags.into_iter()
                .filter_map(|t| pending.remove(&t))
                .map(|p| p.acker)
                .collect()
        };
        for s in expired {
            if let Err(e) = s.requeue(Duration::ZERO).await {
                tracing::warn!(error = %e, "could not hand back an expired delivery");
            }
        }
    }

    async fn hand_out(
        &mut self,
        d: lapin::message::Delivery,
        replayed: bool,
        outstanding: Option<Arc<AtomicUsize>>,
    ) {
        let delivery = self.delivery(d, replayed, outstanding);
        let closing = !self.open || *self.h.stop.borrow();
        if closing {
            self.open = false;
            self.h.hand_back(delivery);
        } else if !self.h.deliver(delivery).await {
            self.open = false;
        }
    }

    /// Deliveries that arrived before the cancel took effect go back.
    async fn drain(
        &mut self,
        consumer: &mut lapin::Consumer,
        replayed: bool,
        outstanding: Option<&Arc<AtomicUsize>>,
    ) {
        while let Some(Some(Ok(d))) = consumer.next().now_or_never() {
            if headers::raw(&d.properties, headers::SEAM).is_some() {
                let _ = d.acker.reject(BasicRejectOptions { requeue: true }).await;
                continue;
            }
            if let Some(o) = outstanding {
                o.fetch_add(1, Ordering::SeqCst);
            }
            let delivery = self.delivery(d, replayed, outstanding.cloned());
            self.h.hand_back(delivery);
        }
    }

    fn delivery(
        &self,
        d: lapin::message::Delivery,
        replayed: bool,
        outstanding: Option<Arc<AtomicUsize>>,
    ) -> Delivery {
        let payload = Bytes::from(d.data);
        let delivered = delivered(&d.properties);
        let sequence = headers::raw(&d.properties, "x-stream-offset")
            .and_then(headers::int)
            .and_then(|o| u64::try_from(o).ok())
            .map(|o| o + 1);
        let timestamp = headers::raw(&d.properties, headers::TS)
            .and_then(headers::int)
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        let subject = headers::raw(&d.properties, headers::SUBJECT)
            .and_then(headers::text)
            .unwrap_or_else(|| d.routing_key.as_str().to_owned());
        let message = InboundMessage {
            subject,
            headers: headers::from_amqp(&d.properties),
            payload: payload.clone(),
            sequence,
            delivered,
            timestamp,
        };
        let settle = Arc::new(Settle {
            inner: self.inner.clone(),
            lapin: d.acker,
            replayed,
            props: d.properties,
            subject: message.subject.clone(),
            payload,
            delivered,
            retry_queue: self.retry.clone(),
            channel: self.channel.clone(),
            outstanding,
        });
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                d.delivery_tag,
                Pending {
                    deadline: Instant::now() + self.o.ack_wait,
                    acker: settle.clone(),
                },
            );
        let acker = AmqpAcker {
            tag: d.delivery_tag,
            pending: self.pending.clone(),
            settle,
        };
        Delivery::new(message, self.group.clone(), Box::new(acker))
    }
}

/// Deliveries so far, counting this one: those before a retry-queue round
/// trip (our header) plus the quorum queue's own count of returns.
fn delivered(props: &BasicProperties) -> u32 {
    let before = headers::raw(props, headers::DELIVERIES)
        .and_then(headers::int)
        .unwrap_or(0);
    let returns = headers::raw(props, "x-delivery-count")
        .and_then(headers::int)
        .unwrap_or(0);
    u32::try_from(before.saturating_add(returns).saturating_add(1).max(1)).unwrap_or(u32::MAX)
}
