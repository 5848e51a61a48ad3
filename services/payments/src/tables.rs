//! sea-orm entities of the payments tables.

/// `payments`: the payment of each order.
pub mod payments {
    use sea_orm::entity::prelude::*;

    /// One order's payment.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payments")]
    pub struct Model {
        /// The order.
        #[sea_orm(primary_key, auto_increment = false)]
        pub order_id: String,
        /// The provider's payment id (empty when declined).
        pub payment_id: String,
        /// Amount in minor units.
        pub amount_cents: i64,
        /// ISO 4217 currency code.
        pub currency: String,
        /// `captured`, `declined` or `refunded`.
        pub status: String,
        /// Why it was declined or refunded.
        pub reason: String,
        /// Last change (µs since the epoch).
        pub updated_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
