//! Header translation at the AMQP edge (CloudEvents AMQP binding).
//!
//! Neutral `ce-xxx` ↔ AMQP header `cloudEvents:xxx`; `content-type` ↔ the
//! AMQP `content-type` property; `ce-id` also becomes the `message-id`
//! property. Other headers pass through as long strings. Headers Sluice adds
//! for itself (`x-sluice-*`) and those RabbitMQ adds (`x-delivery-count`,
//! `x-stream-offset`, `x-death`, …) never reach the caller.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use sluice_proto::Headers;

/// Milliseconds since the epoch when the message was published.
pub(super) const TS: &str = "x-sluice-ts";
/// Deliveries before the message went through a retry (delay) queue.
pub(super) const DELIVERIES: &str = "x-sluice-deliveries";
/// The original subject of a message routed through a retry queue.
pub(super) const SUBJECT: &str = "x-sluice-subject";
/// Marks a seam message (see `consume.rs`).
pub(super) const SEAM: &str = "x-sluice-seam";

const CE_PREFIX: &str = "ce-";
const AMQP_CE_PREFIX: &str = "cloudEvents:";

pub(super) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// AMQP properties for neutral `headers`, plus Sluice's own `extra` headers.
pub(super) fn to_amqp(headers: &Headers, extra: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut table = FieldTable::default();
    let mut props = BasicProperties::default().with_delivery_mode(2);
    for (name, value) in headers.iter() {
        if name == "content-type" {
            props = props.with_content_type(ShortString::from(value));
            continue;
        }
        let key = match name.strip_prefix(CE_PREFIX) {
            Some(rest) => format!("{AMQP_CE_PREFIX}{rest}"),
            None => name.to_owned(),
        };
        table.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    if let Some(id) = crate::dead_letter::dedup_key(headers) {
        props = props.with_message_id(ShortString::from(id));
    }
    table.insert(ShortString::from(TS), AMQPValue::LongLongInt(now_millis()));
    for (k, v) in extra {
        table.insert(ShortString::from(*k), v.clone());
    }
    props.with_headers(table)
}

/// A string header value (long or short string).
pub(super) fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// An integer header value of any width.
pub(super) fn int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::LongUInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortShortInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => Some(i64::from(*i)),
        AMQPValue::Timestamp(t) => i64::try_from(*t).ok(),
        _ => None,
    }
}

/// A header of the raw AMQP table.
pub(super) fn raw<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props
        .headers()
        .as_ref()
        .and_then(|t| t.inner().get(&ShortString::from(name)))
}

/// Headers Sluice or RabbitMQ add for themselves, never shown to callers.
fn internal(name: &str) -> bool {
    name.starts_with("x-sluice-")
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
        || matches!(
            name,
            "x-delivery-count" | "x-stream-offset" | "x-death" | "x-received-from"
        )
}

/// The neutral headers of an AMQP message.
pub(super) fn from_amqp(props: &BasicProperties) -> Headers {
    let mut out = Headers::new();
    if let Some(table) = props.headers() {
        for (k, v) in table.inner() {
            let k = k.as_str();
            if internal(k) {
                continue;
            }
            let Some(value) = text(v) else { continue };
            match k.strip_prefix(AMQP_CE_PREFIX) {
                Some(rest) => out.insert(format!("{CE_PREFIX}{rest}"), value),
                None => out.insert(k, value),
            }
        }
    }
    if let Some(ct) = props.content_type() {
        out.insert("content-type", ct.as_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutral_headers_survive_the_amqp_binding() {
        let mut h = Headers::new();
        h.insert("ce-id", "1");
        h.insert("ce-type", "shop.orders.v1.OrderPlaced");
        h.insert("content-type", "application/protobuf");
        h.insert("traceparent", "00-abc-def-01");
        let props = to_amqp(&h, &[]);
        let table = props.headers().clone().unwrap_or_default();
        assert!(
            table
                .inner()
                .contains_key(&ShortString::from("cloudEvents:id"))
        );
        assert!(
            table
                .inner()
                .contains_key(&ShortString::from("cloudEvents:type"))
        );
        assert_eq!(props.message_id().as_ref().map(|s| s.as_str()), Some("1"));
        assert_eq!(from_amqp(&props), h);
    }
}
