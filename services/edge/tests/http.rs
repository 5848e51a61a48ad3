//! The edge's HTTP stack through real sockets: request ids, compression,
//! CORS, rate limits, deadlines, h2c, HTTPS with h2 by ALPN, and the
//! settings read from the environment. No service stands behind the edge
//! here: these are properties of the stack, not of the shop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode, Version};
use sluice_edge::{EdgeOptions, RateLimit, Subjects, TlsFiles};
use sluice_kit::testing::{BrokerBackend, DbBackend, TestBroker, TestDb};
use sluice_kit::{KitConfig, Metrics, Secret};
use sluice_proto::shop::inventory::v1::{CreateProduct, Product, ProductResult};

struct Env {
    tb: TestBroker,
    tdb: TestDb,
    subjects: Subjects,
    edge: sluice_edge::Running,
}

impl Env {
    /// The edge alone on the embedded broker and SQLite, with `options`
    /// (listening on a free port).
    async fn start(options: impl FnOnce(EdgeOptions) -> EdgeOptions) -> Self {
        let tb = TestBroker::start(BrokerBackend::Embedded).await;
        let tdb = TestDb::start(DbBackend::Sqlite).await;
        let d = &tb.domain;
        let subjects = Subjects {
            accounts: sluice_accounts::Subjects::new(&format!("{d}a")),
            orders: sluice_orders::Subjects::new(d, &format!("{d}i"), &format!("{d}p")),
            inventory: sluice_inventory::Subjects::new(d, &format!("{d}i")),
            media: sluice_media::Subjects::new(&format!("{d}m")),
        };
        let options = options(EdgeOptions::new("127.0.0.1:0".parse().unwrap()));
        let edge = sluice_edge::start(
            tb.broker.clone(),
            tdb.db.clone(),
            &KitConfig::default(),
            Metrics::new(),
            subjects.clone(),
            options,
        )
        .await
        .unwrap();
        Self {
            tb,
            tdb,
            subjects,
            edge,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.edge.addr)
    }

    async fn stop(self) {
        self.edge.stop().await;
        self.tdb.cleanup().await;
        self.tb.cleanup().await;
    }
}

/// A client builder; reqwest's rustls gets the workspace's provider (ring).
fn builder() -> reqwest::ClientBuilder {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    Client::builder()
}

fn client() -> Client {
    builder().timeout(Duration::from_secs(30)).build().unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn every_response_carries_a_request_id_the_client_may_choose() {
    let env = Env::start(|o| o).await;
    let c = client();
    let r = c.get(env.url("/v1/products")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let generated = header(&r, "x-request-id").expect("a request id");
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    let again = c.get(env.url("/v1/products")).send().await.unwrap();
    assert_ne!(header(&again, "x-request-id").unwrap(), generated);

    let r = c
        .get(env.url("/v1/nowhere"))
        .header("x-request-id", "client-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&r, "x-request-id").as_deref(), Some("client-42"));

    // An id too long to log is replaced, not echoed.
    let long = "x".repeat(200);
    let r = c
        .get(env.url("/healthz"))
        .header("x-request-id", &long)
        .send()
        .await
        .unwrap();
    let id = header(&r, "x-request-id").unwrap();
    assert_ne!(id, long);
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    env.stop().await;
}

#[tokio::test]
async fn responses_are_compressed_as_the_client_accepts() {
    let env = Env::start(|o| o).await;
    let c = client();
    for (accept, expected) in [
        ("gzip", Some("gzip")),
        ("br", Some("br")),
        ("identity", None),
    ] {
        let r = c
            .get(env.url("/v1/nowhere"))
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            header(&r, "content-encoding").as_deref(),
            expected,
            "{accept}"
        );
        let body = r.bytes().await.unwrap();
        let plain = expected.is_none();
        assert_eq!(
            body.starts_with(b"{"),
            plain,
            "{accept}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    env.stop().await;
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let env = Env::start(|o| EdgeOptions {
        cors_origins: vec!["https://shop.example".into()],
        ..o
    })
    .await;
    let c = client();
    let preflight = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, env.url("/v1/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let ok = preflight("https://shop.example").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        header(&ok, "access-control-allow-origin").as_deref(),
        Some("https://shop.example")
    );
    let methods = header(&ok, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = header(&ok, "access-control-allow-headers").unwrap();
    assert!(allowed.contains("idempotency-key"), "{allowed}");

    let other = preflight("https://evil.example").await.unwrap();
    assert_eq!(header(&other, "access-control-allow-origin"), None);

    // A simple request from the allowed origin sees the exposed headers.
    let r = c
        .get(env.url("/v1/products"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    let exposed = header(&r, "access-control-expose-headers").unwrap();
    assert!(
        exposed.contains("etag") && exposed.contains("x-request-id"),
        "{exposed}"
    );
    env.stop().await;

    // No origins configured: no CORS headers at all.
    let env = Env::start(|o| o).await;
    let r = client()
        .get(env.url("/v1/products"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    env.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_limit_is_told_when_to_retry() {
    let env = Env::start(|o| EdgeOptions {
        rate_limit: Some(RateLimit {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        }),
        ..o
    })
    .await;
    let c = client();
    for _ in 0..3 {
        let r = c.get(env.url("/v1/products")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = c.get(env.url("/v1/products")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/problem+json")
    );
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["status"], 429);

    // Another client (an API key) has its own bucket; the operations
    // endpoints are never limited.
    let keyed = c
        .get(env.url("/v1/products"))
        .header("x-api-key", "someone-else")
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), StatusCode::OK);
    let health = c.get(env.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    // After the wait, the client may go on.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = c.get(env.url("/v1/products")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    env.stop().await;
}

#[tokio::test]
async fn a_request_past_its_deadline_is_a_gateway_timeout() {
    let env = Env::start(|o| EdgeOptions {
        request_timeout: Duration::from_millis(300),
        admin_key: Some(Secret::new("admin")),
        ..o
    })
    .await;
    // An inventory that takes 3 s to create a product.
    let stop = sluice_kit::Shutdown::new();
    let slow = sluice_kit::rpc::serve(
        env.tb.broker.clone(),
        "slow-inventory",
        &env.subjects.inventory.create_product,
        "slow-inventory",
        std::sync::Arc::new(()),
        |_, _, _: CreateProduct| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok(ProductResult::default())
        },
        stop.listener(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let r = client()
        .post(env.url("/v1/products"))
        .header("x-api-key", "admin")
        .json(&serde_json::json!({
            "sku": "SLOW", "name": "Slow", "price_cents": 1, "currency": "EUR", "stock": 1
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://sluice.dev/problems/timeout");
    stop.trigger();
    slow.abort();
    env.stop().await;
}

#[tokio::test]
async fn a_created_product_can_be_read_at_once() {
    let env = Env::start(|o| EdgeOptions {
        admin_key: Some(Secret::new("admin")),
        ..o
    })
    .await;
    // An inventory that answers, with its `ProductCreated` event not (yet)
    // at the edge: here it never comes.
    let stop = sluice_kit::Shutdown::new();
    let inventory = sluice_kit::rpc::serve(
        env.tb.broker.clone(),
        "quiet-inventory",
        &env.subjects.inventory.create_product,
        "quiet-inventory",
        std::sync::Arc::new(()),
        |_, _, c: CreateProduct| async move {
            Ok(ProductResult {
                ok: true,
                product: Some(Product {
                    product_id: "p-1".into(),
                    sku: c.sku,
                    name: c.name,
                    price_cents: c.price_cents,
                    currency: c.currency,
                    stock: c.stock,
                }),
                ..Default::default()
            })
        },
        stop.listener(),
    )
    .await
    .unwrap();
    let create = |name: &str| {
        client()
            .post(env.url("/v1/products"))
            .header("x-api-key", "admin")
            .json(&serde_json::json!({
                "sku": "NOW", "name": name, "price_cents": 250, "currency": "EUR", "stock": 3
            }))
            .send()
    };
    let read = || client().get(env.url("/v1/products/p-1")).send();
    assert_eq!(create("Lamp").await.unwrap().status(), StatusCode::CREATED);
    let r = read().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!((&p["name"], &p["stock"]), (&"Lamp".into(), &3.into()));
    // A row already there (as the projection may have written it, with
    // later changes) is left as it is.
    assert_eq!(create("Other").await.unwrap().status(), StatusCode::CREATED);
    let p: serde_json::Value = read().await.unwrap().json().await.unwrap();
    assert_eq!(p["name"], "Lamp");
    // The product exists once the inventory has answered: a read model that
    // cannot take it does not turn the 201 into an error.
    use sea_orm::ConnectionTrait as _;
    env.tdb
        .db
        .execute_unprepared("DROP TABLE products")
        .await
        .unwrap();
    assert_eq!(create("Lamp").await.unwrap().status(), StatusCode::CREATED);
    stop.trigger();
    inventory.abort();
    env.stop().await;
}

#[tokio::test]
async fn plain_http_serves_http2_with_prior_knowledge() {
    let env = Env::start(|o| o).await;
    let h2 = builder().http2_prior_knowledge().build().unwrap();
    let r = h2.get(env.url("/v1/products")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_2);
    let r = client().get(env.url("/v1/products")).send().await.unwrap();
    assert_eq!(r.version(), Version::HTTP_11);
    env.stop().await;
}

fn tls_client(ca: &rcgen::Certificate, http1: bool) -> Client {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if http1 {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let b = builder().tls_backend_preconfigured(config);
    if http1 { b.http1_only() } else { b }.build().unwrap()
}

#[tokio::test]
async fn https_negotiates_h2_or_http1_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let files = TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    let env = Env::start(|o| EdgeOptions {
        tls: Some(files.clone()),
        ..o
    })
    .await;
    let url = format!("https://localhost:{}/v1/products", env.edge.addr.port());
    let r = tls_client(&cert, false).get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_2);
    let r = tls_client(&cert, true).get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_11);
    // Plain HTTP on the TLS port is refused, not served.
    assert!(client().get(env.url("/v1/products")).send().await.is_err());
    env.stop().await;

    // A key file that holds no key stops the start with a clear error.
    std::fs::write(&files.key, "not a key").unwrap();
    let tb = TestBroker::start(BrokerBackend::Embedded).await;
    let tdb = TestDb::start(DbBackend::Sqlite).await;
    let mut options = EdgeOptions::new("127.0.0.1:0".parse().unwrap());
    options.tls = Some(files.clone());
    let err = sluice_edge::start(
        tb.broker.clone(),
        tdb.db.clone(),
        &KitConfig::default(),
        Metrics::new(),
        Subjects::default(),
        options,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("key.pem holds no private key"),
        "{err}"
    );
    tdb.cleanup().await;
    tb.cleanup().await;
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn options_come_from_the_environment() {
    let listen = "127.0.0.1:8080".parse().unwrap();
    let o = EdgeOptions::from_env(listen, vars(&[])).unwrap();
    assert_eq!(o.listen, listen);
    assert_eq!(o.rate_limit, Some(RateLimit::DEFAULT));
    assert_eq!(o.request_timeout, sluice_edge::REQUEST_TIMEOUT);
    assert_eq!(o.cache_ttl, sluice_edge::CACHE_TTL);
    assert!(o.tls.is_none() && o.cors_origins.is_empty() && o.admin_key.is_none());

    let o = EdgeOptions::from_env(
        listen,
        vars(&[
            ("SLUICE_EDGE_LISTEN", "0.0.0.0:443"),
            ("SLUICE_ADMIN_KEY", "k"),
            ("SLUICE_EDGE_TLS_CERT", "/c.pem"),
            ("SLUICE_EDGE_TLS_KEY", "/k.pem"),
            (
                "SLUICE_EDGE_CORS_ORIGINS",
                "https://a.example, https://b.example",
            ),
            ("SLUICE_EDGE_RATE_LIMIT", "50"),
            ("SLUICE_EDGE_REQUEST_TIMEOUT", "2.5"),
            ("SLUICE_EDGE_CACHE_TTL", "0"),
        ]),
    )
    .unwrap();
    assert_eq!(o.listen.port(), 443);
    assert_eq!(o.admin_key.unwrap().expose(), "k");
    assert_eq!(o.tls.unwrap().key.to_str(), Some("/k.pem"));
    assert_eq!(o.cors_origins, ["https://a.example", "https://b.example"]);
    let limit = o.rate_limit.unwrap();
    assert_eq!((limit.per_second.get(), limit.burst.get()), (50, 100));
    assert_eq!(o.request_timeout, Duration::from_millis(2500));
    assert_eq!(o.cache_ttl, Duration::ZERO);

    let off = EdgeOptions::from_env(listen, vars(&[("SLUICE_EDGE_RATE_LIMIT", "0")])).unwrap();
    assert_eq!(off.rate_limit, None);

    for (bad, name) in [
        (
            vec![("SLUICE_EDGE_LISTEN", "nowhere")],
            "SLUICE_EDGE_LISTEN",
        ),
        (
            vec![("SLUICE_EDGE_RATE_LIMIT", "-1")],
            "SLUICE_EDGE_RATE_LIMIT",
        ),
        (
            vec![("SLUICE_EDGE_REQUEST_TIMEOUT", "0")],
            "SLUICE_EDGE_REQUEST_TIMEOUT",
        ),
        (
            vec![("SLUICE_EDGE_TLS_CERT", "/c.pem")],
            "SLUICE_EDGE_TLS_CERT",
        ),
    ] {
        let e = EdgeOptions::from_env(listen, vars(&bad)).unwrap_err();
        assert_eq!(e.name, name, "{e}");
    }
}

#[tokio::test]
async fn the_description_and_its_page_are_served() {
    let env = Env::start(|o| o).await;
    let c = client();
    let r = c.get(env.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    let served: serde_json::Value = r.json().await.unwrap();
    assert_eq!(served, sluice_edge::openapi::spec());
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));

    let r = c.get(env.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "content-type").unwrap().starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(page.contains("Sluice shop API") && page.contains("/v1/orders/{id}/events"));
    // Self-contained: nothing is fetched from elsewhere.
    assert!(!page.contains("<script") && !page.contains("https://cdn"));

    // A method a route does not take: 405 problem with Allow.
    let r = c.put(env.url("/v1/orders")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/problem+json")
    );
    let allow = header(&r, "allow").unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow:?}");
    env.stop().await;
}
