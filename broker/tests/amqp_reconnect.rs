//! The RabbitMQ backend survives the server closing its connection
//! mid-stream: it reconnects, resumes consuming, and every message arrives.

#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use sluice_broker::amqp::{AmqpBroker, AmqpOptions};
use sluice_broker::testing::{amqp_url, unique};
use sluice_broker::{Broker, OutboundMessage, SubscribeOptions};
use sluice_proto::Envelope;

fn msg(subject: &str) -> OutboundMessage {
    let env = Envelope::with_type("shop.orders.v1.OrderConfirmed", "/t");
    OutboundMessage::new(subject, env.to_headers(), Bytes::from_static(b"x"))
}

async fn publish_retrying(broker: &AmqpBroker, m: OutboundMessage) {
    for _ in 0..150 {
        if broker.publish(m.clone()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("publish did not succeed after reconnecting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_the_connection_is_closed_by_the_server() {
    let name = unique("sluice-test-");
    let broker = AmqpBroker::connect(&amqp_url(), AmqpOptions::for_tests(&name))
        .await
        .expect("RabbitMQ is required (run scripts/test.sh)");
    let domain = unique("rc");
    let subject = format!("{domain}.order.confirmed");
    let mut sub = broker
        .subscribe(
            SubscribeOptions::new("g", format!("{domain}.>")).ack_wait(Duration::from_secs(5)),
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

    let out = Command::new("rabbitmqctl")
        .args(["close_all_connections", "sluice reconnect test"])
        .output()
        .expect("rabbitmqctl is needed to force a disconnect (run scripts/test.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let second: Vec<_> = (0..500).map(|_| msg(&subject)).collect();
    for m in second {
        expected.insert(m.id().unwrap().to_owned());
        publish_retrying(&broker, m).await;
    }
    while seen.len() < expected.len() {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("messages keep arriving after the reconnect")
            .expect("subscription still open");
        let Ok(d) = d else { continue };
        seen.insert(d.message.id().unwrap().to_owned());
        let _ = d.ack().await;
    }
    assert_eq!(seen, expected, "every message arrived");
    sub.close().await;
    broker.delete_domain(&domain).await.unwrap();
    broker.delete_topology().await.unwrap();
    broker.close().await;
}
