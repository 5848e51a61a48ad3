//! The `sluice` command. The logic lives in the library modules; this file
//! parses arguments and maps errors to exit codes (0 ok, 1 failure, 2 usage).

mod bench;
mod ops;
mod platform;
mod serve;
mod up;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

// mimalloc: the broker hot paths allocate per message (headers, payloads);
// glibc malloc's arena locks cost ~25% of embedded consume throughput here.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: event-driven microservices on NATS JetStream, RabbitMQ or an embedded log.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform on this machine (embedded broker under ./data).
    Up(up::UpArgs),
    /// Run one service as its own process against any broker and database.
    Serve(serve::ServeArgs),
    /// Measure publish and consume throughput through the Broker trait and the raw clients.
    Bench(bench::BenchArgs),
    /// Measure a trivial service handler through the kit against a bare consume loop.
    BenchKit(bench::kit::KitBenchArgs),
    /// Measure orders through the whole shop (as `up` runs it) against bare broker hops.
    BenchShop(bench::shop::ShopBenchArgs),
    /// Serve a bare axum handler: the baseline of the edge's HTTP benchmark (scripts/bench-edge.sh).
    BenchHttpBaseline(bench::http::BaselineArgs),
    /// Publish events from JSON: one with --json, or one per line from --file or stdin (-).
    Publish(ops::publish::PublishArgs),
    /// Follow the events on a subject filter, decoded to JSON with their headers.
    Tail(ops::tail::TailArgs),
    /// Write the events on a subject filter to an event-log file (docs/event-log-format.md).
    Export(ops::log::ExportArgs),
    /// Publish an event-log file's events again, with their original ids.
    Import(ops::log::ImportArgs),
    /// Rebuild a read model of the edge from the log (or a file) without downtime.
    Replay(ops::replay::ReplayArgs),
    /// List, show, redrive or purge dead letters.
    Dlq(ops::dlq::DlqArgs),
    /// Messages, rates, consumer lag and dead letters per stream.
    Stats(ops::stats::StatsArgs),
    /// Print a completion script for a shell (e.g. `sluice completions bash > /etc/bash_completion.d/sluice`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    // A served service sets up its own logs and traces (sluice_kit::app),
    // `up` its logs and traces with the dashboard's recent spans.
    let serving = match &cli.command {
        Command::Serve(_) | Command::Up(_) => true,
        Command::BenchKit(args) => args.sets_up_tracing(),
        _ => false,
    };
    // Operator commands print data: only warnings and errors go to stderr.
    let operator = matches!(
        cli.command,
        Command::Publish(_)
            | Command::Tail(_)
            | Command::Export(_)
            | Command::Import(_)
            | Command::Replay(_)
            | Command::Dlq(_)
            | Command::Stats(_)
    );
    if !serving {
        init_tracing(if operator { "warn" } else { "info" });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => Ok(serve::run(args).await),
            Command::Up(args) => up::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => bench::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::BenchKit(args) => bench::kit::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::BenchShop(args) => bench::shop::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::BenchHttpBaseline(args) => {
                bench::http::run(args).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Publish(args) => ops::publish::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Tail(args) => ops::tail::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Export(args) => ops::log::export(args).await.map(|()| ExitCode::SUCCESS),
            Command::Import(args) => ops::log::import(args).await.map(|()| ExitCode::SUCCESS),
            Command::Replay(args) => ops::replay::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Dlq(args) => ops::dlq::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Stats(args) => ops::stats::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Completions { .. } => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
