//! The Broker conformance suite: the same test bodies run against every
//! backend (`embedded::*`, `nats::*`, `amqp::*` in the test output).
//!
//! Each test gets its own domain (hence stream), groups and, on RabbitMQ, its
//! own exchange; everything is deleted afterwards. Broker servers are never
//! optional: a missing one fails the test with a reason.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod fixture;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use fixture::Fixture;
use prost::Message;
use sluice_broker::{
    Broker, BrokerKind, Delivery, Headers, InboundMessage, LogCursor, OutboundMessage,
    StartPosition, SubscribeOptions, Subscription, dead_letter,
};
use sluice_proto::Envelope;
use sluice_proto::shop::orders::v1::{OrderLine, OrderPlaced};

/// A valid Sluice event whose order id is `n`.
fn event(fx: &Fixture, n: usize) -> OutboundMessage {
    let ev = OrderPlaced {
        order_id: format!("o{n}"),
        customer_id: "c1".into(),
        lines: vec![OrderLine {
            product_id: "p1".into(),
            quantity: 1,
            price_cents: 100,
        }],
        total_cents: 100,
        currency: "EUR".into(),
        payment_token: "tok_visa".into(),
    };
    let env = Envelope::new::<OrderPlaced>("/sluice/test").subject(format!("o{n}"));
    OutboundMessage::event(fx.subject("order.placed"), &env, &ev)
}

/// The order number carried by a message from [`event`].
fn number(m: &InboundMessage) -> usize {
    let ev = OrderPlaced::decode(m.payload.as_ref()).expect("payload is an OrderPlaced");
    ev.order_id[1..].parse().expect("order id is o<n>")
}

async fn recv(sub: &mut Subscription, within: Duration) -> Delivery {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("subscription error: {e}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no delivery within {within:?}"),
    }
}

/// Receives the events numbered `expected`, in that order, acking each.
async fn ack_in_order(sub: &mut Subscription, expected: std::ops::Range<usize>) {
    for n in expected {
        let d = recv(sub, WAIT).await;
        assert_eq!(number(&d.message), n);
        d.ack().await.unwrap();
    }
}

/// Asserts nothing arrives for `quiet`.
async fn assert_quiet(sub: &mut Subscription, quiet: Duration) {
    if let Ok(Some(item)) = tokio::time::timeout(quiet, sub.next()).await {
        panic!("unexpected delivery: {item:?}");
    }
}

const WAIT: Duration = Duration::from_secs(20);

fn opts(fx: &Fixture, group: &str) -> SubscribeOptions {
    SubscribeOptions::new(group, fx.filter())
}

async fn publish_all(fx: &Fixture, msgs: Vec<OutboundMessage>) {
    for r in fx.broker.publish_batch(msgs).await {
        r.expect("publish confirmed");
    }
}

async fn round_trip_keeps_headers_and_payload(fx: &Fixture) {
    let mut sub = fx.broker.subscribe(opts(fx, "g")).await.unwrap();
    let mut msg = event(fx, 1);
    msg.headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    msg.headers.insert("tracestate", "sluice=1");
    msg.headers.insert("correlation-id", "corr-1");
    msg.headers.insert("causation-id", "cause-1");
    msg.headers.insert("x-custom", "value with spaces");
    let ack = fx.broker.publish(msg.clone()).await.unwrap();
    assert!(!ack.duplicate);
    let d = recv(&mut sub, WAIT).await;
    assert_eq!(d.message.subject, msg.subject);
    assert_eq!(d.message.headers, msg.headers);
    assert_eq!(d.message.payload, msg.payload);
    assert_eq!(d.message.delivered, 1);
    let (env, ev) = d.message.decode::<OrderPlaced>().unwrap();
    assert_eq!(env.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(ev.order_id, "o1");
    d.ack().await.unwrap();
    sub.close().await;
}

async fn competing_consumers_in_one_group_get_disjoint_shares(fx: &Fixture) {
    let o = opts(fx, "workers").prefetch(8);
    let a = fx.broker.subscribe(o.clone()).await.unwrap();
    let b = fx.broker.subscribe(o).await.unwrap();
    let total = 200;
    let consume = |mut sub: Subscription, done: std::sync::Arc<std::sync::atomic::AtomicUsize>| async move {
        let mut got = Vec::new();
        while done.load(std::sync::atomic::Ordering::SeqCst) < total {
            match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
                Ok(Some(Ok(d))) => {
                    got.push(number(&d.message));
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    d.ack().await.unwrap();
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(Some(Err(e))) => panic!("{e}"),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        sub.close().await;
        got
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ta = tokio::spawn(consume(a, done.clone()));
    let tb = tokio::spawn(consume(b, done.clone()));
    publish_all(fx, (0..total).map(|n| event(fx, n)).collect()).await;
    let (ga, gb) = tokio::time::timeout(Duration::from_secs(60), async {
        (ta.await.unwrap(), tb.await.unwrap())
    })
    .await
    .expect("both consumers finish");
    let sa: BTreeSet<_> = ga.iter().copied().collect();
    let sb: BTreeSet<_> = gb.iter().copied().collect();
    assert!(sa.is_disjoint(&sb), "a message went to both members");
    assert_eq!(sa.len() + sb.len(), total, "every message delivered once");
    assert!(
        !sa.is_empty() && !sb.is_empty(),
        "both members got a share: {} / {}",
        sa.len(),
        sb.len()
    );
}

async fn two_groups_each_get_every_message(fx: &Fixture) {
    let mut a = fx.broker.subscribe(opts(fx, "ga")).await.unwrap();
    let mut b = fx.broker.subscribe(opts(fx, "gb")).await.unwrap();
    publish_all(fx, (0..50).map(|n| event(fx, n)).collect()).await;
    for sub in [&mut a, &mut b] {
        let mut seen = BTreeSet::new();
        while seen.len() < 50 {
            let d = recv(sub, WAIT).await;
            seen.insert(number(&d.message));
            d.ack().await.unwrap();
        }
        assert_quiet(sub, Duration::from_millis(300)).await;
    }
    a.close().await;
    b.close().await;
}

async fn a_nack_with_delay_redelivers_after_the_delay(fx: &Fixture) {
    let mut sub = fx.broker.subscribe(opts(fx, "g")).await.unwrap();
    fx.broker.publish(event(fx, 7)).await.unwrap();
    let d = recv(&mut sub, WAIT).await;
    assert_eq!(d.message.delivered, 1);
    let nacked = Instant::now();
    d.nack(Duration::from_millis(800)).await.unwrap();
    let again = recv(&mut sub, WAIT).await;
    let waited = nacked.elapsed();
    assert_eq!(number(&again.message), 7);
    assert_eq!(again.message.delivered, 2);
    assert!(
        waited >= Duration::from_millis(700),
        "redelivered after {waited:?}, before the delay"
    );
    again.ack().await.unwrap();
    assert_quiet(&mut sub, Duration::from_millis(1200)).await;
    sub.close().await;
}

async fn an_unacked_message_is_redelivered_after_ack_wait(fx: &Fixture) {
    let o = opts(fx, "g").ack_wait(Duration::from_secs(1));
    let mut sub = fx.broker.subscribe(o).await.unwrap();
    fx.broker.publish(event(fx, 3)).await.unwrap();
    let first = recv(&mut sub, WAIT).await;
    let taken = Instant::now();
    drop(first); // never settled, as if the consumer hung
    let again = recv(&mut sub, WAIT).await;
    assert!(
        taken.elapsed() >= Duration::from_millis(800),
        "redelivered too early"
    );
    assert_eq!(number(&again.message), 3);
    assert_eq!(again.message.delivered, 2);
    again.ack().await.unwrap();
    sub.close().await;
}

async fn dead_letters(fx: &Fixture, group: &str) -> Subscription {
    let o = SubscribeOptions::new(group, format!("dlq.{}.>", fx.domain))
        .start(StartPosition::Beginning);
    fx.broker.subscribe(o).await.unwrap()
}

async fn max_deliveries_dead_letters_with_the_reason(fx: &Fixture) {
    let o = opts(fx, "g").max_deliveries(2);
    let mut sub = fx.broker.subscribe(o).await.unwrap();
    let msg = event(fx, 9);
    fx.broker.publish(msg.clone()).await.unwrap();
    for attempt in 1..=2 {
        let d = recv(&mut sub, WAIT).await;
        assert_eq!(d.message.delivered, attempt);
        d.nack(Duration::from_millis(10)).await.unwrap();
    }
    // The third delivery never reaches the handler: it is dead-lettered.
    assert_quiet(&mut sub, Duration::from_millis(1500)).await;
    let mut dlq = dead_letters(fx, "dlq-reader").await;
    let dl = recv(&mut dlq, WAIT).await;
    assert_eq!(dl.message.subject, format!("dlq.{}", msg.subject));
    assert_eq!(dl.message.payload, msg.payload);
    assert_eq!(dl.message.id(), msg.id());
    let reason = dead_letter::reason(&dl.message).expect("reason header");
    assert!(reason.contains("max deliveries"), "{reason}");
    assert_eq!(dl.message.headers.get(dead_letter::GROUP), Some("g"));
    assert_eq!(
        dl.message.headers.get(dead_letter::SUBJECT),
        Some(msg.subject.as_str())
    );
    dl.ack().await.unwrap();
    assert_quiet(&mut dlq, Duration::from_millis(500)).await;
    sub.close().await;
    dlq.close().await;
}

async fn malformed_messages_are_dead_lettered_by_the_consumer(fx: &Fixture) {
    let mut sub = fx.broker.subscribe(opts(fx, "g")).await.unwrap();
    let subject = fx.subject("order.placed");
    // No CloudEvents headers at all.
    let mut bare = Headers::new();
    bare.insert("x-origin", "legacy");
    let no_headers = OutboundMessage::new(subject.clone(), bare, Bytes::from_static(b"hello"));
    // Valid envelope, payload that is not an OrderPlaced.
    let env = Envelope::new::<OrderPlaced>("/sluice/test");
    let garbage = OutboundMessage::new(
        subject.clone(),
        env.to_headers(),
        Bytes::from_static(&[0xff, 0xff, 0xff, 0x07]),
    );
    // Valid envelope of a type nobody compiled.
    let unknown = OutboundMessage::new(
        subject.clone(),
        Envelope::with_type("shop.nope.v1.Nothing", "/sluice/test").to_headers(),
        Bytes::new(),
    );
    let good = event(fx, 1);
    for m in [no_headers, garbage.clone(), unknown, good.clone()] {
        fx.broker.publish(m).await.unwrap();
    }
    let (env, d) = tokio::time::timeout(WAIT, sub.next_valid())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(d.message.id(), good.id());
    assert_eq!(env.event_type, "shop.orders.v1.OrderPlaced");
    d.ack().await.unwrap();

    let mut dlq = dead_letters(fx, "dlq-reader").await;
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let dl = recv(&mut dlq, WAIT).await;
        reasons.push(dead_letter::reason(&dl.message).unwrap().to_owned());
        if dl.message.id() == garbage.id() {
            assert_eq!(
                dl.message.payload, garbage.payload,
                "payload kept byte for byte"
            );
        }
        dl.ack().await.unwrap();
    }
    assert!(
        reasons[0].contains("missing required header ce-id"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("does not decode as shop.orders.v1.OrderPlaced"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("unknown event type"), "{reasons:?}");
    sub.close().await;
    dlq.close().await;
}

async fn start_positions_replay_from_beginning_sequence_and_time(fx: &Fixture) {
    publish_all(fx, (0..5).map(|n| event(fx, n)).collect()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let middle = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish_all(fx, (5..10).map(|n| event(fx, n)).collect()).await;

    let read = |start: StartPosition, group: &'static str, count: usize| async move {
        let o = opts(fx, group).start(start);
        let mut sub = fx.broker.subscribe(o).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..count {
            let d = recv(&mut sub, WAIT).await;
            got.push((number(&d.message), d.message.sequence));
            d.ack().await.unwrap();
        }
        assert_quiet(&mut sub, Duration::from_millis(500)).await;
        sub.close().await;
        got
    };
    let all = read(StartPosition::Beginning, "from-start", 10).await;
    assert_eq!(
        all.iter().map(|x| x.0).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    let seq6 = all[6].1.expect("stream sequence known on replay");
    let from_seq = read(StartPosition::Sequence(seq6), "from-seq", 4).await;
    assert_eq!(
        from_seq.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![6, 7, 8, 9]
    );
    let from_time = read(StartPosition::Time(middle), "from-time", 5).await;
    assert_eq!(
        from_time.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![5, 6, 7, 8, 9]
    );
    // A group that starts new sees nothing of the past.
    let o = opts(fx, "new-only");
    let mut sub = fx.broker.subscribe(o).await.unwrap();
    assert_quiet(&mut sub, Duration::from_millis(500)).await;
    fx.broker.publish(event(fx, 10)).await.unwrap();
    assert_eq!(number(&recv(&mut sub, WAIT).await.message), 10);
    sub.close().await;
}

/// Reads a cursor's pages of `page` until one comes back empty.
async fn drain(cursor: &mut dyn LogCursor, page: usize) -> Vec<(usize, Option<u64>)> {
    let mut got = Vec::new();
    loop {
        let batch = cursor.next_batch(page).await.unwrap();
        assert!(batch.len() <= page, "a page holds at most {page}");
        if batch.is_empty() {
            return got;
        }
        got.extend(batch.iter().map(|m| (number(m), m.sequence)));
    }
}

async fn a_cursor_reads_the_stream_in_order_outside_any_group(fx: &Fixture) {
    let placed = format!("{}.order.*", fx.domain);
    // A malformed filter is refused on every backend, as subscribing
    // refuses it.
    let malformed = format!("{}.>.order", fx.domain);
    let refused = fx.broker.cursor(&malformed, StartPosition::Beginning).await;
    assert!(refused.is_err(), "a malformed filter is refused");
    let Some(mut cursor) = fx
        .broker
        .cursor(&placed, StartPosition::Beginning)
        .await
        .unwrap()
    else {
        // Which backends have a cursor is part of the contract: the others
        // are read through consumer groups (`scan`).
        assert_eq!(fx.broker.kind(), BrokerKind::Amqp, "only RabbitMQ has none");
        return;
    };
    assert!(drain(&mut *cursor, 3).await.is_empty(), "an empty stream");
    let mut messages: Vec<_> = (0..7).map(|n| event(fx, n)).collect();
    // Messages of the domain the filter does not match are passed over.
    for m in &mut messages[2..4] {
        m.subject = fx.subject("payment.captured");
    }
    publish_all(fx, messages).await;
    let got = drain(&mut *cursor, 2).await;
    assert_eq!(
        got.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![0, 1, 4, 5, 6]
    );
    // It goes on from where it stopped when the stream grows.
    publish_all(fx, (7..9).map(|n| event(fx, n)).collect()).await;
    let more = drain(&mut *cursor, 100).await;
    assert_eq!(more.iter().map(|x| x.0).collect::<Vec<_>>(), vec![7, 8]);
    // From a sequence, and from now on.
    let seq5 = got[3].1.expect("sequences are known");
    let mut from = fx
        .broker
        .cursor(&placed, StartPosition::Sequence(seq5))
        .await
        .unwrap()
        .unwrap();
    let from = drain(&mut *from, 100).await;
    assert_eq!(
        from.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![5, 6, 7, 8]
    );
    let mut new = fx
        .broker
        .cursor(&placed, StartPosition::New)
        .await
        .unwrap()
        .unwrap();
    assert!(drain(&mut *new, 100).await.is_empty());
    fx.broker.publish(event(fx, 9)).await.unwrap();
    assert_eq!(drain(&mut *new, 100).await.len(), 1);
    // No consumer group was made. (A NATS cursor is an ephemeral consumer,
    // listed until the server removes it by itself.)
    if fx.broker.kind() == BrokerKind::Embedded {
        let stats = fx.broker.stream_stats(&fx.domain).await.unwrap().unwrap();
        assert_eq!(stats.groups, Some(Vec::new()), "no group was made");
    }
}

async fn a_republished_ce_id_is_stored_once(fx: &Fixture) {
    let mut sub = fx.broker.subscribe(opts(fx, "g")).await.unwrap();
    let msg = event(fx, 1);
    fx.broker.publish(msg.clone()).await.unwrap();
    fx.broker.publish(msg.clone()).await.unwrap();
    let sentinel = event(fx, 2);
    fx.broker.publish(sentinel).await.unwrap();
    let mut got = Vec::new();
    loop {
        let d = recv(&mut sub, WAIT).await;
        let n = number(&d.message);
        d.ack().await.unwrap();
        got.push(n);
        if n == 2 {
            break;
        }
    }
    assert_eq!(got, vec![1, 2], "the duplicate was delivered");
    sub.close().await;
}

async fn order_is_kept_per_subject_with_one_consumer(fx: &Fixture) {
    let mut sub = fx.broker.subscribe(opts(fx, "g")).await.unwrap();
    publish_all(fx, (0..500).map(|n| event(fx, n)).collect()).await;
    ack_in_order(&mut sub, 0..500).await;
    sub.close().await;
}

async fn request_reply_answers_and_times_out(fx: &Fixture) {
    let subject = fx.subject("cmd.echo");
    let mut requests = fx.broker.serve(&subject, "echo").await.unwrap();
    let server = tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            let mut h = Headers::new();
            h.insert("x-reply", "yes");
            let mut body = b"echo:".to_vec();
            body.extend_from_slice(&req.message.payload);
            req.respond(h, body).await.unwrap();
        }
    });
    let req = OutboundMessage::new(subject, Headers::new(), Bytes::from_static(b"ping"));
    let reply = fx
        .broker
        .request(req, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.payload.as_ref(), b"echo:ping");
    assert_eq!(reply.headers.get("x-reply"), Some("yes"));

    let lonely = OutboundMessage::new(fx.subject("cmd.nobody"), Headers::new(), Bytes::new());
    let started = Instant::now();
    let err = fx
        .broker
        .request(lonely, Duration::from_millis(500))
        .await
        .expect_err("nobody answers");
    assert!(
        matches!(
            err,
            sluice_broker::BrokerError::Timeout(_) | sluice_broker::BrokerError::NoResponders(_)
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    server.abort();
}

async fn one_responder_group_serves_each_subject_with_its_own_responder(fx: &Fixture) {
    let mut servers = Vec::new();
    for name in ["cmd.first", "cmd.second"] {
        let mut requests = fx.broker.serve(&fx.subject(name), "svc").await.unwrap();
        servers.push(tokio::spawn(async move {
            while let Some(req) = requests.next().await {
                req.respond(Headers::new(), name.as_bytes().to_vec())
                    .await
                    .unwrap();
            }
        }));
    }
    for name in [
        "cmd.first",
        "cmd.first",
        "cmd.second",
        "cmd.first",
        "cmd.second",
    ] {
        let req = OutboundMessage::new(fx.subject(name), Headers::new(), Bytes::new());
        let reply = fx
            .broker
            .request(req, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            reply.payload.as_ref(),
            name.as_bytes(),
            "answered by its own responder"
        );
    }
    for s in servers {
        s.abort();
    }
}

async fn a_restarted_consumer_resumes_after_the_last_ack(fx: &Fixture) {
    let o = opts(fx, "g").start(StartPosition::Beginning);
    let mut sub = fx.broker.subscribe(o.clone()).await.unwrap();
    publish_all(fx, (0..20).map(|n| event(fx, n)).collect()).await;
    ack_in_order(&mut sub, 0..10).await;
    sub.close().await;
    let mut sub = fx.broker.subscribe(o).await.unwrap();
    let mut rest = Vec::new();
    for _ in 10..20 {
        let d = recv(&mut sub, WAIT).await;
        rest.push(number(&d.message));
        d.ack().await.unwrap();
    }
    // Exactly the unacked ones, each once. Their order is not asserted:
    // JetStream may reorder messages handed back for redelivery.
    rest.sort_unstable();
    assert_eq!(rest, (10..20).collect::<Vec<_>>());
    assert_quiet(&mut sub, Duration::from_millis(500)).await;
    sub.close().await;
}

/// A member dropped without closing (a killed service) and its group then
/// deleted (`sluice` resetting a projection): the group stays deleted, so
/// the next member starts where it asks to, not where the dropped member's
/// group was. (A NATS member's pump outlived its subscription by up to one
/// pull request and, seeing its consumer deleted, created it again at its
/// own start position.)
async fn a_group_deleted_after_its_member_was_dropped_starts_afresh(fx: &Fixture) {
    publish_all(fx, (0..3).map(|n| event(fx, n)).collect()).await;
    let sub = fx
        .broker
        .subscribe(opts(fx, "reset").start(StartPosition::New))
        .await
        .unwrap();
    // The member's pull request is outstanding (nothing new to deliver).
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(sub);
    fx.broker.delete_group(&fx.filter(), "reset").await.unwrap();
    // Longer than a NATS pull request waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let o = opts(fx, "reset").start(StartPosition::Beginning);
    let mut sub = fx.broker.subscribe(o).await.unwrap();
    ack_in_order(&mut sub, 0..3).await;
    sub.close().await;
}

/// A member that settles its deliveries and closes at once, with its
/// connection, keeps the settlements: nothing comes back to its group. (On
/// RabbitMQ, lapin queued acks behind its internal task, and closing the
/// connection could overtake them: acked messages were handed back.) Each
/// member has a connection of its own, like the processes of `sluice`
/// commands.
async fn settlements_right_before_close_are_kept(fx: &Fixture) {
    let group = "settling";
    let first = fx.connect().await;
    // A member dropped without closing leaves what it had prefetched to
    // the group's ack wait (on NATS): keep that short.
    let o = opts(fx, group).ack_wait(Duration::from_secs(2));
    first.subscribe(o.clone()).await.unwrap().close().await;
    first.close().await;
    let (rounds, batch) = (4, 50);
    let total = rounds * batch;
    publish_all(fx, (0..total).map(|n| event(fx, n)).collect()).await;
    let mut settled = Vec::new();
    for round in 0..rounds {
        let broker = fx.connect().await;
        let mut sub = broker.subscribe(o.clone().prefetch(batch)).await.unwrap();
        let mut deliveries = Vec::new();
        for _ in 0..batch {
            deliveries.push(recv(&mut sub, WAIT).await);
        }
        settled.extend(deliveries.iter().map(|d| number(&d.message)));
        if round % 2 == 0 {
            // Acks, the last one dead-lettered, then the member closes and
            // its connection.
            let last = deliveries.pop().unwrap();
            for d in deliveries {
                d.ack().await.unwrap();
            }
            last.dead_letter("unwanted").await.unwrap();
            sub.close().await;
            broker.close().await;
        } else {
            // The first one dead-lettered, then acks, and the connection
            // closes right after the last ack (a command exiting), before
            // the member does.
            let mut deliveries = deliveries.into_iter();
            let first = deliveries.next().unwrap();
            first.dead_letter("unwanted").await.unwrap();
            for d in deliveries {
                d.ack().await.unwrap();
            }
            broker.close().await;
            drop(sub);
        }
    }
    settled.sort_unstable();
    assert_eq!(settled, (0..total).collect::<Vec<_>>(), "each once");
    let checker = fx.connect().await;
    assert_lag_seen_by(checker.as_ref(), &fx.filter(), group, 0).await;
    let mut sub = checker.subscribe(opts(fx, group)).await.unwrap();
    assert_quiet(&mut sub, Duration::from_millis(500)).await;
    sub.close().await;
    checker.close().await;
}

async fn ten_thousand_batched_messages_arrive_exactly_once_per_group(fx: &Fixture) {
    let total = 10_000;
    let subs = vec![
        fx.broker
            .subscribe(opts(fx, "bulk-a").prefetch(512))
            .await
            .unwrap(),
        fx.broker
            .subscribe(opts(fx, "bulk-b").prefetch(512))
            .await
            .unwrap(),
    ];
    let msgs: Vec<_> = (0..total).map(|n| event(fx, n)).collect();
    let ids: HashSet<String> = msgs.iter().map(|m| m.id().unwrap().to_owned()).collect();
    let acks = fx.broker.publish_batch(msgs).await;
    assert_eq!(acks.iter().filter(|r| r.is_ok()).count(), total);
    for mut sub in subs {
        let mut seen = HashSet::new();
        while seen.len() < total {
            let d = recv(&mut sub, WAIT).await;
            let id = d.message.id().unwrap().to_owned();
            assert!(ids.contains(&id));
            assert!(seen.insert(id), "delivered twice");
            d.ack().await.unwrap();
        }
        assert_quiet(&mut sub, Duration::from_millis(500)).await;
        sub.close().await;
    }
}

/// Polls `lag` until it is `want` (NATS and RabbitMQ report asynchronously).
async fn assert_lag(fx: &Fixture, group: &str, want: u64) {
    assert_lag_seen_by(fx.broker.as_ref(), &fx.filter(), group, want).await;
}

/// [`assert_lag`] as `broker` sees it.
async fn assert_lag_seen_by(broker: &dyn Broker, filter: &str, group: &str, want: u64) {
    let mut last = None;
    for _ in 0..100 {
        last = broker.lag(filter, group).await.unwrap();
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("lag of {group} is {last:?}, expected {want}");
}

async fn lag_counts_what_a_group_has_not_acked(fx: &Fixture) {
    assert_eq!(fx.broker.lag(&fx.filter(), "nobody").await.unwrap(), None);
    let sub = fx.broker.subscribe(opts(fx, "lagging")).await.unwrap();
    sub.close().await;
    publish_all(fx, (0..5).map(|n| event(fx, n)).collect()).await;
    assert_lag(fx, "lagging", 5).await;
    let mut sub = fx.broker.subscribe(opts(fx, "lagging")).await.unwrap();
    for _ in 0..5 {
        recv(&mut sub, WAIT).await.ack().await.unwrap();
    }
    assert_lag(fx, "lagging", 0).await;
    sub.close().await;
}

/// A group replaying from the beginning reports a lag above 0 until it has
/// acked everything its filter matches, and then exactly 0, also when the
/// stream ends with messages the filter does not match: `sluice export`
/// stops on that 0.
async fn lag_of_a_replaying_group_is_zero_only_once_caught_up(fx: &Fixture) {
    publish_all(fx, (0..20).map(|n| event(fx, n)).collect()).await;
    let other = |n| {
        let mut m = event(fx, n);
        m.subject = fx.subject("order.other");
        m
    };
    publish_all(fx, (20..25).map(other).collect()).await;
    let filter = fx.subject("order.placed");
    let options =
        SubscribeOptions::new("replaying", filter.as_str()).start(StartPosition::Beginning);
    let mut sub = fx.broker.subscribe(options).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let lag = fx.broker.lag(&filter, "replaying").await.unwrap();
        assert!(lag.is_some_and(|l| l > 0), "lag {lag:?} before the end");
        let d = recv(&mut sub, WAIT).await;
        seen.push(number(&d.message));
        d.ack().await.unwrap();
    }
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    let mut last = None;
    for _ in 0..100 {
        last = fx.broker.lag(&filter, "replaying").await.unwrap();
        if last == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, Some(0), "caught up");
    sub.close().await;
    fx.broker.delete_group(&filter, "replaying").await.unwrap();
}

macro_rules! conformance {
    ($backend:ident, $make:path) => {
        conformance!(@cases $backend, $make;
            round_trip_keeps_headers_and_payload,
            competing_consumers_in_one_group_get_disjoint_shares,
            two_groups_each_get_every_message,
            a_nack_with_delay_redelivers_after_the_delay,
            an_unacked_message_is_redelivered_after_ack_wait,
            max_deliveries_dead_letters_with_the_reason,
            malformed_messages_are_dead_lettered_by_the_consumer,
            start_positions_replay_from_beginning_sequence_and_time,
            a_republished_ce_id_is_stored_once,
            order_is_kept_per_subject_with_one_consumer,
            request_reply_answers_and_times_out,
            one_responder_group_serves_each_subject_with_its_own_responder,
            a_restarted_consumer_resumes_after_the_last_ack,
            a_group_deleted_after_its_member_was_dropped_starts_afresh,
            settlements_right_before_close_are_kept,
            ten_thousand_batched_messages_arrive_exactly_once_per_group,
            lag_counts_what_a_group_has_not_acked,
            lag_of_a_replaying_group_is_zero_only_once_caught_up,
            a_cursor_reads_the_stream_in_order_outside_any_group,
        );
    };
    (@cases $backend:ident, $make:path; $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fx = $make().await;
                    super::$case(&fx).await;
                    fx.cleanup().await;
                }
            )*
        }
    };
}

#[cfg(feature = "embedded")]
conformance!(embedded, crate::fixture::embedded);
#[cfg(feature = "nats")]
conformance!(nats, crate::fixture::nats);
#[cfg(feature = "amqp")]
conformance!(amqp, crate::fixture::amqp);
