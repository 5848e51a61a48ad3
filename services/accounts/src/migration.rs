//! The accounts' schema: accounts (unique e-mail), API keys, and the token
//! signing keys.

use sea_orm::DeriveIden;
use sea_orm_migration::prelude::*;

/// Creates and upgrades the accounts' tables.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateTables)]
    }
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
    Email,
    PasswordHash,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    AccountId,
    Name,
    Scopes,
    SecretHash,
    CreatedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum SigningKeys {
    Table,
    Kid,
    PrivatePkcs8,
    PublicKey,
    CreatedAt,
}

struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m0001_accounts_api_keys_signing_keys"
    }
}

// async_trait's expansion of the trait's signature needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[async_trait::async_trait]
impl MigrationTrait for CreateTables {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Accounts::Table)
                .if_not_exists()
                .col(
                    ColumnDef::new(Accounts::Id)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                // Normalised (trimmed, lower-case); unique so two concurrent
                // registrations of one address cannot both succeed.
                .col(
                    ColumnDef::new(Accounts::Email)
                        .string()
                        .not_null()
                        .unique_key(),
                )
                .col(ColumnDef::new(Accounts::PasswordHash).string().not_null())
                .col(ColumnDef::new(Accounts::CreatedAt).big_integer().not_null())
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ApiKeys::Table)
                .if_not_exists()
                .col(
                    ColumnDef::new(ApiKeys::Id)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(ApiKeys::AccountId).string().not_null())
                .col(ColumnDef::new(ApiKeys::Name).string().not_null())
                .col(ColumnDef::new(ApiKeys::Scopes).string().not_null())
                .col(ColumnDef::new(ApiKeys::SecretHash).string().not_null())
                .col(ColumnDef::new(ApiKeys::CreatedAt).big_integer().not_null())
                .col(ColumnDef::new(ApiKeys::RevokedAt).big_integer().null())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("api_keys_account_id")
                .table(ApiKeys::Table)
                .col(ApiKeys::AccountId)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(SigningKeys::Table)
                .if_not_exists()
                .col(
                    ColumnDef::new(SigningKeys::Kid)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(SigningKeys::PrivatePkcs8).blob().not_null())
                .col(ColumnDef::new(SigningKeys::PublicKey).blob().not_null())
                .col(
                    ColumnDef::new(SigningKeys::CreatedAt)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await
    }
}
