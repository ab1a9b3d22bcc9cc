//! weir-router: the L7 route matcher.
//!
//! A [`Router`] is compiled once per configuration snapshot from a list of
//! [`RouteSpec`]s and is immutable afterwards, so it can be shared across
//! worker threads behind an `Arc`. [`Router::find`] does not allocate in the
//! common case (see its docs for the one exception).
//!
//! When several routes match a request, the most specific one wins; the
//! ordering is described on [`Router::find`]. Request paths should be passed
//! through [`normalize_path`] before routing.

#![deny(missing_docs)]

mod normalize;
mod query;
mod router;

use std::fmt;

use http::{HeaderName, Method};

pub use normalize::{EscapedSlashes, PathError, PathOptions, PathParameters, normalize_path};
pub use router::Router;

/// How a route matches the request path (the path excludes the query string).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PathMatch {
    /// Any path.
    #[default]
    Any,
    /// The path must equal this string exactly.
    Exact(String),
    /// The path must start with this string. This is a plain string prefix, as
    /// in Envoy: `/v1` also matches `/v1x`, so write `/v1/` to match a segment.
    Prefix(String),
    /// The whole path must match this regular expression (it is anchored at
    /// both ends; `regex` crate syntax).
    Regex(String),
}

/// How a route matches one header or query parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// The header or parameter is present, whatever its value (possibly empty).
    Present,
    /// The value equals this string exactly (case-sensitive).
    Exact(String),
    /// The whole value matches this regular expression (anchored at both ends;
    /// `regex` crate syntax, matched against the raw bytes).
    Regex(String),
}

/// One route as configured: every constraint must hold for the route to match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    /// `"api.example.com"` (exact) or `"*.example.com"` (wildcard: matches
    /// `a.example.com` and `a.b.example.com` but not `example.com`); `None`
    /// matches any host, including a request without one. Case-insensitive
    /// (ASCII); one trailing dot on the pattern is ignored.
    pub host: Option<String>,
    /// The path constraint.
    pub path: PathMatch,
    /// Whether exact and prefix paths compare ASCII case-insensitively (a regex gets `(?i)`).
    /// Default `false`: paths are case-sensitive, as RFC 3986 says; set it when an upstream
    /// (IIS, a case-insensitive file system) serves `/ADMIN` as `/admin`.
    pub path_ignore_case: bool,
    /// Allowed methods; empty means any method.
    pub methods: Vec<Method>,
    /// Header constraints, all of which must hold. A header with several
    /// values (several field lines) matches only if every one of them matches,
    /// so a second line can never satisfy a rule the first fails (upstreams
    /// differ in which line they read); values are not split on commas.
    pub headers: Vec<(HeaderName, ValueMatch)>,
    /// Query parameter constraints, all of which must hold. Names and values
    /// are percent-decoded (`+` is a space) before comparing; names are
    /// case-sensitive. A parameter that occurs several times matches only if
    /// every occurrence does (upstream frameworks differ in whether they read
    /// the first, the last or all of them).
    pub query: Vec<(String, ValueMatch)>,
}

/// Where in a route a regular expression appeared, for [`RouterError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegexSite {
    /// The path regex.
    Path,
    /// The value regex of a header rule.
    Header(HeaderName),
    /// The value regex of a query parameter rule.
    Query(String),
}

impl fmt::Display for RegexSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegexSite::Path => f.write_str("path"),
            RegexSite::Header(name) => write!(f, "header {:?}", name.as_str()),
            RegexSite::Query(name) => write!(f, "query parameter {name:?}"),
        }
    }
}

/// A route that cannot be compiled. Every variant names the route's index in
/// the list given to [`Router::new`].
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The host pattern is malformed.
    #[error("route {route}: invalid host pattern {pattern:?}: {reason}")]
    InvalidHost {
        /// Index of the offending route.
        route: usize,
        /// The pattern as configured.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An exact or prefix path that can never match a normalized path.
    #[error("route {route}: invalid path {path:?}: {reason}")]
    InvalidPath {
        /// Index of the offending route.
        route: usize,
        /// The path as configured.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A query rule with an empty parameter name.
    #[error("route {route}: invalid query rule: parameter name is empty")]
    EmptyQueryName {
        /// Index of the offending route.
        route: usize,
    },
    /// A regular expression that does not compile.
    #[error("route {route}: invalid {site} regex {pattern:?}: {source}")]
    InvalidRegex {
        /// Index of the offending route.
        route: usize,
        /// Which part of the route the regex belongs to.
        site: RegexSite,
        /// The regex as configured.
        pattern: String,
        /// The compiler's complaint.
        source: regex::Error,
    },
}

impl RouterError {
    /// Index (into the list given to [`Router::new`]) of the offending route.
    pub fn route(&self) -> usize {
        match self {
            RouterError::InvalidHost { route, .. }
            | RouterError::InvalidPath { route, .. }
            | RouterError::EmptyQueryName { route }
            | RouterError::InvalidRegex { route, .. } => *route,
        }
    }
}
