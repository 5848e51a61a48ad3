//! RabbitMQ publishes are mandatory: a message no queue takes is an error,
//! never a silent drop.

#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

mod support;

use sluice_broker::amqp::{AmqpBroker, AmqpOptions};
use sluice_broker::testing::{amqp_url, unique};
use sluice_broker::{Broker, BrokerError};
use support::msg;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_no_queue_takes_is_reported_unroutable() {
    let name = unique("sluice-test-");
    let broker = AmqpBroker::connect(&amqp_url(), AmqpOptions::for_tests(&name))
        .await
        .expect("RabbitMQ is required (run scripts/test.sh)");
    let domain = unique("ur");
    let subject = format!("{domain}.order.confirmed");
    broker
        .publish(msg(&subject))
        .await
        .expect("routable while the stream queue exists");

    // An operator deletes the domain's stream queue behind the broker's back.
    let stream_queue = format!("{name}.stream.{domain}");
    let out = Command::new("rabbitmqctl")
        .args(["delete_queue", &stream_queue])
        .output()
        .expect("rabbitmqctl is needed (run scripts/test.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let err = broker
        .publish(msg(&subject))
        .await
        .expect_err("nothing takes it now");
    assert!(
        matches!(err, BrokerError::Unroutable(ref s) if *s == subject),
        "{err}"
    );
    let results = broker
        .publish_batch(vec![msg(&subject), msg(&subject)])
        .await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(BrokerError::Unroutable(_))))
    );

    broker.delete_domain(&domain).await.unwrap();
    broker.delete_topology().await.unwrap();
    broker.close().await;
}
