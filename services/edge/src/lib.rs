//! The reference shop's REST edge: HTTP requests in, commands and
//! request/reply out, answers from read models it projects from the event
//! stream. It holds no business rules of the services behind it.
//!
//! - `POST /v1/accounts`, `POST /v1/auth/token`: request/reply to accounts.
//! - `GET /v1/products[/{id}]`: the catalogue with stock (projection
//!   `edge-products` of the inventory's events), cursor-paginated;
//!   `POST /v1/products` and `POST /v1/products/{id}/stock` with an API key
//!   (`X-Api-Key`, scope `catalog:write`: the admin key or a key accounts
//!   issued, projected as `edge-apikeys`), request/reply to inventory.
//! - `POST /v1/orders` (Bearer token with `orders:write`, `Idempotency-Key`)
//!   → 202: a pending row and `orders.cmd.place` in one transaction, so a
//!   GET right after never 404s; `GET /v1/orders/{id}` with an ETag;
//!   `GET /v1/orders` (the caller's, newest first); `DELETE
//!   /v1/orders/{id}` → 202 cancellation requested. Another customer's
//!   order is 404. The orders read model is the projection `edge-orders`;
//!   `GET /v1/orders/{id}/events` streams its status changes (SSE).
//! - Every error is `application/problem+json`; unknown JSON fields are
//!   400, bodies over 1 MiB 413.
//! - `/healthz`, `/readyz`, `/metrics` as every service.

mod api;
mod auth;
mod json;
pub mod migration;
pub mod problem;
mod project;
pub mod tables;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use sluice_broker::Broker;
use sluice_kit::health::{OpsServer, Readiness};
use sluice_kit::outbox::Emitter;
use sluice_kit::rpc::Requester;
use sluice_kit::{
    ConsumerError, KitConfig, Metrics, Projection, RunningService, Secret, Service, Shutdown,
};

pub use auth::{Caller, KeyHolder};
pub use problem::Problem;

/// The edge's name: its projections' prefix and `ce-source` (`/sluice/edge`).
pub const NAME: &str = "edge";

/// Where `sluice up` and the `sluice-edge` binary serve the API by default.
pub const LISTEN: &str = "127.0.0.1:8080";

/// Where the `sluice-edge` binary serves `/healthz`, `/readyz` and
/// `/metrics` unless `SLUICE_LISTEN` says otherwise.
pub const OPS_LISTEN: &str = "127.0.0.1:9100";

/// Largest request body.
pub const BODY_LIMIT: usize = 1 << 20;

/// The subjects the edge uses, per domain (tests use unique domains).
#[derive(Debug, Clone, Default)]
pub struct Subjects {
    /// The accounts service's commands.
    pub accounts: sluice_accounts::Subjects,
    /// The orders service's commands and events.
    pub orders: sluice_orders::Subjects,
    /// The inventory's events.
    pub inventory: sluice_inventory::Subjects,
}

/// How the edge is served.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Where the API is served (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The admin API key (every scope), e.g. from `SLUICE_ADMIN_KEY`;
    /// `None`: only keys issued by accounts are accepted.
    pub admin_key: Option<Secret>,
}

impl EdgeOptions {
    /// Serve on `listen` without an admin key.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            admin_key: None,
        }
    }
}

/// What the handlers share.
pub struct Edge {
    db: DatabaseConnection,
    requester: Requester,
    emitter: Emitter,
    keys: auth::Keys,
    admin_key: Option<Secret>,
    accounts: sluice_accounts::Subjects,
    orders: sluice_orders::Subjects,
    inventory: sluice_inventory::Subjects,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").finish_non_exhaustive()
    }
}

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Migrating the schema failed.
    #[error("cannot migrate the edge schema: {0}")]
    Migrate(sea_orm::DbErr),
    /// A projection could not subscribe.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The running edge.
#[derive(Debug)]
pub struct Running {
    service: RunningService,
    shutdown: Shutdown,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Where the API is served.
    pub addr: SocketAddr,
}

impl Running {
    /// Stops serving (in-flight requests finish), then the projections.
    pub async fn stop(self) {
        self.shutdown.trigger();
        match self.server.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server failed"),
            Err(e) => tracing::warn!(error = %e, "the HTTP server task failed"),
            Ok(Ok(())) => {}
        }
        self.service.stop().await;
    }

    /// Stops at once, as a crash would.
    pub fn kill(self) {
        self.server.abort();
        self.service.kill();
    }
}

impl sluice_kit::app::Stop for Running {
    fn stop(self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(Running::stop(self))
    }
}

fn products_projection(s: &Subjects, config: &KitConfig) -> Projection<()> {
    let i = &s.inventory;
    Projection::new("edge-products", ())
        .on(&i.product_created, project::product_created)
        .on(&s.orders.product_updated, project::product_updated)
        .on(&s.orders.product_deleted, project::product_deleted)
        .on(&i.stock_adjusted, project::stock_adjusted)
        .on(&i.stock_reserved, project::stock_reserved)
        .on(&i.stock_released, project::stock_released)
        .configured(config)
}

fn api_keys_projection(s: &Subjects, config: &KitConfig) -> Projection<()> {
    Projection::new("edge-apikeys", ())
        .on(&s.accounts.api_key_created, project::api_key_created)
        .on(&s.accounts.api_key_revoked, project::api_key_revoked)
        .configured(config)
}

fn orders_projection(s: &Subjects, config: &KitConfig) -> Projection<()> {
    let o = &s.orders;
    Projection::new("edge-orders", ())
        .on(&o.order_placed, project::order_placed)
        .on(&o.order_confirmed, project::order_confirmed)
        .on(&o.order_cancelled, project::order_cancelled)
        .on(&o.cancellation_requested, project::cancellation_requested)
        .configured(config)
}

/// The API's routes over `edge`, with `ops` (`/healthz`, `/readyz`,
/// `/metrics`) beside them.
fn router(edge: Arc<Edge>, ops: Router) -> Router {
    Router::new()
        .route("/v1/accounts", post(api::register))
        .route("/v1/auth/token", post(api::token))
        .route(
            "/v1/products",
            get(api::list_products).post(api::create_product),
        )
        .route("/v1/products/{id}", get(api::get_product))
        .route("/v1/products/{id}/stock", post(api::adjust_stock))
        .route("/v1/orders", post(api::place_order).get(api::list_orders))
        .route(
            "/v1/orders/{id}",
            get(api::get_order).delete(api::cancel_order),
        )
        .route("/v1/orders/{id}/events", get(api::order_events))
        .fallback(|| async { Problem::not_found("no such resource") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(edge)
        .merge(ops)
}

/// Migrates `db`, starts the projections and serves the API on `listen`,
/// with `/healthz`, `/readyz` (the broker and the edge's database) and
/// `/metrics` beside it.
///
/// # Errors
/// Migration, subscribing or binding failed.
pub async fn start(
    broker: Arc<dyn Broker>,
    db: DatabaseConnection,
    config: &KitConfig,
    metrics: Metrics,
    subjects: Subjects,
    options: EdgeOptions,
) -> Result<Running, StartError> {
    let readiness = Readiness::new()
        .broker("main", broker.clone())
        .database(NAME, db.clone());
    let ops = sluice_kit::health::router(readiness, metrics.clone());
    start_with_ops(broker, db, config, metrics, subjects, options, ops).await
}

/// As [`start`], with the operations endpoints given (`sluice up` serves
/// the readiness of every service beside the API).
///
/// # Errors
/// Migration, subscribing or binding failed.
pub async fn start_with_ops(
    broker: Arc<dyn Broker>,
    db: DatabaseConnection,
    config: &KitConfig,
    metrics: Metrics,
    subjects: Subjects,
    options: EdgeOptions,
    ops: Router,
) -> Result<Running, StartError> {
    let listen = options.listen;
    migration::Migrator::up(&db, None)
        .await
        .map_err(StartError::Migrate)?;
    let service = Service::new(NAME, broker.clone(), db.clone())
        .metrics(metrics.clone())
        .projection(products_projection(&subjects, config))
        .projection(orders_projection(&subjects, config))
        .projection(api_keys_projection(&subjects, config))
        .start()
        .await?;
    let requester = Requester::new(broker.clone(), NAME, Duration::from_secs(10));
    let edge = Arc::new(Edge {
        db: db.clone(),
        keys: auth::Keys::new(requester.clone(), subjects.accounts.public_key.clone()),
        requester,
        emitter: Emitter::new(NAME, service.relay_waker()),
        admin_key: options.admin_key,
        accounts: subjects.accounts.clone(),
        orders: subjects.orders.clone(),
        inventory: subjects.inventory.clone(),
    });
    if let Err(p) = edge.keys.refresh().await {
        // Tokens are refused until the accounts service answers.
        tracing::warn!(detail = %p.detail, "no token keys yet; will ask again on the first token");
    }
    let server = match OpsServer::bind(listen, router(edge, ops)).await {
        Ok(s) => s,
        Err(source) => {
            service.stop().await;
            return Err(StartError::Listen {
                addr: listen,
                source,
            });
        }
    };
    let addr = server.local_addr().map_err(|source| StartError::Listen {
        addr: listen,
        source,
    })?;
    let shutdown = Shutdown::new();
    let server = tokio::spawn(server.run_until(shutdown.listener()));
    Ok(Running {
        service,
        shutdown,
        server,
        addr,
    })
}

/// Why the edge could not start from a process's resources.
#[derive(Debug, thiserror::Error)]
pub enum FromResourcesError {
    /// `SLUICE_EDGE_LISTEN` is not an address.
    #[error("SLUICE_EDGE_LISTEN={0:?} is not an address (host:port)")]
    Listen(String),
    /// The edge did not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Starts the edge on a process's resources, serving the API on
/// `SLUICE_EDGE_LISTEN` (default [`LISTEN`]) with the admin key
/// `SLUICE_ADMIN_KEY` (if set) — the `sluice-edge` binary and
/// `sluice serve edge`.
///
/// # Errors
/// A bad address, or as [`start`].
pub async fn from_resources(r: sluice_kit::app::Resources) -> Result<Running, FromResourcesError> {
    let text = std::env::var("SLUICE_EDGE_LISTEN").unwrap_or_else(|_| LISTEN.to_owned());
    let listen = text
        .parse()
        .map_err(|_| FromResourcesError::Listen(text.clone()))?;
    let options = EdgeOptions {
        listen,
        admin_key: std::env::var("SLUICE_ADMIN_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .map(Secret::new),
    };
    Ok(start(
        r.broker,
        r.db,
        &r.config,
        r.metrics,
        Subjects::default(),
        options,
    )
    .await?)
}
