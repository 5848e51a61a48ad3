//! A short-lived cache of read-model rows in front of the database, for
//! the hottest read (`GET /v1/orders/{id}`): on SQLite every query hops to
//! a connection's thread and back, which costs more than the rest of the
//! request.
//!
//! Correctness: the projection marks each row it changes ([`RowCache::touch`],
//! inside its transaction) and, once the transaction commits, the marked
//! rows are dropped and the cache's epoch moves on ([`RowCache::settle`],
//! from the projection's `after_commit`). A reader notes the epoch before it
//! queries and keeps what it read only if the epoch has not moved
//! ([`RowCache::keep`]), so a row read before a commit is never kept after
//! it. Rows also expire after a short TTL, which bounds staleness where
//! this process does not see the commit (another edge replica projecting
//! into the same database) or where concurrent transactions settle each
//! other's marks early.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rows by id, each kept for at most `ttl`.
pub(crate) struct RowCache<V> {
    rows: Mutex<HashMap<String, (Arc<V>, Instant)>>,
    touched: Mutex<HashSet<String>>,
    epoch: AtomicU64,
    ttl: Duration,
    max: usize,
}

impl<V> RowCache<V> {
    /// A cache keeping up to `max` rows for `ttl` each (`ttl` zero: off).
    pub(crate) fn new(ttl: Duration, max: usize) -> Self {
        Self {
            rows: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashSet::new()),
            epoch: AtomicU64::new(0),
            ttl,
            max,
        }
    }

    /// The row `id`, if kept and fresh.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<V>> {
        let rows = self.rows.lock().ok()?;
        let (row, at) = rows.get(id)?;
        (at.elapsed() < self.ttl).then(|| row.clone())
    }

    /// The epoch to note before querying the database.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps `row` (read after `epoch` was noted) unless something
    /// committed since.
    pub(crate) fn keep(&self, epoch: u64, id: &str, row: V) -> Arc<V> {
        let row = Arc::new(row);
        if self.ttl.is_zero() {
            return row;
        }
        if let Ok(mut rows) = self.rows.lock() {
            // Checked under the lock that `settle` takes to drop rows.
            if self.epoch.load(Ordering::Acquire) == epoch {
                if rows.len() >= self.max {
                    rows.retain(|_, (_, at)| at.elapsed() < self.ttl);
                    if rows.len() >= self.max {
                        rows.clear();
                    }
                }
                rows.insert(id.to_owned(), (row.clone(), Instant::now()));
            }
        }
        row
    }

    /// Marks row `id` as changed by a transaction not yet committed.
    /// A cache that is off keeps no rows, so it marks none either (a
    /// replay's projection runs with one).
    pub(crate) fn touch(&self, id: &str) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut t) = self.touched.lock() {
            t.insert(id.to_owned());
        }
    }

    /// After a commit: drops the marked rows and moves the epoch on.
    pub(crate) fn settle(&self) {
        let touched: Vec<String> = match self.touched.lock() {
            Ok(mut t) => t.drain().collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(mut rows) = self.rows.lock() {
            for id in &touched {
                rows.remove(id);
            }
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_read_before_a_commit_is_not_kept_after_it() {
        let c = RowCache::new(Duration::from_secs(60), 10);
        let e = c.epoch();
        c.touch("a");
        c.settle();
        c.keep(e, "a", 1);
        assert!(c.get("a").is_none(), "read before the commit");
        let e = c.epoch();
        c.keep(e, "a", 2);
        assert_eq!(c.get("a").as_deref(), Some(&2));
        // A change marks and settles it away.
        c.touch("a");
        c.settle();
        assert!(c.get("a").is_none());
    }

    #[test]
    fn rows_expire_and_the_size_is_bounded() {
        let c = RowCache::new(Duration::from_millis(30), 2);
        for id in ["a", "b", "c"] {
            let e = c.epoch();
            c.keep(e, id, 0);
        }
        assert!(c.rows.lock().expect("lock").len() <= 2);
        assert!(c.get("c").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get("c").is_none(), "expired");
        let off = RowCache::new(Duration::ZERO, 2);
        let e = off.epoch();
        off.keep(e, "a", 0);
        assert!(off.get("a").is_none(), "a zero TTL keeps nothing");
        off.touch("a");
        assert!(off.touched.lock().expect("lock").is_empty(), "nor marks");
    }
}
