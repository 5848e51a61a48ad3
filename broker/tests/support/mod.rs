//! Shared bodies of the backend-specific resilience tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use sluice_broker::testing::unique;
use sluice_broker::{Broker, OutboundMessage, SubscribeOptions};
use sluice_proto::Envelope;

/// A small valid event on `subject` with a fresh `ce-id`.
pub(crate) fn msg(subject: &str) -> OutboundMessage {
    let env = Envelope::with_type("shop.orders.v1.OrderConfirmed", "/t");
    OutboundMessage::new(subject, env.to_headers(), Bytes::from_static(b"x"))
}

/// Publishes, retrying while the client reconnects (same `ce-id`, so a
/// publish that did land is de-duplicated).
async fn publish_retrying(broker: &dyn Broker, m: OutboundMessage) {
    for _ in 0..150 {
        if broker.publish(m.clone()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("publish did not succeed after reconnecting");
}

/// Publishes 500 messages, consumes half, runs `disrupt` (which breaks the
/// connection), publishes 500 more, and asserts that every message arrives.
pub(crate) async fn every_message_arrives_across(broker: &dyn Broker, disrupt: impl FnOnce()) {
    let domain = unique("rc");
    let subject = format!("{domain}.order.confirmed");
    let options =
        SubscribeOptions::new("g", format!("{domain}.>")).ack_wait(Duration::from_secs(3));
    let mut sub = broker.subscribe(options).await.unwrap();
    let first: Vec<_> = (0..500).map(|_| msg(&subject)).collect();
    let mut expected: HashSet<String> = first.iter().map(|m| m.id().unwrap().to_owned()).collect();
    for r in broker.publish_batch(first).await {
        r.unwrap();
    }
    let mut seen = HashSet::new();
    while seen.len() < 250 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("deliveries before the disruption")
            .unwrap()
            .unwrap();
        seen.insert(d.message.id().unwrap().to_owned());
        d.ack().await.unwrap();
    }

    disrupt();

    for _ in 0..500 {
        let m = msg(&subject);
        expected.insert(m.id().unwrap().to_owned());
        publish_retrying(broker, m).await;
    }
    while seen.len() < expected.len() {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("messages keep arriving after the disruption")
            .expect("subscription still open");
        let Ok(d) = d else { continue };
        seen.insert(d.message.id().unwrap().to_owned());
        // An ack on the lost connection may fail; the message comes again.
        let _ = d.ack().await;
    }
    assert_eq!(seen, expected, "every message arrived");
    sub.close().await;
    broker.delete_domain(&domain).await.unwrap();
}
