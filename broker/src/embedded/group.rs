//! Consumer groups on the embedded log: which messages are pending, acked or
//! due for redelivery, shared by every member of the group in this process.
//!
//! Durable state is the group's *ack floor* (every sequence at or below it is
//! settled) and the delivery counts of messages delivered more than once;
//! both are written to the log's database at most every 200 ms and when a
//! member closes. Acks above the floor that were not yet written are
//! redelivered after a crash: at-least-once, like a JetStream ack that was
//! lost. The group's members must live in one process (the one running the
//! services); other processes use groups of their own.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::store::{Store, Stored};
use crate::{BrokerError, StartPosition, subject};

/// Delivery state of one message handed to a member.
#[derive(Debug, Clone, Copy)]
struct Pending {
    deadline: Instant,
    delivered: u32,
}

#[derive(Debug, Default)]
struct State {
    floor: u64,
    cursor: u64,
    settled: BTreeSet<u64>,
    pending: HashMap<u64, Pending>,
    /// Messages to deliver again, with the earliest time.
    retry: BTreeSet<(Instant, u64)>,
    /// Deliveries so far of messages waiting for redelivery (the count of a
    /// pending message is in its `Pending`).
    deliveries: HashMap<u64, u32>,
    dirty: bool,
    last_flush: Option<Instant>,
}

impl State {
    fn settle(&mut self, seq: u64) {
        self.pending.remove(&seq);
        if !self.deliveries.is_empty() {
            self.deliveries.remove(&seq);
        }
        self.dirty = true;
        if seq == self.floor + 1 && self.settled.is_empty() {
            // The common case: acks in order.
            self.floor = seq;
            return;
        }
        if seq > self.floor {
            self.settled.insert(seq);
        }
        while self.settled.first() == Some(&(self.floor + 1)) {
            self.settled.pop_first();
            self.floor += 1;
        }
    }

    /// Moves a pending message to the redelivery queue, due at `at`.
    fn requeue(&mut self, seq: u64, at: Instant) -> bool {
        match self.pending.remove(&seq) {
            Some(p) => {
                self.deliveries.insert(seq, p.delivered);
                self.retry.insert((at, seq));
                self.dirty = true;
                true
            }
            None => false,
        }
    }
}

/// A consumer group of one stream.
pub(crate) struct Group {
    pub(crate) stream: String,
    pub(crate) name: Arc<str>,
    pub(crate) filter: String,
    pub(crate) ack_wait: Duration,
    store: Arc<Store>,
    state: Mutex<State>,
    /// Serialises reads of new messages between members.
    reader: tokio::sync::Mutex<()>,
}

fn storage(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Storage(e.to_string())
}

/// What `take` hands a member.
pub(crate) struct Taken {
    pub(crate) message: Stored,
    pub(crate) delivered: u32,
}

impl Group {
    /// Loads the group, creating it at `start` when it does not exist.
    pub(crate) async fn load_or_create(
        store: Arc<Store>,
        stream: &str,
        name: &str,
        filter: &str,
        start: StartPosition,
        ack_wait: Duration,
    ) -> Result<Group, BrokerError> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT ack_floor FROM groups WHERE stream = ? AND name = ?")
                .bind(stream)
                .bind(name)
                .fetch_optional(store.pool())
                .await
                .map_err(storage)?;
        let floor = match row {
            Some((floor,)) => floor.max(0) as u64,
            None => {
                let floor = store.floor_at(stream, start).await?;
                sqlx::query(
                    "INSERT INTO groups (stream, name, filter, ack_floor) VALUES (?, ?, ?, ?)
                     ON CONFLICT (stream, name) DO NOTHING",
                )
                .bind(stream)
                .bind(name)
                .bind(filter)
                .bind(floor as i64)
                .execute(store.pool())
                .await
                .map_err(storage)?;
                floor
            }
        };
        let counts: Vec<(i64, i64)> =
            sqlx::query_as("SELECT seq, deliveries FROM redeliveries WHERE stream = ? AND grp = ?")
                .bind(stream)
                .bind(name)
                .fetch_all(store.pool())
                .await
                .map_err(storage)?;
        let state = State {
            floor,
            cursor: floor + 1,
            deliveries: counts
                .into_iter()
                .map(|(s, d)| (s as u64, u32::try_from(d).unwrap_or(u32::MAX)))
                .collect(),
            ..State::default()
        };
        Ok(Group {
            stream: stream.to_owned(),
            name: Arc::from(name),
            filter: filter.to_owned(),
            ack_wait,
            store,
            state: Mutex::new(state),
            reader: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sequences of the stream this group has settled.
    pub(crate) fn settled(&self) -> u64 {
        let st = self.lock();
        st.floor + st.settled.len() as u64
    }

    /// Marks `seq` acked (or terminated).
    pub(crate) fn settle(&self, seq: u64) {
        self.lock().settle(seq);
    }

    /// Schedules `seq` for redelivery at `at`.
    pub(crate) fn retry(&self, seq: u64, at: Instant) {
        self.lock().requeue(seq, at);
    }

    /// When `take` should next be tried even without new messages.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let st = self.lock();
        let retry = st.retry.first().map(|(t, _)| *t);
        let deadline = st.pending.values().map(|p| p.deadline).min();
        retry.into_iter().chain(deadline).min()
    }

    /// Up to `max` messages to deliver now: due redeliveries first, then new ones.
    pub(crate) async fn take(&self, max: usize) -> Result<Vec<Taken>, BrokerError> {
        let _reader = self.reader.lock().await;
        let now = Instant::now();
        let (due, cursor) = {
            let mut st = self.lock();
            let expired: Vec<u64> = st
                .pending
                .iter()
                .filter(|(_, p)| p.deadline <= now)
                .map(|(s, _)| *s)
                .collect();
            for seq in expired {
                st.requeue(seq, now);
            }
            let mut due = Vec::new();
            while due.len() < max {
                match st.retry.first().copied() {
                    Some((t, seq)) if t <= now => {
                        st.retry.pop_first();
                        // A late ack of an expired delivery settles it for good.
                        if seq > st.floor && !st.settled.contains(&seq) {
                            due.push(seq);
                        }
                    }
                    _ => break,
                }
            }
            (due, st.cursor)
        };
        let mut out = Vec::with_capacity(max);
        for seq in due {
            match self.store.read_one(&self.stream, seq).await? {
                Some(m) => out.push(self.deliver(m, now)),
                // Deleted underneath us (stream purged): nothing to redeliver.
                None => self.settle(seq),
            }
        }
        if out.len() < max {
            let want = max - out.len();
            let rows = self.store.read_from(&self.stream, cursor, want).await?;
            let mut st = self.lock();
            if st.cursor == cursor {
                for m in rows {
                    st.cursor = m.seq + 1;
                    if subject::matches(&self.filter, &m.subject) {
                        let delivered = bump(&mut st, m.seq, now + self.ack_wait);
                        out.push(Taken {
                            message: m,
                            delivered,
                        });
                    } else {
                        st.settle(m.seq);
                    }
                }
            }
        }
        Ok(out)
    }

    fn deliver(&self, m: Stored, now: Instant) -> Taken {
        let mut st = self.lock();
        let delivered = bump(&mut st, m.seq, now + self.ack_wait);
        Taken {
            message: m,
            delivered,
        }
    }

    /// Writes the ack floor and delivery counts if they changed and either
    /// `force` is set or the last write is older than 200 ms.
    pub(crate) async fn flush(&self, force: bool) -> Result<(), BrokerError> {
        let snapshot = {
            let mut st = self.lock();
            let recent = st
                .last_flush
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200));
            if !st.dirty || (recent && !force) {
                return Ok(());
            }
            st.dirty = false;
            st.last_flush = Some(Instant::now());
            let counts: Vec<(u64, u32)> = st
                .deliveries
                .iter()
                .map(|(s, d)| (*s, *d))
                .chain(
                    st.pending
                        .iter()
                        .filter(|(_, p)| p.delivered > 1)
                        .map(|(s, p)| (*s, p.delivered)),
                )
                .collect();
            (st.floor, counts)
        };
        let (floor, counts) = snapshot;
        let mut tx = self.store.pool().begin().await.map_err(storage)?;
        sqlx::query("UPDATE groups SET ack_floor = ? WHERE stream = ? AND name = ?")
            .bind(floor as i64)
            .bind(&self.stream)
            .bind(&*self.name)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        sqlx::query("DELETE FROM redeliveries WHERE stream = ? AND grp = ?")
            .bind(&self.stream)
            .bind(&*self.name)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        for (seq, d) in counts {
            sqlx::query(
                "INSERT INTO redeliveries (stream, grp, seq, deliveries) VALUES (?, ?, ?, ?)",
            )
            .bind(&self.stream)
            .bind(&*self.name)
            .bind(seq as i64)
            .bind(i64::from(d))
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        }
        tx.commit().await.map_err(storage)
    }
}

/// Records one more delivery of `seq`, pending until `deadline`.
fn bump(st: &mut State, seq: u64, deadline: Instant) -> u32 {
    let before = if st.deliveries.is_empty() {
        0
    } else {
        st.deliveries.remove(&seq).unwrap_or(0)
    };
    let delivered = before.saturating_add(1);
    st.pending.insert(
        seq,
        Pending {
            deadline,
            delivered,
        },
    );
    if delivered > 1 {
        st.dirty = true;
    }
    delivered
}
