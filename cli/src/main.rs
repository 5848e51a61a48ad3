//! The `sluice` command. The logic lives in the library modules; this file
//! parses arguments and maps errors to exit codes (0 ok, 1 failure, 2 usage).

mod bench;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Measure publish and consume throughput through the Broker trait and the raw clients.
    Bench(bench::BenchArgs),
    /// Measure a trivial service handler through the kit against a bare consume loop.
    BenchKit(bench::kit::KitBenchArgs),
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
    init_tracing();
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
            Command::Up(args) => up::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchKit(args) => bench::kit::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
