//! The NATS backend survives the server going away mid-stream: the
//! subscription resumes and every message arrives (at-least-once).

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use sluice_broker::Broker;
use sluice_broker::nats::NatsBroker;
use sluice_broker::testing::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_after_the_server_restarts() {
    let mut server = NatsServer::start();
    let broker = NatsBroker::connect(&server.url(), Default::default())
        .await
        .unwrap();
    support::every_message_arrives_across(&broker, || server.restart()).await;
    broker.close().await;
}
