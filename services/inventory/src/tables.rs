//! sea-orm entities of the inventory's tables.

/// `products`: the catalogue and its stock.
pub mod products {
    use sea_orm::entity::prelude::*;

    /// One product.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "products")]
    pub struct Model {
        /// Product id (UUIDv7).
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Stock-keeping unit, unique.
        pub sku: String,
        /// Display name.
        pub name: String,
        /// Price in minor units.
        pub price_cents: i64,
        /// ISO 4217 currency code.
        pub currency: String,
        /// Units available (never negative).
        pub stock: i64,
        /// Last change (µs since the epoch).
        pub updated_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `reservations`: stock taken for an order, until it is released.
pub mod reservations {
    use sea_orm::entity::prelude::*;

    /// One reserved line.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reservations")]
    pub struct Model {
        /// The order.
        #[sea_orm(primary_key, auto_increment = false)]
        pub order_id: String,
        /// The product.
        #[sea_orm(primary_key, auto_increment = false)]
        pub product_id: String,
        /// Units reserved.
        pub quantity: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
