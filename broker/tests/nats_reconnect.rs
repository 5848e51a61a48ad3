//! The NATS backend survives the server going away mid-stream: the
//! subscription resumes and every message arrives (at-least-once); a
//! cursor whose consumer is lost goes on where it was.

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use futures::StreamExt;
use sluice_broker::nats::NatsBroker;
use sluice_broker::testing::{NatsServer, unique};
use sluice_broker::{Broker, StartPosition};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_the_server_restarts() {
    let mut server = NatsServer::start();
    let broker = NatsBroker::connect(&server.url(), Default::default())
        .await
        .unwrap();
    support::every_message_arrives_across(&broker, || server.restart()).await;
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_goes_on_where_it_was_when_its_consumer_is_lost() {
    let server = NatsServer::start();
    let broker = NatsBroker::connect(&server.url(), Default::default())
        .await
        .unwrap();
    let domain = unique("cursorloss");
    let subject = format!("{domain}.order.placed");
    for _ in 0..50 {
        broker.publish(support::msg(&subject)).await.unwrap();
    }
    let mut cursor = broker
        .cursor(&format!("{domain}.>"), StartPosition::Beginning)
        .await
        .unwrap()
        .expect("NATS has a cursor");
    let first = cursor.next_batch(10).await.unwrap();
    assert_eq!(first.len(), 10);
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
    let mut rest = Vec::new();
    loop {
        let batch = cursor.next_batch(100).await.unwrap();
        if batch.is_empty() {
            break;
        }
        rest.extend(batch);
    }
    let sequences: Vec<u64> = first
        .iter()
        .chain(&rest)
        .map(|m| m.sequence.unwrap())
        .collect();
    assert_eq!(
        sequences,
        (1..=50).collect::<Vec<u64>>(),
        "each once, in order"
    );
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_goes_on_where_it_was_after_the_server_restarts() {
    let mut server = NatsServer::start();
    let broker = NatsBroker::connect(&server.url(), Default::default())
        .await
        .unwrap();
    let domain = unique("cursorrestart");
    let subject = format!("{domain}.order.placed");
    // More than one pull request holds, so reading on needs the server.
    const N: u64 = 10_000;
    for r in broker
        .publish_batch((0..N).map(|_| support::msg(&subject)).collect())
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
    // The stream is on file and survives; the cursor's in-memory consumer,
    // the connection and what the client had not yet received do not.
    server.restart();
    let mut rest = Vec::new();
    loop {
        let batch = cursor.next_batch(1000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        rest.extend(batch);
    }
    let sequences: Vec<u64> = first
        .iter()
        .chain(&rest)
        .map(|m| m.sequence.unwrap())
        .collect();
    let wrong = sequences.iter().zip(1..).find(|(got, want)| **got != *want);
    assert!(
        wrong.is_none() && sequences.len() as u64 == N,
        "each once, in order: {} read, first wrong {wrong:?}",
        sequences.len()
    );
    broker.close().await;
}
