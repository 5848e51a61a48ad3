//! The inventory's schema: products and the stock reserved for orders.

use sea_orm::DeriveIden;
use sea_orm_migration::prelude::*;

/// Creates and upgrades the inventory's tables.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateTables)]
    }
}

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    Sku,
    Name,
    PriceCents,
    Currency,
    Stock,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    OrderId,
    ProductId,
    Quantity,
}

struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m0001_products_reservations"
    }
}

// async_trait's expansion of the trait's signature needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateTables {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Products::Table)
                .if_not_exists()
                .col(
                    ColumnDef::new(Products::Id)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(Products::Sku)
                        .string()
                        .not_null()
                        .unique_key(),
                )
                .col(ColumnDef::new(Products::Name).string().not_null())
                .col(
                    ColumnDef::new(Products::PriceCents)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(Products::Currency).string().not_null())
                // The last line of defence: stock never goes negative.
                .col(
                    ColumnDef::new(Products::Stock)
                        .big_integer()
                        .not_null()
                        .check(Expr::col(Products::Stock).gte(0)),
                )
                .col(ColumnDef::new(Products::UpdatedAt).big_integer().not_null())
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Reservations::Table)
                .if_not_exists()
                .col(ColumnDef::new(Reservations::OrderId).string().not_null())
                .col(ColumnDef::new(Reservations::ProductId).string().not_null())
                .col(
                    ColumnDef::new(Reservations::Quantity)
                        .big_integer()
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(Reservations::OrderId)
                        .col(Reservations::ProductId),
                )
                .to_owned(),
        )
        .await
    }
}
