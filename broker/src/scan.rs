//! Reading what a stream holds now, from a start position to its end:
//! exports, dead-letter listings and catch-up checks use it on every backend.
//!
//! Where the backend has a [`Broker::cursor`], the reading is that cursor's
//! pages up to the stream's last sequence as it was when the reading began.
//! Elsewhere a throwaway consumer group (`sluice-<purpose>-<uuid>`) reads the filter
//! from the start position and acks as it goes; the reading ends when the
//! broker reports the group's lag as 0 while nothing is buffered (on
//! RabbitMQ, lag stays above 0 until the replay from the stream queue is
//! done), at the first message stored after the stream's last sequence as
//! it was when the reading began (where the backend has sequences: a
//! stream that never stops growing is still read to an end), or when the
//! caller stops it. The group is deleted afterwards,
//! also on errors.

use std::time::Duration;

use crate::{Broker, BrokerError, InboundMessage, LogCursor, StartPosition, SubscribeOptions};

/// What the reader wants after one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on reading.
    Continue,
    /// Stop here (the message is acked).
    Stop,
}

/// How long the reader waits for a delivery before asking for the lag.
const IDLE: Duration = Duration::from_millis(100);

/// Why a scan stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ScanError<E> {
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The caller's function failed on a message.
    #[error("{0}")]
    Caller(E),
}

/// Calls `each` on every message matching `filter` stored from `start` to
/// the end of the stream (as it is when the reading catches up), in stream
/// order and once each (redeliveries are skipped by sequence where the
/// backend has one). Returns how many messages `each` saw.
///
/// # Errors
/// The broker failed, or `each` did.
pub async fn scan<E>(
    broker: &dyn Broker,
    purpose: &str,
    filter: &str,
    start: StartPosition,
    mut each: impl FnMut(&InboundMessage) -> Result<Flow, E>,
) -> Result<u64, ScanError<E>> {
    let head = broker
        .stream_stats(crate::subject::stream_key(filter))
        .await?
        .and_then(|s| s.last_sequence);
    if let Some(cursor) = broker.cursor(filter, start).await? {
        return scan_cursor(cursor, head, each).await;
    }
    let group = format!("sluice-{purpose}-{}", uuid::Uuid::now_v7().simple());
    // Acks are immediate: a long ack wait and many deliveries keep a slow
    // reader from ever dead-lettering what it reads.
    let options = SubscribeOptions::new(group.clone(), filter)
        .start(start)
        .prefetch(1024)
        .ack_wait(Duration::from_secs(600))
        .max_deliveries(1000);
    options.validate()?;
    let mut subscription = broker.subscribe(options).await?;
    let mut seen = 0u64;
    let mut last_sequence = 0u64;
    let result = loop {
        let next = tokio::time::timeout(IDLE, subscription.next()).await;
        let delivery = match next {
            Ok(Some(Ok(delivery))) => delivery,
            Ok(Some(Err(e))) => break Err(ScanError::Broker(e)),
            Ok(None) => break Err(ScanError::Broker(BrokerError::Closed)),
            Err(_) => match broker.lag(filter, &group).await {
                Ok(Some(0)) => break Ok(seen),
                Ok(_) => continue,
                Err(e) => break Err(ScanError::Broker(e)),
            },
        };
        if let Some(seq) = delivery.message.sequence {
            if head.is_some_and(|h| seq > h) {
                break Ok(seen);
            }
            if seq <= last_sequence {
                let _ = delivery.ack().await;
                continue;
            }
            last_sequence = seq;
        }
        seen += 1;
        let flow = each(&delivery.message);
        if let Err(e) = delivery.ack().await {
            tracing::debug!(error = %e, "scan ack failed; the message may come again");
        }
        match flow {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop) => break Ok(seen),
            Err(e) => break Err(ScanError::Caller(e)),
        }
    };
    subscription.close().await;
    if let Err(e) = broker.delete_group(filter, &group).await {
        tracing::warn!(error = %e, group, "could not delete a scan's consumer group");
    }
    result
}

/// Messages a cursor page holds at most.
const PAGE: usize = 4096;

/// [`scan`] through a cursor: pages until the stream holds no more or a
/// message lies past `head`.
async fn scan_cursor<E>(
    mut cursor: Box<dyn LogCursor>,
    head: Option<u64>,
    mut each: impl FnMut(&InboundMessage) -> Result<Flow, E>,
) -> Result<u64, ScanError<E>> {
    let mut seen = 0u64;
    loop {
        let page = cursor.next_batch(PAGE).await?;
        if page.is_empty() {
            return Ok(seen);
        }
        for m in &page {
            if head.is_some_and(|h| m.sequence.is_some_and(|seq| seq > h)) {
                return Ok(seen);
            }
            seen += 1;
            match each(m) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => return Ok(seen),
                Err(e) => return Err(ScanError::Caller(e)),
            }
        }
    }
}

/// [`scan`] for a reader that reads everything and cannot fail.
///
/// # Errors
/// The broker failed.
pub async fn scan_all(
    broker: &dyn Broker,
    purpose: &str,
    filter: &str,
    start: StartPosition,
    mut each: impl FnMut(&InboundMessage),
) -> Result<u64, BrokerError> {
    scan(broker, purpose, filter, start, |m| {
        each(m);
        Ok::<_, std::convert::Infallible>(Flow::Continue)
    })
    .await
    .map_err(|e| match e {
        ScanError::Broker(e) => e,
        ScanError::Caller(never) => match never {},
    })
}
