//! The kit's schema: inbox, outbox, checkpoints.

use sea_orm::DeriveIden;
use sea_orm_migration::prelude::*;

/// Creates and upgrades the kit's tables; records its steps in
/// `sluice_kit_migrations`, apart from the service's own migrations.
#[derive(Debug)]
pub struct KitMigrator;

#[async_trait::async_trait]
impl MigratorTrait for KitMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateKitTables),
            Box::new(InboxWithoutRowid),
            Box::new(CheckpointReplayedTo),
        ]
    }

    fn migration_table_name() -> DynIden {
        "sluice_kit_migrations".into_iden()
    }
}

#[derive(DeriveIden)]
enum SluiceInbox {
    Table,
    Consumer,
    EventId,
    HandledAt,
}

#[derive(DeriveIden)]
enum SluiceOutbox {
    Table,
    Id,
    Subject,
    Headers,
    Payload,
    CreatedAt,
    SentAt,
}

#[derive(DeriveIden)]
enum SluiceCheckpoint {
    Table,
    Consumer,
    Position,
    Events,
    UpdatedAt,
    ReplayedTo,
    ReplayedUntil,
}

struct CreateKitTables;

impl MigrationName for CreateKitTables {
    fn name(&self) -> &str {
        "m0001_kit_inbox_outbox_checkpoint"
    }
}

// async_trait's expansion of the trait's signature needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateKitTables {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(SluiceInbox::Table)
                .if_not_exists()
                .col(ColumnDef::new(SluiceInbox::Consumer).string().not_null())
                .col(ColumnDef::new(SluiceInbox::EventId).string().not_null())
                .col(
                    ColumnDef::new(SluiceInbox::HandledAt)
                        .big_integer()
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(SluiceInbox::Consumer)
                        .col(SluiceInbox::EventId),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("sluice_inbox_handled_at")
                .if_not_exists()
                .table(SluiceInbox::Table)
                .col(SluiceInbox::HandledAt)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(SluiceOutbox::Table)
                .if_not_exists()
                .col(
                    ColumnDef::new(SluiceOutbox::Id)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(ColumnDef::new(SluiceOutbox::Subject).string().not_null())
                .col(ColumnDef::new(SluiceOutbox::Headers).text().not_null())
                .col(ColumnDef::new(SluiceOutbox::Payload).blob().not_null())
                .col(
                    ColumnDef::new(SluiceOutbox::CreatedAt)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(SluiceOutbox::SentAt).big_integer().null())
                .to_owned(),
        )
        .await?;
        // The relay reads unsent rows in id order: a partial index keeps that
        // cheap however many sent rows wait for pruning.
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS sluice_outbox_unsent ON sluice_outbox (id) \
                 WHERE sent_at IS NULL",
            )
            .await?;
        m.create_table(
            Table::create()
                .table(SluiceCheckpoint::Table)
                .if_not_exists()
                .col(
                    ColumnDef::new(SluiceCheckpoint::Consumer)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(SluiceCheckpoint::Position)
                        .big_integer()
                        .null(),
                )
                .col(
                    ColumnDef::new(SluiceCheckpoint::Events)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(SluiceCheckpoint::UpdatedAt)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}

/// On SQLite, `sluice_inbox` becomes a `WITHOUT ROWID` table: a table with
/// a composite primary key is otherwise a rowid table plus an index on that
/// key, two B-tree writes per handled event where one does. Existing rows
/// are copied. Other backends keep their tables (PostgreSQL's heap and key
/// index are what it has).
struct InboxWithoutRowid;

impl MigrationName for InboxWithoutRowid {
    fn name(&self) -> &str {
        "m0002_kit_inbox_without_rowid"
    }
}

// async_trait's expansion of the trait's signature needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for InboxWithoutRowid {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() != sea_orm::DbBackend::Sqlite {
            return Ok(());
        }
        m.get_connection()
            .execute_unprepared(
                "CREATE TABLE sluice_inbox_m0002 (\
                   consumer varchar NOT NULL, event_id varchar NOT NULL, \
                   handled_at integer NOT NULL, PRIMARY KEY (consumer, event_id)\
                 ) WITHOUT ROWID; \
                 INSERT INTO sluice_inbox_m0002 (consumer, event_id, handled_at) \
                   SELECT consumer, event_id, handled_at FROM sluice_inbox; \
                 DROP TABLE sluice_inbox; \
                 ALTER TABLE sluice_inbox_m0002 RENAME TO sluice_inbox; \
                 CREATE INDEX sluice_inbox_handled_at ON sluice_inbox (handled_at)",
            )
            .await?;
        Ok(())
    }

    /// The copy and the swap of tables commit together with the migration's
    /// record, or not at all (SQLite migrations run outside a transaction
    /// otherwise).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

/// `sluice_checkpoint` gets the watermark a replay leaves behind:
/// `replayed_to`, the stream sequence up to which the rebuilt model holds
/// every event of the projection's stream, and `replayed_until`, the log
/// time (µs) of that event. The live projection skips what is at or below
/// it (see `sluice_kit::router::Checkpoint`).
struct CheckpointReplayedTo;

impl MigrationName for CheckpointReplayedTo {
    fn name(&self) -> &str {
        "m0003_kit_checkpoint_replayed_to"
    }
}

// async_trait's expansion of the trait's signature needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CheckpointReplayedTo {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            SluiceCheckpoint::ReplayedTo,
            SluiceCheckpoint::ReplayedUntil,
        ] {
            m.alter_table(
                Table::alter()
                    .table(SluiceCheckpoint::Table)
                    .add_column(ColumnDef::new(column).big_integer().null())
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    use super::*;

    async fn inbox_sql(db: &impl ConnectionTrait) -> String {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT sql FROM sqlite_master WHERE name = 'sluice_inbox'",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<String>("", "sql").unwrap()
    }

    #[tokio::test]
    async fn an_sqlite_inbox_is_rebuilt_without_rowid_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("k.db").display());
        let db = sea_orm::Database::connect(url.as_str()).await.unwrap();
        KitMigrator::up(&db, Some(1)).await.unwrap();
        assert!(!inbox_sql(&db).await.contains("WITHOUT ROWID"));
        db.execute_unprepared(
            "INSERT INTO sluice_inbox (consumer, event_id, handled_at) \
             VALUES ('c', 'e1', 10), ('c', 'e2', 20), ('d', 'e1', 30)",
        )
        .await
        .unwrap();

        KitMigrator::up(&db, None).await.unwrap();

        assert!(inbox_sql(&db).await.ends_with("WITHOUT ROWID"));
        for (consumer, id) in [("c", "e1"), ("c", "e2"), ("d", "e1")] {
            assert!(crate::inbox::contains(&db, consumer, id).await.unwrap());
        }
        assert!(!crate::inbox::contains(&db, "d", "e2").await.unwrap());
        let plan = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "EXPLAIN QUERY PLAN DELETE FROM sluice_inbox WHERE handled_at < 25",
            ))
            .await
            .unwrap();
        let detail: Vec<String> = plan
            .iter()
            .map(|r| r.try_get::<String>("", "detail").unwrap())
            .collect();
        assert!(
            detail.iter().any(|d| d.contains("sluice_inbox_handled_at")),
            "pruning uses the time index: {detail:?}"
        );
        assert_eq!(crate::inbox::prune(&db, 25).await.unwrap(), 2);
        // Running again changes nothing.
        KitMigrator::up(&db, None).await.unwrap();
        assert!(crate::inbox::contains(&db, "d", "e1").await.unwrap());
    }
}
