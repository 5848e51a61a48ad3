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

/// `url` with the password of its userinfo replaced by `***`, for messages
/// and logs (`amqp://guest:***@host/%2f`); a URL without one is unchanged.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s && url[s + 3..at].contains(':') => {
            let user = url[s + 3..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Whether a TCP connection to the host of a `scheme://[user@]host[:port]/…`
/// URL succeeds within 3 s, so an unreachable broker fails fast and clearly.
#[cfg(any(feature = "nats", feature = "amqp"))]
pub(crate) async fn probe(url: &str, default_port: u16) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = hostport.split(['/', '?']).next().unwrap_or(hostport);
    let addr = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:{default_port}")
    };
    matches!(
        tokio::time::timeout(
            std::time::Duration::from_secs(3),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_their_backend() {
        assert_eq!(
            "embedded:data/broker.db".parse::<BrokerUrl>().ok(),
            Some(BrokerUrl::Embedded(PathBuf::from("data/broker.db")))
        );
        assert!(matches!(
            "nats://127.0.0.1:4222".parse(),
            Ok(BrokerUrl::Nats(_))
        ));
        assert!(matches!(
            "amqp://guest:guest@localhost:5672/%2f".parse(),
            Ok(BrokerUrl::Amqp(_))
        ));
    }

    #[test]
    fn a_bad_url_is_a_one_line_config_error() {
        for bad in ["kafka://x", "embedded:", "", "nats:/x"] {
            let err = bad.parse::<BrokerUrl>().expect_err(bad);
            assert!(matches!(err, BrokerError::Config(_)), "{bad}: {err}");
            assert_eq!(err.to_string().lines().count(), 1);
        }
    }

    /// A port nothing listens on (bound, then released).
    #[cfg(any(feature = "nats", feature = "amqp"))]
    fn closed_port() -> u16 {
        crate::testing::free_port()
    }

    #[cfg(feature = "nats")]
    #[tokio::test]
    async fn an_unreachable_nats_server_is_a_connection_error() {
        let url = format!("nats://127.0.0.1:{}", closed_port());
        let err = connect(&url).await.err().expect("nothing listens");
        assert!(matches!(err, BrokerError::Connection(_)), "{err}");
        assert!(err.to_string().contains(&url), "{err}");
    }

    #[cfg(feature = "amqp")]
    #[tokio::test]
    async fn an_unreachable_rabbitmq_is_a_connection_error() {
        let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port());
        let err = connect(&url).await.err().expect("nothing listens");
        assert!(matches!(err, BrokerError::Connection(_)), "{err}");
    }
}
