//! Time and randomness.
//!
//! ```
//! use weir_filter::clock;
//! let started = clock::monotonic_ns();
//! let nonce = clock::random_bytes(16);
//! assert_eq!(nonce.len(), 16);
//! let _elapsed_ns = clock::monotonic_ns().saturating_sub(started);
//! let _now = clock::now_ms();
//! ```

use crate::sys::{Backend, Host};

/// Wall clock: milliseconds since the UNIX epoch.
pub fn now_ms() -> u64 {
    Backend::now_ms()
}

/// A monotonic clock in nanoseconds (for measuring durations).
pub fn monotonic_ns() -> u64 {
    Backend::monotonic_ns()
}

/// `len` random bytes from the operating system's CSPRNG (through the host).
pub fn random_bytes(len: u32) -> Vec<u8> {
    Backend::random_bytes(len)
}
