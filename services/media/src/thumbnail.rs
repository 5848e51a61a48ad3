//! On `media.image.uploaded`: read the original, make the thumbnails, write
//! them under deterministic keys, record the image and announce the result.
//!
//! Redeliveries and repeated events are harmless: an image already
//! processed repeats its outcome without touching the store, and one whose
//! first attempt failed half-way (thumbnails written, transaction rolled
//! back) overwrites the same objects.

use sea_orm::EntityTrait;
use sea_orm::sea_query::OnConflict;
use serde::{Deserialize, Serialize};
use sluice_kit::db::now_micros;
use sluice_kit::{Ctx, HandlerError};
use sluice_proto::shop::media::v1::{ImageRejected, ImageThumbnailed, ImageUploaded, Thumbnail};

use crate::Media;
use crate::store::{MediaError, image_folder, is_key_segment};
use crate::tables::images;
use crate::thumbs::{self, Undecodable};

/// Every thumbnail was written.
pub const THUMBNAILED: &str = "thumbnailed";
/// The original could not be decoded.
pub const REJECTED: &str = "rejected";

/// A thumbnail as kept in `images.thumbnails`.
#[derive(Debug, Serialize, Deserialize)]
struct StoredThumbnail {
    size: String,
    key: String,
    width: u32,
    height: u32,
    content_type: String,
    size_bytes: u64,
}

impl From<StoredThumbnail> for Thumbnail {
    fn from(t: StoredThumbnail) -> Self {
        Self {
            size: t.size,
            key: t.key,
            width: t.width,
            height: t.height,
            content_type: t.content_type,
            size_bytes: t.size_bytes,
        }
    }
}

impl From<&Thumbnail> for StoredThumbnail {
    fn from(t: &Thumbnail) -> Self {
        Self {
            size: t.size.clone(),
            key: t.key.clone(),
            width: t.width,
            height: t.height,
            content_type: t.content_type.clone(),
            size_bytes: t.size_bytes,
        }
    }
}

/// The handler of `media.image.uploaded`.
pub(crate) async fn thumbnail(ctx: Ctx<Media>, ev: ImageUploaded) -> Result<(), HandlerError> {
    check(&ev)?;
    if let Some(row) = images::Entity::find_by_id(ev.image_id.clone())
        .one(ctx.db())
        .await?
        && repeat(&ctx, &ev, &row)
    {
        return Ok(());
    }
    let store = &ctx.state().store;
    let original = store.get(&ev.key).await.map_err(|e| match e {
        // Perhaps not visible yet (an eventually consistent store) or
        // restored later: retried, then dead-lettered with this reason.
        MediaError::NotFound(_) => HandlerError::Transient(format!("original missing: {e}")),
        e => HandlerError::transient(e),
    })?;
    let rendered = tokio::task::spawn_blocking(move || thumbs::render(&original))
        .await
        .map_err(|e| HandlerError::Transient(format!("the thumbnail task failed: {e}")))?;
    let rendered = match rendered {
        Ok(r) => r,
        Err(Undecodable(reason)) => {
            record(&ctx, &ev, REJECTED, &reason, "[]").await?;
            tracing::info!(image = %ev.image_id, key = %ev.key, %reason, "image rejected");
            announce_rejected(&ctx, &ev, reason);
            return Ok(());
        }
    };
    let folder = image_folder(&ev.product_id, &ev.image_id);
    let mut thumbnails = Vec::with_capacity(rendered.len());
    for r in rendered {
        let key = format!("{folder}/{}.{}", r.size.name, r.extension);
        let size_bytes = r.bytes.len() as u64;
        store
            .put(&key, r.bytes.into(), r.content_type)
            .await
            .map_err(HandlerError::transient)?;
        thumbnails.push(Thumbnail {
            size: r.size.name.to_owned(),
            key,
            width: r.width,
            height: r.height,
            content_type: r.content_type.to_owned(),
            size_bytes,
        });
    }
    let stored: Vec<StoredThumbnail> = thumbnails.iter().map(StoredThumbnail::from).collect();
    let json = serde_json::to_string(&stored).map_err(HandlerError::permanent)?;
    record(&ctx, &ev, THUMBNAILED, "", &json).await?;
    tracing::info!(image = %ev.image_id, key = %ev.key, count = thumbnails.len(), "thumbnails made");
    announce_thumbnailed(&ctx, &ev, thumbnails);
    Ok(())
}

/// An event that can never be processed is a permanent error.
fn check(ev: &ImageUploaded) -> Result<(), HandlerError> {
    if !is_key_segment(&ev.image_id) || !is_key_segment(&ev.product_id) {
        return Err(HandlerError::Permanent(format!(
            "invalid image id {:?} or product id {:?}",
            ev.image_id, ev.product_id
        )));
    }
    let folder = image_folder(&ev.product_id, &ev.image_id);
    let name = ev.key.strip_prefix(&format!("{folder}/"));
    if !name.is_some_and(|n| n.starts_with("original.") && !n.contains('/')) {
        return Err(HandlerError::Permanent(format!(
            "key {:?} is not an original in {folder}/",
            ev.key
        )));
    }
    Ok(())
}

/// Repeats the outcome of an image processed before; `false` when there is
/// none to repeat (then it is processed again).
fn repeat(ctx: &Ctx<Media>, ev: &ImageUploaded, row: &images::Model) -> bool {
    match row.status.as_str() {
        THUMBNAILED => match serde_json::from_str::<Vec<StoredThumbnail>>(&row.thumbnails) {
            Ok(stored) => {
                announce_thumbnailed(ctx, ev, stored.into_iter().map(Thumbnail::from).collect());
                true
            }
            Err(e) => {
                tracing::warn!(image = %row.image_id, error = %e, "recorded thumbnails unreadable; making them again");
                false
            }
        },
        REJECTED => {
            announce_rejected(ctx, ev, row.reason.clone());
            true
        }
        _ => false,
    }
}

/// Inserts or updates the image's row.
async fn record(
    ctx: &Ctx<Media>,
    ev: &ImageUploaded,
    status: &str,
    reason: &str,
    thumbnails: &str,
) -> Result<(), HandlerError> {
    let now = now_micros();
    let row = images::ActiveModel {
        image_id: sea_orm::Set(ev.image_id.clone()),
        product_id: sea_orm::Set(ev.product_id.clone()),
        original_key: sea_orm::Set(ev.key.clone()),
        status: sea_orm::Set(status.to_owned()),
        reason: sea_orm::Set(reason.to_owned()),
        thumbnails: sea_orm::Set(thumbnails.to_owned()),
        created_at: sea_orm::Set(now),
        updated_at: sea_orm::Set(now),
    };
    images::Entity::insert(row)
        .on_conflict(
            OnConflict::column(images::Column::ImageId)
                .update_columns([
                    images::Column::Status,
                    images::Column::Reason,
                    images::Column::Thumbnails,
                    images::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(ctx.db())
        .await?;
    Ok(())
}

fn announce_thumbnailed(ctx: &Ctx<Media>, ev: &ImageUploaded, thumbnails: Vec<Thumbnail>) {
    ctx.emit(
        &ctx.state().subjects.image_thumbnailed,
        &ev.image_id,
        &ImageThumbnailed {
            image_id: ev.image_id.clone(),
            product_id: ev.product_id.clone(),
            key: ev.key.clone(),
            thumbnails,
        },
    );
}

fn announce_rejected(ctx: &Ctx<Media>, ev: &ImageUploaded, reason: String) {
    ctx.emit(
        &ctx.state().subjects.image_rejected,
        &ev.image_id,
        &ImageRejected {
            image_id: ev.image_id.clone(),
            product_id: ev.product_id.clone(),
            key: ev.key.clone(),
            reason,
        },
    );
}
