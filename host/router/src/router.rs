//! Route compilation and lookup.

use std::cmp::Reverse;
use std::collections::HashMap;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use regex::bytes::Regex as BytesRegex;

use crate::{PathMatch, RegexSite, RouteSpec, RouterError, ValueMatch, query};

/// Longest exact host pattern accepted (the DNS limit); see [`HOST_BUF`].
const MAX_EXACT_HOST: usize = 253;
/// Stack buffer for lowercasing a request host. It is larger than any exact
/// pattern, so a host that does not fit can be rejected without comparing.
const HOST_BUF: usize = 256;
const _: () = assert!(MAX_EXACT_HOST <= HOST_BUF);

/// The compiled route table. Immutable after [`Router::new`]; `Send + Sync`.
#[derive(Debug)]
pub struct Router {
    /// Exact hosts, keyed by lowercase name without a trailing dot.
    exact_hosts: HashMap<String, Bucket>,
    /// Wildcard suffixes (lowercase, with the leading '.'), longest first.
    wildcards: Vec<(String, Bucket)>,
    any_host: Bucket,
}

/// The routes that share one host rule.
#[derive(Debug, Default)]
struct Bucket {
    /// Exact-path routes, each list in match order.
    exact_paths: HashMap<String, Vec<Candidate>>,
    /// All other routes in match order: regex, then prefixes longest first,
    /// then any path.
    others: Vec<Candidate>,
}

#[derive(Debug)]
struct Candidate {
    index: usize,
    path: PathRule,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, ValueRule)>,
    query: Vec<(String, ValueRule)>,
}

#[derive(Debug)]
enum PathRule {
    Any,
    /// Already checked by the bucket's map lookup.
    Exact,
    /// A case-insensitive exact path (lowercase); not in the map.
    ExactIgnoreCase(String),
    Prefix(String),
    /// A case-insensitive prefix (lowercase).
    PrefixIgnoreCase(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueRule {
    Present,
    Exact(String),
    // Bytes regex: header values need not be UTF-8, nor do decoded query values.
    Regex(BytesRegex),
}

enum HostRule {
    Any,
    Exact(String),
    Wildcard(String),
}

impl Router {
    /// Compiles `routes`. Indices returned by [`Router::find`] refer to this
    /// list.
    ///
    /// # Errors
    ///
    /// Returns the first route (by index) that is invalid: a host pattern
    /// that is empty, too long, or has a `*` other than a leading `*.`; an
    /// exact or prefix path not starting with `/`; a regex that does not
    /// compile; or an empty query parameter name.
    pub fn new(routes: Vec<RouteSpec>) -> Result<Router, RouterError> {
        let mut exact_hosts: HashMap<String, Bucket> = HashMap::new();
        let mut wildcards: HashMap<String, Bucket> = HashMap::new();
        let mut any_host = Bucket::default();

        for (index, spec) in routes.into_iter().enumerate() {
            let host = parse_host(index, spec.host.as_deref())?;
            let (exact_path, path) = compile_path(index, spec.path, spec.path_ignore_case)?;
            let candidate = Candidate {
                index,
                path,
                methods: spec.methods,
                headers: spec
                    .headers
                    .into_iter()
                    .map(|(name, rule)| {
                        let value = compile_value(index, RegexSite::Header(name.clone()), rule)?;
                        Ok((name, value))
                    })
                    .collect::<Result<_, RouterError>>()?,
                query: spec
                    .query
                    .into_iter()
                    .map(|(name, rule)| {
                        if name.is_empty() {
                            return Err(RouterError::EmptyQueryName { route: index });
                        }
                        let value = compile_value(index, RegexSite::Query(name.clone()), rule)?;
                        Ok((name, value))
                    })
                    .collect::<Result<_, RouterError>>()?,
            };
            let bucket = match host {
                HostRule::Any => &mut any_host,
                HostRule::Exact(host) => exact_hosts.entry(host).or_default(),
                HostRule::Wildcard(suffix) => wildcards.entry(suffix).or_default(),
            };
            match exact_path {
                Some(path) => bucket.exact_paths.entry(path).or_default().push(candidate),
                None => bucket.others.push(candidate),
            }
        }

        exact_hosts.values_mut().for_each(Bucket::sort);
        any_host.sort();
        let mut wildcards: Vec<(String, Bucket)> = wildcards.into_iter().collect();
        for (_, bucket) in &mut wildcards {
            bucket.sort();
        }
        // Distinct suffixes of equal length never match the same host, so
        // their relative order does not matter.
        wildcards.sort_by_key(|(suffix, _)| Reverse(suffix.len()));

        Ok(Router {
            exact_hosts,
            wildcards,
            any_host,
        })
    }

    /// Returns the index (into the list given to [`Router::new`]) of the most
    /// specific route matching the request, or `None`.
    ///
    /// * `host` is the request's host without the port, in any case; one
    ///   trailing dot is ignored. `None` only matches routes without a host.
    /// * `path` excludes the query string and should already be normalized
    ///   with [`normalize_path`](crate::normalize_path).
    /// * `query` is the raw query string without the leading `?`.
    ///
    /// Among matching routes, the winner is decided by comparing, in order:
    /// 1. host: exact host, then wildcard (longer suffix first), then any host;
    /// 2. path: exact, then regex, then prefix (longer first), then any;
    /// 3. the number of other constraints (a non-empty method list counts 1,
    ///    each header and query rule 1 each): more wins;
    /// 4. position in the list: earlier wins.
    ///
    /// Does not allocate, except to decode a query value longer than 256 bytes
    /// containing `%` or `+` for a regex rule (and inside the `regex` crate,
    /// which fills a per-thread match cache on first use).
    pub fn find(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<usize> {
        let request = Request {
            method,
            path,
            query,
            headers,
        };
        // Host class dominates the ordering, so the first bucket with a match wins.
        if let Some(host) = host.map(|h| h.strip_suffix('.').unwrap_or(h)) {
            if let Some(found) = self
                .exact_bucket(host)
                .and_then(|bucket| bucket.find(&request))
            {
                return Some(found);
            }
            let found = self
                .wildcards
                .iter()
                .filter(|(suffix, _)| wildcard_matches(suffix, host))
                .find_map(|(_, bucket)| bucket.find(&request));
            if found.is_some() {
                return found;
            }
        }
        self.any_host.find(&request)
    }

    fn exact_bucket(&self, host: &str) -> Option<&Bucket> {
        if self.exact_hosts.is_empty() {
            return None;
        }
        if !host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.exact_hosts.get(host);
        }
        if host.len() > HOST_BUF {
            return None;
        }
        let mut buf = [0u8; HOST_BUF];
        let lower = &mut buf[..host.len()];
        lower.copy_from_slice(host.as_bytes());
        lower.make_ascii_lowercase();
        // ASCII lowercasing keeps UTF-8 valid, so this never fails.
        let lower = std::str::from_utf8(lower).ok()?;
        self.exact_hosts.get(lower)
    }
}

/// `suffix` is lowercase and starts with '.'; the label before it must be
/// non-empty, which holds because the host is strictly longer.
fn wildcard_matches(suffix: &str, host: &str) -> bool {
    host.len() > suffix.len()
        && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

struct Request<'a> {
    method: &'a Method,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
}

impl Bucket {
    fn sort(&mut self) {
        for list in self.exact_paths.values_mut() {
            list.sort_by_key(|c| (Reverse(c.constraints()), c.index));
        }
        self.others
            .sort_by_key(|c| (Reverse(c.path.rank()), Reverse(c.constraints()), c.index));
    }

    fn find(&self, request: &Request<'_>) -> Option<usize> {
        // An exact path outranks every other path kind within a bucket.
        if !self.exact_paths.is_empty()
            && let Some(list) = self.exact_paths.get(request.path)
            && let Some(found) = list.iter().find(|c| c.matches_besides_path(request))
        {
            return Some(found.index);
        }
        self.others
            .iter()
            .find(|c| c.path.matches(request.path) && c.matches_besides_path(request))
            .map(|c| c.index)
    }
}

impl Candidate {
    fn constraints(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    fn matches_besides_path(&self, request: &Request<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(request.method))
            && self.headers.iter().all(|(name, rule)| {
                every_nonempty(request.headers.get_all(name).iter(), |value| {
                    rule.matches_bytes(value.as_bytes())
                })
            })
            && self.query.iter().all(|(name, rule)| {
                request.query.is_some_and(|query| {
                    every_nonempty(query::values(query, name), |raw| rule.matches_encoded(raw))
                })
            })
    }
}

/// At least one item, and every item satisfies `f`: a repeated header or parameter matches
/// only if no occurrence disagrees.
fn every_nonempty<T>(items: impl IntoIterator<Item = T>, mut f: impl FnMut(T) -> bool) -> bool {
    let mut any = false;
    for item in items {
        if !f(item) {
            return false;
        }
        any = true;
    }
    any
}

impl PathRule {
    /// Sort key among non-exact paths: regex > longer prefix > shorter > any.
    fn rank(&self) -> (u8, usize) {
        match self {
            PathRule::Exact | PathRule::ExactIgnoreCase(_) => (3, 0),
            PathRule::Regex(_) => (2, 0),
            PathRule::Prefix(prefix) | PathRule::PrefixIgnoreCase(prefix) => (1, prefix.len()),
            PathRule::Any => (0, 0),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathRule::Any | PathRule::Exact => true,
            PathRule::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathRule::ExactIgnoreCase(want) => path.eq_ignore_ascii_case(want),
            PathRule::PrefixIgnoreCase(prefix) => path
                .as_bytes()
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes())),
            PathRule::Regex(re) => re.is_match(path),
        }
    }
}

impl ValueRule {
    fn matches_bytes(&self, value: &[u8]) -> bool {
        match self {
            ValueRule::Present => true,
            ValueRule::Exact(want) => value == want.as_bytes(),
            ValueRule::Regex(re) => re.is_match(value),
        }
    }

    /// Matches a raw query value, percent-decoding it first.
    fn matches_encoded(&self, raw: &str) -> bool {
        match self {
            ValueRule::Present => true,
            ValueRule::Exact(want) => query::decode(raw).eq(want.bytes()),
            ValueRule::Regex(re) => query::with_decoded(raw, |value| re.is_match(value)),
        }
    }
}

const WILDCARD_ONLY_LEADING: &str = "only a leading \"*.\" wildcard is supported";

fn parse_host(route: usize, pattern: Option<&str>) -> Result<HostRule, RouterError> {
    let Some(pattern) = pattern else {
        return Ok(HostRule::Any);
    };
    let invalid = |reason| RouterError::InvalidHost {
        route,
        pattern: pattern.to_owned(),
        reason,
    };
    let lower = pattern.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() {
        return Err(invalid("host is empty"));
    }
    if let Some(suffix) = name.strip_prefix("*.") {
        if suffix.is_empty() {
            return Err(invalid("wildcard needs a domain after \"*.\""));
        }
        if suffix.contains('*') {
            return Err(invalid(WILDCARD_ONLY_LEADING));
        }
        // Keep the dot so that "*.example.com" cannot match "badexample.com".
        return Ok(HostRule::Wildcard(format!(".{suffix}")));
    }
    if name.contains('*') {
        return Err(invalid(WILDCARD_ONLY_LEADING));
    }
    if name.len() > MAX_EXACT_HOST {
        return Err(invalid("host is longer than 253 bytes"));
    }
    Ok(HostRule::Exact(name.to_owned()))
}

/// Returns the exact path (stored as a map key, not in the rule) or the rule.
fn compile_path(
    route: usize,
    path: PathMatch,
    ignore_case: bool,
) -> Result<(Option<String>, PathRule), RouterError> {
    let must_be_absolute = |path: &String| {
        if path.starts_with('/') {
            Ok(())
        } else {
            Err(RouterError::InvalidPath {
                route,
                path: path.clone(),
                reason: "must start with '/'",
            })
        }
    };
    Ok(match path {
        PathMatch::Any => (None, PathRule::Any),
        PathMatch::Exact(path) => {
            must_be_absolute(&path)?;
            if ignore_case {
                (None, PathRule::ExactIgnoreCase(path.to_ascii_lowercase()))
            } else {
                (Some(path), PathRule::Exact)
            }
        }
        PathMatch::Prefix(prefix) => {
            must_be_absolute(&prefix)?;
            if ignore_case {
                (
                    None,
                    PathRule::PrefixIgnoreCase(prefix.to_ascii_lowercase()),
                )
            } else {
                (None, PathRule::Prefix(prefix))
            }
        }
        PathMatch::Regex(pattern) => {
            let compile = |p: &str| {
                regex::RegexBuilder::new(p)
                    .case_insensitive(ignore_case)
                    .build()
            };
            let re = compile_anchored(route, RegexSite::Path, pattern, compile)?;
            (None, PathRule::Regex(re))
        }
    })
}

fn compile_value(
    route: usize,
    site: RegexSite,
    rule: ValueMatch,
) -> Result<ValueRule, RouterError> {
    Ok(match rule {
        ValueMatch::Present => ValueRule::Present,
        ValueMatch::Exact(value) => ValueRule::Exact(value),
        ValueMatch::Regex(pattern) => {
            let re = compile_anchored(route, site, pattern, BytesRegex::new)?;
            ValueRule::Regex(re)
        }
    })
}

/// Compiles `pattern` so that it must match the whole input. The pattern is
/// first compiled on its own: otherwise "a)|(b" would compile once wrapped
/// and escape the anchors.
fn compile_anchored<R>(
    route: usize,
    site: RegexSite,
    pattern: String,
    compile: impl Fn(&str) -> Result<R, regex::Error>,
) -> Result<R, RouterError> {
    compile(&pattern)
        .and_then(|_| compile(&format!("^(?:{pattern})$")))
        .map_err(|source| RouterError::InvalidRegex {
            route,
            site,
            pattern,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Router>();
    }

    #[test]
    fn group_escape_is_rejected() {
        let spec = RouteSpec {
            path: PathMatch::Regex("/a)|(/b".into()),
            ..RouteSpec::default()
        };
        let err = Router::new(vec![spec]).unwrap_err();
        assert_eq!(err.route(), 0);
        assert!(matches!(
            err,
            RouterError::InvalidRegex {
                site: RegexSite::Path,
                ..
            }
        ));
    }

    #[test]
    fn wildcard_suffix_keeps_the_dot() {
        assert!(wildcard_matches(".example.com", "a.EXAMPLE.com"));
        assert!(!wildcard_matches(".example.com", "badexample.com"));
        assert!(!wildcard_matches(".example.com", ".example.com"));
        assert!(!wildcard_matches(".example.com", "example.com"));
        // Multi-byte characters must not cause a char-boundary panic.
        assert!(!wildcard_matches(".example.com", "ééééééééééééé"));
    }
}
