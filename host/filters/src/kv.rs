//! The embedded shared-state backend: key-value with versions (CAS) and TTL, atomic counters,
//! and token buckets. Shared by every filter and instance of a process, partitioned by namespace.
//!
//! Everything is bounded, because keys are often chosen by clients (a rate-limit key is a client
//! IP, a header value or a JWT claim): a key is at most [`KvLimits::max_key_bytes`], a value at
//! most [`KvLimits::max_value_bytes`], and one namespace holds at most
//! [`KvLimits::max_entries`] keys (KV entries, counters and buckets together) and
//! [`KvLimits::max_bytes`] of keys and values. A write past a bound is refused with a
//! [`KvError`] (never a panic, never growth). Expired entries, counters and refilled buckets are
//! swept every few thousand writes (refused ones included), so a namespace full of stale keys
//! frees itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as Slot;

/// Bounds on what filters may keep in the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key, in bytes. Default: 1 KiB.
    pub max_key_bytes: usize,
    /// Largest value of a KV entry, in bytes. Default: 64 KiB.
    pub max_value_bytes: usize,
    /// Most keys in one namespace (entries, counters and buckets together). Default: 100,000.
    pub max_entries: usize,
    /// Most key and value bytes in one namespace. Default: 64 MiB.
    pub max_bytes: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_key_bytes: 1 << 10,
            max_value_bytes: 64 << 10,
            // A rate limit keyed by client IP holds one bucket per client until it is full
            // again: generous enough for a busy edge, small enough (a few tens of MiB) to bound.
            max_entries: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// A write the store refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The key is longer than [`KvLimits::max_key_bytes`].
    #[error("key of {len} bytes is longer than the limit of {max} bytes")]
    KeyTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is larger than [`KvLimits::max_value_bytes`].
    #[error("value of {len} bytes is larger than the limit of {max} bytes")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The namespace already holds [`KvLimits::max_entries`] keys.
    #[error("kv namespace {namespace:?} is full ({max} keys): delete keys or give them a TTL")]
    TooManyKeys {
        /// The namespace.
        namespace: String,
        /// The limit.
        max: usize,
    },
    /// The namespace already holds [`KvLimits::max_bytes`] of keys and values.
    #[error(
        "kv namespace {namespace:?} is full ({max} bytes of keys and values): delete keys or give them a TTL"
    )]
    TooManyBytes {
        /// The namespace.
        namespace: String,
        /// The limit.
        max: usize,
    },
}

impl KvError {
    /// Which limit was hit, as a metric label value.
    pub fn limit(&self) -> &'static str {
        match self {
            KvError::KeyTooLong { .. } => "kv_key_bytes",
            KvError::ValueTooLarge { .. } => "kv_value_bytes",
            KvError::TooManyKeys { .. } => "kv_entries",
            KvError::TooManyBytes { .. } => "kv_bytes",
        }
    }

    /// Whether the arguments were at fault (as opposed to a namespace that is full for now).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            KvError::KeyTooLong { .. } | KvError::ValueTooLarge { .. }
        )
    }
}

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

/// One namespace: its three kinds of state and what they hold.
#[derive(Debug, Default)]
struct Space {
    entries: DashMap<String, Entry>,
    counters: DashMap<String, (i64, Option<Instant>)>,
    buckets: DashMap<String, Bucket>,
    /// Keys of every kind.
    keys: AtomicUsize,
    /// Key bytes of every kind plus value bytes of entries.
    bytes: AtomicUsize,
}

impl Space {
    /// Reserves room for `keys` new keys and `bytes` more bytes, or refuses. Reserving first
    /// and undoing on refusal keeps the counts exact under concurrent writers.
    fn admit(&self, ns: &str, l: &KvLimits, keys: usize, bytes: usize) -> Result<(), KvError> {
        if keys > 0 && self.keys.fetch_add(keys, Relaxed) + keys > l.max_entries {
            self.keys.fetch_sub(keys, Relaxed);
            return Err(KvError::TooManyKeys {
                namespace: ns.to_string(),
                max: l.max_entries,
            });
        }
        if bytes > 0 && self.bytes.fetch_add(bytes, Relaxed) + bytes > l.max_bytes {
            self.bytes.fetch_sub(bytes, Relaxed);
            self.keys.fetch_sub(keys, Relaxed);
            return Err(KvError::TooManyBytes {
                namespace: ns.to_string(),
                max: l.max_bytes,
            });
        }
        Ok(())
    }

    fn release(&self, keys: usize, bytes: usize) {
        self.keys.fetch_sub(keys, Relaxed);
        self.bytes.fetch_sub(bytes, Relaxed);
    }

    /// A value of `old` bytes becomes one of `new` bytes.
    fn resize(&self, ns: &str, l: &KvLimits, old: usize, new: usize) -> Result<(), KvError> {
        if new > old {
            self.admit(ns, l, 0, new - old)
        } else {
            self.release(0, old - new);
            Ok(())
        }
    }

    /// Drops expired entries and counters and full buckets.
    fn sweep(&self, now: Instant) {
        let (mut keys, mut bytes) = (0, 0);
        self.entries.retain(|k, e| {
            let keep = e.expires.is_none_or(|t| t > now);
            if !keep {
                keys += 1;
                bytes += k.len() + e.value.len();
            }
            keep
        });
        self.counters.retain(|k, c| {
            let keep = c.1.is_none_or(|t| t > now);
            if !keep {
                keys += 1;
                bytes += k.len();
            }
            keep
        });
        self.buckets.retain(|k, b| {
            let keep = b.full_at > now;
            if !keep {
                keys += 1;
                bytes += k.len();
            }
            keep
        });
        self.release(keys, bytes);
    }
}

/// In-process shared state. Operations on one key are atomic (a shard lock held for the
/// operation only).
#[derive(Debug, Default)]
pub struct Kv {
    limits: KvLimits,
    spaces: DashMap<String, Arc<Space>>,
    ops: AtomicU64,
    /// The last version handed out. One sequence for the whole store, so a key that expired,
    /// was swept or deleted and was then written again never repeats a version a stale reader
    /// may still hold: such a reader can never win a compare-and-swap.
    version: AtomicU64,
}

/// Expired state is swept every this many writes, so keys chosen by clients (header or claim
/// rate-limit keys) do not hold on to memory after they expire.
const SWEEP_EVERY: u64 = 4096;

/// `None` (no expiry) for 0, and for a TTL so long that the deadline is not representable.
fn expiry(ttl_ms: u64, now: Instant) -> Option<Instant> {
    if ttl_ms == 0 {
        return None;
    }
    now.checked_add(Duration::from_millis(ttl_ms))
}

impl Kv {
    /// An empty store with these limits.
    pub fn new(limits: KvLimits) -> Kv {
        Kv {
            limits,
            ..Kv::default()
        }
    }

    /// The store's limits.
    pub fn limits(&self) -> &KvLimits {
        &self.limits
    }

    fn space(&self, ns: &str) -> Arc<Space> {
        if let Some(s) = self.spaces.get(ns) {
            return s.clone();
        }
        // Namespaces are bounded by the grants in the config (the host checks them first).
        self.spaces.entry(ns.to_string()).or_default().clone()
    }

    fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Relaxed) + 1
    }

    pub(crate) fn check_key(&self, k: &str) -> Result<(), KvError> {
        let max = self.limits.max_key_bytes;
        if k.len() > max {
            return Err(KvError::KeyTooLong { len: k.len(), max });
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, v: &[u8]) -> Result<(), KvError> {
        let max = self.limits.max_value_bytes;
        if v.len() > max {
            return Err(KvError::ValueTooLarge { len: v.len(), max });
        }
        Ok(())
    }

    /// Counts a write and sweeps expired entries, counters and full buckets now and then.
    fn tick(&self, now: Instant) {
        if self.ops.fetch_add(1, Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        let spaces: Vec<Arc<Space>> = self.spaces.iter().map(|s| s.value().clone()).collect();
        for s in spaces {
            s.sweep(now);
        }
    }

    /// Live keys of every kind (for tests and introspection).
    pub fn len(&self) -> usize {
        self.spaces
            .iter()
            .map(|s| s.entries.len() + s.counters.len() + s.buckets.len())
            .sum()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys and bytes a namespace holds, as counted against its limits.
    pub fn usage(&self, ns: &str) -> (usize, usize) {
        self.spaces
            .get(ns)
            .map_or((0, 0), |s| (s.keys.load(Relaxed), s.bytes.load(Relaxed)))
    }

    /// Reads a live entry: (value, version).
    pub fn get(&self, ns: &str, k: &str) -> Option<(Vec<u8>, u64)> {
        let now = Instant::now();
        let s = self.spaces.get(ns)?;
        let e = s.entries.get(k)?;
        if e.expires.is_some_and(|t| t <= now) {
            return None;
        }
        Some((e.value.clone(), e.version))
    }

    /// Writes unconditionally; returns the new version.
    pub fn set(&self, ns: &str, k: &str, value: Vec<u8>, ttl_ms: u64) -> Result<u64, KvError> {
        self.check_key(k)?;
        self.check_value(&value)?;
        let now = Instant::now();
        self.tick(now);
        let s = self.space(ns);
        match s.entries.entry(k.to_string()) {
            Slot::Occupied(mut o) => {
                let e = o.get_mut();
                s.resize(ns, &self.limits, e.value.len(), value.len())?;
                e.value = value;
                e.version = self.next_version();
                e.expires = expiry(ttl_ms, now);
                Ok(e.version)
            }
            Slot::Vacant(v) => {
                s.admit(ns, &self.limits, 1, k.len() + value.len())?;
                let version = self.next_version();
                v.insert(Entry {
                    value,
                    version,
                    expires: expiry(ttl_ms, now),
                });
                Ok(version)
            }
        }
    }

    /// Writes if the current version is `expected` (0: must be absent or expired). `Ok(None)`
    /// when the version did not match; then nothing is written (not even a placeholder).
    pub fn compare_and_swap(
        &self,
        ns: &str,
        k: &str,
        expected: u64,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<Option<u64>, KvError> {
        self.check_key(k)?;
        self.check_value(&value)?;
        let now = Instant::now();
        self.tick(now);
        let s = self.space(ns);
        match s.entries.entry(k.to_string()) {
            Slot::Occupied(mut o) => {
                let e = o.get_mut();
                let live = e.expires.is_none_or(|t| t > now);
                let current = if live { e.version } else { 0 };
                if current != expected {
                    return Ok(None);
                }
                s.resize(ns, &self.limits, e.value.len(), value.len())?;
                e.value = value;
                e.version = self.next_version();
                e.expires = expiry(ttl_ms, now);
                Ok(Some(e.version))
            }
            Slot::Vacant(_) if expected != 0 => Ok(None),
            Slot::Vacant(v) => {
                s.admit(ns, &self.limits, 1, k.len() + value.len())?;
                let version = self.next_version();
                v.insert(Entry {
                    value,
                    version,
                    expires: expiry(ttl_ms, now),
                });
                Ok(Some(version))
            }
        }
    }

    /// Deletes a key.
    pub fn delete(&self, ns: &str, k: &str) {
        if let Some(s) = self.spaces.get(ns)
            && let Some((k, e)) = s.entries.remove(k)
        {
            s.release(1, k.len() + e.value.len());
        }
    }

    /// Adds to a counter; a counter with a TTL restarts from 0 once it expires (fixed window).
    pub fn increment(&self, ns: &str, k: &str, delta: i64, ttl_ms: u64) -> Result<i64, KvError> {
        self.check_key(k)?;
        let now = Instant::now();
        self.tick(now);
        let s = self.space(ns);
        match s.counters.entry(k.to_string()) {
            Slot::Occupied(mut o) => {
                let c = o.get_mut();
                if c.1.is_some_and(|t| t <= now) {
                    *c = (0, expiry(ttl_ms, now));
                }
                c.0 = c.0.saturating_add(delta);
                Ok(c.0)
            }
            Slot::Vacant(v) => {
                s.admit(ns, &self.limits, 1, k.len())?;
                v.insert((delta, expiry(ttl_ms, now)));
                Ok(delta)
            }
        }
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
    ) -> Result<Take, KvError> {
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
    ) -> Result<Take, KvError> {
        self.check_key(k)?;
        self.tick(now);
        let burst = burst.max(1) as f64;
        let per_ms = rate as f64 / period_ms.max(1) as f64;
        let s = self.space(ns);
        let mut b = match s.buckets.entry(k.to_string()) {
            Slot::Occupied(o) => o.into_ref(),
            Slot::Vacant(v) => {
                s.admit(ns, &self.limits, 1, k.len())?;
                v.insert(Bucket {
                    tokens: burst,
                    last: now,
                    full_at: now,
                })
            }
        };
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
        Ok(Take {
            allowed,
            remaining: b.tokens.floor() as u64,
            retry_after_ms: if allowed { 0 } else { ms_for(cost - b.tokens) },
            reset_ms: ms_for(burst - b.tokens),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(max_entries: usize, max_bytes: usize) -> Kv {
        Kv::new(KvLimits {
            max_key_bytes: 16,
            max_value_bytes: 32,
            max_entries,
            max_bytes,
        })
    }

    #[test]
    fn cas_follows_versions_and_ttl() -> anyhow::Result<()> {
        let kv = Kv::default();
        let v1 = kv.compare_and_swap("n", "k", 0, b"a".to_vec(), 0)?;
        let Some(v1) = v1 else {
            anyhow::bail!("a CAS from 0 on a new key must win");
        };
        assert_eq!(
            kv.compare_and_swap("n", "k", 0, b"b".to_vec(), 0)?,
            None,
            "already exists"
        );
        let v2 = kv.compare_and_swap("n", "k", v1, b"b".to_vec(), 0)?;
        assert!(v2.is_some_and(|v2| v2 > v1), "{v2:?} after {v1}");
        assert_eq!(kv.get("n", "k"), Some((b"b".to_vec(), v2.unwrap_or(0))));
        assert_eq!(kv.get("other", "k"), None, "namespaces are separate");
        kv.set("n", "t", b"x".to_vec(), 1)?;
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.get("n", "t"), None, "expired");
        assert!(
            kv.compare_and_swap("n", "t", 0, b"y".to_vec(), 0)?
                .is_some(),
            "an expired key counts as absent"
        );
        Ok(())
    }

    #[test]
    fn a_failed_cas_stores_nothing() -> anyhow::Result<()> {
        // One key of room: a failed CAS must not take it, nor leave a never-expiring placeholder.
        let kv = small(1, 1 << 10);
        for expected in [1, 2, 1 << 32, u64::MAX] {
            for key in ["a", "b", "c"] {
                assert_eq!(
                    kv.compare_and_swap("n", key, expected, b"v".to_vec(), 0)?,
                    None
                );
            }
        }
        assert_eq!((kv.len(), kv.usage("n")), (0, (0, 0)));
        assert!(kv.set("n", "d", b"v".to_vec(), 0).is_ok(), "room is left");
        Ok(())
    }

    #[test]
    fn versions_never_repeat_for_a_key() -> anyhow::Result<()> {
        let kv = Kv::default();
        let stale = kv.set("n", "k", b"a".to_vec(), 0)?;
        kv.delete("n", "k");
        let again = kv.set("n", "k", b"b".to_vec(), 0)?;
        assert_ne!(again, stale);
        assert_eq!(
            kv.compare_and_swap("n", "k", stale, b"c".to_vec(), 0)?,
            None,
            "a reader from before the delete must not win"
        );
        kv.set("n", "t", b"a".to_vec(), 1)?;
        let before_expiry = kv.get("n", "t").map(|e| e.1);
        std::thread::sleep(Duration::from_millis(5));
        let after = kv.compare_and_swap("n", "t", 0, b"b".to_vec(), 0)?;
        assert!(after.is_some() && after != before_expiry, "{after:?}");
        Ok(())
    }

    #[test]
    fn oversized_keys_and_values_are_refused_by_every_write() {
        let kv = small(100, 1 << 20);
        let long = "k".repeat(17);
        let big = vec![0u8; 33];
        let key_err = KvError::KeyTooLong { len: 17, max: 16 };
        let value_err = KvError::ValueTooLarge { len: 33, max: 32 };
        assert_eq!(kv.set("n", &long, b"v".to_vec(), 0), Err(key_err.clone()));
        assert_eq!(
            kv.compare_and_swap("n", &long, 0, b"v".to_vec(), 0),
            Err(key_err.clone())
        );
        assert_eq!(kv.increment("n", &long, 1, 0), Err(key_err.clone()));
        assert_eq!(
            kv.take_tokens("n", &long, 1, 1000, 1, 1),
            Err(key_err.clone())
        );
        assert_eq!(kv.set("n", "k", big.clone(), 0), Err(value_err.clone()));
        assert_eq!(
            kv.compare_and_swap("n", "k", 0, big, 0),
            Err(value_err.clone())
        );
        assert_eq!(kv.len(), 0, "nothing stored");
        // At the limits exactly: accepted.
        let max_key = "k".repeat(16);
        assert!(kv.set("n", &max_key, vec![0; 32], 0).is_ok());
        assert!(kv.increment("n", &max_key, 1, 0).is_ok());
        assert!(kv.take_tokens("n", &max_key, 1, 1000, 1, 1).is_ok());
    }

    #[test]
    fn a_namespace_holds_at_most_max_entries_of_every_kind() -> anyhow::Result<()> {
        let kv = small(4, 1 << 20);
        kv.set("n", "e", b"v".to_vec(), 0)?;
        kv.compare_and_swap("n", "cas", 0, b"v".to_vec(), 0)?;
        kv.increment("n", "c", 1, 0)?;
        kv.take_tokens("n", "b", 10, 1000, 10, 1)?;
        let full = KvError::TooManyKeys {
            namespace: "n".into(),
            max: 4,
        };
        assert_eq!(kv.set("n", "e2", b"v".to_vec(), 0), Err(full.clone()));
        assert_eq!(
            kv.compare_and_swap("n", "cas2", 0, b"v".to_vec(), 0),
            Err(full.clone())
        );
        assert_eq!(kv.increment("n", "c2", 1, 0), Err(full.clone()));
        assert_eq!(kv.take_tokens("n", "b2", 1, 1000, 1, 1), Err(full.clone()));
        assert_eq!(kv.len(), 4);
        // Keys already there keep working; other namespaces are not affected.
        assert!(kv.set("n", "e", b"w".to_vec(), 0).is_ok());
        assert_eq!(kv.increment("n", "c", 1, 0), Ok(2));
        assert!(kv.take_tokens("n", "b", 10, 1000, 10, 1).is_ok());
        assert!(kv.set("other", "e2", b"v".to_vec(), 0).is_ok());
        // A delete makes room.
        kv.delete("n", "e");
        assert!(kv.set("n", "e2", b"v".to_vec(), 0).is_ok());
        Ok(())
    }

    #[test]
    fn a_namespace_holds_at_most_max_bytes() -> anyhow::Result<()> {
        let kv = small(100, 30);
        kv.set("n", "a", vec![0; 20], 0)?; // 21 bytes
        assert_eq!(
            kv.set("n", "b", vec![0; 9], 0),
            Err(KvError::TooManyBytes {
                namespace: "n".into(),
                max: 30
            })
        );
        assert!(kv.set("n", "a", vec![0; 30], 0).is_err(), "growing past it");
        assert!(kv.increment("n", "b", 1, 0).is_ok(), "a key alone fits");
        kv.set("n", "a", vec![0; 10], 0)?; // shrinking frees room
        kv.set("n", "b", vec![0; 9], 0)?;
        assert_eq!(kv.usage("n"), (3, 22));
        kv.delete("n", "a");
        kv.delete("n", "b");
        assert_eq!(kv.usage("n"), (1, 1), "the counter is left");
        Ok(())
    }

    #[test]
    fn expired_state_frees_a_full_namespace() -> anyhow::Result<()> {
        let kv = small(3, 1 << 20);
        kv.set("n", "e", b"v".to_vec(), 1)?;
        kv.increment("n", "c", 1, 1)?;
        kv.take_tokens("n", "b", 1000, 1, 1, 1)?;
        std::thread::sleep(Duration::from_millis(5));
        // Refused writes count towards the sweep too, so a full namespace recovers.
        let mut tries = 0;
        while kv.set("n", "new", b"v".to_vec(), 0).is_err() {
            tries += 1;
            assert!(tries <= SWEEP_EVERY, "never swept");
        }
        assert_eq!(kv.usage("n"), (1, 4));
        Ok(())
    }

    #[test]
    fn huge_ttls_do_not_panic() -> anyhow::Result<()> {
        let kv = Kv::default();
        for ttl in [u64::MAX, u64::MAX - 1, u64::MAX / 2, 1 << 60] {
            kv.set("n", "s", b"v".to_vec(), ttl)?;
            assert!(kv.get("n", "s").is_some(), "ttl {ttl}");
            kv.delete("n", "s");
            assert!(
                kv.compare_and_swap("n", "s", 0, b"v".to_vec(), ttl)?
                    .is_some()
            );
            assert_eq!(kv.increment("n", &format!("c{ttl}"), 1, ttl)?, 1);
            assert_eq!(kv.increment("n", &format!("c{ttl}"), 1, ttl)?, 2);
            kv.delete("n", "s");
        }
        Ok(())
    }

    #[test]
    fn counters_add_and_reset_after_ttl() -> anyhow::Result<()> {
        let kv = Kv::default();
        assert_eq!(kv.increment("n", "c", 2, 0)?, 2);
        assert_eq!(kv.increment("n", "c", -5, 0)?, -3);
        assert_eq!(kv.increment("n", "w", 1, 1)?, 1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.increment("n", "w", 1, 1)?, 1, "window restarted");
        Ok(())
    }

    #[test]
    fn buckets_that_are_not_full_survive_a_sweep() -> anyhow::Result<()> {
        let kv = Kv::default();
        // 1 token per hour, burst 1: empty after one take, and must stay empty.
        assert!(kv.take_tokens("n", "slow", 1, 3_600_000, 1, 1)?.allowed);
        for i in 0..SWEEP_EVERY {
            kv.increment("n", &format!("c{i}"), 1, 1)?;
        }
        assert!(
            !kv.take_tokens("n", "slow", 1, 3_600_000, 1, 1)?.allowed,
            "a sweep must not refill a bucket"
        );
        Ok(())
    }

    #[test]
    fn full_buckets_and_expired_keys_are_swept() -> anyhow::Result<()> {
        let kv = Kv::default();
        for i in 0..SWEEP_EVERY - 1 {
            kv.take_tokens("n", &format!("client-{i}"), 1000, 1, 10, 1)?;
        }
        assert!(kv.len() >= (SWEEP_EVERY - 1) as usize);
        std::thread::sleep(Duration::from_millis(5));
        kv.take_tokens("n", "one-more", 1000, 1, 10, 1)?;
        assert!(
            kv.len() <= 1,
            "refilled buckets are dropped: {} left",
            kv.len()
        );
        assert_eq!(kv.usage("n").0, kv.len(), "the count follows the sweep");
        Ok(())
    }

    #[test]
    fn token_bucket_allows_burst_then_refills_at_rate() -> anyhow::Result<()> {
        let kv = Kv::default();
        let t0 = Instant::now();
        // 10 per second, burst 3.
        for i in 0..3 {
            let t = kv.take_tokens_at("n", "k", 10, 1000, 3, 1, t0)?;
            assert!(t.allowed, "take {i}");
        }
        let t = kv.take_tokens_at("n", "k", 10, 1000, 3, 1, t0)?;
        assert_eq!(
            t,
            Take {
                allowed: false,
                remaining: 0,
                retry_after_ms: 100,
                reset_ms: 300
            }
        );
        let t = kv.take_tokens_at("n", "k", 10, 1000, 3, 1, t0 + Duration::from_millis(100))?;
        assert!(t.allowed, "one token back after 100ms");
        let t = kv.take_tokens_at("n", "k", 10, 1000, 3, 1, t0 + Duration::from_secs(10))?;
        assert_eq!(t.remaining, 2, "capped at burst");
        Ok(())
    }
}
