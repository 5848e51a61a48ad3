//! The log itself: one SQLite file in WAL mode, a single writer task that
//! group-commits publishes, and readers on a small connection pool.
//!
//! Sequences are per stream and assigned inside `BEGIN IMMEDIATE`
//! transactions, so several processes may publish to one file safely.
//! `ce-id` de-duplication is permanent: a unique index on `(stream, msg_id)`
//! backs an in-memory cache of recent ids that keeps the fast path one
//! multi-row `INSERT` per 256 messages.

use std::collections::VecDeque;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt as _};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot, watch};

use super::codec;
use crate::{BrokerError, OutboundMessage, PublishAck, StartPosition, dead_letter, subject};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS streams (name TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS messages (
        stream TEXT NOT NULL, seq INTEGER NOT NULL, subject TEXT NOT NULL, msg_id TEXT,
        headers BLOB NOT NULL, payload BLOB NOT NULL, ts INTEGER NOT NULL,
        PRIMARY KEY (stream, seq)) WITHOUT ROWID",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_msg_id ON messages (stream, msg_id) WHERE msg_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS groups (
        stream TEXT NOT NULL, name TEXT NOT NULL, filter TEXT NOT NULL, ack_floor INTEGER NOT NULL,
        PRIMARY KEY (stream, name))",
    "CREATE TABLE IF NOT EXISTS redeliveries (
        stream TEXT NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL, deliveries INTEGER NOT NULL,
        PRIMARY KEY (stream, grp, seq))",
];

/// Rows per multi-row INSERT statement (7 parameters each).
const INSERT_CHUNK: usize = 256;
/// Rows a cursor's connection reads ahead of the one being decoded.
const READ_AHEAD_ROWS: usize = 4096;
/// Most messages one group commit takes.
const MAX_COMMIT: usize = 8192;
/// How many recent `(stream, ce-id)` pairs the writer remembers.
const DEDUP_CACHE: usize = 1 << 20;

/// How hard a commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: a commit survives a process crash; the
    /// last commits before a power loss or OS crash may be lost.
    #[default]
    Normal,
    /// WAL with `synchronous=FULL`: every commit is fsynced; survives power loss.
    Full,
}

/// A message as stored in the log.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) subject: String,
    pub(crate) headers: Vec<u8>,
    pub(crate) payload: Bytes,
    pub(crate) ts_micros: i64,
}

type Reply = oneshot::Sender<Vec<Result<PublishAck, BrokerError>>>;

struct WriteRequest {
    messages: Vec<OutboundMessage>,
    reply: Reply,
}

/// Handle to the log file.
pub(crate) struct Store {
    pool: SqlitePool,
    /// How the pool's connections were opened (a cursor opens its own).
    options: SqliteConnectOptions,
    writer: mpsc::Sender<WriteRequest>,
    heads: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Wakes the checkpointer (after each of the writer's commits).
    checkpoint: std::sync::Arc<tokio::sync::Notify>,
}

fn storage(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Storage(e.to_string())
}

pub(crate) fn now_micros() -> i64 {
    micros(SystemTime::now())
}

/// Microseconds from the epoch to `t` (0 before it), as the log stores times.
fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating) the log at `path`.
    pub(crate) async fn open(
        path: &Path,
        durability: Durability,
    ) -> Result<std::sync::Arc<Store>, BrokerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| storage(format!("cannot create {}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(storage)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(Duration::from_secs(10))
            // Readers map the file instead of copying pages through read();
            // a larger page cache keeps the log's recent tail in memory.
            .pragma("mmap_size", "1073741824")
            .pragma("cache_size", "-65536")
            // No connection checkpoints as it commits: the checkpointer task
            // does, beside the writer (see `checkpointer`). After a
            // checkpoint the WAL file is cut back to 64 MiB.
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", "67108864");
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| storage(format!("cannot open {}: {e}", path.display())))?;
        for stmt in SCHEMA {
            sqlx::query(*stmt)
                .execute(&mut conn)
                .await
                .map_err(storage)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .map_err(storage)?;
        let (tx, rx) = mpsc::channel(1024);
        let checkpoint = std::sync::Arc::new(tokio::sync::Notify::new());
        let store = std::sync::Arc::new(Store {
            pool,
            options,
            writer: tx,
            heads: Mutex::new(HashMap::new()),
            checkpoint: checkpoint.clone(),
        });
        tokio::spawn(writer_loop(conn, rx, std::sync::Arc::downgrade(&store)));
        tokio::spawn(checkpointer(std::sync::Arc::downgrade(&store), checkpoint));
        Ok(store)
    }

    /// The reader pool (also used for small group-state writes).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A connection of its own for reading the log once from one end to the
    /// other (a cursor): without memory-mapped reads and with a small page
    /// cache, so a reader that touches every page of a large log keeps its
    /// memory bounded (mapped pages count in the process's RSS, once per
    /// connection that maps them) and re-read pages come from the OS cache.
    pub(crate) async fn sequential_reader(&self) -> Result<SqliteConnection, BrokerError> {
        SqliteConnection::connect_with(
            &self
                .options
                .clone()
                .pragma("mmap_size", "0")
                .pragma("cache_size", "-2048")
                // A page of 16,384 rows can take over a second on a busy
                // machine; that is not a slow statement worth a warning.
                .disable_statement_logging()
                // Rows cross from SQLite's worker thread to the reader in a
                // channel; sqlx's default of 50 makes both sides stop and
                // wake each other every 50 rows of a 16,384-row page.
                .row_buffer_size(READ_AHEAD_ROWS),
        )
        .await
        .map_err(storage)
    }

    /// Publishes messages through the group-committing writer.
    pub(crate) async fn publish(
        &self,
        messages: Vec<OutboundMessage>,
    ) -> Vec<Result<PublishAck, BrokerError>> {
        let n = messages.len();
        let (reply, rx) = oneshot::channel();
        if self
            .writer
            .send(WriteRequest { messages, reply })
            .await
            .is_err()
        {
            return (0..n).map(|_| Err(BrokerError::Closed)).collect();
        }
        rx.await
            .unwrap_or_else(|_| (0..n).map(|_| Err(BrokerError::Closed)).collect())
    }

    /// A receiver that changes whenever `stream` gets new messages in this process.
    pub(crate) fn watch_head(&self, stream: &str) -> watch::Receiver<u64> {
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        heads
            .entry(stream.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn notify(&self, stream: &str, last: u64) {
        let heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = heads.get(stream) {
            tx.send_replace(last);
        }
    }

    /// The last sequence of `stream` (0 when empty).
    pub(crate) async fn last_seq(&self, stream: &str) -> Result<u64, BrokerError> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT last_seq FROM streams WHERE name = ?")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?;
        Ok(row.map_or(0, |r| r.0.max(0) as u64))
    }

    /// How many messages `stream` holds.
    pub(crate) async fn count(&self, stream: &str) -> Result<u64, BrokerError> {
        let row: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages WHERE stream = ?")
            .bind(stream)
            .fetch_one(&self.pool)
            .await
            .map_err(storage)?;
        Ok(row.0.max(0) as u64)
    }

    /// The groups of `stream` with their ack floors, by name.
    pub(crate) async fn groups(&self, stream: &str) -> Result<Vec<(String, u64)>, BrokerError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT name, ack_floor FROM groups WHERE stream = ? ORDER BY name")
                .bind(stream)
                .fetch_all(&self.pool)
                .await
                .map_err(storage)?;
        Ok(rows
            .into_iter()
            .map(|(n, f)| (n, f.max(0) as u64))
            .collect())
    }

    /// Up to `limit` messages of `stream` from `from` (inclusive), in order.
    pub(crate) async fn read_from(
        &self,
        stream: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Stored>, BrokerError> {
        let mut out = Vec::new();
        for_each_in_range(&self.pool, stream, from, limit, Pace::Prompt, |m| {
            out.push(m);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// One message by sequence.
    pub(crate) async fn read_one(
        &self,
        stream: &str,
        seq: u64,
    ) -> Result<Option<Stored>, BrokerError> {
        let row = sqlx::query(
            "SELECT seq, subject, headers, payload, ts FROM messages WHERE stream = ? AND seq = ?",
        )
        .bind(stream)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await
        .map_err(storage)?;
        row.map(stored).transpose()
    }

    /// The first sequence stored at or after `micros`, if any. Timestamps are
    /// assigned by the committing writer and so rise with the sequence, which
    /// lets this binary-search without an index on time.
    pub(crate) async fn first_seq_at(
        &self,
        stream: &str,
        micros: i64,
    ) -> Result<Option<u64>, BrokerError> {
        let (mut lo, mut hi) = (1u64, self.last_seq(stream).await?);
        let mut found = None;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let row: Option<(i64, i64)> = sqlx::query_as(
                "SELECT seq, ts FROM messages WHERE stream = ? AND seq >= ? ORDER BY seq LIMIT 1",
            )
            .bind(stream)
            .bind(i64::try_from(mid).unwrap_or(i64::MAX))
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?;
            match row {
                Some((seq, ts)) if ts >= micros => {
                    found = Some(seq as u64);
                    if mid == 0 {
                        break;
                    }
                    hi = mid - 1;
                }
                Some((seq, _)) => lo = seq as u64 + 1,
                None => break,
            }
        }
        Ok(found)
    }

    /// The sequence after which a reading of `stream` from `start` begins
    /// (0: from the first message).
    pub(crate) async fn floor_at(
        &self,
        stream: &str,
        start: StartPosition,
    ) -> Result<u64, BrokerError> {
        Ok(match start {
            StartPosition::New => self.last_seq(stream).await?,
            StartPosition::Beginning => 0,
            StartPosition::Sequence(seq) => seq.saturating_sub(1),
            StartPosition::Time(t) => match self.first_seq_at(stream, micros(t)).await? {
                Some(seq) => seq - 1,
                None => self.last_seq(stream).await?,
            },
        })
    }

    /// Deletes every message and group of `stream`.
    pub(crate) async fn delete_stream(&self, stream: &str) -> Result<(), BrokerError> {
        let mut tx = self.pool.begin().await.map_err(storage)?;
        for sql in [
            "DELETE FROM messages WHERE stream = ?",
            "DELETE FROM streams WHERE name = ?",
            "DELETE FROM groups WHERE stream = ?",
            "DELETE FROM redeliveries WHERE stream = ?",
        ] {
            sqlx::query(sql)
                .bind(stream)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
        }
        tx.commit().await.map_err(storage)
    }

    /// Stops the writer after what is queued and closes the pool.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// How a ranged read takes rows from SQLite's worker thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Each row as soon as it is read (a group's delivery: latency counts).
    Prompt,
    /// In bursts: what the row channel holds, then a pause of
    /// [`BULK_PAUSE`] while the worker fills it again, so a bulk read is not
    /// woken once per row (export, replay: throughput counts).
    Bulk,
}

/// How long a [`Pace::Bulk`] read lets SQLite's worker fill the row channel
/// when it found it empty (tokio's timer rounds up to a millisecond; the
/// channel holds [`READ_AHEAD_ROWS`]).
const BULK_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Hands `each` up to `limit` messages of `stream` from sequence `from` on,
/// read on `exec` as SQLite's worker thread steps through them, so what
/// `each` does overlaps with the reading; how many rows were read.
pub(crate) async fn for_each_in_range<'e, E>(
    exec: E,
    stream: &str,
    from: u64,
    limit: usize,
    pace: Pace,
    mut each: impl FnMut(Stored) -> Result<(), BrokerError>,
) -> Result<usize, BrokerError>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    use futures::{FutureExt as _, TryStreamExt as _};
    let mut rows = sqlx::query(
        "SELECT seq, subject, headers, payload, ts FROM messages
         WHERE stream = ? AND seq >= ? ORDER BY seq LIMIT ?",
    )
    .bind(stream)
    .bind(i64::try_from(from).unwrap_or(i64::MAX))
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch(exec);
    let mut read = 0;
    loop {
        // The first row is awaited (it starts the query); in bulk, later
        // ones are taken without registering for a wake-up, and an empty
        // channel means a pause rather than a wake-up per row.
        let next = if pace == Pace::Bulk && read > 0 {
            match rows.try_next().now_or_never() {
                Some(next) => next,
                None => {
                    tokio::time::sleep(BULK_PAUSE).await;
                    continue;
                }
            }
        } else {
            rows.try_next().await
        };
        let Some(row) = next.map_err(storage)? else {
            break;
        };
        read += 1;
        each(stored(row)?)?;
    }
    Ok(read)
}

fn stored(row: sqlx::sqlite::SqliteRow) -> Result<Stored, BrokerError> {
    Ok(Stored {
        seq: row.try_get::<i64, _>(0).map_err(storage)? as u64,
        subject: row.try_get(1).map_err(storage)?,
        headers: row.try_get(2).map_err(storage)?,
        payload: Bytes::from(row.try_get::<Vec<u8>, _>(3).map_err(storage)?),
        ts_micros: row.try_get(4).map_err(storage)?,
    })
}

/// Remembers recent `(stream, id)` pairs and their sequences.
struct DedupCache {
    map: HashMap<String, u64>,
    order: VecDeque<String>,
}

impl DedupCache {
    fn key(stream: &str, id: &str) -> String {
        let mut k = String::with_capacity(stream.len() + id.len() + 1);
        k.push_str(stream);
        k.push('\0');
        k.push_str(id);
        k
    }

    fn insert(&mut self, key: String, seq: u64) {
        if self.order.len() >= DEDUP_CACHE
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.order.push_back(key.clone());
        self.map.insert(key, seq);
    }
}

/// What a fast commit builds, kept by the writer from one commit to the
/// next so its memory is reused: allocated afresh, a large commit's vectors
/// were fresh pages the kernel zeroes (page faults were ~9 % of an import).
#[derive(Default)]
struct Scratch {
    rows: Vec<NewRow>,
    /// `(stream, id)` keys of the batch and their sequences.
    batch_ids: HashMap<String, u64>,
}

/// One row to insert.
struct NewRow {
    stream: String,
    seq: u64,
    index: usize,
    msg_id: Option<String>,
}

async fn writer_loop(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<WriteRequest>,
    store: std::sync::Weak<Store>,
) {
    let mut cache = DedupCache {
        map: HashMap::new(),
        order: VecDeque::new(),
    };
    let mut scratch = Scratch::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut count = batch[0].messages.len();
        while count < MAX_COMMIT {
            match rx.try_recv() {
                Ok(req) => {
                    count += req.messages.len();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        let messages: Vec<&OutboundMessage> =
            batch.iter().flat_map(|r| r.messages.iter()).collect();
        let results = match commit_fast(&mut conn, &messages, &mut cache, &mut scratch).await {
            Ok(Some(results)) => Ok(results),
            Ok(None) => commit_slow(&mut conn, &messages, &mut cache).await,
            Err(e) => Err(e),
        };
        let mut results = match results {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "embedded log commit failed");
                messages
                    .iter()
                    .map(|_| Err(BrokerError::Storage(e.to_string())))
                    .collect()
            }
        };
        if let Some(store) = store.upgrade() {
            store.checkpoint.notify_one();
            let mut heads: HashMap<&str, u64> = HashMap::new();
            for (m, r) in messages.iter().zip(&results) {
                if let Ok(PublishAck {
                    sequence: Some(s),
                    duplicate: false,
                }) = r
                {
                    let e = heads.entry(subject::stream_key(&m.subject)).or_default();
                    *e = (*e).max(*s);
                }
            }
            for (stream, last) in heads {
                store.notify(stream, last);
            }
        }
        for req in batch {
            let rest = results.split_off(req.messages.len());
            let _ = req.reply.send(results);
            results = rest;
        }
    }
    let _ = conn.close().await;
}

/// How long the checkpointer waits after a checkpoint before the next, so
/// one checkpoint covers the commits of that time.
const CHECKPOINT_GAP: Duration = Duration::from_millis(100);
/// How often the checkpointer runs without commits of the writer (the
/// pool's small writes of group state).
const CHECKPOINT_IDLE: Duration = Duration::from_secs(5);

/// Copies the WAL's committed pages into the database file, on a pool
/// connection, while the writer goes on committing: SQLite's automatic
/// checkpoint would run inside the commit that crosses 1,000 pages and stop
/// every publish queued behind it (over a second for a large WAL on a busy
/// disk). A passive checkpoint waits for nobody; the WAL starts over once a
/// checkpoint has caught up. Ends when the store is dropped.
async fn checkpointer(store: std::sync::Weak<Store>, wake: std::sync::Arc<tokio::sync::Notify>) {
    loop {
        let _ = tokio::time::timeout(CHECKPOINT_IDLE, wake.notified()).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        if store.pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&store.pool)
            .await
        {
            tracing::debug!(error = %e, "embedded log checkpoint failed; the next one retries");
        }
        drop(store);
        tokio::time::sleep(CHECKPOINT_GAP).await;
    }
}

/// The de-duplication id of a message: `ce-id`, or for dead letters one that
/// also names the group.
fn msg_id(m: &OutboundMessage) -> Option<String> {
    dead_letter::dedup_key(&m.headers)
}

async fn last_seqs(
    conn: &mut SqliteConnection,
    messages: &[&OutboundMessage],
) -> Result<HashMap<String, u64>, BrokerError> {
    let mut last = HashMap::new();
    for m in messages {
        let key = subject::stream_key(&m.subject);
        if !last.contains_key(key) {
            let row: Option<(i64,)> = sqlx::query_as("SELECT last_seq FROM streams WHERE name = ?")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await
                .map_err(storage)?;
            last.insert(key.to_owned(), row.map_or(0, |r| r.0.max(0) as u64));
        }
    }
    Ok(last)
}

async fn save_last_seqs(
    conn: &mut SqliteConnection,
    last: &HashMap<String, u64>,
) -> Result<(), BrokerError> {
    for (stream, seq) in last {
        sqlx::query(
            "INSERT INTO streams (name, last_seq) VALUES (?, ?)
             ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq",
        )
        .bind(stream)
        .bind(*seq as i64)
        .execute(&mut *conn)
        .await
        .map_err(storage)?;
    }
    Ok(())
}

/// The common case: ids the cache does not know are new. Returns `None`
/// (after rolling back) when the unique index says otherwise.
async fn commit_fast(
    conn: &mut SqliteConnection,
    messages: &[&OutboundMessage],
    cache: &mut DedupCache,
    scratch: &mut Scratch,
) -> Result<Option<Vec<Result<PublishAck, BrokerError>>>, BrokerError> {
    let Scratch { rows, batch_ids } = scratch;
    rows.clear();
    batch_ids.clear();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(storage)?;
    let outcome = async {
        let mut last = last_seqs(conn, messages).await?;
        let mut results = Vec::with_capacity(messages.len());
        for (index, m) in messages.iter().enumerate() {
            if let Err(e) = subject::validate_subject(&m.subject) {
                results.push(Err(e));
                continue;
            }
            let stream = subject::stream_key(&m.subject).to_owned();
            let id = msg_id(m);
            if let Some(id) = &id {
                let key = DedupCache::key(&stream, id);
                if let Some(seq) = cache.map.get(&key).or_else(|| batch_ids.get(&key)) {
                    results.push(Ok(PublishAck {
                        sequence: Some(*seq),
                        duplicate: true,
                    }));
                    continue;
                }
            }
            let seq = last.get(&stream).copied().unwrap_or(0) + 1;
            last.insert(stream.clone(), seq);
            if let Some(id) = &id {
                batch_ids.insert(DedupCache::key(&stream, id), seq);
            }
            results.push(Ok(PublishAck {
                sequence: Some(seq),
                duplicate: false,
            }));
            rows.push(NewRow {
                stream,
                seq,
                index,
                msg_id: id,
            });
        }
        let ts = now_micros();
        let mut chunks = rows.chunks(INSERT_CHUNK);
        let mut next = chunks.next().map(|c| insert(c, messages, ts));
        while let Some((q, len)) = next.take() {
            // The next chunk's statement is built (headers encoded, values
            // copied) while SQLite's worker thread inserts this one.
            let (done, following) = futures::join!(q.execute(&mut *conn), async {
                chunks.next().map(|c| insert(c, messages, ts))
            });
            if done.map_err(storage)?.rows_affected() != len as u64 {
                return Ok(None);
            }
            next = following;
        }
        save_last_seqs(conn, &last).await?;
        Ok(Some(results))
    }
    .await;
    match outcome {
        Ok(Some(results)) => {
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map_err(storage)?;
            for (k, seq) in batch_ids.drain() {
                cache.insert(k, seq);
            }
            Ok(Some(results))
        }
        Ok(None) => {
            sqlx::query("ROLLBACK")
                .execute(&mut *conn)
                .await
                .map_err(storage)?;
            Ok(None)
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// The multi-row insert of `rows` (of `messages`) and how many rows it has.
fn insert<'q>(
    rows: &[NewRow],
    messages: &[&OutboundMessage],
    ts: i64,
) -> (
    sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    usize,
) {
    let mut q = sqlx::query(AssertSqlSafe(insert_sql(rows.len())));
    for r in rows {
        let m = messages[r.index];
        q = q
            .bind(r.stream.clone())
            .bind(r.seq as i64)
            .bind(m.subject.clone())
            .bind(r.msg_id.clone())
            .bind(codec::encode(&m.headers))
            .bind(m.payload.to_vec())
            .bind(ts);
    }
    (q, rows.len())
}

fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO messages (stream, seq, subject, msg_id, headers, payload, ts) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?)");
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// Row by row, asking the index about every id (after a conflict the cache
/// did not foresee: another process published it, or it aged out).
async fn commit_slow(
    conn: &mut SqliteConnection,
    messages: &[&OutboundMessage],
    cache: &mut DedupCache,
) -> Result<Vec<Result<PublishAck, BrokerError>>, BrokerError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(storage)?;
    let mut last = last_seqs(&mut tx, messages).await?;
    let mut results = Vec::with_capacity(messages.len());
    let mut ids = Vec::new();
    let ts = now_micros();
    for m in messages {
        if let Err(e) = subject::validate_subject(&m.subject) {
            results.push(Err(e));
            continue;
        }
        let stream = subject::stream_key(&m.subject).to_owned();
        let id = msg_id(m);
        if let Some(id) = &id {
            let existing: Option<(i64,)> =
                sqlx::query_as("SELECT seq FROM messages WHERE stream = ? AND msg_id = ?")
                    .bind(&stream)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(storage)?;
            if let Some((seq,)) = existing {
                results.push(Ok(PublishAck {
                    sequence: Some(seq as u64),
                    duplicate: true,
                }));
                continue;
            }
        }
        let seq = last.get(&stream).copied().unwrap_or(0) + 1;
        last.insert(stream.clone(), seq);
        sqlx::query(AssertSqlSafe(insert_sql(1)))
            .bind(&stream)
            .bind(seq as i64)
            .bind(&m.subject)
            .bind(&id)
            .bind(codec::encode(&m.headers))
            .bind(m.payload.to_vec())
            .bind(ts)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        if let Some(id) = id {
            ids.push((DedupCache::key(&stream, &id), seq));
        }
        results.push(Ok(PublishAck {
            sequence: Some(seq),
            duplicate: false,
        }));
    }
    save_last_seqs(&mut tx, &last).await?;
    tx.commit().await.map_err(storage)?;
    for (k, seq) in ids {
        cache.insert(k, seq);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    async fn pragma(conn: &mut SqliteConnection, name: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!("PRAGMA {name}")))
            .fetch_one(conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_sequential_reader_reads_without_mapping_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("log.db"), Durability::Normal)
            .await
            .unwrap();
        let mut pooled = store.pool().acquire().await.unwrap();
        assert_eq!(pragma(&mut pooled, "mmap_size").await, 1 << 30);
        drop(pooled);
        let mut reader = store.sequential_reader().await.unwrap();
        assert_eq!(pragma(&mut reader, "mmap_size").await, 0);
        assert_eq!(pragma(&mut reader, "cache_size").await, -2048);
        // It sees the log as the pool does.
        let acks = store
            .publish(vec![OutboundMessage::new(
                "a.b",
                sluice_proto::Headers::new(),
                Bytes::from_static(b"x"),
            )])
            .await;
        assert!(acks[0].is_ok(), "{acks:?}");
        let mut rows = Vec::new();
        for_each_in_range(&mut reader, "a", 1, 10, Pace::Bulk, |m| {
            rows.push(m);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].subject, "a.b");
    }

    #[tokio::test]
    async fn commits_do_not_checkpoint_and_the_checkpointer_does_while_the_log_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let store = Store::open(&path, Durability::Normal).await.unwrap();
        let mut pooled = store.pool().acquire().await.unwrap();
        assert_eq!(pragma(&mut pooled, "wal_autocheckpoint").await, 0);
        assert_eq!(pragma(&mut pooled, "journal_size_limit").await, 64 << 20);
        drop(pooled);
        let before = std::fs::metadata(&path).unwrap().len();
        // 4 MiB of events: the WAL crosses SQLite's automatic checkpoint
        // (1,000 pages) several times over; a single batch is one commit.
        for batch in 0..4 {
            let messages = (0..1024)
                .map(|i| {
                    let mut headers = sluice_proto::Headers::new();
                    headers.insert("ce-id", format!("{batch}-{i}"));
                    OutboundMessage::new("a.b", headers, Bytes::from(vec![7u8; 1024]))
                })
                .collect();
            assert!(store.publish(messages).await.iter().all(Result::is_ok));
        }
        // Pages reach the database file only through a checkpoint.
        let started = std::time::Instant::now();
        while std::fs::metadata(&path).unwrap().len() < before + (4 << 20) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no checkpoint: the file stayed at {} bytes",
                std::fs::metadata(&path).unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.count("a").await.unwrap(), 4096);
    }
}
