//! The embedded backend: a durable local log in one SQLite file, no server.
//!
//! SQLite (through sqlx, the same SQLite sea-orm brings) was chosen over a
//! pure key-value store because the log must be shared: `sluice up` consumes
//! it while `sluice publish` or `sluice tail` in another process write and
//! read it, and SQLite's WAL mode gives safe multi-process access with one
//! writer and concurrent readers. Within a process a single writer task
//! group-commits publishes (one transaction per batch), and consumers are
//! woken at once; writes from other processes are noticed by polling.
//!
//! Request/reply is in-process only (the embedded broker has no wire).

mod codec;
mod group;
mod rpc;
mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::Semaphore;

pub use store::Durability;

use crate::delivery::PumpHandle;
use crate::{
    Acker, Broker, BrokerError, BrokerKind, Delivery, InboundMessage, LogCursor, OutboundMessage,
    PublishAck, Requests, StartPosition, StreamStats, SubscribeOptions, Subscription, subject,
};
use group::Group;
use store::Store;

/// Options of the embedded log.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// How hard commits are pushed to disk.
    pub durability: Durability,
    /// How often idle consumers look for messages written by other processes.
    pub poll_interval: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Normal,
            poll_interval: Duration::from_millis(100),
        }
    }
}

/// The embedded broker: a SQLite log file.
pub struct EmbeddedBroker {
    store: Arc<Store>,
    groups: Mutex<HashMap<(String, String), Arc<Group>>>,
    rpc: rpc::Rpc,
    options: EmbeddedOptions,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker").finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Opens (creating if needed) the log at `path`.
    ///
    /// # Errors
    /// The file cannot be created or opened as a SQLite database.
    pub async fn open(path: &Path, options: EmbeddedOptions) -> Result<Self, BrokerError> {
        Ok(Self {
            store: Store::open(path, options.durability).await?,
            groups: Mutex::new(HashMap::new()),
            rpc: rpc::Rpc::default(),
            options,
        })
    }

    async fn group(&self, o: &SubscribeOptions) -> Result<Arc<Group>, BrokerError> {
        let stream = subject::stream_key(&o.filter).to_owned();
        let key = (stream.clone(), o.group.clone());
        if let Some(g) = self.lock_groups().get(&key) {
            return Ok(g.clone());
        }
        let g = Group::load_or_create(
            self.store.clone(),
            &stream,
            &o.group,
            &o.filter,
            o.start,
            o.ack_wait,
        )
        .await?;
        Ok(self
            .lock_groups()
            .entry(key)
            .or_insert_with(|| Arc::new(g))
            .clone())
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Group>>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    async fn lag(&self, filter: &str, group: &str) -> Result<Option<u64>, BrokerError> {
        let stream = subject::stream_key(filter).to_owned();
        let g = self
            .lock_groups()
            .get(&(stream.clone(), group.to_owned()))
            .cloned();
        let last = self.store.last_seq(&stream).await?;
        match g {
            Some(g) => Ok(Some(last.saturating_sub(g.settled()))),
            // A group of another process: its stored ack floor.
            None => Ok(self
                .store
                .groups(&stream)
                .await?
                .into_iter()
                .find(|(name, _)| name == group)
                .map(|(_, floor)| last.saturating_sub(floor))),
        }
    }

    async fn stream_stats(&self, domain: &str) -> Result<Option<StreamStats>, BrokerError> {
        let last_sequence = self.store.last_seq(domain).await?;
        let messages = self.store.count(domain).await?;
        let groups = self.store.groups(domain).await?;
        Ok(Some(StreamStats {
            messages,
            last_sequence: Some(last_sequence),
            groups: Some(groups.into_iter().map(|(n, _)| n).collect()),
        }))
    }

    fn kind(&self) -> BrokerKind {
        BrokerKind::Embedded
    }

    async fn publish(&self, message: OutboundMessage) -> Result<PublishAck, BrokerError> {
        self.store
            .publish(vec![message])
            .await
            .pop()
            .unwrap_or(Err(BrokerError::Closed))
    }

    async fn publish_batch(
        &self,
        messages: Vec<OutboundMessage>,
    ) -> Vec<Result<PublishAck, BrokerError>> {
        self.store.publish(messages).await
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Subscription, BrokerError> {
        options.validate()?;
        let group = self.group(&options).await?;
        let store = self.store.clone();
        let poll = self.options.poll_interval;
        let prefetch = options.prefetch;
        Ok(Subscription::spawn(
            prefetch,
            options.max_deliveries,
            move |handle| tokio::spawn(pump(group, store, prefetch, poll, handle)),
        ))
    }

    async fn request(
        &self,
        message: OutboundMessage,
        timeout: Duration,
    ) -> Result<InboundMessage, BrokerError> {
        self.rpc.request(message, timeout).await
    }

    async fn serve(&self, subject: &str, group: &str) -> Result<Requests, BrokerError> {
        self.rpc.serve(subject, group)
    }

    async fn cursor(
        &self,
        filter: &str,
        start: StartPosition,
    ) -> Result<Option<Box<dyn LogCursor>>, BrokerError> {
        subject::validate_filter(filter)?;
        let stream = subject::stream_key(filter).to_owned();
        let floor = self.store.floor_at(&stream, start).await?;
        Ok(Some(Box::new(Cursor {
            conn: self.store.sequential_reader().await?,
            stream,
            filter: filter.to_owned(),
            next: floor + 1,
        })))
    }

    async fn delete_group(&self, filter: &str, group: &str) -> Result<(), BrokerError> {
        let stream = subject::stream_key(filter).to_owned();
        self.lock_groups()
            .remove(&(stream.clone(), group.to_owned()));
        for sql in [
            "DELETE FROM groups WHERE stream = ? AND name = ?",
            "DELETE FROM redeliveries WHERE stream = ? AND grp = ?",
        ] {
            sqlx::query(sql)
                .bind(&stream)
                .bind(group)
                .execute(self.store.pool())
                .await
                .map_err(|e| BrokerError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    async fn delete_domain(&self, domain: &str) -> Result<(), BrokerError> {
        for stream in [domain.to_owned(), subject::dlq_subject(domain)] {
            self.lock_groups().retain(|(s, _), _| *s != stream);
            self.store.delete_stream(&stream).await?;
        }
        Ok(())
    }

    async fn close(&self) {
        let groups: Vec<Arc<Group>> = self.lock_groups().values().cloned().collect();
        for g in groups {
            if let Err(e) = g.flush(true).await {
                tracing::warn!(error = %e, group = %g.name, "could not save group state on close");
            }
        }
        self.store.close().await;
    }
}

/// Feeds one member of a group until it closes.
async fn pump(
    group: Arc<Group>,
    store: Arc<Store>,
    prefetch: usize,
    poll: Duration,
    mut h: PumpHandle,
) {
    let window = Arc::new(Semaphore::new(prefetch));
    let mut head = store.watch_head(&group.stream);
    let mut backoff = Duration::from_millis(50);
    loop {
        if *h.stop.borrow() {
            break;
        }
        // Wait for room in the window, then take as much as fits. Closing
        // must not wait for room: the deliveries holding it may be exactly
        // the ones the closing subscription is about to hand back.
        let first = tokio::select! {
            p = window.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = h.stop.changed() => continue,
        };
        let mut permits = vec![first];
        while permits.len() < prefetch.min(512) {
            match window.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let taken = match group.take(permits.len()).await {
            Ok(t) => {
                backoff = Duration::from_millis(50);
                t
            }
            Err(e) => {
                tracing::warn!(error = %e, group = %group.name, "embedded read failed; retrying");
                if h.tx.send(Err(e)).await.is_err() {
                    break;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = group.flush(false).await {
            tracing::warn!(error = %e, group = %group.name, "could not save group state");
        }
        if taken.is_empty() {
            drop(permits);
            let wake = group.next_due().map_or(poll, |t| {
                t.saturating_duration_since(Instant::now()).min(poll)
            });
            tokio::select! {
                _ = head.changed() => {}
                _ = tokio::time::sleep(wake) => {}
                _ = h.stop.changed() => {}
            }
            continue;
        }
        let mut open = true;
        for (t, permit) in taken.into_iter().zip(permits.drain(..)) {
            let seq = t.message.seq;
            let message = match to_inbound(t) {
                Ok(m) => m,
                Err(e) => {
                    // A row we cannot read back is a storage defect; leave it
                    // pending so it is retried (and, past max deliveries, the
                    // subscription dead-letters it) instead of losing it.
                    tracing::error!(error = %e, seq, "unreadable message in embedded log");
                    continue;
                }
            };
            let acker = EmbeddedAcker {
                group: group.clone(),
                store: store.clone(),
                seq,
                _permit: permit,
            };
            let d = Delivery::new(message, group.name.clone(), Box::new(acker));
            if !open {
                // Closing: everything taken goes back, in order.
                h.hand_back(d);
            } else if !h.deliver(d).await {
                open = false;
            }
        }
        if !open {
            break;
        }
    }
    if let Err(e) = group.flush(true).await {
        tracing::warn!(error = %e, group = %group.name, "could not save group state");
    }
}

fn to_inbound(t: group::Taken) -> Result<InboundMessage, BrokerError> {
    inbound(t.message, t.delivered)
}

fn inbound(m: store::Stored, delivered: u32) -> Result<InboundMessage, BrokerError> {
    Ok(InboundMessage {
        subject: m.subject,
        headers: codec::decode(&m.headers)?,
        payload: m.payload,
        sequence: Some(m.seq),
        delivered,
        timestamp: u64::try_from(m.ts_micros)
            .ok()
            .map(|us| UNIX_EPOCH + Duration::from_micros(us)),
    })
}

/// A ranged read of the log: pages of rows by sequence, no group state.
struct Cursor {
    /// A connection of the cursor's own (see [`Store::sequential_reader`]).
    conn: sqlx::SqliteConnection,
    stream: String,
    filter: String,
    /// The next sequence to read.
    next: u64,
}

#[async_trait]
impl LogCursor for Cursor {
    /// The log's unique index on `(stream, msg_id)` keeps each `ce-id` once
    /// for good (not within a window).
    fn unique_ids(&self) -> bool {
        true
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<InboundMessage>, BrokerError> {
        let max = max.max(1);
        let mut out = Vec::with_capacity(crate::broker::page_capacity(max));
        loop {
            let want = max - out.len();
            let (filter, next) = (&self.filter, &mut self.next);
            let read = store::for_each_in_range(
                &mut self.conn,
                &self.stream,
                *next,
                want,
                store::Pace::Bulk,
                |m| {
                    *next = m.seq + 1;
                    if subject::matches(filter, &m.subject) {
                        out.push(inbound(m, 1)?);
                    }
                    Ok(())
                },
            )
            .await?;
            if read < want || out.len() == max {
                return Ok(out);
            }
        }
    }
}

struct EmbeddedAcker {
    group: Arc<Group>,
    store: Arc<Store>,
    seq: u64,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(&self) -> Result<(), BrokerError> {
        self.group.settle(self.seq);
        Ok(())
    }

    async fn nack(&self, delay: Duration) -> Result<(), BrokerError> {
        self.group.retry(self.seq, Instant::now() + delay);
        Ok(())
    }

    async fn dead_letter(&self, dead_letter: OutboundMessage) -> Result<(), BrokerError> {
        self.store
            .publish(vec![dead_letter])
            .await
            .pop()
            .unwrap_or(Err(BrokerError::Closed))?;
        self.group.settle(self.seq);
        Ok(())
    }
}
