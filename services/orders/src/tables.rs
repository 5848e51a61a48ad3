//! sea-orm entities of the orders tables.

/// `orders`: the order aggregate, one row per order, with the saga's state.
pub mod orders {
    use sea_orm::entity::prelude::*;

    /// One order.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
    pub struct Model {
        /// Order id (chosen by the caller, a UUIDv7 from the edge).
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The customer (account id).
        pub customer_id: String,
        /// `PENDING`, `CONFIRMED` or `CANCELLED`.
        pub status: String,
        /// The saga's step: `placed`, `charging`, `confirmed`, `cancelled`.
        pub step: String,
        /// Sum of the lines in minor units.
        pub total_cents: i64,
        /// ISO 4217 currency code of every line.
        pub currency: String,
        /// Opaque token for the payment provider.
        pub payment_token: String,
        /// Why it was cancelled (empty otherwise).
        pub reason: String,
        /// The customer asked to cancel while the saga was under way.
        pub cancel_requested: bool,
        /// Inventory holds stock for the order.
        pub stock_reserved: bool,
        /// `none`, `captured`, `declined` or `refunded`.
        pub payment: String,
        /// Created (µs since the epoch).
        pub created_at: i64,
        /// Last change (µs since the epoch).
        pub updated_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `order_lines`: what an order is for, priced when it was placed.
pub mod order_lines {
    use sea_orm::entity::prelude::*;

    /// One line.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "order_lines")]
    pub struct Model {
        /// The order.
        #[sea_orm(primary_key, auto_increment = false)]
        pub order_id: String,
        /// The product.
        #[sea_orm(primary_key, auto_increment = false)]
        pub product_id: String,
        /// Units ordered.
        pub quantity: i64,
        /// Unit price in minor units when the order was placed.
        pub price_cents: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `catalogue`: prices, projected from the inventory's product events.
pub mod catalogue {
    use sea_orm::entity::prelude::*;

    /// One product's price.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "catalogue")]
    pub struct Model {
        /// Product id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub product_id: String,
        /// Price in minor units.
        pub price_cents: i64,
        /// ISO 4217 currency code.
        pub currency: String,
        /// The product left the catalogue.
        pub deleted: bool,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
