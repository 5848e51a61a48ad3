//! Choosing a backend by URL: `embedded:<path>`, `nats://…`, `amqp://…`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{Broker, BrokerError};

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerUrl {
    /// `embedded:<path>`: the SQLite log file at `path`.
    Embedded(PathBuf),
    /// `nats://host:port[,nats://…]`: a NATS server or cluster.
    Nats(String),
    /// `amqp://user:pass@host:port/vhost`: a RabbitMQ server.
    Amqp(String),
}

impl std::str::FromStr for BrokerUrl {
    type Err = BrokerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("embedded:") {
            if path.is_empty() {
                return Err(BrokerError::Config(
                    "embedded broker URL needs a path: embedded:<path>".into(),
                ));
            }
            Ok(BrokerUrl::Embedded(PathBuf::from(path)))
        } else if s.starts_with("nats://") || s.starts_with("tls://") {
            Ok(BrokerUrl::Nats(s.to_owned()))
        } else if s.starts_with("amqp://") || s.starts_with("amqps://") {
            Ok(BrokerUrl::Amqp(s.to_owned()))
        } else {
            Err(BrokerError::Config(format!(
                "unknown broker URL {s:?}: use embedded:<path>, nats://host:port or amqp://host:port"
            )))
        }
    }
}

/// Connects to the broker named by `url` with default options.
///
/// # Errors
/// The URL is not valid, its backend was not compiled in, or the connection failed.
pub async fn connect(url: &str) -> Result<Arc<dyn Broker>, BrokerError> {
    match url.parse::<BrokerUrl>()? {
        #[cfg(feature = "embedded")]
        BrokerUrl::Embedded(path) => Ok(Arc::new(
            crate::embedded::EmbeddedBroker::open(&path, Default::default()).await?,
        )),
        #[cfg(feature = "nats")]
        BrokerUrl::Nats(url) => Ok(Arc::new(
            crate::nats::NatsBroker::connect(&url, Default::default()).await?,
        )),
        #[cfg(feature = "amqp")]
        BrokerUrl::Amqp(url) => Ok(Arc::new(
            crate::amqp::AmqpBroker::connect(&url, Default::default()).await?,
        )),
        #[allow(unreachable_patterns)]
        other => Err(BrokerError::Config(format!(
            "backend of {other:?} is not compiled into this build"
        ))),
    }
}
