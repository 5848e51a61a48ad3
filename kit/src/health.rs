//! The operations endpoints every service process serves: `/healthz` (the
//! process is alive), `/readyz` (ready only while the broker and database
//! connections are up) and `/metrics` (Prometheus).
//!
//! [`OpsServer::bind`] binds (port 0 in tests) and reports the address;
//! [`OpsServer::run_until`] serves until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sea_orm::DatabaseConnection;
use sluice_broker::Broker;

use crate::metrics::Metrics;
use crate::shutdown::ShutdownListener;

/// What `/readyz` checks.
#[derive(Clone, Default)]
pub struct Readiness {
    brokers: Vec<(String, Arc<dyn Broker>)>,
    databases: Vec<(String, DatabaseConnection)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("brokers", &self.brokers.len())
            .field("databases", &self.databases.len())
            .finish()
    }
}

impl Readiness {
    /// Nothing to check yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also requires `broker` to be connected.
    #[must_use]
    pub fn broker(mut self, name: &str, broker: Arc<dyn Broker>) -> Self {
        self.brokers.push((name.to_owned(), broker));
        self
    }

    /// Also requires `db` to answer.
    #[must_use]
    pub fn database(mut self, name: &str, db: DatabaseConnection) -> Self {
        self.databases.push((name.to_owned(), db));
        self
    }

    /// The failing checks, each `name: reason`; empty when ready.
    pub async fn check(&self) -> Vec<String> {
        const LIMIT: Duration = Duration::from_secs(2);
        let mut failing = Vec::new();
        for (name, b) in &self.brokers {
            match tokio::time::timeout(LIMIT, b.health()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failing.push(format!("broker {name}: {e}")),
                Err(_) => failing.push(format!("broker {name}: no answer within {LIMIT:?}")),
            }
        }
        for (name, db) in &self.databases {
            match tokio::time::timeout(LIMIT, db.ping()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failing.push(format!("database {name}: {e}")),
                Err(_) => failing.push(format!("database {name}: no answer within {LIMIT:?}")),
            }
        }
        failing
    }
}

#[derive(Clone)]
struct Ops {
    readiness: Readiness,
    metrics: Metrics,
}

/// The router of the operations endpoints, to serve alone or merge into
/// another router (the edge's).
pub fn router(readiness: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Ops { readiness, metrics })
}

async fn readyz(State(ops): State<Ops>) -> Response {
    let failing = ops.readiness.check().await;
    if failing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let mut body = String::from("not ready\n");
        for f in failing {
            body.push_str(&f);
            body.push('\n');
        }
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// OpenMetrics for a scraper that asks for it (Prometheus does), the
/// Prometheus text format otherwise (curl, promtool, older scrapers).
async fn metrics_text(State(ops): State<Ops>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            ops.metrics.render(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            ops.metrics.render_text(),
        )
            .into_response()
    }
}

/// A bound operations server.
#[derive(Debug)]
pub struct OpsServer {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl OpsServer {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr, router: Router) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(Self { listener, router })
    }

    /// The bound address.
    ///
    /// # Errors
    /// The OS cannot tell.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`, then finishes open requests.
    ///
    /// # Errors
    /// The server failed.
    pub async fn run_until(self, mut shutdown: ShutdownListener) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await
    }
}
