//! The service's own database: connecting (SQLite file by default, PostgreSQL
//! via `DATABASE_URL`) and the kit's tables — the inbox, the outbox and the
//! projection checkpoints — created by the kit's own migrator.
//!
//! The kit's migrations are recorded in their own table
//! (`sluice_kit_migrations`), so a service's sea-orm-migration `Migrator` never
//! sees them and both evolve independently.

mod migration;
pub mod tables;

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use sea_orm_migration::MigratorTrait;

pub use migration::KitMigrator;

/// Why the database could not be opened or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is neither `sqlite:` nor `postgres:`.
    #[error("unsupported database URL scheme in {0:?} (use sqlite:… or postgres://…)")]
    Scheme(String),
    /// The folder of a SQLite file could not be created.
    #[error("cannot create the folder of {path}: {reason}")]
    Folder {
        /// The database file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(DbErr),
    /// The kit's migrations failed.
    #[error("cannot migrate the kit's tables: {0}")]
    Migrate(DbErr),
}

/// Executes the statements `statements` yields, in order, each while the
/// next one is built: the iterator's work for statement k + 1 (its rows,
/// values and SQL) runs on this task while the database (SQLite's worker
/// thread, PostgreSQL's server) runs statement k. Returns the rows affected
/// in all; stops at the first error, of building or executing.
///
/// # Errors
/// A statement could not be built, or the database refused one.
pub async fn execute_pipelined<C, E>(
    db: &C,
    statements: impl IntoIterator<Item = Result<Statement, E>>,
) -> Result<u64, E>
where
    C: ConnectionTrait,
    E: From<DbErr>,
{
    let mut statements = statements.into_iter();
    let mut affected = 0;
    let Some(mut current) = statements.next().transpose()? else {
        return Ok(0);
    };
    loop {
        // `join!` polls the execution first: it hands the statement over,
        // and the next one is built while the database works.
        let (done, next) = futures::join!(db.execute_raw(current), async {
            statements.next().transpose()
        });
        affected += done?.rows_affected();
        match next? {
            Some(statement) => current = statement,
            None => return Ok(affected),
        }
    }
}

/// Opens the database at `url` and creates or upgrades the kit's tables.
///
/// `sqlite:path?mode=rwc` files are opened in WAL mode with `synchronous =
/// NORMAL` (a crash of the process loses nothing; a power loss may lose the
/// last commits) and one connection, since SQLite has one writer;
/// `sqlite::memory:` is a private in-memory database; `postgres://…` gets a
/// pool of `pool_size` connections.
///
/// # Errors
/// The URL is not supported, the database is unreachable, or migrating failed.
pub async fn open(url: &str, pool_size: u32) -> Result<DatabaseConnection, DbError> {
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(30));
    if url.starts_with("sqlite:") {
        ensure_folder(url)?;
        options.max_connections(1).map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // As for the embedded log: a 64 MiB page cache and
                // memory-mapped reads spare SQLite most read syscalls.
                .pragma("cache_size", "-65536")
                .pragma("mmap_size", "268435456")
                .pragma("temp_store", "memory")
        });
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        options.max_connections(pool_size.max(1));
    } else {
        return Err(DbError::Scheme(redact(url)));
    }
    let db = Database::connect(options).await.map_err(DbError::Connect)?;
    KitMigrator::up(&db, None).await.map_err(DbError::Migrate)?;
    Ok(db)
}

/// A pool for reads beside `db`. A SQLite file in WAL mode takes readers
/// beside its one writer, so it gets `readers` read-only connections of
/// its own (`query_only`, the same file and settings), and queries no
/// longer queue behind the writer's one connection; they see every commit
/// at once. Other databases (PostgreSQL's pool, a private in-memory SQLite)
/// are shared as they are.
///
/// # Errors
/// The read connections could not be opened.
pub async fn readers(db: &DatabaseConnection, readers: u32) -> Result<DatabaseConnection, DbError> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(db.clone());
    }
    let options = db.get_sqlite_connection_pool().connect_options();
    let file = options.get_filename().to_string_lossy();
    if file == ":memory:" || file.starts_with("file:sqlx-in-memory") {
        return Ok(db.clone());
    }
    let options = (*options).clone().pragma("query_only", "true");
    let pool = sea_orm::sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(readers.max(1))
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(|e| DbError::Connect(DbErr::Custom(format!("opening read connections: {e}"))))?;
    Ok(sea_orm::SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
}

/// Creates the folder of a SQLite file URL (`sqlite:data/x.db?mode=rwc`).
fn ensure_folder(url: &str) -> Result<(), DbError> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path.starts_with(':') {
        return Ok(());
    }
    match std::path::Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|e| DbError::Folder {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// `url` with any password replaced by `***`, for messages.
pub use sluice_broker::redact_url as redact;

/// Whether `db` is PostgreSQL (where the relay takes an advisory lock).
pub(crate) fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

/// Microseconds since the Unix epoch, the kit's timestamp column type.
pub fn now_micros() -> i64 {
    micros(std::time::SystemTime::now()).unwrap_or_default()
}

/// `t` in microseconds since the Unix epoch (saturating); `None` before it.
pub fn micros(t: std::time::SystemTime) -> Option<i64> {
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Column definitions the services' migrations share.
pub mod columns {
    use sea_orm_migration::prelude::{ColumnDef, IntoIden};

    /// A `NOT NULL` string column.
    pub fn text(c: impl IntoIden) -> ColumnDef {
        ColumnDef::new(c).string().not_null().to_owned()
    }

    /// A `NOT NULL` 64-bit integer column (amounts, counts, µs timestamps).
    pub fn int(c: impl IntoIden) -> ColumnDef {
        ColumnDef::new(c).big_integer().not_null().to_owned()
    }

    /// A `NOT NULL` boolean column.
    pub fn flag(c: impl IntoIden) -> ColumnDef {
        ColumnDef::new(c).boolean().not_null().to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn pipelined_statements_run_in_order_and_stop_at_the_first_error() {
        let db = open("sqlite::memory:", 1).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (n INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
            .await
            .unwrap();
        let insert = |values: &str| {
            Ok::<_, DbErr>(Statement::from_string(
                DbBackend::Sqlite,
                format!("INSERT INTO t (v) VALUES {values}"),
            ))
        };
        let built = std::cell::Cell::new(0);
        let statements = ["('a'), ('b')", "('c')", "('d'), ('e'), ('f')"]
            .into_iter()
            .map(|v| {
                built.set(built.get() + 1);
                insert(v)
            });
        assert_eq!(execute_pipelined(&db, statements).await.unwrap(), 6);
        assert_eq!(built.get(), 3);
        let none = std::iter::empty::<Result<Statement, DbErr>>();
        assert_eq!(execute_pipelined(&db, none).await.unwrap(), 0);

        let failing = vec![
            insert("('g')"),
            Err(DbErr::Custom("cannot build".into())),
            insert("('never')"),
        ];
        let e = execute_pipelined(&db, failing).await.unwrap_err();
        assert_eq!(e.to_string(), "Custom Error: cannot build");
        let refused = vec![insert("('h')"), insert("(1, 2)"), insert("('never')")];
        assert!(execute_pipelined(&db, refused).await.is_err());

        let rows = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT group_concat(v, '') AS vs FROM (SELECT v FROM t ORDER BY n)",
            ))
            .await
            .unwrap();
        let vs: String = rows[0].try_get("", "vs").unwrap();
        assert_eq!(vs, "abcdefgh", "in order, up to the first error");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact("postgres://app:hunter2@db:5432/app"),
            "postgres://app:***@db:5432/app"
        );
        assert_eq!(redact("postgres://app@db/app"), "postgres://app@db/app");
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }
}
