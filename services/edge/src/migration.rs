//! The edge's schema: its read models and the idempotency keys.

use sea_orm::DeriveIden;
use sea_orm_migration::prelude::*;
use sluice_kit::db::columns::{flag, int, text};

/// Creates and upgrades the edge's tables.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateTables),
            Box::new(CreateApiKeys),
            Box::new(CreateProductImages),
        ]
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
enum Orders {
    Table,
    Id,
    CustomerId,
    Status,
    Step,
    Items,
    TotalCents,
    Currency,
    Reason,
    CreatedAt,
    UpdatedAt,
    Version,
}

#[derive(DeriveIden)]
enum Idempotency {
    Table,
    CustomerId,
    Key,
    RequestHash,
    OrderId,
    CreatedAt,
}

struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m0001_edge_read_models"
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
                .col(text(Products::Id).primary_key())
                .col(text(Products::Sku))
                .col(text(Products::Name))
                .col(int(Products::PriceCents))
                .col(text(Products::Currency))
                .col(int(Products::Stock))
                .col(int(Products::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Orders::Table)
                .if_not_exists()
                .col(text(Orders::Id).primary_key())
                .col(text(Orders::CustomerId))
                .col(text(Orders::Status))
                .col(text(Orders::Step))
                .col(ColumnDef::new(Orders::Items).text().not_null())
                .col(int(Orders::TotalCents))
                .col(text(Orders::Currency))
                .col(text(Orders::Reason))
                .col(int(Orders::CreatedAt))
                .col(int(Orders::UpdatedAt))
                .col(int(Orders::Version))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .if_not_exists()
                .name("edge_orders_by_customer")
                .table(Orders::Table)
                .col(Orders::CustomerId)
                .col(Orders::Id)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Idempotency::Table)
                .if_not_exists()
                .col(text(Idempotency::CustomerId))
                .col(text(Idempotency::Key))
                .col(text(Idempotency::RequestHash))
                .col(text(Idempotency::OrderId))
                .col(int(Idempotency::CreatedAt))
                .primary_key(
                    Index::create()
                        .col(Idempotency::CustomerId)
                        .col(Idempotency::Key),
                )
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    KeyId,
    AccountId,
    Scopes,
    KeyHash,
    Revoked,
}

struct CreateApiKeys;

impl MigrationName for CreateApiKeys {
    fn name(&self) -> &str {
        "m0002_edge_api_keys"
    }
}

// async_trait's expansion of the trait's signature needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateApiKeys {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ApiKeys::Table)
                .if_not_exists()
                .col(text(ApiKeys::KeyId).primary_key())
                .col(text(ApiKeys::AccountId))
                .col(text(ApiKeys::Scopes))
                .col(text(ApiKeys::KeyHash))
                .col(flag(ApiKeys::Revoked))
                .to_owned(),
        )
        .await
    }
}

#[derive(DeriveIden)]
enum ProductImages {
    Table,
    ImageId,
    ProductId,
    Key,
    ContentType,
    Width,
    Height,
    SizeBytes,
    Thumbnails,
    Status,
    CreatedAt,
}

struct CreateProductImages;

impl MigrationName for CreateProductImages {
    fn name(&self) -> &str {
        "m0003_edge_product_images"
    }
}

#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateProductImages {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ProductImages::Table)
                .if_not_exists()
                .col(text(ProductImages::ImageId).primary_key())
                .col(text(ProductImages::ProductId))
                .col(text(ProductImages::Key))
                .col(text(ProductImages::ContentType))
                .col(int(ProductImages::Width))
                .col(int(ProductImages::Height))
                .col(int(ProductImages::SizeBytes))
                .col(text(ProductImages::Thumbnails))
                .col(text(ProductImages::Status))
                .col(int(ProductImages::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("product_images_by_product")
                .table(ProductImages::Table)
                .col(ProductImages::ProductId)
                .col(ProductImages::ImageId)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }
}
