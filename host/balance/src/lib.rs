//! Load-balancing policies for Weir's upstream clusters.
//!
//! A [`Balancer`] is built once per cluster (on config load or endpoint change), with every table
//! it needs precomputed, and then shared behind an [`Arc`] by all workers. Its hot path —
//! [`Balancer::pick`], [`Balancer::begin`] and dropping the [`InFlight`] guard — only touches
//! atomics (with `Relaxed` ordering: they count and flag, they never publish other memory) and
//! the thread-local `fastrand` generator: no locks, no allocation.
//!
//! Endpoints are identified by their index in the weights slice. Health is passive: the proxy
//! reports failures with [`Balancer::set_healthy`] and picks skip unhealthy endpoints, unless none
//! is healthy, in which case they pick as if all were ("panic mode", as in Envoy).
//!
//! ```
//! use std::sync::Arc;
//! use weir_balance::{Balancer, Policy, hash_key};
//!
//! let cluster = Arc::new(Balancer::new(Policy::Maglev, &[3, 1, 1])?);
//! let idx = cluster.pick(Some(hash_key(b"session-1234")));
//! assert_eq!(idx, cluster.pick(Some(hash_key(b"session-1234"))), "sticky");
//! let request = cluster.begin(idx);
//! assert_eq!(cluster.in_flight(idx), 1);
//! drop(request); // the response is done
//! assert_eq!(cluster.in_flight(idx), 0);
//!
//! cluster.set_healthy(idx, false); // e.g. after a connect failure
//! assert_ne!(cluster.pick(Some(hash_key(b"session-1234"))), idx);
//! # Ok::<(), weir_balance::BalanceError>(())
//! ```

#![deny(missing_docs)]

mod hash;
mod maglev;
mod ring;
mod schedule;

#[cfg(test)]
mod tests;

use std::cmp::Ordering as CmpOrdering;
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

pub use hash::hash_key;

use hash::{GOLDEN_GAMMA, mix64};
use maglev::Maglev;
use ring::Ring;

/// Most endpoints a balancer accepts: Maglev needs fewer endpoints than its 65,537 table slots.
pub const MAX_ENDPOINTS: usize = 65_536;

/// Which algorithm a cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Each endpoint in turn; weights are ignored.
    RoundRobin,
    /// Smooth weighted round robin (nginx): endpoints in proportion to weight, interleaved.
    WeightedRoundRobin,
    /// Power of two choices: the less loaded (in-flight requests per weight) of two random
    /// endpoints.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hash ring over the request's hash key (ketama-style).
    RingHash,
    /// Google's Maglev consistent hashing over the request's hash key.
    Maglev,
}

/// Why a [`Balancer`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BalanceError {
    /// The weights slice was empty.
    NoEndpoints,
    /// An endpoint had weight 0.
    ZeroWeight {
        /// Index of the first endpoint with weight 0.
        index: usize,
    },
    /// More than [`MAX_ENDPOINTS`] endpoints.
    TooManyEndpoints {
        /// The number of endpoints given.
        count: usize,
    },
    /// [`Balancer::with_keys`] got a different number of keys than weights.
    KeyCountMismatch {
        /// The number of weights.
        weights: usize,
        /// The number of keys.
        keys: usize,
    },
}

impl fmt::Display for BalanceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BalanceError::NoEndpoints => {
                f.write_str("no endpoints: a balancer needs at least one weight")
            }
            BalanceError::ZeroWeight { index } => {
                write!(
                    f,
                    "endpoint {index} has weight 0: weights must be at least 1"
                )
            }
            BalanceError::TooManyEndpoints { count } => {
                write!(
                    f,
                    "too many endpoints: {count}, at most {MAX_ENDPOINTS} are supported"
                )
            }
            BalanceError::KeyCountMismatch { weights, keys } => {
                write!(
                    f,
                    "{weights} weights but {keys} endpoint keys: each endpoint needs one key"
                )
            }
        }
    }
}

impl std::error::Error for BalanceError {}

/// The per-policy precomputed state.
enum Picker {
    RoundRobin,
    /// One cycle of the smooth weighted round robin.
    Weighted(Box<[u32]>),
    LeastRequest,
    Random,
    Ring(Ring),
    Maglev(Maglev),
}

/// Picks endpoints of one cluster. `Send + Sync`: share it behind an [`Arc`].
pub struct Balancer {
    picker: Picker,
    weights: Box<[u32]>,
    /// Running sums of the weights, for weighted random picks (Random, and the hash policies'
    /// fallback when a request has no hash key).
    cumulative: Box<[u64]>,
    healthy: Box<[AtomicBool]>,
    /// How many endpoints are unhealthy, so picks skip per-endpoint checks when none (or all) are.
    /// Exact whenever no `set_healthy` is running; while calls race it can be briefly off (even
    /// wrapped below zero), which at worst sends a pick to an endpoint being marked unhealthy.
    unhealthy: AtomicUsize,
    in_flight: Box<[AtomicUsize]>,
    /// Slow start (see [`Balancer::with_slow_start`]): the window, when set.
    slow_start: Option<SlowStart>,
    /// Turn counter of RoundRobin and WeightedRoundRobin; wraps after 2^64 picks, harmlessly.
    cursor: AtomicUsize,
}

impl Balancer {
    /// Builds a balancer over `weights.len()` endpoints, endpoint `i` having weight `weights[i]`.
    ///
    /// The hash policies place endpoint `i` by the decimal bytes of `i`, so removing the *last*
    /// endpoint keeps the others in place, but removing one in the middle renumbers those after
    /// it; use [`Balancer::with_keys`] to place endpoints by a stable identity instead.
    ///
    /// # Errors
    /// If `weights` is empty, longer than [`MAX_ENDPOINTS`], or holds a 0.
    pub fn new(policy: Policy, weights: &[u32]) -> Result<Balancer, BalanceError> {
        Balancer::build(policy, weights, &|i, buf| {
            write!(buf, "{i}").expect("writing to a Vec cannot fail");
        })
    }

    /// Like [`Balancer::new`], but RingHash and Maglev place endpoint `i` by `keys[i]` (for
    /// example its `host:port`), so an endpoint keeps its keys when others are added, removed or
    /// reordered. Other policies ignore the keys.
    ///
    /// # Errors
    /// As [`Balancer::new`], and if `keys.len() != weights.len()`.
    pub fn with_keys<K: AsRef<[u8]>>(
        policy: Policy,
        weights: &[u32],
        keys: &[K],
    ) -> Result<Balancer, BalanceError> {
        if keys.len() != weights.len() {
            return Err(BalanceError::KeyCountMismatch {
                weights: weights.len(),
                keys: keys.len(),
            });
        }
        Balancer::build(policy, weights, &|i, buf| {
            buf.extend_from_slice(keys[i].as_ref())
        })
    }

    /// `key` appends endpoint `i`'s identity bytes to the buffer.
    fn build(
        policy: Policy,
        weights: &[u32],
        key: &dyn Fn(usize, &mut Vec<u8>),
    ) -> Result<Balancer, BalanceError> {
        if weights.is_empty() {
            return Err(BalanceError::NoEndpoints);
        }
        if weights.len() > MAX_ENDPOINTS {
            return Err(BalanceError::TooManyEndpoints {
                count: weights.len(),
            });
        }
        if let Some(index) = weights.iter().position(|&w| w == 0) {
            return Err(BalanceError::ZeroWeight { index });
        }
        let picker = match policy {
            Policy::RoundRobin => Picker::RoundRobin,
            Policy::WeightedRoundRobin => Picker::Weighted(schedule::schedule(weights)),
            Policy::LeastRequest => Picker::LeastRequest,
            Policy::Random => Picker::Random,
            Policy::RingHash => Picker::Ring(Ring::new(weights, key)),
            Policy::Maglev => Picker::Maglev(Maglev::new(weights, key)),
        };
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        Ok(Balancer {
            picker,
            weights: weights.into(),
            cumulative,
            healthy: weights.iter().map(|_| AtomicBool::new(true)).collect(),
            unhealthy: AtomicUsize::new(0),
            in_flight: weights.iter().map(|_| AtomicUsize::new(0)).collect(),
            slow_start: None,
            cursor: AtomicUsize::new(0),
        })
    }

    /// Gives endpoints that come back into rotation (unhealthy → healthy) a share that grows
    /// over `window`: a pick that lands on a warming endpoint stands with probability
    /// `elapsed / window` (at least 10%), else the policy draws again for another. Like Envoy's slow
    /// start, so an endpoint back from an outage, with cold caches and pools, is not handed a
    /// full share at once.
    ///
    /// Applies to every policy except RingHash and Maglev picks by hash key (a key's endpoint
    /// must not depend on time). A zero window turns it off.
    pub fn with_slow_start(mut self, window: Duration) -> Balancer {
        self.slow_start = (!window.is_zero()).then(|| SlowStart {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            epoch: Instant::now(),
            since: self.weights.iter().map(|_| AtomicU64::new(0)).collect(),
            warming: AtomicUsize::new(0),
        });
        self
    }

    /// Whether endpoint `idx` is in its slow-start window.
    ///
    /// # Panics
    /// If `idx >= self.len()`.
    pub fn is_warming(&self, idx: usize) -> bool {
        self.slow_start
            .as_ref()
            .is_some_and(|s| s.share(idx).is_some())
    }

    /// The algorithm this balancer runs.
    pub fn policy(&self) -> Policy {
        match self.picker {
            Picker::RoundRobin => Policy::RoundRobin,
            Picker::Weighted(_) => Policy::WeightedRoundRobin,
            Picker::LeastRequest => Policy::LeastRequest,
            Picker::Random => Policy::Random,
            Picker::Ring(_) => Policy::RingHash,
            Picker::Maglev(_) => Policy::Maglev,
        }
    }

    /// Number of endpoints (at least 1).
    #[expect(
        clippy::len_without_is_empty,
        reason = "a balancer always has an endpoint"
    )]
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// The configured weight of endpoint `idx`.
    ///
    /// # Panics
    /// If `idx >= self.len()`.
    pub fn weight(&self, idx: usize) -> u32 {
        self.weights[idx]
    }

    /// Picks an endpoint index, always `< self.len()`.
    ///
    /// `hash` is the request's hash key (see [`hash_key`]), used by RingHash and Maglev; without
    /// one they fall back to weighted random. Other policies ignore it.
    ///
    /// Unhealthy endpoints are skipped while any endpoint is healthy. For the hash policies a key
    /// whose endpoint is unhealthy moves deterministically (every proxy moves it to the same
    /// place) and returns once the endpoint is healthy again.
    pub fn pick(&self, hash: Option<u64>) -> usize {
        let first = self.pick_once(hash);
        let Some(slow) = &self.slow_start else {
            return first;
        };
        let hashed = hash.is_some() && matches!(self.picker, Picker::Ring(_) | Picker::Maglev(_));
        if hashed || slow.warming.load(Relaxed) == 0 {
            return first;
        }
        match slow.share(first) {
            // Turned away: a few more draws for another endpoint, as the policy would pick it.
            Some(share) if fastrand::u64(..slow.window_ms) >= share => (0..3)
                .map(|_| self.pick_once(hash))
                .find(|&i| i != first)
                .unwrap_or(first),
            _ => first,
        }
    }

    fn pick_once(&self, hash: Option<u64>) -> usize {
        let n = self.len();
        match (&self.picker, hash) {
            (Picker::RoundRobin, _) => self.draw_healthy(|| self.cursor.fetch_add(1, Relaxed) % n),
            (Picker::Weighted(schedule), _) => self.draw_healthy(|| {
                schedule[self.cursor.fetch_add(1, Relaxed) % schedule.len()] as usize
            }),
            (Picker::LeastRequest, _) => self.pick_least_request(),
            (Picker::Ring(ring), Some(hash)) => self.pick_ring(ring, hash),
            (Picker::Maglev(maglev), Some(hash)) => self.pick_maglev(maglev, hash),
            (Picker::Random | Picker::Ring(_) | Picker::Maglev(_), _) => {
                self.draw_healthy(|| self.weighted_random())
            }
        }
    }

    /// Marks endpoint `idx` healthy or unhealthy (passive health checking by the proxy).
    ///
    /// # Panics
    /// If `idx >= self.len()`.
    pub fn set_healthy(&self, idx: usize, healthy: bool) {
        // The swap serializes transitions per endpoint, so each +1 is matched by exactly one -1.
        match (self.healthy[idx].swap(healthy, Relaxed), healthy) {
            (true, false) => {
                self.unhealthy.fetch_add(1, Relaxed);
            }
            (false, true) => {
                self.unhealthy.fetch_sub(1, Relaxed);
                if let Some(slow) = &self.slow_start {
                    slow.start(idx, Instant::now());
                }
            }
            _ => {}
        }
    }

    /// Whether endpoint `idx` is healthy (endpoints start healthy).
    ///
    /// # Panics
    /// If `idx >= self.len()`.
    pub fn is_healthy(&self, idx: usize) -> bool {
        self.healthy[idx].load(Relaxed)
    }

    /// Number of requests currently in flight on endpoint `idx`.
    ///
    /// # Panics
    /// If `idx >= self.len()`.
    pub fn in_flight(&self, idx: usize) -> usize {
        self.in_flight[idx].load(Relaxed)
    }

    /// Marks a request as started on endpoint `idx`; the returned guard marks it finished when
    /// dropped. Counted for every policy (the admin API shows it); LeastRequest decides by it.
    ///
    /// # Panics
    /// If `idx >= self.len()`.
    pub fn begin(self: &Arc<Self>, idx: usize) -> InFlight {
        self.in_flight[idx].fetch_add(1, Relaxed);
        InFlight {
            balancer: Arc::clone(self),
            idx,
        }
    }

    /// Whether picks must skip unhealthy endpoints: some are unhealthy, but not all (with none
    /// healthy, picks go on as if all were: panic mode).
    fn filtering(&self) -> bool {
        let unhealthy = self.unhealthy.load(Relaxed);
        unhealthy != 0 && unhealthy < self.len()
    }

    /// Draws with `draw` until it yields a healthy endpoint, at most `len` times, then scans on
    /// from the last draw. Without filtering (all healthy, or panic mode) the first draw stands.
    fn draw_healthy(&self, mut draw: impl FnMut() -> usize) -> usize {
        let first = draw();
        if !self.filtering() || self.is_healthy(first) {
            return first;
        }
        // Fresh draws rather than the next index, so the healthy endpoints keep sharing the
        // unhealthy one's load in policy proportions instead of its neighbour taking it all.
        let mut last = first;
        for _ in 1..self.len() {
            last = draw();
            if self.is_healthy(last) {
                return last;
            }
        }
        self.next_healthy(last, usize::MAX).unwrap_or(first)
    }

    /// The first healthy endpoint at or after `start` (wrapping), other than `except`.
    fn next_healthy(&self, start: usize, except: usize) -> Option<usize> {
        let n = self.len();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| i != except && self.is_healthy(i))
    }

    fn weighted_random(&self) -> usize {
        let total = *self.cumulative.last().expect("at least one endpoint");
        let r = fastrand::u64(..total);
        // The first endpoint whose running sum exceeds r: endpoint i owns [sum_{i-1}, sum_i).
        self.cumulative.partition_point(|&sum| sum <= r)
    }

    fn pick_least_request(&self) -> usize {
        let n = self.len();
        if n == 1 {
            return 0;
        }
        let a = self.draw_healthy(|| fastrand::usize(..n));
        // `a` is unhealthy only if health changed meanwhile; then compare any two, as in panic mode.
        let filter = self.filtering() && self.is_healthy(a);
        let other = || {
            let b = fastrand::usize(..n - 1);
            if b >= a { b + 1 } else { b }
        };
        let b = if filter {
            let found = (1..n)
                .map(|_| other())
                .find(|&b| self.is_healthy(b))
                .or_else(|| self.next_healthy(other(), a));
            match found {
                Some(b) => b,
                None => return a, // the only healthy endpoint
            }
        } else {
            other()
        };
        self.less_loaded(a, b)
    }

    /// The endpoint with fewer in-flight requests per unit of weight; on a tie (notably when both
    /// are idle) a coin weighted by weight, so weights still count on a lightly loaded cluster.
    fn less_loaded(&self, a: usize, b: usize) -> usize {
        let (wa, wb) = (u64::from(self.weights[a]), u64::from(self.weights[b]));
        // Cross-multiplied to compare in_flight_a / wa with in_flight_b / wb without division.
        let load_a = self.in_flight(a) as u128 * u128::from(wb);
        let load_b = self.in_flight(b) as u128 * u128::from(wa);
        match load_a.cmp(&load_b) {
            CmpOrdering::Less => a,
            CmpOrdering::Greater => b,
            CmpOrdering::Equal if fastrand::u64(..wa + wb) < wa => a,
            CmpOrdering::Equal => b,
        }
    }

    fn pick_ring(&self, ring: &Ring, hash: u64) -> usize {
        let start = ring.position(hash);
        let owner = ring.owner(start);
        if !self.filtering() || self.is_healthy(owner) {
            return owner;
        }
        // Walking clockwise sends the key exactly where it would go with the endpoint removed.
        (1..ring.len())
            .map(|k| ring.owner((start + k) % ring.len()))
            .find(|&i| self.is_healthy(i))
            .unwrap_or(owner)
    }

    fn pick_maglev(&self, maglev: &Maglev, hash: u64) -> usize {
        let first = maglev.lookup(hash);
        if !self.filtering() || self.is_healthy(first) {
            return first;
        }
        // Deterministic re-hashes (a splitmix64 sequence seeded by the hash) spread the unhealthy
        // endpoint's keys over the healthy ones by their table share; the scan is the last resort.
        let mut state = hash;
        for _ in 0..self.len() {
            state = state.wrapping_add(GOLDEN_GAMMA);
            let candidate = maglev.lookup(mix64(state));
            if self.is_healthy(candidate) {
                return candidate;
            }
        }
        self.next_healthy(first, usize::MAX).unwrap_or(first)
    }
}

/// Slow-start state: per endpoint, when its window began.
struct SlowStart {
    window_ms: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` plus one at which endpoint `i` came back; 0 when not warming.
    since: Box<[AtomicU64]>,
    /// How many endpoints are warming, so picks skip the check when none is. Like `unhealthy`,
    /// briefly off while transitions race; at worst one pick more or less is redrawn.
    warming: AtomicUsize,
}

impl SlowStart {
    fn start(&self, idx: usize, at: Instant) {
        let ms = u64::try_from(at.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1);
        if self.since[idx].swap(ms + 1, Relaxed) == 0 {
            self.warming.fetch_add(1, Relaxed);
        }
    }

    /// Endpoint `idx`'s share of a full one, in milliseconds of the window (at least a tenth of
    /// it), while warming; `None` when not (a finished window is cleared here).
    fn share(&self, idx: usize) -> Option<u64> {
        let since = self.since[idx].load(Relaxed);
        if since == 0 {
            return None;
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let elapsed = now.saturating_sub(since - 1);
        if elapsed < self.window_ms {
            return Some(elapsed.max(self.window_ms / 10));
        }
        // Only the window read here ends: one started meanwhile stands.
        if self.since[idx]
            .compare_exchange(since, 0, Relaxed, Relaxed)
            .is_ok()
        {
            self.warming.fetch_sub(1, Relaxed);
        }
        None
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tables are large; show what an operator would want instead.
        f.debug_struct("Balancer")
            .field("policy", &self.policy())
            .field("weights", &self.weights)
            .field("healthy", &self.healthy)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

/// A request in flight on one endpoint; dropping it ends the request. Made by [`Balancer::begin`].
#[must_use = "dropping the guard immediately ends the request"]
pub struct InFlight {
    balancer: Arc<Balancer>,
    idx: usize,
}

impl InFlight {
    /// The endpoint the request is on.
    pub fn index(&self) -> usize {
        self.idx
    }

    /// The balancer the request is counted in.
    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.balancer
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.balancer.in_flight[self.idx].fetch_sub(1, Relaxed);
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlight")
            .field("index", &self.idx)
            .finish_non_exhaustive()
    }
}
