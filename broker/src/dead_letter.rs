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

use crate::{
    Broker, BrokerError, InboundMessage, OutboundMessage, PublishAck, StartPosition, subject,
};

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
    dedup_key(&message.headers)
}

/// Header: on a redriven message, the dead letter it was redriven from
/// (`<dead-letter stream>:<sequence>`).
pub const REDRIVEN_FROM: &str = "sluice-redriven-from";

/// The id every backend de-duplicates a message on: its `ce-id`; for a dead
/// letter `group:ce-id` (see [`dedup_id`]); for a redriven message
/// `redrive:<dead letter>:<ce-id>`, so it is stored again although its
/// `ce-id` already was, and a second redrive of the same dead letter is not.
pub fn dedup_key(headers: &Headers) -> Option<String> {
    let id = headers.get(sluice_proto::envelope::CE_ID);
    let base = match (headers.get(REDRIVEN_FROM), id) {
        (Some(from), _) => Some(format!("redrive:{from}:{}", id.unwrap_or_default())),
        (None, Some(id)) => Some(id.to_owned()),
        (None, None) => None,
    };
    let Some(group) = headers.get(GROUP) else {
        return base;
    };
    match base {
        Some(base) => Some(format!("{group}:{base}")),
        None => {
            let subject = headers.get(SUBJECT)?;
            let seq = headers.get(SEQUENCE)?;
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

/// Header: on a resolution record, the key ([`dedup_key`]) of the dead
/// letter it resolves.
pub const RESOLVES: &str = "sluice-dlq-resolves";
/// Header: on a resolution record, what was done (`redriven`, `purged`).
pub const ACTION: &str = "sluice-dlq-action";
/// The last token of resolution records' subjects (`dlq.<domain>.sluice-resolved`).
pub const RESOLVED_TOKEN: &str = "sluice-resolved";

/// A dead letter as stored in its domain's dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The domain whose dead letters these are (`orders`).
    pub domain: String,
    /// The dead letter as read (its subject is `dlq.<original subject>`).
    pub message: InboundMessage,
    /// Its de-duplication key, which resolution records name.
    pub key: String,
}

impl DeadLetter {
    /// The id operators use: `<domain>:<sequence>` in the dead-letter
    /// stream, or `<domain>:<key>` where the backend gave no sequence.
    pub fn id(&self) -> String {
        match self.message.sequence {
            Some(seq) => format!("{}:{seq}", self.domain),
            None => format!("{}:{}", self.domain, self.key),
        }
    }

    /// Why it was dead-lettered.
    pub fn reason(&self) -> &str {
        self.message.headers.get(REASON).unwrap_or_default()
    }

    /// The consumer group that gave up on it.
    pub fn group(&self) -> &str {
        self.message.headers.get(GROUP).unwrap_or_default()
    }

    /// The subject it was first published on.
    pub fn original_subject(&self) -> &str {
        self.message.headers.get(SUBJECT).unwrap_or_else(|| {
            self.message
                .subject
                .strip_prefix("dlq.")
                .unwrap_or(&self.message.subject)
        })
    }

    /// How many times it had been delivered.
    pub fn deliveries(&self) -> u32 {
        self.message
            .headers
            .get(DELIVERIES)
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    }

    /// The original message's headers (without the `sluice-dlq-*` ones).
    pub fn original_headers(&self) -> Headers {
        self.message
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with("sluice-dlq-"))
            .collect()
    }
}

/// The dead letters of `domain` that were neither redriven nor purged, in
/// the order they were dead-lettered.
///
/// # Errors
/// The broker failed.
pub async fn list(broker: &dyn Broker, domain: &str) -> Result<Vec<DeadLetter>, BrokerError> {
    let filter = format!("{}.{domain}.>", subject::DLQ_PREFIX);
    let mut letters = Vec::new();
    // A dead-letter stream that does not exist, or is known to be empty, is
    // not read (reading would create it). RabbitMQ's count of a stream queue
    // lags, so there only a missing queue counts as empty.
    match broker.stream_stats(subject::stream_key(&filter)).await? {
        None if broker.kind() != crate::BrokerKind::Embedded => return Ok(letters),
        Some(s) if s.messages == 0 && s.last_sequence.is_some() => return Ok(letters),
        _ => {}
    }
    let mut resolved = std::collections::HashSet::new();
    crate::scan::scan_all(broker, "dlq", &filter, StartPosition::Beginning, |m| {
        if m.subject.rsplit('.').next() == Some(RESOLVED_TOKEN) && m.headers.get(GROUP).is_none() {
            if let Some(key) = m.headers.get(RESOLVES) {
                resolved.insert(key.to_owned());
            }
        } else if let Some(key) = dedup_key(&m.headers) {
            letters.push(DeadLetter {
                domain: domain.to_owned(),
                message: m.clone(),
                key,
            });
        }
    })
    .await?;
    letters.retain(|l| !resolved.contains(&l.key));
    Ok(letters)
}

/// Publishes the original message of `letter` again, on `subject` or the
/// one it was first published on, then records the dead letter as
/// redriven. The message keeps its `ce-id` (consumers that handled it
/// already skip it) and is stored again under a key of its own
/// ([`REDRIVEN_FROM`]), so a repeated redrive is de-duplicated.
///
/// # Errors
/// The broker refused either publish; if the second failed, the dead letter
/// stays listed and a second redrive publishes nothing new.
pub async fn redrive(
    broker: &dyn Broker,
    letter: &DeadLetter,
    subject: Option<&str>,
) -> Result<PublishAck, BrokerError> {
    let mut headers = letter.original_headers();
    headers.insert(REDRIVEN_FROM, letter.id());
    let target = subject.unwrap_or(letter.original_subject()).to_owned();
    let ack = broker
        .publish(OutboundMessage::new(
            target,
            headers,
            letter.message.payload.clone(),
        ))
        .await?;
    resolve(broker, letter, "redriven").await?;
    Ok(ack)
}

/// Records `letter` as purged: it is no longer listed (the dead-letter
/// stream is append-only on every backend; its retention reclaims space).
///
/// # Errors
/// The broker refused.
pub async fn purge(broker: &dyn Broker, letter: &DeadLetter) -> Result<(), BrokerError> {
    resolve(broker, letter, "purged").await
}

async fn resolve(
    broker: &dyn Broker,
    letter: &DeadLetter,
    action: &str,
) -> Result<(), BrokerError> {
    let mut headers = Headers::new();
    headers.insert(
        sluice_proto::envelope::CE_ID,
        uuid::Uuid::now_v7().to_string(),
    );
    headers.insert(RESOLVES, letter.key.clone());
    headers.insert(ACTION, action);
    if let Ok(now) = OffsetDateTime::from(SystemTime::now()).format(&Rfc3339) {
        headers.insert(TIME, now);
    }
    let subject = format!("{}.{}.{RESOLVED_TOKEN}", subject::DLQ_PREFIX, letter.domain);
    broker
        .publish(OutboundMessage::new(subject, headers, bytes::Bytes::new()))
        .await
        .map(|_| ())
}
