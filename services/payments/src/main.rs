//! `sluice-payments`: the payments service as its own process.
//!
//! Configured like every Sluice service (see `sluice_kit::app`); the
//! database defaults to `sqlite://data/payments.db`, the operations endpoints
//! to 127.0.0.1:9104. A failure is one line on stderr and exit code 1.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_kit::app::main(
        sluice_payments::NAME,
        sluice_payments::LISTEN,
        sluice_payments::from_resources,
    )
    .await
}
