//! HTTP callouts: the filter waits for the answer; the proxy keeps serving other requests.
//!
//! Targets must be granted in the filter's config (`grants.callouts`: cluster names or
//! `host:port`); another target is a [`HostError::Denied`].
//!
//! ```
//! use std::time::Duration;
//! use weir_filter::{callout, HostError};
//!
//! fn introspect(token: &str) -> Result<bool, HostError> {
//!     let auth = format!("Bearer {token}");
//!     let res = callout::send(
//!         "auth",
//!         "POST",
//!         "/introspect",
//!         &[("authorization", auth.as_str())],
//!         b"",
//!         Duration::from_millis(200),
//!     )?;
//!     Ok(res.status == 200)
//! }
//! # let host = weir_filter::testing::Emulator::new();
//! # host.on_callout(|_, _| Ok(callout::CalloutResponse::new(200)));
//! # let _entered = host.enter();
//! # assert_eq!(introspect("t"), Ok(true));
//! ```

use std::time::Duration;

use crate::HostError;
use crate::sys::{Backend, Host};

/// An HTTP response from a callout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CalloutResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
}

impl CalloutResponse {
    /// A response with this status, no headers and an empty body (handy in tests).
    pub fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of a header (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends a request to `target` (a granted cluster name or `host:port`) and waits for the whole
/// response, at most `timeout` (rounded down to milliseconds, at most `u32::MAX` ms).
///
/// Errors with [`HostError::Denied`] for a target not granted and [`HostError::Failed`] for
/// connect errors and timeouts. A response with any status, 5xx included, is `Ok`.
pub fn send(
    target: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<CalloutResponse, HostError> {
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    Backend::callout_send(target, method, path, headers, body, timeout_ms)
}
