//! sea-orm entities of the accounts' tables.

/// `accounts`: one row per customer account.
pub mod accounts {
    use sea_orm::entity::prelude::*;

    /// One account.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        /// Account id (UUIDv7).
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// E-mail, trimmed and lower-case, unique.
        pub email: String,
        /// argon2id hash in PHC string format.
        pub password_hash: String,
        /// Registration time (µs since the epoch).
        pub created_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `api_keys`: issued API keys (only the hash of each secret).
pub mod api_keys {
    use sea_orm::entity::prelude::*;

    /// One API key.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        /// Key id (UUIDv7, 32 hex digits), the middle part of the key.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The account the key acts for.
        pub account_id: String,
        /// A label for people.
        pub name: String,
        /// Granted scopes, space-separated.
        pub scopes: String,
        /// Hex SHA-256 of the secret.
        pub secret_hash: String,
        /// Issue time (µs since the epoch).
        pub created_at: i64,
        /// Revocation time (µs since the epoch), if revoked.
        pub revoked_at: Option<i64>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `signing_keys`: Ed25519 keys that sign access tokens; the newest is used.
pub mod signing_keys {
    use sea_orm::entity::prelude::*;

    /// One signing key.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "signing_keys")]
    pub struct Model {
        /// Key id, the `kid` header of tokens it signs.
        #[sea_orm(primary_key, auto_increment = false)]
        pub kid: String,
        /// The key pair as PKCS#8 (v2) DER.
        pub private_pkcs8: Vec<u8>,
        /// The raw 32-byte public key.
        pub public_key: Vec<u8>,
        /// Creation time (µs since the epoch).
        pub created_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
