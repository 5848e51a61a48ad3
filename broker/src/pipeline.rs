//! Pipelined batch publishing shared by the networked backends: validate
//! each message, make sure its stream exists, keep up to `window` broker
//! acknowledgements outstanding, and return one result per message in order.

use std::collections::{HashMap, VecDeque};
use std::future::Future;

use crate::{BrokerError, OutboundMessage, PublishAck, subject};

/// Publishes `messages` in order.
///
/// `ensure` is called once per stream key; `send` hands one message to the
/// broker and returns a pending acknowledgement; `confirm` waits for it.
pub(crate) async fn publish_pipelined<P, E, EF, S, SF, C, CF>(
    messages: Vec<OutboundMessage>,
    window: usize,
    mut ensure: E,
    mut send: S,
    confirm: C,
) -> Vec<Result<PublishAck, BrokerError>>
where
    E: FnMut(String) -> EF,
    EF: Future<Output = Result<(), BrokerError>>,
    S: FnMut(OutboundMessage) -> SF,
    SF: Future<Output = Result<P, BrokerError>>,
    C: Fn(String, P) -> CF,
    CF: Future<Output = Result<PublishAck, BrokerError>>,
{
    // Streams first, so no publish fails for want of one.
    let mut streams: HashMap<String, Option<String>> = HashMap::new();
    for m in &messages {
        if subject::validate_subject(&m.subject).is_ok() {
            let key = subject::stream_key(&m.subject);
            if !streams.contains_key(key) {
                let failure = ensure(key.to_owned()).await.err().map(|e| e.to_string());
                streams.insert(key.to_owned(), failure);
            }
        }
    }
    let mut results: Vec<Option<Result<PublishAck, BrokerError>>> =
        (0..messages.len()).map(|_| None).collect();
    let mut in_flight: VecDeque<(usize, String, P)> = VecDeque::new();
    for (i, m) in messages.into_iter().enumerate() {
        if let Err(e) = subject::validate_subject(&m.subject) {
            results[i] = Some(Err(e));
            continue;
        }
        if let Some(Some(reason)) = streams.get(subject::stream_key(&m.subject)) {
            results[i] = Some(Err(BrokerError::Publish {
                subject: m.subject.clone(),
                reason: reason.clone(),
            }));
            continue;
        }
        while in_flight.len() >= window.max(1) {
            if let Some((j, s, pending)) = in_flight.pop_front() {
                results[j] = Some(confirm(s, pending).await);
            }
        }
        let subject = m.subject.clone();
        match send(m).await {
            Ok(pending) => in_flight.push_back((i, subject, pending)),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    for (j, s, pending) in in_flight {
        results[j] = Some(confirm(s, pending).await);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(BrokerError::Backend("publish result missing".into()))))
        .collect()
}
