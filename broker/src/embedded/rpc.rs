//! In-process request/reply for the embedded broker.
//!
//! Responders register a subject filter and a group; a request goes to one
//! member of the first group whose filter matches, round-robin within it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sluice_proto::Headers;
use tokio::sync::{mpsc, oneshot};

use crate::delivery::RequestPump;
use crate::{BrokerError, InboundMessage, OutboundMessage, Request, Requests, Responder, subject};

struct Member {
    filter: String,
    group: String,
    tx: mpsc::Sender<Request>,
}

/// The registry of responders.
#[derive(Default)]
pub(crate) struct Rpc {
    members: Mutex<Vec<Member>>,
    next: AtomicUsize,
}

struct ReplyTo(Mutex<Option<oneshot::Sender<InboundMessage>>>);

#[async_trait]
impl Responder for ReplyTo {
    async fn respond(&self, headers: Headers, payload: Bytes) -> Result<(), BrokerError> {
        let tx = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| BrokerError::Backend("request already answered".into()))?;
        tx.send(InboundMessage {
            subject: String::new(),
            headers,
            payload,
            sequence: None,
            delivered: 1,
            timestamp: Some(std::time::SystemTime::now()),
        })
        .map_err(|_| BrokerError::Backend("requester is gone".into()))
    }
}

impl Rpc {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a responder.
    pub(crate) fn serve(&self, filter: &str, group: &str) -> Result<Requests, BrokerError> {
        subject::validate_filter(filter).or_else(|_| subject::validate_subject(filter))?;
        subject::validate_group(group)?;
        let (filter, group) = (filter.to_owned(), group.to_owned());
        Ok(Requests::spawn(|pump: RequestPump| {
            self.lock().push(Member {
                filter,
                group,
                tx: pump.tx.clone(),
            });
            let mut stop = pump.stop;
            let tx = pump.tx;
            tokio::spawn(async move {
                // Serving ends when the Requests handle stops or is dropped;
                // `tx.closed()` covers a dropped receiver.
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    _ = tx.closed() => {}
                }
            })
        }))
    }

    /// Sends a request to one matching responder and waits for its reply.
    pub(crate) async fn request(
        &self,
        message: OutboundMessage,
        timeout: Duration,
    ) -> Result<InboundMessage, BrokerError> {
        subject::validate_subject(&message.subject)?;
        let target = {
            let mut members = self.lock();
            members.retain(|m| !m.tx.is_closed());
            let serves = |m: &Member| {
                subject::matches(&m.filter, &message.subject) || m.filter == message.subject
            };
            let group = members.iter().find(|m| serves(m)).map(|m| m.group.clone());
            group.and_then(|g| {
                // Members of the group that serve this subject: one group
                // may serve several subjects, as a NATS queue group can.
                let candidates: Vec<&Member> = members
                    .iter()
                    .filter(|m| m.group == g && serves(m))
                    .collect();
                let i = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len().max(1);
                candidates.get(i).map(|m| m.tx.clone())
            })
        };
        let Some(tx) = target else {
            return Err(BrokerError::NoResponders(message.subject));
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let inbound = InboundMessage {
            subject: message.subject.clone(),
            headers: message.headers,
            payload: message.payload,
            sequence: None,
            delivered: 1,
            timestamp: Some(std::time::SystemTime::now()),
        };
        let request = Request::new(inbound, Box::new(ReplyTo(Mutex::new(Some(reply_tx)))));
        tx.send(request)
            .await
            .map_err(|_| BrokerError::NoResponders(message.subject.clone()))?;
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(reply)) => Ok(InboundMessage {
                subject: message.subject,
                ..reply
            }),
            Ok(Err(_)) => Err(BrokerError::Backend("responder dropped the request".into())),
            Err(_) => Err(BrokerError::Timeout(timeout)),
        }
    }
}
