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
        vec![Box::new(CreateKitTables)]
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
