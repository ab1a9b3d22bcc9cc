//! The `router` checks, shared by the fuzz target (fuzz/fuzz_targets/router.rs) and the corpus
//! replay test (host/router/tests/fuzz_corpus.rs).
//!
//! An input is `host 0xFF path 0xFF query 0xFF header 0xFF header ...`: an empty host is no
//! host, a missing query part is no query, and the header parts are values of `x-env`, `x-user`
//! and `accept` in turn (a value that is not a valid header value is skipped). Parts that are
//! not UTF-8 are converted lossily.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use weir_router::{PathMatch, PathOptions, RouteSpec, Router, ValueMatch, normalize_path};

/// How many routes [`routes`] returns.
const ROUTE_COUNT: usize = 10;

/// Header names the header parts of an input are assigned to, in turn.
const HEADERS: [&str; 3] = ["x-env", "x-user", "accept"];

/// The fixed route table: exact, prefix and regex paths, exact and wildcard hosts, header and
/// query rules, case-insensitive paths.
fn routes() -> Vec<RouteSpec> {
    let header =
        |name: &str, rule: ValueMatch| (HeaderName::from_bytes(name.as_bytes()).unwrap(), rule);
    let owned = |s: &str| s.to_owned();
    vec![
        RouteSpec {
            host: Some(owned("api.example.com")),
            path: PathMatch::Prefix(owned("/api/v1/")),
            methods: vec![Method::GET, Method::POST],
            ..RouteSpec::default()
        },
        RouteSpec {
            host: Some(owned("api.example.com")),
            path: PathMatch::Prefix(owned("/api/v1/")),
            headers: vec![header("x-env", ValueMatch::Exact(owned("canary")))],
            ..RouteSpec::default()
        },
        RouteSpec {
            host: Some(owned("*.example.com")),
            path: PathMatch::Exact(owned("/health")),
            ..RouteSpec::default()
        },
        RouteSpec {
            host: Some(owned("*.internal.example.com")),
            path: PathMatch::Regex(owned("/admin/[a-z]+/(edit|view)")),
            headers: vec![header(
                "x-user",
                ValueMatch::Regex(owned("[a-z0-9_-]{1,16}")),
            )],
            ..RouteSpec::default()
        },
        RouteSpec {
            path: PathMatch::Prefix(owned("/admin")),
            path_ignore_case: true,
            ..RouteSpec::default()
        },
        RouteSpec {
            path: PathMatch::Regex(owned(r"/static/.+\.(png|css|js)")),
            path_ignore_case: true,
            query: vec![
                (owned("v"), ValueMatch::Regex(owned("[0-9]+"))),
                (owned("debug"), ValueMatch::Present),
            ],
            ..RouteSpec::default()
        },
        RouteSpec {
            host: Some(owned("Example.COM.")),
            path: PathMatch::Exact(owned("/")),
            query: vec![(owned("lang"), ValueMatch::Exact(owned("fr")))],
            ..RouteSpec::default()
        },
        RouteSpec {
            host: Some(owned("example.com")),
            path: PathMatch::Exact(owned("/caf%C3%A9")),
            path_ignore_case: true,
            ..RouteSpec::default()
        },
        RouteSpec {
            host: Some(owned("localhost")),
            path: PathMatch::Prefix(owned("/")),
            headers: vec![header("accept", ValueMatch::Present)],
            ..RouteSpec::default()
        },
        RouteSpec::default(),
    ]
}

/// Compiles [`routes`].
pub fn router() -> Router {
    let routes = routes();
    assert_eq!(routes.len(), ROUTE_COUNT);
    Router::new(routes).expect("the fuzz route table compiles")
}

/// Routes the request encoded in `data` (see the module docs), raw and normalized; panics if the
/// result breaks a documented property.
pub fn check(router: &Router, data: &[u8]) {
    let mut parts = data.split(|&b| b == 0xFF);
    let host = parts
        .next()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let host = (!host.is_empty()).then_some(host.as_ref());
    let path = parts
        .next()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let query = parts.next().map(String::from_utf8_lossy);
    let query = query.as_deref();
    let mut headers = HeaderMap::new();
    for (part, name) in parts.zip(HEADERS.iter().cycle()) {
        if let Ok(value) = HeaderValue::from_bytes(part) {
            headers.append(*name, value);
        }
    }

    let normalized = normalize_path(&path, PathOptions::default()).ok();
    let paths = [Some(Cow::Borrowed(path.as_ref())), normalized];
    for path in paths.iter().flatten() {
        let found = router.find(&Method::GET, host, path, query, &headers);
        let context = || format!("host {host:?} path {path:?} query {query:?} headers {headers:?}");
        assert!(
            found.is_none_or(|i| i < ROUTE_COUNT),
            "index {found:?} out of range: {}",
            context()
        );
        let Some(host) = host else { continue };
        // Hosts compare ASCII case-insensitively, and one trailing dot is ignored.
        let mut variants = vec![host.to_ascii_uppercase(), host.to_ascii_lowercase()];
        if !host.ends_with('.') {
            variants.push(format!("{host}."));
        }
        for variant in variants {
            let other = router.find(&Method::GET, Some(&variant), path, query, &headers);
            assert_eq!(
                other,
                found,
                "host {variant:?} routes differently: {}",
                context()
            );
        }
    }
}
