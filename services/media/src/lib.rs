//! The reference shop's media service: product images and their thumbnails.
//!
//! - Upload (a library call, made by the REST edge): [`ImageStore::store_original`]
//!   validates the bytes (PNG, JPEG or WebP by their magic bytes; at most
//!   10 MiB and 8000×8000 pixels; decodable within 256 MiB, against
//!   decompression bombs) and writes the original under
//!   `products/<product_id>/<image_id>/original.<ext>`; the caller emits the
//!   returned `media.image.uploaded` event through its outbox, so it is
//!   published only if the upload's transaction commits
//!   ([`ImageStore::upload`] does both).
//! - `media.image.uploaded` (`ImageUploaded`), handled by this service's
//!   reactor: the original is decoded on tokio's blocking pool and scaled
//!   into two boxes, `medium` (512 px) and `small` (128 px), aspect kept and
//!   never enlarged, encoded as JPEG (PNG when the image has transparency),
//!   written to `products/<product_id>/<image_id>/<size>.<ext>` and
//!   announced by `media.image.thumbnailed` (`ImageThumbnailed`). An image
//!   that cannot be decoded is announced by `media.image.rejected`
//!   (`ImageRejected`, with the reason). A missing original or a failing
//!   store is a transient error: retried with backoff, then dead-lettered
//!   with the reason. Each image is recorded once in the `images` table;
//!   a repeated event repeats the recorded outcome.
//!
//! Images are kept in a local folder (default `data/media`) or an
//! S3-compatible bucket ([`config`]). S3 support is always compiled in: it
//! uses `object_store`'s S3 client over reqwest with rustls and the ring
//! provider — the TLS stack the brokers already use — and ring for request
//! signing, so there is no aws-lc, OpenSSL or native-tls in the build.

pub mod config;
pub mod migration;
pub mod store;
pub mod tables;
mod thumbnail;
pub mod thumbs;

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use sluice_broker::Broker;
use sluice_kit::{
    ConsumerError, ConsumerOptions, KitConfig, Metrics, Reactor, RunningService, Service,
};

pub use config::{MediaConfig, S3Config, StoreConfig};
pub use store::{ImageStore, MediaError, StoredImage};
pub use thumbnail::{REJECTED, THUMBNAILED};

/// The service's name: its consumer group and `ce-source` (`/sluice/media`).
pub const NAME: &str = "media";

/// The subjects the service uses (tests use a unique domain).
#[derive(Debug, Clone)]
pub struct Subjects {
    /// `media.image.uploaded`.
    pub image_uploaded: String,
    /// `media.image.thumbnailed`.
    pub image_thumbnailed: String,
    /// `media.image.rejected`.
    pub image_rejected: String,
}

impl Subjects {
    /// The subjects with `media` as the domain's name.
    pub fn new(media: &str) -> Self {
        Self {
            image_uploaded: format!("{media}.image.uploaded"),
            image_thumbnailed: format!("{media}.image.thumbnailed"),
            image_rejected: format!("{media}.image.rejected"),
        }
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("media")
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct Media {
    subjects: Subjects,
    store: ImageStore,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Migrating the schema failed.
    #[error("cannot migrate the media schema: {0}")]
    Migrate(sea_orm::DbErr),
    /// A consumer could not subscribe.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// The media store's settings are invalid or it cannot be opened.
    #[error(transparent)]
    Store(#[from] MediaError),
}

/// The reactor's defaults, before configured overrides: image work is CPU
/// bound, so one worker per core; one event per transaction, so a failure
/// never makes other images be decoded again; and time for large images.
pub fn consumer_options() -> ConsumerOptions {
    ConsumerOptions {
        concurrency: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        max_wave: 1,
        handler_timeout: Duration::from_secs(120),
        ..ConsumerOptions::default()
    }
}

/// Migrates `db` and starts the service on `broker`, keeping images in
/// `store`.
///
/// # Errors
/// Migration or subscribing failed.
pub async fn start(
    broker: Arc<dyn Broker>,
    db: DatabaseConnection,
    config: &KitConfig,
    metrics: Metrics,
    subjects: Subjects,
    store: ImageStore,
) -> Result<RunningService, StartError> {
    migration::Migrator::up(&db, None)
        .await
        .map_err(StartError::Migrate)?;
    let state = Media {
        subjects: subjects.clone(),
        store,
    };
    let reactor = Reactor::new(NAME, state)
        .on(&subjects.image_uploaded, thumbnail::thumbnail)
        .options(consumer_options())
        .configured(config);
    Ok(Service::new(NAME, broker, db)
        .metrics(metrics)
        .reactor(reactor)
        .start()
        .await?)
}

/// Where the service's own process serves `/healthz`, `/readyz` and
/// `/metrics` unless `SLUICE_LISTEN` says otherwise.
pub const LISTEN: &str = "127.0.0.1:9106";

/// Starts the service on a process's resources, with its store from the
/// environment (the `sluice-media` binary and `sluice serve media`).
///
/// # Errors
/// Invalid store settings, or as [`start`].
pub async fn from_resources(r: sluice_kit::app::Resources) -> Result<RunningService, StartError> {
    let config = MediaConfig::from_process_env()?;
    let store = ImageStore::from_config(&config.store)?;
    start(
        r.broker,
        r.db,
        &r.config,
        r.metrics,
        Subjects::default(),
        store,
    )
    .await
}
