//! Rebuilding a read model from the log without downtime.
//!
//! [`replay`] builds the projection into a *shadow* — a SQLite file beside
//! the live one, or a schema of its own in the same PostgreSQL database —
//! until it has caught up with the log. Then, in one transaction of the
//! live database, it swaps the rows in: the live tables get the shadow's
//! rows and the live projection's checkpoint the shadow's, with what the
//! live consumer (which kept running) must skip because the new rows
//! already contain it. Readers see the old model or the new one, never a
//! mix; the live projection's writes wait for the swap.
//!
//! What to skip is told one of two ways:
//! - **A watermark.** A one-filter projection read through a cursor of a
//!   log that keeps each id once (the embedded log) gets every event once,
//!   in order: the shadow applies without an inbox, and the swap leaves
//!   the sequence (and log time) of the last event read in the live
//!   checkpoint. The live projection skips deliveries at or below it.
//! - **The inbox.** Otherwise (NATS, whose de-duplication has a window;
//!   RabbitMQ, read through a consumer group; several filters; a replay of
//!   a file, whose sequences are not the live log's) the shadow records
//!   each event's id in an inbox, and the swap copies those ids into the
//!   live projection's inbox.
//!
//! Before swapping, the transaction checks that every event the live
//! projection applied since the replay began is in the shadow too (with a
//! watermark: that the live checkpoint has not moved past it); if the live
//! one got ahead, the shadow catches up again and the swap is retried.
//!
//! The digest ([`digest`]) is a SHA-256 over the model's rows in key order,
//! of the columns the events determine: an order's `created_at` and
//! `version` are left out (the edge writes them for orders it takes before
//! the events exist).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::MigratorTrait;
use sluice_broker::{Broker, StartPosition};
use sluice_kit::{KitConfig, Projection, Service};

use crate::{Subjects, cache, migration};

/// A column of a read-model table, as the digest reads it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Int,
    Bool,
}

/// A table of a projection: its name, key and digested columns.
struct Table {
    name: &'static str,
    key: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// Indexes only the edge's reads use, never the projection's handlers:
    /// the shadow is built without them (nothing reads it by them, and each
    /// is one more B-tree written per event); the live table keeps them.
    read_indexes: &'static [&'static str],
}

const ORDERS: Table = Table {
    name: "orders",
    key: "id",
    columns: &[
        ("id", Kind::Text),
        ("customer_id", Kind::Text),
        ("status", Kind::Text),
        ("step", Kind::Text),
        ("items", Kind::Text),
        ("total_cents", Kind::Int),
        ("currency", Kind::Text),
        ("reason", Kind::Text),
        ("updated_at", Kind::Int),
    ],
    read_indexes: &["edge_orders_by_customer"],
};

const PRODUCTS: Table = Table {
    name: "products",
    key: "id",
    columns: &[
        ("id", Kind::Text),
        ("sku", Kind::Text),
        ("name", Kind::Text),
        ("price_cents", Kind::Int),
        ("currency", Kind::Text),
        ("stock", Kind::Int),
        ("updated_at", Kind::Int),
    ],
    read_indexes: &[],
};

const PRODUCT_IMAGES: Table = Table {
    name: "product_images",
    key: "image_id",
    columns: &[
        ("image_id", Kind::Text),
        ("product_id", Kind::Text),
        ("key", Kind::Text),
        ("content_type", Kind::Text),
        ("width", Kind::Int),
        ("height", Kind::Int),
        ("size_bytes", Kind::Int),
        ("thumbnails", Kind::Text),
        ("status", Kind::Text),
        ("created_at", Kind::Int),
    ],
    // Deleting a product deletes its images by product id.
    read_indexes: &[],
};

const API_KEYS: Table = Table {
    name: "api_keys",
    key: "key_id",
    columns: &[
        ("key_id", Kind::Text),
        ("account_id", Kind::Text),
        ("scopes", Kind::Text),
        ("key_hash", Kind::Text),
        ("revoked", Kind::Bool),
    ],
    read_indexes: &[],
};

/// Rows per query of [`digest`].
const DIGEST_PAGE: usize = 5000;

/// The tables of projection `name`, parents first.
fn tables(name: &str) -> Result<&'static [Table], ReplayError> {
    const P: &[Table] = &[PRODUCTS, PRODUCT_IMAGES];
    const O: &[Table] = &[ORDERS];
    const K: &[Table] = &[API_KEYS];
    match name {
        "edge-products" => Ok(P),
        "edge-orders" => Ok(O),
        "edge-apikeys" => Ok(K),
        other => Err(ReplayError::Unknown(other.to_owned())),
    }
}

/// The projection's full name: `orders` is `edge-orders`.
pub fn projection_name(name: &str) -> String {
    if name.starts_with("edge-") {
        name.to_owned()
    } else {
        format!("edge-{name}")
    }
}

/// Why a replay failed (the live model is then unchanged).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No projection of the edge has that name.
    #[error("the edge has no projection {0:?} (it has {list})", list = crate::PROJECTIONS.join(", "))]
    Unknown(String),
    /// A database failed.
    #[error("{what}: {source}")]
    Db {
        /// What was being done.
        what: &'static str,
        /// The database's error.
        source: sea_orm::DbErr,
    },
    /// The shadow's consumer could not run.
    #[error("the shadow projection could not run: {0}")]
    Consumer(String),
    /// The broker failed.
    #[error("the broker failed: {0}")]
    Broker(#[from] sluice_broker::BrokerError),
    /// The live projection kept getting ahead of the shadow.
    #[error("the live projection stayed ahead of the shadow after {0} attempts; try again")]
    Overtaken(u32),
    /// The shadow's file could not be handled.
    #[error("the shadow database {path}: {reason}")]
    Shadow {
        /// Its path.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

fn db(what: &'static str) -> impl FnOnce(sea_orm::DbErr) -> ReplayError {
    move |source| ReplayError::Db { what, source }
}

/// How to replay.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Where the shadow's consumer group starts.
    pub start: StartPosition,
    /// Check before the swap that the shadow holds every event the live
    /// projection applied meanwhile (off when replaying a file, whose
    /// events are not the live log's).
    pub check_live: bool,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    /// The projection.
    pub projection: String,
    /// Events the shadow applied.
    pub events: i64,
    /// Rows of the rebuilt model (all its tables).
    pub rows: u64,
    /// The digest of the live model just before the swap.
    pub digest_before: String,
    /// The digest of the rebuilt model (now live).
    pub digest: String,
    /// Seconds spent building the shadow until it caught up.
    pub build_seconds: f64,
    /// Seconds the swap's transaction took.
    pub swap_seconds: f64,
    /// Swap attempts (more than one when the live projection got ahead).
    pub attempts: u32,
}

/// The shadow database and how the live connection names it.
struct Shadow {
    db: DatabaseConnection,
    /// The schema name in SQL on the live connection (`replay`, `"replay_…"`).
    schema: String,
    /// A SQLite shadow's file, removed afterwards.
    file: Option<String>,
}

/// Rebuilds projection `name` of the edge whose database is `live` (opened
/// with [`sluice_kit::db::open`]; a SQLite one must have a connection of its
/// own, as the shadow is attached to it) from `broker`, and swaps it in.
/// `progress` is called with the number of events applied so far.
///
/// # Errors
/// See [`ReplayError`]; the live model is unchanged on every error.
pub async fn replay(
    broker: Arc<dyn Broker>,
    live: &DatabaseConnection,
    config: &KitConfig,
    subjects: &Subjects,
    name: &str,
    options: ReplayOptions,
    progress: &(dyn Fn(i64) + Sync),
) -> Result<ReplayReport, ReplayError> {
    let tables = tables(name)?;
    migration::Migrator::up(live, None)
        .await
        .map_err(db("migrating the live database"))?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let shadow_name = format!("{name}-replay-{}", &id[id.len() - 12..]);
    let shadow = Shadow::create(live, &id, tables).await?;
    let result = build_and_swap(
        &broker,
        live,
        &shadow,
        config,
        subjects,
        (name, &shadow_name, tables),
        options,
        progress,
    )
    .await;
    for filter in model(subjects, config, name, &shadow_name, options.start)?.filters() {
        if let Err(e) = broker.delete_group(&filter, &shadow_name).await {
            tracing::warn!(error = %e, group = shadow_name, "could not delete the replay's consumer group");
        }
    }
    shadow.drop_from(live).await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn build_and_swap(
    broker: &Arc<dyn Broker>,
    live: &DatabaseConnection,
    shadow: &Shadow,
    config: &KitConfig,
    subjects: &Subjects,
    (name, shadow_name, tables): (&str, &str, &[Table]),
    options: ReplayOptions,
    progress: &(dyn Fn(i64) + Sync),
) -> Result<ReplayReport, ReplayError> {
    let began = sluice_kit::db::now_micros();
    let started = Instant::now();
    let filters = model(subjects, config, name, shadow_name, options.start)?.filters();
    // One filter: read the log here and apply it in large transactions.
    // Several (e.g. the catalogue's, from three domains): the kit's
    // consumer interleaves them as the live projection does.
    let mut direct = match filters.as_slice() {
        [filter] => Some(
            Direct::start(
                broker,
                shadow,
                model(subjects, config, name, shadow_name, options.start)?,
                shadow_name,
                filter,
                options,
            )
            .await?,
        ),
        _ => None,
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        if let Some(d) = direct.as_mut() {
            d.catch_up(&**broker, shadow_name, progress).await?;
        } else {
            let service = Service::new("edge-replay", broker.clone(), shadow.db.clone())
                .relay(None)
                .inbox_retention(None);
            let running = match model(subjects, config, name, shadow_name, options.start)? {
                Model::Plain(p) => service.projection(p),
                Model::Orders(p) => service.projection(p),
            }
            .start()
            .await
            .map_err(|e| ReplayError::Consumer(e.to_string()))?;
            let caught_up = catch_up(&**broker, &shadow.db, &filters, shadow_name, progress).await;
            running.stop().await;
            caught_up?;
        }
        let build_seconds = started.elapsed().as_secs_f64();
        // The rebuilt model's digest, read from the shadow before the swap
        // locks the live tables: the swap copies its rows as they are, so
        // it is the live model's digest after the swap, and the lock is not
        // held while every row is read and hashed.
        shadow.attach(live).await?;
        let digest = digest_in(live, &shadow.schema, tables).await?;
        let swap_started = Instant::now();
        let watermark = direct.as_ref().and_then(Direct::watermark);
        match swap(
            live,
            shadow,
            tables,
            (name, shadow_name),
            options.check_live.then_some(began),
            watermark,
        )
        .await?
        {
            Some((digest_before, rows, events)) => {
                progress(events);
                if let Some(d) = direct {
                    d.close().await;
                }
                return Ok(ReplayReport {
                    projection: name.to_owned(),
                    events,
                    rows,
                    digest_before,
                    digest,
                    build_seconds,
                    swap_seconds: swap_started.elapsed().as_secs_f64(),
                    attempts,
                });
            }
            None if attempts >= 10 => return Err(ReplayError::Overtaken(attempts)),
            None => tracing::info!(attempts, "the live projection got ahead; catching up again"),
        }
    }
}

fn unused_cache() -> crate::project::OrdersState {
    Arc::new(cache::RowCache::new(Duration::ZERO, 1))
}

/// A replay reads a backlog: deep prefetch and large waves (one transaction
/// each), few workers (SQLite has one writer anyway).
fn for_replay(o: &mut sluice_kit::ConsumerOptions) {
    o.prefetch = 4096;
    o.max_in_flight = 8192;
    o.max_wave = 2048;
    o.concurrency = o.concurrency.min(2);
}

/// One of the edge's projections (their states differ in type).
enum Model {
    Plain(Projection<()>),
    Orders(Projection<crate::project::OrdersState>),
}

impl Model {
    fn filters(&self) -> Vec<String> {
        match self {
            Model::Plain(p) => p.filters(),
            Model::Orders(p) => p.filters(),
        }
    }
}

/// Projection `name` of the edge as the shadow runs it: renamed, starting
/// at `start`, tuned for a backlog.
fn model(
    subjects: &Subjects,
    config: &KitConfig,
    name: &str,
    shadow_name: &str,
    start: StartPosition,
) -> Result<Model, ReplayError> {
    let plain =
        |p: Projection<()>| Model::Plain(p.renamed(shadow_name).start_at(start).tune(for_replay));
    Ok(match name {
        "edge-products" => plain(crate::products_projection(subjects, config)),
        "edge-apikeys" => plain(crate::api_keys_projection(subjects, config)),
        "edge-orders" => Model::Orders(
            crate::orders_projection(subjects, config, unused_cache())
                .renamed(shadow_name)
                .start_at(start)
                .tune(for_replay),
        ),
        other => return Err(ReplayError::Unknown(other.to_owned())),
    })
}

/// One of the edge's projections, applying into the shadow directly.
enum AnyApplier {
    Unit(sluice_kit::Applier<()>),
    Orders(sluice_kit::Applier<crate::project::OrdersState>),
}

/// A replay of a one-filter projection that reads the log itself.
struct Direct {
    applier: Arc<AnyApplier>,
    source: Source,
    events: i64,
    /// Whether the shadow applies without an inbox, leaving the live
    /// projection a watermark instead (see [`Direct::watermark`]).
    in_order: bool,
    /// The stream sequence and log time (µs) of the last message read.
    last: Option<(i64, Option<i64>)>,
}

/// Where a direct replay reads the log.
enum Source {
    /// A ranged read outside any group (the backend has one).
    Cursor(Box<dyn sluice_broker::LogCursor>),
    /// The replay's own consumer group on `filter`.
    Group {
        subscription: sluice_broker::Subscription,
        filter: String,
    },
}

/// Events per transaction of a direct replay.
const DIRECT_BATCH: usize = 16384;

impl Direct {
    async fn start(
        broker: &Arc<dyn Broker>,
        shadow: &Shadow,
        model: Model,
        shadow_name: &str,
        filter: &str,
        options: ReplayOptions,
    ) -> Result<Self, ReplayError> {
        let source = match broker.cursor(filter, options.start).await? {
            Some(cursor) => Source::Cursor(cursor),
            None => {
                let options = sluice_broker::SubscribeOptions::new(shadow_name, filter)
                    .start(options.start)
                    .prefetch(2 * DIRECT_BATCH)
                    .ack_wait(Duration::from_secs(600))
                    .max_deliveries(1000);
                Source::Group {
                    subscription: broker.subscribe(options).await?,
                    filter: filter.to_owned(),
                }
            }
        };
        // A cursor over a log that keeps each id once hands every event
        // over once, in order: the shadow needs no inbox, and the live
        // projection learns what the rebuilt model holds from a watermark
        // (the live log's sequences: not for a replay of a file).
        let in_order = options.check_live && matches!(&source, Source::Cursor(c) if c.unique_ids());
        let db = shadow.db.clone();
        let applier = match model {
            Model::Plain(p) if in_order => AnyApplier::Unit(p.into_applier(db).in_order()),
            Model::Plain(p) => AnyApplier::Unit(p.into_applier(db)),
            Model::Orders(p) if in_order => AnyApplier::Orders(p.into_applier(db).in_order()),
            Model::Orders(p) => AnyApplier::Orders(p.into_applier(db)),
        };
        Ok(Self {
            applier: Arc::new(applier),
            source,
            events: 0,
            in_order,
            last: None,
        })
    }

    /// The watermark the swap leaves the live projection when the shadow
    /// applied without an inbox: the sequence and log time of the last
    /// event read (every event up to it is in the rebuilt model). `None`
    /// when the shadow kept an inbox, or read nothing.
    fn watermark(&self) -> Option<Watermark> {
        let (to, until) = self.last.filter(|_| self.in_order)?;
        Some(Watermark { to, until })
    }

    /// Applies what the log holds until the cursor is at its end or the
    /// group's lag is 0. Reading the next batch overlaps with applying the
    /// one before.
    async fn catch_up(
        &mut self,
        broker: &dyn Broker,
        group: &str,
        progress: &(dyn Fn(i64) + Sync),
    ) -> Result<(), ReplayError> {
        let mut applying: Option<Applying> = None;
        loop {
            let batch = self.read_batch().await?;
            if let Some(previous) = applying.take() {
                self.settle(previous, progress).await?;
            }
            if batch.is_empty() {
                let at_end = match &self.source {
                    Source::Cursor(_) => true,
                    Source::Group { filter, .. } => broker.lag(filter, group).await? == Some(0),
                };
                if at_end {
                    return Ok(());
                }
                continue;
            }
            let applier = self.applier.clone();
            let task = tokio::spawn(async move {
                match &*applier {
                    AnyApplier::Unit(a) => a.apply(batch).await,
                    AnyApplier::Orders(a) => a.apply(batch).await,
                }
            });
            applying = Some(task);
        }
    }

    /// Up to [`DIRECT_BATCH`] messages: empty when the cursor is at the
    /// log's end or no delivery came for 100 ms.
    async fn read_batch(&mut self) -> Result<Vec<sluice_broker::InboundMessage>, ReplayError> {
        use futures::FutureExt;
        let subscription = match &mut self.source {
            Source::Cursor(cursor) => {
                let batch = cursor.next_batch(DIRECT_BATCH).await?;
                if let Some(m) = batch.last()
                    && let Some(sequence) = m.sequence.and_then(|s| i64::try_from(s).ok())
                {
                    self.last = Some((sequence, m.timestamp.and_then(sluice_kit::db::micros)));
                }
                return Ok(batch);
            }
            Source::Group { subscription, .. } => subscription,
        };
        let mut batch = Vec::with_capacity(DIRECT_BATCH);
        match tokio::time::timeout(Duration::from_millis(100), subscription.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => return Err(sluice_broker::BrokerError::Closed.into()),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(d))) => batch.push(d),
        }
        while batch.len() < DIRECT_BATCH {
            match subscription.next().now_or_never() {
                Some(Some(Ok(d))) => batch.push(d),
                _ => break,
            }
        }
        // Acked before they are applied: the group is this replay's alone,
        // and a replay that fails is started over, never resumed.
        let mut messages = Vec::with_capacity(batch.len());
        for mut d in batch {
            messages.push(std::mem::replace(&mut d.message, placeholder()));
            if let Err(e) = d.ack().await {
                tracing::debug!(error = %e, "replay ack failed; the event comes again and is skipped");
            }
        }
        Ok(messages)
    }

    /// Stops reading.
    async fn close(self) {
        if let Source::Group { subscription, .. } = self.source {
            subscription.close().await;
        }
    }

    /// Waits for a batch's transaction.
    async fn settle(
        &mut self,
        task: Applying,
        progress: &(dyn Fn(i64) + Sync),
    ) -> Result<(), ReplayError> {
        let applied = task
            .await
            .map_err(|e| ReplayError::Consumer(e.to_string()))?
            .map_err(|e| ReplayError::Consumer(e.to_string()))?;
        for (event, reason) in &applied.skipped {
            tracing::warn!(event, reason, "replay left an event out");
        }
        self.events += i64::try_from(applied.applied).unwrap_or(i64::MAX);
        progress(self.events);
        Ok(())
    }
}

/// What the rebuilt model holds of the live log, for a shadow built
/// without an inbox: every event of the stream up to sequence `to`,
/// published up to `until` (µs).
#[derive(Debug, Clone, Copy)]
struct Watermark {
    to: i64,
    until: Option<i64>,
}

/// A batch being applied.
type Applying = tokio::task::JoinHandle<Result<sluice_kit::Applied, sluice_kit::HandlerError>>;

/// What is left of a delivery whose message was taken.
fn placeholder() -> sluice_broker::InboundMessage {
    sluice_broker::InboundMessage {
        subject: String::new(),
        headers: sluice_broker::Headers::new(),
        payload: Default::default(),
        sequence: None,
        delivered: 0,
        timestamp: None,
    }
}

/// Waits until the shadow's group has nothing left on every filter.
async fn catch_up(
    broker: &dyn Broker,
    shadow: &DatabaseConnection,
    filters: &[String],
    shadow_name: &str,
    progress: &(dyn Fn(i64) + Sync),
) -> Result<(), ReplayError> {
    loop {
        let mut done = true;
        for f in filters {
            if broker.lag(f, shadow_name).await? != Some(0) {
                done = false;
                break;
            }
        }
        if let Ok(Some(c)) = sluice_kit::router::checkpoint(shadow, shadow_name).await {
            progress(c.events);
        }
        if done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The swap, in one transaction of the live database: the live model's
/// digest before it, the rows copied and the events the shadow applied.
/// `None` when the live projection applied an event since `check_since`
/// that the shadow lacks.
///
/// What the live projection then skips: with a `watermark`, every event at
/// or below it (set in its checkpoint); without, the ids in the shadow's
/// inbox (copied into the live one).
async fn swap(
    live: &DatabaseConnection,
    shadow: &Shadow,
    tables: &[Table],
    (name, shadow_name): (&str, &str),
    check_since: Option<i64>,
    watermark: Option<Watermark>,
) -> Result<Option<(String, u64, i64)>, ReplayError> {
    let backend = live.get_database_backend();
    let l = live_schema(live).await?;
    let s = &shadow.schema;
    let stmt = |sql: String, values: Vec<sea_orm::Value>| {
        Statement::from_sql_and_values(backend, sql, values)
    };
    let txn = live.begin().await.map_err(db("starting the swap"))?;
    // Take the write lock first: the live projection's writes wait for the
    // swap (readers do not).
    let lock = match backend {
        DbBackend::Postgres => {
            let mut names = vec![
                format!("{l}.sluice_inbox"),
                format!("{l}.sluice_checkpoint"),
            ];
            names.extend(tables.iter().map(|t| format!("{l}.{}", t.name)));
            format!("LOCK TABLE {} IN EXCLUSIVE MODE", names.join(", "))
        }
        _ => format!("DELETE FROM {l}.sluice_checkpoint WHERE 1 = 0"),
    };
    txn.execute_unprepared(&lock)
        .await
        .map_err(db("locking the live tables"))?;
    if let Some(since) = check_since {
        let ahead = match watermark {
            // The shadow holds every event up to the watermark: the live
            // projection got ahead if it applied one past it meanwhile.
            Some(w) => {
                let sql = format!(
                    "SELECT COUNT(*) AS n FROM {l}.sluice_checkpoint WHERE consumer = $1 \
                     AND updated_at >= $2 AND position > $3"
                );
                count(
                    &txn,
                    stmt(sql, vec![name.into(), since.into(), w.to.into()]),
                )
                .await?
            }
            None => {
                let sql = format!(
                    "SELECT COUNT(*) AS n FROM {l}.sluice_inbox li WHERE li.consumer = $1 AND li.handled_at >= $2 \
                     AND NOT EXISTS (SELECT 1 FROM {s}.sluice_inbox si WHERE si.consumer = $3 AND si.event_id = li.event_id)"
                );
                count(
                    &txn,
                    stmt(sql, vec![name.into(), since.into(), shadow_name.into()]),
                )
                .await?
            }
        };
        if ahead > 0 {
            txn.rollback().await.map_err(db("rolling back the swap"))?;
            return Ok(None);
        }
    }
    let before = digest_in(&txn, &l, tables).await?;
    for t in tables.iter().rev() {
        txn.execute_unprepared(&format!("DELETE FROM {l}.{}", t.name))
            .await
            .map_err(db("emptying the live tables"))?;
    }
    let mut rows = 0;
    for t in tables {
        rows += txn
            .execute_unprepared(&format!(
                "INSERT INTO {l}.{0} SELECT * FROM {s}.{0}",
                t.name
            ))
            .await
            .map_err(db("copying the rebuilt rows"))?
            .rows_affected();
    }
    if watermark.is_none() {
        txn.execute_raw(stmt(
            format!(
                "INSERT INTO {l}.sluice_inbox (consumer, event_id, handled_at) \
                 SELECT $1, event_id, handled_at FROM {s}.sluice_inbox WHERE consumer = $2 \
                 ON CONFLICT DO NOTHING"
            ),
            vec![name.into(), shadow_name.into()],
        ))
        .await
        .map_err(db("recording the applied events in the live inbox"))?;
    }
    let events = match sluice_kit::router::checkpoint(&shadow.db, shadow_name)
        .await
        .map_err(db("reading the shadow's checkpoint"))?
    {
        Some(c) => {
            txn.execute_raw(stmt(
                format!(
                    "INSERT INTO {l}.sluice_checkpoint (consumer, position, events, updated_at, replayed_to, replayed_until) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (consumer) DO UPDATE SET position = excluded.position, events = excluded.events, \
                     updated_at = excluded.updated_at, replayed_to = excluded.replayed_to, replayed_until = excluded.replayed_until"
                ),
                vec![
                    name.into(),
                    c.position.into(),
                    c.events.into(),
                    sluice_kit::db::now_micros().into(),
                    watermark.map(|w| w.to).into(),
                    watermark.and_then(|w| w.until).into(),
                ],
            ))
            .await
            .map_err(db("setting the live checkpoint"))?;
            c.events
        }
        None => 0,
    };
    txn.commit().await.map_err(db("committing the swap"))?;
    Ok(Some((before, rows, events)))
}

async fn count(conn: &impl ConnectionTrait, statement: Statement) -> Result<i64, ReplayError> {
    let row = conn
        .query_one_raw(statement)
        .await
        .map_err(db("counting"))?;
    Ok(row
        .and_then(|r| r.try_get::<i64>("", "n").ok())
        .unwrap_or(0))
}

/// How the live connection names its own schema in SQL.
async fn live_schema(live: &DatabaseConnection) -> Result<String, ReplayError> {
    match live.get_database_backend() {
        DbBackend::Postgres => {
            let row = live
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT current_schema() AS s",
                ))
                .await
                .map_err(db("reading the live schema"))?;
            let schema = row
                .and_then(|r| r.try_get::<String>("", "s").ok())
                .unwrap_or_else(|| "public".to_owned());
            Ok(quote(&schema))
        }
        _ => Ok("main".to_owned()),
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The digest of projection `name`'s model in `db` (see the module docs).
///
/// # Errors
/// An unknown projection, or the database failed.
pub async fn digest(db: &DatabaseConnection, name: &str) -> Result<String, ReplayError> {
    let tables = tables(name)?;
    let schema = live_schema(db).await?;
    digest_in(db, &schema, tables).await
}

async fn digest_in(
    conn: &impl ConnectionTrait,
    schema: &str,
    tables: &[Table],
) -> Result<String, ReplayError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let backend = conn.get_database_backend();
    for t in tables {
        let columns: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
        ctx.update(t.name.as_bytes());
        ctx.update(b"\n");
        // In pages by key, so memory stays flat whatever the model's size.
        let sql = format!(
            "SELECT {} FROM {schema}.{} WHERE {key} > $1 ORDER BY {key} LIMIT {DIGEST_PAGE}",
            columns.join(", "),
            t.name,
            key = t.key,
        );
        let mut after = String::new();
        loop {
            let rows = conn
                .query_all_raw(Statement::from_sql_and_values(
                    backend,
                    sql.as_str(),
                    [after.clone().into()],
                ))
                .await
                .map_err(db("reading the rows to digest"))?;
            let full = rows.len() == DIGEST_PAGE;
            for row in rows {
                for (c, kind) in t.columns {
                    let value = match kind {
                        Kind::Text => row.try_get::<String>("", c),
                        Kind::Int => row.try_get::<i64>("", c).map(|v| v.to_string()),
                        Kind::Bool => row.try_get::<bool>("", c).map(|v| v.to_string()),
                    }
                    .map_err(db("reading the rows to digest"))?;
                    if *c == t.key {
                        after.clone_from(&value);
                    }
                    ctx.update(value.as_bytes());
                    ctx.update(b"\x1f");
                }
                ctx.update(b"\x1e");
            }
            if !full {
                break;
            }
        }
    }
    Ok(sluice_kit::hex::encode(ctx.finish().as_ref()))
}

impl Shadow {
    /// An empty database with the edge's schema, beside `live`.
    async fn create(
        live: &DatabaseConnection,
        id: &str,
        tables: &[Table],
    ) -> Result<Self, ReplayError> {
        match live.get_database_backend() {
            DbBackend::Postgres => {
                let schema = format!("replay_{id}");
                live.execute_unprepared(&format!("CREATE SCHEMA {}", quote(&schema)))
                    .await
                    .map_err(db("creating the shadow schema"))?;
                let options = (*live.get_postgres_connection_pool().connect_options())
                    .clone()
                    .options([("search_path", schema.as_str())]);
                let pool = sea_orm::sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .map_err(|e| ReplayError::Db {
                        what: "connecting to the shadow schema",
                        source: sea_orm::DbErr::Custom(e.to_string()),
                    })?;
                let conn = sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(pool);
                let shadow = Self {
                    db: conn,
                    schema: quote(&schema),
                    file: None,
                };
                shadow.migrate(tables).await?;
                Ok(shadow)
            }
            _ => {
                let options = live.get_sqlite_connection_pool().connect_options();
                let live_file = options.get_filename().to_string_lossy().into_owned();
                if live_file == ":memory:" || live_file.starts_with("file:sqlx-in-memory") {
                    return Err(ReplayError::Shadow {
                        path: live_file,
                        reason: "an in-memory database cannot be replayed beside".into(),
                    });
                }
                let path = format!("{live_file}.replay-{id}");
                let conn = sluice_kit::db::open(&format!("sqlite:{path}?mode=rwc"), 1)
                    .await
                    .map_err(|e| ReplayError::Shadow {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                // The shadow is disposable (a crash means replaying again):
                // a rollback journal in memory (no WAL to write twice), no
                // syncs. Its writes append to B-trees whose hot pages are few:
                // an 8 MiB page cache and no memory-mapped reads keep the
                // replay's memory flat whatever the model's size (with the
                // edge's 64 MiB cache, the shadow's SQLite heap grew to
                // ~300 MiB over 1,000,000 events, and no faster).
                conn.execute_unprepared(
                    "PRAGMA journal_mode = MEMORY; PRAGMA synchronous = OFF; \
                     PRAGMA cache_size = -8192; PRAGMA mmap_size = 0",
                )
                .await
                .map_err(db("tuning the shadow database"))?;
                let shadow = Self {
                    db: conn,
                    schema: "replay".to_owned(),
                    file: Some(path.clone()),
                };
                shadow.migrate(tables).await?;
                Ok(shadow)
            }
        }
    }

    async fn migrate(&self, tables: &[Table]) -> Result<(), ReplayError> {
        sluice_kit::db::KitMigrator::up(&self.db, None)
            .await
            .map_err(db("creating the shadow's kit tables"))?;
        migration::Migrator::up(&self.db, None)
            .await
            .map_err(db("creating the shadow's tables"))?;
        let mut tuning: Vec<String> = tables
            .iter()
            .flat_map(|t| t.read_indexes)
            .map(|i| format!("DROP INDEX IF EXISTS {i}"))
            .collect();
        // The shadow's inbox is never pruned: its index by time would only
        // cost a write per event.
        tuning.push("DROP INDEX IF EXISTS sluice_inbox_handled_at".to_owned());
        for sql in tuning {
            self.db
                .execute_unprepared(&sql)
                .await
                .map_err(db("tuning the shadow database"))?;
        }
        Ok(())
    }

    /// Makes the shadow readable on `live` under [`Shadow::schema`], just
    /// before the digest and the swap read it there. A SQLite shadow is
    /// attached to the live connection then, not when it is made: the pool
    /// may replace an idle connection during a long build, and the new one
    /// would not have it. The live connection reads without memory mapping
    /// from then on, so the pages of both files the swap copies are not
    /// resident in this process on top of its page cache.
    async fn attach(&self, live: &DatabaseConnection) -> Result<(), ReplayError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        // Attached already, if the connection was not replaced.
        let _ = live.execute_unprepared("DETACH DATABASE replay").await;
        live.execute_unprepared(&format!(
            "ATTACH DATABASE '{}' AS replay; PRAGMA mmap_size = 0",
            path.replace('\'', "''")
        ))
        .await
        .map_err(db("attaching the shadow database"))?;
        Ok(())
    }

    /// Removes the shadow (best effort: a failure is logged).
    async fn drop_from(self, live: &DatabaseConnection) {
        self.db.close_by_ref().await.ok();
        match &self.file {
            Some(path) => {
                // Not attached when the build failed before the swap.
                let _ = live.execute_unprepared("DETACH DATABASE replay").await;
                for suffix in ["", "-wal", "-shm"] {
                    let file = format!("{path}{suffix}");
                    match std::fs::remove_file(&file) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            tracing::warn!(error = %e, file, "could not remove the replay's shadow file");
                        }
                        _ => {}
                    }
                }
            }
            None => {
                let drop = format!("DROP SCHEMA {} CASCADE", self.schema);
                if let Err(e) = live.execute_unprepared(&drop).await {
                    tracing::warn!(error = %e, schema = self.schema, "could not remove the replay's shadow schema");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    async fn names(db: &DatabaseConnection, schema: &str) -> Vec<(String, String)> {
        db.query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!("SELECT name, COALESCE(sql, '') AS sql FROM {schema}.sqlite_master"),
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.try_get::<String>("", "name").unwrap(),
                r.try_get::<String>("", "sql").unwrap(),
            )
        })
        .collect()
    }

    /// A live SQLite edge database in `dir` and an orders shadow beside it.
    async fn live_and_shadow(dir: &tempfile::TempDir) -> (DatabaseConnection, Shadow) {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("edge.db").display());
        let live = sluice_kit::db::open(&url, 1).await.unwrap();
        migration::Migrator::up(&live, None).await.unwrap();
        let shadow = Shadow::create(&live, "t", tables("edge-orders").unwrap())
            .await
            .unwrap();
        (live, shadow)
    }

    #[tokio::test]
    async fn a_sqlite_shadow_leaves_out_what_only_reads_use() {
        let dir = tempfile::tempdir().unwrap();
        let (live, shadow) = live_and_shadow(&dir).await;
        shadow.attach(&live).await.unwrap();
        let has = |names: &[(String, String)], n: &str| names.iter().any(|(name, _)| name == n);
        let (live_names, shadow_names) = (names(&live, "main").await, names(&live, "replay").await);
        assert!(
            has(&live_names, "edge_orders_by_customer"),
            "the live table keeps it"
        );
        assert!(!has(&shadow_names, "edge_orders_by_customer"));
        assert!(!has(&shadow_names, "sluice_inbox_handled_at"));
        let inbox = shadow_names
            .iter()
            .find(|(n, _)| n == "sluice_inbox")
            .unwrap();
        assert!(inbox.1.ends_with("WITHOUT ROWID"), "{}", inbox.1);
        // The inbox is read by column, as the swap does.
        sluice_kit::inbox::contains(&shadow.db, "c", "e")
            .await
            .unwrap();
        shadow.drop_from(&live).await;
    }

    async fn exec(db: &DatabaseConnection, sql: &str) {
        db.execute_unprepared(sql).await.unwrap();
    }

    #[tokio::test]
    async fn a_watermark_swap_checks_the_live_checkpoint_and_copies_no_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (live, shadow) = live_and_shadow(&dir).await;
        let tables = tables("edge-orders").unwrap();
        exec(
            &shadow.db,
            "INSERT INTO sluice_checkpoint (consumer, position, events, updated_at) VALUES ('s', 10, 10, 1); \
             INSERT INTO sluice_inbox (consumer, event_id, handled_at) VALUES ('s', 'e1', 1)",
        )
        .await;
        // The live projection applied sequence 12 after the replay began:
        // it got ahead of a shadow that read up to 10.
        exec(
            &live,
            "INSERT INTO sluice_checkpoint (consumer, position, events, updated_at) VALUES ('edge-orders', 12, 12, 100)",
        )
        .await;
        shadow.attach(&live).await.unwrap();
        let watermark = Some(Watermark {
            to: 10,
            until: Some(5),
        });
        let names = ("edge-orders", "s");
        let swapped = swap(&live, &shadow, tables, names, Some(50), watermark);
        assert!(swapped.await.unwrap().is_none(), "the live one got ahead");
        // Position 12 from before the replay began: not ahead.
        let swapped = swap(&live, &shadow, tables, names, Some(101), watermark);
        assert!(swapped.await.unwrap().is_some());
        let cp = sluice_kit::router::checkpoint(&live, "edge-orders")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (cp.position, cp.events, cp.replayed_to, cp.replayed_until),
            (Some(10), 10, Some(10), Some(5)),
        );
        assert!(
            !sluice_kit::inbox::contains(&live, "edge-orders", "e1")
                .await
                .unwrap(),
            "with a watermark no id is copied"
        );
        // The inbox way copies the ids and clears the watermark.
        let swapped = swap(&live, &shadow, tables, names, None, None);
        assert!(swapped.await.unwrap().is_some());
        let cp = sluice_kit::router::checkpoint(&live, "edge-orders")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((cp.replayed_to, cp.replayed_until), (None, None));
        assert!(
            sluice_kit::inbox::contains(&live, "edge-orders", "e1")
                .await
                .unwrap()
        );
        shadow.drop_from(&live).await;
    }

    async fn pragma(db: &DatabaseConnection, name: &str) -> i64 {
        db.query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!("PRAGMA {name}"),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
    }

    #[tokio::test]
    async fn a_sqlite_shadow_keeps_its_memory_small_and_attaches_again_on_a_new_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (live, shadow) = live_and_shadow(&dir).await;
        assert_eq!(pragma(&shadow.db, "cache_size").await, -8192);
        assert_eq!(pragma(&shadow.db, "mmap_size").await, 0);
        assert_ne!(
            pragma(&live, "mmap_size").await,
            0,
            "the edge maps its file"
        );
        shadow.attach(&live).await.unwrap();
        assert_eq!(pragma(&live, "mmap_size").await, 0);
        // Attaching twice is harmless; a connection that lost the
        // attachment (as a replaced one has none) gets it again.
        shadow.attach(&live).await.unwrap();
        live.execute_unprepared("DETACH DATABASE replay")
            .await
            .unwrap();
        shadow.attach(&live).await.unwrap();
        digest_in(&live, &shadow.schema, tables("edge-orders").unwrap())
            .await
            .unwrap();
        let path = shadow.file.clone().unwrap();
        shadow.drop_from(&live).await;
        assert!(!std::path::Path::new(&path).exists());
    }
}
