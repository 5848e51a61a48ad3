//! Subjects, filters and the names derived from them.
//!
//! A subject is dot-separated tokens of `[A-Za-z0-9_-]`. The first token is
//! the *domain*; each domain is one stream. Dead letters of a domain live on
//! `dlq.<subject>`, a stream of their own per domain (`dlq.orders`).

use crate::BrokerError;

/// Prefix of dead-letter subjects.
pub const DLQ_PREFIX: &str = "dlq";

fn token_ok(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(token_byte_ok)
}

/// Whether `b` may appear in a subject's token.
fn token_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn bad(subject: &str, reason: &str) -> BrokerError {
    BrokerError::Subject {
        subject: subject.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Checks a subject to publish on: literal tokens only, at least two.
///
/// # Errors
/// Empty tokens, wildcards, other characters, or a single token.
pub fn validate_subject(subject: &str) -> Result<(), BrokerError> {
    // Checked for every message published: one pass over the bytes.
    let (mut tokens, mut len, mut all_ok) = (1usize, 0usize, true);
    for b in subject.bytes() {
        if b == b'.' {
            all_ok &= len > 0;
            tokens += 1;
            len = 0;
        } else {
            all_ok &= token_byte_ok(b);
            len += 1;
        }
    }
    all_ok &= len > 0;
    if tokens < 2 {
        return Err(bad(subject, "needs at least <domain>.<name>"));
    }
    if !all_ok {
        return Err(bad(
            subject,
            "tokens must be non-empty [A-Za-z0-9_-] (no wildcards)",
        ));
    }
    Ok(())
}

/// Checks a subscription filter: `*` matches one token, a final `>` the rest;
/// the domain token (and for dead letters, the one after `dlq`) is literal.
///
/// # Errors
/// Malformed tokens, `>` not last, or a wildcard domain.
pub fn validate_filter(filter: &str) -> Result<(), BrokerError> {
    let tokens: Vec<&str> = filter.split('.').collect();
    if tokens.len() < 2 {
        return Err(bad(filter, "needs at least <domain>.<pattern>"));
    }
    for (i, t) in tokens.iter().enumerate() {
        let ok = match *t {
            "*" => true,
            ">" => i == tokens.len() - 1,
            t => token_ok(t),
        };
        if !ok {
            return Err(bad(
                filter,
                "tokens must be [A-Za-z0-9_-], `*`, or a final `>`",
            ));
        }
    }
    let literal = if tokens[0] == DLQ_PREFIX { 2 } else { 1 };
    if tokens.len() <= literal || tokens[..literal].iter().any(|t| !token_ok(t)) {
        return Err(bad(filter, "the domain must be literal"));
    }
    Ok(())
}

/// Checks a consumer group name.
///
/// # Errors
/// Empty, longer than 64, or characters outside `[A-Za-z0-9_-]`.
pub fn validate_group(group: &str) -> Result<(), BrokerError> {
    if token_ok(group) && group.len() <= 64 {
        Ok(())
    } else {
        Err(BrokerError::Config(format!(
            "invalid group name {group:?}: use 1-64 of [A-Za-z0-9_-]"
        )))
    }
}

/// The stream a subject or filter belongs to: its domain (`orders`), or for
/// dead letters `dlq.<domain>`.
pub fn stream_key(subject_or_filter: &str) -> &str {
    let mut dots = subject_or_filter.match_indices('.').map(|(i, _)| i);
    let first = dots.next().unwrap_or(subject_or_filter.len());
    if &subject_or_filter[..first] == DLQ_PREFIX {
        let second = dots.next().unwrap_or(subject_or_filter.len());
        &subject_or_filter[..second]
    } else {
        &subject_or_filter[..first]
    }
}

/// The dead-letter subject of `subject`.
pub fn dlq_subject(subject: &str) -> String {
    format!("{DLQ_PREFIX}.{subject}")
}

/// Whether `subject` matches the NATS-style `filter`.
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_like_nats() {
        assert!(matches("orders.>", "orders.order.placed"));
        assert!(matches("orders.*.placed", "orders.order.placed"));
        assert!(!matches("orders.*", "orders.order.placed"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches("orders.order.placed", "orders.order.placed"));
        assert!(!matches("orders.order.placed", "orders.order.confirmed"));
    }

    #[test]
    fn the_stream_key_is_the_domain_or_its_dead_letters() {
        assert_eq!(stream_key("orders.order.placed"), "orders");
        assert_eq!(stream_key("orders.>"), "orders");
        assert_eq!(stream_key("dlq.orders.order.placed"), "dlq.orders");
        assert_eq!(stream_key(&dlq_subject("inv.x")), "dlq.inv");
    }

    #[test]
    fn bad_subjects_and_filters_are_rejected() {
        assert!(validate_subject("orders").is_err());
        assert!(validate_subject("orders.*").is_err());
        assert!(validate_subject("orders..x").is_err());
        assert!(validate_subject("orders.a b").is_err());
        assert!(validate_subject("").is_err());
        assert!(validate_subject(".x").is_err());
        assert!(validate_subject("orders.").is_err());
        assert!(validate_subject("orders.order.placed").is_ok());
        assert!(validate_subject("a-1.b_2").is_ok());
        assert!(validate_filter(">").is_err());
        assert!(validate_filter("*.order").is_err());
        assert!(validate_filter("orders.>.x").is_err());
        assert!(validate_filter("dlq.>").is_err());
        assert!(validate_filter("dlq.orders.>").is_ok());
        assert!(validate_group("a.b").is_err());
    }
}
