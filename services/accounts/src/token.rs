//! Access tokens: EdDSA (Ed25519) JWTs issued at login, and the
//! [`Verifier`] that services (the REST edge) check them with.
//!
//! A token's header names its key (`kid`); its claims are the account
//! (`sub`), space-separated scopes (`scope`), `exp`, `iat`, `nbf`, a
//! UUIDv7 `jti`, and `iss` = [`ISSUER`]. Verifiers get the public keys as
//! JWKs from `accounts.cmd.public_key` or `accounts.signing_key.published`.
//!
//! The verifier pins the algorithm: whatever a token's header says, only
//! EdDSA with a known key id is checked, so `alg: none` and the HS256/RS256
//! confusions are refused before any key is used.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sluice_proto::shop::accounts::v1::Jwk;

/// The `iss` of every token.
pub const ISSUER: &str = "sluice-accounts";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The account id.
    pub sub: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issue time (seconds since the epoch).
    pub iat: u64,
    /// Not valid before (seconds since the epoch).
    pub nbf: u64,
    /// Token id (UUIDv7).
    pub jti: String,
    /// Issuer, [`ISSUER`].
    pub iss: String,
}

impl Claims {
    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split_whitespace()
    }

    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }
}

/// Why a token is refused (or a key is unusable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or the header or claims do not parse.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names another algorithm than EdDSA.
    #[error("algorithm {0:?} is not accepted (only EdDSA)")]
    Algorithm(String),
    /// The header's `kid` is missing or names no known key.
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// The signature does not match.
    #[error("invalid signature")]
    Signature,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("token not valid yet")]
    NotYetValid,
    /// `iss` is not [`ISSUER`].
    #[error("wrong issuer")]
    Issuer,
    /// A key is not an Ed25519 JWK, or cannot sign.
    #[error("unusable key: {0}")]
    Key(String),
}

/// An Ed25519 public key as a JWK (`kty` OKP, `crv` Ed25519, `alg` EdDSA).
pub fn jwk(kid: &str, public_key: &[u8]) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: URL_SAFE_NO_PAD.encode(public_key),
        kid: kid.into(),
        alg: "EdDSA".into(),
    }
}

/// Checks access tokens against the accounts service's public keys.
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The parts of a JWT header the verifier looks at before any key.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl Verifier {
    /// A verifier trusting `keys` (Ed25519 JWKs, e.g. the reply to
    /// `accounts.cmd.public_key`).
    ///
    /// # Errors
    /// [`TokenError::Key`]: no keys, or one is not an Ed25519 public key
    /// with a key id.
    pub fn from_jwks<'a>(keys: impl IntoIterator<Item = &'a Jwk>) -> Result<Self, TokenError> {
        let mut out = HashMap::new();
        for k in keys {
            if k.kty != "OKP" || k.crv != "Ed25519" {
                return Err(TokenError::Key(format!(
                    "{}: kty {:?} crv {:?} is not an Ed25519 key",
                    k.kid, k.kty, k.crv
                )));
            }
            if !k.alg.is_empty() && k.alg != "EdDSA" {
                return Err(TokenError::Key(format!("{}: alg {:?}", k.kid, k.alg)));
            }
            if k.kid.is_empty() {
                return Err(TokenError::Key("a key has no kid".into()));
            }
            let raw = URL_SAFE_NO_PAD
                .decode(k.x.as_bytes())
                .map_err(|e| TokenError::Key(format!("{}: x is not base64url: {e}", k.kid)))?;
            if raw.len() != 32 {
                return Err(TokenError::Key(format!(
                    "{}: x has {} bytes, not 32",
                    k.kid,
                    raw.len()
                )));
            }
            out.insert(k.kid.clone(), DecodingKey::from_ed_der(&raw));
        }
        if out.is_empty() {
            return Err(TokenError::Key("no keys".into()));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub"]);
        Ok(Self {
            keys: out,
            validation,
        })
    }

    /// The claims of `token` if it is an EdDSA JWT signed by a known key,
    /// issued by [`ISSUER`], and valid now (± [`LEEWAY_SECS`]).
    ///
    /// # Errors
    /// Why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = token
            .split('.')
            .next()
            .ok_or_else(|| TokenError::Malformed("empty".into()))?;
        let header = URL_SAFE_NO_PAD
            .decode(header.as_bytes())
            .map_err(|e| TokenError::Malformed(format!("header is not base64url: {e}")))?;
        let header: RawHeader = serde_json::from_slice(&header)
            .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        // Pinned: the header's choice of algorithm is checked, never followed.
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm(header.alg));
        }
        let kid = header.kid.unwrap_or_default();
        let Some(key) = self.keys.get(&kid) else {
            return Err(TokenError::UnknownKey(kid));
        };
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer => TokenError::Issuer,
                ErrorKind::InvalidAlgorithm => TokenError::Algorithm("EdDSA".into()),
                _ => TokenError::Malformed(e.to_string()),
            })
    }
}

/// Signs access tokens with one Ed25519 key.
pub(crate) struct Signer {
    kid: String,
    key: EncodingKey,
}

impl Signer {
    /// A signer with key `kid` from its PKCS#8 document.
    pub(crate) fn new(kid: &str, pkcs8: &[u8]) -> Result<Self, TokenError> {
        // Parse once here, so a corrupt stored key fails at start, not at login.
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| TokenError::Key(format!("{kid}: {e}")))?;
        Ok(Self {
            kid: kid.to_owned(),
            key: EncodingKey::from_ed_der(pkcs8),
        })
    }

    /// A token for account `sub` granting `scope`, valid for `ttl` from now.
    pub(crate) fn issue(
        &self,
        sub: &str,
        scope: &str,
        ttl: Duration,
    ) -> Result<(String, Claims), TokenError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            scope: scope.to_owned(),
            exp: now.saturating_add(ttl.as_secs()),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::now_v7().to_string(),
            iss: ISSUER.to_owned(),
        };
        Ok((self.sign(&claims)?, claims))
    }

    /// `claims` signed, with this key's `kid` in the header.
    pub(crate) fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| TokenError::Key(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    /// A fresh key pair: its signer and its public JWK.
    fn key(kid: &str) -> (Signer, Jwk) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = jwk(kid, pair.public_key().as_ref());
        (Signer::new(kid, pkcs8.as_ref()).unwrap(), jwk)
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims(exp: u64, nbf: u64) -> Claims {
        Claims {
            sub: "acc-1".into(),
            scope: "orders:read orders:write".into(),
            exp,
            iat: now(),
            nbf,
            jti: uuid::Uuid::now_v7().to_string(),
            iss: ISSUER.into(),
        }
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    /// A token put together by hand: header and claims as given, any signature.
    fn craft(header: &serde_json::Value, claims: &Claims, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            b64(header),
            b64(&serde_json::to_value(claims).unwrap()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[test]
    fn a_token_from_the_signer_verifies_with_its_public_key() {
        let (signer, jwk) = key("k1");
        let v = Verifier::from_jwks([&jwk]).unwrap();
        let (token, issued) = signer
            .issue("acc-1", "orders:read ops", Duration::from_secs(900))
            .unwrap();
        let c = v.verify(&token).unwrap();
        assert_eq!(c, issued);
        assert_eq!(c.exp - c.iat, 900);
        assert!(c.has_scope("ops") && !c.has_scope("catalog:write"));
        assert_eq!(c.iss, "sluice-accounts");
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(header.alg, Algorithm::EdDSA);
    }

    #[test]
    fn any_of_several_keys_verifies() {
        let (s1, j1) = key("k1");
        let (s2, j2) = key("k2");
        let v = Verifier::from_jwks([&j1, &j2]).unwrap();
        for s in [s1, s2] {
            let (t, _) = s.issue("a", "ops", Duration::from_secs(60)).unwrap();
            v.verify(&t).unwrap();
        }
    }

    #[test]
    fn alg_none_is_refused() {
        let (_, jwk) = key("k1");
        let v = Verifier::from_jwks([&jwk]).unwrap();
        let header = serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k1"});
        let token = craft(&header, &claims(now() + 600, now()), b"");
        assert_eq!(v.verify(&token), Err(TokenError::Algorithm("none".into())));
        let header = serde_json::json!({"alg": "None", "kid": "k1"});
        let token = craft(&header, &claims(now() + 600, now()), b"");
        assert_eq!(v.verify(&token), Err(TokenError::Algorithm("None".into())));
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        // The classic confusion: HMAC keyed with the (public) verification key.
        let (_, jwk) = key("k1");
        let v = Verifier::from_jwks([&jwk]).unwrap();
        let public = URL_SAFE_NO_PAD.decode(&jwk.x).unwrap();
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
        let c = claims(now() + 600, now());
        let signing_input = format!(
            "{}.{}",
            b64(&header),
            b64(&serde_json::to_value(&c).unwrap())
        );
        for secret in [public.as_slice(), jwk.x.as_bytes()] {
            let mac = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
                signing_input.as_bytes(),
            );
            let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
            assert_eq!(v.verify(&token), Err(TokenError::Algorithm("HS256".into())));
        }
    }

    #[test]
    fn rs256_is_refused() {
        let (_, jwk) = key("k1");
        let v = Verifier::from_jwks([&jwk]).unwrap();
        let header = serde_json::json!({"alg": "RS256", "kid": "k1"});
        let token = craft(&header, &claims(now() + 600, now()), &[7u8; 256]);
        assert_eq!(v.verify(&token), Err(TokenError::Algorithm("RS256".into())));
    }

    #[test]
    fn a_token_of_an_unknown_or_missing_kid_is_refused() {
        let (other, _) = key("k-other");
        let (_, jwk) = key("k1");
        let v = Verifier::from_jwks([&jwk]).unwrap();
        let (t, _) = other.issue("a", "ops", Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(&t), Err(TokenError::UnknownKey("k-other".into())));
        let header = serde_json::json!({"alg": "EdDSA"});
        let token = craft(&header, &claims(now() + 600, now()), &[0u8; 64]);
        assert_eq!(v.verify(&token), Err(TokenError::UnknownKey(String::new())));
    }

    #[test]
    fn a_forged_signature_is_refused() {
        let (_, jwk) = key("k1");
        // Another key claiming to be k1.
        let (impostor, _) = key("k1");
        let v = Verifier::from_jwks([&jwk]).unwrap();
        let (t, _) = impostor.issue("a", "ops", Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(&t), Err(TokenError::Signature));

        // A genuine token whose claims were changed afterwards.
        let (signer, jwk) = key("k2");
        let v = Verifier::from_jwks([&jwk]).unwrap();
        let (t, mut c) = signer
            .issue("a", "orders:read", Duration::from_secs(60))
            .unwrap();
        c.scope = "ops".into();
        let parts: Vec<&str> = t.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_value(&c).unwrap()),
            parts[2]
        );
        assert_eq!(v.verify(&tampered), Err(TokenError::Signature));
    }

    #[test]
    fn expiry_and_not_before_allow_thirty_seconds_of_skew() {
        let (signer, jwk) = key("k1");
        let v = Verifier::from_jwks([&jwk]).unwrap();
        let t = now();
        let ok = signer.sign(&claims(t - 10, t - 100)).unwrap();
        v.verify(&ok)
            .expect("expired 10 s ago is within the leeway");
        let late = signer.sign(&claims(t - 60, t - 100)).unwrap();
        assert_eq!(v.verify(&late), Err(TokenError::Expired));
        let soon = signer.sign(&claims(t + 600, t + 10)).unwrap();
        v.verify(&soon).expect("valid in 10 s is within the leeway");
        let early = signer.sign(&claims(t + 600, t + 120)).unwrap();
        assert_eq!(v.verify(&early), Err(TokenError::NotYetValid));
    }

    #[test]
    fn a_token_of_another_issuer_is_refused() {
        let (signer, jwk) = key("k1");
        let v = Verifier::from_jwks([&jwk]).unwrap();
        let mut c = claims(now() + 600, now());
        c.iss = "someone-else".into();
        assert_eq!(v.verify(&signer.sign(&c).unwrap()), Err(TokenError::Issuer));
    }

    #[test]
    fn garbage_is_malformed() {
        let (_, jwk) = key("k1");
        let v = Verifier::from_jwks([&jwk]).unwrap();
        for t in ["", "abc", "a.b.c", "eyJhbGciOiJFZERTQSJ9"] {
            assert!(
                matches!(
                    v.verify(t),
                    Err(TokenError::Malformed(_) | TokenError::UnknownKey(_))
                ),
                "{t}: {:?}",
                v.verify(t)
            );
        }
    }

    #[test]
    fn keys_that_are_not_ed25519_jwks_are_refused() {
        let (_, good) = key("k1");
        assert!(Verifier::from_jwks([]).is_err());
        let mut rsa = good.clone();
        rsa.kty = "RSA".into();
        assert!(Verifier::from_jwks([&rsa]).is_err());
        let mut short = good.clone();
        short.x = URL_SAFE_NO_PAD.encode([1u8; 16]);
        assert!(Verifier::from_jwks([&short]).is_err());
        let mut hs = good.clone();
        hs.alg = "HS256".into();
        assert!(Verifier::from_jwks([&hs]).is_err());
        let mut nokid = good;
        nokid.kid = String::new();
        assert!(Verifier::from_jwks([&nokid]).is_err());
    }
}
