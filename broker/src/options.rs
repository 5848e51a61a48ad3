//! Options of a consumer group subscription.

use std::time::{Duration, SystemTime};

/// Where a new consumer group starts reading its domain's stream.
///
/// Only used when the group is created; an existing group resumes after its
/// last acked message whatever is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// Only messages published after the group was created.
    #[default]
    New,
    /// Every message still in the stream.
    Beginning,
    /// From this stream sequence (inclusive).
    Sequence(u64),
    /// From the first message stored at or after this time.
    Time(SystemTime),
}

/// How to join a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The durable group name (letters, digits, `-` and `_`).
    pub group: String,
    /// Subject filter with NATS wildcards; its first token (the domain) must be literal.
    pub filter: String,
    /// Where a newly created group starts.
    pub start: StartPosition,
    /// How long a delivery may stay unacked before it is delivered again.
    pub ack_wait: Duration,
    /// Deliveries after which a message is dead-lettered instead.
    pub max_deliveries: u32,
    /// Most unacked deliveries this subscriber holds at once.
    pub prefetch: usize,
}

impl SubscribeOptions {
    /// Options for `group` on `filter`, with defaults: start `New`, ack wait
    /// 30 s, 5 deliveries, prefetch 256.
    pub fn new(group: impl Into<String>, filter: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            filter: filter.into(),
            start: StartPosition::New,
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            prefetch: 256,
        }
    }

    /// Sets the start position.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Sets the ack wait.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets the maximum number of deliveries.
    pub fn max_deliveries(mut self, max: u32) -> Self {
        self.max_deliveries = max;
        self
    }

    /// Sets the prefetch window.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Checks the group name, filter and limits.
    ///
    /// # Errors
    /// The group name or filter is not valid, or a limit is zero.
    pub fn validate(&self) -> Result<(), crate::BrokerError> {
        crate::subject::validate_group(&self.group)?;
        crate::subject::validate_filter(&self.filter)?;
        if self.max_deliveries == 0 || self.prefetch == 0 || self.ack_wait.is_zero() {
            return Err(crate::BrokerError::Config(
                "max_deliveries, prefetch and ack_wait must be positive".into(),
            ));
        }
        Ok(())
    }
}
