//! Write [Weir](https://github.com/weir-proxy/weir) proxy filters in Rust.
//!
//! A filter is a type implementing [`Filter`]: a typed config, a per-request context, and one
//! method per phase it takes part in, each with a default that does nothing. [`export_filter!`]
//! turns it into the `weir:filter/filter` export of a WebAssembly component; built with
//! `cargo build --release --target wasm32-wasip2`, the crate *is* the component Weir loads.
//!
//! The same crate compiles natively, where every host call goes to an in-process emulator, so
//! a filter is unit-tested with plain `cargo test` through [`testing::Harness`].
//!
//! # A complete filter
//!
//! An API-key check: a request without a known key gets a JSON 401; a known key is removed
//! before the request goes upstream and the consumer's name is added to the response.
//!
//! ```
//! use std::collections::HashMap;
//!
//! use serde::Deserialize;
//! use weir_filter::{Action, Filter, LocalResponse, Phases, Request, Response};
//! use weir_filter::{export_filter, log, metrics};
//!
//! /// The filter's config, from the JSON the proxy passes to `configure`.
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     /// API key → consumer name.
//!     keys: HashMap<String, String>,
//!     /// Header carrying the key. Default: `x-api-key`.
//!     #[serde(default = "default_header")]
//!     header: String,
//! }
//!
//! fn default_header() -> String {
//!     "x-api-key".to_owned()
//! }
//!
//! struct KeyAuth {
//!     config: Config,
//! }
//!
//! /// Per-request state: who the caller is.
//! #[derive(Default)]
//! struct Caller {
//!     consumer: Option<String>,
//! }
//!
//! impl Filter for KeyAuth {
//!     type Config = Config;
//!     type Context = Caller;
//!     const PHASES: Phases = Phases::REQUEST_HEADERS.union(Phases::RESPONSE_HEADERS);
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         if config.keys.is_empty() {
//!             return Err("keys: at least one key is required".to_owned());
//!         }
//!         Ok(Self { config })
//!     }
//!
//!     fn on_request_headers(&self, req: &mut Request, caller: &mut Caller) -> Action {
//!         let consumer = req
//!             .header(&self.config.header)
//!             .and_then(|key| self.config.keys.get(&key).cloned());
//!         let Some(consumer) = consumer else {
//!             if let Err(e) = metrics::counter_add("key_auth_rejected_total", &[], 1) {
//!                 log::warn(&format!("key-auth: metrics: {e}"));
//!             }
//!             let body = serde_json::json!({ "error": "missing or unknown api key" });
//!             return LocalResponse::json(401, &body).into();
//!         };
//!         // The key is a secret: it does not travel upstream.
//!         if let Err(e) = req.remove_header(&self.config.header) {
//!             log::error(&format!("key-auth: {e}"));
//!             return Action::respond(500);
//!         }
//!         caller.consumer = Some(consumer);
//!         Action::Continue
//!     }
//!
//!     fn on_response_headers(&self, res: &mut Response, caller: &mut Caller) -> Action {
//!         if let Some(consumer) = &caller.consumer {
//!             if let Err(e) = res.set_header("x-consumer", consumer) {
//!                 log::warn(&format!("key-auth: {e}"));
//!             }
//!         }
//!         Action::Continue
//!     }
//! }
//!
//! export_filter!(KeyAuth);
//!
//! // And its test, natively (this would live in `#[cfg(test)] mod tests`):
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use weir_filter::testing::{Harness, TestRequest, TestResponse};
//!
//! let mut h = Harness::<KeyAuth>::new(serde_json::json!({ "keys": { "k1": "alice" } }))?;
//!
//! let mut req = TestRequest::get("/orders").header("x-api-key", "k1");
//! assert_eq!(h.request_headers(&mut req), Action::Continue);
//! assert_eq!(req.header_value("x-api-key"), None);
//! let mut res = TestResponse::new(200);
//! assert_eq!(h.response_headers(&mut req, &mut res), Action::Continue);
//! assert_eq!(res.header_value("x-consumer"), Some("alice"));
//! h.done(&req);
//!
//! let mut req = TestRequest::get("/orders").header("x-api-key", "nope");
//! let action = h.request_headers(&mut req);
//! assert_eq!(action.local_response().map(|r| r.status), Some(401));
//! assert_eq!(h.counter("key_auth_rejected_total", &[]), 1);
//!
//! assert!(Harness::<KeyAuth>::new(serde_json::json!({ "keys": {} })).is_err());
//! # Ok(())
//! # }
//! ```
//!
//! # Building the component
//!
//! ```text
//! [lib]
//! crate-type = ["cdylib", "rlib"]   # cdylib: the component; rlib: native tests
//! ```
//!
//! ```text
//! rustup target add wasm32-wasip2
//! cargo build --release --target wasm32-wasip2
//! # → target/wasm32-wasip2/release/<crate>.wasm, a component ready for Weir
//! ```
//!
//! # How the host drives a filter
//!
//! * `configure` runs once per instance with the filter's JSON config: the SDK deserializes it
//!   into [`Filter::Config`] (an empty config reads as `{}`), calls [`Filter::new`] and declares
//!   [`Filter::phases`]. Any error becomes a config error and the proxy refuses the config.
//! * Each request has a context id. The first phase call for an id creates a
//!   [`Filter::Context`] with `Default`; `context-done` drops it. Contexts never outlive their
//!   request, so one request's state cannot reach another. A filter whose context is
//!   zero-sized (`()`) is declared [`Phases::STATELESS`]: the proxy then skips `context-done`,
//!   one guest call less per request.
//! * An instance handles one phase call at a time, which is why phases take `&self`.
//! * Host calls return `Result<_, HostError>`; a [`HostError`] is a value, never a trap. A panic
//!   *is* a trap: its message and location go to the proxy's log (at error level, through
//!   [`log`]), then the proxy throws the instance away and applies the filter's failure policy.
//!
//! # Host capabilities
//!
//! [`log`], [`clock`], [`metrics`], [`kv`] (shared state, counters, token buckets) and
//! [`callout`] (HTTP requests to granted targets). Capabilities are denied unless the filter's
//! config in the proxy grants them.

#![deny(missing_docs)]

// Lets generated code and our macros name this crate as `weir_filter::...` from inside it too.
extern crate self as weir_filter;

mod action;
pub mod auth;
pub mod callout;
pub mod clock;
pub mod crypto;
pub mod defaults;
mod error;
mod http;
pub mod kv;
pub mod log;
pub mod metrics;
mod runtime;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod trace;
pub mod validate;

// The README's examples are compiled and run as doc tests too, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use action::{Action, LocalResponse, Phases};
pub use error::{ConfigError, HostError};
pub use http::{Body, BodyKind, LogView, Request, Response};

/// A Weir filter.
///
/// Implement the phases listed in [`PHASES`](Self::PHASES); every phase has a default that
/// does nothing and returns [`Action::Continue`]. Export the type with [`export_filter!`].
///
/// Phases run in this order for a request: `on_request_headers`, `on_request_body` (per chunk),
/// `on_response_headers`, `on_response_body` (per chunk), `on_log`. Any of the first four may
/// answer the client with [`Action::Respond`], after which the request phases that would
/// have followed are skipped.
pub trait Filter: Sized + 'static {
    /// The typed config, deserialized from the JSON the proxy passes to `configure` (the
    /// route's override merged over the filter's default). Use `#[serde(deny_unknown_fields)]`
    /// so a mistyped key is an error, and `serde::de::IgnoredAny` for a filter without config.
    type Config: serde::de::DeserializeOwned;

    /// Per-request state, created with `Default` at the first phase of a request and dropped
    /// when the request is over. Use `()` for none: the filter is then declared
    /// [`Phases::STATELESS`] and costs the proxy one call less per request.
    type Context: Default;

    /// The phases this filter takes part in. The proxy calls no other phase and copies no body
    /// into a filter that did not declare a body phase.
    const PHASES: Phases;

    /// Builds the filter from its config, once per instance. An `Err` rejects the config:
    /// the message goes to the operator (lowercase, no trailing period, say what to fix).
    fn new(config: Self::Config) -> Result<Self, String>;

    /// The phases declared to the proxy. Default: [`PHASES`](Self::PHASES); override it only
    /// when the phases depend on the config.
    fn phases(&self) -> Phases {
        Self::PHASES
    }

    /// The request head has arrived. Headers and path may be changed; [`Action::Respond`]
    /// answers the client without contacting the upstream. Default: `Continue`.
    fn on_request_headers(&self, _req: &mut Request, _ctx: &mut Self::Context) -> Action {
        Action::Continue
    }

    /// A chunk of the request body; `end` marks the last one. [`Action::Buffer`] holds the
    /// bytes so the next call sees them plus the next chunk; `body.set(..)` replaces them.
    /// Default: `Continue` (the bytes go upstream unchanged).
    fn on_request_body(&self, _body: &mut Body, _end: bool, _ctx: &mut Self::Context) -> Action {
        Action::Continue
    }

    /// The upstream's response head has arrived (or a local response of a later filter).
    /// Status and response headers may be changed; [`Action::Respond`] replaces the response.
    /// Default: `Continue`.
    fn on_response_headers(&self, _res: &mut Response, _ctx: &mut Self::Context) -> Action {
        Action::Continue
    }

    /// A chunk of the response body; `end` marks the last one. As
    /// [`on_request_body`](Self::on_request_body). Default: `Continue`.
    fn on_response_body(&self, _body: &mut Body, _end: bool, _ctx: &mut Self::Context) -> Action {
        Action::Continue
    }

    /// The response is complete: for logging and metrics; heads are readable, not writable.
    /// Default: nothing.
    fn on_log(&self, _log: &LogView, _ctx: &mut Self::Context) {}
}

/// Exports a [`Filter`] type as the component's `weir:filter/filter` interface.
///
/// Use it once per crate, at the top level. For `wasm32` it expands to the component export:
/// `configure` keeps the filter instance in a static, phase calls get the request's context
/// from a map keyed by context id, `context-done` drops it. Natively it only checks that the
/// type is a [`Filter`] (tests use [`testing::Harness`]).
///
/// ```
/// use weir_filter::{export_filter, Filter, Phases};
///
/// struct Nothing;
///
/// impl Filter for Nothing {
///     type Config = serde::de::IgnoredAny;
///     type Context = ();
///     const PHASES: Phases = Phases::NONE;
///     fn new(_: Self::Config) -> Result<Self, String> {
///         Ok(Nothing)
///     }
/// }
///
/// export_filter!(Nothing);
/// ```
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static WEIR_FILTER_SLOT: $crate::__private::Slot<$filter> =
                    const { $crate::__private::Slot::new() };
            }

            struct WeirFilterExport;

            impl $crate::__private::Guest for WeirFilterExport {
                fn configure(
                    config: ::std::string::String,
                ) -> ::std::result::Result<
                    $crate::__private::WitPhases,
                    $crate::__private::WitConfigError,
                > {
                    WEIR_FILTER_SLOT.with(|s| s.configure(&config))
                }
                fn on_request_headers(context: u32) -> $crate::__private::WitAction {
                    WEIR_FILTER_SLOT.with(|s| s.on_request_headers(context))
                }
                fn on_request_body(context: u32, end: bool) -> $crate::__private::WitAction {
                    WEIR_FILTER_SLOT.with(|s| s.on_request_body(context, end))
                }
                fn on_response_headers(context: u32) -> $crate::__private::WitAction {
                    WEIR_FILTER_SLOT.with(|s| s.on_response_headers(context))
                }
                fn on_response_body(context: u32, end: bool) -> $crate::__private::WitAction {
                    WEIR_FILTER_SLOT.with(|s| s.on_response_body(context, end))
                }
                fn on_log(context: u32) {
                    WEIR_FILTER_SLOT.with(|s| s.on_log(context))
                }
                fn context_done(context: u32) {
                    WEIR_FILTER_SLOT.with(|s| s.context_done(context))
                }
            }

    $crate::__private::export!(WeirFilterExport with_types_in $crate::__private::bindings);
        };

        #[cfg(not(target_arch = "wasm32"))]
        const _: () = $crate::__private::assert_filter::<$filter>();
    };
}

/// Implementation details of [`export_filter!`]; not a stable API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::sys::wasm::{Guest, Slot, WitAction, WitConfigError, WitPhases, bindings};
    #[cfg(target_arch = "wasm32")]
    pub use wit_bindgen;

    #[cfg(target_arch = "wasm32")]
    pub use crate::sys::wasm::bindings::__weir_filter_export as export;

    /// Compile-time check that `export_filter!` got a [`Filter`](crate::Filter).
    pub const fn assert_filter<F: crate::Filter>() {}
}
