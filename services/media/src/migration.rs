//! The media schema: one row per processed image.

use sea_orm::DeriveIden;
use sea_orm_migration::prelude::*;

/// Creates and upgrades the media tables.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateTables)]
    }
}

#[derive(DeriveIden)]
enum Images {
    Table,
    ImageId,
    ProductId,
    OriginalKey,
    Status,
    Reason,
    Thumbnails,
    CreatedAt,
    UpdatedAt,
}

struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m0001_images"
    }
}

// async_trait's expansion of the trait's signature needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateTables {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Images::Table)
                .if_not_exists()
                // One row per image: a redelivered or repeated upload event
                // updates it instead of adding another.
                .col(
                    ColumnDef::new(Images::ImageId)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(Images::ProductId).string().not_null())
                .col(ColumnDef::new(Images::OriginalKey).string().not_null())
                .col(ColumnDef::new(Images::Status).string().not_null())
                .col(ColumnDef::new(Images::Reason).text().not_null())
                .col(ColumnDef::new(Images::Thumbnails).text().not_null())
                .col(ColumnDef::new(Images::CreatedAt).big_integer().not_null())
                .col(ColumnDef::new(Images::UpdatedAt).big_integer().not_null())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("images_product")
                .table(Images::Table)
                .col(Images::ProductId)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }
}
