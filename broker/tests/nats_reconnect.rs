//! The NATS backend survives the server going away mid-stream: the
//! subscription resumes and every message arrives (at-least-once); a
//! cursor whose consumer is lost goes on where it was.

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use futures::StreamExt;
use sluice_broker::nats::NatsBroker;
use sluice_broker::testing::{NatsServer, unique};
use sluice_broker::{Broker, LogCursor, StartPosition};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_the_server_restarts() {
    let mut server = NatsServer::start();
    let broker = NatsBroker::connect(&server.url(), Default::default())
        .await
        .unwrap();
    support::every_message_arrives_across(&broker, || server.restart()).await;
    broker.close().await;
}

/// Publishes `n` messages to a fresh domain and reads the first 10 of them
/// through a cursor; returns the cursor and their sequences.
async fn cursor_ten_in(broker: &NatsBroker, n: u64) -> (Box<dyn LogCursor>, Vec<u64>) {
    let domain = unique("cursor");
    let subject = format!("{domain}.order.placed");
    for r in broker
        .publish_batch((0..n).map(|_| support::msg(&subject)).collect())
        .await
    {
        r.unwrap();
    }
    let mut cursor = broker
        .cursor(&format!("{domain}.>"), StartPosition::Beginning)
        .await
        .unwrap()
        .expect("NATS has a cursor");
    let first = cursor.next_batch(10).await.unwrap();
    assert_eq!(first.len(), 10);
    (cursor, first.iter().map(|m| m.sequence.unwrap()).collect())
}

/// Reads `cursor` to the end after the `sequences` read so far, asserting that
/// 1..=`n` came each once, in order.
async fn read_on_to(cursor: &mut dyn LogCursor, mut sequences: Vec<u64>, n: u64) {
    loop {
        let batch = cursor.next_batch(1000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        sequences.extend(batch.iter().map(|m| m.sequence.unwrap()));
    }
    let wrong = sequences.iter().zip(1..).find(|(got, want)| **got != *want);
    assert!(
        wrong.is_none() && sequences.len() as u64 == n,
        "each once, in order: {} read, first wrong {wrong:?}",
        sequences.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_goes_on_where_it_was_when_its_consumer_is_lost() {
    let server = NatsServer::start();
    let broker = NatsBroker::connect(&server.url(), Default::default())
        .await
        .unwrap();
    let (mut cursor, first) = cursor_ten_in(&broker, 50).await;
    // The server loses the cursor's consumer (as a restart loses an
    // in-memory one): every consumer of the domain's stream is deleted.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut deleted = 0;
    let mut names = js.stream_names();
    while let Some(name) = names.next().await {
        let stream = js.get_stream(name.unwrap()).await.unwrap();
        let mut consumers = stream.consumer_names();
        while let Some(c) = consumers.next().await {
            stream.delete_consumer(&c.unwrap()).await.unwrap();
            deleted += 1;
        }
    }
    assert_eq!(deleted, 1, "the cursor's one consumer");
    read_on_to(&mut *cursor, first, 50).await;
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_goes_on_where_it_was_after_the_server_restarts() {
    let mut server = NatsServer::start();
    let broker = NatsBroker::connect(&server.url(), Default::default())
        .await
        .unwrap();
    // More than one pull request holds, so reading on needs the server.
    let (mut cursor, first) = cursor_ten_in(&broker, 10_000).await;
    // The stream is on file and survives; the cursor's in-memory consumer,
    // the connection and what the client had not yet received do not.
    server.restart();
    read_on_to(&mut *cursor, first, 10_000).await;
    broker.close().await;
}
