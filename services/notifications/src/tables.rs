//! sea-orm entities of the notifications tables.

/// `addresses`: the address book, a projection of account registrations.
pub mod addresses {
    use sea_orm::entity::prelude::*;

    /// One customer's e-mail address.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "addresses")]
    pub struct Model {
        /// The customer (its account id).
        #[sea_orm(primary_key, auto_increment = false)]
        pub customer_id: String,
        /// Where to write to.
        pub email: String,
        /// Last change (µs since the epoch).
        pub updated_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `notifications`: one e-mail per causing event, rendered when recorded.
pub mod notifications {
    use sea_orm::entity::prelude::*;

    /// One e-mail and how its delivery went.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "notifications")]
    pub struct Model {
        /// UUIDv5 of the causing event's id; also the mailbox file name and
        /// the local part of the `Message-ID`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// The causing event's id.
        pub event_id: String,
        /// The causing event's correlation id (its id when it had none).
        pub correlation_id: String,
        /// The order the e-mail is about.
        pub order_id: String,
        /// The customer it is for.
        pub customer_id: String,
        /// The template it was rendered from (`order_confirmed`, …).
        pub template: String,
        /// The recipient's address (empty when skipped for want of one).
        pub recipient: String,
        /// The rendered subject.
        #[sea_orm(column_type = "Text")]
        pub subject: String,
        /// The rendered plain-text body.
        #[sea_orm(column_type = "Text")]
        pub body_text: String,
        /// The rendered HTML alternative, if the template has one.
        #[sea_orm(column_type = "Text", nullable)]
        pub body_html: Option<String>,
        /// `pending`, `sent`, `skipped` or `failed` (see [`crate::status`]).
        pub status: String,
        /// Why it was skipped or failed, or the last delivery error.
        #[sea_orm(column_type = "Text")]
        pub reason: String,
        /// Failed delivery attempts so far.
        pub attempts: i32,
        /// When the sender may try it (µs since the epoch).
        pub next_attempt_at: i64,
        /// When it was recorded (µs since the epoch); also its `Date`.
        pub created_at: i64,
        /// When it was delivered (µs since the epoch).
        pub sent_at: Option<i64>,
        /// The W3C `traceparent` of the handler that recorded it: the
        /// `email.sent` event continues that trace.
        pub trace_parent: Option<String>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
