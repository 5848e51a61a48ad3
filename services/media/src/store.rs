//! The media store: originals and thumbnails as objects under deterministic
//! keys, in a local folder or an S3-compatible bucket (`object_store`).
//!
//! [`ImageStore::store_original`] is what the REST edge calls on upload: it
//! validates the bytes (format from the magic bytes, size, dimensions,
//! decoding memory), writes the original and returns the
//! `media.image.uploaded` event for the caller to emit through its outbox.
//! [`ImageStore::upload`] does both in one call.

use std::io::Cursor;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use image::{ImageDecoder, ImageFormat, ImageReader};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use sea_orm::DatabaseTransaction;
use sluice_kit::Emitter;
use sluice_proto::shop::media::v1::ImageUploaded;

use crate::Subjects;
use crate::config::{S3Config, StoreConfig};

/// Largest accepted upload (10 MiB).
pub const MAX_UPLOAD_BYTES: usize = 10 * 1024 * 1024;
/// Largest accepted width and height, in pixels.
pub const MAX_DIMENSION: u32 = 8000;
/// Most memory a decoder may allocate for one image (256 MiB: an 8000×8000
/// RGBA image with 8 bits per channel). Guards against decompression bombs.
pub const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;
/// Longest accepted product id.
pub const MAX_PRODUCT_ID_LEN: usize = 128;

/// Why the media store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The product id cannot be part of a key.
    #[error(
        "invalid product id {0:?}: 1 to 128 characters of A-Z, a-z, 0-9, '-' and '_' are allowed"
    )]
    InvalidProductId(String),
    /// The upload is larger than [`MAX_UPLOAD_BYTES`].
    #[error("the image is {size} bytes; at most {max} bytes are accepted")]
    TooManyBytes {
        /// The upload's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not an image of any known format.
    #[error("not an image: the content is not PNG, JPEG or WebP")]
    NotAnImage,
    /// An image, but of a format that is not accepted.
    #[error("unsupported image format {0}: only PNG, JPEG and WebP are accepted")]
    UnsupportedFormat(String),
    /// The declared content type is not what the bytes are.
    #[error("the content type {declared:?} does not match the image, which is {detected}")]
    ContentTypeMismatch {
        /// What the client said.
        declared: String,
        /// What the bytes are.
        detected: &'static str,
    },
    /// Wider or taller than [`MAX_DIMENSION`].
    #[error("the image is {width}×{height} pixels; at most {max}×{max} are accepted")]
    TooLargeDimensions {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// The limit per side.
        max: u32,
    },
    /// Decoding would need more memory than [`MAX_DECODE_BYTES`].
    #[error("decoding the image would need {needed} bytes; at most {max} are allowed")]
    TooMuchMemory {
        /// Bytes the decoded image needs.
        needed: u64,
        /// The limit.
        max: u64,
    },
    /// The image's header cannot be read.
    #[error("the image cannot be read: {0}")]
    Unreadable(String),
    /// No object under this key.
    #[error("no object {0} in the media store")]
    NotFound(String),
    /// The store failed (I/O, network, credentials).
    #[error("media store failed to {action} {key}: {source}")]
    Store {
        /// What was being done (`read`, `write`, `delete`).
        action: &'static str,
        /// The object's key.
        key: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The store's configuration is invalid.
    #[error("media store configuration: {0}")]
    Config(String),
    /// Writing the event to the outbox failed (the original is removed again).
    #[error("cannot record the upload: {0}")]
    Db(#[from] sea_orm::DbErr),
}

/// An original that was validated and stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// The new image's id (a UUIDv7, simple form).
    pub image_id: String,
    /// The product it shows.
    pub product_id: String,
    /// Key of the original in the store.
    pub key: String,
    /// `image/png`, `image/jpeg` or `image/webp`.
    pub content_type: &'static str,
    /// Size of the original in bytes.
    pub size_bytes: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl StoredImage {
    /// The `media.image.uploaded` event announcing it.
    pub fn uploaded(&self) -> ImageUploaded {
        ImageUploaded {
            image_id: self.image_id.clone(),
            product_id: self.product_id.clone(),
            key: self.key.clone(),
            content_type: self.content_type.to_owned(),
            size_bytes: self.size_bytes,
            width: self.width,
            height: self.height,
        }
    }
}

/// What [`validate`] found out about an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format, from the magic bytes.
    pub format: Accepted,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// The accepted formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// PNG.
    Png,
    /// JPEG.
    Jpeg,
    /// WebP.
    WebP,
}

impl Accepted {
    /// The format's MIME type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::WebP => "image/webp",
        }
    }

    /// The file extension used in keys.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::WebP => "webp",
        }
    }

    /// The accepted format `format` is, if any.
    pub fn from_format(format: ImageFormat) -> Option<Self> {
        match format {
            ImageFormat::Png => Some(Self::Png),
            ImageFormat::Jpeg => Some(Self::Jpeg),
            ImageFormat::WebP => Some(Self::WebP),
            _ => None,
        }
    }
}

/// Decoder limits for this service: [`MAX_DIMENSION`] per side (when
/// `dimensions`) and [`MAX_DECODE_BYTES`] of allocations.
pub(crate) fn limits(dimensions: bool) -> image::Limits {
    let mut limits = image::Limits::default();
    if dimensions {
        limits.max_image_width = Some(MAX_DIMENSION);
        limits.max_image_height = Some(MAX_DIMENSION);
    }
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// Checks an upload without decoding its pixels: at most
/// [`MAX_UPLOAD_BYTES`], PNG, JPEG or WebP by its magic bytes (and by
/// `content_type` when one is declared; empty and
/// `application/octet-stream` declare nothing), at most [`MAX_DIMENSION`]
/// per side, and decodable within [`MAX_DECODE_BYTES`].
///
/// # Errors
/// The reason the upload is refused.
pub fn validate(bytes: &[u8], content_type: &str) -> Result<ImageInfo, MediaError> {
    if bytes.len() > MAX_UPLOAD_BYTES {
        return Err(MediaError::TooManyBytes {
            size: bytes.len(),
            max: MAX_UPLOAD_BYTES,
        });
    }
    let format = image::guess_format(bytes).map_err(|_| MediaError::NotAnImage)?;
    let accepted = Accepted::from_format(format)
        .ok_or_else(|| MediaError::UnsupportedFormat(format!("{format:?}").to_uppercase()))?;
    let declared = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let declared_format = match declared.as_str() {
        "" | "application/octet-stream" => None,
        "image/jpg" | "image/pjpeg" => Some(Accepted::Jpeg),
        other => Some(
            [Accepted::Png, Accepted::Jpeg, Accepted::WebP]
                .into_iter()
                .find(|a| a.content_type() == other)
                .ok_or_else(|| MediaError::ContentTypeMismatch {
                    declared: content_type.to_owned(),
                    detected: accepted.content_type(),
                })?,
        ),
    };
    if declared_format.is_some_and(|d| d != accepted) {
        return Err(MediaError::ContentTypeMismatch {
            declared: content_type.to_owned(),
            detected: accepted.content_type(),
        });
    }
    // Only the header is read here. Dimensions are checked by hand (not as
    // a decoder limit) so the error can name them; the allocation limit
    // guards the header parsing itself (compressed metadata chunks).
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits(false));
    let decoder = reader
        .into_decoder()
        .map_err(|e| MediaError::Unreadable(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(MediaError::TooLargeDimensions {
            width,
            height,
            max: MAX_DIMENSION,
        });
    }
    if width == 0 || height == 0 {
        return Err(MediaError::Unreadable(format!(
            "the image is {width}×{height} pixels"
        )));
    }
    let needed = decoder.total_bytes();
    if needed > MAX_DECODE_BYTES {
        return Err(MediaError::TooMuchMemory {
            needed,
            max: MAX_DECODE_BYTES,
        });
    }
    Ok(ImageInfo {
        format: accepted,
        width,
        height,
    })
}

/// Whether `id` may be one segment of a key: 1 to [`MAX_PRODUCT_ID_LEN`]
/// characters of `A-Z a-z 0-9 - _`.
pub(crate) fn is_key_segment(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PRODUCT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks that `product_id` may be part of a key.
fn check_product_id(product_id: &str) -> Result<(), MediaError> {
    if is_key_segment(product_id) {
        Ok(())
    } else {
        Err(MediaError::InvalidProductId(product_id.to_owned()))
    }
}

/// The folder of one image: `products/<product_id>/<image_id>`.
pub fn image_folder(product_id: &str, image_id: &str) -> String {
    format!("products/{product_id}/{image_id}")
}

/// The key of an original: `products/<product_id>/<image_id>/original.<ext>`.
pub fn original_key(product_id: &str, image_id: &str, format: Accepted) -> String {
    format!(
        "{}/original.{}",
        image_folder(product_id, image_id),
        format.extension()
    )
}

/// Where images are kept: an `object_store` over a local folder or an
/// S3-compatible bucket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore {
    store: Arc<dyn ObjectStore>,
    /// Whether the store keeps per-object attributes (content type);
    /// the local file system does not.
    attributes: bool,
}

impl ImageStore {
    /// The store `config` names.
    ///
    /// # Errors
    /// The folder cannot be created, or the S3 settings are invalid.
    pub fn from_config(config: &StoreConfig) -> Result<Self, MediaError> {
        match config {
            StoreConfig::Local { dir } => Self::local(dir),
            StoreConfig::S3(s3) => Self::s3(s3),
        }
    }

    /// A store in the local folder `dir` (created if missing).
    ///
    /// # Errors
    /// The folder cannot be created or opened.
    pub fn local(dir: impl AsRef<FsPath>) -> Result<Self, MediaError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            MediaError::Config(format!(
                "cannot create the media folder {}: {e}",
                dir.display()
            ))
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            MediaError::Config(format!(
                "cannot open the media folder {}: {e}",
                dir.display()
            ))
        })?;
        Ok(Self {
            store: Arc::new(fs),
            attributes: false,
        })
    }

    /// A store in an S3-compatible bucket. Installs rustls's ring provider
    /// as the process default if none is installed yet (the HTTP client is
    /// built without a bundled one, so the workspace keeps one TLS stack).
    /// Nothing is requested until the first read or write.
    ///
    /// # Errors
    /// The settings are invalid.
    pub fn s3(config: &S3Config) -> Result<Self, MediaError> {
        // Err means a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(id) = &config.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose());
        }
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token.expose());
        }
        let s3 = builder
            .build()
            .map_err(|e| MediaError::Config(format!("S3 bucket {}: {e}", config.bucket)))?;
        let store: Arc<dyn ObjectStore> = if config.prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(
                s3,
                config.prefix.as_str(),
            ))
        };
        Ok(Self {
            store,
            attributes: true,
        })
    }

    /// A store over any `object_store` (an in-memory one in tests).
    pub fn from_object_store(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            attributes: false,
        }
    }

    /// Validates an upload ([`validate`]) and writes it under
    /// `products/<product_id>/<image_id>/original.<ext>` with a new image id.
    /// Returns what was stored; emit [`StoredImage::uploaded`] on
    /// `media.image.uploaded` through the outbox (or use [`Self::upload`]).
    ///
    /// # Errors
    /// The upload is refused (the variant says why), or the store failed.
    pub async fn store_original(
        &self,
        product_id: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<StoredImage, MediaError> {
        check_product_id(product_id)?;
        let info = validate(&bytes, content_type)?;
        let image_id = uuid::Uuid::now_v7().simple().to_string();
        let key = original_key(product_id, &image_id, info.format);
        let size_bytes = bytes.len() as u64;
        self.put(&key, bytes, info.format.content_type()).await?;
        tracing::info!(product = product_id, image = %image_id, %key, size_bytes, "original stored");
        Ok(StoredImage {
            image_id,
            product_id: product_id.to_owned(),
            key,
            content_type: info.format.content_type(),
            size_bytes,
            width: info.width,
            height: info.height,
        })
    }

    /// [`Self::store_original`], then emits `media.image.uploaded` (on
    /// `subjects.image_uploaded`, keyed by the image id) through `emitter`
    /// in `txn` and commits it, so the event is published only if the
    /// transaction commits. When the commit fails the original is deleted
    /// again (best effort: an unreferenced original is harmless).
    ///
    /// # Errors
    /// The upload is refused, the store failed, or the commit failed.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload(
        &self,
        emitter: &Emitter,
        txn: DatabaseTransaction,
        subjects: &Subjects,
        product_id: &str,
        bytes: Bytes,
        content_type: &str,
        correlation_id: Option<&str>,
    ) -> Result<StoredImage, MediaError> {
        let stored = match self.store_original(product_id, bytes, content_type).await {
            Ok(s) => s,
            Err(e) => {
                let _ = txn.rollback().await;
                return Err(e);
            }
        };
        let event = emitter.event(
            &subjects.image_uploaded,
            &stored.image_id,
            &stored.uploaded(),
            correlation_id,
        );
        if let Err(e) = emitter.commit(txn, &[event]).await {
            if let Err(d) = self.delete(&stored.key).await {
                tracing::warn!(key = %stored.key, error = %d, "cannot delete the original of a failed upload");
            }
            return Err(MediaError::Db(e));
        }
        Ok(stored)
    }

    /// Writes `bytes` under `key`, replacing what is there.
    ///
    /// # Errors
    /// The store failed.
    pub async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> Result<(), MediaError> {
        let mut options = PutOptions::default();
        if self.attributes {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
            options.attributes = attributes;
        }
        self.store
            .put_opts(&Path::from(key), PutPayload::from(bytes), options)
            .await
            .map(|_| ())
            .map_err(|source| MediaError::Store {
                action: "write",
                key: key.to_owned(),
                source,
            })
    }

    /// Reads the object under `key`.
    ///
    /// # Errors
    /// [`MediaError::NotFound`] when there is none; the store failed.
    pub async fn get(&self, key: &str) -> Result<Bytes, MediaError> {
        let fail = |source| match source {
            object_store::Error::NotFound { .. } => MediaError::NotFound(key.to_owned()),
            source => MediaError::Store {
                action: "read",
                key: key.to_owned(),
                source,
            },
        };
        self.store
            .get(&Path::from(key))
            .await
            .map_err(fail)?
            .bytes()
            .await
            .map_err(fail)
    }

    /// Deletes the object under `key` (no error when there is none).
    ///
    /// # Errors
    /// The store failed.
    pub async fn delete(&self, key: &str) -> Result<(), MediaError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(MediaError::Store {
                action: "delete",
                key: key.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_ids_are_safe_key_segments() {
        assert!(check_product_id("p-1_A").is_ok());
        for bad in ["", "../x", "a/b", "a.b", &"x".repeat(129)] {
            assert!(check_product_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_are_deterministic() {
        assert_eq!(
            original_key("p1", "i1", Accepted::Jpeg),
            "products/p1/i1/original.jpg"
        );
    }

    #[test]
    fn garbage_and_other_formats_are_refused() {
        assert!(matches!(
            validate(b"hello", ""),
            Err(MediaError::NotAnImage)
        ));
        // A GIF header: an image, but not an accepted one.
        assert!(matches!(
            validate(b"GIF89a\x01\x00\x01\x00\x00\x00\x00", "image/gif"),
            Err(MediaError::UnsupportedFormat(f)) if f == "GIF"
        ));
    }
}
