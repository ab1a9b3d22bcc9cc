//! Weir's WebAssembly filter runtime.
//!
//! One wasmtime [`Engine`](wasmtime::Engine) per process (component model, pooling allocator,
//! epoch interruption). A filter module is compiled once (and cached on disk by content hash);
//! each distinct config of it gets an [`InstancePool`]: a small pool of instances, each
//! configured once with that config. A request binds to one instance of each filter on its route for its whole
//! life (per-request state lives in the guest under a context id), but an instance serves many
//! requests: it is locked only while a phase call runs.
//!
//! Budgets: memory (a resource limiter), CPU time per phase (checked when the epoch advances, which
//! it does when a call may be over its time, see `budget`; callout waits excluded), body bytes
//! held. A trap or breach discards the instance; the request then follows
//! the filter's failure policy, and the proxy carries on.

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "filter-world",
        imports: {
            "weir:filter/callout.send": async,
            "weir:filter/kv.get": async,
            "weir:filter/kv.set": async,
            "weir:filter/kv.compare-and-swap": async,
            "weir:filter/kv.delete": async,
            "weir:filter/kv.increment": async,
            "weir:filter/kv.take-tokens": async,
            default: trappable,
        },
        with: {
            "weir:filter/crypto.hmac-key": weir_crypto::HmacKey,
            "weir:filter/crypto.verifying-key": weir_crypto::VerifyingKey,
        },
        exports: { default: async },
    });
}

mod budget;
mod chain;
pub mod componentize;
mod crypto;
mod host;
mod kv;
mod module;
mod pool;
mod series;
mod state;

pub use chain::{Answer, Chain, ChainRequest};
pub use host::{
    Exchange, LocalResponse, MAX_EVENT_ATTRIBUTES, MAX_PHASE_RUNS, MAX_SPAN_ATTRIBUTES,
    MAX_SPAN_EVENTS, PhaseRun, Props, SpanEvent, SpanNotes, set_response_headers,
};
pub use kv::{Kv, KvError, KvLimits, Take};
pub use module::{Module, Runtime, RuntimeOptions};
pub use pool::{FilterSpec, InstancePool};
pub use state::{Redis, RedisTls, State, StateError};

/// Sends filter callouts (implemented by the proxy, which knows clusters and pools).
pub trait Callouts: Send + Sync + 'static {
    /// Sends `req` to `target` (a cluster name or `host:port`) and returns the whole response.
    fn send(
        &self,
        target: &str,
        req: http::Request<bytes::Bytes>,
        timeout: std::time::Duration,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<http::Response<bytes::Bytes>, CalloutError>> + Send + '_>,
    >;
}

/// The cause of a failure, for what crosses into logs and filters.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Why a callout got no whole response. Sources are kept: the filter sees the whole chain
/// (`hyper`'s own message alone says only "client error (Connect)").
#[derive(Debug, thiserror::Error)]
pub enum CalloutError {
    /// The proxy is stopping; nothing more goes out.
    #[error("the proxy is shutting down")]
    ShuttingDown,
    /// `target` does not make a URI.
    #[error("invalid callout target {target:?}")]
    Target {
        target: String,
        #[source]
        source: Cause,
    },
    /// No response head within the timeout (or its body stalled).
    #[error("callout to {target} timed out after {after:?}")]
    Timeout {
        target: String,
        after: std::time::Duration,
    },
    /// Connecting, sending or reading the head failed.
    #[error("callout to {target} failed")]
    Failed {
        target: String,
        #[source]
        source: Cause,
    },
    /// The response body failed or was too large.
    #[error("callout to {target}: response body")]
    Body {
        target: String,
        #[source]
        source: Cause,
    },
}

impl CalloutError {
    /// The error and its sources, outermost first: `a: b: c`.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

/// Headers that frame a message or belong to one connection (lowercase). Only the proxy sets
/// them: a filter's `set-header`, `append-header` and `remove-header` on one of these answer
/// `invalid`, and a local response's are dropped, because a wrong `Content-Length` would
/// desynchronize a keep-alive connection for the requests after it.
pub const FRAMING_HEADERS: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Phases a filter declared (mirrors the WIT `phases` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Phases(u8);

impl Phases {
    /// `on-request-headers`.
    pub const REQUEST_HEADERS: Phases = Phases(1);
    /// `on-request-body`.
    pub const REQUEST_BODY: Phases = Phases(2);
    /// `on-response-headers`.
    pub const RESPONSE_HEADERS: Phases = Phases(4);
    /// `on-response-body`.
    pub const RESPONSE_BODY: Phases = Phases(8);
    /// `on-log`.
    pub const LOG: Phases = Phases(16);
    /// Not a phase: the filter keeps no per-request state, so `context-done` is skipped.
    pub const STATELESS: Phases = Phases(32);

    /// Whether every phase of `other` is in `self`.
    pub fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Union.
    pub fn union(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }

    /// `self` without the flags of `other`.
    pub fn without(self, other: Phases) -> Phases {
        Phases(self.0 & !other.0)
    }

    /// Names, for admin output.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::REQUEST_HEADERS, "request-headers"),
            (Self::REQUEST_BODY, "request-body"),
            (Self::RESPONSE_HEADERS, "response-headers"),
            (Self::RESPONSE_BODY, "response-body"),
            (Self::LOG, "log"),
            (Self::STATELESS, "stateless"),
        ]
        .into_iter()
        .filter(|(p, _)| self.contains(*p))
        .map(|(_, n)| n)
        .collect()
    }
}

impl From<bindings::weir::filter::types::Phases> for Phases {
    fn from(p: bindings::weir::filter::types::Phases) -> Phases {
        use bindings::weir::filter::types::Phases as W;
        let mut out = Phases::default();
        for (w, ours) in [
            (W::REQUEST_HEADERS, Phases::REQUEST_HEADERS),
            (W::REQUEST_BODY, Phases::REQUEST_BODY),
            (W::RESPONSE_HEADERS, Phases::RESPONSE_HEADERS),
            (W::RESPONSE_BODY, Phases::RESPONSE_BODY),
            (W::LOG, Phases::LOG),
            (W::STATELESS, Phases::STATELESS),
        ] {
            if p.contains(w) {
                out = out.union(ours);
            }
        }
        out
    }
}

/// How a filter call went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The phase ran past `time_per_phase`.
    Deadline,
    /// Linear memory would have grown past the cap.
    Memory,
    /// The guest panicked or hit `unreachable`.
    Panic,
    /// Any other trap (out-of-bounds access, stack overflow, bad return value...).
    Trap,
    /// Held more body bytes than `max_body`.
    BodyLimit,
    /// The instance this request was bound to was discarded by another request's trap.
    InstanceLost,
    /// The filter could not be instantiated.
    Instantiate,
}

impl FailureKind {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::Panic => "panic",
            FailureKind::Trap => "trap",
            FailureKind::BodyLimit => "body_limit",
            FailureKind::InstanceLost => "instance_lost",
            FailureKind::Instantiate => "instantiate",
        }
    }

    /// Whether this is a budget breach (as opposed to a fault in the filter's logic).
    pub fn is_budget(self) -> bool {
        matches!(
            self,
            FailureKind::Deadline | FailureKind::Memory | FailureKind::BodyLimit
        )
    }
}
