//! Metrics, exported on the proxy's `/metrics` with a `filter` label.
//!
//! Names must match `[a-z_][a-z0-9_]*`; labels are (name, value) pairs. A bad name is a
//! [`HostError::Invalid`].
//!
//! ```
//! use weir_filter::{metrics, HostError};
//! # fn main() -> Result<(), HostError> {
//! # let host = weir_filter::testing::Emulator::new();
//! # let _entered = host.enter();
//! metrics::counter_add("auth_failures_total", &[("reason", "expired")], 1)?;
//! metrics::gauge_set("keys_loaded", &[], 12)?;
//! metrics::histogram_observe("introspection_seconds", &[], 0.012)?;
//! # Ok(())
//! # }
//! ```

use crate::HostError;
use crate::sys::{Backend, Host};

/// Adds 1 to a counter, best effort: a refused call (a malformed name, a series bound reached)
/// is ignored, so counting can never change a filter's decision. For decision counters such
/// as `auth_decisions_total{result="denied"}`.
///
/// ```
/// # let host = weir_filter::testing::Emulator::new();
/// # let _entered = host.enter();
/// weir_filter::metrics::count("key_auth_decisions_total", &[("result", "allowed")]);
/// weir_filter::metrics::count("Not A Name", &[]); // refused, and ignored
/// assert_eq!(host.counter("key_auth_decisions_total", &[("result", "allowed")]), 1);
/// ```
pub fn count(name: &str, labels: &[(&str, &str)]) {
    let _ = Backend::counter_add(name, labels, 1);
}

/// Adds `delta` to a counter.
pub fn counter_add(name: &str, labels: &[(&str, &str)], delta: u64) -> Result<(), HostError> {
    Backend::counter_add(name, labels, delta)
}

/// Sets a gauge.
pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: i64) -> Result<(), HostError> {
    Backend::gauge_set(name, labels, value)
}

/// Records a histogram observation, in seconds.
pub fn histogram_observe(
    name: &str,
    labels: &[(&str, &str)],
    seconds: f64,
) -> Result<(), HostError> {
    Backend::histogram_observe(name, labels, seconds)
}
