//! The reference shop's accounts service: customer accounts, login with
//! EdDSA-signed JWTs, and scoped API keys.
//!
//! Commands (request/reply; each reply says `ok`, or why not in
//! `error_code` — `invalid`, `not_found`, `conflict`, `unauthorized` — and
//! `error`):
//!
//! - `accounts.cmd.register` (`Register` → `RegisterResult`): a new account,
//!   its password hashed with argon2id; emits `accounts.account.registered`.
//! - `accounts.cmd.login` (`Login` → `LoginResult`): a short-lived JWT
//!   (`sub`, `scope`, `exp`, `iat`, `nbf`, `jti`, `iss`, header `kid`).
//! - `accounts.cmd.public_key` (`GetPublicKey` → `PublicKeys`): the
//!   signing keys as JWKs, for verifiers ([`token::Verifier`]).
//! - `accounts.cmd.create_api_key` / `revoke_api_key` (`CreateApiKey`,
//!   `RevokeApiKey` → `ApiKeyResult`) and `verify_api_key` (`VerifyApiKey`
//!   → `VerifyApiKeyResult`); emit `accounts.apikey.created` / `.revoked`.
//!
//! The token signing key is generated on first start, kept in the
//! service's database, and announced on `accounts.signing_key.published`.
//! It owns its database (`accounts`, `api_keys`, `signing_keys`, and the
//! kit's tables).

mod accounts;
pub mod api_keys;
mod keys;
pub mod migration;
mod password;
pub mod tables;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use sea_orm_migration::MigratorTrait;
use sluice_broker::Broker;
use sluice_kit::outbox::Emitter;
use sluice_kit::{ConsumerError, KitConfig, Metrics, Service, Shutdown};

/// The service's name: its request group and `ce-source` (`/sluice/accounts`).
pub const NAME: &str = "accounts";

/// Every scope a token or API key may grant.
pub const SCOPES: [&str; 4] = ["catalog:write", "orders:write", "orders:read", "ops"];

/// How long a command may take before the caller gives up (for requesters).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The subjects the service uses, built from its domain (tests use unique
/// domains).
#[derive(Debug, Clone)]
pub struct Subjects {
    /// `accounts.cmd.register`.
    pub register: String,
    /// `accounts.cmd.login`.
    pub login: String,
    /// `accounts.cmd.public_key`.
    pub public_key: String,
    /// `accounts.cmd.create_api_key`.
    pub create_api_key: String,
    /// `accounts.cmd.revoke_api_key`.
    pub revoke_api_key: String,
    /// `accounts.cmd.verify_api_key`.
    pub verify_api_key: String,
    /// `accounts.account.registered`.
    pub account_registered: String,
    /// `accounts.apikey.created`.
    pub api_key_created: String,
    /// `accounts.apikey.revoked`.
    pub api_key_revoked: String,
    /// `accounts.signing_key.published`.
    pub signing_key_published: String,
}

impl Subjects {
    /// The subjects with `accounts` as the domain's name.
    pub fn new(accounts: &str) -> Self {
        Self {
            register: format!("{accounts}.cmd.register"),
            login: format!("{accounts}.cmd.login"),
            public_key: format!("{accounts}.cmd.public_key"),
            create_api_key: format!("{accounts}.cmd.create_api_key"),
            revoke_api_key: format!("{accounts}.cmd.revoke_api_key"),
            verify_api_key: format!("{accounts}.cmd.verify_api_key"),
            account_registered: format!("{accounts}.account.registered"),
            api_key_created: format!("{accounts}.apikey.created"),
            api_key_revoked: format!("{accounts}.apikey.revoked"),
            signing_key_published: format!("{accounts}.signing_key.published"),
        }
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("accounts")
    }
}

/// The service's own settings (the kit's are in [`KitConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountsConfig {
    /// How long an access token is valid (default 15 minutes).
    pub token_ttl: Duration,
    /// The scopes of tokens issued at login (default `orders:read
    /// orders:write`), each one of [`SCOPES`].
    pub login_scopes: Vec<String>,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(15 * 60),
            login_scopes: vec!["orders:read".into(), "orders:write".into()],
        }
    }
}

/// Environment variable: token lifetime in seconds.
pub const ENV_TOKEN_TTL: &str = "SLUICE_ACCOUNTS_TOKEN_TTL_SECS";
/// Environment variable: space-separated scopes of tokens issued at login.
pub const ENV_LOGIN_SCOPES: &str = "SLUICE_ACCOUNTS_LOGIN_SCOPES";

/// Why the service's settings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The token lifetime is not a positive number of seconds.
    #[error("{ENV_TOKEN_TTL}={0:?} is not a number of seconds from 1 to 86400")]
    TokenTtl(String),
    /// A login scope is not one of [`SCOPES`].
    #[error("unknown login scope {0:?} (known: catalog:write orders:write orders:read ops)")]
    Scope(String),
}

impl AccountsConfig {
    /// The defaults, overridden by [`ENV_TOKEN_TTL`] and [`ENV_LOGIN_SCOPES`]
    /// among `vars` (e.g. `std::env::vars()`).
    ///
    /// # Errors
    /// A variable does not parse, or the result is invalid.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        for (name, value) in vars {
            if name == ENV_TOKEN_TTL {
                let secs: u64 = value
                    .trim()
                    .parse()
                    .map_err(|_| ConfigError::TokenTtl(value.clone()))?;
                config.token_ttl = Duration::from_secs(secs);
            } else if name == ENV_LOGIN_SCOPES {
                config.login_scopes = value.split_whitespace().map(str::to_owned).collect();
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks the lifetime (1 s to 1 day) and the scopes.
    ///
    /// # Errors
    /// The first setting that is out of bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secs = self.token_ttl.as_secs();
        if !(1..=86_400).contains(&secs) {
            return Err(ConfigError::TokenTtl(secs.to_string()));
        }
        if let Some(s) = self
            .login_scopes
            .iter()
            .find(|s| !SCOPES.contains(&s.as_str()))
        {
            return Err(ConfigError::Scope(s.clone()));
        }
        Ok(())
    }
}

/// What the command handlers share.
pub struct Accounts {
    db: DatabaseConnection,
    emitter: Emitter,
    subjects: Subjects,
    passwords: password::Passwords,
    signer: token::Signer,
    token_ttl: Duration,
    login_scope: String,
}

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts")
            .field("subjects", &self.subjects)
            .field("token_ttl", &self.token_ttl)
            .field("login_scope", &self.login_scope)
            .finish_non_exhaustive()
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The service's settings are invalid.
    #[error("invalid accounts settings: {0}")]
    Config(#[from] ConfigError),
    /// Migrating the schema failed.
    #[error("cannot migrate the accounts schema: {0}")]
    Migrate(sea_orm::DbErr),
    /// The relay could not start.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// The password hasher could not be prepared.
    #[error("cannot prepare password hashing: {0}")]
    Password(String),
    /// The token signing key could not be loaded or created.
    #[error("cannot load the token signing key: {0}")]
    SigningKey(String),
    /// Request serving could not start.
    #[error("cannot serve accounts commands: {0}")]
    Serve(sluice_broker::BrokerError),
}

/// The running accounts service: its relay and its command servers.
pub type Running = sluice_kit::RunningWithTasks;

/// Migrates `db`, makes sure a signing key exists, and starts answering
/// commands on `broker`. `_kit` is the kit's configuration (the service
/// has no event consumers yet for it to configure).
///
/// # Errors
/// Invalid settings, migration, the signing key, or serving failed.
pub async fn start(
    broker: Arc<dyn Broker>,
    db: DatabaseConnection,
    _kit: &KitConfig,
    metrics: Metrics,
    subjects: Subjects,
    config: AccountsConfig,
) -> Result<Running, StartError> {
    config.validate()?;
    migration::Migrator::up(&db, None)
        .await
        .map_err(StartError::Migrate)?;
    // No consumers: the service runs for its relay, which publishes what
    // the commands write to the outbox.
    let service = Service::new(NAME, broker.clone(), db.clone())
        .metrics(metrics)
        .start()
        .await?;
    let emitter = Emitter::new(NAME, service.relay_waker());
    let prepared = async {
        let passwords = password::Passwords::new()
            .await
            .map_err(|e| StartError::Password(e.to_string()))?;
        let signer = keys::current_or_new(&db, &emitter, &subjects)
            .await
            .map_err(|e| StartError::SigningKey(e.to_string()))?;
        Ok::<_, StartError>((passwords, signer))
    }
    .await;
    let (passwords, signer) = match prepared {
        Ok(p) => p,
        Err(e) => {
            service.stop().await;
            return Err(e);
        }
    };
    let accounts = Arc::new(Accounts {
        db,
        emitter,
        subjects: subjects.clone(),
        passwords,
        signer,
        token_ttl: config.token_ttl,
        login_scope: config.login_scopes.join(" "),
    });
    let shutdown = Shutdown::new();
    let serving = serve_all(&broker, &accounts, &subjects, &shutdown).await;
    match serving {
        Ok(commands) => Ok(Running::new(service, shutdown, commands)),
        Err(e) => {
            shutdown.trigger();
            service.stop().await;
            Err(StartError::Serve(e))
        }
    }
}

/// Serves every command; on a failure the ones already serving are told
/// to stop by the caller's `shutdown`.
async fn serve_all(
    broker: &Arc<dyn Broker>,
    accounts: &Arc<Accounts>,
    s: &Subjects,
    shutdown: &Shutdown,
) -> Result<Vec<tokio::task::JoinHandle<()>>, sluice_broker::BrokerError> {
    use sluice_kit::rpc::serve;
    let (b, a) = (broker, accounts);
    Ok(vec![
        serve(
            b.clone(),
            NAME,
            &s.register,
            NAME,
            a.clone(),
            accounts::register,
            shutdown.listener(),
        )
        .await?,
        serve(
            b.clone(),
            NAME,
            &s.login,
            NAME,
            a.clone(),
            accounts::login,
            shutdown.listener(),
        )
        .await?,
        serve(
            b.clone(),
            NAME,
            &s.public_key,
            NAME,
            a.clone(),
            keys::public_keys,
            shutdown.listener(),
        )
        .await?,
        serve(
            b.clone(),
            NAME,
            &s.create_api_key,
            NAME,
            a.clone(),
            api_keys::create,
            shutdown.listener(),
        )
        .await?,
        serve(
            b.clone(),
            NAME,
            &s.revoke_api_key,
            NAME,
            a.clone(),
            api_keys::revoke,
            shutdown.listener(),
        )
        .await?,
        serve(
            b.clone(),
            NAME,
            &s.verify_api_key,
            NAME,
            a.clone(),
            api_keys::verify,
            shutdown.listener(),
        )
        .await?,
    ])
}

/// A command's refusal, for the `error_code` field of its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Invalid,
    NotFound,
    Conflict,
    Unauthorized,
}

impl Refusal {
    fn code(self) -> String {
        match self {
            Self::Invalid => "invalid",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Unauthorized => "unauthorized",
        }
        .to_owned()
    }
}

/// Where the service's own process serves `/healthz`, `/readyz` and
/// `/metrics` unless `SLUICE_LISTEN` says otherwise.
pub const LISTEN: &str = "127.0.0.1:9101";

/// Why the service could not start from a process's resources.
#[derive(Debug, thiserror::Error)]
pub enum FromResourcesError {
    /// The service's own settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The service did not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Starts the service on a process's resources, with its settings from the
/// environment (the `sluice-accounts` binary and `sluice serve accounts`).
///
/// # Errors
/// Invalid settings, or as [`start`].
pub async fn from_resources(r: sluice_kit::app::Resources) -> Result<Running, FromResourcesError> {
    let config = AccountsConfig::from_env(std::env::vars())?;
    Ok(start(
        r.broker,
        r.db,
        &r.config,
        r.metrics,
        Subjects::default(),
        config,
    )
    .await?)
}
