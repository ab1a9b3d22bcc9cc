//! What a filter declares ([`Phases`]) and what a phase decides ([`Action`]).

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// The set of phases a filter takes part in.
///
/// The host never calls a phase that is not in the set, and never copies a body into a filter
/// that did not declare a body phase, so declare only what the filter needs.
///
/// Combine phases with [`union`](Self::union) in a `const` (the `|` operator works everywhere
/// else; Rust does not yet allow operator traits in constants):
///
/// ```
/// use weir_filter::Phases;
/// const PHASES: Phases = Phases::REQUEST_HEADERS.union(Phases::RESPONSE_HEADERS);
/// assert_eq!(PHASES, Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS);
/// assert!(PHASES.contains(Phases::RESPONSE_HEADERS));
/// assert!(!PHASES.contains(Phases::REQUEST_BODY));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Phases(u8);

impl Phases {
    /// [`Filter::on_request_headers`](crate::Filter::on_request_headers).
    pub const REQUEST_HEADERS: Self = Self(1 << 0);
    /// [`Filter::on_request_body`](crate::Filter::on_request_body).
    pub const REQUEST_BODY: Self = Self(1 << 1);
    /// [`Filter::on_response_headers`](crate::Filter::on_response_headers).
    pub const RESPONSE_HEADERS: Self = Self(1 << 2);
    /// [`Filter::on_response_body`](crate::Filter::on_response_body).
    pub const RESPONSE_BODY: Self = Self(1 << 3);
    /// [`Filter::on_log`](crate::Filter::on_log).
    pub const LOG: Self = Self(1 << 4);
    /// Not a phase: the filter keeps no per-request state, so the proxy skips `context-done`
    /// (one guest call less per request) and every phase call gets a fresh
    /// `Default` context. The SDK adds it by itself when [`Filter::Context`](crate::Filter::Context)
    /// is a zero-sized type such as `()`; declare it for a filter whose context type is used by
    /// some configs only.
    pub const STATELESS: Self = Self(1 << 5);
    /// Every phase.
    pub const ALL: Self = Self(0b1_1111);
    /// No phase (the filter only sees `context-done`).
    pub const NONE: Self = Self(0);

    /// Both sets of phases (usable in `const`).
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every phase of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw bits, in WIT flag order (bit 0 = `request-headers` ... bit 4 = `log`, bit 5 =
    /// `stateless`).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The set with these raw bits; unknown bits are dropped.
    pub const fn from_bits_truncate(bits: u8) -> Self {
        Self(bits & (Self::ALL.0 | Self::STATELESS.0))
    }
}

impl BitOr for Phases {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl BitOrAssign for Phases {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = self.union(rhs);
    }
}

impl fmt::Debug for Phases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Phases, &str); 6] = [
            (Phases::REQUEST_HEADERS, "REQUEST_HEADERS"),
            (Phases::REQUEST_BODY, "REQUEST_BODY"),
            (Phases::RESPONSE_HEADERS, "RESPONSE_HEADERS"),
            (Phases::RESPONSE_BODY, "RESPONSE_BODY"),
            (Phases::LOG, "LOG"),
            (Phases::STATELESS, "STATELESS"),
        ];
        f.write_str("Phases(")?;
        let mut first = true;
        for (phase, name) in NAMES {
            if self.contains(phase) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// What to do after a phase: a filter's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Action {
    /// Go on with the next filter, the upstream or the client.
    #[default]
    Continue,
    /// Stop here and answer the client with this response. From a response phase it replaces
    /// the upstream's response (its head, and its body if it has not started to stream).
    Respond(LocalResponse),
    /// Body phases only: hold this chunk; the next body call sees everything held so far plus
    /// the new chunk (bounded by the filter's body buffer limit). Treated as
    /// [`Continue`](Self::Continue) in header phases.
    Buffer,
}

impl Action {
    /// Answer the client with `status`, no headers and an empty body.
    ///
    /// ```
    /// use weir_filter::{Action, LocalResponse};
    /// assert_eq!(Action::respond(403), Action::Respond(LocalResponse::new(403)));
    /// ```
    pub fn respond(status: u16) -> Self {
        Self::Respond(LocalResponse::new(status))
    }

    /// Whether this is [`Action::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Self::Continue)
    }

    /// The local response, if this is [`Action::Respond`].
    pub fn local_response(&self) -> Option<&LocalResponse> {
        match self {
            Self::Respond(r) => Some(r),
            _ => None,
        }
    }
}

impl From<LocalResponse> for Action {
    fn from(response: LocalResponse) -> Self {
        Self::Respond(response)
    }
}

/// A response produced by the filter instead of the upstream's (auth failures, rate limits,
/// CORS preflight answers). Build it, then return it as [`Action::Respond`] (or `.into()`).
///
/// ```
/// use weir_filter::{Action, LocalResponse};
/// let action: Action = LocalResponse::new(429)
///     .header("retry-after", "3")
///     .body("slow down")
///     .into();
/// assert_eq!(action.local_response().map(|r| r.status), Some(429));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status, 200–599.
    pub status: u16,
    /// Headers to send, in order (names are case-insensitive). The proxy drops the
    /// [`FRAMING_HEADERS`](crate::validate::FRAMING_HEADERS) and frames the body itself.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl LocalResponse {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text.into())
    }

    /// An `application/json` response with this value as its body.
    ///
    /// ```
    /// use weir_filter::LocalResponse;
    /// let r = LocalResponse::json(401, &serde_json::json!({ "error": "missing token" }));
    /// assert_eq!(r.body, br#"{"error":"missing token"}"#);
    /// assert_eq!(r.header_value("content-type"), Some("application/json"));
    /// ```
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        // `Value`'s Display is its compact JSON serialization and cannot fail.
        Self::new(status)
            .header("content-type", "application/json")
            .body(value.to_string())
    }

    /// A `401 Unauthorized` with a `WWW-Authenticate` challenge (RFC 9110 §11.6.1) and an
    /// OAuth-style JSON body `{"error": ..., "error_description": ...}` (RFC 6750 §3).
    ///
    /// ```
    /// use weir_filter::LocalResponse;
    /// let r = LocalResponse::unauthorized(r#"Bearer realm="weir""#, "missing_token", "a bearer token is required");
    /// assert_eq!(r.status, 401);
    /// assert_eq!(r.header_value("www-authenticate"), Some(r#"Bearer realm="weir""#));
    /// assert_eq!(r.body, br#"{"error":"missing_token","error_description":"a bearer token is required"}"#);
    /// ```
    pub fn unauthorized(challenge: &str, error: &str, description: &str) -> Self {
        let body = serde_json::json!({ "error": error, "error_description": description });
        Self::json(401, &body).header("www-authenticate", challenge)
    }

    /// Adds a header (kept in order; repeat a name to send several values).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of a header (case-insensitive name), if present.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
