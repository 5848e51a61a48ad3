//! The REST edge through the real HTTP stack (bound to port 0), in front of
//! the whole shop, on every backend: the order flow via the API,
//! idempotent retries, ETags, pagination, another customer's order (404),
//! bad tokens (401) and bad bodies (problem+json).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use sea_orm::EntityTrait;
use serde_json::json;
use sluice_integration_tests::{ADMIN_KEY, Response, Shop, Svc, WAIT};
use sluice_kit::rpc::Requester;
use sluice_kit::testing::{BrokerBackend, DbBackend};
use sluice_proto::shop::accounts::v1::{ApiKeyResult, CreateApiKey, RevokeApiKey};

/// Registers `email` through the API and returns a Bearer header value.
async fn login(shop: &Shop, email: &str) -> String {
    let creds = format!(r#"{{"email":"{email}","password":"correct horse battery"}}"#);
    let r = shop.http("POST", "/v1/accounts", &[], Some(&creds)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.header("location").unwrap().starts_with("/v1/accounts/"));
    let r = shop.http("POST", "/v1/auth/token", &[], Some(&creds)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.json();
    assert_eq!(t["token_type"], "Bearer");
    assert!(t["expires_in"].as_i64().unwrap() > 0);
    format!("Bearer {}", t["access_token"].as_str().unwrap())
}

fn problem(r: &Response, status: u16) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json();
    assert_eq!(p["status"], status);
    assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
}

/// Polls `GET path` until `done` holds for its JSON.
async fn until(
    shop: &Shop,
    path: &str,
    auth: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = shop
            .http("GET", path, &[("Authorization", auth)], None)
            .await;
        if r.status == 200 && done(&r.json()) {
            return r.json();
        }
        assert!(Instant::now() < deadline, "{path}: {} {}", r.status, r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_order_flows_through_the_api(b: BrokerBackend, d: DbBackend) {
    let mut shop = Shop::start(b, d).await;
    let p = shop.product("edge-1", 10).await;
    let alice = login(&shop, "alice@example.com").await;
    // The catalogue shows the product once its event is projected.
    let product = until(&shop, &format!("/v1/products/{p}"), &alice, |_| true).await;
    assert_eq!(product["stock"], 10);
    assert_eq!(product["price_cents"], 1250);

    // Payments is down while the order is placed, so it stays PENDING until
    // the live stream below is open.
    shop.kill(Svc::Payments);
    let body =
        format!(r#"{{"items":[{{"product_id":"{p}","quantity":2}}],"payment_token":"tok_visa"}}"#);
    let headers = [
        ("Authorization", alice.as_str()),
        ("Idempotency-Key", "k-1"),
    ];
    let r = shop.http("POST", "/v1/orders", &headers, Some(&body)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["status"], "PENDING");
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/orders/{id}").as_str())
    );
    // Read-your-writes: the new order is there at once.
    let r = shop
        .http(
            "GET",
            &format!("/v1/orders/{id}"),
            &[("Authorization", &alice)],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A retry with the same key answers the same; another body is 422.
    let again = shop.http("POST", "/v1/orders", &headers, Some(&body)).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["id"], id.as_str());
    let other = body.replace("\"quantity\":2", "\"quantity\":3");
    problem(
        &shop
            .http("POST", "/v1/orders", &headers, Some(&other))
            .await,
        422,
    );

    // Its status changes, live, until it is over.
    let stream = shop.http_stream(
        &format!("/v1/orders/{id}/events"),
        &[("Authorization", &alice)],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    shop.restart(Svc::Payments).await;
    let events = stream.await.unwrap();
    assert!(events.contains("text/event-stream"), "{events}");
    let pending = events.find("\"status\":\"PENDING\"").expect(&events);
    let confirmed = events.find("\"status\":\"CONFIRMED\"").expect(&events);
    assert!(pending < confirmed, "{events}");
    assert!(events.contains("event: status"), "{events}");
    let order = until(&shop, &format!("/v1/orders/{id}"), &alice, |o| {
        o["status"] == "CONFIRMED"
    })
    .await;
    assert_eq!(order["total_cents"], 2500);
    assert_eq!(order["currency"], "EUR");
    assert_eq!(order["items"][0]["price_cents"], 1250);
    let product = until(&shop, &format!("/v1/products/{p}"), &alice, |p| {
        p["stock"] == 8
    })
    .await;
    assert_eq!(product["stock"], 8);
    // Only one order was placed for the two requests.
    assert_eq!(
        sluice_orders::tables::orders::Entity::find()
            .all(shop.db(Svc::Orders))
            .await
            .unwrap()
            .len(),
        1
    );

    // ETag: unchanged → 304.
    let r = shop
        .http(
            "GET",
            &format!("/v1/orders/{id}"),
            &[("Authorization", &alice)],
            None,
        )
        .await;
    let etag = r.header("etag").unwrap().to_owned();
    let r = shop
        .http(
            "GET",
            &format!("/v1/orders/{id}"),
            &[("Authorization", &alice), ("If-None-Match", &etag)],
            None,
        )
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());

    // Another customer sees nothing of it, and cannot cancel it.
    let bob = login(&shop, "bob@example.com").await;
    let path = format!("/v1/orders/{id}");
    problem(
        &shop
            .http("GET", &path, &[("Authorization", &bob)], None)
            .await,
        404,
    );
    problem(
        &shop
            .http("DELETE", &path, &[("Authorization", &bob)], None)
            .await,
        404,
    );
    let r = shop
        .http(
            "GET",
            &format!("{path}/events"),
            &[("Authorization", &bob)],
            None,
        )
        .await;
    problem(&r, 404);
    let mine = shop
        .http("GET", "/v1/orders", &[("Authorization", &bob)], None)
        .await;
    assert_eq!(mine.json()["items"].as_array().unwrap().len(), 0);

    // Its owner cancels it: refunded, stock back.
    let r = shop
        .http("DELETE", &path, &[("Authorization", &alice)], None)
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let order = until(&shop, &path, &alice, |o| o["status"] == "CANCELLED").await;
    assert_eq!(order["reason"], "cancelled by the customer");
    until(&shop, &format!("/v1/products/{p}"), &alice, |p| {
        p["stock"] == 10
    })
    .await;

    // The edge's /metrics tells what happened, in a format promtool accepts.
    let r = shop.http("GET", "/metrics", &[], None).await;
    assert_eq!(r.status, 200);
    let metrics = r.body;
    let has = |prefix: &str, part: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(prefix) && l.contains(part))
    };
    assert!(
        has(
            "sluice_http_requests_total{method=\"POST\",route=\"/v1/orders\",status=\"202\"}",
            " 2"
        ),
        "{metrics}"
    );
    assert!(
        has(
            "sluice_http_request_duration_seconds_bucket{",
            "method=\"GET\",route=\"/v1/orders/{id}\",status=\"200\""
        ),
        "{metrics}"
    );
    assert!(
        has(
            "sluice_event_latency_seconds_count{",
            "group=\"edge-orders\""
        ),
        "{metrics}"
    );
    assert!(
        has("sluice_published_total{service=\"edge\"", ""),
        "{metrics}"
    );
    assert!(
        has("sluice_consumer_lag{", "group=\"edge-orders\""),
        "{metrics}"
    );
    sluice_kit::testing::assert_promtool_accepts(&metrics);
    shop.cleanup().await;
}

async fn pages_visit_every_item_once_in_a_stable_order(b: BrokerBackend, d: DbBackend) {
    let shop = Shop::start(b, d).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(shop.product(&format!("page-{i}"), 1).await);
    }
    ids.sort();
    let carol = login(&shop, "carol@example.com").await;
    until(&shop, "/v1/products?limit=100", &carol, |p| {
        p["items"].as_array().is_some_and(|a| a.len() == 7)
    })
    .await;
    let mut seen = Vec::new();
    let mut path = "/v1/products?limit=3".to_owned();
    loop {
        let page = shop.http("GET", &path, &[], None).await.json();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/products?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every product once, in id order");
    problem(
        &shop.http("GET", "/v1/products?limit=0", &[], None).await,
        400,
    );
    problem(
        &shop.http("GET", "/v1/products?limit=101", &[], None).await,
        400,
    );
    problem(
        &shop.http("GET", "/v1/products?cursor=%%%", &[], None).await,
        400,
    );
    shop.cleanup().await;
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token signed with the accounts service's own key, with `claims`.
async fn signed(shop: &Shop, header: &str, claims: &serde_json::Value) -> String {
    let key = sluice_accounts::tables::signing_keys::Entity::find()
        .one(shop.db(Svc::Accounts))
        .await
        .unwrap()
        .unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&key.private_pkcs8).unwrap();
    let header = header.replace("KID", &key.kid);
    let input = format!(
        "{}.{}",
        b64(header.as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = pair.sign(input.as_bytes());
    format!("Bearer {input}.{}", b64(sig.as_ref()))
}

async fn bad_tokens_and_bodies_are_problems(b: BrokerBackend, d: DbBackend) {
    let shop = Shop::start(b, d).await;
    let good = login(&shop, "dave@example.com").await;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let claims = |exp: i64| {
        serde_json::json!({
            "sub": "someone", "scope": "orders:read orders:write",
            "iat": now - 10, "nbf": now - 10, "exp": exp,
            "jti": "j", "iss": sluice_accounts::token::ISSUER,
        })
    };
    // The accounts key itself, to show the claims are what is refused.
    let valid = signed(
        &shop,
        r#"{"alg":"EdDSA","typ":"JWT","kid":"KID"}"#,
        &claims(now + 600),
    )
    .await;
    let r = shop
        .http("GET", "/v1/orders", &[("Authorization", &valid)], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let expired = signed(
        &shop,
        r#"{"alg":"EdDSA","typ":"JWT","kid":"KID"}"#,
        &claims(now - 120),
    )
    .await;
    let parts: Vec<&str> = good.trim_start_matches("Bearer ").split('.').collect();
    let forged = format!(
        "Bearer {}.{}.{}",
        parts[0],
        b64(claims(now + 600).to_string().as_bytes()),
        parts[2]
    );
    let none = format!(
        "Bearer {}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims(now + 600).to_string().as_bytes())
    );
    let hs = format!(
        "Bearer {}.{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims(now + 600).to_string().as_bytes()),
        b64(b"not-a-mac")
    );
    for (what, auth) in [
        ("expired", expired.as_str()),
        ("forged", forged.as_str()),
        ("alg none", none.as_str()),
        ("HS256", hs.as_str()),
        ("garbage", "Bearer nope"),
        ("not bearer", "Basic Zm9vOmJhcg=="),
    ] {
        let r = shop
            .http("GET", "/v1/orders", &[("Authorization", auth)], None)
            .await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        problem(&r, 401);
    }
    problem(&shop.http("GET", "/v1/orders", &[], None).await, 401);

    // Bodies: unknown field, wrong type, not JSON, no key, too large.
    let h = [("Authorization", good.as_str()), ("Idempotency-Key", "k")];
    let unknown =
        r#"{"items":[{"product_id":"p","quantity":1}],"payment_token":"tok_visa","coupon":"x"}"#;
    problem(
        &shop.http("POST", "/v1/orders", &h, Some(unknown)).await,
        400,
    );
    let wrong = r#"{"items":[{"product_id":"p","quantity":"one"}],"payment_token":"tok_visa"}"#;
    problem(&shop.http("POST", "/v1/orders", &h, Some(wrong)).await, 400);
    problem(
        &shop.http("POST", "/v1/orders", &h, Some("{not json")).await,
        400,
    );
    let negative = r#"{"items":[{"product_id":"p","quantity":-1}],"payment_token":"tok_visa"}"#;
    problem(
        &shop.http("POST", "/v1/orders", &h, Some(negative)).await,
        400,
    );
    let ok = r#"{"items":[{"product_id":"p","quantity":1}],"payment_token":"tok_visa"}"#;
    problem(
        &shop
            .http(
                "POST",
                "/v1/orders",
                &[("Authorization", good.as_str())],
                Some(ok),
            )
            .await,
        400,
    );
    let big = format!(
        r#"{{"items":[{{"product_id":"{}","quantity":1}}],"payment_token":"tok_visa"}}"#,
        "x".repeat(sluice_edge::BODY_LIMIT)
    );
    problem(&shop.http("POST", "/v1/orders", &h, Some(&big)).await, 413);
    problem(
        &shop
            .http(
                "POST",
                "/v1/orders",
                &[
                    ("Authorization", good.as_str()),
                    ("Idempotency-Key", "k"),
                    ("Content-Type", "text/plain"),
                ],
                Some(ok),
            )
            .await,
        415,
    );
    problem(
        &shop
            .http(
                "POST",
                "/v1/accounts",
                &[],
                Some(r#"{"email":"x","password":"short"}"#),
            )
            .await,
        400,
    );
    problem(
        &shop
            .http(
                "POST",
                "/v1/accounts",
                &[],
                Some(r#"{"email":"dave@example.com","password":"correct horse battery"}"#),
            )
            .await,
        409,
    );
    problem(
        &shop
            .http(
                "POST",
                "/v1/auth/token",
                &[],
                Some(r#"{"email":"dave@example.com","password":"wrong password!"}"#),
            )
            .await,
        401,
    );
    problem(&shop.http("GET", "/v1/nothing", &[], None).await, 404);
    shop.cleanup().await;
}

async fn catalogue_writes_need_an_api_key_with_catalog_write(b: BrokerBackend, d: DbBackend) {
    let shop = Shop::start(b, d).await;
    let new = r#"{"sku":"api-1","name":"Mug","price_cents":899,"currency":"EUR","stock":3}"#;
    problem(
        &shop.http("POST", "/v1/products", &[], Some(new)).await,
        401,
    );
    problem(
        &shop
            .http(
                "POST",
                "/v1/products",
                &[("X-Api-Key", "sk_nope_nope")],
                Some(new),
            )
            .await,
        401,
    );
    let admin = [("X-Api-Key", ADMIN_KEY)];
    let r = shop.http("POST", "/v1/products", &admin, Some(new)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/products/{id}").as_str())
    );
    assert_eq!(r.json()["stock"], 3);
    problem(
        &shop.http("POST", "/v1/products", &admin, Some(new)).await,
        409,
    );
    let bad = r#"{"sku":"api-2","name":"Mug","price_cents":-1,"currency":"EUR","stock":3}"#;
    problem(
        &shop.http("POST", "/v1/products", &admin, Some(bad)).await,
        400,
    );
    let stock = format!("/v1/products/{id}/stock");
    let r = shop
        .http("POST", &stock, &admin, Some(r#"{"delta":5}"#))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["stock"], 8);
    problem(
        &shop
            .http("POST", &stock, &admin, Some(r#"{"delta":-100}"#))
            .await,
        400,
    );
    problem(
        &shop
            .http(
                "POST",
                "/v1/products/nope/stock",
                &admin,
                Some(r#"{"delta":1}"#),
            )
            .await,
        404,
    );
    let erin = login(&shop, "erin@example.com").await;
    until(&shop, &format!("/v1/products/{id}"), &erin, |p| {
        p["stock"] == 8
    })
    .await;

    // A key accounts issued: accepted once projected, with its scopes only,
    // refused once revoked.
    let requester = Requester::new(shop.tb.broker.clone(), "test", Duration::from_secs(10));
    let account = shop.customer("frank@example.com").await;
    let issue = |scopes: &[&str]| CreateApiKey {
        account_id: account.clone(),
        name: "ci".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    };
    let writer: ApiKeyResult = requester
        .request(
            &shop.subjects.accounts.create_api_key,
            &issue(&["catalog:write"]),
            None,
        )
        .await
        .unwrap();
    let reader: ApiKeyResult = requester
        .request(
            &shop.subjects.accounts.create_api_key,
            &issue(&["orders:read"]),
            None,
        )
        .await
        .unwrap();
    assert!(writer.ok && reader.ok, "{writer:?} {reader:?}");
    post_until(&shop, &stock, &writer.key, 200).await;
    problem(&post_until(&shop, &stock, &reader.key, 403).await, 403);
    let revoked: ApiKeyResult = requester
        .request(
            &shop.subjects.accounts.revoke_api_key,
            &RevokeApiKey {
                key_id: writer.key_id.clone(),
                account_id: account.clone(),
            },
            None,
        )
        .await
        .unwrap();
    assert!(revoked.ok, "{revoked:?}");
    post_until(&shop, &stock, &writer.key, 401).await;
    shop.cleanup().await;
}

async fn products_are_updated_and_deleted_with_an_api_key(b: BrokerBackend, d: DbBackend) {
    let shop = Shop::start(b, d).await;
    let admin = [("X-Api-Key", ADMIN_KEY)];
    let mut ids = Vec::new();
    for sku in ["upd-1", "upd-2"] {
        let new = format!(
            r#"{{"sku":"{sku}","name":"Cup","price_cents":500,"currency":"EUR","stock":4}}"#
        );
        let r = shop.http("POST", "/v1/products", &admin, Some(&new)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let path = format!("/v1/products/{}", ids[0]);
    let data = r#"{"sku":"upd-1b","name":"Big cup","price_cents":750,"currency":"USD"}"#;
    problem(&shop.http("PUT", &path, &[], Some(data)).await, 401);
    let r = shop.http("PUT", &path, &admin, Some(data)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let p = r.json();
    assert_eq!(
        (
            &p["sku"],
            &p["name"],
            &p["price_cents"],
            &p["currency"],
            &p["stock"]
        ),
        (
            &json!("upd-1b"),
            &json!("Big cup"),
            &json!(750),
            &json!("USD"),
            &json!(4)
        ),
        "the stock is not touched by an update"
    );
    // The read model follows.
    let erin = login(&shop, "erin@example.com").await;
    until(&shop, &path, &erin, |p| {
        p["name"] == "Big cup" && p["price_cents"] == 750
    })
    .await;
    // Another product's sku, a product that does not exist, a stock field.
    let taken = r#"{"sku":"upd-2","name":"Cup","price_cents":1,"currency":"EUR"}"#;
    problem(&shop.http("PUT", &path, &admin, Some(taken)).await, 409);
    problem(
        &shop
            .http("PUT", "/v1/products/nope", &admin, Some(data))
            .await,
        404,
    );
    let with_stock = r#"{"sku":"x","name":"Cup","price_cents":1,"currency":"EUR","stock":9}"#;
    problem(
        &shop.http("PUT", &path, &admin, Some(with_stock)).await,
        400,
    );

    // Deleted: 204, then gone from the catalogue; deleting again is 404.
    let r = shop.http("DELETE", &path, &admin, None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let started = Instant::now();
    loop {
        let r = shop
            .http("GET", &path, &[("Authorization", erin.as_str())], None)
            .await;
        if r.status == 404 {
            break;
        }
        assert!(started.elapsed() < WAIT, "still listed: {}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    problem(&shop.http("DELETE", &path, &admin, None).await, 404);
    // The other product is untouched.
    let other = format!("/v1/products/{}", ids[1]);
    let r = shop.http("GET", &other, &[], None).await;
    assert_eq!((r.status, &r.json()["sku"]), (200, &json!("upd-2")));
    shop.cleanup().await;
}

/// A `width`×`height` opaque PNG.
fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A multipart form with one file part `name` of `content_type`.
fn form(name: &str, content_type: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "sluice-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"f\"\r\nContent-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn images_are_uploaded_listed_and_thumbnailed(b: BrokerBackend, d: DbBackend) {
    let shop = Shop::start(b, d).await;
    let admin = [("X-Api-Key", ADMIN_KEY)];
    let new = r#"{"sku":"img-1","name":"Lamp","price_cents":4200,"currency":"EUR","stock":2}"#;
    let r = shop.http("POST", "/v1/products", &admin, Some(new)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // The edge's read model has the product from the 201 on (its
    // `ProductCreated` event may come later): upload at once.
    let path = format!("/v1/products/{id}/images");
    let picture = png(640, 480);
    let (ct, body) = form("image", "image/png", &picture);

    // No key, an unknown product, not an image, too large: refused.
    let (status, _, _) = shop
        .http_bytes("POST", &path, &[("Content-Type", &ct)], body.clone())
        .await;
    assert_eq!(status, 401);
    let keyed = [("X-Api-Key", ADMIN_KEY), ("Content-Type", ct.as_str())];
    let (status, _, _) = shop
        .http_bytes("POST", "/v1/products/nope/images", &keyed, body.clone())
        .await;
    assert_eq!(status, 404);
    let (text_ct, text) = form("image", "image/png", b"not a picture at all");
    let (status, _, _) = shop
        .http_bytes(
            "POST",
            &path,
            &[("X-Api-Key", ADMIN_KEY), ("Content-Type", &text_ct)],
            text,
        )
        .await;
    assert_eq!(status, 415);
    let (big_ct, big) = form("image", "image/png", &vec![0_u8; 11 << 20]);
    let (status, _, _) = shop
        .http_bytes(
            "POST",
            &path,
            &[("X-Api-Key", ADMIN_KEY), ("Content-Type", &big_ct)],
            big,
        )
        .await;
    assert_eq!(status, 413);

    // Stored: 201 with the image, then listed with the product.
    let (status, headers, answer) = shop.http_bytes("POST", &path, &keyed, body).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    let image: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(
        (&image["width"], &image["height"], &image["content_type"]),
        (&json!(640), &json!(480), &json!("image/png"))
    );
    let url = image["url"].as_str().unwrap().to_owned();
    assert_eq!(header(&headers, "location"), Some(url.as_str()));
    let erin = login(&shop, "erin@example.com").await;
    until(&shop, &format!("/v1/products/{id}"), &erin, |p| {
        p["images"] == json!([url])
    })
    .await;

    // The original as uploaded; the thumbnails once the media service made them.
    let (status, headers, bytes) = shop.http_bytes("GET", &url, &[], Vec::new()).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, picture);
    assert_eq!(header(&headers, "content-type"), Some("image/png"));
    assert!(header(&headers, "cache-control").is_some_and(|c| c.contains("immutable")));
    let small = format!("{url}?size=small");
    let started = Instant::now();
    let thumb = loop {
        let (status, headers, bytes) = shop.http_bytes("GET", &small, &[], Vec::new()).await;
        if status == 200 {
            break (header(&headers, "content-type").map(str::to_owned), bytes);
        }
        assert_eq!(status, 404, "{}", String::from_utf8_lossy(&bytes));
        assert!(started.elapsed() < WAIT, "no small thumbnail");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(thumb.0.as_deref(), Some("image/jpeg"));
    let decoded = image::load_from_memory(&thumb.1).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (128, 96));
    let (status, _, _) = shop
        .http_bytes("GET", &format!("{url}?size=huge"), &[], Vec::new())
        .await;
    assert_eq!(status, 400);
    shop.cleanup().await;
}

/// Posts an order of `quantity` units of `product` as `token` and returns
/// its id (202 expected).
async fn place(shop: &Shop, token: &str, product: &str, quantity: u32, key: &str) -> String {
    let body = format!(
        r#"{{"items":[{{"product_id":"{product}","quantity":{quantity}}}],"payment_token":"tok_visa"}}"#
    );
    let headers = [("Authorization", token), ("Idempotency-Key", key)];
    let r = shop.http("POST", "/v1/orders", &headers, Some(&body)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_owned()
}

async fn read_models_are_rebuilt_from_the_log(b: BrokerBackend, d: DbBackend) {
    let mut shop = Shop::start(b, d).await;
    let p = shop.product("rebuild-1", 10).await;
    let alice = login(&shop, "alice@example.com").await;
    until(&shop, &format!("/v1/products/{p}"), &alice, |_| true).await;
    let id = place(&shop, &alice, &p, 3, "rebuild-1").await;
    let order_path = format!("/v1/orders/{id}");
    let product_path = format!("/v1/products/{p}");
    let live_order = until(&shop, &order_path, &alice, |o| o["status"] == "CONFIRMED").await;
    let live_product = until(&shop, &product_path, &alice, |p| p["stock"] == 7).await;

    // Stopped, reset, started again: the edge replays the log into empty
    // read models and ends with the same rows.
    shop.kill(Svc::Edge);
    for name in sluice_edge::PROJECTIONS {
        shop.reset_edge(name).await;
    }
    assert!(
        sluice_edge::tables::orders::Entity::find_by_id(id.clone())
            .one(shop.db(Svc::Edge))
            .await
            .unwrap()
            .is_none(),
        "the reset emptied the orders"
    );
    shop.restart(Svc::Edge).await;
    let rebuilt_order = until(&shop, &order_path, &alice, |o| o["status"] == "CONFIRMED").await;
    let rebuilt_product = until(&shop, &product_path, &alice, |p| p["stock"] == 7).await;
    assert_eq!(rebuilt_product, live_product);
    // The live row was written by the edge when the order was posted; the
    // rebuilt one comes from OrderPlaced: only its creation time differs.
    let without_created = |mut o: serde_json::Value| {
        o.as_object_mut().unwrap().remove("created_at");
        o
    };
    assert_eq!(without_created(rebuilt_order), without_created(live_order));
    // The reset refuses a name the edge does not have.
    let err = sluice_edge::reset(
        shop.tb.broker.as_ref(),
        shop.db(Svc::Edge),
        &sluice_kit::KitConfig::default(),
        &shop.edge_subjects(),
        "edge-nothing",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no projection"), "{err}");
    shop.cleanup().await;
}

/// A second connection to the edge's database: a SQLite replay attaches
/// its shadow to the connection it is given.
async fn own_connection(db: &sea_orm::DatabaseConnection) -> sea_orm::DatabaseConnection {
    if db.get_database_backend() != sea_orm::DbBackend::Sqlite {
        return db.clone();
    }
    let file = db
        .get_sqlite_connection_pool()
        .connect_options()
        .get_filename()
        .display()
        .to_string();
    sluice_kit::db::open(&format!("sqlite://{file}?mode=rwc"), 1)
        .await
        .unwrap()
}

async fn read_models_are_replayed_while_the_edge_serves(b: BrokerBackend, d: DbBackend) {
    use sluice_edge::replay::{ReplayOptions, digest, replay};
    let shop = Shop::start(b, d).await;
    let p = shop.product("replay-1", 10).await;
    let alice = login(&shop, "alice@example.com").await;
    until(&shop, &format!("/v1/products/{p}"), &alice, |_| true).await;
    let mut orders = Vec::new();
    for n in 0..3 {
        let id = place(&shop, &alice, &p, 1, &format!("replay-{n}")).await;
        until(&shop, &format!("/v1/orders/{id}"), &alice, |o| {
            o["status"] == "CONFIRMED"
        })
        .await;
        orders.push(id);
    }
    until(&shop, &format!("/v1/products/{p}"), &alice, |p| {
        p["stock"] == 7
    })
    .await;
    let live = own_connection(shop.db(Svc::Edge)).await;
    let options = ReplayOptions {
        start: sluice_broker::StartPosition::Beginning,
        check_live: true,
    };
    let config = sluice_kit::KitConfig::default();
    for name in ["edge-orders", "edge-products"] {
        let before = digest(&live, name).await.unwrap();
        let report = replay(
            shop.tb.broker.clone(),
            &live,
            &config,
            &shop.edge_subjects(),
            name,
            options,
            &|_| {},
        )
        .await
        .unwrap_or_else(|e| panic!("replay of {name}: {e}"));
        assert_eq!(
            report.digest_before, before,
            "{name}: nothing changed meanwhile"
        );
        assert_eq!(
            report.digest, report.digest_before,
            "{name}: the rebuilt model is the live one"
        );
        assert!(report.events >= 3, "{name}: {report:?}");
        assert_eq!(digest(&live, name).await.unwrap(), report.digest);
    }
    assert_eq!(
        digest(&live, "edge-orders").await.unwrap().len(),
        64,
        "a SHA-256 in hex"
    );
    // Read from the embedded log (each id kept once for good), the orders'
    // shadow kept no inbox and the swap left a watermark; elsewhere, and
    // for the products' three filters, the inbox way.
    for (name, watermark) in [
        ("edge-orders", b == BrokerBackend::Embedded),
        ("edge-products", false),
    ] {
        let cp = sluice_kit::router::checkpoint(&live, name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cp.replayed_to.is_some(), watermark, "{name}: {cp:?}");
    }
    // The edge served throughout and goes on projecting after the swap.
    for id in &orders {
        until(&shop, &format!("/v1/orders/{id}"), &alice, |o| {
            o["status"] == "CONFIRMED"
        })
        .await;
    }
    let id = place(&shop, &alice, &p, 2, "replay-after").await;
    until(&shop, &format!("/v1/orders/{id}"), &alice, |o| {
        o["status"] == "CONFIRMED"
    })
    .await;
    until(&shop, &format!("/v1/products/{p}"), &alice, |p| {
        p["stock"] == 5
    })
    .await;
    let unknown = replay(
        shop.tb.broker.clone(),
        &live,
        &config,
        &shop.edge_subjects(),
        "edge-nothing",
        options,
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(unknown.to_string().contains("no projection"), "{unknown}");
    shop.cleanup().await;
}

/// `method path` with an `X-Api-Key` (and `body`) until it answers
/// `status` (a key accounts issued is accepted once the edge has
/// projected it).
async fn until_status(
    shop: &Shop,
    (method, path, body): (&str, &str, Option<&str>),
    key: &str,
    status: u16,
) -> Response {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = shop.http(method, path, &[("X-Api-Key", key)], body).await;
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{method} {path} never {status}: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST path` `{"delta":1}` with `key` until it answers `status`.
async fn post_until(shop: &Shop, path: &str, key: &str, status: u16) -> Response {
    until_status(shop, ("POST", path, Some(r#"{"delta":1}"#)), key, status).await
}

async fn admins_list_redrive_and_purge_dead_letters(b: BrokerBackend, d: DbBackend) {
    use sluice_proto::shop::orders::v1::PlaceOrder;
    let shop = Shop::start(b, d).await;
    // Two commands the orders service cannot decode: dead letters.
    let poison = |n: u8| {
        let e = sluice_proto::envelope::Envelope::new::<PlaceOrder>("/test").subject("x");
        let id = e.id.clone();
        let m = sluice_broker::OutboundMessage::new(
            &shop.subjects.orders.place,
            e.to_headers(),
            bytes::Bytes::from(vec![0xff, n]),
        );
        (id, m)
    };
    let (first_id, first) = poison(1);
    let (second_id, second) = poison(2);
    shop.tb.broker.publish(first).await.unwrap();
    shop.tb.broker.publish(second).await.unwrap();

    problem(&shop.http("GET", "/v1/admin/dlq", &[], None).await, 401);
    let admin = [("X-Api-Key", ADMIN_KEY)];
    let listed = |r: &Response| r.json()["items"].as_array().unwrap().clone();
    let deadline = Instant::now() + WAIT;
    let items = loop {
        let r = shop
            .http("GET", "/v1/admin/dlq?group=orders", &admin, None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let items = listed(&r);
        if items.len() == 2 || Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(items.len(), 2, "{items:?}");
    let letter = |event: &str| {
        items
            .iter()
            .find(|i| i["event_id"] == event)
            .unwrap_or_else(|| panic!("{event} in {items:?}"))
            .clone()
    };
    let (one, two) = (letter(&first_id), letter(&second_id));
    assert_eq!(one["subject"], shop.subjects.orders.place.as_str());
    assert_eq!(one["group"], "orders");
    assert_eq!(one["event_type"], "shop.orders.v1.PlaceOrder");
    assert_eq!(one["payload_base64"], "/wE=");
    assert!(
        one["reason"].as_str().unwrap().contains("does not decode"),
        "{one}"
    );
    assert!(one["deliveries"].as_u64().unwrap() >= 1, "{one}");
    assert_eq!(one["headers"]["ce-id"], first_id.as_str());
    // A subject filter of another domain shows none of them; a bad one is 400.
    let inventory = format!("/v1/admin/dlq?subject={}.%3E", shop.subjects.domains[1]);
    let r = shop.http("GET", &inventory, &admin, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        listed(&r).iter().all(|i| i["group"] != "orders"),
        "{}",
        r.body
    );
    problem(
        &shop
            .http("GET", "/v1/admin/dlq?subject=a..b", &admin, None)
            .await,
        400,
    );

    // Only keys with the scope ops may look.
    let requester = Requester::new(shop.tb.broker.clone(), "test", Duration::from_secs(10));
    let account = shop.customer("olga@example.com").await;
    let mut keys = Vec::new();
    for scopes in [vec!["catalog:write".to_owned()], vec!["ops".to_owned()]] {
        let issued: ApiKeyResult = requester
            .request(
                &shop.subjects.accounts.create_api_key,
                &CreateApiKey {
                    account_id: account.clone(),
                    name: "ops-test".into(),
                    scopes,
                },
                None,
            )
            .await
            .unwrap();
        keys.push(issued.key);
    }
    let list = ("GET", "/v1/admin/dlq", None);
    problem(&until_status(&shop, list, &keys[0], 403).await, 403);
    until_status(&shop, list, &keys[1], 200).await;

    // Redrive: published again with its id (and dead-lettered again, as it
    // still does not decode), the old letter gone.
    let one_id = one["id"].as_str().unwrap();
    let r = shop
        .http(
            "POST",
            &format!("/v1/admin/dlq/{one_id}/redrive"),
            &admin,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["action"], "redriven");
    assert_eq!(r.json()["subject"], shop.subjects.orders.place.as_str());
    // Purge the other.
    let two_id = two["id"].as_str().unwrap();
    let r = shop
        .http("DELETE", &format!("/v1/admin/dlq/{two_id}"), &admin, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["action"], "purged");
    // Neither is listed any more; the redriven event came back once more.
    let deadline = Instant::now() + WAIT;
    let items = loop {
        let r = shop
            .http("GET", "/v1/admin/dlq?group=orders", &admin, None)
            .await;
        let items = listed(&r);
        let again = items.iter().any(|i| i["event_id"] == first_id.as_str());
        if (again && items.len() == 1) || Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["event_id"], first_id.as_str());
    assert_ne!(items[0]["id"], one_id, "a new dead letter: {items:?}");
    // Resolved or unknown ids are 404 problems, and change nothing.
    for path in [
        format!("/v1/admin/dlq/{two_id}"),
        "/v1/admin/dlq/nope".to_owned(),
        "/v1/admin/dlq/elsewhere:1".to_owned(),
    ] {
        problem(&shop.http("DELETE", &path, &admin, None).await, 404);
    }
    problem(
        &shop
            .http(
                "POST",
                &format!("/v1/admin/dlq/{one_id}/redrive"),
                &admin,
                None,
            )
            .await,
        404,
    );
    shop.cleanup().await;
}

sluice_kit::backend_matrix!(
    read_models_are_rebuilt_from_the_log,
    read_models_are_replayed_while_the_edge_serves,
    images_are_uploaded_listed_and_thumbnailed,
    catalogue_writes_need_an_api_key_with_catalog_write,
    products_are_updated_and_deleted_with_an_api_key,
    an_order_flows_through_the_api,
    admins_list_redrive_and_purge_dead_letters,
    pages_visit_every_item_once_in_a_stable_order,
    bad_tokens_and_bodies_are_problems,
);
