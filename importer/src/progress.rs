//! Progress counters for whoever watches an import: the CLI's progress line today, the
//! controller's `status.progress` later. Plain atomics, updated by the data path, read at any
//! time from any thread; nothing here logs.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Live counters of one import.
///
/// `done` / `total` count the import's own unit of work: bytes as served while the object is
/// streamed, guest bytes converted while a qcow2 is read by HTTP Range requests. `downloaded`
/// always counts bytes received from the network.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    done: AtomicU64,
    /// 0 = unknown.
    total: AtomicU64,
    downloaded: AtomicU64,
    retries: AtomicU32,
    range_requests: AtomicU64,
}

/// A consistent-enough reading of [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// Units done.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// Bytes received from the network.
    pub downloaded: u64,
    /// Time since the import started.
    pub elapsed: Duration,
    /// `done` per second since the start.
    pub rate: f64,
    /// `done / total` in percent (0–100), when the total is known.
    pub percent: Option<f64>,
    /// Retries so far (resumed transfers, repeated range reads).
    pub retries: u32,
    /// HTTP Range requests made for random access.
    pub range_requests: u64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
            retries: AtomicU32::new(0),
            range_requests: AtomicU64::new(0),
        }
    }
}

impl Progress {
    /// Fresh counters; the clock starts now.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> Snapshot {
        let done = self.done.load(Ordering::Relaxed);
        let total = match self.total.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        };
        let elapsed = self.started.elapsed();
        let secs = elapsed.as_secs_f64();
        Snapshot {
            done,
            total,
            downloaded: self.downloaded.load(Ordering::Relaxed),
            elapsed,
            rate: if secs > 0.0 { done as f64 / secs } else { 0.0 },
            percent: total.map(|t| (done as f64 * 100.0 / t as f64).min(100.0)),
            retries: self.retries.load(Ordering::Relaxed),
            range_requests: self.range_requests.load(Ordering::Relaxed),
        }
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Bytes received from the network so far.
    pub fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }

    /// Sets the counters to absolute values, for a transfer measured elsewhere (an upload's
    /// body bytes received and its announced length).
    pub fn report(&self, done: u64, total: Option<u64>) {
        self.done.store(done, Ordering::Relaxed);
        self.downloaded.store(done, Ordering::Relaxed);
        self.total.store(total.unwrap_or(0), Ordering::Relaxed);
    }

    pub(crate) fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub(crate) fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_downloaded(&self, n: u64) {
        self.downloaded.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_range_request(&self) {
        self.range_requests.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_known_only_with_a_total() {
        let p = Progress::new();
        p.add_done(50);
        assert_eq!(p.snapshot().percent, None);
        p.set_total(200);
        assert_eq!(p.snapshot().percent, Some(25.0));
        assert_eq!(p.snapshot().total, Some(200));
    }
}
