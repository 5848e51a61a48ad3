//! The NATS backend survives the server going away mid-stream: the
//! subscription resumes and every message arrives (at-least-once).

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use sluice_broker::nats::NatsBroker;
use sluice_broker::testing::{NatsServer, unique};
use sluice_broker::{Broker, OutboundMessage, SubscribeOptions};
use sluice_proto::Envelope;

fn msg(subject: &str) -> OutboundMessage {
    let env = Envelope::with_type("shop.orders.v1.OrderConfirmed", "/t");
    OutboundMessage::new(subject, env.to_headers(), Bytes::from_static(b"x"))
}

async fn publish_retrying(broker: &NatsBroker, m: OutboundMessage) {
    // While the client reconnects a publish may fail; the caller retries
    // (same ce-id, so a publish that did land is de-duplicated).
    for _ in 0..100 {
        if broker.publish(m.clone()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("publish did not succeed after reconnecting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_the_server_restarts() {
    let mut server = NatsServer::start();
    let broker = NatsBroker::connect(&server.url(), Default::default())
        .await
        .unwrap();
    let domain = unique("rc");
    let subject = format!("{domain}.order.confirmed");
    let mut sub = broker
        .subscribe(
            SubscribeOptions::new("g", format!("{domain}.>")).ack_wait(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let first: Vec<_> = (0..500).map(|_| msg(&subject)).collect();
    let mut expected: HashSet<String> = first.iter().map(|m| m.id().unwrap().to_owned()).collect();
    for r in broker.publish_batch(first).await {
        r.unwrap();
    }
    let mut seen = HashSet::new();
    while seen.len() < 250 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.insert(d.message.id().unwrap().to_owned());
        d.ack().await.unwrap();
    }

    server.restart();

    let second: Vec<_> = (0..500).map(|_| msg(&subject)).collect();
    for m in second {
        expected.insert(m.id().unwrap().to_owned());
        publish_retrying(&broker, m).await;
    }
    while seen.len() < expected.len() {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("messages keep arriving after the restart")
            .unwrap();
        let Ok(d) = d else { continue };
        seen.insert(d.message.id().unwrap().to_owned());
        d.ack().await.unwrap();
    }
    assert_eq!(seen, expected, "every message arrived");
    sub.close().await;
    broker.delete_domain(&domain).await.unwrap();
    broker.close().await;
}
