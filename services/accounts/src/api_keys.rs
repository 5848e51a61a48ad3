//! API keys with scopes, for machines: `sk_<key_id>_<secret>`, where the
//! key id is 32 hex digits (a UUIDv7) and the secret 32 random bytes in
//! base64url without padding. The whole key is shown once, in the reply to
//! `accounts.cmd.create_api_key`; only the hex SHA-256 of the secret's text
//! is stored (and carried by `accounts.apikey.created`, so other services
//! can project keys and check them with [`parse_key`] and [`secret_hash`]).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set, TransactionTrait};
use sluice_kit::HandlerError;
use sluice_kit::db::now_micros;
use sluice_proto::Envelope;
use sluice_proto::shop::accounts::v1::{
    ApiKeyCreated, ApiKeyResult, ApiKeyRevoked, CreateApiKey, RevokeApiKey, VerifyApiKey,
    VerifyApiKeyResult,
};
use subtle::ConstantTimeEq;

use crate::tables::{accounts, api_keys};
use crate::{Accounts, Refusal, SCOPES};

/// Every key starts with this.
pub const PREFIX: &str = "sk_";
/// Random bytes in a secret.
const SECRET_BYTES: usize = 32;
/// Characters of a secret's base64url text (32 bytes, no padding).
pub const SECRET_CHARS: usize = 43;
/// Longest key name, in characters.
const NAME_MAX: usize = 100;

/// `bytes` in base64url without padding.
pub(crate) fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The key id and secret of a key shaped `sk_<key_id>_<secret>`, or `None`.
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(PREFIX)?.split_once('_')?;
    let id_ok = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let secret_ok = secret.len() == SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

/// The hex SHA-256 of a secret's text, as stored and published.
pub fn secret_hash(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    sluice_kit::hex::encode(digest.as_ref())
}

/// `scopes` checked against [`SCOPES`], without repeats, in request order.
fn check_scopes(scopes: &[String]) -> Result<Vec<String>, String> {
    if scopes.is_empty() {
        return Err(format!(
            "scopes must name at least one of {}",
            SCOPES.join(", ")
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for s in scopes {
        if !SCOPES.contains(&s.as_str()) {
            return Err(format!(
                "unknown scope {s:?} (known: {})",
                SCOPES.join(", ")
            ));
        }
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    Ok(out)
}

fn refused(why: Refusal, error: impl Into<String>) -> ApiKeyResult {
    ApiKeyResult {
        ok: false,
        error_code: why.code(),
        error: error.into(),
        ..ApiKeyResult::default()
    }
}

fn result(row: &api_keys::Model) -> ApiKeyResult {
    ApiKeyResult {
        ok: true,
        key_id: row.id.clone(),
        account_id: row.account_id.clone(),
        name: row.name.clone(),
        scopes: row.scopes.split_whitespace().map(str::to_owned).collect(),
        ..ApiKeyResult::default()
    }
}

/// `accounts.cmd.create_api_key`: the reply carries the whole key, once.
pub(crate) async fn create(
    acc: Arc<Accounts>,
    request: Envelope,
    c: CreateApiKey,
) -> Result<ApiKeyResult, HandlerError> {
    let name = c.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > NAME_MAX {
        return Ok(refused(
            Refusal::Invalid,
            format!("name must have 1 to {NAME_MAX} characters"),
        ));
    }
    let scopes = match check_scopes(&c.scopes) {
        Ok(s) => s,
        Err(e) => return Ok(refused(Refusal::Invalid, e)),
    };
    if c.account_id.is_empty() {
        return Ok(refused(Refusal::Invalid, "account_id is required"));
    }
    let txn = acc.db.begin().await?;
    if accounts::Entity::find_by_id(c.account_id.clone())
        .one(&txn)
        .await?
        .is_none()
    {
        return Ok(refused(
            Refusal::NotFound,
            format!("no account {}", c.account_id),
        ));
    }
    let mut secret = [0u8; SECRET_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| HandlerError::Transient("no randomness for an API key".into()))?;
    let secret = base64url(&secret);
    let row = api_keys::Model {
        id: uuid::Uuid::now_v7().simple().to_string(),
        account_id: c.account_id.clone(),
        name,
        scopes: scopes.join(" "),
        secret_hash: secret_hash(&secret),
        created_at: now_micros(),
        revoked_at: None,
    };
    api_keys::Entity::insert(api_keys::ActiveModel {
        id: Set(row.id.clone()),
        account_id: Set(row.account_id.clone()),
        name: Set(row.name.clone()),
        scopes: Set(row.scopes.clone()),
        secret_hash: Set(row.secret_hash.clone()),
        created_at: Set(row.created_at),
        revoked_at: Set(None),
    })
    .exec_without_returning(&txn)
    .await?;
    let event = ApiKeyCreated {
        key_id: row.id.clone(),
        account_id: row.account_id.clone(),
        scopes,
        key_hash: row.secret_hash.clone(),
        name: row.name.clone(),
    };
    let m = acc.emitter.event(
        &acc.subjects.api_key_created,
        &row.id,
        &event,
        request.correlation_id.as_deref(),
    );
    acc.emitter.commit(txn, &[m]).await?;
    tracing::info!(key = %row.id, account = %row.account_id, "API key created");
    Ok(ApiKeyResult {
        key: format!("{PREFIX}{}_{secret}", row.id),
        ..result(&row)
    })
}

/// `accounts.cmd.revoke_api_key`: revoking a revoked key is fine (and
/// announced once).
pub(crate) async fn revoke(
    acc: Arc<Accounts>,
    request: Envelope,
    r: RevokeApiKey,
) -> Result<ApiKeyResult, HandlerError> {
    if r.key_id.is_empty() {
        return Ok(refused(Refusal::Invalid, "key_id is required"));
    }
    let txn = acc.db.begin().await?;
    let row = api_keys::Entity::find_by_id(r.key_id.clone())
        .one(&txn)
        .await?
        .filter(|k| r.account_id.is_empty() || k.account_id == r.account_id);
    let Some(row) = row else {
        return Ok(refused(
            Refusal::NotFound,
            format!("no API key {}", r.key_id),
        ));
    };
    // Guarded, so of two concurrent revocations only one announces it.
    let changed = api_keys::Entity::update_many()
        .col_expr(api_keys::Column::RevokedAt, Expr::value(now_micros()))
        .filter(api_keys::Column::Id.eq(row.id.as_str()))
        .filter(api_keys::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?
        .rows_affected;
    let mut events = Vec::new();
    if changed == 1 {
        let event = ApiKeyRevoked {
            key_id: row.id.clone(),
            account_id: row.account_id.clone(),
        };
        events.push(acc.emitter.event(
            &acc.subjects.api_key_revoked,
            &row.id,
            &event,
            request.correlation_id.as_deref(),
        ));
        tracing::info!(key = %row.id, account = %row.account_id, "API key revoked");
    }
    acc.emitter.commit(txn, &events).await?;
    Ok(result(&row))
}

/// `accounts.cmd.verify_api_key`: who a presented key is for, if it is a
/// live key. The stored and presented hashes are compared in constant
/// time, and an unknown key id is compared against a dummy, so timing
/// tells nothing about the secret.
pub(crate) async fn verify(
    acc: Arc<Accounts>,
    _request: Envelope,
    v: VerifyApiKey,
) -> Result<VerifyApiKeyResult, HandlerError> {
    let Some((key_id, secret)) = parse_key(v.key.trim()) else {
        return Ok(VerifyApiKeyResult {
            error_code: Refusal::Invalid.code(),
            error: "not an API key (sk_<key_id>_<secret>)".into(),
            ..VerifyApiKeyResult::default()
        });
    };
    let row = api_keys::Entity::find_by_id(key_id.to_owned())
        .one(&acc.db)
        .await?;
    let presented = secret_hash(secret);
    let dummy = "0".repeat(presented.len());
    let stored = row
        .as_ref()
        .map_or(dummy.as_str(), |r| r.secret_hash.as_str());
    let same: bool = presented.as_bytes().ct_eq(stored.as_bytes()).into();
    match row {
        Some(r) if same && r.revoked_at.is_none() => Ok(VerifyApiKeyResult {
            ok: true,
            key_id: r.id,
            account_id: r.account_id,
            scopes: r.scopes.split_whitespace().map(str::to_owned).collect(),
            ..VerifyApiKeyResult::default()
        }),
        _ => Ok(VerifyApiKeyResult {
            error_code: Refusal::Unauthorized.code(),
            error: "unknown or revoked API key".into(),
            ..VerifyApiKeyResult::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_parses_into_id_and_secret() {
        let secret = base64url(&[0xfb; 32]);
        assert_eq!(secret.len(), SECRET_CHARS);
        let id = "0190f3a2b4c5d6e7f8091a2b3c4d5e6f";
        let key = format!("sk_{id}_{secret}");
        assert_eq!(parse_key(&key), Some((id, secret.as_str())));
        // A secret may itself contain '_'.
        let underscored = format!("sk_{id}_{}", "_".repeat(43));
        assert!(parse_key(&underscored).is_some());
        for bad in [
            "",
            "sk_",
            &format!("pk_{id}_{secret}"),
            &format!("sk_{}_{secret}", &id[1..]),
            &format!("sk_{}_{secret}", id.to_uppercase()),
            &format!("sk_{id}_{}", &secret[1..]),
            &format!("sk_{id}_{}!", &secret[1..]),
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_secret_hash_is_hex_sha256() {
        assert_eq!(
            secret_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn scopes_must_be_known_and_are_deduplicated() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            check_scopes(&s(&["orders:read", "ops", "orders:read"])),
            Ok(s(&["orders:read", "ops"]))
        );
        assert!(check_scopes(&[]).is_err());
        assert!(check_scopes(&s(&["orders:delete"])).is_err_and(|e| e.contains("orders:delete")));
    }
}
