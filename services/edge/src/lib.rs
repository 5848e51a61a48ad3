//! The reference shop's REST edge: HTTP requests in, commands and
//! request/reply out, answers from read models it projects from the event
//! stream. It holds no business rules of the services behind it.
//!
//! - `POST /v1/accounts`, `POST /v1/auth/token`: request/reply to accounts.
//! - `GET /v1/products[/{id}]`: the catalogue with stock (projection
//!   `edge-products` of the inventory's events), cursor-paginated;
//!   `POST /v1/products`, `PUT`/`DELETE /v1/products/{id}` and
//!   `POST /v1/products/{id}/stock` with an API key
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
//!   400, bodies over 1 MiB 413; a client over its rate limit 429 with
//!   `Retry-After`; a request not answered within its deadline 504.
//! - `/healthz`, `/readyz`, `/metrics` as every service; `/openapi.json`
//!   (OpenAPI 3.1, generated from the handlers) and `/docs` (rendered).
//! - Served over HTTP/1.1 and h2c, or HTTPS (h2 and HTTP/1.1) with a
//!   certificate; gzip/br compression; `X-Request-Id` on every response and
//!   in the request's trace span; CORS for configured origins
//!   ([`EdgeOptions::from_env`] lists the settings).

mod admin;
mod api;
mod auth;
mod cache;
mod dashboard;
pub mod http;
mod json;
mod limit;
pub mod migration;
pub mod openapi;
pub mod problem;
mod project;
pub mod replay;
pub mod tables;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use sluice_broker::Broker;
use sluice_kit::health::Readiness;
use sluice_kit::outbox::Emitter;
use sluice_kit::rpc::Requester;
use sluice_kit::{
    ConsumerError, ConsumerOptions, KitConfig, Metrics, Projection, RunningService, Secret,
    Service, Shutdown,
};

pub use auth::{Caller, KeyHolder};
pub use http::{TlsError, TlsFiles};
pub use limit::RateLimit;
pub use problem::Problem;

/// The edge's name: its projections' prefix and `ce-source` (`/sluice/edge`).
pub const NAME: &str = "edge";

/// Where `sluice up` and the `sluice-edge` binary serve the API by default.
pub const LISTEN: &str = "127.0.0.1:8080";

/// Where the `sluice-edge` binary serves `/healthz`, `/readyz` and
/// `/metrics` unless `SLUICE_LISTEN` says otherwise.
pub const OPS_LISTEN: &str = "127.0.0.1:9100";

/// Read connections of a SQLite edge database (beside its one writer).
pub const READERS: u32 = 4;

/// Largest request body.
pub const BODY_LIMIT: usize = 1 << 20;

/// Largest image upload body: the media store's limit for an image
/// (10 MiB) and room for the multipart framing around it.
pub const IMAGE_BODY_LIMIT: usize = sluice_media::store::MAX_UPLOAD_BYTES + (64 << 10);

/// The subjects the edge uses, per domain (tests use unique domains).
#[derive(Debug, Clone, Default)]
pub struct Subjects {
    /// The accounts service's commands.
    pub accounts: sluice_accounts::Subjects,
    /// The orders service's commands and events.
    pub orders: sluice_orders::Subjects,
    /// The inventory's events.
    pub inventory: sluice_inventory::Subjects,
    /// The media service's events (images uploaded here, thumbnails).
    pub media: sluice_media::Subjects,
}

/// How the edge is served.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Where the API is served (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The admin API key (every scope), e.g. from `SLUICE_ADMIN_KEY`;
    /// `None`: only keys issued by accounts are accepted.
    pub admin_key: Option<Secret>,
    /// Serve HTTPS with this certificate; plain HTTP (and h2c) when `None`.
    pub tls: Option<TlsFiles>,
    /// Origins allowed by CORS (`*`: any); none: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Each client's rate limit; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// How long a request may take before it is answered 504.
    pub request_timeout: Duration,
    /// How long an order read from the read model may be served from
    /// memory (zero: always read the database).
    pub cache_ttl: Duration,
    /// Where product images are kept (the media service's store); `None`:
    /// uploads are refused (503).
    pub images: Option<sluice_media::ImageStore>,
    /// The domains whose dead letters `/v1/admin/dlq` shows and resolves
    /// (default: the shop's six, [`SHOP_DOMAINS`]).
    pub dead_letter_domains: Vec<String>,
    /// The process's recent spans, for the dashboard's traces of an order
    /// (`sluice up` keeps them); `None`: the page has no traces to show.
    pub recent_spans: Option<sluice_kit::telemetry::RecentSpans>,
}

/// The domains of the reference shop's services, in start order (producers
/// of commands after the services that answer them).
pub const SHOP_DOMAINS: [&str; 6] = [
    "accounts",
    "inventory",
    "payments",
    "orders",
    "notifications",
    "media",
];

/// The default [`EdgeOptions::cache_ttl`]: changes this edge projects drop
/// their rows at once; the TTL bounds staleness from changes it does not
/// see (another replica projecting into the same database).
pub const CACHE_TTL: Duration = Duration::from_millis(500);

/// Most orders kept in memory.
const CACHED_ORDERS: usize = 100_000;

/// The default request deadline: longer than a request/reply's own timeout
/// (10 s), so a service that does not answer is reported as such.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A setting of [`EdgeOptions::from_env`] that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?} is not valid: {expected}")]
pub struct OptionsError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What it should look like.
    pub expected: &'static str,
}

impl EdgeOptions {
    /// Serve on `listen` without an admin key, TLS or CORS, with the
    /// default rate limit and deadline.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            admin_key: None,
            tls: None,
            cors_origins: Vec::new(),
            rate_limit: Some(RateLimit::DEFAULT),
            request_timeout: REQUEST_TIMEOUT,
            cache_ttl: CACHE_TTL,
            images: None,
            dead_letter_domains: SHOP_DOMAINS.iter().map(|d| (*d).to_owned()).collect(),
            recent_spans: None,
        }
    }

    /// Options from environment variables (`vars`, e.g. `std::env::vars()`),
    /// serving on `listen` unless `SLUICE_EDGE_LISTEN` says otherwise:
    ///
    /// - `SLUICE_ADMIN_KEY`: the admin API key;
    /// - `SLUICE_EDGE_TLS_CERT`, `SLUICE_EDGE_TLS_KEY`: PEM files, both or
    ///   neither;
    /// - `SLUICE_EDGE_CORS_ORIGINS`: comma-separated origins, or `*`;
    /// - `SLUICE_EDGE_RATE_LIMIT`: requests per second per client (`0`:
    ///   unlimited; default 100), `SLUICE_EDGE_RATE_BURST` (default twice
    ///   the rate);
    /// - `SLUICE_EDGE_REQUEST_TIMEOUT`: seconds (default 15);
    /// - `SLUICE_EDGE_CACHE_TTL`: seconds an order may be served from
    ///   memory (default 0.5; `0`: off);
    /// - `SLUICE_MEDIA_*`: the image store, as the media service reads it
    ///   (unset: none here; [`from_resources`] then uses `data/media`).
    ///
    /// # Errors
    /// A setting does not parse, or only one TLS file is given.
    pub fn from_env(
        listen: SocketAddr,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, OptionsError> {
        let all: Vec<(String, String)> = vars.into_iter().collect();
        let media = if all.iter().any(|(k, _)| k.starts_with("SLUICE_MEDIA_")) {
            let store = sluice_media::MediaConfig::from_env(all.iter().cloned())
                .and_then(|c| sluice_media::ImageStore::from_config(&c.store))
                .map_err(|e| OptionsError {
                    name: "SLUICE_MEDIA_*",
                    value: e.to_string(),
                    expected: "settings of the media store",
                })?;
            Some(store)
        } else {
            None
        };
        let vars: std::collections::HashMap<String, String> = all
            .into_iter()
            .filter(|(k, v)| k.starts_with("SLUICE_") && !v.trim().is_empty())
            .collect();
        let get = |name: &str| vars.get(name).map(|v| v.trim().to_owned());
        let bad = |name: &'static str, value: String, expected: &'static str| OptionsError {
            name,
            value,
            expected,
        };
        let mut o = Self::new(listen);
        o.images = media;
        if let Some(v) = get("SLUICE_EDGE_LISTEN") {
            o.listen = v
                .parse()
                .map_err(|_| bad("SLUICE_EDGE_LISTEN", v, "an address (host:port)"))?;
        }
        o.admin_key = get("SLUICE_ADMIN_KEY").map(Secret::new);
        o.tls = match (get("SLUICE_EDGE_TLS_CERT"), get("SLUICE_EDGE_TLS_KEY")) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => {
                return Err(bad(
                    "SLUICE_EDGE_TLS_CERT",
                    v,
                    "SLUICE_EDGE_TLS_CERT and SLUICE_EDGE_TLS_KEY go together",
                ));
            }
        };
        if let Some(v) = get("SLUICE_EDGE_CORS_ORIGINS") {
            o.cors_origins = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        let count = |name: &'static str| -> Result<Option<u32>, OptionsError> {
            get(name)
                .map(|v| v.parse::<u32>().map_err(|_| bad(name, v, "a whole number")))
                .transpose()
        };
        if let Some(rate) = count("SLUICE_EDGE_RATE_LIMIT")? {
            o.rate_limit = std::num::NonZeroU32::new(rate).map(|per_second| RateLimit {
                per_second,
                burst: per_second.saturating_add(per_second.get()),
            });
        }
        if let (Some(burst), Some(limit)) = (count("SLUICE_EDGE_RATE_BURST")?, &mut o.rate_limit) {
            limit.burst = std::num::NonZeroU32::new(burst)
                .ok_or_else(|| bad("SLUICE_EDGE_RATE_BURST", burst.to_string(), "at least 1"))?;
        }
        if let Some(v) = get("SLUICE_EDGE_CACHE_TTL") {
            o.cache_ttl = v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && (0.0..=3600.0).contains(s))
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad("SLUICE_EDGE_CACHE_TTL", v, "seconds, 0 to 3600"))?;
        }
        if let Some(v) = get("SLUICE_EDGE_REQUEST_TIMEOUT") {
            o.request_timeout = v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 86_400.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad("SLUICE_EDGE_REQUEST_TIMEOUT", v, "seconds, more than 0"))?;
        }
        Ok(o)
    }
}

/// What the handlers share.
pub struct Edge {
    db: DatabaseConnection,
    /// Connections for the API's reads ([`sluice_kit::db::readers`]).
    reads: DatabaseConnection,
    /// Orders by id, as `edge-orders` last committed them.
    orders_cache: project::OrdersState,
    requester: Requester,
    emitter: Emitter,
    keys: auth::Keys,
    admin_key: Option<Secret>,
    accounts: sluice_accounts::Subjects,
    orders: sluice_orders::Subjects,
    inventory: sluice_inventory::Subjects,
    media: sluice_media::Subjects,
    images: Option<sluice_media::ImageStore>,
    broker: Arc<dyn Broker>,
    dead_letter_domains: Vec<String>,
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
    /// The read connections could not be opened.
    #[error(transparent)]
    Readers(sluice_kit::db::DbError),
    /// The certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
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
        .on(&s.media.image_uploaded, project::image_uploaded)
        .on(&s.media.image_thumbnailed, project::image_thumbnailed)
        .on(&s.media.image_rejected, project::image_rejected)
        // One worker, so events apply in log order across keys: a stock
        // delta (keyed by order) must find its product (keyed by product),
        // which a rebuild replays only just before.
        .options(ConsumerOptions {
            concurrency: 1,
            ..ConsumerOptions::default()
        })
        .configured(config)
}

fn api_keys_projection(s: &Subjects, config: &KitConfig) -> Projection<()> {
    Projection::new("edge-apikeys", ())
        .on(&s.accounts.api_key_created, project::api_key_created)
        .on(&s.accounts.api_key_revoked, project::api_key_revoked)
        .configured(config)
}

fn orders_projection(
    s: &Subjects,
    config: &KitConfig,
    cache: project::OrdersState,
) -> Projection<project::OrdersState> {
    let o = &s.orders;
    let settle = cache.clone();
    Projection::new("edge-orders", cache)
        .after_commit(move || settle.settle())
        .on_batch(&o.order_placed, project::order_placed_batch)
        .on_batch(&o.order_confirmed, project::order_confirmed_batch)
        .on_batch(&o.order_cancelled, project::order_cancelled_batch)
        .on(&o.cancellation_requested, project::cancellation_requested)
        .configured(config)
}

/// The edge's projections (read models), by name.
pub const PROJECTIONS: [&str; 3] = ["edge-products", "edge-orders", "edge-apikeys"];

/// Why a projection could not be reset.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// No projection of the edge has that name.
    #[error("the edge has no projection {0:?} (it has {list})", list = PROJECTIONS.join(", "))]
    Unknown(String),
    /// The broker or the database refused.
    #[error(transparent)]
    Reset(#[from] sluice_kit::router::ResetError),
}

/// Prepares a rebuild of the edge's projection `name` (one of
/// [`PROJECTIONS`]) from the beginning of the log: its consumer groups,
/// inbox entries and checkpoint are forgotten and its rows deleted, so the
/// edge's next start replays every event into it. The rows' times come
/// from the events, so the rebuilt rows equal the live ones, except what
/// the edge wrote itself before the events existed (a pending order's
/// `created_at` and `version`). Run it while the edge is stopped.
///
/// # Errors
/// An unknown name, or the broker or the database refused.
pub async fn reset(
    broker: &dyn Broker,
    db: &DatabaseConnection,
    config: &KitConfig,
    subjects: &Subjects,
    name: &str,
) -> Result<(), ResetError> {
    use sea_orm::EntityTrait;
    use tables::{api_keys, orders, product_images, products};
    match name {
        "edge-products" => {
            products_projection(subjects, config)
                .reset(broker, db, |txn| async move {
                    product_images::Entity::delete_many().exec(&txn).await?;
                    products::Entity::delete_many().exec(&txn).await?;
                    Ok(txn)
                })
                .await?;
        }
        "edge-orders" => {
            let unused = Arc::new(cache::RowCache::new(Duration::ZERO, 1));
            orders_projection(subjects, config, unused)
                .reset(broker, db, |txn| async move {
                    orders::Entity::delete_many().exec(&txn).await?;
                    Ok(txn)
                })
                .await?;
        }
        "edge-apikeys" => {
            api_keys_projection(subjects, config)
                .reset(broker, db, |txn| async move {
                    api_keys::Entity::delete_many().exec(&txn).await?;
                    Ok(txn)
                })
                .await?;
        }
        other => return Err(ResetError::Unknown(other.to_owned())),
    }
    Ok(())
}

/// The API's routes over `edge` with their limits, and `ops` (`/healthz`,
/// `/readyz`, `/metrics`) beside them; request ids, compression and CORS
/// around both.
fn router(edge: Arc<Edge>, ops: Router, options: &EdgeOptions, metrics: Metrics) -> Router {
    let mut api = Router::new()
        .route("/v1/accounts", post(api::register))
        .route("/v1/auth/token", post(api::token))
        .route(
            "/v1/products",
            get(api::list_products).post(api::create_product),
        )
        .route(
            "/v1/products/{id}",
            get(api::get_product)
                .put(api::update_product)
                .delete(api::delete_product),
        )
        .route("/v1/products/{id}/stock", post(api::adjust_stock))
        .route(
            "/v1/products/{id}/images",
            post(api::upload_image).layer(DefaultBodyLimit::max(IMAGE_BODY_LIMIT)),
        )
        .route("/v1/products/{id}/images/{image_id}", get(api::get_image))
        .route("/v1/orders", post(api::place_order).get(api::list_orders))
        .route(
            "/v1/orders/{id}",
            get(api::get_order).delete(api::cancel_order),
        )
        .route("/v1/orders/{id}/events", get(api::order_events))
        .route("/v1/admin/dlq", get(admin::list))
        .route("/v1/admin/dlq/{id}", axum::routing::delete(admin::purge))
        .route("/v1/admin/dlq/{id}/redrive", post(admin::redrive))
        .fallback(|| async { Problem::not_found("no such resource") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this resource does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(edge)
        .layer(middleware::from_fn_with_state(
            options.request_timeout,
            http::deadline,
        ));
    if let Some(limit) = options.rate_limit {
        api = api.layer(middleware::from_fn_with_state(
            limit::Limiter::new(limit),
            limit::rate_limit,
        ));
    }
    let mut app = api
        .merge(ops)
        .merge(dashboard::router(
            metrics.clone(),
            options.recent_spans.clone(),
        ))
        .merge(openapi::router())
        .layer(http::compression());
    if let Some(cors) = http::cors(&options.cors_origins) {
        app = app.layer(cors);
    }
    app.layer(middleware::from_fn_with_state(metrics, http::trace))
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
    let tls = options.tls.as_ref().map(http::tls_config).transpose()?;
    let orders_cache = Arc::new(cache::RowCache::new(options.cache_ttl, CACHED_ORDERS));
    migration::Migrator::up(&db, None)
        .await
        .map_err(StartError::Migrate)?;
    let service = Service::new(NAME, broker.clone(), db.clone())
        .metrics(metrics.clone())
        .projection(products_projection(&subjects, config))
        .projection(orders_projection(&subjects, config, orders_cache.clone()))
        .projection(api_keys_projection(&subjects, config))
        .start()
        .await?;
    let requester = Requester::new(broker.clone(), NAME, Duration::from_secs(10));
    let reads = match sluice_kit::db::readers(&db, READERS).await {
        Ok(r) => r,
        Err(e) => {
            service.stop().await;
            return Err(StartError::Readers(e));
        }
    };
    let edge = Arc::new(Edge {
        db: db.clone(),
        reads,
        orders_cache,
        keys: auth::Keys::new(requester.clone(), subjects.accounts.public_key.clone()),
        requester,
        emitter: Emitter::new(NAME, service.relay_waker()),
        admin_key: options.admin_key.clone(),
        accounts: subjects.accounts.clone(),
        orders: subjects.orders.clone(),
        inventory: subjects.inventory.clone(),
        media: subjects.media.clone(),
        images: options.images.clone(),
        broker: broker.clone(),
        dead_letter_domains: options.dead_letter_domains.clone(),
    });
    // Ask for the token keys now rather than on the first token, without
    // holding up the start: tokens are refused until accounts answers.
    let first = edge.clone();
    tokio::spawn(async move {
        if let Err(p) = first.keys.refresh().await {
            tracing::warn!(detail = %p.detail, "no token keys yet; will ask again on the first token");
        }
    });
    let bound = match tokio::net::TcpListener::bind(listen).await {
        Ok(tcp) => match tls {
            None => Ok(http::Bound::Plain(tcp)),
            Some(config) => http::TlsListener::new(tcp, config).map(http::Bound::Tls),
        },
        Err(e) => Err(e),
    };
    let bound = match bound {
        Ok(b) => b,
        Err(source) => {
            service.stop().await;
            return Err(StartError::Listen {
                addr: listen,
                source,
            });
        }
    };
    let addr = bound.local_addr().map_err(|source| StartError::Listen {
        addr: listen,
        source,
    })?;
    let app = router(edge, ops, &options, metrics);
    let shutdown = Shutdown::new();
    let server = tokio::spawn(bound.serve(app, shutdown.listener()));
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
    /// A setting does not parse.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The edge did not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Starts the edge on a process's resources, with the options
/// [`EdgeOptions::from_env`] reads (serving on [`LISTEN`] by default) — the
/// `sluice-edge` binary and `sluice serve edge`.
///
/// # Errors
/// A bad setting, or as [`start`].
pub async fn from_resources(r: sluice_kit::app::Resources) -> Result<Running, FromResourcesError> {
    let listen = LISTEN.parse().map_err(|_| OptionsError {
        name: "LISTEN",
        value: LISTEN.to_owned(),
        expected: "an address",
    })?;
    let mut options = EdgeOptions::from_env(listen, std::env::vars())?;
    if options.images.is_none() {
        // As the media service's own default.
        let store =
            sluice_media::ImageStore::local(sluice_media::config::DEFAULT_DIR).map_err(|e| {
                OptionsError {
                    name: "SLUICE_MEDIA_DIR",
                    value: e.to_string(),
                    expected: "a folder the edge can create",
                }
            })?;
        options.images = Some(store);
    }
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
