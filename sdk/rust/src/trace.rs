//! The request's trace span: attributes and events a filter adds appear on the server span
//! Weir exports for the request over OTLP (`tracing.otlp` in the proxy's config).
//!
//! Only sampled requests are exported. For the others these calls do nothing and cost next to
//! nothing; [`sampled`] lets a filter skip building what it would add.
//!
//! ```
//! use weir_filter::trace;
//! if trace::sampled() {
//!     let _ = trace::set_attribute("enduser.id", "alice");
//! }
//! let _ = trace::add_event("auth.refused", &[("reason", "the token has expired")]);
//! ```
//!
//! Names are 1–128 bytes of `[A-Za-z0-9._-]`; attribute keys under the proxy's own prefixes
//! (`http.`, `url.`, `server.`, `client.`, `network.`, `error.`, `weir.`) are
//! [`HostError::Invalid`]. Values are cut at 512 bytes. A request's span takes at most 32
//! attributes and 32 events (of at most 16 attributes each) from all its filters together. In
//! `on_log` the span has already been exported: the calls are [`HostError::Unavailable`].

use crate::HostError;
use crate::sys::{Backend, Host};

/// Attributes all filters together may set on a request's span.
pub const MAX_ATTRIBUTES: usize = 32;
/// Events all filters together may add to a request's span.
pub const MAX_EVENTS: usize = 32;
/// Attributes one event may carry.
pub const MAX_EVENT_ATTRIBUTES: usize = 16;
/// Longest attribute key or event name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest attribute value kept, in bytes.
pub const MAX_VALUE_BYTES: usize = 512;
/// Key prefixes of the proxy's own span attributes.
pub const RESERVED_PREFIXES: [&str; 7] = [
    "http.", "url.", "server.", "client.", "network.", "error.", "weir.",
];

/// Whether the current request's trace is exported (and still open to filters).
pub fn sampled() -> bool {
    Backend::span_sampled()
}

/// Sets an attribute of the request's span; a key set again gets the new value.
pub fn set_attribute(key: &str, value: &str) -> Result<(), HostError> {
    Backend::span_set_attribute(key, value)
}

/// Adds an event, timestamped now, with attributes, to the request's span. The proxy adds the
/// filter's name as the event's `weir.filter` attribute.
pub fn add_event(name: &str, attributes: &[(&str, &str)]) -> Result<(), HostError> {
    Backend::span_add_event(name, attributes)
}
