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
/// message lies past `head`. The next page is read by a task of its own
/// while the caller works through this one: reading waits on the broker or
/// the log's connection and decodes headers, the caller's work (an export
/// encoding and compressing) is CPU of its own, so the two overlap.
async fn scan_cursor<E>(
    cursor: Box<dyn LogCursor>,
    head: Option<u64>,
    mut each: impl FnMut(&InboundMessage) -> Result<Flow, E>,
) -> Result<u64, ScanError<E>> {
    let (tx, mut pages) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(read_ahead(cursor, tx));
    let mut seen = 0u64;
    let result = 'pages: loop {
        let page = match pages.recv().await {
            Some(Ok(page)) if !page.is_empty() => page,
            Some(Ok(_)) | None => break Ok(seen),
            Some(Err(e)) => break Err(ScanError::Broker(e)),
        };
        for m in &page {
            if head.is_some_and(|h| m.sequence.is_some_and(|seq| seq > h)) {
                break 'pages Ok(seen);
            }
            seen += 1;
            match each(m) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => break 'pages Ok(seen),
                Err(e) => break 'pages Err(ScanError::Caller(e)),
            }
        }
    };
    // A reader still waiting on the broker (a page past the end) is not
    // needed any more; it drops the cursor as it ends.
    reader.abort();
    result
}

/// Sends `cursor`'s pages to `pages` until one is empty or fails, or
/// nobody takes them any more.
async fn read_ahead(
    mut cursor: Box<dyn LogCursor>,
    pages: tokio::sync::mpsc::Sender<Result<Vec<InboundMessage>, BrokerError>>,
) {
    loop {
        let page = cursor.next_batch(PAGE).await;
        let last = !matches!(&page, Ok(p) if !p.is_empty());
        if pages.send(page).await.is_err() || last {
            return;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    use async_trait::async_trait;

    use super::*;

    /// Pages of messages numbered from 1; then the stream holds no more,
    /// or (with `hang`) the next read never returns.
    struct Pages {
        pages: Vec<Vec<u64>>,
        reads: Arc<AtomicUsize>,
        dropped: Arc<AtomicBool>,
        hang: bool,
        fail: bool,
    }

    impl Pages {
        fn new(pages: Vec<Vec<u64>>) -> Self {
            Self {
                pages,
                reads: Arc::default(),
                dropped: Arc::default(),
                hang: false,
                fail: false,
            }
        }
    }

    impl Drop for Pages {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl LogCursor for Pages {
        async fn next_batch(&mut self, _max: usize) -> Result<Vec<InboundMessage>, BrokerError> {
            let read = self.reads.fetch_add(1, Ordering::SeqCst);
            let Some(page) = self.pages.get(read) else {
                if self.hang {
                    std::future::pending::<()>().await;
                }
                if self.fail {
                    return Err(BrokerError::Closed);
                }
                return Ok(Vec::new());
            };
            Ok(page
                .iter()
                .map(|&seq| InboundMessage {
                    subject: "t.x".into(),
                    headers: crate::Headers::new(),
                    payload: bytes::Bytes::new(),
                    sequence: Some(seq),
                    delivered: 1,
                    timestamp: None,
                })
                .collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_page_is_read_while_the_caller_works_on_this_one() {
        let cursor = Pages::new(vec![vec![1, 2, 3], vec![4, 5, 6]]);
        let reads = cursor.reads.clone();
        let mut overlapped = false;
        let mut order = Vec::new();
        let seen = scan_cursor(Box::new(cursor), None, |m| {
            if m.sequence == Some(1) {
                // Still on the first page: the second is being read meanwhile.
                let started = Instant::now();
                while reads.load(Ordering::SeqCst) < 2 && started.elapsed() < Duration::from_secs(5)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                overlapped = reads.load(Ordering::SeqCst) >= 2;
            }
            order.extend(m.sequence);
            Ok::<_, std::convert::Infallible>(Flow::Continue)
        })
        .await
        .unwrap();
        assert!(overlapped, "the second page was not read ahead");
        assert_eq!((seen, order), (6, vec![1, 2, 3, 4, 5, 6]));
    }

    #[tokio::test]
    async fn a_scan_ends_at_the_head_and_where_the_caller_stops_and_lets_go_of_the_cursor() {
        let mut cursor = Pages::new(vec![vec![1, 2], vec![3, 4]]);
        cursor.hang = true;
        let dropped = cursor.dropped.clone();
        let mut order = Vec::new();
        let seen = scan_cursor(Box::new(cursor), Some(3), |m| {
            order.extend(m.sequence);
            Ok::<_, std::convert::Infallible>(Flow::Continue)
        })
        .await
        .unwrap();
        assert_eq!((seen, order), (3, vec![1, 2, 3]));
        // The reader was waiting on a page past the end: it is stopped.
        let started = Instant::now();
        while !dropped.load(Ordering::SeqCst) {
            assert!(started.elapsed() < Duration::from_secs(5), "cursor kept");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        let mut cursor = Pages::new(vec![vec![1, 2], vec![3, 4]]);
        cursor.hang = true;
        let seen = scan_cursor(Box::new(cursor), None, |m| {
            Ok::<_, std::convert::Infallible>(if m.sequence == Some(2) {
                Flow::Stop
            } else {
                Flow::Continue
            })
        })
        .await
        .unwrap();
        assert_eq!(seen, 2);
    }

    #[tokio::test]
    async fn a_failed_read_and_a_failing_caller_end_the_scan_with_their_errors() {
        let mut cursor = Pages::new(vec![vec![1]]);
        cursor.fail = true;
        let err = scan_cursor(Box::new(cursor), None, |_| {
            Ok::<_, std::convert::Infallible>(Flow::Continue)
        })
        .await
        .expect_err("the second read fails");
        assert!(
            matches!(err, ScanError::Broker(BrokerError::Closed)),
            "{err}"
        );

        let cursor = Pages::new(vec![vec![1, 2]]);
        let err = scan_cursor(Box::new(cursor), None, |m| {
            if m.sequence == Some(2) {
                Err("bad record")
            } else {
                Ok(Flow::Continue)
            }
        })
        .await
        .expect_err("the caller fails");
        assert!(matches!(err, ScanError::Caller("bad record")));
    }
}
