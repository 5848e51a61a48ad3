//! `sluice-notifications`: the notifications service as its own process.
//!
//! Configured like every Sluice service (see `sluice_kit::app`); the
//! database defaults to `sqlite://data/notifications.db`, the operations
//! endpoints to 127.0.0.1:9105. Its own settings:
//!
//! - `SLUICE_SMTP_URL`: send through this SMTP server,
//!   `smtp://[user:pass@]host[:port]` (`?tls=required` for STARTTLS) or
//!   `smtps://…` (implicit TLS);
//! - `SLUICE_MAILBOX_DIR`: without an SMTP URL, write each e-mail to this
//!   folder as `<notification id>.eml` (default `data/mailbox`);
//! - `SLUICE_MAIL_FROM`: the sender (default
//!   `Sluice Shop <shop@sluice.localhost>`).
//!
//! A failure is one line on stderr and exit code 1.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_kit::app::main(
        sluice_notifications::NAME,
        sluice_notifications::LISTEN,
        sluice_notifications::from_resources,
    )
    .await
}
