//! The orders schema: the order aggregate, its lines, and the price list.

use sea_orm::DeriveIden;
use sea_orm_migration::prelude::*;
use sluice_kit::db::columns::{flag, int, text};

/// Creates and upgrades the orders tables.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateTables)]
    }
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    CustomerId,
    Status,
    Step,
    TotalCents,
    Currency,
    PaymentToken,
    Reason,
    CancelRequested,
    StockReserved,
    Payment,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum OrderLines {
    Table,
    OrderId,
    ProductId,
    Quantity,
    PriceCents,
}

#[derive(DeriveIden)]
enum Catalogue {
    Table,
    ProductId,
    PriceCents,
    Currency,
    Deleted,
}

struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m0001_orders"
    }
}

// async_trait's expansion of the trait's signature needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateTables {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Orders::Table)
                .if_not_exists()
                .col(text(Orders::Id).primary_key())
                .col(text(Orders::CustomerId))
                .col(text(Orders::Status))
                .col(text(Orders::Step))
                .col(int(Orders::TotalCents))
                .col(text(Orders::Currency))
                .col(text(Orders::PaymentToken))
                .col(text(Orders::Reason))
                .col(flag(Orders::CancelRequested))
                .col(flag(Orders::StockReserved))
                .col(text(Orders::Payment))
                .col(int(Orders::CreatedAt))
                .col(int(Orders::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("orders_by_customer")
                .table(Orders::Table)
                .col(Orders::CustomerId)
                .col(Orders::CreatedAt)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(OrderLines::Table)
                .if_not_exists()
                .col(text(OrderLines::OrderId))
                .col(text(OrderLines::ProductId))
                .col(int(OrderLines::Quantity))
                .col(int(OrderLines::PriceCents))
                .primary_key(
                    Index::create()
                        .col(OrderLines::OrderId)
                        .col(OrderLines::ProductId),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Catalogue::Table)
                .if_not_exists()
                .col(text(Catalogue::ProductId).primary_key())
                .col(int(Catalogue::PriceCents))
                .col(text(Catalogue::Currency))
                .col(flag(Catalogue::Deleted))
                .to_owned(),
        )
        .await
    }
}
