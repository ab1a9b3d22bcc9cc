//! Shared state across requests, instances and filters, by namespace.
//!
//! Every namespace must be granted in the filter's config (`grants.kv`); using another one is
//! a [`HostError::Denied`]. Values carry a version for optimistic concurrency
//! ([`compare_and_swap`]); counters ([`increment`]) and token buckets ([`take_tokens`]) are
//! atomic on the host.
//!
//! ```
//! use std::time::Duration;
//! use weir_filter::{kv, HostError};
//! # fn main() -> Result<(), HostError> {
//! # let host = weir_filter::testing::Emulator::new();
//! # let _entered = host.enter();
//! let version = kv::set("sessions", "abc", b"alice", Some(Duration::from_secs(60)))?;
//! let entry = kv::get("sessions", "abc")?.expect("just set");
//! assert_eq!((entry.value.as_slice(), entry.version), (&b"alice"[..], version));
//!
//! let hits = kv::increment("hits", "/login", 1, Some(Duration::from_secs(1)))?;
//! assert_eq!(hits, 1);
//!
//! let bucket = kv::take_tokens("rl", "10.0.0.1", 10, Duration::from_secs(1), 20, 1)?;
//! assert!(bucket.allowed);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::HostError;
use crate::sys::{Backend, Host};

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The value.
    pub value: Vec<u8>,
    /// Its version (never 0), for [`compare_and_swap`].
    pub version: u64,
}

/// The outcome of [`take_tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketResult {
    /// Whether the tokens were taken.
    pub allowed: bool,
    /// Tokens left after the call.
    pub remaining: u64,
    /// When not allowed: how long until enough tokens are back (zero when allowed).
    pub retry_after: Duration,
    /// How long until the bucket is full again.
    pub reset: Duration,
}

/// A TTL as the WIT's milliseconds: `None` is 0 (no expiry); a non-zero TTL under 1 ms counts
/// as 1 ms so it still expires.
pub(crate) fn ttl_ms(ttl: Option<Duration>) -> u64 {
    match ttl {
        None => 0,
        Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
    }
}

/// Reads a key.
pub fn get(namespace: &str, key: &str) -> Result<Option<Entry>, HostError> {
    Backend::kv_get(namespace, key)
}

/// Writes a key, expiring after `ttl` (`None`: never). Returns the new version.
pub fn set(
    namespace: &str,
    key: &str,
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<u64, HostError> {
    Backend::kv_set(namespace, key, value, ttl_ms(ttl))
}

/// Writes only if the key's current version is `expected` (`None`: the key must not exist).
/// Returns the new version, or `None` if the version did not match (read again and retry).
///
/// ```
/// use weir_filter::{kv, HostError};
/// # fn main() -> Result<(), HostError> {
/// # let host = weir_filter::testing::Emulator::new();
/// # let _entered = host.enter();
/// let v1 = kv::compare_and_swap("ns", "k", None, b"first", None)?.expect("key was absent");
/// assert_eq!(kv::compare_and_swap("ns", "k", None, b"again", None)?, None);
/// assert!(kv::compare_and_swap("ns", "k", Some(v1), b"second", None)?.is_some());
/// # Ok(())
/// # }
/// ```
pub fn compare_and_swap(
    namespace: &str,
    key: &str,
    expected: Option<u64>,
    value: &[u8],
    ttl: Option<Duration>,
) -> Result<Option<u64>, HostError> {
    Backend::kv_compare_and_swap(namespace, key, expected.unwrap_or(0), value, ttl_ms(ttl))
}

/// Deletes a key (deleting a missing key is not an error).
pub fn delete(namespace: &str, key: &str) -> Result<(), HostError> {
    Backend::kv_delete(namespace, key)
}

/// Adds `delta` to an atomic counter (created at 0) and returns the new value. With a `ttl`
/// the counter resets that long after it was created (a fixed window).
pub fn increment(
    namespace: &str,
    key: &str,
    delta: i64,
    ttl: Option<Duration>,
) -> Result<i64, HostError> {
    Backend::kv_increment(namespace, key, delta, ttl_ms(ttl))
}

/// Takes `cost` tokens from the bucket `key` (capacity `burst`, refilled at `rate` tokens per
/// `period`), atomically: the rate-limit primitive. A new bucket starts full.
pub fn take_tokens(
    namespace: &str,
    key: &str,
    rate: u64,
    period: Duration,
    burst: u64,
    cost: u64,
) -> Result<BucketResult, HostError> {
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
    Backend::kv_take_tokens(namespace, key, rate, period_ms, burst, cost)
}
