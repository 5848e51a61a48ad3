//! `/v1/admin/dlq`: the dead letters of the shop's domains for operators
//! (an API key with the scope `ops`): list them with their reasons, redrive
//! one (publish the original again) or purge it. Both leave a resolution
//! record in the dead-letter stream ([`sluice_broker::dead_letter`]), as
//! `sluice dlq` does, so the page, the API and the CLI agree.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sluice_broker::dead_letter::{self, DeadLetter};
use sluice_broker::subject;
use utoipa::{IntoParams, ToSchema};

use crate::Edge;
use crate::auth::KeyHolder;
use crate::json::{Params, Segment};
use crate::problem::Problem;

type Shared = State<Arc<Edge>>;

/// The scope the admin endpoints require.
pub(crate) const OPS: &str = "ops";

/// A dead letter as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterView {
    /// Its id: `<domain>:<sequence>` (or `<domain>:<key>`).
    id: String,
    /// The domain whose dead-letter stream holds it.
    domain: String,
    /// The subject it was first published on.
    subject: String,
    /// The consumer group that gave up on it.
    group: String,
    /// Why.
    reason: String,
    /// How many times it had been delivered.
    deliveries: u32,
    /// When it was dead-lettered (RFC 3339), if recorded.
    dead_lettered_at: Option<String>,
    /// The event's `ce-id`.
    event_id: Option<String>,
    /// The event's `ce-type`.
    event_type: Option<String>,
    /// The original message's headers.
    headers: BTreeMap<String, String>,
    /// The event decoded to JSON by its `ce-type`, when it decodes.
    #[schema(value_type = Option<Object>)]
    event: Option<serde_json::Value>,
    /// The payload as it is (base64), e.g. when it does not decode.
    payload_base64: String,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(l: &DeadLetter) -> Self {
        let h = &l.message.headers;
        let event_type = h.get(sluice_proto::envelope::CE_TYPE).map(str::to_owned);
        let event = event_type.as_deref().and_then(|t| {
            sluice_proto::Registry::global()
                .ok()?
                .to_json(t, &l.message.payload)
                .ok()
        });
        Self {
            id: l.id(),
            domain: l.domain.clone(),
            subject: l.original_subject().to_owned(),
            group: l.group().to_owned(),
            reason: l.reason().to_owned(),
            deliveries: l.deliveries(),
            dead_lettered_at: h.get(dead_letter::TIME).map(str::to_owned),
            event_id: h.get(sluice_proto::envelope::CE_ID).map(str::to_owned),
            event_type,
            headers: l
                .original_headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            event,
            payload_base64: base64::engine::general_purpose::STANDARD.encode(&l.message.payload),
        }
    }
}

/// The dead letters, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetters {
    /// The dead letters not yet redriven or purged.
    items: Vec<DeadLetterView>,
}

/// `GET /v1/admin/dlq` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DlqQuery {
    /// Only dead letters first published on subjects matching this filter
    /// (e.g. `orders.>`).
    #[param(example = "orders.>", max_length = 256)]
    subject: Option<String>,
    /// Only those a consumer group gave up on.
    #[param(max_length = 256)]
    group: Option<String>,
}

/// What was done with a dead letter.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Resolution {
    /// The dead letter's id.
    id: String,
    /// `redriven` or `purged`.
    action: String,
    /// Where a redriven event was published.
    subject: Option<String>,
    /// Its sequence in the stream, where the broker has one.
    sequence: Option<u64>,
}

/// The domains whose dead letters `query` asks for.
fn domains<'a>(edge: &'a Edge, query: &DlqQuery) -> Result<Vec<&'a str>, Problem> {
    match &query.subject {
        Some(filter) => {
            subject::validate_filter(filter)
                .map_err(|e| Problem::bad_request(format!("subject: {e}")))?;
            let domain = subject::stream_key(filter);
            Ok(edge
                .dead_letter_domains
                .iter()
                .map(String::as_str)
                .filter(|d| *d == domain)
                .collect())
        }
        None => Ok(edge
            .dead_letter_domains
            .iter()
            .map(String::as_str)
            .collect()),
    }
}

async fn read(edge: &Edge, domain: &str) -> Result<Vec<DeadLetter>, Problem> {
    dead_letter::list(&*edge.broker, domain).await.map_err(|e| {
        tracing::warn!(error = %e, domain, "cannot read dead letters");
        Problem::unavailable(format!("cannot read the dead letters of {domain}: {e}"))
    })
}

/// `GET /v1/admin/dlq` (API key with `ops`): the dead letters of every
/// domain of the shop.
#[utoipa::path(get, path = "/v1/admin/dlq", tag = "admin",
    params(DlqQuery),
    security(("api_key" = ["ops"])),
    responses(
        (status = 200, description = "The dead letters, oldest first per domain", body = DeadLetters),
        (status = 400, description = "A bad subject filter", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn list(
    State(edge): Shared,
    key: KeyHolder,
    Params(query): Params<DlqQuery>,
) -> Result<Json<DeadLetters>, Problem> {
    key.require(OPS)?;
    let mut items = Vec::new();
    for domain in domains(&edge, &query)? {
        for l in read(&edge, domain).await? {
            let subject_ok = query
                .subject
                .as_deref()
                .is_none_or(|f| subject::matches(f, l.original_subject()));
            let group_ok = query.group.as_deref().is_none_or(|g| g == l.group());
            if subject_ok && group_ok {
                items.push(DeadLetterView::from(&l));
            }
        }
    }
    Ok(Json(DeadLetters { items }))
}

/// The dead letter `id` names, if it is still there.
async fn find(edge: &Edge, id: &str) -> Result<DeadLetter, Problem> {
    let missing = || {
        Problem::not_found(format!(
            "no dead letter {id} (redriven, purged, or never there)"
        ))
    };
    let (domain, rest) = id.split_once(':').ok_or_else(missing)?;
    if rest.is_empty() || !edge.dead_letter_domains.iter().any(|d| d == domain) {
        return Err(missing());
    }
    read(edge, domain)
        .await?
        .into_iter()
        .find(|l| l.id() == id)
        .ok_or_else(missing)
}

/// `POST /v1/admin/dlq/{id}/redrive` (API key with `ops`): publishes the
/// dead letter again on its original subject and removes it from the list.
#[utoipa::path(post, path = "/v1/admin/dlq/{id}/redrive", tag = "admin",
    params(("id" = String, Path, description = "The dead letter's id (`<domain>:<sequence>`)")),
    security(("api_key" = ["ops"])),
    responses(
        (status = 200, description = "Redriven", body = Resolution),
        (status = 404, description = "No such dead letter (or already redriven or purged)", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn redrive(
    State(edge): Shared,
    key: KeyHolder,
    Segment(id): Segment<String>,
) -> Result<Json<Resolution>, Problem> {
    key.require(OPS)?;
    let letter = find(&edge, &id).await?;
    let ack = dead_letter::redrive(&*edge.broker, &letter, None)
        .await
        .map_err(|e| Problem::unavailable(format!("cannot redrive {id}: {e}")))?;
    tracing::info!(
        id,
        subject = letter.original_subject(),
        "dead letter redriven"
    );
    Ok(Json(Resolution {
        id,
        action: "redriven".to_owned(),
        subject: Some(letter.original_subject().to_owned()),
        sequence: ack.sequence,
    }))
}

/// `DELETE /v1/admin/dlq/{id}` (API key with `ops`): purges the dead letter
/// (removes it from the list without publishing it).
#[utoipa::path(delete, path = "/v1/admin/dlq/{id}", tag = "admin",
    params(("id" = String, Path, description = "The dead letter's id (`<domain>:<sequence>`)")),
    security(("api_key" = ["ops"])),
    responses(
        (status = 200, description = "Purged", body = Resolution),
        (status = 404, description = "No such dead letter (or already redriven or purged)", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn purge(
    State(edge): Shared,
    key: KeyHolder,
    Segment(id): Segment<String>,
) -> Result<Json<Resolution>, Problem> {
    key.require(OPS)?;
    let letter = find(&edge, &id).await?;
    dead_letter::purge(&*edge.broker, &letter)
        .await
        .map_err(|e| Problem::unavailable(format!("cannot purge {id}: {e}")))?;
    tracing::info!(id, "dead letter purged");
    Ok(Json(Resolution {
        id,
        action: "purged".to_owned(),
        subject: None,
        sequence: None,
    }))
}
