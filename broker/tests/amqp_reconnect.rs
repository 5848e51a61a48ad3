//! The RabbitMQ backend survives the server closing its connection
//! mid-stream: it reconnects, resumes consuming, and every message arrives.

#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::process::Command;

use sluice_broker::Broker;
use sluice_broker::amqp::{AmqpBroker, AmqpOptions};
use sluice_broker::testing::{amqp_url, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_the_connection_is_closed_by_the_server() {
    let name = unique("sluice-test-");
    let broker = AmqpBroker::connect(&amqp_url(), AmqpOptions::for_tests(&name))
        .await
        .expect("RabbitMQ is required (run scripts/test.sh)");
    support::every_message_arrives_across(&broker, || {
        let out = Command::new("rabbitmqctl")
            .args(["close_all_connections", "sluice reconnect test"])
            .output()
            .expect("rabbitmqctl is needed to force a disconnect (run scripts/test.sh)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
    broker.delete_topology().await.unwrap();
    broker.close().await;
}
