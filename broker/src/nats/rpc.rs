//! Request/reply over core NATS, outside every stream.

use std::time::Duration;

use async_nats::{HeaderMap, client::RequestErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sluice_proto::Headers;

use super::backend;
use crate::delivery::RequestPump;
use crate::{BrokerError, InboundMessage, OutboundMessage, Request, Requests, Responder, subject};

/// Prefix of request subjects: no domain stream captures it.
const PREFIX: &str = "_sluice.req.";

fn to_nats(headers: &Headers) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in headers.iter() {
        h.insert(k, v);
    }
    h
}

/// Our headers from NATS headers, without the server's own `Nats-*` ones.
pub(super) fn from_nats(headers: Option<&HeaderMap>) -> Headers {
    let Some(h) = headers else {
        return Headers::new();
    };
    Headers::sized_from(h.iter().filter_map(|(name, values)| {
        let name: &str = name.as_ref();
        let server_header = name
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("nats-"));
        let value = values.first().filter(|_| !server_header)?;
        Some((name, value.as_str()))
    }))
}

/// Sends a request and waits for one reply.
pub(super) async fn request(
    client: &async_nats::Client,
    message: OutboundMessage,
    timeout: Duration,
) -> Result<InboundMessage, BrokerError> {
    subject::validate_subject(&message.subject)?;
    let req = async_nats::Request::new()
        .payload(message.payload)
        .headers(to_nats(&message.headers))
        .timeout(Some(timeout));
    match client
        .send_request(format!("{PREFIX}{}", message.subject), req)
        .await
    {
        Ok(reply) => Ok(InboundMessage {
            subject: message.subject,
            headers: from_nats(reply.headers.as_ref()),
            payload: reply.payload,
            sequence: None,
            delivered: 1,
            timestamp: Some(std::time::SystemTime::now()),
        }),
        Err(e) => Err(match e.kind() {
            RequestErrorKind::TimedOut => BrokerError::Timeout(timeout),
            RequestErrorKind::NoResponders => BrokerError::NoResponders(message.subject),
            _ => backend(e),
        }),
    }
}

struct ReplyTo {
    client: async_nats::Client,
    reply: async_nats::Subject,
}

#[async_trait]
impl Responder for ReplyTo {
    async fn respond(&self, headers: Headers, payload: Bytes) -> Result<(), BrokerError> {
        self.client
            .publish_with_headers(self.reply.clone(), to_nats(&headers), payload)
            .await
            .map_err(backend)
    }
}

/// Serves requests on `filter` in queue group `group`.
pub(super) async fn serve(
    client: &async_nats::Client,
    filter: &str,
    group: &str,
) -> Result<Requests, BrokerError> {
    subject::validate_filter(filter).or_else(|_| subject::validate_subject(filter))?;
    subject::validate_group(group)?;
    let mut sub = client
        .queue_subscribe(format!("{PREFIX}{filter}"), group.to_owned())
        .await
        .map_err(backend)?;
    let client = client.clone();
    Ok(Requests::spawn(move |pump: RequestPump| {
        tokio::spawn(async move {
            let mut stop = pump.stop;
            loop {
                let msg = tokio::select! {
                    m = sub.next() => m,
                    _ = stop.wait_for(|s| *s) => None,
                };
                let Some(msg) = msg else { break };
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                let inbound = InboundMessage {
                    subject: msg.subject.as_str().trim_start_matches(PREFIX).to_owned(),
                    headers: from_nats(msg.headers.as_ref()),
                    payload: msg.payload,
                    sequence: None,
                    delivered: 1,
                    timestamp: Some(std::time::SystemTime::now()),
                };
                let responder = ReplyTo {
                    client: client.clone(),
                    reply,
                };
                if pump
                    .tx
                    .send(Request::new(inbound, Box::new(responder)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = sub.unsubscribe().await;
        })
    }))
}
