//! `sluice-accounts`: the accounts service as its own process.
//!
//! Configured like every Sluice service (see `sluice_kit::app`); the
//! database defaults to `sqlite://data/accounts.db`, the operations endpoints
//! to 127.0.0.1:9101. Its own settings:
//!
//! - `SLUICE_ACCOUNTS_TOKEN_TTL_SECS`: lifetime of access tokens in seconds
//!   (default 900, at most 86400);
//! - `SLUICE_ACCOUNTS_LOGIN_SCOPES`: space-separated scopes of tokens issued
//!   at login (default `orders:read orders:write`; known: `catalog:write`,
//!   `orders:write`, `orders:read`, `ops`).
//!
//! A failure is one line on stderr and exit code 1.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_kit::app::main(
        sluice_accounts::NAME,
        sluice_accounts::LISTEN,
        sluice_accounts::from_resources,
    )
    .await
}
