//! Events as brokers carry them (subject, headers, payload) to and from
//! [`CloudEvent`] records, losslessly: importing a record publishes the
//! very headers and payload that were exported.
//!
//! The CloudEvents attributes go to their fields; `ce-time` becomes a
//! `Timestamp` (and is also kept verbatim in `extensions` when its text
//! would not be reproduced exactly from it); every other header, and any
//! attribute header whose value is empty, goes to `extensions` verbatim.

use prost_types::Timestamp;
use sluice_proto::Headers;
use sluice_proto::envelope::{
    CAUSATION_ID, CE_ID, CE_SOURCE, CE_SPECVERSION, CE_SUBJECT, CE_TIME, CE_TYPE, CONTENT_TYPE,
    CORRELATION_ID, TRACEPARENT, TRACESTATE,
};
use sluice_proto::sluice::v1::CloudEvent;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The record of one event published on `subject` with `headers` and `payload`.
pub fn to_record(subject: &str, headers: &Headers, payload: &[u8]) -> CloudEvent {
    let mut ce = CloudEvent {
        broker_subject: subject.to_owned(),
        data: payload.to_vec(),
        ..CloudEvent::default()
    };
    for (name, value) in headers.iter() {
        if value.is_empty() {
            ce.extensions.insert(name.to_owned(), String::new());
            continue;
        }
        let field = match name {
            CE_ID => &mut ce.id,
            CE_SOURCE => &mut ce.source,
            CE_TYPE => &mut ce.r#type,
            CE_SUBJECT => &mut ce.subject,
            CE_SPECVERSION => &mut ce.specversion,
            CONTENT_TYPE => &mut ce.datacontenttype,
            TRACEPARENT => &mut ce.traceparent,
            TRACESTATE => &mut ce.tracestate,
            CORRELATION_ID => &mut ce.correlation_id,
            CAUSATION_ID => &mut ce.causation_id,
            CE_TIME => {
                match parse_time(value) {
                    Some(ts) if format_time(&ts).as_deref() == Some(value) => ce.time = Some(ts),
                    parsed => {
                        ce.time = parsed;
                        ce.extensions.insert(name.to_owned(), value.to_owned());
                    }
                }
                continue;
            }
            _ => {
                ce.extensions.insert(name.to_owned(), value.to_owned());
                continue;
            }
        };
        value.clone_into(field);
    }
    ce
}

/// The subject, headers and payload a record was exported from.
pub fn from_record(ce: CloudEvent) -> (String, Headers, Vec<u8>) {
    let time = ce.time.as_ref().and_then(format_time).unwrap_or_default();
    // In name order: each one is appended to the sorted headers after one
    // comparison (this runs for every record imported or replayed).
    let fields = [
        (CAUSATION_ID, ce.causation_id),
        (CE_ID, ce.id),
        (CE_SOURCE, ce.source),
        (CE_SPECVERSION, ce.specversion),
        (CE_SUBJECT, ce.subject),
        (CE_TIME, time),
        (CE_TYPE, ce.r#type),
        (CONTENT_TYPE, ce.datacontenttype),
        (CORRELATION_ID, ce.correlation_id),
        (TRACEPARENT, ce.traceparent),
        (TRACESTATE, ce.tracestate),
    ];
    debug_assert!(fields.is_sorted_by(|a, b| a.0 < b.0));
    let present = fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| (*n, v.as_str()));
    // Verbatim headers last: they win over what the fields gave. Sized up
    // front: grown header by header, its text was reallocated about six
    // times per record.
    let verbatim = ce.extensions.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    let headers = Headers::sized_from(present.chain(verbatim));
    (ce.broker_subject, headers, ce.data)
}

fn parse_time(text: &str) -> Option<Timestamp> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let nanos = t.unix_timestamp_nanos();
    Some(Timestamp {
        seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).ok()?,
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).ok()?,
    })
}

/// RFC 3339 in UTC, as [`sluice_proto::Envelope`] writes `ce-time`.
fn format_time(ts: &Timestamp) -> Option<String> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn round_trip(headers: &Headers) {
        let ce = to_record("orders.order.placed", headers, b"\x01\x02");
        let (subject, back, payload) = from_record(ce);
        assert_eq!(subject, "orders.order.placed");
        assert_eq!(&back, headers);
        assert_eq!(payload, b"\x01\x02");
    }

    #[test]
    fn an_envelope_survives_a_round_trip() {
        let envelope = sluice_proto::Envelope::with_type("shop.orders.v1.OrderPlaced", "/x")
            .subject("o1")
            .correlation_id("c1");
        let mut headers = envelope.to_headers();
        headers.insert("x-custom", "yes");
        headers.insert(
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        round_trip(&headers);
        let ce = to_record("s", &headers, b"");
        assert!(ce.time.is_some());
        assert!(
            !ce.extensions.contains_key(CE_TIME),
            "an exact time is stored once"
        );
    }

    #[test]
    fn every_attribute_header_survives_a_round_trip() {
        let headers: Headers = [
            (CE_ID, "id-1"),
            (CE_SOURCE, "/src"),
            (CE_TYPE, "shop.orders.v1.OrderPlaced"),
            (CE_SUBJECT, "o1"),
            (CE_SPECVERSION, "1.0"),
            (CE_TIME, "2026-11-26T09:00:00.5Z"),
            (CONTENT_TYPE, "application/protobuf"),
            (
                TRACEPARENT,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            (TRACESTATE, "vendor=v1"),
            (CORRELATION_ID, "c1"),
            (CAUSATION_ID, "e0"),
            ("a-first", "1"),
            ("zz-last", "2"),
        ]
        .into_iter()
        .collect();
        round_trip(&headers);
        let ce = to_record("s", &headers, b"");
        assert_eq!(ce.extensions.len(), 2, "{:?}", ce.extensions);
        // A verbatim header wins over its attribute's field.
        let mut ce = ce;
        ce.extensions
            .insert(CE_TYPE.to_owned(), "verbatim".to_owned());
        assert_eq!(from_record(ce).1.get(CE_TYPE), Some("verbatim"));
    }

    #[test]
    fn odd_headers_are_kept_verbatim() {
        let headers: Headers = [
            (CE_ID, "id-1"),
            (CE_TIME, "2026-11-26T10:00:00.500+01:00"),
            (CE_SUBJECT, ""),
            ("x-weird", ""),
        ]
        .into_iter()
        .collect();
        round_trip(&headers);
        let headers: Headers = [(CE_TIME, "not a time")].into_iter().collect();
        round_trip(&headers);
    }
}
