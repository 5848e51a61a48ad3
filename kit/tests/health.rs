//! `/healthz`, `/readyz` and `/metrics` through a real socket: ready only
//! while the broker and the database answer; metrics count handled events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sluice_broker::Broker;
use sluice_kit::health::{OpsServer, Readiness, router};
use sluice_kit::testing::{BrokerBackend, DbBackend, NatsServer, TestDb, http_get};
use sluice_kit::{Metrics, Reactor, Service, Shutdown};

/// The kit's blocking GET, off the runtime that serves the request.
async fn get(addr: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || http_get(&addr.to_string(), path))
        .await
        .unwrap()
}

async fn start(readiness: Readiness, metrics: Metrics) -> (SocketAddr, Shutdown) {
    let server = OpsServer::bind("127.0.0.1:0".parse().unwrap(), router(readiness, metrics))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(server.run_until(shutdown.listener()));
    (addr, shutdown)
}

#[tokio::test]
async fn ready_and_counting_on_the_embedded_broker_and_sqlite() {
    let env = Env::new(BrokerBackend::Embedded, DbBackend::Sqlite).await;
    let metrics = Metrics::new();
    let probe = Arc::new(Probe::default());
    let subject = env.subject("order.placed");
    let svc = Service::new("t", env.broker(), env.tdb.db.clone())
        .metrics(metrics.clone())
        .reactor(
            Reactor::new("ops", probe)
                .on(&subject, record)
                .options(fast_options()),
        )
        .start()
        .await
        .unwrap();
    let readiness = Readiness::new()
        .broker("main", env.broker())
        .database("t", env.tdb.db.clone());
    let (addr, shutdown) = start(readiness, metrics).await;

    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
    publish_all(env.tb.broker.as_ref(), vec![placed(&subject, "k", 1)]).await;
    eventually("the row", || async { env.rows().await == 1 }).await;
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let line = format!("sluice_consumer_handled_total{{subject=\"{subject}\",group=\"ops\"}} 1");
    assert!(body.contains(&line), "{line} in\n{body}");
    assert!(
        body.contains("sluice_handler_duration_seconds_bucket"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "sluice_event_latency_seconds_count{{subject=\"{subject}\",group=\"ops\"}} 1"
        )),
        "{body}"
    );
    assert!(
        body.contains("# TYPE sluice_consumer_handled_total counter"),
        "Prometheus text format names a counter by its samples: {body}"
    );
    sluice_kit::testing::assert_promtool_accepts(&body);

    // A closed database pool is not ready.
    svc.stop().await;
    env.tdb.db.clone().close().await.unwrap();
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database t:"), "{body}");
    shutdown.trigger();
    env.tb.cleanup().await;
}

#[tokio::test]
async fn not_ready_while_the_nats_server_is_down() {
    let mut server = NatsServer::start();
    let broker: Arc<dyn Broker> = Arc::new(
        sluice_broker::nats::NatsBroker::connect(&server.url(), Default::default())
            .await
            .unwrap(),
    );
    let tdb = TestDb::start(DbBackend::Postgres).await;
    let readiness = Readiness::new()
        .broker("nats", broker.clone())
        .database("pg", tdb.db.clone());
    let (addr, shutdown) = start(readiness, Metrics::new()).await;
    assert_eq!(get(addr, "/readyz").await.0, 200);

    server.stop();
    let mut body = String::new();
    for _ in 0..100 {
        let (status, b) = get(addr, "/readyz").await;
        body = b;
        if status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        body.contains("broker nats: connection failed: NATS connection is"),
        "{body}"
    );

    server.restart();
    let mut ready = false;
    for _ in 0..200 {
        if get(addr, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready again after the server came back");
    shutdown.trigger();
    broker.close().await;
    tdb.cleanup().await;
}
