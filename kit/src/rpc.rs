//! Request/reply for commands that need an answer (the edge's login), over
//! every backend: typed requests and replies, correlation, a timeout, and
//! errors that travel back to the caller.
//!
//! A request is a Sluice event (CloudEvents headers, protobuf payload) sent
//! with [`Broker::request`]; the reply is one too, with `causation-id` set to
//! the request's id and the request's correlation id. A handler's error
//! comes back as a reply with no payload and the `sluice-error` header,
//! which [`Requester::request`] turns into [`RequestError::Remote`].
//! Requests are not stored: they reach only responders serving now.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_broker::{Broker, BrokerError, Headers, OutboundMessage, Request};
use sluice_proto::Envelope;
use tracing::Instrument;

use crate::handler::caused_by;
use crate::retry::HandlerError;
use crate::shutdown::ShutdownListener;

/// Header of an error reply: the error's message.
pub const ERROR: &str = "sluice-error";
/// Header of an error reply: `permanent` or `transient`.
pub const ERROR_KIND: &str = "sluice-error-kind";

/// Why a request got no useful answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No reply came in time.
    #[error("no reply to {subject} within {timeout:?}")]
    Timeout {
        /// The request's subject.
        subject: String,
        /// How long the caller waited.
        timeout: Duration,
    },
    /// Nobody serves the subject.
    #[error("nobody serves {0}")]
    NoResponders(String),
    /// The responder's handler failed; `permanent` tells whether retrying
    /// the same request can help.
    #[error("{subject} failed: {message}")]
    Remote {
        /// The request's subject.
        subject: String,
        /// The handler's error.
        message: String,
        /// Whether the error is permanent.
        permanent: bool,
    },
    /// The reply is not a valid event of the expected type.
    #[error("invalid reply from {subject}: {reason}")]
    InvalidReply {
        /// The request's subject.
        subject: String,
        /// What is wrong.
        reason: String,
    },
    /// The broker failed.
    #[error(transparent)]
    Broker(BrokerError),
}

/// Sends typed requests from one service.
#[derive(Clone)]
pub struct Requester {
    broker: Arc<dyn Broker>,
    source: String,
    timeout: Duration,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("source", &self.source)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Requester {
    /// Requests from service `service` on `broker`, waiting `timeout` for each reply.
    pub fn new(broker: Arc<dyn Broker>, service: &str, timeout: Duration) -> Self {
        Self {
            broker,
            source: format!("/sluice/{service}"),
            timeout,
        }
    }

    /// Sends `request` on `subject` and waits for a reply of type `Resp`.
    ///
    /// `correlation_id` ties the request to what caused it (an HTTP
    /// request's id); the request's own id is used when none is given.
    ///
    /// # Errors
    /// No reply in time, nobody serving, the handler failed, or the reply
    /// is not a `Resp`.
    pub async fn request<Req, Resp>(
        &self,
        subject: &str,
        request: &Req,
        correlation_id: Option<&str>,
    ) -> Result<Resp, RequestError>
    where
        Req: prost::Message + prost::Name,
        Resp: prost::Message + prost::Name + Default,
    {
        let mut envelope = Envelope::new::<Req>(&*self.source);
        let id = envelope.id.clone();
        envelope = envelope.correlation_id(correlation_id.unwrap_or(&id));
        let mut message = OutboundMessage::event(subject, &envelope, request);
        crate::trace::inject(&mut message.headers);
        let reply = match self.broker.request(message, self.timeout).await {
            Ok(r) => r,
            Err(BrokerError::Timeout(timeout)) => {
                return Err(RequestError::Timeout {
                    subject: subject.to_owned(),
                    timeout,
                });
            }
            Err(BrokerError::NoResponders(s)) => return Err(RequestError::NoResponders(s)),
            Err(e) => return Err(RequestError::Broker(e)),
        };
        if let Some(message) = reply.headers.get(ERROR) {
            return Err(RequestError::Remote {
                subject: subject.to_owned(),
                message: message.to_owned(),
                permanent: reply.headers.get(ERROR_KIND) != Some("transient"),
            });
        }
        let invalid = |reason: String| RequestError::InvalidReply {
            subject: subject.to_owned(),
            reason,
        };
        let (reply_env, resp) = reply.decode::<Resp>().map_err(|e| invalid(e.to_string()))?;
        if reply_env.causation_id.as_deref() != Some(id.as_str()) {
            return Err(invalid(format!(
                "reply answers {:?}, not request {id}",
                reply_env.causation_id
            )));
        }
        Ok(resp)
    }
}

/// Answers requests of type `Req` on `subject` with `handler`,
/// `async fn(state, envelope, request: Req) -> Result<Resp, HandlerError>`,
/// until `shutdown`. Responders sharing `group` split the requests. Each
/// request is answered in its own task, so a slow one holds up no other.
///
/// # Errors
/// The broker could not start serving.
pub async fn serve<S, Req, Resp, F, Fut>(
    broker: Arc<dyn Broker>,
    service: &str,
    subject: &str,
    group: &str,
    state: Arc<S>,
    handler: F,
    mut shutdown: ShutdownListener,
) -> Result<tokio::task::JoinHandle<()>, BrokerError>
where
    S: Send + Sync + 'static,
    Req: prost::Message + prost::Name + Default + 'static,
    Resp: prost::Message + prost::Name + 'static,
    F: Fn(Arc<S>, Envelope, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, HandlerError>> + Send + 'static,
{
    let mut requests = broker.serve(subject, group).await?;
    let source: Arc<str> = Arc::from(format!("/sluice/{service}"));
    let handler = Arc::new(handler);
    Ok(tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                () = shutdown.wait() => break,
                r = requests.next() => match r {
                    Some(r) => r,
                    None => break,
                },
            };
            let (state, handler, source) = (state.clone(), handler.clone(), source.clone());
            tokio::spawn(async move {
                let span = tracing::info_span!(
                    "request",
                    otel.name = %format_args!("process {}", request.message.subject),
                    otel.kind = "server",
                    messaging.operation.type = "process",
                    messaging.destination.name = %request.message.subject,
                );
                crate::trace::set_parent(&span, &request.message.headers);
                answer(request, &source, state, &*handler)
                    .instrument(span)
                    .await;
            });
        }
        requests.close().await;
    }))
}

async fn answer<S, Req, Resp, F, Fut>(request: Request, source: &str, state: Arc<S>, handler: &F)
where
    Req: prost::Message + prost::Name + Default,
    Resp: prost::Message + prost::Name,
    F: Fn(Arc<S>, Envelope, Req) -> Fut,
    Fut: Future<Output = Result<Resp, HandlerError>>,
{
    let (envelope, req) = match request.message.decode::<Req>() {
        Ok(d) => d,
        Err(e) => {
            let reply = error_reply(&HandlerError::Permanent(format!("bad request: {e}")));
            if let Err(e) = request.respond(reply, bytes::Bytes::new()).await {
                tracing::debug!(error = %e, "could not answer a bad request");
            }
            return;
        }
    };
    let (headers, payload) = match handler(state, envelope.clone(), req).await {
        Ok(resp) => {
            let reply_env = caused_by(Envelope::new::<Resp>(source), &envelope);
            let mut headers = reply_env.to_headers();
            crate::trace::inject(&mut headers);
            (headers, bytes::Bytes::from(resp.encode_to_vec()))
        }
        Err(e) => (error_reply(&e), bytes::Bytes::new()),
    };
    if let Err(e) = request.respond(headers, payload).await {
        tracing::debug!(error = %e, "could not send a reply (the requester may have gone)");
    }
}

fn error_reply(e: &HandlerError) -> Headers {
    let (kind, message) = match e {
        HandlerError::Permanent(m) => ("permanent", m),
        HandlerError::Transient(m) => ("transient", m),
    };
    let one_line: String = message
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    [(ERROR, one_line.as_str()), (ERROR_KIND, kind)]
        .into_iter()
        .collect()
}
