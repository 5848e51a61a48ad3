//! The operator commands (`publish`, `tail`, `export`, `import`, `replay`,
//! `dlq`, `stats`) and what they share: the broker they talk to (`--broker
//! URL`, default the embedded log of a local `sluice up`), how they print
//! (`--output pretty|json`), times given as RFC 3339 or "a duration ago",
//! and progress bars.

pub(crate) mod dlq;
pub(crate) mod log;
pub(crate) mod publish;
pub(crate) mod replay;
pub(crate) mod stats;
pub(crate) mod tail;

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_broker::Broker;
use sluice_broker::amqp::{AmqpBroker, AmqpOptions};

/// The broker of a local `sluice up`.
pub(crate) const DEFAULT_BROKER: &str = "embedded:data/broker.db";

/// `--broker URL`, shared by every operator command.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BrokerArg {
    /// The broker: embedded:<path>, nats://host:port, or
    /// amqp://user:pass@host:port/vhost (add ?exchange=NAME for an exchange
    /// other than sluice.events).
    #[arg(
        long = "broker",
        value_name = "URL",
        default_value = DEFAULT_BROKER,
        env = "SLUICE_BROKER__URL",
        global = true
    )]
    pub(crate) url: String,
}

/// How a command prints what it found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// For people: readable lines and blocks.
    #[default]
    Pretty,
    /// For scripts: one JSON object per line.
    Json,
}

/// Connects to the broker named by `url`.
///
/// An AMQP URL may carry `?exchange=NAME`: the broker's own URL parser has no
/// such parameter, so it is taken off here and passed as [`AmqpOptions`].
pub(crate) async fn connect(url: &str) -> anyhow::Result<Arc<dyn Broker>> {
    let broker: Arc<dyn Broker> = if url.starts_with("amqp://") || url.starts_with("amqps://") {
        let (plain, exchange) = split_exchange(url);
        let mut options = AmqpOptions::default();
        if let Some(exchange) = exchange {
            options.exchange = exchange;
        }
        Arc::new(
            AmqpBroker::connect(&plain, options)
                .await
                .with_context(|| {
                    format!(
                        "connecting to the broker {}",
                        sluice_broker::redact_url(&plain)
                    )
                })?,
        )
    } else {
        sluice_broker::connect(url)
            .await
            .context("connecting to the broker")?
    };
    Ok(broker)
}

/// `url` without its `exchange=` query parameter, and that parameter's value.
fn split_exchange(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut exchange = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("exchange=") {
            Some(name) if !name.is_empty() => {
                exchange = Some(name.to_owned());
                false
            }
            _ => !pair.is_empty(),
        })
        .collect();
    if rest.is_empty() {
        (base.to_owned(), exchange)
    } else {
        (format!("{base}?{}", rest.join("&")), exchange)
    }
}

/// Writes one line to stdout. `Ok(false)` when the reader went away (a
/// closed pipe, as with `sluice tail … | head`): stop quietly.
pub(crate) fn print_line(out: &mut impl Write, line: &str) -> anyhow::Result<bool> {
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

/// A point in time from the command line: RFC 3339 (`2026-11-26T10:00:00Z`)
/// or a duration ago (`90s`, `10m`, `2h`, `1d`).
pub(crate) fn parse_when(text: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{text} ago is before 1970"));
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        format!("{text:?} is neither RFC 3339 (2026-11-26T10:00:00Z) nor a duration (10m)")
    })
}

/// `at` as a protobuf timestamp.
pub(crate) fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

/// A progress bar of events on stderr (a spinner when the total is not
/// known), hidden when stderr is not a terminal.
pub(crate) fn progress_bar(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::new(total),
            "{bar:40} {pos}/{len} events, {per_sec}, eta {eta}",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {pos} events, {per_sec}",
        ),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exchange_parameter_is_taken_off_an_amqp_url() {
        assert_eq!(
            split_exchange("amqp://g:g@h:5672/%2f?exchange=x1"),
            ("amqp://g:g@h:5672/%2f".to_owned(), Some("x1".to_owned()))
        );
        assert_eq!(
            split_exchange("amqp://h/%2f?heartbeat=10&exchange=x1"),
            (
                "amqp://h/%2f?heartbeat=10".to_owned(),
                Some("x1".to_owned())
            )
        );
        assert_eq!(
            split_exchange("amqp://h/%2f"),
            ("amqp://h/%2f".to_owned(), None)
        );
    }
}
