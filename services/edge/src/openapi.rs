//! The API's OpenAPI 3.1 description, generated from the handlers'
//! annotations and the types they take and give (utoipa), served at
//! `/openapi.json` and rendered as a self-contained page at `/docs`.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::api;
use crate::problem::Problem;

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice shop API",
        version = "1",
        description = "The reference shop's REST edge: accounts and tokens, the catalogue, orders. \
            Every error is application/problem+json (RFC 9457). Clients are rate limited \
            (429 with Retry-After)."
    ),
    paths(
        api::register,
        api::token,
        api::list_products,
        api::create_product,
        api::get_product,
        api::update_product,
        api::delete_product,
        api::adjust_stock,
        api::upload_image,
        api::get_image,
        api::place_order,
        api::list_orders,
        api::get_order,
        api::cancel_order,
        api::order_events,
        crate::admin::list,
        crate::admin::redrive,
        crate::admin::purge,
    ),
    components(schemas(Problem, api::OrderStatus)),
    modifiers(&Security, &AnyProblem),
    tags(
        (name = "accounts", description = "Accounts and access tokens"),
        (name = "products", description = "The catalogue with stock"),
        (name = "orders", description = "A customer's orders"),
        (name = "admin", description = "Operations: dead letters (API key with scope ops)"),
    )
)]
struct ApiDoc;

/// Adds the two ways of authenticating: Bearer JWTs and API keys.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from POST /v1/auth/token"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "The admin key or a key the accounts service issued",
            ))),
        );
    }
}

/// Gives every operation a `default` response: any status it does not
/// list is a problem (`application/problem+json`), as every error is.
struct AnyProblem;

impl utoipa::Modify for AnyProblem {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = ResponseBuilder::new()
            .description("A problem")
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        for item in api.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                op.responses
                    .responses
                    .entry("default".to_owned())
                    .or_insert_with(|| problem.clone().into());
            }
        }
    }
}

/// The description as JSON.
pub fn spec() -> Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null)
}

/// `/openapi.json` and `/docs`.
pub(crate) fn router() -> Router {
    let spec = spec();
    let json: Arc<[u8]> = serde_json::to_vec_pretty(&spec).unwrap_or_default().into();
    let page: Arc<str> = render(&spec).into();
    Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let json = json.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        )],
                        json.to_vec(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/docs",
            get(move || {
                let page = page.clone();
                async move { Html(page.to_string()) }
            }),
        )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A schema's short form: a component's name, an array of one, a type.
fn type_name(schema: &Value) -> String {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{0}\">{0}</a>", escape(name));
    }
    if let Some(items) = schema.get("items") {
        return format!("[{}]", type_name(items));
    }
    if let Some(any) = schema.get("oneOf").and_then(Value::as_array) {
        return any.iter().map(type_name).collect::<Vec<_>>().join(" | ");
    }
    match schema.get("type") {
        Some(Value::String(t)) => escape(t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(escape)
            .collect::<Vec<_>>()
            .join(" | "),
        _ => "any".to_owned(),
    }
}

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).map(escape).unwrap_or_default()
}

/// The description as one HTML page with no scripts and nothing fetched
/// from elsewhere: every operation with its parameters, body and
/// responses, then every schema with its fields.
fn render(spec: &Value) -> String {
    let mut h = String::new();
    let info = &spec["info"];
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}\
         h2{{border-bottom:1px solid #ccc}}code,.m{{font-family:ui-monospace,monospace}}\
         .op{{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}}\
         .m{{font-weight:bold;display:inline-block;min-width:4.5rem}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}}</style>\
         </head><body><h1>{t} <small>v{v}</small></h1><p>{d}</p>\
         <p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {o}).</p>",
        t = text(info.get("title")),
        v = text(info.get("version")),
        d = text(info.get("description")),
        o = text(spec.get("openapi")),
    );
    h.push_str("<h2>Operations</h2>");
    if let Some(paths) = spec["paths"].as_object() {
        for (path, item) in paths {
            for method in ["get", "post", "put", "delete", "patch"] {
                if let Some(op) = item.get(method) {
                    operation(&mut h, method, path, op);
                }
            }
        }
    }
    h.push_str("<h2>Schemas</h2>");
    if let Some(schemas) = spec["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            let _ = write!(
                h,
                "<h3 id=\"schema-{n}\">{n}</h3><p>{d}</p>",
                n = escape(name),
                d = text(schema.get("description"))
            );
            fields(&mut h, schema);
        }
    }
    h.push_str("</body></html>");
    h
}

fn operation(h: &mut String, method: &str, path: &str, op: &Value) {
    let _ = write!(
        h,
        "<div class=\"op\"><p><span class=\"m\">{m}</span> <code>{p}</code></p><p>{s}</p>",
        m = method.to_uppercase(),
        p = escape(path),
        s = text(op.get("description").or_else(|| op.get("summary"))),
    );
    if let Some(security) = op.get("security").and_then(Value::as_array) {
        for req in security.iter().filter_map(Value::as_object) {
            for (scheme, scopes) in req {
                let scopes = scopes
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let _ = write!(
                    h,
                    "<p>Needs <b>{}</b> with {}.</p>",
                    escape(scheme),
                    escape(&scopes)
                );
            }
        }
    }
    if let Some(params) = op.get("parameters").and_then(Value::as_array) {
        h.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th></th></tr>");
        for p in params {
            let _ = write!(
                h,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(p.get("name")),
                if p["required"].as_bool() == Some(true) {
                    " *"
                } else {
                    ""
                },
                text(p.get("in")),
                type_name(&p["schema"]),
                text(p.get("description")),
            );
        }
        h.push_str("</table>");
    }
    if let Some(content) = op["requestBody"]["content"].as_object() {
        for (media, c) in content {
            let _ = write!(
                h,
                "<p>Body ({}): {}</p>",
                escape(media),
                type_name(&c["schema"])
            );
        }
    }
    if let Some(responses) = op["responses"].as_object() {
        h.push_str("<table><tr><th>status</th><th></th><th>body</th></tr>");
        for (status, r) in responses {
            let body = r["content"]
                .as_object()
                .map(|c| {
                    c.iter()
                        .map(|(media, c)| {
                            format!("{} ({})", type_name(&c["schema"]), escape(media))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(status),
                text(r.get("description")),
                body
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</div>");
}

fn fields(h: &mut String, schema: &Value) {
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    h.push_str("<table><tr><th>field</th><th>type</th><th></th></tr>");
    for (name, p) in props {
        let _ = write!(
            h,
            "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            if required.contains(&name.as_str()) {
                " *"
            } else {
                ""
            },
            type_name(p),
            text(p.get("description")),
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_is_openapi_3_1_and_names_every_route() {
        let s = spec();
        assert!(s["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")));
        for (path, method) in [
            ("/v1/accounts", "post"),
            ("/v1/auth/token", "post"),
            ("/v1/products", "get"),
            ("/v1/products", "post"),
            ("/v1/products/{id}", "get"),
            ("/v1/products/{id}", "put"),
            ("/v1/products/{id}", "delete"),
            ("/v1/products/{id}/stock", "post"),
            ("/v1/orders", "post"),
            ("/v1/orders", "get"),
            ("/v1/orders/{id}", "get"),
            ("/v1/orders/{id}", "delete"),
            ("/v1/orders/{id}/events", "get"),
        ] {
            let op = &s["paths"][path][method];
            assert!(op.is_object(), "{method} {path}");
            assert!(op["responses"]["default"].is_object(), "{method} {path}");
        }
        for name in ["Product", "Order", "Problem", "Item", "NewOrder", "Token"] {
            assert!(s["components"]["schemas"][name].is_object(), "{name}");
        }
        // The order's idempotency key is described as the handler checks it.
        let key = s["paths"]["/v1/orders"]["post"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "Idempotency-Key"))
            .expect("Idempotency-Key parameter");
        assert_eq!(key["in"], "header");
        assert_eq!(key["required"], true);
        assert_eq!(key["schema"]["minLength"], 1);
        assert_eq!(key["schema"]["maxLength"], crate::api::IDEMPOTENCY_KEY_MAX);
        assert_eq!(key["schema"]["pattern"], "^[!-~]([ -~]*[!-~])?$");
        // So is an image's size.
        let size = s["paths"]["/v1/products/{id}/images/{image_id}"]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "size"))
            .expect("size parameter");
        assert_eq!(size["in"], "query");
        assert_eq!(size["schema"]["pattern"], "^(original|medium|small)$");
        let page = render(&s);
        assert!(page.contains("<code>/v1/orders/{id}/events</code>"));
        assert!(page.contains("id=\"schema-Order\""));
    }
}
