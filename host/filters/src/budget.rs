//! The time budget of one filter call, charged in CPU time of the thread running the guest, and
//! the watchdog that makes running guests check it.
//!
//! Wall time is the wrong measure on a busy machine: a call preempted for 10 ms by the kernel
//! has not used 10 ms, and charging it would fail innocent filters exactly when the proxy is
//! loaded. Reading the thread's CPU clock is a system call (~0.1–0.5 µs), too dear for every
//! phase call, so the clock is read lazily: only from the epoch callback, which wasmtime runs
//! in a guest that is executing when the engine's epoch advances. Until that first check the
//! call is charged its wall time, capped at its first look (below); from then on, CPU time.
//!
//! The epoch advances only when some call may have reached its limit ([`Watchdog`]): each
//! call, as it starts, asks to be looked at after half its limit (between [`TICK`] and
//! `FIRST_LOOK`); each check that finds the call within its limit asks again for when the rest
//! could be spent; and while any call runs the epoch advances at least at the cadence of those
//! first looks (a backstop, see [`Watchdog`]). A call that ends before its look costs the
//! watchdog nothing, so a loaded proxy advances the epoch a few hundred times a second instead
//! of every millisecond, and an idle one never (the thread parks). A runaway call is stopped
//! within a millisecond or two of its limit.
//!
//! A callout suspends the guest (the worker thread serves other requests meanwhile, so its CPU
//! clock no longer measures this guest): the segment so far is banked, and a new one starts when
//! the callout returns.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The least time between two looks at a running call: the granularity of `time_per_phase`.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// The longest a segment runs before its first look (and so the most wall time it is charged
/// before its CPU clock is read): with a long limit, half of it would charge a preempted call
/// for much time it did not use.
const FIRST_LOOK: Duration = Duration::from_millis(4);

/// What one call has spent, and may spend.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: Duration,
    /// Time of finished segments.
    banked: Duration,
    /// When the current segment started (the call, or the end of the last callout).
    segment_start: Instant,
    /// The thread's CPU clock at the first check of the segment, and what was charged before it.
    anchor: Option<(Duration, Duration)>,
    /// Whether the limit was reached (the call then traps).
    pub hit: bool,
    watch: Arc<Watchdog>,
}

impl Budget {
    pub fn new(limit: Duration, watch: Arc<Watchdog>) -> Budget {
        Budget {
            limit,
            banked: Duration::ZERO,
            segment_start: Instant::now(),
            anchor: None,
            hit: false,
            watch,
        }
    }

    /// Starts a call with `limit` to spend (after its store's epoch deadline is set: the
    /// watchdog may advance the epoch as soon as it is asked to look).
    pub fn start(&mut self, limit: Duration) {
        self.limit = limit;
        self.banked = Duration::ZERO;
        self.hit = false;
        self.resume();
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// From the epoch callback: charges the time so far, and says whether the call is still
    /// within its limit (then the watchdog looks again when the rest could be spent).
    pub fn tick(&mut self) -> bool {
        let spent = self.banked + self.segment();
        if spent > self.limit {
            self.hit = true;
            return false;
        }
        self.watch
            .look_after(Instant::now(), (self.limit - spent).max(TICK), false);
        true
    }

    /// Before the guest is suspended (a callout): banks the segment so far.
    pub fn pause(&mut self) {
        let segment = self.segment();
        self.banked += segment;
    }

    /// After the guest resumes (and as a call starts): a new segment, looked at after half of
    /// what is left of the limit, or [`FIRST_LOOK`] if sooner.
    pub fn resume(&mut self) {
        self.segment_start = Instant::now();
        self.anchor = None;
        self.watch
            .look_after(self.segment_start, self.first_look(), true);
    }

    /// How long a segment runs before its first look, and the most wall time charged for it:
    /// short, because wall time counts a preempted call's waiting as spent.
    fn first_look(&self) -> Duration {
        (self.limit.saturating_sub(self.banked) / 2).clamp(TICK, FIRST_LOOK)
    }

    /// Time of the current segment, anchoring the CPU clock at its first check.
    fn segment(&mut self) -> Duration {
        match self.anchor {
            Some((cpu_at_anchor, before)) => before + thread_cpu().saturating_sub(cpu_at_anchor),
            None => {
                let before = self.segment_start.elapsed().min(self.first_look());
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

/// Advances the engine's epoch when a running call may have reached its limit, which makes
/// every guest executing at that moment check its budget ([`Budget::tick`]). One thread per
/// runtime. While calls come it wakes at the cadence of the shortest first look calls ask for
/// (so a call starting never has to wake it; an ask sooner than its planned wake does); once
/// no call runs and none has asked since its last advance, it parks until the next ask.
///
/// A running call is advanced for at that cadence even when nothing is asked: wasmtime re-arms
/// a guest's deadline after its epoch callback returns, so the ask that callback made can be
/// used up by an advance in between, and the guest would be left with no pending look.
#[derive(Debug)]
pub(crate) struct Watchdog {
    origin: Instant,
    /// The earliest look asked for (ns since `origin`), `u64::MAX` for none.
    due: AtomicU64,
    /// The shortest first look any call has asked for (ns): the cadence while calls come.
    shortest: AtomicU64,
    /// Calls started and not yet ended (including ones suspended on a callout).
    running: AtomicUsize,
    /// Until when the thread sleeps (ns since `origin`): `u64::MAX` parked, 0 awake. An ask
    /// for an earlier look wakes it.
    wake: AtomicU64,
    thread: OnceLock<std::thread::Thread>,
    stop: AtomicBool,
}

/// A look due this close is taken now: advancing a little early only makes a guest check a
/// little early (it asks again), and saves the thread a second wake-up.
const SLACK: u64 = (TICK.as_nanos() / 2) as u64;

impl Watchdog {
    pub fn new() -> Watchdog {
        Watchdog {
            origin: Instant::now(),
            due: AtomicU64::new(u64::MAX),
            shortest: AtomicU64::new(u64::MAX),
            running: AtomicUsize::new(0),
            wake: AtomicU64::new(0),
            thread: OnceLock::new(),
            stop: AtomicBool::new(false),
        }
    }

    fn ns(&self, t: Instant) -> u64 {
        let ns = t.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(ns).unwrap_or(u64::MAX - 1).min(u64::MAX - 1)
    }

    /// A call runs until the guard drops (however its future ends).
    pub fn running(&self) -> Running<'_> {
        self.running.fetch_add(1, SeqCst);
        Running(self)
    }

    /// Asks for the epoch to advance `after` from `from` (never, past what time can hold).
    /// `first`: a segment's first look, which sets the cadence.
    pub fn look_after(&self, from: Instant, after: Duration, first: bool) {
        let wait = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        if first && wait < self.shortest.load(Relaxed) {
            self.shortest.fetch_min(wait, Relaxed);
        }
        if let Some(at) = from.checked_add(after) {
            self.look_at(at);
        }
    }

    /// Asks for the epoch to advance at `at` (or earlier).
    pub fn look_at(&self, at: Instant) {
        let t = self.ns(at);
        // Sequentially consistent with the thread's publish-then-recheck in `run`: either it
        // sees this ask before it sleeps, or this sees that it sleeps past `t` and wakes it.
        if t < self.due.fetch_min(t, SeqCst)
            && t < self.wake.load(SeqCst)
            && let Some(thread) = self.thread.get()
        {
            thread.unpark();
        }
    }

    /// The thread's loop: `advance` moves the engine's epoch.
    pub fn run(&self, advance: impl Fn()) {
        self.thread.get_or_init(std::thread::current);
        let mut last = 0u64;
        while !self.stop.load(SeqCst) {
            let now = self.ns(Instant::now());
            let cadence = self.shortest.load(Relaxed).max(TICK.as_nanos() as u64);
            let mut due = self.due.load(SeqCst);
            let asked = due != u64::MAX;
            if !asked && self.running.load(SeqCst) > 0 {
                // The backstop (see the type's docs): a running call is looked at each cadence.
                due = last.saturating_add(cadence);
            }
            let next = if due == u64::MAX {
                // Nothing runs and nothing asked since the last advance: park until an ask.
                u64::MAX
            } else if due <= now.saturating_add(SLACK) {
                // Cleared before the epoch moves: a call starting meanwhile either asked after
                // this (and is seen on the next round) or set its deadline before the move (and
                // its guest checks now, asking again).
                if asked
                    && self
                        .due
                        .compare_exchange(due, u64::MAX, SeqCst, SeqCst)
                        .is_err()
                {
                    continue;
                }
                advance();
                last = now;
                // A call starting from now on asks for at least `cadence` from now.
                now.saturating_add(cadence)
            } else {
                due
            };
            self.wake.store(next, SeqCst);
            if self.due.load(SeqCst) < next || self.stop.load(SeqCst) {
                self.wake.store(0, SeqCst);
                continue;
            }
            if next == u64::MAX {
                std::thread::park();
            } else {
                std::thread::park_timeout(Duration::from_nanos(next.saturating_sub(now)));
            }
            self.wake.store(0, SeqCst);
        }
    }

    /// Ends [`run`](Self::run).
    pub fn stop(&self) {
        self.stop.store(true, SeqCst);
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// A call in progress, for [`Watchdog`]'s backstop.
pub(crate) struct Running<'a>(&'a Watchdog);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
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
        let mut b = Budget::new(Duration::from_millis(5), Arc::new(Watchdog::new()));
        assert!(
            b.tick(),
            "the first check charges at most the first look's wall time"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.tick(), "20 ms asleep is not 20 ms of CPU");
        assert!(!b.hit);
    }

    #[test]
    fn wall_time_before_the_first_check_is_capped_at_the_first_look() {
        // A 10 ms limit's first look is after 4 ms (half of it, capped): at most 4 ms of wall
        // time is charged before the CPU clock is read.
        let mut b = Budget::new(Duration::from_millis(10), Arc::new(Watchdog::new()));
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            b.tick(),
            "30 ms preempted before the first check is not 30 ms of CPU"
        );
        spin_cpu(7);
        assert!(
            !b.tick(),
            "4 ms charged at the first check, then 7 ms of CPU, exceed 10 ms"
        );
    }

    /// A watchdog on its own thread, counting the epoch's advances.
    fn watching() -> (
        Arc<Watchdog>,
        Arc<std::sync::atomic::AtomicUsize>,
        std::thread::JoinHandle<()>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let (w, n) = (Arc::new(Watchdog::new()), Arc::new(AtomicUsize::new(0)));
        let t = {
            let (w, n) = (w.clone(), n.clone());
            std::thread::spawn(move || w.run(|| _ = n.fetch_add(1, Relaxed)))
        };
        (w, n, t)
    }

    fn count(n: &std::sync::atomic::AtomicUsize) -> usize {
        n.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (up to 10 s, for a loaded machine) until `cond` holds.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !cond() {
            assert!(t0.elapsed() < Duration::from_secs(10), "never: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_epoch_advances_when_a_look_is_due_and_not_otherwise() {
        let (w, n, t) = watching();
        eventually("with nothing asked the thread parks", || {
            w.wake.load(SeqCst) == u64::MAX
        });
        assert_eq!(count(&n), 0, "nothing asked: the epoch stays");
        let asked = Instant::now();
        w.look_at(asked + Duration::from_millis(400));
        w.look_at(asked + Duration::from_millis(800));
        std::thread::sleep(Duration::from_millis(100));
        if asked.elapsed() < Duration::from_millis(350) {
            assert_eq!(count(&n), 0, "not due yet");
        }
        eventually("the first look is taken", || count(&n) >= 1);
        assert!(
            asked.elapsed() >= Duration::from_millis(399),
            "not before it was due"
        );
        parks_and_stops(&w, &n, t, "nothing running, nothing asked");
    }

    /// The watchdog parks, advances nothing while parked, and stops.
    fn parks_and_stops(
        w: &Watchdog,
        n: &std::sync::atomic::AtomicUsize,
        t: std::thread::JoinHandle<()>,
        why: &str,
    ) {
        eventually(&format!("{why}: the thread parks"), || {
            w.wake.load(SeqCst) == u64::MAX
        });
        let advanced = count(n);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(count(n), advanced, "a parked watchdog does not advance");
        w.stop();
        t.join().unwrap();
    }

    /// wasmtime re-arms a guest's deadline after its epoch callback returns, so the look that
    /// callback asked for can be used up by an advance in between: a running call is advanced
    /// for at the cadence whether or not anything is asked.
    #[test]
    fn a_running_call_is_looked_at_even_when_its_ask_was_used_up() {
        let (w, n, t) = watching();
        let call = w.running();
        w.look_after(Instant::now(), Duration::from_millis(5), true);
        eventually("the ask is taken", || count(&n) >= 1);
        assert_eq!(w.due.load(SeqCst), u64::MAX, "nothing is asked any more");
        let taken = count(&n);
        eventually("the running call is looked at again", || {
            count(&n) >= taken + 3
        });
        drop(call);
        parks_and_stops(&w, &n, t, "the call ended");
    }

    #[test]
    fn an_earlier_look_wakes_a_sleeping_watchdog() {
        let (w, n, t) = watching();
        w.look_at(Instant::now() + Duration::from_secs(3600));
        std::thread::sleep(Duration::from_millis(20));
        w.look_at(Instant::now() + Duration::from_millis(5));
        let asked = Instant::now();
        while count(&n) == 0 {
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "the earlier look was missed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        w.stop();
        t.join().unwrap();
    }

    #[test]
    fn a_check_within_the_limit_asks_to_be_looked_at_again() {
        let w = Arc::new(Watchdog::new());
        let mut b = Budget::new(Duration::from_millis(50), w.clone());
        b.start(Duration::from_millis(50));
        let first = w.due.load(SeqCst);
        assert!(first < u64::MAX, "a call's start asks for a look");
        w.due.store(u64::MAX, SeqCst);
        assert!(b.tick());
        assert!(
            w.due.load(SeqCst) < u64::MAX,
            "a check within the limit asks again"
        );
    }

    #[test]
    fn time_on_the_cpu_is_charged() {
        let mut b = Budget::new(Duration::from_millis(5), Arc::new(Watchdog::new()));
        assert!(b.tick());
        spin_cpu(30);
        assert!(!b.tick(), "30 ms of spinning exceeds a 5 ms budget");
        assert!(b.hit);
    }

    #[test]
    fn banked_segments_add_up_across_a_pause() {
        let mut b = Budget::new(Duration::from_millis(50), Arc::new(Watchdog::new()));
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
