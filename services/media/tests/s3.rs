//! The media service on an S3-compatible store: moto's S3 server (PyPI
//! `moto[server]`, provisioned by `scripts/test.sh` into `.tools/moto`, or
//! wherever `SLUICE_TEST_MOTO` points) on a free port, a bucket with a key
//! prefix, an upload thumbnailed through the real S3 client (reqwest,
//! rustls on ring, SigV4 signed with ring).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use sluice_broker::testing::{free_port, workspace_root};
use sluice_broker::{OutboundMessage, StartPosition, SubscribeOptions};
use sluice_kit::testing::{BrokerBackend, DbBackend, TestBroker, TestDb};
use sluice_kit::{KitConfig, Metrics, Secret};
use sluice_media::{ImageStore, MediaError, S3Config, Subjects};
use sluice_proto::Envelope;
use sluice_proto::shop::media::v1::{ImageThumbnailed, ImageUploaded};

/// A moto S3 server for one test, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Self {
        let dir = std::env::var_os("SLUICE_TEST_MOTO")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".tools/moto"));
        assert!(
            dir.join("moto").is_dir(),
            "moto not found in {} (run scripts/test.sh, or pip install --target DIR 'moto[server]' and set SLUICE_TEST_MOTO=DIR)",
            dir.display()
        );
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env("PYTHONPATH", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 -m moto.server");
        let moto = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An unsigned request (moto creates buckets without signatures): the
    /// status line, headers and body as text.
    fn request(&self, method: &str, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn images_are_stored_and_thumbnailed_in_an_s3_bucket() {
    let moto = Moto::start();
    let created = moto.request("PUT", "/shop-media");
    assert!(created.starts_with("HTTP/1.1 200"), "{created}");

    let mut config = S3Config::from_url("s3://shop-media/env/test").unwrap();
    config.endpoint = Some(moto.endpoint());
    config.allow_http = true;
    config.access_key_id = Some("testing".into());
    config.secret_access_key = Some(Secret::new("testing"));
    let store = ImageStore::s3(&config).unwrap();

    let png = common::png(900, 300, false);
    let stored = store
        .store_original("p-s3", Bytes::from(png.clone()), "image/png")
        .await
        .unwrap();
    assert_eq!(store.get(&stored.key).await.unwrap(), png);
    assert!(matches!(
        store.get("products/p-s3/none/original.png").await,
        Err(MediaError::NotFound(_))
    ));

    let tb = TestBroker::start(BrokerBackend::Embedded).await;
    let tdb = TestDb::start(DbBackend::Sqlite).await;
    let subjects = Subjects::new(&tb.domain);
    let running = sluice_media::start(
        tb.broker.clone(),
        tdb.db.clone(),
        &KitConfig::default(),
        Metrics::new(),
        subjects.clone(),
        store.clone(),
    )
    .await
    .unwrap();
    let o = SubscribeOptions::new("observer", subjects.image_thumbnailed.clone())
        .start(StartPosition::Beginning);
    let mut events = tb.broker.subscribe(o).await.unwrap();
    let e = Envelope::new::<ImageUploaded>("/sluice/edge").subject(&stored.image_id);
    let m = OutboundMessage::event(&subjects.image_uploaded, &e, &stored.uploaded());
    tb.broker.publish(m).await.unwrap();

    let d = tokio::time::timeout(Duration::from_secs(60), events.next())
        .await
        .expect("a thumbnailed event in time")
        .unwrap()
        .unwrap();
    let (_, t) = d.message.decode::<ImageThumbnailed>().unwrap();
    d.ack().await.unwrap();
    let dims: Vec<_> = t.thumbnails.iter().map(|t| (t.width, t.height)).collect();
    assert_eq!(dims, [(512, 171), (128, 43)]);
    // The bucket as anyone else sees it: everything under the prefix, each
    // object with its content type.
    let bucket = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("shop-media")
        .with_region("us-east-1")
        .with_endpoint(moto.endpoint())
        .with_allow_http(true)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    for (key, content_type) in [
        (&stored.key, "image/png"),
        (&t.thumbnails[0].key, "image/jpeg"),
        (&t.thumbnails[1].key, "image/jpeg"),
    ] {
        let path = object_store::path::Path::from(format!("env/test/{key}"));
        let object = bucket.get(&path).await.unwrap();
        let attribute = object
            .attributes
            .get(&object_store::Attribute::ContentType)
            .map(|v| v.to_string());
        assert_eq!(attribute.as_deref(), Some(content_type), "{key}");
        let bytes = object.bytes().await.unwrap();
        if key != &stored.key {
            let thumb = t.thumbnails.iter().find(|t| &t.key == key).unwrap();
            assert_eq!(common::dimensions(&bytes), (thumb.width, thumb.height));
        }
    }

    events.close().await;
    running.stop().await;
    tb.cleanup().await;
    tdb.cleanup().await;
}
