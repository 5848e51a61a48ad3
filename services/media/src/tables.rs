//! sea-orm entities of the media tables.

/// `images`: every uploaded image the service has processed.
pub mod images {
    use sea_orm::entity::prelude::*;

    /// One image.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "images")]
    pub struct Model {
        /// The image's id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub image_id: String,
        /// The product it shows.
        pub product_id: String,
        /// Key of the original in the media store.
        pub original_key: String,
        /// `thumbnailed` or `rejected` (a row is written once the image is
        /// processed; an upload not yet processed has none).
        pub status: String,
        /// Why it was rejected (empty otherwise).
        pub reason: String,
        /// The thumbnails, a JSON array of `{size, key, width, height,
        /// content_type, size_bytes}` (`[]` when rejected).
        pub thumbnails: String,
        /// First processed (µs since the epoch).
        pub created_at: i64,
        /// Last change (µs since the epoch).
        pub updated_at: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
