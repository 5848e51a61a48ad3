//! A test harness for the whole reference shop: every service started on
//! one test broker, each with its own database, so a test can drive orders
//! through the saga, kill and restart any one service, and read each
//! service's tables to check the outcome.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod contract;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use sluice_broker::OutboundMessage;
use sluice_kit::rpc::Requester;
use sluice_kit::testing::{BrokerBackend, DbBackend, TestBroker, TestDb};
use sluice_kit::{KitConfig, Metrics, RunningService};
use sluice_orders::tables::orders;
use sluice_proto::Envelope;
use sluice_proto::shop::accounts::v1::{Register, RegisterResult};
use sluice_proto::shop::inventory::v1::{CreateProduct, ProductResult};
use sluice_proto::shop::orders::v1::{CancelOrder, PlaceOrder, PlaceOrderLine};

/// The edge's admin API key in tests.
pub const ADMIN_KEY: &str = "test-admin-key";

/// How long a test waits for the saga to settle.
pub const WAIT: Duration = Duration::from_secs(60);

/// One of the shop's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Svc {
    /// Accounts and login.
    Accounts,
    /// Products and stock.
    Inventory,
    /// Charges and refunds.
    Payments,
    /// The order saga.
    Orders,
    /// E-mails about orders.
    Notifications,
    /// Product images' thumbnails.
    Media,
    /// The REST edge.
    Edge,
}

/// Every service, in start order.
pub const SERVICES: [Svc; 7] = [
    Svc::Accounts,
    Svc::Inventory,
    Svc::Payments,
    Svc::Orders,
    Svc::Notifications,
    Svc::Media,
    Svc::Edge,
];

/// Every subject of the shop, on the test's own domains.
#[derive(Debug, Clone)]
pub struct ShopSubjects {
    /// The orders service's.
    pub orders: sluice_orders::Subjects,
    /// The inventory's.
    pub inventory: sluice_inventory::Subjects,
    /// The payments service's.
    pub payments: sluice_payments::Subjects,
    /// The accounts service's.
    pub accounts: sluice_accounts::Subjects,
    /// The media service's.
    pub media: sluice_media::Subjects,
    /// The notifications service's.
    pub notifications: sluice_notifications::Subjects,
    /// The domains, to clean up and to watch dead letters.
    pub domains: Vec<String>,
}

enum Running {
    /// Accounts, inventory, notifications: consumers and tasks of their own.
    Tasks(sluice_kit::RunningWithTasks),
    Edge(sluice_edge::Running),
    Service(RunningService),
}

impl Running {
    fn kill(self) {
        match self {
            Self::Tasks(r) => r.kill(),
            Self::Edge(r) => r.kill(),
            Self::Service(r) => r.kill(),
        }
    }

    async fn stop(self) {
        match self {
            Self::Tasks(r) => r.stop().await,
            Self::Edge(r) => r.stop().await,
            Self::Service(r) => r.stop().await,
        }
    }
}

/// The whole shop on one test broker.
pub struct Shop {
    /// The broker and the test's domain.
    pub tb: TestBroker,
    /// The subjects.
    pub subjects: ShopSubjects,
    dbs: BTreeMap<Svc, TestDb>,
    running: BTreeMap<Svc, Running>,
    config: KitConfig,
    requester: Requester,
    mailbox: tempfile::TempDir,
    images: tempfile::TempDir,
    contract: contract::Contract,
}

impl std::fmt::Debug for Shop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shop")
            .field("tb", &self.tb)
            .finish_non_exhaustive()
    }
}

/// Fast retries, so timeouts and not-yet-known prices settle quickly, and a
/// short ack wait, so what a killed service had in flight comes back soon.
fn test_config() -> KitConfig {
    let mut config = KitConfig::default();
    for name in [
        sluice_orders::NAME,
        sluice_orders::CATALOGUE,
        sluice_payments::NAME,
        sluice_inventory::NAME,
        sluice_notifications::NAME,
        sluice_notifications::ADDRESSES,
        sluice_media::NAME,
        "edge-products",
        "edge-orders",
        "edge-apikeys",
    ] {
        config.consumers.insert(
            name.into(),
            sluice_kit::config::ConsumerConfig {
                initial_backoff_ms: Some(50),
                ack_wait_ms: Some(3_000),
                ..Default::default()
            },
        );
    }
    config
}

impl Shop {
    /// Starts every service on a fresh broker of `b`, each with a fresh
    /// database of `d`.
    pub async fn start(b: BrokerBackend, d: DbBackend) -> Self {
        let tb = TestBroker::start(b).await;
        let orders_domain = format!("{}o", tb.domain);
        let inventory_domain = format!("{}i", tb.domain);
        let payments_domain = format!("{}p", tb.domain);
        let accounts_domain = format!("{}a", tb.domain);
        let notifications_domain = format!("{}n", tb.domain);
        let media_domain = format!("{}m", tb.domain);
        let subjects = ShopSubjects {
            orders: sluice_orders::Subjects::new(
                &orders_domain,
                &inventory_domain,
                &payments_domain,
            ),
            inventory: sluice_inventory::Subjects::new(&orders_domain, &inventory_domain),
            payments: sluice_payments::Subjects::new(&payments_domain),
            accounts: sluice_accounts::Subjects::new(&accounts_domain),
            media: sluice_media::Subjects::new(&media_domain),
            notifications: sluice_notifications::Subjects::new(
                &orders_domain,
                &accounts_domain,
                &notifications_domain,
            ),
            domains: vec![
                orders_domain,
                inventory_domain,
                payments_domain,
                accounts_domain,
                notifications_domain,
                media_domain,
            ],
        };
        let mut dbs = BTreeMap::new();
        for svc in SERVICES {
            dbs.insert(svc, TestDb::start(d).await);
        }
        let requester = Requester::new(tb.broker.clone(), "test", Duration::from_secs(10));
        let mut shop = Self {
            tb,
            subjects,
            dbs,
            running: BTreeMap::new(),
            config: test_config(),
            requester,
            mailbox: tempfile::tempdir().unwrap(),
            images: tempfile::tempdir().unwrap(),
            contract: contract::Contract::new(sluice_edge::openapi::spec()),
        };
        for svc in SERVICES {
            shop.launch(svc, false).await;
        }
        shop
    }

    async fn launch(&mut self, svc: Svc, reopen: bool) {
        let tdb = &self.dbs[&svc];
        let db = if reopen {
            tdb.reopen().await
        } else {
            tdb.db.clone()
        };
        let broker = self.tb.broker.clone();
        let running = match svc {
            Svc::Edge => Running::Edge(
                sluice_edge::start(
                    broker,
                    db,
                    &self.config,
                    Metrics::new(),
                    self.edge_subjects(),
                    sluice_edge::EdgeOptions {
                        images: Some(self.image_store()),
                        admin_key: Some(sluice_kit::Secret::new(ADMIN_KEY)),
                        // Orders stay cached for an hour: every change a
                        // test sees through the API was seen through the
                        // cache's invalidation, not its expiry.
                        cache_ttl: Duration::from_secs(3600),
                        dead_letter_domains: self.subjects.domains.clone(),
                        ..sluice_edge::EdgeOptions::new("127.0.0.1:0".parse().unwrap())
                    },
                )
                .await
                .unwrap(),
            ),
            Svc::Accounts => Running::Tasks(
                sluice_accounts::start(
                    broker,
                    db,
                    &self.config,
                    Metrics::new(),
                    self.subjects.accounts.clone(),
                    sluice_accounts::AccountsConfig::default(),
                )
                .await
                .unwrap(),
            ),
            Svc::Notifications => Running::Tasks(
                sluice_notifications::start(
                    broker,
                    db,
                    &self.config,
                    Metrics::new(),
                    self.subjects.notifications.clone(),
                    sluice_notifications::NotificationsConfig {
                        delivery: sluice_notifications::Delivery::Mailbox(
                            self.mailbox.path().to_owned(),
                        ),
                        ..Default::default()
                    },
                )
                .await
                .unwrap(),
            ),
            Svc::Inventory => Running::Tasks(
                sluice_inventory::start(
                    broker,
                    db,
                    &self.config,
                    Metrics::new(),
                    self.subjects.inventory.clone(),
                )
                .await
                .unwrap(),
            ),
            Svc::Media => Running::Service(
                sluice_media::start(
                    broker,
                    db,
                    &self.config,
                    Metrics::new(),
                    self.subjects.media.clone(),
                    self.image_store(),
                )
                .await
                .unwrap(),
            ),
            Svc::Payments => Running::Service(
                sluice_payments::start(
                    broker,
                    db,
                    &self.config,
                    Metrics::new(),
                    self.subjects.payments.clone(),
                )
                .await
                .unwrap(),
            ),
            Svc::Orders => Running::Service(
                sluice_orders::start(
                    broker,
                    db,
                    &self.config,
                    Metrics::new(),
                    self.subjects.orders.clone(),
                )
                .await
                .unwrap(),
            ),
        };
        self.running.insert(svc, running);
    }

    /// Stops `svc` at once, as a crash would.
    pub fn kill(&mut self, svc: Svc) {
        if let Some(r) = self.running.remove(&svc) {
            r.kill();
        }
    }

    /// Starts `svc` again on its database, as a restarted process would.
    pub async fn restart(&mut self, svc: Svc) {
        self.launch(svc, true).await;
    }

    /// The edge's subjects on the test's domains.
    pub fn edge_subjects(&self) -> sluice_edge::Subjects {
        sluice_edge::Subjects {
            accounts: self.subjects.accounts.clone(),
            orders: self.subjects.orders.clone(),
            inventory: self.subjects.inventory.clone(),
            media: self.subjects.media.clone(),
        }
    }

    /// Resets the edge's projection `name` for a rebuild
    /// ([`sluice_edge::reset`]); the edge must be stopped.
    pub async fn reset_edge(&self, name: &str) {
        sluice_edge::reset(
            self.tb.broker.as_ref(),
            self.db(Svc::Edge),
            &self.config,
            &self.edge_subjects(),
            name,
        )
        .await
        .unwrap();
    }

    /// The media store the media service and the edge share (a folder).
    pub fn image_store(&self) -> sluice_media::ImageStore {
        sluice_media::ImageStore::local(self.images.path()).unwrap()
    }

    /// Where the edge serves its API.
    pub fn edge(&self) -> std::net::SocketAddr {
        match self.running.get(&Svc::Edge) {
            Some(Running::Edge(r)) => r.addr,
            _ => panic!("the edge is not running"),
        }
    }

    /// `method path` on the edge, with `headers` and a JSON `body`; the
    /// response is checked against the edge's OpenAPI description
    /// ([`contract::Contract`]).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Response {
        let addr = self.edge();
        let request = request_text(method, path, headers, body);
        let r = tokio::task::spawn_blocking(move || exchange(addr, &request))
            .await
            .unwrap();
        self.contract
            .check(method, path, r.status, r.header("content-type"), &r.body);
        r
    }

    /// `method path` on the edge with a binary `body` (e.g. multipart): the
    /// status, the headers (lower-case names) and the body's bytes; the
    /// response is checked against the edge's OpenAPI description.
    pub async fn http_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        use std::io::{Read, Write};
        let addr = self.edge();
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let raw = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut out = request.into_bytes();
            out.extend_from_slice(&body);
            // The server may answer (413) before reading everything.
            let _ = s.write_all(&out);
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw);
            raw
        })
        .await
        .unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head: {}", String::from_utf8_lossy(&raw)));
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let body = raw[split + 4..].to_vec();
        let (status, headers) = parse_head(&head);
        let content_type = headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str());
        let text = if content_type.is_some_and(|c| c.contains("json")) {
            String::from_utf8_lossy(&body).into_owned()
        } else {
            String::new()
        };
        self.contract
            .check(method, path, status, content_type, &text);
        (status, headers, body)
    }

    /// `GET path` on the edge in the background, read until the server
    /// closes the connection (a Server-Sent Events stream that ends): the
    /// raw response text.
    pub fn http_stream(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> tokio::task::JoinHandle<String> {
        let addr = self.edge();
        let request = request_text("GET", path, headers, None);
        tokio::task::spawn_blocking(move || raw_exchange(addr, &request))
    }

    /// The database of `svc`.
    pub fn db(&self, svc: Svc) -> &sea_orm::DatabaseConnection {
        &self.dbs[&svc].db
    }

    /// Creates a product priced 1250 EUR with `stock` units; its id.
    pub async fn product(&self, sku: &str, stock: i64) -> String {
        let c = CreateProduct {
            sku: sku.into(),
            name: format!("Product {sku}"),
            price_cents: 1250,
            currency: "EUR".into(),
            stock,
        };
        let r: ProductResult = self
            .requester
            .request(&self.subjects.inventory.create_product, &c, None)
            .await
            .unwrap();
        assert!(r.ok, "create product: {}", r.error);
        r.product.unwrap().product_id
    }

    /// Registers a customer; their account id.
    pub async fn customer(&self, email: &str) -> String {
        let r: RegisterResult = self
            .requester
            .request(
                &self.subjects.accounts.register,
                &Register {
                    email: email.into(),
                    password: "correct horse battery".into(),
                },
                None,
            )
            .await
            .unwrap();
        assert!(r.ok, "register {email}: {}", r.error);
        r.account_id
    }

    /// The e-mails in the mailbox about `order`.
    pub fn mail_about(&self, order: &str) -> Vec<sluice_notifications::MailboxMessage> {
        sluice_notifications::read_mailbox(self.mailbox.path())
            .unwrap()
            .into_iter()
            .filter(|m| m.subject.contains(order))
            .collect()
    }

    /// Waits until the mailbox holds an e-mail about `order`, then a little
    /// longer, and returns every e-mail about it (a second would show).
    ///
    /// # Panics
    /// After [`WAIT`] without one.
    pub async fn mail_for(&self, order: &str) -> Vec<sluice_notifications::MailboxMessage> {
        let deadline = Instant::now() + WAIT;
        while self.mail_about(order).is_empty() {
            assert!(Instant::now() < deadline, "no e-mail about order {order}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.mail_about(order)
    }

    /// Places an order (as the edge would: an `orders.cmd.place` command).
    pub async fn place(&self, order_id: &str, customer: &str, lines: &[(&str, i64)], token: &str) {
        let cmd = PlaceOrder {
            order_id: order_id.into(),
            customer_id: customer.into(),
            lines: lines
                .iter()
                .map(|(p, q)| PlaceOrderLine {
                    product_id: (*p).into(),
                    quantity: *q,
                })
                .collect(),
            payment_token: token.into(),
        };
        let e = Envelope::new::<PlaceOrder>("/sluice/edge").subject(order_id);
        let m = OutboundMessage::event(&self.subjects.orders.place, &e, &cmd);
        self.tb.broker.publish(m).await.unwrap();
    }

    /// Asks to cancel an order as `customer`.
    pub async fn cancel(&self, order_id: &str, customer: &str) {
        let cmd = CancelOrder {
            order_id: order_id.into(),
            customer_id: customer.into(),
        };
        let e = Envelope::new::<CancelOrder>("/sluice/edge").subject(order_id);
        let m = OutboundMessage::event(&self.subjects.orders.cancel, &e, &cmd);
        self.tb.broker.publish(m).await.unwrap();
    }

    /// The order as the orders service holds it.
    pub async fn order(&self, id: &str) -> Option<orders::Model> {
        orders::Entity::find_by_id(id.to_owned())
            .one(self.db(Svc::Orders))
            .await
            .unwrap()
    }

    /// Waits until every order in `ids` is CONFIRMED or CANCELLED.
    ///
    /// # Panics
    /// After [`WAIT`], naming the orders still pending.
    pub async fn settled(&self, ids: &[String]) -> Vec<orders::Model> {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = orders::Entity::find()
                .filter(orders::Column::Id.is_in(ids.iter().map(String::as_str)))
                .all(self.db(Svc::Orders))
                .await
                .unwrap();
            let done = rows
                .iter()
                .filter(|o| o.status != sluice_orders::status::PENDING)
                .count();
            if done == ids.len() {
                return rows;
            }
            if Instant::now() > deadline {
                let pending: Vec<_> = rows
                    .iter()
                    .filter(|o| o.status == sluice_orders::status::PENDING)
                    .map(|o| format!("{} ({})", o.id, o.step))
                    .collect();
                panic!(
                    "{} of {} orders settled; pending: {pending:?}; never placed: {}",
                    done,
                    ids.len(),
                    ids.len() - rows.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stock of a product.
    pub async fn stock(&self, product: &str) -> i64 {
        sluice_inventory::tables::products::Entity::find_by_id(product.to_owned())
            .one(self.db(Svc::Inventory))
            .await
            .unwrap()
            .unwrap()
            .stock
    }

    /// Waits until the stock of `product` is `expected`.
    ///
    /// # Panics
    /// After [`WAIT`], with the stock it has.
    pub async fn stock_becomes(&self, product: &str, expected: i64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.stock(product).await;
            if s == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stock of {product} is {s}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Units of products the inventory holds reserved for `order`.
    pub async fn reserved(&self, order: &str) -> i64 {
        sluice_inventory::tables::reservations::Entity::find()
            .filter(sluice_inventory::tables::reservations::Column::OrderId.eq(order))
            .all(self.db(Svc::Inventory))
            .await
            .unwrap()
            .iter()
            .map(|r| r.quantity)
            .sum()
    }

    /// The payment of `order`: its status (`captured`, `declined`,
    /// `refunded`), if it was ever charged.
    pub async fn payment(&self, order: &str) -> Option<String> {
        sluice_payments::tables::payments::Entity::find_by_id(order.to_owned())
            .one(self.db(Svc::Payments))
            .await
            .unwrap()
            .map(|p| p.status)
    }

    /// Waits until the payment of `order` has `status`.
    ///
    /// # Panics
    /// After [`WAIT`].
    pub async fn payment_becomes(&self, order: &str, status: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.payment(order).await;
            if s.as_deref() == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "payment of {order} is {s:?}, expected {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every service gracefully, deletes the test's streams and
    /// queues, and drops its databases.
    pub async fn cleanup(mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            r.stop().await;
        }
        for d in &self.subjects.domains {
            self.tb.broker.delete_domain(d).await.unwrap();
        }
        self.tb.cleanup().await;
        for (_, db) in std::mem::take(&mut self.dbs) {
            db.cleanup().await;
        }
    }
}

/// A fresh order id (UUIDv7, as the edge makes them).
pub fn order_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Response {
    /// The first header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

fn request_text(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            r.push_str("Content-Type: application/json\r\n");
        }
        r.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
    } else {
        r.push_str("\r\n");
    }
    r
}

/// Sends `request` on a fresh connection; everything the server sends
/// until it closes.
fn raw_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

/// A response head's status and headers (names lower-cased).
fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// One HTTP/1.1 exchange over a fresh connection.
fn exchange(addr: std::net::SocketAddr, request: &str) -> Response {
    let text = raw_exchange(addr, request);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = parse_head(head);
    assert!(
        !headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")),
        "a chunked response: {text}"
    );
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}
