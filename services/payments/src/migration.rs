//! The payments schema: one row per order.

use sea_orm::DeriveIden;
use sea_orm_migration::prelude::*;

/// Creates and upgrades the payments tables.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateTables)]
    }
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    OrderId,
    PaymentId,
    AmountCents,
    Currency,
    Status,
    Reason,
    UpdatedAt,
}

struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m0001_payments"
    }
}

// async_trait's expansion of the trait's signature needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateTables {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Payments::Table)
                .if_not_exists()
                // One row per order: the primary key is what makes a
                // capture happen once, whatever the redeliveries.
                .col(
                    ColumnDef::new(Payments::OrderId)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(Payments::PaymentId).string().not_null())
                .col(
                    ColumnDef::new(Payments::AmountCents)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(Payments::Currency).string().not_null())
                .col(ColumnDef::new(Payments::Status).string().not_null())
                .col(ColumnDef::new(Payments::Reason).string().not_null())
                .col(ColumnDef::new(Payments::UpdatedAt).big_integer().not_null())
                .to_owned(),
        )
        .await
    }
}
