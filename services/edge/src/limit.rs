//! Per-client rate limits: a GCRA bucket per API key, per Bearer token, or
//! per client address for anonymous requests; a request over its client's
//! limit is 429 with `Retry-After`.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::http::Peer;
use crate::problem::Problem;

/// How many requests a client may make: `per_second` on average, bursts of
/// up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second per client.
    pub per_second: NonZeroU32,
    /// Requests a client may make at once after being idle.
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// The default: 100 requests per second per client, bursts of 200.
    pub const DEFAULT: Self = Self {
        per_second: NonZeroU32::new(100).expect("non-zero"),
        burst: NonZeroU32::new(200).expect("non-zero"),
    };
}

/// Who a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    /// An API key, by its public id.
    Key(String),
    /// A Bearer token, by a hash of it (tokens are not kept).
    Token(u64),
    /// An anonymous request, by the peer's address.
    Addr(IpAddr),
    /// No address is known (not served over TCP).
    Unknown,
}

fn client(headers: &HeaderMap, peer: Option<SocketAddr>) -> Client {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return match sluice_accounts::api_keys::parse_key(key) {
            Some((id, _)) => Client::Key(id.to_owned()),
            None => Client::Token(hash(key)),
        };
    }
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        return Client::Token(hash(auth.as_bytes()));
    }
    peer.map_or(Client::Unknown, |a| Client::Addr(a.ip()))
}

fn hash(v: impl Hash) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// The limits' state, shared by every request.
pub(crate) struct Limiter {
    buckets: DefaultKeyedRateLimiter<Client>,
    checks: AtomicU64,
}

/// Forget idle clients every this many requests.
const PRUNE_EVERY: u64 = 8192;

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Arc<Self> {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Arc::new(Self {
            buckets: DefaultKeyedRateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        })
    }

    /// `None` when `client` may go on, else how many seconds it must wait.
    fn check(&self, client: &Client) -> Option<u64> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        match self.buckets.check_key(client) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                // Whole seconds, rounded up, at least one.
                Some((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
            }
        }
    }
}

/// The middleware: 429 problem with `Retry-After` over the limit.
pub(crate) async fn rate_limit(
    State(limiter): State<Arc<Limiter>>,
    request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.0);
    let who = client(request.headers(), peer);
    match limiter.check(&who) {
        None => next.run(request).await,
        Some(seconds) => {
            tracing::debug!(client = ?who, retry_after = seconds, "rate limited");
            let mut r = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                format!("too many requests from this client; retry after {seconds} s"),
            )
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_told_apart_by_key_token_or_address() {
        let mut h = HeaderMap::new();
        let peer: SocketAddr = "10.0.0.1:5000".parse().expect("address");
        assert_eq!(client(&h, Some(peer)), Client::Addr(peer.ip()));
        assert_eq!(client(&h, None), Client::Unknown);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        let a = client(&h, Some(peer));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_ne!(a, client(&h, Some(peer)));
        // The admin key is not an issued key: it counts by its hash.
        h.insert("x-api-key", HeaderValue::from_static("the-admin-key"));
        assert!(matches!(client(&h, Some(peer)), Client::Token(_)));
        let id = "0123456789abcdef0123456789abcdef";
        let issued = format!(
            "sk_{id}_{}",
            "s".repeat(sluice_accounts::api_keys::SECRET_CHARS)
        );
        h.insert("x-api-key", HeaderValue::from_str(&issued).expect("header"));
        assert_eq!(client(&h, Some(peer)), Client::Key(id.into()));
    }

    #[test]
    fn a_burst_is_allowed_then_the_client_waits() {
        let limiter = Limiter::new(RateLimit {
            per_second: NonZeroU32::new(1).expect("non-zero"),
            burst: NonZeroU32::new(3).expect("non-zero"),
        });
        let me = Client::Key("me".into());
        for _ in 0..3 {
            assert_eq!(limiter.check(&me), None);
        }
        assert_eq!(limiter.check(&me), Some(1));
        // Someone else has their own bucket.
        assert_eq!(limiter.check(&Client::Key("you".into())), None);
    }
}
