//! `sluice-orders`: the orders service as its own process.
//!
//! Configured like every Sluice service (see `sluice_kit::app`); the
//! database defaults to `sqlite://data/orders.db`, the operations endpoints
//! to 127.0.0.1:9103. A failure is one line on stderr and exit code 1.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_kit::app::main(
        sluice_orders::NAME,
        sluice_orders::LISTEN,
        sluice_orders::from_resources,
    )
    .await
}
