//! The time budget of one filter call, charged in CPU time of the thread running the guest.
//!
//! Wall time is the wrong measure on a busy machine: a call preempted for 10 ms by the kernel
//! has not used 10 ms, and charging it would fail innocent filters exactly when the proxy is
//! loaded. Reading the thread's CPU clock is a system call (~0.1–0.5 µs), too dear for every
//! phase call, so the clock is read lazily: only from the epoch callback, which wasmtime runs
//! once per tick while the guest is actually executing. Until that first tick the call is
//! charged its wall time, capped at two ticks; from then on, CPU time.
//!
//! A callout suspends the guest (the worker thread serves other requests meanwhile, so its CPU
//! clock no longer measures this guest): the segment so far is banked, and a new one starts when
//! the callout returns.

use std::time::{Duration, Instant};

/// How often the engine's epoch advances (a ticker thread in `module`): the granularity of
/// `time_per_phase`.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// What one call has spent, and may spend.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: Duration,
    /// Time of finished segments.
    banked: Duration,
    /// When the current segment started (the call, or the end of the last callout).
    segment_start: Instant,
    /// The thread's CPU clock at the first tick of the segment, and what was charged before it.
    anchor: Option<(Duration, Duration)>,
    /// Whether the limit was reached (the call then traps).
    pub hit: bool,
}

impl Budget {
    pub fn new(limit: Duration) -> Budget {
        Budget {
            limit,
            banked: Duration::ZERO,
            segment_start: Instant::now(),
            anchor: None,
            hit: false,
        }
    }

    /// Starts a call with `limit` to spend.
    pub fn start(&mut self, limit: Duration) {
        *self = Budget::new(limit);
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// From the epoch callback: charges the time since the last tick, and says whether the call
    /// is still within its limit.
    pub fn tick(&mut self) -> bool {
        let spent = self.banked + self.segment();
        if spent > self.limit {
            self.hit = true;
        }
        !self.hit
    }

    /// Before the guest is suspended (a callout): banks the segment so far.
    pub fn pause(&mut self) {
        let segment = self.segment();
        self.banked += segment;
    }

    /// After the guest resumes.
    pub fn resume(&mut self) {
        self.segment_start = Instant::now();
        self.anchor = None;
    }

    /// Time of the current segment, anchoring the CPU clock at its first tick.
    fn segment(&mut self) -> Duration {
        match self.anchor {
            Some((cpu_at_anchor, before)) => before + thread_cpu().saturating_sub(cpu_at_anchor),
            None => {
                let before = self.segment_start.elapsed().min(TICK * 2);
                self.anchor = Some((thread_cpu(), before));
                before
            }
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns `ms` of this thread's CPU time (however long that takes on a loaded machine).
    fn spin_cpu(ms: u64) {
        let t0 = thread_cpu();
        while thread_cpu() - t0 < Duration::from_millis(ms) {}
    }

    #[test]
    fn time_off_the_cpu_is_not_charged() {
        let mut b = Budget::new(Duration::from_millis(5));
        assert!(
            b.tick(),
            "the first tick charges at most two ticks of wall time"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.tick(), "20 ms asleep is not 20 ms of CPU");
        assert!(!b.hit);
    }

    #[test]
    fn time_on_the_cpu_is_charged() {
        let mut b = Budget::new(Duration::from_millis(5));
        assert!(b.tick());
        spin_cpu(30);
        assert!(!b.tick(), "30 ms of spinning exceeds a 5 ms budget");
        assert!(b.hit);
    }

    #[test]
    fn banked_segments_add_up_across_a_pause() {
        let mut b = Budget::new(Duration::from_millis(50));
        b.tick();
        spin_cpu(30);
        b.pause();
        std::thread::sleep(Duration::from_millis(100));
        b.resume();
        b.tick();
        assert!(!b.hit, "the pause itself is free");
        spin_cpu(30);
        assert!(!b.tick(), "30 + 30 ms of CPU exceeds 50 ms");
    }
}
