//! Embedded-log specifics: the log survives a restart, and a second process
//! (here: a second broker on the same file) can publish to a running consumer.

#![cfg(feature = "embedded")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use sluice_broker::embedded::{EmbeddedBroker, EmbeddedOptions};
use sluice_broker::{Broker, Headers, OutboundMessage, StartPosition, SubscribeOptions};
use sluice_proto::Envelope;

fn msg(n: u32) -> OutboundMessage {
    let env = Envelope::with_type("shop.orders.v1.OrderConfirmed", "/t");
    OutboundMessage::new(
        "log.order.confirmed",
        env.to_headers(),
        Bytes::from(n.to_be_bytes().to_vec()),
    )
}

fn n(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload.try_into().unwrap())
}

#[tokio::test]
async fn messages_and_group_positions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let opts = SubscribeOptions::new("g", "log.>").start(StartPosition::Beginning);
    {
        let b = EmbeddedBroker::open(&path, EmbeddedOptions::default())
            .await
            .unwrap();
        for r in b.publish_batch((0..10).map(msg).collect()).await {
            r.unwrap();
        }
        let mut sub = b.subscribe(opts.clone()).await.unwrap();
        for i in 0..4 {
            let d = sub.next().await.unwrap().unwrap();
            assert_eq!(n(&d.message.payload), i);
            d.ack().await.unwrap();
        }
        sub.close().await;
        b.close().await;
    }
    let b = EmbeddedBroker::open(&path, EmbeddedOptions::default())
        .await
        .unwrap();
    let mut sub = b.subscribe(opts).await.unwrap();
    for i in 4..10 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(n(&d.message.payload), i, "resumed after the last ack");
        d.ack().await.unwrap();
    }
    // The same ce-id is still known after the restart.
    let first = msg(99);
    b.publish(first.clone()).await.unwrap();
    let again = b.publish(first).await.unwrap();
    assert!(again.duplicate);
    sub.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_publisher_in_another_process_reaches_a_running_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let consumer = EmbeddedBroker::open(&path, EmbeddedOptions::default())
        .await
        .unwrap();
    let mut sub = consumer
        .subscribe(SubscribeOptions::new("g", "log.>"))
        .await
        .unwrap();
    // A second handle on the file stands in for `sluice publish` in another process.
    let publisher = EmbeddedBroker::open(&path, EmbeddedOptions::default())
        .await
        .unwrap();
    let ack = publisher.publish(msg(7)).await.unwrap();
    assert_eq!(ack.sequence, Some(1));
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(n(&d.message.payload), 7);
    d.ack().await.unwrap();
    // Sequences stay unique when both write.
    let a = consumer.publish(msg(8)).await.unwrap();
    let b = publisher.publish(msg(9)).await.unwrap();
    assert_eq!((a.sequence, b.sequence), (Some(2), Some(3)));
    // An id the other process published is a duplicate here too.
    let dup = msg(10);
    publisher.publish(dup.clone()).await.unwrap();
    assert!(consumer.publish(dup).await.unwrap().duplicate);
    sub.close().await;
    publisher.close().await;
    consumer.close().await;
}

#[tokio::test]
async fn a_bad_subject_is_refused_without_touching_the_rest_of_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let b = EmbeddedBroker::open(&dir.path().join("log.db"), EmbeddedOptions::default())
        .await
        .unwrap();
    let bad = OutboundMessage::new("nodomain", Headers::new(), Bytes::new());
    let results = b.publish_batch(vec![msg(1), bad, msg(2)]).await;
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(
        results[1],
        Err(sluice_broker::BrokerError::Subject { .. })
    ));
    b.close().await;
}

#[tokio::test]
async fn an_unwritable_path_is_a_clear_error() {
    let err = EmbeddedBroker::open(
        std::path::Path::new("/proc/nope/log.db"),
        EmbeddedOptions::default(),
    )
    .await
    .expect_err("cannot create");
    assert!(err.to_string().contains("/proc/nope"), "{err}");
}
