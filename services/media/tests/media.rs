//! The media service on every broker backend, with SQLite and PostgreSQL:
//! uploads thumbnailed with the right dimensions, repeated events making
//! the same objects and one row, corrupt images rejected with a reason, bad
//! events dead-lettered; and uploads refused before anything is stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait, TransactionTrait};
use sluice_broker::{
    InboundMessage, OutboundMessage, StartPosition, SubscribeOptions, Subscription,
};
use sluice_kit::testing::{BrokerBackend, DbBackend, TestBroker, TestDb};
use sluice_kit::{Emitter, KitConfig, Metrics, RunningService};
use sluice_media::tables::images;
use sluice_media::{ImageStore, MediaError, Subjects};
use sluice_proto::Envelope;
use sluice_proto::shop::media::v1::{ImageRejected, ImageThumbnailed, ImageUploaded};

const WAIT: Duration = Duration::from_secs(60);

struct Env {
    tb: TestBroker,
    tdb: TestDb,
    subjects: Subjects,
    store: ImageStore,
    dir: tempfile::TempDir,
    running: Option<RunningService>,
    events: Subscription,
}

impl Env {
    async fn start(b: BrokerBackend, d: DbBackend) -> Self {
        let tb = TestBroker::start(b).await;
        let tdb = TestDb::start(d).await;
        let subjects = Subjects::new(&tb.domain);
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::local(dir.path().join("media")).unwrap();
        let mut config = KitConfig::default();
        // Fast retries for the missing original.
        config.consumers.insert(
            sluice_media::NAME.into(),
            sluice_kit::config::ConsumerConfig {
                initial_backoff_ms: Some(50),
                max_deliveries: Some(3),
                ..Default::default()
            },
        );
        let running = sluice_media::start(
            tb.broker.clone(),
            tdb.db.clone(),
            &config,
            Metrics::new(),
            subjects.clone(),
            store.clone(),
        )
        .await
        .unwrap();
        let o = SubscribeOptions::new("observer", format!("{}.image.*", tb.domain))
            .start(StartPosition::Beginning);
        let events = tb.broker.subscribe(o).await.unwrap();
        Self {
            tb,
            tdb,
            subjects,
            store,
            dir,
            running: Some(running),
            events,
        }
    }

    /// Publishes `media.image.uploaded` for `stored` with a new event id.
    async fn announce(&self, uploaded: &ImageUploaded) -> Envelope {
        let e = Envelope::new::<ImageUploaded>("/sluice/edge").subject(&uploaded.image_id);
        self.publish(&e, uploaded).await;
        e
    }

    async fn publish(&self, e: &Envelope, uploaded: &ImageUploaded) {
        let m = OutboundMessage::event(&self.subjects.image_uploaded, e, uploaded);
        self.tb.broker.publish(m).await.unwrap();
    }

    /// The next thumbnailed or rejected event, acked (uploads are skipped).
    async fn next(&mut self) -> InboundMessage {
        loop {
            let d = tokio::time::timeout(WAIT, self.events.next())
                .await
                .expect("a media event in time")
                .unwrap()
                .unwrap();
            let m = d.message.clone();
            d.ack().await.unwrap();
            if type_of(&m) != "shop.media.v1.ImageUploaded" {
                return m;
            }
        }
    }

    async fn thumbnailed(&mut self) -> ImageThumbnailed {
        let m = self.next().await;
        m.decode::<ImageThumbnailed>()
            .unwrap_or_else(|e| panic!("{} instead of a thumbnailed event: {e}", type_of(&m)))
            .1
    }

    async fn quiet(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
        while let Ok(d) = tokio::time::timeout_at(deadline, self.events.next()).await {
            let d = d.unwrap().unwrap();
            let m = d.message.clone();
            d.ack().await.unwrap();
            assert_eq!(
                type_of(&m),
                "shop.media.v1.ImageUploaded",
                "no further outcome events"
            );
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("media")
    }

    async fn rows(&self) -> Vec<images::Model> {
        images::Entity::find().all(&self.tdb.db).await.unwrap()
    }

    async fn cleanup(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.events.close().await;
        self.tb.cleanup().await;
        self.tdb.cleanup().await;
    }
}

fn type_of(m: &InboundMessage) -> &str {
    m.headers.get("ce-type").unwrap_or_default()
}

/// Every file under `dir`, as paths relative to it.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The longer side is the box's, the shorter one keeps the aspect (±1).
fn fits(original: (u32, u32), thumb: (u32, u32), max: u32) {
    let (w, h) = original;
    if w <= max && h <= max {
        assert_eq!(thumb, original, "never enlarged");
        return;
    }
    assert_eq!(
        thumb.0.max(thumb.1),
        max,
        "{original:?} into {max}: {thumb:?}"
    );
    let expected = f64::from(w.min(h)) * f64::from(max) / f64::from(w.max(h));
    let shorter = f64::from(thumb.0.min(thumb.1));
    assert!(
        (shorter - expected).abs() <= 1.0,
        "{original:?} into {max}: {thumb:?}"
    );
    assert_eq!(w >= h, thumb.0 >= thumb.1, "orientation kept");
}

async fn uploads_get_thumbnails_of_the_right_sizes(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::start(b, d).await;
    // Through the library's one-call upload: stored, and announced through
    // the outbox of the service's own database.
    let emitter = Emitter::new(
        sluice_media::NAME,
        env.running.as_ref().unwrap().relay_waker(),
    );
    let txn = env.tdb.db.begin().await.unwrap();
    let png = env
        .store
        .upload(
            &emitter,
            txn,
            &env.subjects,
            "p-1",
            Bytes::from(common::png(1000, 600, false)),
            "image/png",
            Some("req-1"),
        )
        .await
        .unwrap();
    // The others stored, then announced by hand.
    let mut uploads = vec![(png, (1000, 600))];
    for (bytes, content_type, dims) in [
        (common::jpeg(300, 900), "image/jpeg", (300, 900)),
        (common::png(100, 80, true), "", (100, 80)),
        (common::webp(640, 640), "image/webp", (640, 640)),
    ] {
        let stored = env
            .store
            .store_original("p-2", Bytes::from(bytes), content_type)
            .await
            .unwrap();
        env.announce(&stored.uploaded()).await;
        uploads.push((stored, dims));
    }

    let mut outcomes = BTreeMap::new();
    for _ in 0..uploads.len() {
        let t = env.thumbnailed().await;
        outcomes.insert(t.image_id.clone(), t);
    }
    for (stored, dims) in &uploads {
        assert_eq!((stored.width, stored.height), *dims);
        let t = &outcomes[&stored.image_id];
        assert_eq!(
            (t.product_id.as_str(), t.key.as_str()),
            (stored.product_id.as_str(), stored.key.as_str())
        );
        let sizes: Vec<_> = t.thumbnails.iter().map(|t| t.size.as_str()).collect();
        assert_eq!(sizes, ["medium", "small"]);
        let alpha = stored.content_type == "image/png" && dims == &(100, 80);
        for (thumb, max) in t.thumbnails.iter().zip([512, 128]) {
            let folder = format!("products/{}/{}/", stored.product_id, stored.image_id);
            let ext = if alpha { "png" } else { "jpg" };
            assert_eq!(thumb.key, format!("{folder}{}.{ext}", thumb.size));
            let bytes = env.store.get(&thumb.key).await.unwrap();
            assert_eq!(bytes.len() as u64, thumb.size_bytes);
            assert_eq!(common::dimensions(&bytes), (thumb.width, thumb.height));
            fits(*dims, (thumb.width, thumb.height), max);
            let (format, content_type) = if alpha {
                (image::ImageFormat::Png, "image/png")
            } else {
                (image::ImageFormat::Jpeg, "image/jpeg")
            };
            assert_eq!(common::format(&bytes), format);
            assert_eq!(thumb.content_type, content_type);
        }
    }
    let rows = env.rows().await;
    assert_eq!(rows.len(), uploads.len());
    assert!(rows.iter().all(|r| r.status == sluice_media::THUMBNAILED));
    env.quiet().await;
    env.cleanup().await;
}

async fn the_same_upload_twice_makes_the_same_objects_and_one_row(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::start(b, d).await;
    let stored = env
        .store
        .store_original(
            "p-3",
            Bytes::from(common::png(700, 300, false)),
            "image/png",
        )
        .await
        .unwrap();
    let uploaded = stored.uploaded();
    let first_envelope = env.announce(&uploaded).await;
    let first = env.thumbnailed().await;
    let objects = files(&env.root());
    assert_eq!(objects.len(), 3, "original and two thumbnails: {objects:?}");
    let medium = env.store.get(&first.thumbnails[0].key).await.unwrap();

    // The same event again (same id): the inbox drops it.
    env.publish(&first_envelope, &uploaded).await;
    // The same upload announced again (a new id): the recorded outcome.
    env.announce(&uploaded).await;
    assert_eq!(env.thumbnailed().await, first);
    // A first attempt that wrote the thumbnails and then lost its
    // transaction: processing again overwrites the same objects.
    env.tdb
        .db
        .execute_unprepared("DELETE FROM images")
        .await
        .unwrap();
    env.announce(&uploaded).await;
    assert_eq!(env.thumbnailed().await, first);
    env.quiet().await;
    assert_eq!(files(&env.root()), objects, "the same objects");
    assert_eq!(
        env.store.get(&first.thumbnails[0].key).await.unwrap(),
        medium
    );
    assert_eq!(
        images::Entity::find().count(&env.tdb.db).await.unwrap(),
        1,
        "one row"
    );
    env.cleanup().await;
}

async fn a_corrupt_image_is_rejected_with_a_reason(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::start(b, d).await;
    let mut truncated = common::png(300, 300, false);
    truncated.truncate(truncated.len() / 2);
    let cases = [
        (
            "i-garbage",
            b"this is no image at all".to_vec(),
            "not an image",
        ),
        ("i-truncated", truncated, "cannot decode the image"),
    ];
    for (id, bytes, _) in &cases {
        let key = format!("products/p-4/{id}/original.png");
        env.store
            .put(&key, Bytes::from(bytes.clone()), "image/png")
            .await
            .unwrap();
        let uploaded = ImageUploaded {
            image_id: (*id).into(),
            product_id: "p-4".into(),
            key,
            content_type: "image/png".into(),
            size_bytes: bytes.len() as u64,
            width: 300,
            height: 300,
        };
        env.announce(&uploaded).await;
    }
    let mut reasons = BTreeMap::new();
    for _ in 0..cases.len() {
        let m = env.next().await;
        let (_, rejected) = m.decode::<ImageRejected>().unwrap();
        reasons.insert(rejected.image_id.clone(), rejected.reason);
    }
    for (id, _, reason) in &cases {
        assert!(reasons[*id].starts_with(reason), "{id}: {reasons:?}");
    }
    let rows = env.rows().await;
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row.status, sluice_media::REJECTED);
        assert_eq!(row.reason, reasons[&row.image_id]);
        assert_eq!(row.thumbnails, "[]");
    }
    env.quiet().await;
    env.cleanup().await;
}

async fn bad_events_are_dead_lettered_with_a_reason(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::start(b, d).await;
    // A payload that is not an ImageUploaded.
    let e = Envelope::new::<ImageUploaded>("/sluice/edge").subject("x");
    let garbage = OutboundMessage::new(
        &env.subjects.image_uploaded,
        e.to_headers(),
        Bytes::from_static(&[0xff]),
    );
    env.tb.broker.publish(garbage).await.unwrap();
    // A key outside the image's folder.
    let mut outside = ImageUploaded {
        image_id: "i-1".into(),
        product_id: "p-5".into(),
        key: "products/p-6/i-1/original.png".into(),
        ..Default::default()
    };
    env.announce(&outside).await;
    // An original that is not in the store: retried, then dead-lettered.
    outside.key = "products/p-5/i-1/original.png".into();
    env.announce(&outside).await;

    let reasons =
        sluice_kit::testing::dead_letter_reasons(env.tb.broker.as_ref(), &env.tb.domain, 3, WAIT)
            .await;
    for expected in [
        "payload does not decode as shop.media.v1.ImageUploaded",
        "key \"products/p-6/i-1/original.png\" is not an original in products/p-5/i-1/",
        "failed 3 deliveries, last error: original missing: no object products/p-5/i-1/original.png",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected:?} in {reasons:?}"
        );
    }
    env.quiet().await;
    assert!(env.rows().await.is_empty());
    env.cleanup().await;
}

sluice_kit::backend_matrix!(
    uploads_get_thumbnails_of_the_right_sizes,
    the_same_upload_twice_makes_the_same_objects_and_one_row,
    a_corrupt_image_is_rejected_with_a_reason,
    bad_events_are_dead_lettered_with_a_reason,
);

#[tokio::test]
async fn uploads_are_refused_with_clear_errors_before_anything_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::local(dir.path()).unwrap();
    let refuse = |bytes: Vec<u8>, content_type: &'static str, product: &'static str| {
        let store = store.clone();
        async move {
            match store
                .store_original(product, Bytes::from(bytes), content_type)
                .await
            {
                Ok(s) => panic!("stored {s:?}"),
                Err(e) => e,
            }
        }
    };
    let png = common::png(20, 10, false);

    let e = refuse(b"%PDF-1.7 not an image".to_vec(), "", "p").await;
    assert!(matches!(e, MediaError::NotAnImage), "{e}");
    assert_eq!(
        e.to_string(),
        "not an image: the content is not PNG, JPEG or WebP"
    );

    let e = refuse(b"GIF89a\x01\x00\x01\x00\x00\x00\x00".to_vec(), "", "p").await;
    assert!(
        e.to_string().contains("unsupported image format GIF"),
        "{e}"
    );

    let mut big = png.clone();
    big.resize(10 * 1024 * 1024 + 1, 0);
    let e = refuse(big, "image/png", "p").await;
    assert!(matches!(e, MediaError::TooManyBytes { .. }), "{e}");
    assert!(e.to_string().contains("at most 10485760 bytes"), "{e}");

    let e = refuse(common::png_header(9000, 10), "image/png", "p").await;
    assert!(
        matches!(
            e,
            MediaError::TooLargeDimensions {
                width: 9000,
                height: 10,
                max: 8000
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("9000×10 pixels"), "{e}");

    // Within the dimensions, but 16-bit RGBA at 8000×8000 needs 512 MB.
    let e = refuse(common::png_header(8000, 8000), "image/png", "p").await;
    assert!(matches!(e, MediaError::TooMuchMemory { .. }), "{e}");

    let e = refuse(png.clone(), "image/jpeg", "p").await;
    assert!(
        e.to_string()
            .contains("\"image/jpeg\" does not match the image, which is image/png"),
        "{e}"
    );
    let e = refuse(png.clone(), "text/plain", "p").await;
    assert!(matches!(e, MediaError::ContentTypeMismatch { .. }), "{e}");

    let e = refuse(png.clone(), "image/png", "../etc").await;
    assert!(matches!(e, MediaError::InvalidProductId(_)), "{e}");

    assert!(files(dir.path()).is_empty(), "nothing was stored");

    // The same PNG with a fitting declaration (parameters and case aside).
    let stored = store
        .store_original("p", Bytes::from(png.clone()), "Image/PNG; charset=binary")
        .await
        .unwrap();
    assert_eq!(
        (stored.width, stored.height, stored.content_type),
        (20, 10, "image/png")
    );
    assert_eq!(
        files(dir.path()),
        [format!("products/p/{}/original.png", stored.image_id)]
    );
    assert_eq!(store.get(&stored.key).await.unwrap(), png);
    assert!(matches!(
        store.get("products/p/none/original.png").await,
        Err(MediaError::NotFound(_))
    ));
}
