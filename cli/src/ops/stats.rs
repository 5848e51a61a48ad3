//! `sluice stats`: per stream and consumer group — messages stored, the
//! publish rate (measured over `--interval`), each group's lag (messages
//! not yet acked, waiting or in flight), and the dead letters not yet
//! redriven or purged.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sluice_broker::{Broker, dead_letter, subject};

use super::{BrokerArg, Output, print_line};

/// Arguments of `sluice stats`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    /// Domains to report (e.g. orders); by default every domain of the shop.
    #[arg(value_name = "DOMAIN")]
    domains: Vec<String>,
    /// Also report these consumer groups (RabbitMQ cannot list its groups).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// How long to watch each stream to measure its rate.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// pretty: a table for people; json: one object per stream and per group.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    broker: BrokerArg,
}

/// Measures and prints.
pub(crate) async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let domains: Vec<String> = if args.domains.is_empty() {
        crate::platform::SERVICES
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        args.domains.clone()
    };
    for d in &domains {
        subject::validate_filter(&format!("{d}.>"))
            .with_context(|| format!("invalid domain {d:?}"))?;
    }
    let broker = super::connect(&args.broker.url).await?;
    let result = report(&*broker, &args, &domains).await;
    broker.close().await;
    result
}

async fn report(broker: &dyn Broker, args: &StatsArgs, domains: &[String]) -> anyhow::Result<()> {
    let mut first = Vec::new();
    for d in domains {
        first.push(
            broker
                .stream_stats(d)
                .await
                .with_context(|| format!("reading {d}"))?,
        );
    }
    tokio::time::sleep(args.interval).await;
    let mut out = std::io::stdout().lock();
    if args.output == Output::Pretty {
        print_line(
            &mut out,
            &format!(
                "{:<28} {:>12} {:>10} {:>10} {:>12}",
                "stream / group", "messages", "rate/s", "lag", "dead letters"
            ),
        )?;
    }
    for (d, before) in domains.iter().zip(first) {
        let now = broker
            .stream_stats(d)
            .await
            .with_context(|| format!("reading {d}"))?;
        let rate = match (&before, &now) {
            (Some(b), Some(n)) => {
                let moved = match (b.last_sequence, n.last_sequence) {
                    (Some(x), Some(y)) => y.saturating_sub(x),
                    _ => n.messages.saturating_sub(b.messages),
                };
                Some(moved as f64 / args.interval.as_secs_f64().max(1e-3))
            }
            _ => None,
        };
        let dead = dead_letter::list(broker, d)
            .await
            .with_context(|| format!("reading the dead letters of {d}"))?
            .len();
        let messages = now.as_ref().map(|n| n.messages);
        let line = match args.output {
            Output::Json => json!({
                "stream": d,
                "messages": messages,
                "last_sequence": now.as_ref().and_then(|n| n.last_sequence),
                "rate": rate.map(f64::round),
                "dead_letters": dead,
            })
            .to_string(),
            Output::Pretty => format!(
                "{:<28} {:>12} {:>10} {:>10} {:>12}",
                d,
                messages.map_or("-".to_owned(), |m| m.to_string()),
                rate.map_or("-".to_owned(), |r| format!("{r:.0}")),
                "",
                dead
            ),
        };
        print_line(&mut out, &line)?;
        let mut groups: Vec<String> = now
            .as_ref()
            .and_then(|n| n.groups.clone())
            .unwrap_or_default();
        for g in &args.groups {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        let filter = format!("{d}.>");
        for g in groups {
            let lag = broker
                .lag(&filter, &g)
                .await
                .with_context(|| format!("asking the lag of {g}"))?;
            let line = match args.output {
                Output::Json => json!({"stream": d, "group": g, "lag": lag}).to_string(),
                Output::Pretty => format!(
                    "  {:<26} {:>12} {:>10} {:>10} {:>12}",
                    g,
                    "",
                    "",
                    lag.map_or("-".to_owned(), |l| l.to_string()),
                    ""
                ),
            };
            print_line(&mut out, &line)?;
        }
    }
    Ok(())
}
