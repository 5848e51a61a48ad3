//! The notifications schema: the address book and one row per e-mail.

use sea_orm::DeriveIden;
use sea_orm_migration::prelude::*;

/// Creates and upgrades the notifications tables.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateTables), Box::new(AddTraceParent)]
    }
}

#[derive(DeriveIden)]
enum Addresses {
    Table,
    CustomerId,
    Email,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Id,
    EventId,
    CorrelationId,
    OrderId,
    CustomerId,
    Template,
    Recipient,
    Subject,
    BodyText,
    BodyHtml,
    Status,
    Reason,
    Attempts,
    NextAttemptAt,
    CreatedAt,
    SentAt,
    TraceParent,
}

struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m0001_notifications"
    }
}

// async_trait's expansion of the trait's signature needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateTables {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Addresses::Table)
                .if_not_exists()
                .col(
                    ColumnDef::new(Addresses::CustomerId)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(Addresses::Email).string().not_null())
                .col(
                    ColumnDef::new(Addresses::UpdatedAt)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Notifications::Table)
                .if_not_exists()
                // Derived from the causing event's id: whatever the
                // redeliveries, one event is one notification.
                .col(
                    ColumnDef::new(Notifications::Id)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(Notifications::EventId).string().not_null())
                .col(
                    ColumnDef::new(Notifications::CorrelationId)
                        .string()
                        .not_null(),
                )
                .col(ColumnDef::new(Notifications::OrderId).string().not_null())
                .col(
                    ColumnDef::new(Notifications::CustomerId)
                        .string()
                        .not_null(),
                )
                .col(ColumnDef::new(Notifications::Template).string().not_null())
                .col(ColumnDef::new(Notifications::Recipient).string().not_null())
                .col(ColumnDef::new(Notifications::Subject).text().not_null())
                .col(ColumnDef::new(Notifications::BodyText).text().not_null())
                .col(ColumnDef::new(Notifications::BodyHtml).text().null())
                .col(ColumnDef::new(Notifications::Status).string().not_null())
                .col(ColumnDef::new(Notifications::Reason).text().not_null())
                .col(ColumnDef::new(Notifications::Attempts).integer().not_null())
                .col(
                    ColumnDef::new(Notifications::NextAttemptAt)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Notifications::CreatedAt)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(Notifications::SentAt).big_integer().null())
                .to_owned(),
        )
        .await?;
        // The sender's query: pending rows that are due.
        m.create_index(
            Index::create()
                .name("notifications_due")
                .table(Notifications::Table)
                .if_not_exists()
                .col(Notifications::Status)
                .col(Notifications::NextAttemptAt)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("notifications_order")
                .table(Notifications::Table)
                .if_not_exists()
                .col(Notifications::OrderId)
                .to_owned(),
        )
        .await
    }
}

/// Keeps the `traceparent` of the handler that recorded an e-mail, so the
/// `email.sent` the sender emits later continues the order's trace.
struct AddTraceParent;

impl MigrationName for AddTraceParent {
    fn name(&self) -> &str {
        "m0002_notifications_trace_parent"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for AddTraceParent {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Notifications::Table)
                .add_column(ColumnDef::new(Notifications::TraceParent).string().null())
                .to_owned(),
        )
        .await
    }
}
