//! Who is calling: Bearer JWTs verified with the accounts service's public
//! keys (fetched by request/reply, fetched again when a token names a key
//! the edge does not know yet).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sea_orm::EntityTrait;
use sluice_accounts::token::{Claims, TokenError, Verifier};
use sluice_kit::rpc::Requester;
use sluice_proto::shop::accounts::v1::{GetPublicKey, PublicKeys};
use tokio::sync::RwLock;

use crate::Edge;
use crate::problem::Problem;

/// The accounts service's token keys, as the edge knows them, and the
/// tokens they verified lately.
pub(crate) struct Keys {
    requester: Requester,
    subject: String,
    verifier: RwLock<Option<(Verifier, Instant)>>,
    /// Token text → its claims, so a client's every request does not pay
    /// for parsing and an Ed25519 verification; an entry serves until its
    /// `exp` (no leeway), and all go when the keys are fetched again.
    verified: std::sync::Mutex<HashMap<Box<str>, Claims>>,
}

/// Most tokens remembered; past it the expired ones go, and if none had,
/// all do.
const VERIFIED_MAX: usize = 10_000;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How often an unknown key may make the edge ask for the keys again.
const REFRESH: Duration = Duration::from_secs(5);

impl Keys {
    pub(crate) fn new(requester: Requester, subject: String) -> Self {
        Self {
            requester,
            subject,
            verifier: RwLock::new(None),
            verified: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The claims of `token` if it was verified and has not expired.
    fn remembered(&self, token: &str) -> Option<Claims> {
        let verified = self.verified.lock().ok()?;
        let claims = verified.get(token)?;
        (unix_now() < claims.exp).then(|| claims.clone())
    }

    fn remember(&self, token: &str, claims: &Claims) {
        let Ok(mut verified) = self.verified.lock() else {
            return;
        };
        if verified.len() >= VERIFIED_MAX {
            let now = unix_now();
            verified.retain(|_, c| now < c.exp);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims.clone());
    }

    /// Asks the accounts service for its keys.
    pub(crate) async fn refresh(&self) -> Result<(), Problem> {
        let keys: PublicKeys = self
            .requester
            .request(&self.subject, &GetPublicKey {}, None)
            .await
            .map_err(|e| {
                Problem::unavailable(format!("the accounts service did not answer: {e}"))
            })?;
        let verifier = Verifier::from_jwks(keys.keys.iter()).map_err(Problem::internal)?;
        *self.verifier.write().await = Some((verifier, Instant::now()));
        // A key taken out of the set no longer vouches for its tokens.
        if let Ok(mut verified) = self.verified.lock() {
            verified.clear();
        }
        Ok(())
    }

    /// The claims of `token`, or 401.
    pub(crate) async fn verify(&self, token: &str) -> Result<Claims, Problem> {
        if let Some(c) = self.remembered(token) {
            return Ok(c);
        }
        let claims = self.verify_now(token).await?;
        self.remember(token, &claims);
        Ok(claims)
    }

    async fn verify_now(&self, token: &str) -> Result<Claims, Problem> {
        let stale = match &*self.verifier.read().await {
            None => true,
            Some((v, at)) => match v.verify(token) {
                Ok(c) => return Ok(c),
                Err(TokenError::UnknownKey(_)) => at.elapsed() > REFRESH,
                Err(e) => return Err(Problem::unauthorized(format!("invalid token: {e}"))),
            },
        };
        if stale {
            self.refresh().await?;
        }
        match &*self.verifier.read().await {
            Some((v, _)) => v
                .verify(token)
                .map_err(|e| Problem::unauthorized(format!("invalid token: {e}"))),
            None => Err(Problem::unavailable("no token keys yet")),
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims);

impl Caller {
    /// 403 unless the token grants `scope`.
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        if self.0.has_scope(scope) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "the token lacks the scope {scope}"
            )))
        }
    }

    /// The account id.
    pub fn id(&self) -> &str {
        &self.0.sub
    }
}

impl FromRequestParts<Arc<Edge>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, edge: &Arc<Edge>) -> Result<Self, Problem> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header is not a Bearer token")
            })?;
        Ok(Self(edge.keys.verify(token).await?))
    }
}

/// A caller holding an API key (`X-Api-Key`): the admin key
/// (`SLUICE_ADMIN_KEY`, every scope) or a key accounts issued, compared by
/// hash in constant time.
#[derive(Debug, Clone)]
pub struct KeyHolder {
    /// The key's scopes.
    scopes: Vec<String>,
}

impl KeyHolder {
    /// 403 unless the key grants `scope`.
    pub fn require(&self, scope: &str) -> Result<(), Problem> {
        if self.scopes.iter().any(|s| s == scope || s == "*") {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "the API key lacks the scope {scope}"
            )))
        }
    }
}

/// Equal in constant time (for secrets and their hashes).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(subtle::ConstantTimeEq::ct_eq(a, b))
}

impl FromRequestParts<Arc<Edge>> for KeyHolder {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, edge: &Arc<Edge>) -> Result<Self, Problem> {
        let key = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Problem::unauthorized("an X-Api-Key header is required"))?;
        if let Some(admin) = &edge.admin_key
            && same(admin.expose().as_bytes(), key.as_bytes())
        {
            return Ok(Self {
                scopes: vec!["*".to_owned()],
            });
        }
        let refused = || Problem::unauthorized("the API key is not valid");
        let (id, secret) = sluice_accounts::api_keys::parse_key(key).ok_or_else(refused)?;
        let row = crate::tables::api_keys::Entity::find_by_id(id.to_owned())
            .one(&edge.reads)
            .await?
            .ok_or_else(refused)?;
        let hash = sluice_accounts::api_keys::secret_hash(secret);
        if row.revoked || !same(row.key_hash.as_bytes(), hash.as_bytes()) {
            return Err(refused());
        }
        Ok(Self {
            scopes: row.scopes.split_whitespace().map(str::to_owned).collect(),
        })
    }
}
