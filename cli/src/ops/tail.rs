//! `sluice tail`: follow the events on a subject filter, decoded to JSON.
//!
//! Tail joins a throwaway consumer group of its own (so it takes nothing
//! from the services' groups), acks what it prints, and deletes the group
//! when it stops: on ctrl-c or SIGTERM, after `--limit` events, or when the
//! reader of its output goes away.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use base64::Engine;
use serde_json::{Map, Value, json};
use sluice_broker::{Broker, InboundMessage, StartPosition, SubscribeOptions};
use sluice_proto::Registry;
use sluice_proto::envelope::CE_TYPE;

use super::{BrokerArg, Output, print_line};

/// Arguments of `sluice tail`.
#[derive(Debug, clap::Args)]
pub(crate) struct TailArgs {
    /// The subject filter, e.g. orders.> or orders.order.*; its first token must be literal.
    filter: String,
    /// Start with the oldest event still stored.
    #[arg(long, conflicts_with_all = ["from_seq", "since"])]
    from_beginning: bool,
    /// Start at this stream sequence (inclusive).
    #[arg(long, value_name = "N", conflicts_with = "since")]
    from_seq: Option<u64>,
    /// Start with the events stored in the last DURATION (e.g. 90s, 10m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Exit after printing N events.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// pretty: a block per event; json: {subject, sequence, headers, event} per line.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    broker: BrokerArg,
}

/// Subscribes, prints each event until stopped, then removes the group.
pub(crate) async fn run(args: TailArgs) -> anyhow::Result<()> {
    let registry = Registry::global().context("loading the event descriptors")?;
    let start = start_position(&args)?;
    let group = format!("sluice-tail-{}", uuid::Uuid::now_v7().simple());
    let options = SubscribeOptions::new(group.clone(), args.filter.clone()).start(start);
    options.validate().context("invalid subject filter")?;
    let broker = super::connect(&args.broker.url).await?;
    let result = follow(&*broker, registry, &args, options).await;
    if let Err(e) = broker.delete_group(&args.filter, &group).await {
        tracing::warn!(error = %e, group, "could not delete the tail's consumer group");
    }
    broker.close().await;
    result
}

fn start_position(args: &TailArgs) -> anyhow::Result<StartPosition> {
    Ok(if args.from_beginning {
        StartPosition::Beginning
    } else if let Some(seq) = args.from_seq {
        StartPosition::Sequence(seq)
    } else if let Some(ago) = args.since {
        let at = SystemTime::now().checked_sub(ago).with_context(|| {
            format!(
                "--since {} reaches before 1970",
                humantime::format_duration(ago)
            )
        })?;
        StartPosition::Time(at)
    } else {
        StartPosition::New
    })
}

async fn follow(
    broker: &dyn Broker,
    registry: &Registry,
    args: &TailArgs,
    options: SubscribeOptions,
) -> anyhow::Result<()> {
    if args.limit == Some(0) {
        return Ok(());
    }
    let mut subscription = broker
        .subscribe(options)
        .await
        .with_context(|| format!("subscribing to {}", args.filter))?;
    let signal = sluice_kit::shutdown::wait_for_signal();
    tokio::pin!(signal);
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u64;
    let result = loop {
        let delivery = tokio::select! {
            () = &mut signal => break Ok(()),
            next = subscription.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("receiving events")),
                None => break Ok(()),
            },
        };
        let text = render(registry, &delivery.message, args.output);
        let open = match print_line(&mut stdout, &text) {
            Ok(open) => open,
            Err(e) => break Err(e),
        };
        if let Err(e) = delivery.ack().await {
            tracing::warn!(error = %e, "ack failed; the throwaway group may see it again");
        }
        printed += 1;
        if !open || args.limit.is_some_and(|limit| printed >= limit) {
            break Ok(());
        }
    };
    subscription.close().await;
    result
}

/// The event as text: its headers and its payload decoded by `ce-type`, or
/// the reason it does not decode and the raw payload in base64.
pub(crate) fn render(registry: &Registry, message: &InboundMessage, output: Output) -> String {
    let decoded = match message.headers.get(CE_TYPE) {
        Some(event_type) => registry
            .to_json(event_type, &message.payload)
            .map_err(|e| e.to_string()),
        None => Err(format!("no {CE_TYPE} header")),
    };
    let headers: Map<String, Value> = message
        .headers
        .iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
    match output {
        Output::Json => {
            let mut line = json!({
                "subject": message.subject,
                "sequence": message.sequence,
                "headers": headers,
            });
            if let Value::Object(fields) = &mut line {
                match decoded {
                    Ok(event) => {
                        fields.insert("event".into(), event);
                    }
                    Err(error) => {
                        fields.insert("error".into(), Value::String(error));
                        fields.insert("payload_base64".into(), Value::String(base64(message)));
                    }
                }
            }
            line.to_string()
        }
        Output::Pretty => {
            let mut block = match message.sequence {
                Some(seq) => format!("── {} #{seq}\n", message.subject),
                None => format!("── {}\n", message.subject),
            };
            for (name, value) in message.headers.iter() {
                block.push_str(&format!("{name}: {value}\n"));
            }
            match decoded {
                Ok(event) => block.push_str(
                    &serde_json::to_string_pretty(&event).unwrap_or_else(|_| event.to_string()),
                ),
                Err(error) => {
                    block.push_str(&format!(
                        "error: {error}\npayload (base64): {}",
                        base64(message)
                    ));
                }
            }
            block.push('\n');
            block
        }
    }
}

fn base64(message: &InboundMessage) -> String {
    base64::engine::general_purpose::STANDARD.encode(&message.payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::Headers;

    fn message(event_type: &str, payload: &[u8]) -> InboundMessage {
        let mut headers = Headers::new();
        headers.insert(CE_TYPE, event_type);
        InboundMessage {
            subject: "orders.order.placed".into(),
            headers,
            payload: bytes::Bytes::copy_from_slice(payload),
            sequence: Some(7),
            delivered: 1,
            timestamp: None,
        }
    }

    #[test]
    fn an_unknown_type_is_printed_with_the_error_and_the_raw_payload() {
        let registry = Registry::global().unwrap_or_else(|e| panic!("{e}"));
        let line = render(
            registry,
            &message("shop.nope.v1.Nope", b"\x01\x02"),
            Output::Json,
        );
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value["sequence"], 7);
        assert_eq!(value["payload_base64"], "AQI=");
        assert!(
            value["error"]
                .as_str()
                .is_some_and(|e| e.contains("shop.nope.v1.Nope"))
        );
        let block = render(
            registry,
            &message("shop.nope.v1.Nope", b"\x01\x02"),
            Output::Pretty,
        );
        assert!(block.contains("payload (base64): AQI="), "{block}");
    }

    #[test]
    fn a_payload_that_does_not_decode_is_not_a_crash() {
        let registry = Registry::global().unwrap_or_else(|e| panic!("{e}"));
        let line = render(
            registry,
            &message("shop.orders.v1.OrderPlaced", b"\xff\xff\xff"),
            Output::Json,
        );
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}"));
        assert!(value.get("event").is_none());
        assert!(
            value["error"]
                .as_str()
                .is_some_and(|e| e.contains("decode")),
            "{line}"
        );
    }
}
