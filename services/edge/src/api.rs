//! The `/v1` API: accounts and tokens (request/reply to accounts), the
//! catalogue and orders (from the read models), placing and cancelling
//! orders (commands through the outbox).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
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
use sluice_proto::shop::inventory::v1::{
    AdjustStock, CreateProduct, DeleteProduct, ProductResult, UpdateProduct,
};
use sluice_proto::shop::orders::v1::{CancelOrder, PlaceOrder, PlaceOrderLine};
use utoipa::{IntoParams, ToSchema};

use crate::Edge;
use crate::auth::{Caller, KeyHolder};
use crate::json::{Body, Params, Segment};
use crate::problem::Problem;
use crate::project;
use crate::project::Item;
use crate::tables::{idempotency, orders, product_images, products};

type Shared = State<Arc<Edge>>;

/// `POST /v1/accounts` and `POST /v1/auth/token` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    /// The account's e-mail address.
    #[schema(example = "ada@example.com", format = Email, max_length = 254)]
    email: String,
    /// 8 to 128 characters.
    #[schema(example = "correct horse battery", min_length = 8, max_length = 128)]
    password: String,
}

/// A new account.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Account {
    /// The account's id.
    id: String,
    /// Its e-mail address.
    email: String,
}

/// An access token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Token {
    /// A JWT (EdDSA) for `Authorization: Bearer`.
    access_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    token_type: String,
    /// Seconds until it expires.
    expires_in: i64,
}

/// An order accepted for processing.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Accepted {
    /// The order's id.
    id: String,
    /// `PENDING` when placed; the order's status when a cancellation was
    /// requested.
    status: String,
    /// `requested` for a cancellation.
    #[serde(skip_serializing_if = "Option::is_none")]
    cancellation: Option<String>,
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
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts",
    request_body = Credentials,
    responses(
        (status = 201, description = "The account", body = Account,
            headers(("Location" = String, description = "The account's URL"))),
        (status = 409, description = "The e-mail address is taken", body = Problem, content_type = "application/problem+json"),
    ))]
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
    let account = Account {
        id: r.account_id,
        email: r.email,
    };
    let resp = (StatusCode::CREATED, Json(account)).into_response();
    Ok(with_header(resp, header::LOCATION, &location))
}

/// `POST /v1/auth/token` → 200 `{access_token, token_type, expires_in}`.
#[utoipa::path(post, path = "/v1/auth/token", tag = "accounts",
    request_body = Credentials,
    responses(
        (status = 200, description = "An access token", body = Token),
        (status = 401, description = "Wrong e-mail address or password", body = Problem, content_type = "application/problem+json"),
    ))]
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
    Ok(Json(Token {
        access_token: r.access_token,
        token_type: "Bearer".to_owned(),
        expires_in: r.expires_in,
    })
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
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Orders only: `PENDING`, `CONFIRMED` or `CANCELLED`.
    status: Option<String>,
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Paged<T> {
    /// The page's items.
    items: Vec<T>,
    /// The cursor of the next page; `null` on the last.
    next_cursor: Option<String>,
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
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Product {
    /// Its id.
    id: String,
    /// Stock-keeping unit, unique.
    sku: String,
    /// Its name.
    name: String,
    /// Unit price in minor units.
    price_cents: i64,
    /// ISO 4217 code.
    #[schema(example = "EUR")]
    currency: String,
    /// Units in stock.
    stock: i64,
    /// Its images' URLs.
    images: Vec<String>,
    /// When it last changed (RFC 3339).
    #[schema(format = DateTime)]
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
#[utoipa::path(get, path = "/v1/products", tag = "products",
    params(Page),
    responses(
        (status = 200, description = "A page of the catalogue, in id order", body = Paged<Product>),
    ))]
pub(crate) async fn list_products(
    State(edge): Shared,
    Params(page): Params<Page>,
) -> Result<Response, Problem> {
    let limit = page.limit()?;
    let mut q = products::Entity::find().order_by_asc(products::Column::Id);
    if let Some(after) = page.after()? {
        q = q.filter(products::Column::Id.gt(after));
    }
    let rows = q.limit(limit + 1).all(&edge.reads).await?;
    let mut page = paged(rows, limit, |p| p.id.clone(), Product::from);
    with_images(&edge, &mut page.items).await?;
    Ok(Json(page).into_response())
}

/// The URL of an image of a product.
fn image_url(product_id: &str, image_id: &str) -> String {
    format!("/v1/products/{product_id}/images/{image_id}")
}

/// Fills in the products' images (not rejected ones, oldest first).
async fn with_images(edge: &Edge, products: &mut [Product]) -> Result<(), Problem> {
    if products.is_empty() {
        return Ok(());
    }
    let rows = product_images::Entity::find()
        .filter(product_images::Column::ProductId.is_in(products.iter().map(|p| p.id.clone())))
        .filter(product_images::Column::Status.ne(project::REJECTED))
        .order_by_asc(product_images::Column::ImageId)
        .all(&edge.reads)
        .await?;
    for row in rows {
        if let Some(p) = products.iter_mut().find(|p| p.id == row.product_id) {
            p.images.push(image_url(&row.product_id, &row.image_id));
        }
    }
    Ok(())
}

/// `{items, next_cursor}` from `limit + 1` rows.
fn paged<R, T: Serialize>(
    mut rows: Vec<R>,
    limit: u64,
    id: impl Fn(&R) -> String,
    shape: impl Fn(R) -> T,
) -> Paged<T> {
    let more = rows.len() as u64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next = if more {
        rows.last().map(|r| cursor(&id(r)))
    } else {
        None
    };
    Paged {
        items: rows.into_iter().map(shape).collect(),
        next_cursor: next,
    }
}

/// `POST /v1/products` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewProduct {
    /// Stock-keeping unit, 1 to 64 characters, unique.
    #[schema(min_length = 1, max_length = 64)]
    sku: String,
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    /// Unit price in minor units, not negative.
    #[schema(minimum = 0)]
    price_cents: i64,
    /// ISO 4217 code (three capital letters).
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    currency: String,
    /// Units in stock, 0 to 10^12.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    stock: i64,
}

/// `PUT /v1/products/{id}` body: the catalogue data (stock changes only
/// through `POST /v1/products/{id}/stock`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProductData {
    /// Stock-keeping unit, 1 to 64 characters, unique.
    #[schema(min_length = 1, max_length = 64)]
    sku: String,
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    name: String,
    /// Unit price in minor units, not negative.
    #[schema(minimum = 0)]
    price_cents: i64,
    /// ISO 4217 code (three capital letters).
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    currency: String,
}

/// `POST /v1/products/{id}/stock` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StockDelta {
    /// Units to add (positive) or remove (negative); not zero.
    #[schema(minimum = -1_000_000_000_000_i64, maximum = 1_000_000_000_000_i64)]
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
#[utoipa::path(post, path = "/v1/products", tag = "products",
    request_body = NewProduct,
    security(("api_key" = ["catalog:write"])),
    responses(
        (status = 201, description = "The product", body = Product,
            headers(("Location" = String, description = "The product's URL"))),
        (status = 409, description = "The sku is taken", body = Problem, content_type = "application/problem+json"),
    ))]
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
    if let Err(e) = remember_created(&edge, &product).await {
        // The product exists: its event brings it into the read model.
        tracing::warn!(product = %product.id, error = %e, "could not note a created product");
    }
    let location = format!("/v1/products/{}", product.id);
    let resp = (StatusCode::CREATED, Json(product)).into_response();
    Ok(with_header(resp, header::LOCATION, &location))
}

/// Puts a product the inventory has just created into the edge's read
/// model unless the products projection has already: its
/// `ProductCreated` event may reach the edge after the 201, and a client
/// that reads the product or uploads its image at once must find it (as
/// `POST /v1/orders` writes its pending order). The projection's upsert of
/// that event later writes the same values; a row already there (the
/// projection was first, and perhaps later events too) is left alone.
async fn remember_created(edge: &Edge, p: &Product) -> Result<(), sea_orm::DbErr> {
    products::Entity::insert(products::ActiveModel {
        id: Set(p.id.clone()),
        sku: Set(p.sku.clone()),
        name: Set(p.name.clone()),
        price_cents: Set(p.price_cents),
        currency: Set(p.currency.clone()),
        stock: Set(p.stock),
        updated_at: Set(now_micros()),
    })
    .on_conflict(
        sea_orm::sea_query::OnConflict::column(products::Column::Id)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(&edge.db)
    .await?;
    Ok(())
}

/// `POST /v1/products/{id}/stock` `{delta}` (API key with `catalog:write`).
#[utoipa::path(post, path = "/v1/products/{id}/stock", tag = "products",
    params(("id" = String, Path, description = "The product's id")),
    request_body = StockDelta,
    security(("api_key" = ["catalog:write"])),
    responses(
        (status = 200, description = "The product with its new stock", body = Product),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn adjust_stock(
    State(edge): Shared,
    key: KeyHolder,
    Segment(id): Segment<String>,
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

#[utoipa::path(put, path = "/v1/products/{id}", tag = "products",
    params(("id" = String, Path, description = "The product's id")),
    request_body = ProductData,
    security(("api_key" = ["catalog:write"])),
    responses(
        (status = 200, description = "The product as it now is", body = Product),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The sku is another product's", body = Problem, content_type = "application/problem+json"),
    ))]
/// `PUT /v1/products/{id}` (API key with `catalog:write`): new catalogue
/// data.
pub(crate) async fn update_product(
    State(edge): Shared,
    key: KeyHolder,
    Segment(id): Segment<String>,
    Body(p): Body<ProductData>,
) -> Result<Response, Problem> {
    key.require("catalog:write")?;
    let request = UpdateProduct {
        product_id: id,
        sku: p.sku,
        name: p.name,
        price_cents: p.price_cents,
        currency: p.currency,
    };
    let r: ProductResult =
        ask(&edge, "inventory", &edge.inventory.update_product, &request).await?;
    Ok(Json(product_reply(r)?).into_response())
}

#[utoipa::path(delete, path = "/v1/products/{id}", tag = "products",
    params(("id" = String, Path, description = "The product's id")),
    security(("api_key" = ["catalog:write"])),
    responses(
        (status = 204, description = "Deleted: new orders for it are rejected"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    ))]
/// `DELETE /v1/products/{id}` (API key with `catalog:write`) → 204.
pub(crate) async fn delete_product(
    State(edge): Shared,
    key: KeyHolder,
    Segment(id): Segment<String>,
) -> Result<Response, Problem> {
    key.require("catalog:write")?;
    let request = DeleteProduct { product_id: id };
    let r: ProductResult =
        ask(&edge, "inventory", &edge.inventory.delete_product, &request).await?;
    product_reply(r)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/products/{id}`.
#[utoipa::path(get, path = "/v1/products/{id}", tag = "products",
    params(("id" = String, Path, description = "The product's id")),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_product(
    State(edge): Shared,
    Segment(id): Segment<String>,
) -> Result<Response, Problem> {
    let p = products::Entity::find_by_id(id.clone())
        .one(&edge.reads)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no product {id}")))?;
    let mut p = Product::from(p);
    with_images(&edge, std::slice::from_mut(&mut p)).await?;
    Ok(Json(p).into_response())
}

/// `POST /v1/products/{id}/images` answer: the image accepted, its
/// thumbnails on their way.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Image {
    /// The image's id.
    id: String,
    /// Where it is served (`?size=small|medium` for a thumbnail once
    /// ready).
    url: String,
    /// `image/png`, `image/jpeg` or `image/webp`.
    content_type: String,
    /// Width in pixels.
    width: u32,
    /// Height in pixels.
    height: u32,
    /// Bytes of the original.
    size_bytes: u64,
    /// `processing` until its thumbnails are made.
    status: String,
}

/// The multipart form of an upload (for the description).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub(crate) struct ImageUpload {
    /// The image file: PNG, JPEG or WebP, at most 10 MiB and 8000×8000
    /// pixels, with its content type.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

/// A media store refusal or failure, as a problem.
fn media_problem(e: sluice_media::MediaError) -> Problem {
    use sluice_media::MediaError as M;
    match e {
        M::TooManyBytes { .. } => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", e.to_string())
        }
        M::NotAnImage | M::UnsupportedFormat(_) | M::ContentTypeMismatch { .. } => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            e.to_string(),
        ),
        M::InvalidProductId(_)
        | M::TooLargeDimensions { .. }
        | M::TooMuchMemory { .. }
        | M::Unreadable(_) => Problem::new(StatusCode::BAD_REQUEST, "invalid-image", e.to_string()),
        M::NotFound(_) => Problem::not_found("no such image"),
        M::Store { .. } | M::Config(_) => {
            tracing::error!(error = %e, "media store failed");
            Problem::unavailable("the media store is not available")
        }
        M::Db(e) => Problem::internal(e),
    }
}

#[utoipa::path(post, path = "/v1/products/{id}/images", tag = "products",
    params(("id" = String, Path, description = "The product's id")),
    request_body(content = ImageUpload, content_type = "multipart/form-data"),
    security(("api_key" = ["catalog:write"])),
    responses(
        (status = 201, description = "Stored; thumbnails follow", body = Image,
            headers(("Location" = String, description = "The image's URL"))),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over 10 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not a PNG, JPEG or WebP image", body = Problem, content_type = "application/problem+json"),
    ))]
/// `POST /v1/products/{id}/images` (API key with `catalog:write`),
/// multipart with one file part `image`: the original is validated and
/// stored, and `media.image.uploaded` is emitted through the outbox in the
/// same step; the media service makes the thumbnails.
pub(crate) async fn upload_image(
    State(edge): Shared,
    key: KeyHolder,
    Segment(id): Segment<String>,
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, Problem> {
    key.require("catalog:write")?;
    let mut form = form.map_err(|e| {
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!(
                "the body must be multipart/form-data with an image part: {}",
                e.body_text()
            ),
        )
    })?;
    let store = edge
        .images
        .as_ref()
        .ok_or_else(|| Problem::unavailable("image uploads are not configured"))?;
    products::Entity::find_by_id(id.clone())
        .one(&edge.reads)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no product {id}")))?;
    let part_problem = |e: axum::extract::multipart::MultipartError| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too-large"
        } else {
            "invalid-body"
        };
        Problem::new(status, code, e.body_text())
    };
    let (bytes, content_type) = loop {
        let Some(field) = form.next_field().await.map_err(part_problem)? else {
            return Err(Problem::bad_request("the form has no part named image"));
        };
        if field.name() != Some("image") {
            continue;
        }
        let content_type = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        break (field.bytes().await.map_err(part_problem)?, content_type);
    };
    let txn = edge.db.begin().await?;
    let stored = store
        .upload(
            &edge.emitter,
            txn,
            &edge.media,
            &id,
            bytes,
            &content_type,
            None,
        )
        .await
        .map_err(media_problem)?;
    let url = image_url(&id, &stored.image_id);
    let image = Image {
        id: stored.image_id,
        url: url.clone(),
        content_type: stored.content_type.to_owned(),
        width: stored.width,
        height: stored.height,
        size_bytes: stored.size_bytes,
        status: project::PROCESSING.to_owned(),
    };
    let resp = (StatusCode::CREATED, Json(image)).into_response();
    Ok(with_header(resp, header::LOCATION, &url))
}

/// `GET /v1/products/{id}/images/{image_id}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImageSize {
    /// `original` (default), `medium` (fits 512×512) or `small` (fits
    /// 128×128).
    #[param(pattern = "^(original|medium|small)$")]
    size: Option<String>,
}

#[utoipa::path(get, path = "/v1/products/{id}/images/{image_id}", tag = "products",
    params(
        ("id" = String, Path, description = "The product's id"),
        ("image_id" = String, Path, description = "The image's id"),
        ImageSize,
    ),
    responses(
        (status = 200, description = "The image's bytes", content_type = "image/*", body = Vec<u8>),
        (status = 404, description = "No such image, or no such thumbnail yet", body = Problem, content_type = "application/problem+json"),
    ))]
/// `GET /v1/products/{id}/images/{image_id}[?size=small|medium]`: the
/// original or a thumbnail, cacheable for good (an image never changes).
pub(crate) async fn get_image(
    State(edge): Shared,
    Segment((id, image_id)): Segment<(String, String)>,
    Params(q): Params<ImageSize>,
) -> Result<Response, Problem> {
    let store = edge
        .images
        .as_ref()
        .ok_or_else(|| Problem::unavailable("images are not configured"))?;
    let row = product_images::Entity::find_by_id(image_id.clone())
        .one(&edge.reads)
        .await?
        .filter(|r| r.product_id == id && r.status != project::REJECTED)
        .ok_or_else(|| Problem::not_found(format!("no image {image_id} of product {id}")))?;
    let size = q.size.as_deref().unwrap_or("original");
    let (key, content_type) = match size {
        "original" => (row.key, row.content_type),
        "small" | "medium" => {
            let thumbs: std::collections::BTreeMap<String, project::Thumb> =
                serde_json::from_str(&row.thumbnails).unwrap_or_default();
            let t = thumbs.get(size).cloned().ok_or_else(|| {
                Problem::not_found(format!("image {image_id} has no {size} thumbnail (yet)"))
            })?;
            (t.key, t.content_type)
        }
        other => {
            return Err(Problem::bad_request(format!(
                "size must be original, medium or small, not {other:?}"
            )));
        }
    };
    let bytes = store.get(&key).await.map_err(media_problem)?;
    let mut resp = bytes.into_response();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    Ok(resp)
}

/// An order as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Order {
    /// Its id.
    id: String,
    /// `PENDING`, `CONFIRMED` or `CANCELLED`.
    #[schema(example = "PENDING")]
    status: String,
    /// The saga's finer step (`requested`, `placed`, `reserved`, …).
    step: String,
    /// Its lines.
    items: Vec<Item>,
    /// Sum of the lines in minor units (0 until priced).
    total_cents: i64,
    /// ISO 4217 code (empty until priced).
    currency: String,
    /// Why it was cancelled (only when `CANCELLED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// When it was placed (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
    /// When it last changed (RFC 3339).
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<&orders::Model> for Order {
    fn from(o: &orders::Model) -> Self {
        Self {
            items: serde_json::from_str(&o.items).unwrap_or_default(),
            reason: (o.status == sluice_orders::status::CANCELLED).then(|| o.reason.clone()),
            id: o.id.clone(),
            status: o.status.clone(),
            step: o.step.clone(),
            total_cents: o.total_cents,
            currency: o.currency.clone(),
            created_at: rfc3339(o.created_at),
            updated_at: rfc3339(o.updated_at),
        }
    }
}

impl From<orders::Model> for Order {
    fn from(o: orders::Model) -> Self {
        Self::from(&o)
    }
}

/// `POST /v1/orders` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewOrder {
    /// 1 to 100 lines.
    #[schema(min_items = 1, max_items = 100)]
    items: Vec<NewItem>,
    /// The payment provider's token for this order.
    #[schema(min_length = 1)]
    payment_token: String,
}

/// One line of a new order.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewItem {
    /// The product.
    #[schema(min_length = 1)]
    product_id: String,
    /// Units, 1 to 10000.
    #[schema(minimum = 1, maximum = 10000)]
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
    let body = Accepted {
        id: id.to_owned(),
        status: sluice_orders::status::PENDING.to_owned(),
        cancellation: None,
    };
    let r = (StatusCode::ACCEPTED, Json(body)).into_response();
    with_header(r, header::LOCATION, &format!("/v1/orders/{id}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    sluice_kit::hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The longest `Idempotency-Key` (as the OpenAPI document says).
pub(crate) const IDEMPOTENCY_KEY_MAX: usize = 200;

/// `POST /v1/orders` (scope `orders:write`, header `Idempotency-Key`) →
/// 202 `{id, status: PENDING}` + Location. The pending row, the
/// idempotency record and the `orders.cmd.place` command commit together;
/// a repeated key with the same body answers the same, with another body 422.
#[utoipa::path(post, path = "/v1/orders", tag = "orders",
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]*[!-~])?$",
        description = "1 to 200 visible ASCII characters (spaces only inside); a retry with the same key and body gets the first answer")),
    request_body = NewOrder,
    security(("bearer" = ["orders:write"])),
    responses(
        (status = 202, description = "Accepted: the order is PENDING", body = Accepted,
            headers(("Location" = String, description = "The order's URL"))),
        (status = 422, description = "The key was used with another body", body = Problem, content_type = "application/problem+json"),
    ))]
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
        .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX)
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
async fn own_order(edge: &Edge, caller: &Caller, id: &str) -> Result<Arc<orders::Model>, Problem> {
    let order = match edge.orders_cache.get(id) {
        Some(o) => Some(o),
        None => {
            let epoch = edge.orders_cache.epoch();
            orders::Entity::find_by_id(id.to_owned())
                .one(&edge.reads)
                .await?
                .map(|o| edge.orders_cache.keep(epoch, id, o))
        }
    };
    order
        .filter(|o| o.customer_id == caller.id())
        .ok_or_else(|| Problem::not_found(format!("no order {id}")))
}

#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders",
    params(
        ("id" = String, Path, description = "The order's id"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag this order had"),
    ),
    security(("bearer" = ["orders:read"])),
    responses(
        (status = 200, description = "The order", body = Order,
            headers(("ETag" = String, description = "The order's version"))),
        (status = 304, description = "Unchanged since the ETag given",
            headers(("ETag" = String, description = "The order's version"))),
        (status = 404, description = "No such order of the caller's", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn get_order(
    State(edge): Shared,
    caller: Caller,
    headers: HeaderMap,
    Segment(id): Segment<String>,
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
        Json(Order::from(&*o)).into_response()
    };
    Ok(with_header(resp, header::ETAG, &etag))
}

/// `GET /v1/orders?status=&limit=&cursor=` (scope `orders:read`): the
/// caller's orders, newest first.
#[utoipa::path(get, path = "/v1/orders", tag = "orders",
    params(Page),
    security(("bearer" = ["orders:read"])),
    responses(
        (status = 200, description = "A page of the caller's orders, newest first", body = Paged<Order>),
    ))]
pub(crate) async fn list_orders(
    State(edge): Shared,
    caller: Caller,
    Params(page): Params<Page>,
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
    let rows = q.limit(limit + 1).all(&edge.reads).await?;
    Ok(Json(paged(rows, limit, |o| o.id.clone(), Order::from)).into_response())
}

/// `DELETE /v1/orders/{id}` (scope `orders:write`) → 202: cancellation
/// requested (the saga cancels at its next step).
#[utoipa::path(delete, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    security(("bearer" = ["orders:write"])),
    responses(
        (status = 202, description = "Cancellation requested; the order is cancelled at its next step", body = Accepted),
        (status = 404, description = "No such order of the caller's", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn cancel_order(
    State(edge): Shared,
    caller: Caller,
    Segment(id): Segment<String>,
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
    let body = Accepted {
        id: o.id.clone(),
        status: o.status.clone(),
        cancellation: Some("requested".to_owned()),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The data of an order's `status` event.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrderStatus {
    /// The order's id.
    id: String,
    /// `PENDING`, `CONFIRMED` or `CANCELLED`.
    status: String,
    /// The saga's finer step.
    step: String,
    /// Why it was cancelled; `null` unless `CANCELLED`.
    reason: Option<String>,
}

/// One Server-Sent Event of an order's stream, as its fields.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatusEvent {
    /// Always `status`.
    #[schema(example = "status")]
    event: String,
    /// The read model's version of the order.
    id: String,
    /// An `OrderStatus` as JSON.
    data: String,
}

/// How often an order's event stream looks at the read model.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// `GET /v1/orders/{id}/events` (scope `orders:read`): Server-Sent Events,
/// one `status` event with `{id, status, step, reason}` for the order as it
/// is and then for each change of the read model, ending after `CONFIRMED`
/// or `CANCELLED`.
#[utoipa::path(get, path = "/v1/orders/{id}/events", tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    security(("bearer" = ["orders:read"])),
    responses(
        (status = 200, description = "Server-Sent Events named `status`, each one's data an OrderStatus, until the order is CONFIRMED or CANCELLED", content_type = "text/event-stream", body = StatusEvent),
        (status = 404, description = "No such order of the caller's", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn order_events(
    State(edge): Shared,
    caller: Caller,
    Segment(id): Segment<String>,
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
                .one(&w.edge.reads)
                .await;
            match row {
                Ok(Some(o)) if o.version != w.seen => {
                    w.seen = o.version;
                    w.done = o.status != sluice_orders::status::PENDING;
                    let data = serde_json::json!(OrderStatus {
                        reason: (o.status == sluice_orders::status::CANCELLED).then_some(o.reason),
                        id: o.id,
                        status: o.status,
                        step: o.step,
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
