//! The kit's delivery guarantees, the same test bodies on every broker
//! backend and on SQLite and PostgreSQL: effectively-once handling, the
//! outbox surviving a crash, retries with backoff, dead letters, graceful
//! shutdown, per-key order, batches. Trace context is in `trace.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use sluice_broker::Broker;
use sluice_kit::router::checkpoint;
use sluice_kit::testing::{BrokerBackend, DbBackend, FaultyBroker};
use sluice_kit::{
    BatchOutcome, ConsumerOptions, Ctx, Emitter, HandlerError, Item, Metrics, Projection,
    ProjectionCtx, Reactor, Service,
};
use sluice_proto::shop::orders::v1::{OrderConfirmed, OrderPlaced};

// --- scenarios ---------------------------------------------------------------

async fn a_duplicate_delivery_runs_the_handler_once(b: BrokerBackend, d: DbBackend) {
    let env = Env::new(b, d).await;
    let faulty = Arc::new(FaultyBroker::new(env.broker()));
    faulty.lose_acks(true);
    let probe = Arc::new(Probe::default());
    let metrics = Metrics::new();
    let subject = env.subject("order.placed");
    let svc = Service::new("t", faulty.clone(), env.tdb.db.clone())
        .metrics(metrics.clone())
        .reactor(
            Reactor::new("dup", probe.clone())
                .on(&subject, record)
                .options(fast_options()),
        )
        .start()
        .await
        .unwrap();
    publish_all(
        env.tb.broker.as_ref(),
        (0..3)
            .map(|i| placed(&subject, &format!("k{i}"), i))
            .collect(),
    )
    .await;
    eventually("three rows", || async { env.rows().await == 3 }).await;
    // The acks were lost: the broker delivers all three again.
    faulty.lose_acks(false);
    eventually("three duplicates", || async {
        metrics.counts("dup", &subject).duplicates >= 3
    })
    .await;
    assert_eq!(probe.calls().len(), 3, "the handler ran once per event");
    assert_eq!(env.rows().await, 3);
    svc.stop().await;
    env.cleanup().await;
}

async fn a_crash_between_commit_and_publish_loses_no_event(b: BrokerBackend, d: DbBackend) {
    let env = Env::new(b, d).await;
    let placed_subject = env.subject("order.placed");
    let confirmed_subject = env.subject("order.confirmed");
    let down_probe = Arc::new(Probe::default());
    let down = Service::new("down", env.broker(), env.tdb.db.clone())
        .relay(None)
        .reactor(
            Reactor::new("down", down_probe.clone())
                .on(&confirmed_subject, confirmed)
                .options(fast_options()),
        )
        .start()
        .await
        .unwrap();

    // First run: the relay publishes, then dies before marking rows sent.
    let faulty = Arc::new(FaultyBroker::new(env.broker()));
    faulty.hang_after_publish(true);
    let up_probe = Arc::new(Probe::default());
    let up = |broker: Arc<dyn Broker>, db: DatabaseConnection, probe: Arc<Probe>| {
        Service::new("up", broker, db).reactor(
            Reactor::new("up", probe)
                .on(&placed_subject, confirm)
                .options(fast_options()),
        )
    };
    let first = up(faulty.clone(), env.tdb.db.clone(), up_probe.clone())
        .start()
        .await
        .unwrap();
    publish_all(
        env.tb.broker.as_ref(),
        (0..5)
            .map(|i| placed(&placed_subject, &format!("k{i}"), i))
            .collect(),
    )
    .await;
    eventually("five handled upstream", || async {
        up_probe.calls().len() >= 5
    })
    .await;
    // The relay's first pass reached the broker, then hung: what it
    // published arrives downstream, and none of it is marked sent.
    eventually("confirmations downstream", || async {
        !down_probe.calls().is_empty()
    })
    .await;
    let backlog = sluice_kit::outbox::backlog(&env.tdb.db).await.unwrap();
    assert!(backlog > 0, "rows published but not marked sent");
    first.kill();

    // Second run, on a fresh connection as a restarted process: the relay
    // publishes the unmarked rows again; nothing is handled twice.
    let db = env.tdb.reopen().await;
    let second = up(env.broker(), db.clone(), up_probe.clone())
        .start()
        .await
        .unwrap();
    eventually("an empty outbox", || async {
        sluice_kit::outbox::backlog(&db).await.unwrap() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = down_probe.calls();
    let ids: HashSet<_> = calls.iter().map(|c| c.id.clone()).collect();
    assert_eq!(calls.len(), 5, "each confirmation handled once: {calls:?}");
    assert_eq!(ids.len(), 5);
    second.stop().await;
    down.stop().await;
    env.cleanup().await;
}

async fn a_failing_handler_is_retried_with_growing_delays(b: BrokerBackend, d: DbBackend) {
    let env = Env::new(b, d).await;
    let probe = Arc::new(Probe::default());
    probe.fail_first.store(2, Ordering::SeqCst);
    let metrics = Metrics::new();
    let subject = env.subject("order.placed");
    let mut options = fast_options();
    options.retry.initial_backoff = Duration::from_millis(300);
    options.retry.multiplier = 4.0;
    let reactor = Reactor::new("retry", probe.clone()).on(&subject, record);
    let svc = env.start_measured(reactor.options(options), &metrics).await;
    publish_all(env.tb.broker.as_ref(), vec![placed(&subject, "k", 1)]).await;
    eventually("the row", || async { env.rows().await == 1 }).await;
    let calls = probe.calls();
    assert_eq!(calls.len(), 3, "two failures, then success");
    // Only lower bounds: a retry never comes before its delay (300 ms, then
    // 1,200 ms, no jitter), but a loaded broker may deliver it late, so the
    // two observed gaps are not compared with each other. The second bound
    // lies far above the first delay, so a delay that did not grow fails it.
    let gap1 = calls[1].at - calls[0].at;
    let gap2 = calls[2].at - calls[1].at;
    assert!(gap1 >= Duration::from_millis(250), "first backoff {gap1:?}");
    assert!(
        gap2 >= Duration::from_millis(1_150),
        "second backoff {gap2:?} (the first was {gap1:?})"
    );
    let c = metrics.counts("retry", &subject);
    assert_eq!((c.failed, c.retried, c.handled), (2, 2, 1), "{c:?}");
    eventually("no lag", || async {
        metrics.lag("retry", &subject) == Some(0)
    })
    .await;
    svc.stop().await;
    env.cleanup().await;
}

async fn a_poison_message_is_dead_lettered_and_the_consumer_goes_on(
    b: BrokerBackend,
    d: DbBackend,
) {
    let env = Env::new(b, d).await;
    let probe = Arc::new(Probe::default());
    let subject = env.subject("order.placed");
    let reactor = Reactor::new("poison", probe.clone()).on(&subject, record);
    let svc = env.start(reactor.options(fast_options())).await;
    publish_all(
        env.tb.broker.as_ref(),
        vec![
            garbage(&subject),
            placed(&subject, "bad", -5),
            placed(&subject, "good", 7),
        ],
    )
    .await;
    eventually("the good event", || async { env.rows().await == 1 }).await;
    let mut reasons = dead_letters(&env, 2).await;
    reasons.sort();
    assert!(reasons[0].contains("negative total -5"), "{reasons:?}");
    assert!(
        reasons[1].contains("payload does not decode as shop.orders.v1.OrderPlaced"),
        "{reasons:?}"
    );
    svc.stop().await;
    env.cleanup().await;
}

/// Panics on the first delivery of total 1, hangs on the first of total 2.
async fn flaky(ctx: Ctx<Arc<Probe>>, ev: OrderPlaced) -> Result<(), HandlerError> {
    ctx.state()
        .record(&ctx.envelope().id, &ev.order_id, ev.total_cents);
    if ctx.delivered() == 1 {
        match ev.total_cents {
            1 => panic!("simulated bug"),
            2 => tokio::time::sleep(Duration::from_secs(60)).await,
            _ => {}
        }
    }
    ctx.db()
        .execute(&insert_row(
            &ctx.envelope().id,
            &ev.order_id,
            ev.total_cents,
        ))
        .await?;
    Ok(())
}

async fn a_panicking_or_hanging_handler_is_retried_and_the_rest_go_on(
    b: BrokerBackend,
    d: DbBackend,
) {
    let env = Env::new(b, d).await;
    let probe = Arc::new(Probe::default());
    let metrics = Metrics::new();
    let subject = env.subject("order.placed");
    let options = ConsumerOptions {
        handler_timeout: Duration::from_millis(300),
        ..fast_options()
    };
    let reactor = Reactor::new("flaky", probe.clone()).on(&subject, flaky);
    let svc = env.start_measured(reactor.options(options), &metrics).await;
    publish_all(
        env.tb.broker.as_ref(),
        (1..=3)
            .map(|i| placed(&subject, &format!("k{i}"), i))
            .collect(),
    )
    .await;
    eventually("three rows", || async { env.rows().await == 3 }).await;
    let c = metrics.counts("flaky", &subject);
    assert_eq!((c.failed, c.retried, c.handled), (2, 2, 3), "{c:?}");
    svc.stop().await;
    env.cleanup().await;
}

/// Records the correlation id of each confirmation as its key.
async fn correlated(ctx: Ctx<Arc<Probe>>, ev: OrderConfirmed) -> Result<(), HandlerError> {
    let correlation = ctx.envelope().correlation_id.clone().unwrap_or_default();
    ctx.state()
        .record(&ctx.envelope().id, &correlation, ev.total_cents);
    Ok(())
}

async fn events_of_a_request_are_published_only_if_its_transaction_commits(
    b: BrokerBackend,
    d: DbBackend,
) {
    let env = Env::new(b, d).await;
    let probe = Arc::new(Probe::default());
    let subject = env.subject("order.confirmed");
    let svc = Service::new("edge", env.broker(), env.tdb.db.clone())
        .reactor(
            Reactor::new("confirmations", probe.clone())
                .on(&subject, correlated)
                .options(fast_options()),
        )
        .start()
        .await
        .unwrap();
    let emitter = Emitter::new("edge", svc.relay_waker());
    let confirmed = |total| OrderConfirmed {
        order_id: "o-1".into(),
        customer_id: "c-1".into(),
        total_cents: total,
        currency: "EUR".into(),
    };

    // A request whose transaction commits: its row and its event, together.
    let txn = env.tdb.db.begin().await.unwrap();
    txn.execute(&insert_row("r-1", "o-1", 1)).await.unwrap();
    let m = emitter.event(&subject, "o-1", &confirmed(1), Some("req-1"));
    emitter.commit(txn, &[m]).await.unwrap();

    // A request that fails after building its event: neither is kept.
    let txn = env.tdb.db.begin().await.unwrap();
    txn.execute(&insert_row("r-2", "o-1", 2)).await.unwrap();
    let _unsent = emitter.event(&subject, "o-1", &confirmed(2), Some("req-2"));
    txn.rollback().await.unwrap();

    eventually("the committed event", || async {
        !probe.calls().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = probe.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!((calls[0].key.as_str(), calls[0].n), ("req-1", 1));
    assert_eq!(env.rows().await, 1);
    svc.stop().await;
    env.cleanup().await;
}

async fn shutdown_with_in_flight_events_loses_none_and_handles_none_twice(
    b: BrokerBackend,
    d: DbBackend,
) {
    let env = Env::new(b, d).await;
    let probe = Arc::new(Probe::default());
    *probe.delay.lock().unwrap() = Duration::from_millis(20);
    let subject = env.subject("order.placed");
    // A small window: at shutdown a few events are in flight, the rest
    // still in the broker or fetched but not started (handed back).
    let options = ConsumerOptions {
        concurrency: 4,
        max_wave: 4,
        max_in_flight: 8,
        prefetch: 8,
        ..fast_options()
    };
    let service = |db: DatabaseConnection| {
        Service::new("t", env.broker(), db).reactor(
            Reactor::new("drain", probe.clone())
                .on(&subject, record)
                .options(options.clone()),
        )
    };
    let first = service(env.tdb.db.clone()).start().await.unwrap();
    let ids = publish_all(
        env.tb.broker.as_ref(),
        (0..100)
            .map(|i| placed(&subject, &format!("k{}", i % 10), i))
            .collect(),
    )
    .await;
    eventually("some handled", || async { probe.calls().len() >= 10 }).await;
    first.stop().await;
    let calls = probe.calls().len();
    let rows = env.rows().await;
    assert_eq!(
        usize::try_from(rows).unwrap(),
        calls,
        "every started handler committed"
    );
    assert!(rows < 100, "stopped midway ({rows} rows)");

    let second = service(env.tdb.reopen().await).start().await.unwrap();
    eventually("all rows", || async { env.rows().await == 100 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.stop().await;
    let calls = probe.calls();
    let seen: HashSet<_> = calls.iter().map(|c| c.id.clone()).collect();
    assert_eq!(calls.len(), 100, "no event handled twice");
    assert_eq!(seen, ids.into_iter().collect(), "no event lost");
    env.cleanup().await;
}

async fn per_key_order_holds_with_concurrency(b: BrokerBackend, d: DbBackend) {
    let env = Env::new(b, d).await;
    let probe = Arc::new(Probe::default());
    let subject = env.subject("order.placed");
    let options = ConsumerOptions {
        concurrency: 16,
        max_wave: 8,
        ..fast_options()
    };
    let svc = env
        .start(
            Reactor::new("order", probe.clone())
                .on(&subject, record)
                .options(options),
        )
        .await;
    let messages: Vec<_> = (0..1000i64)
        .map(|i| placed(&subject, &format!("k{}", i % 50), i / 50))
        .collect();
    publish_all(env.tb.broker.as_ref(), messages).await;
    eventually("1,000 rows", || async { env.rows().await == 1000 }).await;
    svc.stop().await;
    let calls = probe.calls();
    assert_eq!(calls.len(), 1000);
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for c in &calls {
        by_key.entry(c.key.clone()).or_default().push(c.n);
    }
    assert_eq!(by_key.len(), 50);
    for (k, ns) in &by_key {
        assert_eq!(*ns, (0..20).collect::<Vec<_>>(), "order of key {k}");
    }
    let workers: HashSet<_> = calls.iter().filter_map(|c| c.task).collect();
    assert!(workers.len() > 1, "more than one worker: {}", workers.len());
    env.cleanup().await;
}

async fn batch_record(
    ctx: Ctx<Arc<Probe>>,
    items: Vec<Item<OrderPlaced>>,
) -> Result<BatchOutcome, HandlerError> {
    let probe = ctx.state().clone();
    probe.batches.lock().unwrap().push(items.len());
    let mut outcome = BatchOutcome::ok();
    for (i, item) in items.iter().enumerate() {
        let ev = &item.event;
        probe.record(&item.envelope.id, &ev.order_id, ev.total_cents);
        if ev.total_cents < 0 {
            outcome = outcome.fail(
                i,
                HandlerError::Permanent(format!("negative total {}", ev.total_cents)),
            );
            continue;
        }
        ctx.db()
            .execute(&insert_row(&item.envelope.id, &ev.order_id, ev.total_cents))
            .await?;
    }
    Ok(outcome)
}

async fn a_batch_with_one_poison_event_dead_letters_it_and_commits_the_rest(
    b: BrokerBackend,
    d: DbBackend,
) {
    let env = Env::new(b, d).await;
    let probe = Arc::new(Probe::default());
    let subject = env.subject("order.placed");
    // One key, so the events queue behind each other and a worker takes
    // them as a wave: with a key each, idle workers could take one apiece.
    let mut messages: Vec<_> = (0..8).map(|i| placed(&subject, "k", i)).collect();
    messages.insert(3, placed(&subject, "k", -1));
    messages.insert(6, garbage(&subject));
    publish_all(env.tb.broker.as_ref(), messages).await;
    let reactor = Reactor::new("batch", probe.clone()).on_batch(&subject, batch_record);
    let svc = env.start(reactor.options(fast_options())).await;
    eventually("eight rows", || async { env.rows().await == 8 }).await;
    let mut reasons = dead_letters(&env, 2).await;
    reasons.sort();
    assert!(reasons[0].contains("negative total -1"), "{reasons:?}");
    assert!(reasons[1].contains("does not decode"), "{reasons:?}");
    svc.stop().await;
    let batches = probe.batches.lock().unwrap().clone();
    assert!(
        batches.iter().any(|n| *n > 1),
        "events came in batches: {batches:?}"
    );
    env.cleanup().await;
}

async fn project(ctx: ProjectionCtx<()>, ev: OrderPlaced) -> Result<(), HandlerError> {
    ctx.db()
        .execute(&insert_row(
            &ctx.envelope().id,
            &ev.order_id,
            ev.total_cents,
        ))
        .await?;
    Ok(())
}

async fn ids(env: &Env) -> Vec<String> {
    let rows = env
        .tdb
        .db
        .query_all_raw(Statement::from_string(
            env.tdb.db.get_database_backend(),
            "SELECT event_id FROM kit_rows ORDER BY event_id",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.try_get::<String>("", "event_id").unwrap())
        .collect()
}

async fn a_projection_is_rebuilt_from_the_beginning(b: BrokerBackend, d: DbBackend) {
    let env = Env::new(b, d).await;
    let subject = env.subject("order.placed");
    let view = || {
        Projection::new("view", ())
            .on(&subject, project)
            .options(fast_options())
    };
    publish_all(
        env.tb.broker.as_ref(),
        (0..20)
            .map(|i| placed(&subject, &format!("k{}", i % 3), i))
            .collect(),
    )
    .await;
    let run = || async {
        let svc = Service::new("t", env.broker(), env.tdb.db.clone())
            .projection(view())
            .start()
            .await
            .unwrap();
        eventually("the view", || async { env.rows().await == 20 }).await;
        svc.stop().await;
        let cp = checkpoint(&env.tdb.db, "view").await.unwrap().unwrap();
        assert_eq!(cp.events, 20, "{cp:?}");
        // RabbitMQ knows sequences only for what a group replays from the
        // stream queue; the other backends know every one.
        match (b, cp.position) {
            (BrokerBackend::Amqp, Some(p)) => assert!((1..=20).contains(&p), "{cp:?}"),
            (BrokerBackend::Amqp, None) => {}
            (_, p) => assert_eq!(p, Some(20), "the highest sequence applied"),
        }
        ids(&env).await
    };
    let live = run().await;
    view()
        .reset(env.tb.broker.as_ref(), &env.tdb.db, |txn| async move {
            txn.execute_unprepared("DELETE FROM kit_rows").await?;
            Ok(txn)
        })
        .await
        .unwrap();
    assert_eq!(env.rows().await, 0);
    assert!(checkpoint(&env.tdb.db, "view").await.unwrap().is_none());
    let rebuilt = run().await;
    assert_eq!(rebuilt, live, "the rebuilt view equals the live one");
    env.cleanup().await;
}

/// A replay's swap leaves a watermark in the projection's checkpoint (the
/// rebuilt model holds every event of the stream up to it): the live
/// projection then skips what is at or below it and applies what follows.
async fn a_projection_skips_what_a_replay_watermark_covers(b: BrokerBackend, d: DbBackend) {
    let env = Env::new(b, d).await;
    let subject = env.subject("order.placed");
    let published = publish_all(
        env.tb.broker.as_ref(),
        (0..20)
            .map(|i| placed(&subject, &format!("k{}", i % 3), i))
            .collect(),
    )
    .await;
    let now = sluice_kit::db::now_micros();
    env.tdb
        .db
        .execute_raw(Statement::from_sql_and_values(
            env.tdb.db.get_database_backend(),
            "INSERT INTO sluice_checkpoint (consumer, position, events, updated_at, replayed_to, replayed_until) \
             VALUES ($1, 12, 12, $2, 12, $2)",
            ["view".into(), now.into()],
        ))
        .await
        .unwrap();
    let svc = Service::new("t", env.broker(), env.tdb.db.clone())
        .projection(
            Projection::new("view", ())
                .on(&subject, project)
                .options(fast_options()),
        )
        .start()
        .await
        .unwrap();
    eventually("all 20 read", || async {
        checkpoint(&env.tdb.db, "view")
            .await
            .unwrap()
            .is_some_and(|c| c.position == Some(20))
    })
    .await;
    svc.stop().await;
    let mut want = published[12..].to_vec();
    want.sort();
    assert_eq!(ids(&env).await, want, "only the events past the watermark");
    let cp = checkpoint(&env.tdb.db, "view").await.unwrap().unwrap();
    assert_eq!(cp.events, 20, "12 replayed, 8 applied live: {cp:?}");
    assert_eq!(cp.replayed_to, Some(12), "the watermark stays: {cp:?}");
    env.cleanup().await;
}

/// RabbitMQ gives no stream sequence to what a group reads live, and a
/// replay leaves no watermark there: the scenario runs where it applies.
mod a_projection_skips_what_a_replay_watermark_covers {
    use sluice_kit::testing::{BrokerBackend, DbBackend};

    #[tokio::test(flavor = "multi_thread")]
    async fn embedded_sqlite() {
        super::a_projection_skips_what_a_replay_watermark_covers(
            BrokerBackend::Embedded,
            DbBackend::Sqlite,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn nats_postgres() {
        super::a_projection_skips_what_a_replay_watermark_covers(
            BrokerBackend::Nats,
            DbBackend::Postgres,
        )
        .await;
    }
}

async fn after_commit_runs_once_the_handled_rows_are_visible(b: BrokerBackend, d: DbBackend) {
    let env = Env::new(b, d).await;
    let probe = Arc::new(Probe::default());
    let subject = env.subject("order.placed");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let svc = env
        .start(
            Reactor::new("hooked", probe.clone())
                .on(&subject, record)
                .after_commit(move || {
                    let _ = tx.send(());
                })
                .options(fast_options()),
        )
        .await;
    publish_all(env.tb.broker.as_ref(), vec![placed(&subject, "k1", 1)]).await;
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the hook runs after the commit")
        .expect("the hook's channel is open");
    // Called after the commit: what the handler wrote is there.
    assert_eq!(env.rows().await, 1);
    svc.stop().await;
    env.cleanup().await;
}

sluice_kit::backend_matrix!(
    a_duplicate_delivery_runs_the_handler_once,
    a_crash_between_commit_and_publish_loses_no_event,
    a_failing_handler_is_retried_with_growing_delays,
    a_poison_message_is_dead_lettered_and_the_consumer_goes_on,
    shutdown_with_in_flight_events_loses_none_and_handles_none_twice,
    per_key_order_holds_with_concurrency,
    a_batch_with_one_poison_event_dead_letters_it_and_commits_the_rest,
    a_projection_is_rebuilt_from_the_beginning,
    a_panicking_or_hanging_handler_is_retried_and_the_rest_go_on,
    events_of_a_request_are_published_only_if_its_transaction_commits,
    after_commit_runs_once_the_handled_rows_are_visible,
);

#[tokio::test]
async fn the_inbox_remembers_handled_events_until_pruned() {
    let env = Env::new(BrokerBackend::Embedded, DbBackend::Sqlite).await;
    let probe = Arc::new(Probe::default());
    let subject = env.subject("order.placed");
    let svc = env
        .start(
            Reactor::new("inbox", probe)
                .on(&subject, record)
                .options(fast_options()),
        )
        .await;
    let ids = publish_all(env.tb.broker.as_ref(), vec![placed(&subject, "k", 1)]).await;
    eventually("the row", || async { env.rows().await == 1 }).await;
    svc.stop().await;
    let db = &env.tdb.db;
    assert!(
        sluice_kit::inbox::contains(db, "inbox", &ids[0])
            .await
            .unwrap()
    );
    assert!(
        !sluice_kit::inbox::contains(db, "other", &ids[0])
            .await
            .unwrap()
    );
    assert_eq!(
        sluice_kit::inbox::prune(db, 0).await.unwrap(),
        0,
        "nothing that old"
    );
    assert_eq!(sluice_kit::inbox::prune(db, i64::MAX).await.unwrap(), 1);
    assert!(
        !sluice_kit::inbox::contains(db, "inbox", &ids[0])
            .await
            .unwrap()
    );
    env.cleanup().await;
}
