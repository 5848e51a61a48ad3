//! sea-orm entities of the kit's tables.

/// `sluice_inbox`: event ids a consumer has handled.
pub mod inbox {
    use sea_orm::entity::prelude::*;

    /// One handled event of one consumer.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sluice_inbox")]
    pub struct Model {
        /// The consumer (group) name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        /// The event's `ce-id`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        /// When it was handled (µs since the epoch).
        pub handled_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `sluice_outbox`: events waiting for (or done with) the relay.
pub mod outbox {
    use sea_orm::entity::prelude::*;

    /// One event to publish.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sluice_outbox")]
    pub struct Model {
        /// Publication order.
        #[sea_orm(primary_key)]
        pub id: i64,
        /// The subject.
        pub subject: String,
        /// The headers, a JSON object of strings.
        #[sea_orm(column_type = "Text")]
        pub headers: String,
        /// The encoded event.
        #[sea_orm(column_type = "Blob")]
        pub payload: Vec<u8>,
        /// When it was written (µs since the epoch).
        pub created_at: i64,
        /// When the broker confirmed it (µs since the epoch).
        pub sent_at: Option<i64>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `sluice_checkpoint`: how far a projection has read.
pub mod checkpoint {
    use sea_orm::entity::prelude::*;

    /// One projection's progress.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sluice_checkpoint")]
    pub struct Model {
        /// The projection name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        /// The highest stream sequence applied, where the backend has one.
        pub position: Option<i64>,
        /// Events applied since the projection was (re)built.
        pub events: i64,
        /// Last change (µs since the epoch).
        pub updated_at: i64,
        /// A replay's watermark: the model holds every event of the stream
        /// up to this sequence.
        pub replayed_to: Option<i64>,
        /// The log time (µs since the epoch) of the event at `replayed_to`.
        pub replayed_until: Option<i64>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
