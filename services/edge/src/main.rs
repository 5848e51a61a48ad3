//! `sluice-edge`: the REST edge as its own process.
//!
//! Configured like every Sluice service (see `sluice_kit::app`); the
//! database defaults to `sqlite://data/edge.db`. The API is served on
//! `SLUICE_EDGE_LISTEN` (default 127.0.0.1:8080), the operations endpoints
//! also on `SLUICE_LISTEN` (default 127.0.0.1:9100). A failure is one line
//! on stderr and exit code 1.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice_kit::app::main(
        sluice_edge::NAME,
        "127.0.0.1:9100",
        sluice_edge::from_resources,
    )
    .await
}
