//! `sluice-inventory`: the inventory service as its own process.
//!
//! Configured like every Sluice service (see `sluice_kit::app`); the
//! database defaults to `sqlite://data/inventory.db`, the operations endpoints
//! to 127.0.0.1:9102. A failure is one line on stderr and exit code 1.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_kit::app::main(
        sluice_inventory::NAME,
        sluice_inventory::LISTEN,
        sluice_inventory::from_resources,
    )
    .await
}
