//! Dead letters: how a rejected message is recorded, the same on every backend.
//!
//! A dead letter is the original message (headers and payload untouched)
//! republished, confirmed, on `dlq.<original subject>` with `sluice-dlq-*`
//! headers saying why, before the original delivery is terminated. Nothing is
//! lost between the two steps: if the process dies after the dead letter was
//! stored but before the original was terminated, the original is delivered
//! again and dead-lettered again (de-duplicated by its `ce-id` where present).

use std::time::SystemTime;

use sluice_proto::Headers;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{InboundMessage, OutboundMessage, subject};

/// Header: why the message was dead-lettered.
pub const REASON: &str = "sluice-dlq-reason";
/// Header: the consumer group that gave up on it.
pub const GROUP: &str = "sluice-dlq-group";
/// Header: the subject it was originally published on.
pub const SUBJECT: &str = "sluice-dlq-subject";
/// Header: how many times it had been delivered.
pub const DELIVERIES: &str = "sluice-dlq-deliveries";
/// Header: its sequence in the original stream, when known.
pub const SEQUENCE: &str = "sluice-dlq-sequence";
/// Header: when it was dead-lettered (RFC 3339).
pub const TIME: &str = "sluice-dlq-time";

/// Builds the dead letter for `message`, rejected by `group` for `reason`.
///
/// The dead letter keeps the original `ce-id`, so the dead-letter stream
/// de-duplicates a message dead-lettered twice; a message without one gets an
/// id derived from group, subject and sequence for the same purpose.
pub fn build(message: &InboundMessage, group: &str, reason: &str) -> OutboundMessage {
    let mut headers: Headers = message.headers.clone();
    headers.insert(REASON, one_line(reason));
    headers.insert(GROUP, group);
    headers.insert(SUBJECT, message.subject.clone());
    headers.insert(DELIVERIES, message.delivered.to_string());
    if let Some(seq) = message.sequence {
        headers.insert(SEQUENCE, seq.to_string());
    }
    if let Ok(now) = OffsetDateTime::from(SystemTime::now()).format(&Rfc3339) {
        headers.insert(TIME, now);
    }
    OutboundMessage {
        subject: subject::dlq_subject(&message.subject),
        headers,
        payload: message.payload.clone(),
    }
}

/// The de-duplication id of a dead letter: `group:ce-id`, or, for a message
/// without a `ce-id`, `group:subject:sequence` where a sequence is known.
pub fn dedup_id(message: &OutboundMessage) -> Option<String> {
    let group = message.headers.get(GROUP)?;
    match message.id() {
        Some(id) => Some(format!("{group}:{id}")),
        None => {
            let subject = message.headers.get(SUBJECT)?;
            let seq = message.headers.get(SEQUENCE)?;
            Some(format!("{group}:{subject}:{seq}"))
        }
    }
}

/// Header values must be one line on every transport.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

/// The reason recorded on a dead letter, if `message` is one.
pub fn reason(message: &InboundMessage) -> Option<&str> {
    message.headers.get(REASON)
}
