//! The embedded shared-state backend: key-value with versions (CAS) and TTL, atomic counters,
//! and token buckets. Shared by every filter and instance of a process, partitioned by namespace.

use std::time::{Duration, Instant};

use dashmap::DashMap;

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    version: u64,
    expires: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// When the bucket is full again: from then on it equals a fresh bucket and can be dropped.
    full_at: Instant,
}

/// The outcome of a token-bucket take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// Whether the tokens were taken.
    pub allowed: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// When refused: milliseconds until enough tokens are back.
    pub retry_after_ms: u64,
    /// Milliseconds until the bucket is full.
    pub reset_ms: u64,
}

/// In-process shared state. Operations on one key are atomic (a shard lock held for the
/// operation only).
#[derive(Debug, Default)]
pub struct Kv {
    entries: DashMap<(String, String), Entry>,
    counters: DashMap<(String, String), (i64, Option<Instant>)>,
    buckets: DashMap<(String, String), Bucket>,
    ops: std::sync::atomic::AtomicU64,
}

/// Expired state is swept every this many writes, so keys chosen by clients (header or claim
/// rate-limit keys) cannot grow memory without bound.
const SWEEP_EVERY: u64 = 4096;

fn key(ns: &str, k: &str) -> (String, String) {
    (ns.to_string(), k.to_string())
}

fn expiry(ttl_ms: u64, now: Instant) -> Option<Instant> {
    (ttl_ms > 0).then(|| now + Duration::from_millis(ttl_ms))
}

impl Kv {
    /// Counts a write and sweeps expired entries, counters and full buckets now and then.
    fn tick(&self, now: Instant) {
        if self.ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SWEEP_EVERY
            != SWEEP_EVERY - 1
        {
            return;
        }
        self.entries
            .retain(|_, e| e.expires.is_none_or(|t| t > now));
        self.counters.retain(|_, c| c.1.is_none_or(|t| t > now));
        self.buckets.retain(|_, b| b.full_at > now);
    }

    /// Live keys of every kind (for tests and introspection).
    pub fn len(&self) -> usize {
        self.entries.len() + self.counters.len() + self.buckets.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a live entry: (value, version).
    pub fn get(&self, ns: &str, k: &str) -> Option<(Vec<u8>, u64)> {
        let now = Instant::now();
        let e = self.entries.get(&key(ns, k))?;
        if e.expires.is_some_and(|t| t <= now) {
            return None;
        }
        Some((e.value.clone(), e.version))
    }

    /// Writes unconditionally; returns the new version.
    pub fn set(&self, ns: &str, k: &str, value: Vec<u8>, ttl_ms: u64) -> u64 {
        let now = Instant::now();
        self.tick(now);
        let mut e = self.entries.entry(key(ns, k)).or_insert(Entry {
            value: Vec::new(),
            version: 0,
            expires: None,
        });
        e.version += 1;
        e.value = value;
        e.expires = expiry(ttl_ms, now);
        e.version
    }

    /// Writes if the current version is `expected` (0: must be absent or expired).
    pub fn compare_and_swap(
        &self,
        ns: &str,
        k: &str,
        expected: u64,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Option<u64> {
        let now = Instant::now();
        let mut e = self.entries.entry(key(ns, k)).or_insert(Entry {
            value: Vec::new(),
            version: 0,
            expires: None,
        });
        let live = e.version > 0 && e.expires.is_none_or(|t| t > now);
        let current = if live { e.version } else { 0 };
        if current != expected {
            return None;
        }
        // Versions only grow, even across expiry, so a stale reader can never win a CAS.
        e.version += 1;
        e.value = value;
        e.expires = expiry(ttl_ms, now);
        Some(e.version)
    }

    /// Deletes a key.
    pub fn delete(&self, ns: &str, k: &str) {
        self.entries.remove(&key(ns, k));
    }

    /// Adds to a counter; a counter with a TTL restarts from 0 once it expires (fixed window).
    pub fn increment(&self, ns: &str, k: &str, delta: i64, ttl_ms: u64) -> i64 {
        let now = Instant::now();
        self.tick(now);
        let mut c = self
            .counters
            .entry(key(ns, k))
            .or_insert((0, expiry(ttl_ms, now)));
        if c.1.is_some_and(|t| t <= now) {
            *c = (0, expiry(ttl_ms, now));
        }
        c.0 = c.0.saturating_add(delta);
        c.0
    }

    /// Token bucket: capacity `burst`, refilled at `rate` tokens per `period_ms`.
    pub fn take_tokens(
        &self,
        ns: &str,
        k: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: u64,
    ) -> Take {
        self.take_tokens_at(ns, k, rate, period_ms, burst, cost, Instant::now())
    }

    #[allow(clippy::too_many_arguments)]
    fn take_tokens_at(
        &self,
        ns: &str,
        k: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: u64,
        now: Instant,
    ) -> Take {
        self.tick(now);
        let burst = burst.max(1) as f64;
        let per_ms = rate as f64 / period_ms.max(1) as f64;
        let mut b = self.buckets.entry(key(ns, k)).or_insert(Bucket {
            tokens: burst,
            last: now,
            full_at: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64() * 1e3;
        b.tokens = (b.tokens + elapsed * per_ms).min(burst);
        b.last = now;
        let cost = cost as f64;
        let allowed = b.tokens >= cost;
        if allowed {
            b.tokens -= cost;
        }
        let ms_for = |tokens: f64| {
            if per_ms > 0.0 {
                (tokens / per_ms).ceil().max(0.0) as u64
            } else {
                u64::MAX
            }
        };
        b.full_at = now + Duration::from_millis(ms_for(burst - b.tokens).min(u64::from(u32::MAX)));
        Take {
            allowed,
            remaining: b.tokens.floor() as u64,
            retry_after_ms: if allowed { 0 } else { ms_for(cost - b.tokens) },
            reset_ms: ms_for(burst - b.tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_follows_versions_and_ttl() {
        let kv = Kv::default();
        assert_eq!(kv.compare_and_swap("n", "k", 0, b"a".to_vec(), 0), Some(1));
        assert_eq!(
            kv.compare_and_swap("n", "k", 0, b"b".to_vec(), 0),
            None,
            "already exists"
        );
        assert_eq!(kv.compare_and_swap("n", "k", 1, b"b".to_vec(), 0), Some(2));
        assert_eq!(kv.get("n", "k"), Some((b"b".to_vec(), 2)));
        assert_eq!(kv.get("other", "k"), None, "namespaces are separate");
        kv.set("n", "t", b"x".to_vec(), 1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.get("n", "t"), None, "expired");
        assert_eq!(
            kv.compare_and_swap("n", "t", 0, b"y".to_vec(), 0),
            Some(2),
            "an expired key counts as absent"
        );
    }

    #[test]
    fn counters_add_and_reset_after_ttl() {
        let kv = Kv::default();
        assert_eq!(kv.increment("n", "c", 2, 0), 2);
        assert_eq!(kv.increment("n", "c", -5, 0), -3);
        assert_eq!(kv.increment("n", "w", 1, 1), 1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.increment("n", "w", 1, 1), 1, "window restarted");
    }

    #[test]
    fn buckets_that_are_not_full_survive_a_sweep() {
        let kv = Kv::default();
        // 1 token per hour, burst 1: empty after one take, and must stay empty.
        assert!(kv.take_tokens("n", "slow", 1, 3_600_000, 1, 1).allowed);
        for i in 0..SWEEP_EVERY {
            kv.increment("n", &format!("c{i}"), 1, 1);
        }
        assert!(
            !kv.take_tokens("n", "slow", 1, 3_600_000, 1, 1).allowed,
            "a sweep must not refill a bucket"
        );
    }

    #[test]
    fn full_buckets_and_expired_keys_are_swept() {
        let kv = Kv::default();
        for i in 0..SWEEP_EVERY - 1 {
            kv.take_tokens("n", &format!("client-{i}"), 1000, 1, 10, 1);
        }
        assert!(kv.len() >= (SWEEP_EVERY - 1) as usize);
        std::thread::sleep(Duration::from_millis(5));
        kv.take_tokens("n", "one-more", 1000, 1, 10, 1);
        assert!(
            kv.len() <= 1,
            "refilled buckets are dropped: {} left",
            kv.len()
        );
    }

    #[test]
    fn token_bucket_allows_burst_then_refills_at_rate() {
        let kv = Kv::default();
        let t0 = Instant::now();
        // 10 per second, burst 3.
        for i in 0..3 {
            let t = kv.take_tokens_at("n", "k", 10, 1000, 3, 1, t0);
            assert!(t.allowed, "take {i}");
        }
        let t = kv.take_tokens_at("n", "k", 10, 1000, 3, 1, t0);
        assert_eq!(
            t,
            Take {
                allowed: false,
                remaining: 0,
                retry_after_ms: 100,
                reset_ms: 300
            }
        );
        let t = kv.take_tokens_at("n", "k", 10, 1000, 3, 1, t0 + Duration::from_millis(100));
        assert!(t.allowed, "one token back after 100ms");
        let t = kv.take_tokens_at("n", "k", 10, 1000, 3, 1, t0 + Duration::from_secs(10));
        assert_eq!(t.remaining, 2, "capped at burst");
    }
}
