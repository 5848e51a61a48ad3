//! `sluice serve <service>`: one service of the shop as its own process,
//! against any broker and database — what the `sluice-<service>` binaries
//! do, from the one `sluice` binary. Replicas of a service share its
//! consumer groups, so running several spreads the work.

use std::process::ExitCode;

use sluice_kit::app::main_with;

/// Arguments of `sluice serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The service to run.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(
        crate::platform::SERVICES.iter().copied().chain(["edge"])
    ))]
    service: String,
    /// Broker URL (`nats://…`, `amqp://…`, `embedded:<path>`); default: `SLUICE_BROKER__URL`.
    #[arg(long)]
    broker: Option<String>,
    /// Database URL (`postgres://…`, `sqlite://…`); default: `DATABASE_URL`, else `sqlite://data/<service>.db`.
    #[arg(long)]
    database: Option<String>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; default: `SLUICE_LISTEN`, else the service's port.
    #[arg(long)]
    listen: Option<String>,
}

/// Runs the service until SIGTERM or ctrl-c; a failure is one line on
/// stderr and exit code 1.
pub(crate) async fn run(args: ServeArgs) -> ExitCode {
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(b) = args.broker {
        env.push(("SLUICE_BROKER__URL".into(), b));
    }
    if let Some(d) = args.database {
        env.push(("DATABASE_URL".into(), d));
    }
    if let Some(l) = args.listen {
        env.push(("SLUICE_LISTEN".into(), l));
    }
    // Each service's binary does the same: `app::main` with its name,
    // operations address and `from_resources`.
    macro_rules! serve {
        ($svc:ident) => {
            main_with($svc::NAME, $svc::LISTEN, env, $svc::from_resources).await
        };
    }
    match args.service.as_str() {
        "accounts" => serve!(sluice_accounts),
        "inventory" => serve!(sluice_inventory),
        "payments" => serve!(sluice_payments),
        "orders" => serve!(sluice_orders),
        "notifications" => serve!(sluice_notifications),
        "media" => serve!(sluice_media),
        "edge" => {
            main_with(
                sluice_edge::NAME,
                sluice_edge::OPS_LISTEN,
                env,
                sluice_edge::from_resources,
            )
            .await
        }
        other => {
            eprintln!("sluice: unknown service {other}");
            ExitCode::from(2)
        }
    }
}
