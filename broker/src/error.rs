//! The one error type of broker operations, matchable by kind.

use std::time::Duration;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker URL or an option is not valid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A subject or filter is not valid for this operation.
    #[error("invalid subject {subject:?}: {reason}")]
    Subject {
        /// The offending subject or filter.
        subject: String,
        /// Why it is not valid.
        reason: String,
    },
    /// The connection to the broker could not be made or was lost.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The broker refused or failed to confirm a publish.
    #[error("publish to {subject} was not confirmed: {reason}")]
    Publish {
        /// The subject published to.
        subject: String,
        /// The broker's answer.
        reason: String,
    },
    /// The message could not be routed to any queue or stream.
    #[error("message on {0} is unroutable: no stream or queue takes this subject")]
    Unroutable(String),
    /// Nobody serves requests on the subject.
    #[error("no responders for {0}")]
    NoResponders(String),
    /// The operation did not complete in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Acknowledging a delivery failed.
    #[error("acknowledgement failed: {0}")]
    Ack(String),
    /// The local store of the embedded broker failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The broker was closed.
    #[error("broker is closed")]
    Closed,
    /// Any other backend failure.
    #[error("{0}")]
    Backend(String),
}
