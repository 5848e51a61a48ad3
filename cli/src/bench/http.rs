//! `sluice bench-http-baseline`: a bare axum handler serving a fixed body
//! on `GET /v1/orders/{id}`, the baseline `scripts/bench-edge.sh` measures
//! beside the edge in the same run (same binary, allocator and runtime; no
//! authentication, no database).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use sluice_kit::Shutdown;

/// Arguments of `sluice bench-http-baseline`.
#[derive(Debug, clap::Args)]
pub(crate) struct BaselineArgs {
    /// Where to serve.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The body to answer with (e.g. an order as the edge returned it).
    #[arg(long)]
    body: PathBuf,
}

/// Serves the fixed body until ctrl-c or SIGTERM.
pub(crate) async fn run(args: BaselineArgs) -> anyhow::Result<()> {
    let body =
        std::fs::read(&args.body).with_context(|| format!("reading {}", args.body.display()))?;
    let body = bytes::Bytes::from(body);
    let app = Router::new().route(
        "/v1/orders/{id}",
        get(move || {
            let body = body.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "serving the bare baseline handler");
    axum::serve(listener, app)
        .with_graceful_shutdown(async { Shutdown::new().on_signal().await })
        .await
        .context("serving")
}
