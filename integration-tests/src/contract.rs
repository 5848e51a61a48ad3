//! The contract test: every response the edge gives in these tests is
//! checked against its OpenAPI description — the status is documented for
//! the operation (or covered by `default`), the content type is one it
//! documents, and a JSON body validates against the documented schema, with
//! undocumented fields refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// The edge's OpenAPI description, ready to check responses.
pub struct Contract {
    spec: Value,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contract").finish_non_exhaustive()
    }
}

/// Every object schema with properties refuses others, unless it says.
fn closed(schema: &mut Value) {
    match schema {
        Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            for v in m.values_mut() {
                closed(v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(closed),
        _ => {}
    }
}

/// Whether `path` (no query) fits the template `tpl` (`/v1/orders/{id}`).
fn fits(tpl: &str, path: &str) -> bool {
    let t: Vec<&str> = tpl.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

impl Contract {
    /// From the description's JSON.
    pub fn new(spec: Value) -> Self {
        Self {
            spec,
            validators: Mutex::new(HashMap::new()),
        }
    }

    /// The description's template for `path`, literal segments preferred.
    fn template(&self, path: &str) -> Option<String> {
        let paths = self.spec["paths"].as_object()?;
        let mut fitting: Vec<&String> = paths.keys().filter(|t| fits(t, path)).collect();
        fitting.sort_by_key(|t| t.matches('{').count());
        fitting.first().map(|t| (*t).clone())
    }

    fn validator(&self, key: &str, schema: &Value) -> Arc<jsonschema::Validator> {
        let mut cache = self.validators.lock().unwrap();
        if let Some(v) = cache.get(key) {
            return v.clone();
        }
        let mut root = schema.clone();
        if let Value::Object(m) = &mut root {
            m.insert("components".into(), self.spec["components"].clone());
        }
        closed(&mut root);
        let v = Arc::new(
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&root)
                .unwrap_or_else(|e| panic!("the schema of {key} does not compile: {e}")),
        );
        cache.insert(key.to_owned(), v.clone());
        v
    }

    /// Panics, naming the mismatch, unless the response to `method path`
    /// is one the description allows. Paths it does not describe (the
    /// operations endpoints, unknown routes) are not checked.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &str,
    ) {
        let path = path.split('?').next().unwrap_or(path);
        let Some(tpl) = self.template(path) else {
            return;
        };
        let method = method.to_ascii_lowercase();
        let op = &self.spec["paths"][&tpl][&method];
        if !op.is_object() {
            assert_eq!(
                status, 405,
                "{method} {path} is not described, yet answered {status}"
            );
            return;
        }
        let code = status.to_string();
        let response = if op["responses"][&code].is_object() {
            &op["responses"][&code]
        } else {
            &op["responses"]["default"]
        };
        assert!(
            response.is_object(),
            "{method} {tpl}: status {status} is not described"
        );
        let Some(content) = response["content"].as_object() else {
            assert!(
                body.is_empty(),
                "{method} {tpl} {status}: a body where none is described: {body}"
            );
            return;
        };
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(str::trim)
            .unwrap_or_else(|| panic!("{method} {tpl} {status}: no Content-Type"));
        let wildcard = media.split('/').next().map(|t| format!("{t}/*"));
        let described = content
            .get(media)
            .or_else(|| wildcard.and_then(|w| content.get(&w)))
            .unwrap_or_else(|| {
                panic!(
                    "{method} {tpl} {status}: Content-Type {media} is not one of {:?}",
                    content.keys().collect::<Vec<_>>()
                )
            });
        if !media.ends_with("json") {
            return;
        }
        let value: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{method} {tpl} {status}: not JSON ({e}): {body}"));
        let key = format!("{method} {tpl} {status} {media}");
        let validator = self.validator(&key, &described["schema"]);
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{key}: the body breaks the contract: {errors:?}\n{body}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fit_literal_segments_first() {
        assert!(fits("/v1/orders/{id}", "/v1/orders/abc"));
        assert!(!fits("/v1/orders/{id}", "/v1/orders/abc/events"));
        assert!(!fits("/v1/orders/{id}", "/v1/orders/"));
        let c = Contract::new(sluice_edge::openapi::spec());
        assert_eq!(
            c.template("/v1/orders/x/events").as_deref(),
            Some("/v1/orders/{id}/events")
        );
        assert_eq!(c.template("/v1/orders").as_deref(), Some("/v1/orders"));
        assert_eq!(c.template("/healthz"), None);
    }

    #[test]
    fn a_body_off_the_schema_is_caught() {
        let c = Contract::new(sluice_edge::openapi::spec());
        let good = r#"{"type":"https://sluice.dev/problems/not-found","title":"Not Found","status":404,"detail":"no product x"}"#;
        c.check(
            "GET",
            "/v1/products/x",
            404,
            Some("application/problem+json"),
            good,
        );
        let extra = good.replace("}", r#","secret":1}"#);
        for (status, ct, body) in [
            (404, "application/problem+json", extra.as_str()),
            (404, "text/plain", "nope"),
            (200, "application/json", r#"{"id":"x"}"#),
        ] {
            let r = std::panic::catch_unwind(|| {
                c.check("GET", "/v1/products/x", status, Some(ct), body)
            });
            assert!(r.is_err(), "{status} {ct} {body} passed");
        }
    }
}
