//! The order saga across accounts, inventory, payments, orders and
//! notifications, on every broker
//! backend (the scaled-out ones with PostgreSQL, and the one-machine
//! embedded + SQLite): paid, declined and over-stock orders, 200 orders for
//! 50 units, customer cancellations, bad input, and a crash of any one
//! service of the flow mid-flow — each order ending with one e-mail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use sluice_broker::OutboundMessage;
use sluice_integration_tests::{Shop, Svc, WAIT, order_id};
use sluice_kit::testing::{BrokerBackend, DbBackend, dead_letter_reasons};
use sluice_orders::status::{CANCELLED, CONFIRMED};
use sluice_proto::Envelope;
use sluice_proto::shop::orders::v1::PlaceOrder;

async fn paid_declined_and_over_stock_orders(b: BrokerBackend, d: DbBackend) {
    let shop = Shop::start(b, d).await;
    let p = shop.product("sku-1", 10).await;
    let alice = shop.customer("alice@example.com").await;
    let bob = shop.customer("bob@example.com").await;

    let paid = order_id();
    shop.place(&paid, &alice, &[(&p, 3)], "tok_visa").await;
    let o = &shop.settled(std::slice::from_ref(&paid)).await[0];
    assert_eq!(o.status, CONFIRMED, "{o:?}");
    assert_eq!(o.total_cents, 3 * 1250);
    assert_eq!(o.currency, "EUR");
    assert_eq!(shop.stock(&p).await, 7);
    assert_eq!(shop.payment(&paid).await.as_deref(), Some("captured"));
    let mail = shop.mail_for(&paid).await;
    assert_eq!(mail.len(), 1, "one e-mail: {mail:?}");
    assert_eq!(mail[0].to, "alice@example.com");
    assert!(mail[0].subject.contains("confirmed"), "{}", mail[0].subject);
    assert!(mail[0].text.contains("37.50 EUR"), "{}", mail[0].text);

    let declined = order_id();
    shop.place(&declined, &alice, &[(&p, 2)], "tok_chargeDeclined")
        .await;
    let o = &shop.settled(std::slice::from_ref(&declined)).await[0];
    assert_eq!(o.status, CANCELLED);
    assert!(o.reason.contains("declined"), "{}", o.reason);
    // The inventory gives the reserved units back.
    shop.stock_becomes(&p, 7).await;
    assert_eq!(shop.reserved(&declined).await, 0);
    assert_eq!(shop.payment(&declined).await.as_deref(), Some("declined"));
    let mail = shop.mail_for(&declined).await;
    assert_eq!(mail.len(), 1, "one e-mail: {mail:?}");
    assert!(mail[0].subject.contains("cancelled"), "{}", mail[0].subject);

    let greedy = order_id();
    shop.place(&greedy, &bob, &[(&p, 8)], "tok_visa").await;
    let o = &shop.settled(std::slice::from_ref(&greedy)).await[0];
    assert_eq!(o.status, CANCELLED);
    assert!(o.reason.contains("not enough stock"), "{}", o.reason);
    assert_eq!(shop.payment(&greedy).await, None, "nothing is charged");
    assert_eq!(shop.stock(&p).await, 7);
    let mail = shop.mail_for(&greedy).await;
    assert_eq!(mail.len(), 1, "one e-mail: {mail:?}");
    assert_eq!(mail[0].to, "bob@example.com");
    shop.cleanup().await;
}

async fn two_hundred_orders_for_fifty_units_confirm_fifty(b: BrokerBackend, d: DbBackend) {
    let shop = Shop::start(b, d).await;
    let p = shop.product("last-ones", 50).await;
    let ids: Vec<String> = (0..200).map(|_| order_id()).collect();
    let customers: Vec<String> = (0..17).map(|i| format!("c{i}")).collect();
    let lines = [(p.as_str(), 1)];
    futures::future::join_all(
        ids.iter()
            .enumerate()
            .map(|(i, id)| shop.place(id, &customers[i % 17], &lines, "tok_visa")),
    )
    .await;
    let orders = shop.settled(&ids).await;
    let confirmed: Vec<_> = orders.iter().filter(|o| o.status == CONFIRMED).collect();
    assert_eq!(confirmed.len(), 50);
    for o in &orders {
        let paid = shop.payment(&o.id).await;
        if o.status == CONFIRMED {
            assert_eq!(paid.as_deref(), Some("captured"), "{o:?}");
        } else {
            assert!(o.reason.contains("not enough stock"), "{o:?}");
            assert_eq!(paid, None, "{o:?}");
        }
    }
    assert_eq!(shop.stock(&p).await, 0);
    shop.cleanup().await;
}

async fn customers_cancel_pending_and_confirmed_orders(b: BrokerBackend, d: DbBackend) {
    let shop = Shop::start(b, d).await;
    let p = shop.product("sku-c", 10).await;

    // Confirmed, then cancelled: refund and release.
    let done = order_id();
    shop.place(&done, "carol", &[(&p, 4)], "tok_visa").await;
    assert_eq!(
        shop.settled(std::slice::from_ref(&done)).await[0].status,
        CONFIRMED
    );
    assert_eq!(shop.stock(&p).await, 6);
    shop.cancel(&done, "mallory").await; // not hers: ignored
    shop.cancel(&done, "carol").await;
    shop.payment_becomes(&done, "refunded").await;
    shop.stock_becomes(&p, 10).await;
    let o = shop.order(&done).await.unwrap();
    assert_eq!(o.status, CANCELLED);
    assert_eq!(o.reason, "cancelled by the customer");

    // Cancelled while the saga is under way: it ends cancelled at its next
    // step, with nothing kept (stock released, any capture refunded).
    let early = order_id();
    shop.place(&early, "carol", &[(&p, 2)], "tok_visa").await;
    shop.cancel(&early, "carol").await;
    let o = &shop.settled(std::slice::from_ref(&early)).await[0];
    assert_eq!(o.status, CANCELLED, "{o:?}");
    assert_eq!(o.reason, "cancelled by the customer");
    shop.stock_becomes(&p, 10).await;
    match shop.payment(&early).await.as_deref() {
        None | Some("refunded") => {}
        Some("captured") => shop.payment_becomes(&early, "refunded").await,
        other => panic!("payment of a cancelled order: {other:?}"),
    }
    shop.cleanup().await;
}

async fn bad_orders_are_refused_or_dead_lettered_with_a_reason(b: BrokerBackend, d: DbBackend) {
    let shop = Shop::start(b, d).await;
    let p = shop.product("sku-b", 5).await;
    let negative = order_id();
    shop.place(&negative, "dave", &[(&p, -2)], "tok_visa").await;
    let unknown = order_id();
    shop.place(&unknown, "dave", &[("no-such-product", 1)], "tok_visa")
        .await;
    let empty = order_id();
    shop.place(&empty, "dave", &[], "tok_visa").await;
    let orders = shop
        .settled(&[negative.clone(), unknown.clone(), empty.clone()])
        .await;
    let reason = |id: &str| {
        let o = orders.iter().find(|o| o.id == id).unwrap();
        assert_eq!(o.status, CANCELLED);
        o.reason.clone()
    };
    assert!(
        reason(&negative).contains("quantity -2"),
        "{}",
        reason(&negative)
    );
    assert!(reason(&unknown).contains("unknown product no-such-product"));
    assert!(reason(&empty).contains("no lines"));
    for id in [&negative, &unknown, &empty] {
        assert_eq!(shop.payment(id).await, None);
        assert_eq!(shop.reserved(id).await, 0);
    }
    assert_eq!(shop.stock(&p).await, 5);

    // Undecodable, and without an order id: dead letters with the reason.
    let e = Envelope::new::<PlaceOrder>("/sluice/edge").subject("x");
    let garbage = OutboundMessage::new(
        &shop.subjects.orders.place,
        e.to_headers(),
        Bytes::from_static(&[0xff, 0xff]),
    );
    shop.tb.broker.publish(garbage).await.unwrap();
    shop.place("", "dave", &[(&p, 1)], "tok_visa").await;
    let orders_domain = &shop.subjects.domains[0];
    let reasons = dead_letter_reasons(shop.tb.broker.as_ref(), orders_domain, 2, WAIT).await;
    assert!(
        reasons[0].contains("payload does not decode"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("needs an order id"), "{reasons:?}");
    assert_eq!(shop.stock(&p).await, 5);
    shop.cleanup().await;
}

/// Orders placed around a crash of `victim`: half before it dies, half
/// while it is down. Every order still ends CONFIRMED or CANCELLED, stock
/// is exactly what the confirmed orders took, and money was kept only for
/// confirmed orders.
async fn crash_mid_flow(b: BrokerBackend, d: DbBackend, victim: Svc) {
    let mut shop = Shop::start(b, d).await;
    let p = shop.product("crash", 25).await;
    let erin = shop.customer("erin@example.com").await;
    let ids: Vec<String> = (0..40).map(|_| order_id()).collect();
    let token = |i: usize| {
        if i % 4 == 3 {
            "tok_chargeDeclined"
        } else {
            "tok_visa"
        }
    };
    for (i, id) in ids.iter().enumerate().take(20) {
        shop.place(id, &erin, &[(&p, 1)], token(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    shop.kill(victim);
    for (i, id) in ids.iter().enumerate().skip(20) {
        shop.place(id, &erin, &[(&p, 1)], token(i)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    shop.restart(victim).await;
    let orders = shop.settled(&ids).await;
    let confirmed = orders.iter().filter(|o| o.status == CONFIRMED).count();
    assert!(confirmed > 0 && confirmed <= 25, "{confirmed} confirmed");
    shop.stock_becomes(&p, 25 - i64::try_from(confirmed).unwrap())
        .await;
    for o in &orders {
        if o.status == CONFIRMED {
            assert_eq!(shop.payment(&o.id).await.as_deref(), Some("captured"));
            assert_eq!(shop.reserved(&o.id).await, 1);
        } else {
            let paid = shop.payment(&o.id).await;
            assert!(
                matches!(paid.as_deref(), None | Some("declined" | "refunded")),
                "{o:?}: {paid:?}"
            );
            assert_eq!(shop.reserved(&o.id).await, 0, "{o:?}");
        }
    }
    // One e-mail per order, whichever service went down.
    for o in &orders {
        let mail = shop.mail_for(&o.id).await;
        assert_eq!(mail.len(), 1, "{o:?}: {mail:?}");
    }
    shop.cleanup().await;
}

async fn inventory_crashes_mid_flow(b: BrokerBackend, d: DbBackend) {
    crash_mid_flow(b, d, Svc::Inventory).await;
}

async fn payments_crashes_mid_flow(b: BrokerBackend, d: DbBackend) {
    crash_mid_flow(b, d, Svc::Payments).await;
}

async fn orders_crashes_mid_flow(b: BrokerBackend, d: DbBackend) {
    crash_mid_flow(b, d, Svc::Orders).await;
}

async fn accounts_crashes_mid_flow(b: BrokerBackend, d: DbBackend) {
    crash_mid_flow(b, d, Svc::Accounts).await;
}

async fn notifications_crashes_mid_flow(b: BrokerBackend, d: DbBackend) {
    crash_mid_flow(b, d, Svc::Notifications).await;
}

sluice_kit::backend_matrix!(
    paid_declined_and_over_stock_orders,
    two_hundred_orders_for_fifty_units_confirm_fifty,
    customers_cancel_pending_and_confirmed_orders,
    bad_orders_are_refused_or_dead_lettered_with_a_reason,
    inventory_crashes_mid_flow,
    payments_crashes_mid_flow,
    orders_crashes_mid_flow,
    notifications_crashes_mid_flow,
    accounts_crashes_mid_flow,
);
