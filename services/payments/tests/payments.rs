//! The payments service on every broker backend, with SQLite and
//! PostgreSQL: one capture per order, declines, provider timeouts retried
//! then declined, refunds once, bad commands dead-lettered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use sluice_broker::{
    InboundMessage, OutboundMessage, StartPosition, SubscribeOptions, Subscription,
};
use sluice_kit::testing::{BrokerBackend, DbBackend, TestBroker, TestDb};
use sluice_kit::{KitConfig, Metrics, RunningService};
use sluice_payments::Subjects;
use sluice_proto::Envelope;
use sluice_proto::shop::payments::v1::{
    ChargePayment, PaymentCaptured, PaymentDeclined, RefundPayment,
};

const WAIT: Duration = Duration::from_secs(30);

struct Env {
    tb: TestBroker,
    tdb: TestDb,
    subjects: Subjects,
    running: Option<RunningService>,
    events: Subscription,
}

impl Env {
    async fn start(b: BrokerBackend, d: DbBackend) -> Self {
        let tb = TestBroker::start(b).await;
        let tdb = TestDb::start(d).await;
        let subjects = Subjects::new(&tb.domain);
        let mut config = KitConfig::default();
        // Fast retries for the timing-out provider.
        config.consumers.insert(
            sluice_payments::NAME.into(),
            sluice_kit::config::ConsumerConfig {
                initial_backoff_ms: Some(50),
                ..Default::default()
            },
        );
        let running = sluice_payments::start(
            tb.broker.clone(),
            tdb.db.clone(),
            &config,
            Metrics::new(),
            subjects.clone(),
        )
        .await
        .unwrap();
        let o = SubscribeOptions::new("observer", format!("{}.payment.>", tb.domain))
            .start(StartPosition::Beginning);
        let events = tb.broker.subscribe(o).await.unwrap();
        Self {
            tb,
            tdb,
            subjects,
            running: Some(running),
            events,
        }
    }

    async fn charge(&self, order: &str, token: &str, amount: i64) {
        let cmd = ChargePayment {
            order_id: order.into(),
            amount_cents: amount,
            currency: "EUR".into(),
            payment_token: token.into(),
        };
        let e = Envelope::new::<ChargePayment>("/sluice/orders").subject(order);
        let m = OutboundMessage::event(&self.subjects.charge, &e, &cmd);
        self.tb.broker.publish(m).await.unwrap();
    }

    async fn refund(&self, order: &str) {
        let cmd = RefundPayment {
            order_id: order.into(),
            reason: "order cancelled".into(),
        };
        let e = Envelope::new::<RefundPayment>("/sluice/orders").subject(order);
        let m = OutboundMessage::event(&self.subjects.refund, &e, &cmd);
        self.tb.broker.publish(m).await.unwrap();
    }

    /// The next payment event, acked.
    async fn next(&mut self) -> InboundMessage {
        let d = tokio::time::timeout(WAIT, self.events.next())
            .await
            .expect("a payment event in time")
            .unwrap()
            .unwrap();
        let m = d.message.clone();
        d.ack().await.unwrap();
        m
    }

    async fn quiet(&mut self) {
        assert!(
            tokio::time::timeout(Duration::from_millis(500), self.events.next())
                .await
                .is_err(),
            "no further payment events"
        );
    }

    async fn cleanup(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.events.close().await;
        self.tb.cleanup().await;
        self.tdb.cleanup().await;
    }
}

fn type_of(m: &InboundMessage) -> &str {
    m.headers.get("ce-type").unwrap_or_default()
}

async fn an_order_is_captured_once_whatever_the_repeats(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::start(b, d).await;
    env.charge("o-1", "tok_visa", 4200).await;
    let first = env.next().await;
    let (_, captured) = first.decode::<PaymentCaptured>().unwrap();
    assert_eq!(
        (captured.order_id.as_str(), captured.amount_cents),
        ("o-1", 4200)
    );
    // The saga asks again (a new command id): same answer, no new capture.
    env.charge("o-1", "tok_visa", 4200).await;
    let again = env.next().await;
    let (_, repeated) = again.decode::<PaymentCaptured>().unwrap();
    assert_eq!(
        repeated.payment_id, captured.payment_id,
        "one capture per order"
    );

    env.refund("o-1").await;
    assert_eq!(
        type_of(&env.next().await),
        "shop.payments.v1.PaymentRefunded"
    );
    env.refund("o-1").await;
    env.quiet().await;
    env.cleanup().await;
}

async fn declines_and_timeouts_end_declined_with_a_reason(b: BrokerBackend, d: DbBackend) {
    let mut env = Env::start(b, d).await;
    env.charge("o-2", "tok_chargeDeclined", 100).await;
    let (_, declined) = env.next().await.decode::<PaymentDeclined>().unwrap();
    assert_eq!(declined.reason, "card declined");

    env.charge("o-3", "tok_timeout", 100).await;
    let (_, declined) = env.next().await.decode::<PaymentDeclined>().unwrap();
    assert_eq!(declined.order_id, "o-3");
    assert!(
        declined.reason.contains("timed out 3 times"),
        "{declined:?}"
    );

    // Nothing was captured, so nothing is refunded.
    env.refund("o-2").await;
    env.refund("never-charged").await;
    env.quiet().await;
    env.cleanup().await;
}

async fn bad_commands_are_dead_lettered_with_a_reason(b: BrokerBackend, d: DbBackend) {
    let env = Env::start(b, d).await;
    env.charge("", "tok_visa", 100).await;
    let e = Envelope::new::<ChargePayment>("/sluice/orders").subject("x");
    let garbage = OutboundMessage::new(
        &env.subjects.charge,
        e.to_headers(),
        Bytes::from_static(&[0xff]),
    );
    env.tb.broker.publish(garbage).await.unwrap();
    let reasons =
        sluice_kit::testing::dead_letter_reasons(env.tb.broker.as_ref(), &env.tb.domain, 2, WAIT)
            .await;
    assert!(
        reasons[0].contains("charge without an order id"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("payload does not decode"),
        "{reasons:?}"
    );
    env.cleanup().await;
}

sluice_kit::backend_matrix!(
    an_order_is_captured_once_whatever_the_repeats,
    declines_and_timeouts_end_declined_with_a_reason,
    bad_commands_are_dead_lettered_with_a_reason,
);
