//! The `/v1` API: accounts and tokens (request/reply to accounts), the
//! catalogue and orders (from the read models), placing and cancelling
//! orders (commands through the outbox).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};
use sluice_kit::db::now_micros;
use sluice_proto::shop::accounts::v1::{Login, LoginResult, Register, RegisterResult};
use sluice_proto::shop::inventory::v1::{AdjustStock, CreateProduct, ProductResult};
use sluice_proto::shop::orders::v1::{CancelOrder, PlaceOrder, PlaceOrderLine};

use crate::Edge;
use crate::auth::{Caller, KeyHolder};
use crate::json::Body;
use crate::problem::Problem;
use crate::project::Item;
use crate::tables::{idempotency, orders, products};

type Shared = State<Arc<Edge>>;

/// `POST /v1/accounts` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    email: String,
    password: String,
}

/// Asks the service behind `subject` (named `service` in errors).
async fn ask<Req, Resp>(
    edge: &Edge,
    service: &str,
    subject: &str,
    request: &Req,
) -> Result<Resp, Problem>
where
    Req: prost::Message + prost::Name,
    Resp: prost::Message + prost::Name + Default,
{
    edge.requester
        .request(subject, request, None)
        .await
        .map_err(|e| Problem::unavailable(format!("the {service} service did not answer: {e}")))
}

/// `POST /v1/accounts` → 201 `{id, email}`.
pub(crate) async fn register(
    State(edge): Shared,
    Body(c): Body<Credentials>,
) -> Result<Response, Problem> {
    let request = Register {
        email: c.email,
        password: c.password,
    };
    let r: RegisterResult = ask(&edge, "accounts", &edge.accounts.register, &request).await?;
    if !r.ok {
        return Err(refusal(&r.error_code, r.error));
    }
    let location = format!("/v1/accounts/{}", r.account_id);
    let resp = (
        StatusCode::CREATED,
        Json(serde_json::json!({"id": r.account_id, "email": r.email})),
    )
        .into_response();
    Ok(with_header(resp, header::LOCATION, &location))
}

/// `POST /v1/auth/token` → 200 `{access_token, token_type, expires_in}`.
pub(crate) async fn token(
    State(edge): Shared,
    Body(c): Body<Credentials>,
) -> Result<Response, Problem> {
    let request = Login {
        email: c.email,
        password: c.password,
    };
    let r: LoginResult = ask(&edge, "accounts", &edge.accounts.login, &request).await?;
    if !r.ok {
        return Err(refusal(&r.error_code, r.error));
    }
    Ok(Json(serde_json::json!({
        "access_token": r.access_token,
        "token_type": "Bearer",
        "expires_in": r.expires_in,
    }))
    .into_response())
}

/// `resp` with a `name` header (Location, ETag) of `value`.
fn with_header(mut resp: Response, name: header::HeaderName, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
    resp
}

/// A domain refusal from a service's reply, as a problem.
fn refusal(code: &str, detail: String) -> Problem {
    match code {
        "conflict" => Problem::new(StatusCode::CONFLICT, "conflict", detail),
        "not_found" => Problem::not_found(detail),
        "unauthorized" => Problem::unauthorized(detail),
        _ => Problem::new(StatusCode::BAD_REQUEST, "invalid", detail),
    }
}

/// Pagination of a list: `limit` (1 to 100, default 20) and an opaque
/// `cursor` from the previous page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    limit: Option<u64>,
    cursor: Option<String>,
    status: Option<String>,
}

impl Page {
    fn limit(&self) -> Result<u64, Problem> {
        match self.limit {
            None => Ok(20),
            Some(n @ 1..=100) => Ok(n),
            Some(n) => Err(Problem::bad_request(format!(
                "limit must be between 1 and 100, not {n}"
            ))),
        }
    }

    /// The id the page starts after.
    fn after(&self) -> Result<Option<String>, Problem> {
        let Some(c) = &self.cursor else {
            return Ok(None);
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or_else(|| Problem::bad_request("cursor is not one this API gave out"))
    }
}

fn cursor(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
}

/// A product as clients see it.
#[derive(Debug, Serialize)]
pub(crate) struct Product {
    id: String,
    sku: String,
    name: String,
    price_cents: i64,
    currency: String,
    stock: i64,
    images: Vec<String>,
    updated_at: String,
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl From<products::Model> for Product {
    fn from(p: products::Model) -> Self {
        Self {
            id: p.id,
            sku: p.sku,
            name: p.name,
            price_cents: p.price_cents,
            currency: p.currency,
            stock: p.stock,
            images: Vec::new(),
            updated_at: rfc3339(p.updated_at),
        }
    }
}

/// `GET /v1/products`: the catalogue in id order.
pub(crate) async fn list_products(
    State(edge): Shared,
    Query(page): Query<Page>,
) -> Result<Response, Problem> {
    let limit = page.limit()?;
    let mut q = products::Entity::find().order_by_asc(products::Column::Id);
    if let Some(after) = page.after()? {
        q = q.filter(products::Column::Id.gt(after));
    }
    let rows = q.limit(limit + 1).all(&edge.db).await?;
    Ok(Json(paged(rows, limit, |p| p.id.clone(), Product::from)).into_response())
}

/// `{items, next_cursor}` from `limit + 1` rows.
fn paged<R, T: Serialize>(
    mut rows: Vec<R>,
    limit: u64,
    id: impl Fn(&R) -> String,
    shape: impl Fn(R) -> T,
) -> serde_json::Value {
    let more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = if more {
        rows.last().map(|r| cursor(&id(r)))
    } else {
        None
    };
    let items: Vec<T> = rows.into_iter().map(shape).collect();
    serde_json::json!({"items": items, "next_cursor": next})
}

/// `POST /v1/products` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewProduct {
    sku: String,
    name: String,
    price_cents: i64,
    currency: String,
    stock: i64,
}

/// `POST /v1/products/{id}/stock` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StockDelta {
    delta: i64,
}

/// The product in a reply of the inventory, as clients see it.
fn product_reply(r: ProductResult) -> Result<Product, Problem> {
    if !r.ok {
        return Err(refusal(&r.error_code, r.error));
    }
    let p = r
        .product
        .ok_or_else(|| Problem::internal("the inventory's reply has no product"))?;
    Ok(Product {
        id: p.product_id,
        sku: p.sku,
        name: p.name,
        price_cents: p.price_cents,
        currency: p.currency,
        stock: p.stock,
        images: Vec::new(),
        updated_at: rfc3339(now_micros()),
    })
}

/// `POST /v1/products` (API key with `catalog:write`) → 201 + Location.
pub(crate) async fn create_product(
    State(edge): Shared,
    key: KeyHolder,
    Body(p): Body<NewProduct>,
) -> Result<Response, Problem> {
    key.require("catalog:write")?;
    let request = CreateProduct {
        sku: p.sku,
        name: p.name,
        price_cents: p.price_cents,
        currency: p.currency,
        stock: p.stock,
    };
    let r: ProductResult =
        ask(&edge, "inventory", &edge.inventory.create_product, &request).await?;
    let product = product_reply(r)?;
    let location = format!("/v1/products/{}", product.id);
    let resp = (StatusCode::CREATED, Json(product)).into_response();
    Ok(with_header(resp, header::LOCATION, &location))
}

/// `POST /v1/products/{id}/stock` `{delta}` (API key with `catalog:write`).
pub(crate) async fn adjust_stock(
    State(edge): Shared,
    key: KeyHolder,
    Path(id): Path<String>,
    Body(d): Body<StockDelta>,
) -> Result<Response, Problem> {
    key.require("catalog:write")?;
    let request = AdjustStock {
        product_id: id,
        delta: d.delta,
    };
    let r: ProductResult = ask(&edge, "inventory", &edge.inventory.adjust_stock, &request).await?;
    Ok(Json(product_reply(r)?).into_response())
}

/// `GET /v1/products/{id}`.
pub(crate) async fn get_product(
    State(edge): Shared,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let p = products::Entity::find_by_id(id.clone())
        .one(&edge.db)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no product {id}")))?;
    Ok(Json(Product::from(p)).into_response())
}

/// An order as clients see it.
#[derive(Debug, Serialize)]
pub(crate) struct Order {
    id: String,
    status: String,
    step: String,
    items: Vec<Item>,
    total_cents: i64,
    currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<orders::Model> for Order {
    fn from(o: orders::Model) -> Self {
        Self {
            items: serde_json::from_str(&o.items).unwrap_or_default(),
            reason: (o.status == sluice_orders::status::CANCELLED).then_some(o.reason),
            id: o.id,
            status: o.status,
            step: o.step,
            total_cents: o.total_cents,
            currency: o.currency,
            created_at: rfc3339(o.created_at),
            updated_at: rfc3339(o.updated_at),
        }
    }
}

/// `POST /v1/orders` body.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewOrder {
    items: Vec<NewItem>,
    payment_token: String,
}

/// One line of a new order.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewItem {
    product_id: String,
    quantity: i64,
}

/// Most lines an order may have (as the orders service).
const MAX_ITEMS: usize = 100;

fn validate(o: &NewOrder) -> Result<(), Problem> {
    if o.items.is_empty() || o.items.len() > MAX_ITEMS {
        return Err(Problem::bad_request(format!(
            "items must have 1 to {MAX_ITEMS} lines"
        )));
    }
    for (i, it) in o.items.iter().enumerate() {
        if it.product_id.is_empty() {
            return Err(Problem::bad_request(format!(
                "items[{i}].product_id is empty"
            )));
        }
        if !(1..=10_000).contains(&it.quantity) {
            return Err(Problem::bad_request(format!(
                "items[{i}].quantity must be between 1 and 10000"
            )));
        }
    }
    if o.payment_token.is_empty() {
        return Err(Problem::bad_request("payment_token is empty"));
    }
    Ok(())
}

fn accepted(id: &str) -> Response {
    let r = (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"id": id, "status": sluice_orders::status::PENDING})),
    )
        .into_response();
    with_header(r, header::LOCATION, &format!("/v1/orders/{id}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `POST /v1/orders` (scope `orders:write`, header `Idempotency-Key`) →
/// 202 `{id, status: PENDING}` + Location. The pending row, the
/// idempotency record and the `orders.cmd.place` command commit together;
/// a repeated key with the same body answers the same, with another body 422.
pub(crate) async fn place_order(
    State(edge): Shared,
    caller: Caller,
    headers: HeaderMap,
    Body(order): Body<NewOrder>,
) -> Result<Response, Problem> {
    caller.require("orders:write")?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| {
            Problem::bad_request("an Idempotency-Key header (1 to 200 characters) is required")
        })?
        .to_owned();
    validate(&order)?;
    let hash = sha256_hex(&serde_json::to_vec(&order).map_err(Problem::internal)?);
    for _ in 0..2 {
        if let Some(seen) = idempotency::Entity::find_by_id((caller.id().to_owned(), key.clone()))
            .one(&edge.db)
            .await?
        {
            if seen.request_hash != hash {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    "this Idempotency-Key was used with another request body",
                ));
            }
            return Ok(accepted(&seen.order_id));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_micros();
        let txn = edge.db.begin().await?;
        let remembered = idempotency::Entity::insert(idempotency::ActiveModel {
            customer_id: Set(caller.id().to_owned()),
            key: Set(key.clone()),
            request_hash: Set(hash.clone()),
            order_id: Set(id.clone()),
            created_at: Set(now),
        })
        .exec_without_returning(&txn)
        .await;
        if remembered.is_err() {
            // The same key at the same time: the other request won; answer
            // as it did.
            let _ = txn.rollback().await;
            continue;
        }
        let items: Vec<Item> = order
            .items
            .iter()
            .map(|i| Item {
                product_id: i.product_id.clone(),
                quantity: i.quantity,
                price_cents: 0,
            })
            .collect();
        orders::Entity::insert(orders::ActiveModel {
            id: Set(id.clone()),
            customer_id: Set(caller.id().to_owned()),
            status: Set(sluice_orders::status::PENDING.to_owned()),
            step: Set("requested".to_owned()),
            items: Set(serde_json::to_string(&items).map_err(Problem::internal)?),
            total_cents: Set(0),
            currency: Set(String::new()),
            reason: Set(String::new()),
            created_at: Set(now),
            updated_at: Set(now),
            version: Set(1),
        })
        .exec_without_returning(&txn)
        .await?;
        let cmd = PlaceOrder {
            order_id: id.clone(),
            customer_id: caller.id().to_owned(),
            lines: order
                .items
                .iter()
                .map(|i| PlaceOrderLine {
                    product_id: i.product_id.clone(),
                    quantity: i.quantity,
                })
                .collect(),
            payment_token: order.payment_token.clone(),
        };
        let m = edge.emitter.event(&edge.orders.place, &id, &cmd, None);
        edge.emitter.commit(txn, &[m]).await?;
        return Ok(accepted(&id));
    }
    Err(Problem::unavailable(
        "the request could not be recorded; retry it",
    ))
}

/// The caller's order `id`, or 404 (also for another customer's order).
async fn own_order(edge: &Edge, caller: &Caller, id: &str) -> Result<orders::Model, Problem> {
    orders::Entity::find_by_id(id.to_owned())
        .one(&edge.db)
        .await?
        .filter(|o| o.customer_id == caller.id())
        .ok_or_else(|| Problem::not_found(format!("no order {id}")))
}

/// `GET /v1/orders/{id}` (scope `orders:read`), with an ETag;
/// `If-None-Match` with the current one → 304.
pub(crate) async fn get_order(
    State(edge): Shared,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.require("orders:read")?;
    let o = own_order(&edge, &caller, &id).await?;
    let etag = format!("\"{}-{}\"", o.id, o.version);
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let resp = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(Order::from(o)).into_response()
    };
    Ok(with_header(resp, header::ETAG, &etag))
}

/// `GET /v1/orders?status=&limit=&cursor=` (scope `orders:read`): the
/// caller's orders, newest first.
pub(crate) async fn list_orders(
    State(edge): Shared,
    caller: Caller,
    Query(page): Query<Page>,
) -> Result<Response, Problem> {
    caller.require("orders:read")?;
    let limit = page.limit()?;
    let mut q = orders::Entity::find()
        .filter(orders::Column::CustomerId.eq(caller.id()))
        .order_by_desc(orders::Column::Id);
    if let Some(s) = &page.status {
        let s = s.to_ascii_uppercase();
        if ![
            sluice_orders::status::PENDING,
            sluice_orders::status::CONFIRMED,
            sluice_orders::status::CANCELLED,
        ]
        .contains(&s.as_str())
        {
            return Err(Problem::bad_request(
                "status must be PENDING, CONFIRMED or CANCELLED",
            ));
        }
        q = q.filter(orders::Column::Status.eq(s));
    }
    if let Some(after) = page.after()? {
        q = q.filter(orders::Column::Id.lt(after));
    }
    let rows = q.limit(limit + 1).all(&edge.db).await?;
    Ok(Json(paged(rows, limit, |o| o.id.clone(), Order::from)).into_response())
}

/// `DELETE /v1/orders/{id}` (scope `orders:write`) → 202: cancellation
/// requested (the saga cancels at its next step).
pub(crate) async fn cancel_order(
    State(edge): Shared,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    caller.require("orders:write")?;
    let o = own_order(&edge, &caller, &id).await?;
    let txn = edge.db.begin().await?;
    let cmd = CancelOrder {
        order_id: o.id.clone(),
        customer_id: o.customer_id.clone(),
    };
    let m = edge.emitter.event(&edge.orders.cancel, &o.id, &cmd, None);
    edge.emitter.commit(txn, &[m]).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"id": o.id, "status": o.status, "cancellation": "requested"})),
    )
        .into_response())
}

/// How often an order's event stream looks at the read model.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// `GET /v1/orders/{id}/events` (scope `orders:read`): Server-Sent Events,
/// one `status` event with `{id, status, step, reason}` for the order as it
/// is and then for each change of the read model, ending after `CONFIRMED`
/// or `CANCELLED`.
pub(crate) async fn order_events(
    State(edge): Shared,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    caller.require("orders:read")?;
    own_order(&edge, &caller, &id).await?;
    struct Watch {
        edge: Arc<Edge>,
        id: String,
        seen: i64,
        done: bool,
    }
    let start = Watch {
        edge,
        id,
        seen: 0,
        done: false,
    };
    let stream = futures::stream::unfold(start, |mut w| async move {
        if w.done {
            return None;
        }
        loop {
            let row = orders::Entity::find_by_id(w.id.clone())
                .one(&w.edge.db)
                .await;
            match row {
                Ok(Some(o)) if o.version != w.seen => {
                    w.seen = o.version;
                    w.done = o.status != sluice_orders::status::PENDING;
                    let data = serde_json::json!({
                        "id": o.id,
                        "status": o.status,
                        "step": o.step,
                        "reason": (o.status == sluice_orders::status::CANCELLED).then_some(&o.reason),
                    });
                    let event = Event::default()
                        .event("status")
                        .id(o.version.to_string())
                        .data(data.to_string());
                    return Some((Ok::<_, std::convert::Infallible>(event), w));
                }
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, order = %w.id, "order event stream stopped");
                    return None;
                }
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
