//! The accounts service on every broker backend, with SQLite and
//! PostgreSQL: registration and its refusals, login and tokens that verify
//! with the published key, API keys created, verified and revoked, bad
//! requests answered with an error, and the signing key kept across
//! restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use sluice_accounts::api_keys::{parse_key, secret_hash};
use sluice_accounts::token::{TokenError, Verifier};
use sluice_accounts::{AccountsConfig, Running, Subjects};
use sluice_broker::{
    InboundMessage, OutboundMessage, StartPosition, SubscribeOptions, Subscription,
};
use sluice_kit::rpc::{RequestError, Requester};
use sluice_kit::testing::{BrokerBackend, DbBackend, TestBroker, TestDb};
use sluice_kit::{KitConfig, Metrics};
use sluice_proto::Envelope;
use sluice_proto::shop::accounts::v1::{
    AccountRegistered, ApiKeyCreated, ApiKeyResult, ApiKeyRevoked, CreateApiKey, GetPublicKey,
    Login, LoginResult, PublicKeys, Register, RegisterResult, RevokeApiKey, SigningKeyPublished,
    VerifyApiKey, VerifyApiKeyResult,
};

const WAIT: Duration = Duration::from_secs(30);

struct Env {
    tb: TestBroker,
    tdb: TestDb,
    subjects: Subjects,
    running: Option<Running>,
    requester: Requester,
}

impl Env {
    async fn start(b: BrokerBackend, d: DbBackend) -> Self {
        let tb = TestBroker::start(b).await;
        let tdb = TestDb::start(d).await;
        let subjects = Subjects::new(&tb.domain);
        let requester = Requester::new(tb.broker.clone(), "test", Duration::from_secs(20));
        let mut env = Self {
            tb,
            tdb,
            subjects,
            running: None,
            requester,
        };
        env.restart(AccountsConfig::default()).await;
        env
    }

    /// Stops the service if it runs, then starts it with `config`.
    async fn restart(&mut self, config: AccountsConfig) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        let running = sluice_accounts::start(
            self.tb.broker.clone(),
            self.tdb.db.clone(),
            &KitConfig::default(),
            Metrics::new(),
            self.subjects.clone(),
            config,
        )
        .await
        .unwrap();
        self.running = Some(running);
    }

    async fn ask<Req, Resp>(&self, subject: &str, req: &Req) -> Resp
    where
        Req: prost::Message + prost::Name,
        Resp: prost::Message + prost::Name + Default,
    {
        self.requester
            .request(subject, req, Some("req-1"))
            .await
            .unwrap()
    }

    async fn register(&self, email: &str, password: &str) -> RegisterResult {
        let r = Register {
            email: email.into(),
            password: password.into(),
        };
        self.ask(&self.subjects.register, &r).await
    }

    async fn login(&self, email: &str, password: &str) -> LoginResult {
        let l = Login {
            email: email.into(),
            password: password.into(),
        };
        self.ask(&self.subjects.login, &l).await
    }

    async fn public_keys(&self) -> PublicKeys {
        self.ask(&self.subjects.public_key, &GetPublicKey {}).await
    }

    async fn create_key(&self, account_id: &str, name: &str, scopes: &[&str]) -> ApiKeyResult {
        let c = CreateApiKey {
            account_id: account_id.into(),
            name: name.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        };
        self.ask(&self.subjects.create_api_key, &c).await
    }

    async fn verify_key(&self, key: &str) -> VerifyApiKeyResult {
        let v = VerifyApiKey { key: key.into() };
        self.ask(&self.subjects.verify_api_key, &v).await
    }

    async fn revoke_key(&self, key_id: &str, account_id: &str) -> ApiKeyResult {
        let r = RevokeApiKey {
            key_id: key_id.into(),
            account_id: account_id.into(),
        };
        self.ask(&self.subjects.revoke_api_key, &r).await
    }

    async fn observe(&self) -> Subscription {
        let filter = format!("{}.>", self.tb.domain);
        let o = SubscribeOptions::new("observer", &filter).start(StartPosition::Beginning);
        self.tb.broker.subscribe(o).await.unwrap()
    }

    async fn cleanup(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        self.tb.cleanup().await;
        self.tdb.cleanup().await;
    }
}

/// The next event on `sub`, acked.
async fn next(sub: &mut Subscription) -> InboundMessage {
    let d = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap();
    let m = d.message.clone();
    d.ack().await.unwrap();
    m
}

/// The next event on `sub`, which must be a `T`.
async fn next_of<T>(sub: &mut Subscription) -> (InboundMessage, T)
where
    T: prost::Message + prost::Name + Default,
{
    let m = next(sub).await;
    let (_, ev) = m
        .decode::<T>()
        .unwrap_or_else(|e| panic!("expected {}: {e}", T::full_name()));
    (m, ev)
}

/// Nothing more arrives on `sub` for a moment.
async fn quiet(sub: &mut Subscription) {
    let more = tokio::time::timeout(Duration::from_millis(700), sub.next()).await;
    assert!(more.is_err(), "unexpected event {more:?}");
}

fn refused(code: &str, error: &str, got_code: &str, got_error: &str, what: &str) {
    assert_eq!(got_code, code, "{what}: {got_error}");
    assert!(
        got_error.contains(error),
        "{what}: {got_error:?} should mention {error:?}"
    );
}

async fn registration_normalises_emails_and_refuses_duplicates_and_bad_input(
    b: BrokerBackend,
    d: DbBackend,
) {
    let env = Env::start(b, d).await;
    let mut events = env.observe().await;
    let _ = next_of::<SigningKeyPublished>(&mut events).await;

    let r = env.register("  Ann@Example.COM ", "correct horse").await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.email, "ann@example.com");
    assert!(!r.account_id.is_empty());
    let (m, ev) = next_of::<AccountRegistered>(&mut events).await;
    assert_eq!(
        (ev.account_id.as_str(), ev.email.as_str()),
        (r.account_id.as_str(), "ann@example.com")
    );
    assert_eq!(m.headers.get("correlation-id"), Some("req-1"));
    assert_eq!(m.headers.get("ce-subject"), Some(r.account_id.as_str()));

    let dup = env.register("ann@example.com", "another password").await;
    assert!(!dup.ok);
    refused(
        "conflict",
        "already exists",
        &dup.error_code,
        &dup.error,
        "duplicate",
    );

    for (email, password, error) in [
        ("ann.example.com", "long enough", "'@'"),
        ("", "long enough", "email is required"),
        (
            &format!("{}@example.com", "a".repeat(250)),
            "long enough",
            "254",
        ),
        ("bob@example.com", "short", "8 to 128 characters"),
        ("bob@example.com", &"x".repeat(129), "8 to 128 characters"),
    ] {
        let r = env.register(email, password).await;
        assert!(!r.ok);
        refused("invalid", error, &r.error_code, &r.error, email);
    }
    quiet(&mut events).await;
    events.close().await;
    env.cleanup().await;
}

async fn login_issues_a_token_that_verifies_with_the_published_key(b: BrokerBackend, d: DbBackend) {
    let env = Env::start(b, d).await;
    let mut events = env.observe().await;
    let (_, published) = next_of::<SigningKeyPublished>(&mut events).await;
    let published = published.key.unwrap();
    let keys = env.public_keys().await;
    assert_eq!(keys.keys, vec![published.clone()], "one key, as published");
    let jwk = &keys.keys[0];
    assert_eq!(
        (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()),
        ("OKP", "Ed25519", "EdDSA")
    );
    assert_eq!(jwk.x.len(), 43, "32 bytes in base64url");

    let account = env.register("cleo@example.com", "correct horse").await;
    let ok = env.login(" CLEO@example.com", "correct horse").await;
    assert!(ok.ok, "{ok:?}");
    assert_eq!(ok.token_type, "Bearer");
    assert_eq!(ok.expires_in, 900);
    assert_eq!(ok.account_id, account.account_id);

    let verifier = Verifier::from_jwks(&keys.keys).unwrap();
    let claims = verifier.verify(&ok.access_token).unwrap();
    assert_eq!(claims.sub, account.account_id);
    assert_eq!(claims.iss, "sluice-accounts");
    assert_eq!(claims.scope, "orders:read orders:write");
    assert_eq!(claims.scope, ok.scope);
    assert_eq!(claims.exp - claims.iat, 900);
    assert_eq!(claims.nbf, claims.iat);
    assert_eq!(
        uuid::Uuid::parse_str(&claims.jti)
            .unwrap()
            .get_version_num(),
        7
    );
    let header = jsonwebtoken::decode_header(&ok.access_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(jwk.kid.as_str()));
    let again = env.login("cleo@example.com", "correct horse").await;
    assert_ne!(
        verifier.verify(&again.access_token).unwrap().jti,
        claims.jti,
        "each token has its own id"
    );

    let wrong = env.login("cleo@example.com", "wrong horse!").await;
    let unknown = env.login("nobody@example.com", "correct horse").await;
    let too_long = env.login("cleo@example.com", &"x".repeat(500)).await;
    for (what, r) in [
        ("wrong", &wrong),
        ("unknown", &unknown),
        ("too long", &too_long),
    ] {
        assert!(!r.ok && r.access_token.is_empty(), "{what}: {r:?}");
        refused(
            "unauthorized",
            "wrong email or password",
            &r.error_code,
            &r.error,
            what,
        );
    }
    let empty = env.login("", "").await;
    refused(
        "invalid",
        "required",
        &empty.error_code,
        &empty.error,
        "empty",
    );

    let tampered = format!("{}x", &ok.access_token[..ok.access_token.len() - 1]);
    assert!(verifier.verify(&tampered).is_err());
    // Logins emit nothing.
    let _ = next_of::<AccountRegistered>(&mut events).await;
    quiet(&mut events).await;
    events.close().await;
    env.cleanup().await;
}

async fn api_keys_are_created_verified_and_revoked(b: BrokerBackend, d: DbBackend) {
    let env = Env::start(b, d).await;
    let mut events = env.observe().await;
    let _ = next_of::<SigningKeyPublished>(&mut events).await;
    let account = env.register("ops@example.com", "correct horse").await;
    let _ = next_of::<AccountRegistered>(&mut events).await;

    let created = env
        .create_key(
            &account.account_id,
            " deploy bot ",
            &["ops", "catalog:write", "ops"],
        )
        .await;
    assert!(created.ok, "{created:?}");
    assert_eq!(created.name, "deploy bot");
    assert_eq!(created.scopes, ["ops", "catalog:write"]);
    let (key_id, secret) = parse_key(&created.key).expect("sk_<key_id>_<secret>");
    assert_eq!(key_id, created.key_id);
    let (m, ev) = next_of::<ApiKeyCreated>(&mut events).await;
    assert_eq!(ev.key_id, created.key_id);
    assert_eq!(ev.account_id, account.account_id);
    assert_eq!(ev.scopes, ["ops", "catalog:write"]);
    assert_eq!(
        ev.key_hash,
        secret_hash(secret),
        "the event carries the hash"
    );
    assert!(!ev.key_hash.contains(secret));
    assert_eq!(m.headers.get("ce-subject"), Some(created.key_id.as_str()));

    let v = env.verify_key(&created.key).await;
    assert!(v.ok, "{v:?}");
    assert_eq!(
        (v.key_id.as_str(), v.account_id.as_str()),
        (created.key_id.as_str(), account.account_id.as_str())
    );
    assert_eq!(v.scopes, ["ops", "catalog:write"]);

    // One character of the secret changed.
    let last = created.key.chars().last().unwrap();
    let other = if last == 'A' { 'B' } else { 'A' };
    let wrong = format!("{}{other}", &created.key[..created.key.len() - 1]);
    let w = env.verify_key(&wrong).await;
    refused(
        "unauthorized",
        "unknown or revoked",
        &w.error_code,
        &w.error,
        "wrong secret",
    );
    let unknown = format!("sk_{}_{secret}", "0".repeat(32));
    let u = env.verify_key(&unknown).await;
    refused(
        "unauthorized",
        "unknown or revoked",
        &u.error_code,
        &u.error,
        "unknown id",
    );
    let junk = env.verify_key("Bearer hello").await;
    refused(
        "invalid",
        "not an API key",
        &junk.error_code,
        &junk.error,
        "junk",
    );

    let bad = env
        .create_key(&account.account_id, "x", &["orders:delete"])
        .await;
    refused(
        "invalid",
        "unknown scope \"orders:delete\"",
        &bad.error_code,
        &bad.error,
        "scope",
    );
    let none = env.create_key(&account.account_id, "x", &[]).await;
    refused(
        "invalid",
        "at least one",
        &none.error_code,
        &none.error,
        "no scopes",
    );
    let unnamed = env.create_key(&account.account_id, "  ", &["ops"]).await;
    refused(
        "invalid",
        "name",
        &unnamed.error_code,
        &unnamed.error,
        "no name",
    );
    let orphan = env.create_key("no-such-account", "x", &["ops"]).await;
    refused(
        "not_found",
        "no account",
        &orphan.error_code,
        &orphan.error,
        "orphan",
    );

    let not_yours = env.revoke_key(&created.key_id, "someone-else").await;
    refused(
        "not_found",
        "no API key",
        &not_yours.error_code,
        &not_yours.error,
        "not yours",
    );
    let revoked = env.revoke_key(&created.key_id, &account.account_id).await;
    assert!(revoked.ok, "{revoked:?}");
    assert!(revoked.key.is_empty(), "the key is never shown again");
    let (_, ev) = next_of::<ApiKeyRevoked>(&mut events).await;
    assert_eq!(ev.key_id, created.key_id);
    let v = env.verify_key(&created.key).await;
    refused(
        "unauthorized",
        "unknown or revoked",
        &v.error_code,
        &v.error,
        "revoked",
    );
    let twice = env.revoke_key(&created.key_id, "").await;
    assert!(twice.ok, "revoking again is fine: {twice:?}");
    let missing = env.revoke_key("nope", "").await;
    refused(
        "not_found",
        "no API key",
        &missing.error_code,
        &missing.error,
        "missing",
    );
    let blank = env.revoke_key("", "").await;
    refused(
        "invalid",
        "key_id",
        &blank.error_code,
        &blank.error,
        "blank",
    );
    quiet(&mut events).await;
    events.close().await;
    env.cleanup().await;
}

async fn malformed_requests_get_an_error_reply(b: BrokerBackend, d: DbBackend) {
    let env = Env::start(b, d).await;
    // A payload that does not decode.
    let e = Envelope::new::<Register>("/sluice/test");
    let garbage = OutboundMessage::new(
        &env.subjects.register,
        e.to_headers(),
        Bytes::from_static(&[0xff, 0xff, 0xff]),
    );
    let reply = env
        .tb
        .broker
        .request(garbage, Duration::from_secs(20))
        .await
        .unwrap();
    let error = reply
        .headers
        .get(sluice_kit::rpc::ERROR)
        .unwrap_or_default();
    assert!(error.contains("bad request"), "{error:?}");
    // A request of another type.
    let err = env
        .requester
        .request::<_, LoginResult>(&env.subjects.login, &VerifyApiKey { key: "x".into() }, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RequestError::Remote { message, permanent: true, .. } if message.contains("bad request")),
        "{err:?}"
    );
    // The service goes on answering.
    let r = env.register("dan@example.com", "correct horse").await;
    assert!(r.ok, "{r:?}");
    env.cleanup().await;
}

async fn the_signing_key_is_kept_across_restarts_and_the_ttl_is_configurable(
    b: BrokerBackend,
    d: DbBackend,
) {
    let mut env = Env::start(b, d).await;
    let before = env.public_keys().await;
    env.register("eve@example.com", "correct horse").await;
    let old = env.login("eve@example.com", "correct horse").await;

    env.restart(AccountsConfig {
        token_ttl: Duration::from_secs(60),
        login_scopes: vec!["orders:read".into()],
    })
    .await;
    let after = env.public_keys().await;
    assert_eq!(after, before, "the stored key is used again");
    let verifier = Verifier::from_jwks(&after.keys).unwrap();
    verifier.verify(&old.access_token).unwrap();
    let new = env.login("eve@example.com", "correct horse").await;
    assert_eq!(new.expires_in, 60);
    let claims = verifier.verify(&new.access_token).unwrap();
    assert_eq!(
        (claims.exp - claims.iat, claims.scope.as_str()),
        (60, "orders:read")
    );

    // Announced once, when it was created.
    let mut events = env.observe().await;
    let (_, published) = next_of::<SigningKeyPublished>(&mut events).await;
    assert_eq!(published.key.unwrap(), before.keys[0]);
    let _ = next_of::<AccountRegistered>(&mut events).await;
    quiet(&mut events).await;
    events.close().await;

    // A verifier of another key refuses the service's tokens.
    let mut foreign = before.keys[0].clone();
    foreign.kid = "someone-else".into();
    let stranger = Verifier::from_jwks([&foreign]).unwrap();
    assert!(matches!(
        stranger.verify(&new.access_token),
        Err(TokenError::UnknownKey(_))
    ));
    env.cleanup().await;
}

#[tokio::test]
async fn invalid_settings_are_refused_at_start() {
    let tb = TestBroker::start(BrokerBackend::Embedded).await;
    let tdb = TestDb::start(DbBackend::Sqlite).await;
    for config in [
        AccountsConfig {
            token_ttl: Duration::ZERO,
            ..AccountsConfig::default()
        },
        AccountsConfig {
            login_scopes: vec!["root".into()],
            ..AccountsConfig::default()
        },
    ] {
        let err = sluice_accounts::start(
            tb.broker.clone(),
            tdb.db.clone(),
            &KitConfig::default(),
            Metrics::new(),
            Subjects::new(&tb.domain),
            config,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, sluice_accounts::StartError::Config(_)),
            "{err}"
        );
    }
    let env = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<Vec<_>>()
    };
    let c = AccountsConfig::from_env(env(&[
        ("SLUICE_ACCOUNTS_TOKEN_TTL_SECS", "120"),
        ("SLUICE_ACCOUNTS_LOGIN_SCOPES", "ops orders:read"),
    ]))
    .unwrap();
    assert_eq!(c.token_ttl, Duration::from_secs(120));
    assert_eq!(c.login_scopes, ["ops", "orders:read"]);
    assert!(AccountsConfig::from_env(env(&[("SLUICE_ACCOUNTS_TOKEN_TTL_SECS", "soon")])).is_err());
    assert_eq!(
        AccountsConfig::from_env(env(&[])).unwrap(),
        AccountsConfig::default()
    );
    tb.cleanup().await;
    tdb.cleanup().await;
}

sluice_kit::backend_matrix!(
    registration_normalises_emails_and_refuses_duplicates_and_bad_input,
    login_issues_a_token_that_verifies_with_the_published_key,
    api_keys_are_created_verified_and_revoked,
    malformed_requests_get_an_error_reply,
    the_signing_key_is_kept_across_restarts_and_the_ttl_is_configurable,
);
