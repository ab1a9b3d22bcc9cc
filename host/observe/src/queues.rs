//! Requests waiting for a filter instance: how many wait now, and how long they waited.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use crate::Histogram;

/// Bucket bounds of the instance wait, in microseconds: from nothing to the longest deadline.
const WAIT_BUCKETS_US: &[u64] = &[
    100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000, 15_000_000,
];

/// The queue in front of one filter's instances.
#[derive(Debug)]
pub struct QueueStats {
    waiting: AtomicI64,
    wait: Histogram,
}

impl Default for QueueStats {
    fn default() -> Self {
        QueueStats {
            waiting: AtomicI64::new(0),
            wait: Histogram::new(WAIT_BUCKETS_US),
        }
    }
}

impl QueueStats {
    /// A request starts waiting for an instance; it stops when the guard drops.
    pub fn enter(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Relaxed);
        Waiting {
            stats: self,
            since: std::time::Instant::now(),
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> i64 {
        self.waiting.load(Relaxed)
    }

    pub(crate) fn render(&self, out: &mut String, filter: &str, part: Part) {
        let labels = format!("filter=\"{}\"", crate::metrics::escape(filter));
        match part {
            Part::Waiting => {
                let _ = writeln!(
                    out,
                    "weir_filter_queue_waiting{{{labels}}} {}",
                    self.waiting()
                );
            }
            Part::Wait => self
                .wait
                .render(out, "weir_filter_queue_wait_seconds", &labels),
        }
    }
}

/// Which metric of a queue to render.
#[derive(Clone, Copy)]
pub(crate) enum Part {
    Waiting,
    Wait,
}

/// One request waiting in a queue.
pub struct Waiting<'a> {
    stats: &'a QueueStats,
    since: std::time::Instant,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.stats.waiting.fetch_sub(1, Relaxed);
        self.stats.wait.observe(self.since.elapsed());
    }
}

impl Waiting<'_> {
    /// How long it has waited.
    pub fn waited(&self) -> Duration {
        self.since.elapsed()
    }
}
