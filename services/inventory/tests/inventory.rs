//! The inventory service on every broker backend, with SQLite and
//! PostgreSQL: product commands, all-or-nothing reservations, release on
//! cancel, no overselling under concurrency, bad input dead-lettered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use sea_orm::EntityTrait;
use sluice_broker::{
    InboundMessage, OutboundMessage, StartPosition, SubscribeOptions, Subscription, dead_letter,
};
use sluice_inventory::tables::products;
use sluice_inventory::{Running, Subjects};
use sluice_kit::rpc::Requester;
use sluice_kit::testing::{BrokerBackend, DbBackend, TestBroker, TestDb};
use sluice_kit::{KitConfig, Metrics};
use sluice_proto::Envelope;
use sluice_proto::shop::inventory::v1::{
    AdjustStock, CreateProduct, DeleteProduct, ProductResult, UpdateProduct,
};
use sluice_proto::shop::orders::v1::{OrderCancelled, OrderLine, OrderPlaced};

const WAIT: Duration = Duration::from_secs(30);

struct Env {
    tb: TestBroker,
    tdb: TestDb,
    inventory_domain: String,
    subjects: Subjects,
    running: Option<Running>,
    requester: Requester,
}

impl Env {
    async fn start(b: BrokerBackend, d: DbBackend) -> Self {
        let tb = TestBroker::start(b).await;
        let tdb = TestDb::start(d).await;
        let inventory_domain = format!("{}i", tb.domain);
        let subjects = Subjects::new(&tb.domain, &inventory_domain);
        let running = sluice_inventory::start(
            tb.broker.clone(),
            tdb.db.clone(),
            &KitConfig::default(),
            Metrics::new(),
            subjects.clone(),
        )
        .await
        .unwrap();
        let requester = Requester::new(tb.broker.clone(), "test", Duration::from_secs(10));
        Self {
            tb,
            tdb,
            inventory_domain,
            subjects,
            running: Some(running),
            requester,
        }
    }

    async fn create(&self, sku: &str, stock: i64) -> ProductResult {
        let c = CreateProduct {
            sku: sku.into(),
            name: format!("Product {sku}"),
            price_cents: 1250,
            currency: "EUR".into(),
            stock,
        };
        self.requester
            .request(&self.subjects.create_product, &c, Some("req-1"))
            .await
            .unwrap()
    }

    async fn adjust(&self, product_id: &str, delta: i64) -> ProductResult {
        let a = AdjustStock {
            product_id: product_id.into(),
            delta,
        };
        self.requester
            .request(&self.subjects.adjust_stock, &a, None)
            .await
            .unwrap()
    }

    async fn stock(&self, product_id: &str) -> i64 {
        products::Entity::find_by_id(product_id.to_owned())
            .one(&self.tdb.db)
            .await
            .unwrap()
            .unwrap()
            .stock
    }

    async fn observe(&self, filter: &str) -> Subscription {
        let o = SubscribeOptions::new("observer", filter).start(StartPosition::Beginning);
        self.tb.broker.subscribe(o).await.unwrap()
    }

    async fn place(&self, order_id: &str, lines: &[(&str, u32)]) {
        let ev = OrderPlaced {
            order_id: order_id.into(),
            customer_id: "c-1".into(),
            lines: lines
                .iter()
                .map(|(p, q)| OrderLine {
                    product_id: (*p).into(),
                    quantity: *q,
                    price_cents: 1250,
                })
                .collect(),
            total_cents: 0,
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
        };
        let env = Envelope::new::<OrderPlaced>("/sluice/orders").subject(order_id);
        let m = OutboundMessage::event(&self.subjects.order_placed, &env, &ev);
        self.tb.broker.publish(m).await.unwrap();
    }

    async fn cancel(&self, order_id: &str) {
        let ev = OrderCancelled {
            order_id: order_id.into(),
            customer_id: "c-1".into(),
            reason: "customer asked".into(),
        };
        let env = Envelope::new::<OrderCancelled>("/sluice/orders").subject(order_id);
        let m = OutboundMessage::event(&self.subjects.order_cancelled, &env, &ev);
        self.tb.broker.publish(m).await.unwrap();
    }

    async fn cleanup(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.tb
            .broker
            .delete_domain(&self.inventory_domain)
            .await
            .unwrap();
        self.tb.cleanup().await;
        self.tdb.cleanup().await;
    }
}

/// The next event on `sub`, acked.
async fn next(sub: &mut Subscription) -> InboundMessage {
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap();
    let m = d.message.clone();
    d.ack().await.unwrap();
    m
}

fn type_of(m: &InboundMessage) -> &str {
    m.headers.get("ce-type").unwrap_or_default()
}

async fn product_commands_keep_skus_unique_and_stock_in_bounds(b: BrokerBackend, d: DbBackend) {
    let env = Env::start(b, d).await;
    let mut events = env.observe(&format!("{}.>", env.inventory_domain)).await;

    let created = env.create("sku-1", 10).await;
    assert!(created.ok, "{created:?}");
    let p = created.product.unwrap();
    assert_eq!((p.sku.as_str(), p.stock), ("sku-1", 10));
    let m = next(&mut events).await;
    assert_eq!(type_of(&m), "shop.inventory.v1.ProductCreated");
    assert_eq!(m.headers.get("correlation-id"), Some("req-1"));

    let dup = env.create("sku-1", 3).await;
    assert_eq!(
        (dup.ok, dup.error_code.as_str()),
        (false, "conflict"),
        "{dup:?}"
    );
    let bad = env
        .requester
        .request::<_, ProductResult>(
            &env.subjects.create_product,
            &CreateProduct {
                sku: "sku-2".into(),
                name: "x".into(),
                price_cents: 1,
                currency: "eur".into(),
                stock: 1,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(bad.error_code, "invalid", "{bad:?}");

    let up = env.adjust(&p.product_id, 5).await;
    assert_eq!(up.product.unwrap().stock, 15);
    let m = next(&mut events).await;
    assert_eq!(type_of(&m), "shop.inventory.v1.StockAdjusted");
    let down = env.adjust(&p.product_id, -100).await;
    assert_eq!(down.error_code, "invalid", "{down:?}");
    assert_eq!(
        env.stock(&p.product_id).await,
        15,
        "a refused adjustment changes nothing"
    );
    // Stock stays within 0..=MAX_STOCK: no overflow (SQLite would turn an
    // overflowing sum into a REAL), no adjustment past the bound.
    let huge = env.adjust(&p.product_id, i64::MAX).await;
    assert_eq!(huge.error_code, "invalid", "{huge:?}");
    let over = env.adjust(&p.product_id, sluice_inventory::MAX_STOCK).await;
    assert_eq!(over.error_code, "invalid", "{over:?}");
    let to_max = env
        .adjust(&p.product_id, sluice_inventory::MAX_STOCK - 15)
        .await;
    assert_eq!(
        to_max.product.as_ref().map(|p| p.stock),
        Some(sluice_inventory::MAX_STOCK),
        "{to_max:?}"
    );
    assert_eq!(env.stock(&p.product_id).await, sluice_inventory::MAX_STOCK);
    let missing = env.adjust("no-such-product", 1).await;
    assert_eq!(missing.error_code, "not_found", "{missing:?}");

    // Update: new catalogue data, the stock untouched, the sku unique.
    let other = env.create("sku-3", 1).await.product.unwrap();
    let update = |sku: &str, id: &str| UpdateProduct {
        product_id: id.into(),
        sku: sku.into(),
        name: "Renamed".into(),
        price_cents: 999,
        currency: "USD".into(),
    };
    let (requester, subject) = (&env.requester, &env.subjects.update_product);
    let ask = |u: UpdateProduct| async move {
        requester
            .request::<_, ProductResult>(subject, &u, None)
            .await
            .unwrap()
    };
    let updated = ask(update("sku-1b", &p.product_id)).await;
    let q = updated.product.clone().unwrap();
    assert_eq!(
        (
            q.sku.as_str(),
            q.name.as_str(),
            q.price_cents,
            q.currency.as_str(),
            q.stock
        ),
        ("sku-1b", "Renamed", 999, "USD", sluice_inventory::MAX_STOCK),
        "{updated:?}"
    );
    let taken = ask(update("sku-3", &p.product_id)).await;
    assert_eq!(taken.error_code, "conflict", "{taken:?}");
    let nowhere = ask(update("sku-9", "no-such-product")).await;
    assert_eq!(nowhere.error_code, "not_found", "{nowhere:?}");
    let invalid = ask(update("", &p.product_id)).await;
    assert_eq!(invalid.error_code, "invalid", "{invalid:?}");

    // Delete: gone, and once only.
    let delete = DeleteProduct {
        product_id: other.product_id.clone(),
    };
    let gone: ProductResult = env
        .requester
        .request(&env.subjects.delete_product, &delete, None)
        .await
        .unwrap();
    assert!(gone.ok, "{gone:?}");
    let again: ProductResult = env
        .requester
        .request(&env.subjects.delete_product, &delete, None)
        .await
        .unwrap();
    assert_eq!(again.error_code, "not_found", "{again:?}");
    assert!(
        products::Entity::find_by_id(other.product_id.clone())
            .one(&env.tdb.db)
            .await
            .unwrap()
            .is_none()
    );
    // Their events, in order after the adjustments.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let m = next(&mut events).await;
        seen.push(type_of(&m).to_owned());
    }
    assert_eq!(
        seen,
        [
            "shop.inventory.v1.StockAdjusted",
            "shop.inventory.v1.ProductCreated",
            "shop.inventory.v1.ProductUpdated",
            "shop.inventory.v1.ProductDeleted"
        ]
    );
    events.close().await;
    env.cleanup().await;
}

async fn an_order_reserves_all_lines_or_none_and_a_cancel_gives_them_back(
    b: BrokerBackend,
    d: DbBackend,
) {
    let env = Env::start(b, d).await;
    let a = env.create("a", 5).await.product.unwrap().product_id;
    let bb = env.create("b", 1).await.product.unwrap().product_id;
    let mut outcomes = env
        .observe(&format!("{}.stock.>", env.inventory_domain))
        .await;

    env.place("o-1", &[(&a, 2), (&bb, 1)]).await;
    let m = next(&mut outcomes).await;
    assert_eq!(type_of(&m), "shop.inventory.v1.StockReserved");
    assert_eq!((env.stock(&a).await, env.stock(&bb).await), (3, 0));

    env.place("o-2", &[(&a, 1), (&bb, 1)]).await;
    let m = next(&mut outcomes).await;
    assert_eq!(type_of(&m), "shop.inventory.v1.StockRejected");
    let (_, rejected) = m
        .decode::<sluice_proto::shop::inventory::v1::StockRejected>()
        .unwrap();
    assert!(rejected.reason.contains("not enough stock"), "{rejected:?}");
    assert_eq!(env.stock(&a).await, 3, "the first line was given back");

    env.place("o-3", &[("ghost", 1)]).await;
    let m = next(&mut outcomes).await;
    let (_, rejected) = m
        .decode::<sluice_proto::shop::inventory::v1::StockRejected>()
        .unwrap();
    assert!(
        rejected.reason.contains("unknown product ghost"),
        "{rejected:?}"
    );

    env.cancel("o-1").await;
    let m = next(&mut outcomes).await;
    assert_eq!(type_of(&m), "shop.inventory.v1.StockReleased");
    assert_eq!((env.stock(&a).await, env.stock(&bb).await), (5, 1));
    // A second cancellation finds nothing left to give back.
    env.cancel("o-1").await;
    env.cancel("o-2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((env.stock(&a).await, env.stock(&bb).await), (5, 1));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), outcomes.next())
            .await
            .is_err(),
        "no further stock events"
    );
    outcomes.close().await;
    env.cleanup().await;
}

async fn concurrent_orders_for_the_last_units_never_oversell(b: BrokerBackend, d: DbBackend) {
    let env = Env::start(b, d).await;
    let p = env.create("last", 50).await.product.unwrap().product_id;
    let mut outcomes = env
        .observe(&format!("{}.stock.>", env.inventory_domain))
        .await;
    let orders: Vec<OutboundMessage> = (0..200)
        .map(|i| {
            let id = format!("o-{i}");
            let ev = OrderPlaced {
                order_id: id.clone(),
                customer_id: "c".into(),
                lines: vec![OrderLine {
                    product_id: p.clone(),
                    quantity: 1,
                    price_cents: 1,
                }],
                total_cents: 1,
                currency: "EUR".into(),
                payment_token: "tok_visa".into(),
            };
            let e = Envelope::new::<OrderPlaced>("/sluice/orders").subject(&id);
            OutboundMessage::event(&env.subjects.order_placed, &e, &ev)
        })
        .collect();
    for r in env.tb.broker.publish_batch(orders).await {
        r.unwrap();
    }
    let (mut reserved, mut rejected) = (0, 0);
    let start = Instant::now();
    while reserved + rejected < 200 {
        assert!(
            start.elapsed() < WAIT * 2,
            "{reserved} reserved, {rejected} rejected"
        );
        match type_of(&next(&mut outcomes).await) {
            "shop.inventory.v1.StockReserved" => reserved += 1,
            "shop.inventory.v1.StockRejected" => rejected += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((reserved, rejected), (50, 150));
    assert_eq!(env.stock(&p).await, 0);
    outcomes.close().await;
    env.cleanup().await;
}

async fn bad_orders_are_dead_lettered_with_a_reason(b: BrokerBackend, d: DbBackend) {
    let env = Env::start(b, d).await;
    let p = env.create("p", 5).await.product.unwrap().product_id;
    env.place("zero", &[(&p, 0)]).await;
    let e = Envelope::new::<OrderPlaced>("/sluice/orders").subject("garbage");
    let garbage = OutboundMessage::new(
        &env.subjects.order_placed,
        e.to_headers(),
        Bytes::from_static(&[0xff, 0xff]),
    );
    env.tb.broker.publish(garbage).await.unwrap();
    let mut dlq = env.observe(&format!("dlq.{}.>", env.tb.domain)).await;
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let m = next(&mut dlq).await;
        reasons.push(dead_letter::reason(&m).unwrap().to_owned());
    }
    reasons.sort();
    assert!(reasons[0].contains("invalid line"), "{reasons:?}");
    assert!(
        reasons[1].contains("payload does not decode"),
        "{reasons:?}"
    );
    assert_eq!(env.stock(&p).await, 5, "nothing taken");
    dlq.close().await;
    env.cleanup().await;
}

sluice_kit::backend_matrix!(
    product_commands_keep_skus_unique_and_stock_in_bounds,
    an_order_reserves_all_lines_or_none_and_a_cancel_gives_them_back,
    concurrent_orders_for_the_last_units_never_oversell,
    bad_orders_are_dead_lettered_with_a_reason,
);
