//! What happens to a message after its handler ran: ack on success; on a
//! transient error, redeliver after an exponential backoff with jitter; on a
//! permanent error (bad input, failed validation), dead-letter at once with
//! the reason; after the configured number of deliveries, dead-letter with
//! the last error.

use std::time::Duration;

use rand::RngExt;
use sluice_broker::{BrokerError, Delivery};

/// How a handler failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again later (a timeout, a lost connection, a lock).
    #[error("transient: {0}")]
    Transient(String),
    /// Will fail the same way every time (undecodable, invalid).
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    /// A transient error from anything displayable.
    pub fn transient(e: impl std::fmt::Display) -> Self {
        Self::Transient(e.to_string())
    }

    /// A permanent error from anything displayable.
    pub fn permanent(e: impl std::fmt::Display) -> Self {
        Self::Permanent(e.to_string())
    }
}

/// Database errors are transient: a lost connection, a lock or a conflict
/// may pass; one that never does ends in the dead-letter subject after the
/// last delivery, with the error as its reason.
impl From<sea_orm::DbErr> for HandlerError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Transient(format!("database: {e}"))
    }
}

/// When and how often failed messages are retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Deliveries after which a message is dead-lettered (the first counts).
    pub max_deliveries: u32,
    /// Delay before the second delivery.
    pub initial_backoff: Duration,
    /// Longest delay between deliveries.
    pub max_backoff: Duration,
    /// Growth of the delay per delivery.
    pub multiplier: f64,
    /// Fraction of each delay that is randomised (0 = none, 1 = full jitter).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_deliveries: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// What to do with a failed delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Deliver again after this delay.
    Retry(Duration),
    /// Give up: dead-letter with this reason.
    DeadLetter(String),
}

impl RetryPolicy {
    /// The delay after the `delivered`-th delivery failed (1 = the first):
    /// `initial × multiplier^(delivered-1)`, capped, minus up to `jitter` of it.
    pub fn backoff(&self, delivered: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(i32::try_from(delivered.saturating_sub(1)).unwrap_or(i32::MAX));
        let base = self.initial_backoff.as_secs_f64() * exp;
        let capped = base.min(self.max_backoff.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = capped * jitter * rand::rng().random_range(0.0..=1.0);
        Duration::from_secs_f64((capped - spread).max(0.0))
    }

    /// Decides the fate of the `delivered`-th delivery that failed with `error`.
    pub fn decide(&self, delivered: u32, error: &HandlerError) -> Decision {
        match error {
            HandlerError::Permanent(reason) => Decision::DeadLetter(reason.clone()),
            HandlerError::Transient(reason) if delivered >= self.max_deliveries => {
                Decision::DeadLetter(format!(
                    "failed {delivered} deliveries, last error: {reason}"
                ))
            }
            HandlerError::Transient(_) => Decision::Retry(self.backoff(delivered)),
        }
    }

    /// Settles `delivery` according to its handler's `outcome`.
    ///
    /// # Errors
    /// The broker could not be told; the message is then delivered again.
    pub async fn settle(
        &self,
        delivery: Delivery,
        outcome: Result<(), HandlerError>,
    ) -> Result<Settled, BrokerError> {
        let error = match outcome {
            Ok(()) => {
                delivery.ack().await?;
                return Ok(Settled::Acked);
            }
            Err(e) => e,
        };
        match self.decide(delivery.message.delivered, &error) {
            Decision::Retry(delay) => {
                delivery.nack(delay).await?;
                Ok(Settled::Retried(delay))
            }
            Decision::DeadLetter(reason) => {
                delivery.dead_letter(&reason).await?;
                Ok(Settled::DeadLettered(reason))
            }
        }
    }
}

/// How a delivery was settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// Handled; acked.
    Acked,
    /// Failed transiently; redelivered after this delay.
    Retried(Duration),
    /// Dead-lettered with this reason.
    DeadLettered(String),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let p = no_jitter();
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(2), Duration::from_millis(400));
        assert_eq!(p.backoff(4), Duration::from_millis(1600));
        assert_eq!(p.backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn jitter_only_shortens_the_delay_within_its_fraction() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        for _ in 0..1000 {
            let d = p.backoff(3);
            assert!(
                d <= Duration::from_millis(800) && d >= Duration::from_millis(400),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_permanent_error_is_dead_lettered_at_once() {
        let d = no_jitter().decide(1, &HandlerError::Permanent("negative quantity".into()));
        assert_eq!(d, Decision::DeadLetter("negative quantity".into()));
    }

    #[test]
    fn a_message_past_max_deliveries_is_dead_lettered_with_the_last_error() {
        let p = no_jitter();
        let e = HandlerError::Transient("db locked".into());
        assert_eq!(
            p.decide(4, &e),
            Decision::Retry(Duration::from_millis(1600))
        );
        assert_eq!(
            p.decide(5, &e),
            Decision::DeadLetter("failed 5 deliveries, last error: db locked".into())
        );
    }
}
