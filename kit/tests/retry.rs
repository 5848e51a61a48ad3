//! The retry policy settling real deliveries on the embedded broker.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use sluice_broker::embedded::EmbeddedBroker;
use sluice_broker::{
    Broker, OutboundMessage, StartPosition, SubscribeOptions, Subscription, dead_letter,
};
use sluice_kit::{HandlerError, RetryPolicy, Settled};
use sluice_proto::Envelope;

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_deliveries: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        multiplier: 2.0,
        jitter: 0.5,
    }
}

async fn setup() -> (tempfile::TempDir, EmbeddedBroker, Subscription) {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(&dir.path().join("log.db"), Default::default())
        .await
        .unwrap();
    let sub = broker
        .subscribe(SubscribeOptions::new("svc", "orders.>").max_deliveries(10))
        .await
        .unwrap();
    let env = Envelope::with_type("shop.orders.v1.OrderConfirmed", "/t");
    broker
        .publish(OutboundMessage::new(
            "orders.order.confirmed",
            env.to_headers(),
            Bytes::new(),
        ))
        .await
        .unwrap();
    (dir, broker, sub)
}

async fn next(sub: &mut Subscription) -> sluice_broker::Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

async fn dead_letter_reason(broker: &EmbeddedBroker) -> String {
    let mut dlq = broker
        .subscribe(SubscribeOptions::new("ops", "dlq.orders.>").start(StartPosition::Beginning))
        .await
        .unwrap();
    let d = next(&mut dlq).await;
    dead_letter::reason(&d.message).unwrap().to_owned()
}

#[tokio::test]
async fn a_transient_failure_is_retried_until_the_handler_succeeds() {
    let (_dir, _broker, mut sub) = setup().await;
    for attempt in 1..=2 {
        let d = next(&mut sub).await;
        assert_eq!(d.message.delivered, attempt);
        let s = policy()
            .settle(d, Err(HandlerError::Transient("db locked".into())))
            .await
            .unwrap();
        assert!(matches!(s, Settled::Retried(_)), "{s:?}");
    }
    let d = next(&mut sub).await;
    assert_eq!(d.message.delivered, 3);
    assert_eq!(policy().settle(d, Ok(())).await.unwrap(), Settled::Acked);
}

#[tokio::test]
async fn a_permanent_failure_is_dead_lettered_on_the_first_delivery() {
    let (_dir, broker, mut sub) = setup().await;
    let d = next(&mut sub).await;
    let s = policy()
        .settle(d, Err(HandlerError::Permanent("negative quantity".into())))
        .await
        .unwrap();
    assert_eq!(s, Settled::DeadLettered("negative quantity".into()));
    assert_eq!(dead_letter_reason(&broker).await, "negative quantity");
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_dead_lettered_with_the_last_error() {
    let (_dir, broker, mut sub) = setup().await;
    for attempt in 1..=3 {
        let d = next(&mut sub).await;
        assert_eq!(d.message.delivered, attempt);
        policy()
            .settle(
                d,
                Err(HandlerError::Transient(format!("timeout #{attempt}"))),
            )
            .await
            .unwrap();
    }
    assert_eq!(
        dead_letter_reason(&broker).await,
        "failed 3 deliveries, last error: timeout #3"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err()
    );
}
