//! sea-orm entities of the edge's read models.

/// `products`: the catalogue with stock, as clients see it.
pub mod products {
    use sea_orm::entity::prelude::*;

    /// One product.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "products")]
    pub struct Model {
        /// Product id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Stock-keeping unit.
        pub sku: String,
        /// Display name.
        pub name: String,
        /// Price in minor units.
        pub price_cents: i64,
        /// ISO 4217 currency code.
        pub currency: String,
        /// Units available.
        pub stock: i64,
        /// Last change (µs since the epoch).
        pub updated_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `orders`: orders by id and by customer, as clients see them.
pub mod orders {
    use sea_orm::entity::prelude::*;

    /// One order.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
    pub struct Model {
        /// Order id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The customer (account id).
        pub customer_id: String,
        /// `PENDING`, `CONFIRMED` or `CANCELLED`.
        pub status: String,
        /// The saga's finer step, when known (`cancellation_requested`).
        pub step: String,
        /// The lines as JSON: `[{product_id, quantity, price_cents}]`.
        pub items: String,
        /// Sum of the lines in minor units (0 until priced).
        pub total_cents: i64,
        /// ISO 4217 code (empty until priced).
        pub currency: String,
        /// Why it was cancelled.
        pub reason: String,
        /// Created (µs since the epoch).
        pub created_at: i64,
        /// Last change (µs since the epoch).
        pub updated_at: i64,
        /// Bumped on every change: the ETag.
        pub version: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `idempotency`: the first answer to each `Idempotency-Key` of a customer.
pub mod idempotency {
    use sea_orm::entity::prelude::*;

    /// One remembered request.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency")]
    pub struct Model {
        /// The customer.
        #[sea_orm(primary_key, auto_increment = false)]
        pub customer_id: String,
        /// The client's key.
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        /// SHA-256 of the request body (hex).
        pub request_hash: String,
        /// The order the request created.
        pub order_id: String,
        /// When (µs since the epoch).
        pub created_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `api_keys`: the API keys accounts issued, by hash (projected from
/// `accounts.apikey.created` / `revoked`).
pub mod api_keys {
    use sea_orm::entity::prelude::*;

    /// One key.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        /// Key id (the middle part of `sk_<id>_<secret>`).
        #[sea_orm(primary_key, auto_increment = false)]
        pub key_id: String,
        /// The owning account.
        pub account_id: String,
        /// Space-separated scopes.
        pub scopes: String,
        /// Hex SHA-256 of the secret.
        pub key_hash: String,
        /// No longer accepted.
        pub revoked: bool,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `product_images`: the images of the catalogue's products (projected
/// from `media.image.uploaded`, `.thumbnailed` and `.rejected`).
pub mod product_images {
    use sea_orm::entity::prelude::*;

    /// One image.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "product_images")]
    pub struct Model {
        /// The image's id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub image_id: String,
        /// Its product.
        pub product_id: String,
        /// The original's key in the media store.
        pub key: String,
        /// The original's content type.
        pub content_type: String,
        /// Width in pixels.
        pub width: i64,
        /// Height in pixels.
        pub height: i64,
        /// The original's size.
        pub size_bytes: i64,
        /// JSON: `{size: {key, content_type, width, height}}` once thumbnailed.
        pub thumbnails: String,
        /// `processing`, `ready` or `rejected`.
        pub status: String,
        /// When it was uploaded (µs since the epoch).
        pub created_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
