//! Black-box tests of `Router` through the public API.

use std::cmp::Reverse;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use weir_router::{PathMatch, RegexSite, RouteSpec, Router, RouterError, ValueMatch};

// ---------------------------------------------------------------------------
// Builders

trait Build {
    fn host(self, host: &str) -> Self;
    fn path(self, path: PathMatch) -> Self;
    fn methods(self, methods: &[Method]) -> Self;
    fn header(self, name: &str, rule: ValueMatch) -> Self;
    fn query(self, name: &str, rule: ValueMatch) -> Self;
    fn ignore_case(self) -> Self;
}

impl Build for RouteSpec {
    fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }
    fn path(mut self, path: PathMatch) -> Self {
        self.path = path;
        self
    }
    fn methods(mut self, methods: &[Method]) -> Self {
        self.methods = methods.to_vec();
        self
    }
    fn header(mut self, name: &str, rule: ValueMatch) -> Self {
        self.headers
            .push((HeaderName::from_bytes(name.as_bytes()).unwrap(), rule));
        self
    }
    fn query(mut self, name: &str, rule: ValueMatch) -> Self {
        self.query.push((name.to_owned(), rule));
        self
    }
    fn ignore_case(mut self) -> Self {
        self.path_ignore_case = true;
        self
    }
}

fn spec() -> RouteSpec {
    RouteSpec::default()
}
fn exact(p: &str) -> PathMatch {
    PathMatch::Exact(p.to_owned())
}
fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.to_owned())
}
fn regex(p: &str) -> PathMatch {
    PathMatch::Regex(p.to_owned())
}
fn is(v: &str) -> ValueMatch {
    ValueMatch::Exact(v.to_owned())
}
fn re(v: &str) -> ValueMatch {
    ValueMatch::Regex(v.to_owned())
}
use ValueMatch::Present;

#[derive(Debug, Clone)]
struct Req {
    method: Method,
    host: Option<String>,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

fn get(path: &str) -> Req {
    Req {
        method: Method::GET,
        host: None,
        path: path.to_owned(),
        query: None,
        headers: HeaderMap::new(),
    }
}

impl Req {
    fn host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }
    fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }
    fn query(mut self, query: &str) -> Self {
        self.query = Some(query.to_owned());
        self
    }
    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        self
    }
    fn find(&self, router: &Router) -> Option<usize> {
        router.find(
            &self.method,
            self.host.as_deref(),
            &self.path,
            self.query.as_deref(),
            &self.headers,
        )
    }
}

// ---------------------------------------------------------------------------
// Table

#[test]
fn table() {
    let hosts = || {
        vec![
            spec(),
            spec().host("*.example.com"),
            spec().host("api.example.com"),
            spec().host("*.b.example.com"),
        ]
    };
    let paths = || {
        vec![
            spec(),
            spec().path(prefix("/a")),
            spec().path(prefix("/a/b")),
            spec().path(regex("/a/.*")),
            spec().path(exact("/a/b/c")),
        ]
    };
    let long_host = format!("{}.EXAMPLE.com", "A".repeat(300));
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<RouteSpec>, Req, Option<usize>)> = vec![
        // Hosts.
        ("exact host wins", hosts(), get("/").host("api.example.com"), Some(2)),
        ("wildcard host", hosts(), get("/").host("x.example.com"), Some(1)),
        ("other host falls to any", hosts(), get("/").host("other.com"), Some(0)),
        ("no host falls to any", hosts(), get("/"), Some(0)),
        ("nested wildcard: longer suffix wins", hosts(), get("/").host("a.b.example.com"), Some(3)),
        ("nested wildcard: deep host, shorter suffix", hosts(), get("/").host("a.c.example.com"), Some(1)),
        ("wildcard needs a label", vec![spec().host("*.example.com")], get("/").host("example.com"), None),
        ("wildcard label boundary", vec![spec().host("*.example.com")], get("/").host("badexample.com"), None),
        ("wildcard suffix itself is the label", hosts(), get("/").host("b.example.com"), Some(1)),
        ("uppercase host, exact", hosts(), get("/").host("API.Example.COM"), Some(2)),
        ("uppercase host, wildcard", hosts(), get("/").host("X.B.EXAMPLE.COM"), Some(3)),
        ("uppercase pattern", vec![spec().host("API.Example.com")], get("/").host("api.example.com"), Some(0)),
        ("trailing-dot host, exact", hosts(), get("/").host("api.example.com."), Some(2)),
        ("trailing-dot host, wildcard", hosts(), get("/").host("X.example.com."), Some(1)),
        ("trailing-dot pattern", vec![spec().host("api.example.com.")], get("/").host("api.example.com"), Some(0)),
        ("long uppercase host, wildcard", hosts(), get("/").host(&long_host), Some(1)),
        ("exact host without a matching path falls through to wildcard",
            vec![spec().host("api.example.com").path(exact("/only")), spec().host("*.example.com")],
            get("/other").host("api.example.com"), Some(1)),
        ("host beats path",
            vec![spec().path(exact("/a")), spec().host("*.example.com").path(prefix("/"))],
            get("/a").host("x.example.com"), Some(1)),
        ("longer wildcard beats exact path",
            vec![spec().host("*.example.com").path(exact("/a")), spec().host("*.b.example.com")],
            get("/a").host("x.b.example.com"), Some(1)),
        // Paths.
        ("exact path wins", paths(), get("/a/b/c"), Some(4)),
        ("regex beats prefixes", paths(), get("/a/b/d"), Some(3)),
        ("longer prefix beats shorter", paths()[..3].to_vec(), get("/a/b/d"), Some(2)),
        ("shorter prefix", paths()[..3].to_vec(), get("/a/x"), Some(1)),
        ("any path", paths(), get("/z"), Some(0)),
        ("paths are case-sensitive", vec![spec().path(prefix("/admin"))], get("/ADMIN"), None),
        ("ignore-case prefix", vec![spec().path(prefix("/Admin")).ignore_case()], get("/aDMIN/x"), Some(0)),
        ("ignore-case exact", vec![spec().path(exact("/Admin")).ignore_case()], get("/ADMIN"), Some(0)),
        ("ignore-case exact is still exact", vec![spec().path(exact("/admin")).ignore_case()], get("/admin/"), None),
        ("ignore-case regex", vec![spec().path(regex("/adm[a-z]n")).ignore_case()], get("/ADMIN"), Some(0)),
        ("ignore-case exact outranks a prefix",
            vec![spec().path(prefix("/")), spec().path(exact("/admin")).ignore_case()], get("/ADMIN"), Some(1)),
        ("ignore-case prefix, multibyte path", vec![spec().path(prefix("/ab")).ignore_case()], get("/é"), None),
        ("prefix is a plain string prefix", vec![spec().path(prefix("/v1"))], get("/v1x"), Some(0)),
        ("regex is anchored at the end", vec![spec().path(regex("/a"))], get("/a/b"), None),
        ("regex is anchored at the start", vec![spec().path(regex("a"))], get("/a"), None),
        ("regex alternation stays anchored", vec![spec().path(regex("/a|/b"))], get("/ab"), None),
        ("regex alternation matches", vec![spec().path(regex("/a|/b"))], get("/b"), Some(0)),
        ("exact is case-sensitive", vec![spec().path(exact("/A"))], get("/a"), None),
        // Ordering.
        ("ties by order", vec![spec().path(prefix("/a")), spec().path(prefix("/a"))], get("/a"), Some(0)),
        ("identical exact paths tie by order", vec![spec().path(exact("/a")), spec().path(exact("/a"))], get("/a"), Some(0)),
        ("constraints beat order",
            vec![spec(), spec().methods(&[Method::GET])], get("/"), Some(1)),
        ("more constraints beat fewer",
            vec![spec().methods(&[Method::GET]), spec().methods(&[Method::GET]).header("x-a", Present)],
            get("/").header("x-a", "1"), Some(1)),
        ("several methods count once",
            vec![spec().methods(&[Method::GET, Method::POST]), spec().query("q", Present)],
            get("/").query("q"), Some(0)),
        ("path beats constraints",
            vec![spec().path(prefix("/a")).methods(&[Method::GET]).header("x-a", Present), spec().path(exact("/a/b"))],
            get("/a/b").header("x-a", "1"), Some(1)),
        ("constraints order exact paths",
            vec![spec().path(exact("/a")), spec().path(exact("/a")).query("q", Present)],
            get("/a").query("q=1"), Some(1)),
        ("unmatched constrained exact falls back to unconstrained",
            vec![spec().path(exact("/a")), spec().path(exact("/a")).query("q", Present)],
            get("/a"), Some(0)),
        ("unmatched exact path falls back to prefix",
            vec![spec().path(prefix("/")), spec().path(exact("/a")).methods(&[Method::POST])],
            get("/a"), Some(0)),
        // Methods.
        ("method not allowed", vec![spec().methods(&[Method::POST, Method::PUT])], get("/"), None),
        ("method allowed", vec![spec().methods(&[Method::POST, Method::PUT])], get("/").method(Method::PUT), Some(0)),
        ("extension method",
            vec![spec().methods(&[Method::from_bytes(b"PURGE").unwrap()])],
            get("/").method(Method::from_bytes(b"PURGE").unwrap()), Some(0)),
        // Headers.
        ("header exact", vec![spec().header("x-env", is("prod"))], get("/").header("X-Env", "prod"), Some(0)),
        ("header exact is case-sensitive", vec![spec().header("x-env", is("prod"))], get("/").header("x-env", "Prod"), None),
        ("header missing", vec![spec().header("x-env", Present)], get("/"), None),
        ("header present, empty value", vec![spec().header("x-env", Present)], get("/").header("x-env", ""), Some(0)),
        ("header regex", vec![spec().header("x-v", re("[0-9]+"))], get("/").header("x-v", "12"), Some(0)),
        ("header regex is anchored", vec![spec().header("x-v", re("[0-9]+"))], get("/").header("x-v", "12a"), None),
        ("header: a second line cannot satisfy a rule the first fails",
            vec![spec().header("x-env", is("prod"))],
            get("/").header("x-env", "dev").header("x-env", "prod"), None),
        ("header: every line matches",
            vec![spec().header("x-env", is("prod"))],
            get("/").header("x-env", "prod").header("x-env", "prod"), Some(0)),
        ("header values are not comma-split", vec![spec().header("x-env", is("prod"))], get("/").header("x-env", "dev, prod"), None),
        ("all header rules must match",
            vec![spec().header("x-a", Present).header("x-b", is("1"))],
            get("/").header("x-a", "1").header("x-b", "2"), None),
        // Query.
        ("query exact", vec![spec().query("q", is("abc"))], get("/").query("q=abc"), Some(0)),
        ("query plus is space", vec![spec().query("q", is("a b"))], get("/").query("q=a+b"), Some(0)),
        ("query percent-decoded", vec![spec().query("q", is("a b"))], get("/").query("x=1&q=a%20b"), Some(0)),
        ("query encoded plus", vec![spec().query("q", is("a+b"))], get("/").query("q=a%2Bb"), Some(0)),
        ("query encoded plus is not space", vec![spec().query("q", is("a b"))], get("/").query("q=a%2Bb"), None),
        ("query utf-8", vec![spec().query("q", is("é"))], get("/").query("q=%C3%A9"), Some(0)),
        ("query bad escape stays literal", vec![spec().query("q", is("%zz"))], get("/").query("q=%zz"), Some(0)),
        ("query regex on decoded value", vec![spec().query("q", re("a b+"))], get("/").query("q=a+bb"), Some(0)),
        ("query regex is anchored", vec![spec().query("q", re("a"))], get("/").query("q=ab"), None),
        ("query present without value", vec![spec().query("debug", Present)], get("/").query("a=1&debug"), Some(0)),
        ("query empty value", vec![spec().query("q", is(""))], get("/").query("q="), Some(0)),
        ("query absent", vec![spec().query("q", Present)], get("/").query("qq=1"), None),
        ("no query string", vec![spec().query("q", Present)], get("/"), None),
        ("query names are case-sensitive", vec![spec().query("q", Present)], get("/").query("Q=1"), None),
        ("query names are decoded", vec![spec().query("a b", Present)], get("/").query("a+b=1"), Some(0)),
        ("query encoded name", vec![spec().query("role", is("x"))], get("/").query("%72ole=x"), Some(0)),
        ("query: a repeated value cannot satisfy a rule", vec![spec().query("q", is("2"))], get("/").query("q=1&q=2"), None),
        ("query: a repeated value cannot satisfy a rule, either order", vec![spec().query("q", is("2"))], get("/").query("q=2&%71=1"), None),
        ("query: every occurrence matches", vec![spec().query("q", is("2"))], get("/").query("q=2&q=2"), Some(0)),
        ("all query rules must match",
            vec![spec().query("q", Present).query("r", is("1"))],
            get("/").query("q&r=2"), None),
        // No match.
        ("empty router", vec![], get("/"), None),
        ("nothing matches",
            vec![spec().host("a.com"), spec().path(exact("/x")), spec().methods(&[Method::POST])],
            get("/y").host("b.com"), None),
    ];

    let mut failures = Vec::new();
    for (name, routes, req, want) in cases {
        let router = Router::new(routes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = req.find(&router);
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Errors

fn build_err(routes: Vec<RouteSpec>) -> RouterError {
    Router::new(routes).expect_err("routes should be rejected")
}

#[test]
fn bad_path_regex_names_route() {
    let routes = vec![spec(), spec(), spec(), spec().path(regex("("))];
    let err = build_err(routes);
    assert_eq!(err.route(), 3);
    let message = err.to_string();
    assert!(
        message.starts_with(r#"route 3: invalid path regex "(": "#),
        "{message}"
    );
}

#[test]
fn bad_value_regexes_name_route_and_site() {
    let err = build_err(vec![spec(), spec().header("x-a", re("[z-a]"))]);
    assert_eq!(err.route(), 1);
    assert!(
        matches!(&err, RouterError::InvalidRegex { site: RegexSite::Header(h), .. } if h == "x-a")
    );
    assert!(
        err.to_string()
            .starts_with(r#"route 1: invalid header "x-a" regex "[z-a]": "#),
        "{err}"
    );

    let err = build_err(vec![spec().query("q", re("a)|(b"))]);
    assert_eq!(err.route(), 0);
    assert!(
        err.to_string()
            .starts_with(r#"route 0: invalid query parameter "q" regex "a)|(b": "#),
        "{err}"
    );
}

#[test]
fn bad_host_pattern_names_route() {
    let err = build_err(vec![spec(), spec().host("a.*.com")]);
    assert_eq!(err.route(), 1);
    assert_eq!(
        err.to_string(),
        r#"route 1: invalid host pattern "a.*.com": only a leading "*." wildcard is supported"#
    );
    for pattern in ["*", "*.", "", ".", "*.a.*.com", "**.a.com", "a*.com"] {
        let err = build_err(vec![spec().host(pattern)]);
        assert!(
            matches!(&err, RouterError::InvalidHost { route: 0, .. }),
            "{pattern:?}: {err}"
        );
    }
    let err = build_err(vec![spec().host(&"a".repeat(254))]);
    assert!(matches!(err, RouterError::InvalidHost { .. }));
}

#[test]
fn other_errors_name_route() {
    let err = build_err(vec![spec(), spec(), spec().path(exact("a"))]);
    assert_eq!(
        err.to_string(),
        r#"route 2: invalid path "a": must start with '/'"#
    );
    let err = build_err(vec![spec().path(prefix(""))]);
    assert_eq!(err.route(), 0);
    let err = build_err(vec![spec(), spec().query("", Present)]);
    assert_eq!(
        err.to_string(),
        "route 1: invalid query rule: parameter name is empty"
    );
}

// ---------------------------------------------------------------------------
// Reference implementation: a linear scan computing every route's key.

type Key = ((u8, usize), (u8, usize), usize);

fn reference(routes: &[RouteSpec], req: &Req) -> Option<usize> {
    routes
        .iter()
        .enumerate()
        .filter_map(|(i, route)| reference_key(route, req).map(|key| (key, Reverse(i))))
        .max()
        .map(|(_, Reverse(i))| i)
}

fn reference_key(route: &RouteSpec, req: &Req) -> Option<Key> {
    let host_rank = match &route.host {
        None => (0, 0),
        Some(pattern) => {
            let pattern = pattern.to_ascii_lowercase();
            let pattern = pattern.strip_suffix('.').unwrap_or(&pattern);
            let host = req.host.as_deref()?.to_ascii_lowercase();
            let host = host.strip_suffix('.').unwrap_or(&host);
            match pattern.strip_prefix("*.") {
                Some(suffix) => {
                    let label = host.strip_suffix(suffix)?.strip_suffix('.')?;
                    if label.is_empty() {
                        return None;
                    }
                    (1, suffix.len())
                }
                None if host == pattern => (2, 0),
                None => return None,
            }
        }
    };
    let path_rank = match &route.path {
        PathMatch::Any => (0, 0),
        PathMatch::Exact(p) if *p == req.path => (3, 0),
        PathMatch::Prefix(p) if req.path.starts_with(p.as_str()) => (1, p.len()),
        PathMatch::Regex(r) if full_match(r, req.path.as_bytes()) => (2, 0),
        _ => return None,
    };
    if !route.methods.is_empty() && !route.methods.contains(&req.method) {
        return None;
    }
    for (name, rule) in &route.headers {
        let values: Vec<_> = req.headers.get_all(name).iter().collect();
        if values.is_empty() || !values.iter().all(|v| value_ok(rule, v.as_bytes())) {
            return None;
        }
    }
    for (name, rule) in &route.query {
        let query = req.query.as_deref()?;
        let values: Vec<&str> = query
            .split('&')
            .filter_map(|pair| {
                let (k, v) = match pair.find('=') {
                    Some(at) => (&pair[..at], &pair[at + 1..]),
                    None => (pair, ""),
                };
                (form_decode(k) == name.as_bytes()).then_some(v)
            })
            .collect();
        if values.is_empty() || !values.iter().all(|v| value_ok(rule, &form_decode(v))) {
            return None;
        }
    }
    let constraints =
        usize::from(!route.methods.is_empty()) + route.headers.len() + route.query.len();
    Some((host_rank, path_rank, constraints))
}

fn full_match(pattern: &str, input: &[u8]) -> bool {
    regex::bytes::Regex::new(&format!("^(?:{pattern})$"))
        .unwrap()
        .is_match(input)
}

fn value_ok(rule: &ValueMatch, value: &[u8]) -> bool {
    match rule {
        ValueMatch::Present => true,
        ValueMatch::Exact(want) => value == want.as_bytes(),
        ValueMatch::Regex(r) => full_match(r, value),
    }
}

fn form_decode(raw: &str) -> Vec<u8> {
    let b = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
        {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Property tests

mod prop {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;

    fn value_rule() -> impl Strategy<Value = ValueMatch> {
        prop_oneof![
            Just(Present),
            select(vec!["", "1", "a b", "a+b", "é", "abc"]).prop_map(is),
            select(vec!["[0-9]+", "a.*", "a b|1", "[0-9]*"]).prop_map(re),
        ]
    }

    fn route() -> impl Strategy<Value = RouteSpec> {
        let host = proptest::option::of(select(vec![
            "a.com",
            "A.Com",
            "b.a.com",
            "*.a.com",
            "*.b.a.com",
            "*.com",
            "c.org",
            "a.com.",
            "*.A.COM",
        ]));
        let path = prop_oneof![
            Just(PathMatch::Any),
            select(vec!["/", "/a", "/a/b", "/ab"]).prop_map(exact),
            select(vec!["/", "/a", "/a/", "/ab"]).prop_map(prefix),
            select(vec!["/a/.*", "/[ab]+", ".*b", "/a|/b"]).prop_map(regex),
        ];
        let methods = proptest::sample::subsequence(vec![Method::GET, Method::POST], 0..=2);
        let headers = vec((select(vec!["x-a", "x-b"]), value_rule()), 0..=2);
        let query = vec((select(vec!["q", "r"]), value_rule()), 0..=2);
        (host, path, methods, headers, query).prop_map(|(host, path, methods, headers, query)| {
            let mut spec = spec().path(path).methods(&methods);
            if let Some(host) = host {
                spec = spec.host(host);
            }
            for (name, rule) in headers {
                spec = spec.header(name, rule);
            }
            for (name, rule) in query {
                spec = spec.query(name, rule);
            }
            spec
        })
    }

    fn request() -> impl Strategy<Value = Req> {
        let method = select(vec![Method::GET, Method::POST, Method::PUT]);
        let host = proptest::option::of(prop_oneof![
            select(vec![
                "a.com",
                "A.COM",
                "x.a.com",
                "x.b.a.com",
                "b.a.com",
                "b.a.com.",
                "com",
                "c.org",
                "",
                ".",
                "x.A.com.",
                "a.com..",
            ])
            .prop_map(str::to_owned),
            "[aAbB.x]{0,8}(\\.com)?",
        ]);
        let path = prop_oneof![
            select(vec!["/", "/a", "/a/", "/a/b", "/ab", "/b", "/ba", "/a/x/b"])
                .prop_map(str::to_owned),
            "/[ab/]{0,5}",
        ];
        let query = proptest::option::of(prop_oneof![
            select(vec![
                "q=a+b",
                "q=a%20b",
                "q",
                "q=",
                "r=1&q=abc",
                "q=%zz",
                "q=%C3%A9",
                "q=12&q=x",
                "r=a",
                "q=a%2",
                "q=a%2Bb",
                "q=1&r=",
            ])
            .prop_map(str::to_owned),
            "[qr=&ab1+% 0-9]{0,10}",
        ]);
        let headers = vec(
            (
                select(vec!["x-a", "x-b"]),
                select(vec!["1", "a b", "12", "x", "", "abc"]),
            ),
            0..=3,
        );
        (method, host, path, query, headers).prop_map(|(method, host, path, query, headers)| {
            let mut req = get(&path).method(method);
            req.host = host;
            req.query = query;
            for (name, value) in headers {
                req = req.header(name, value);
            }
            req
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// The key property: the compiled router agrees with a linear scan.
        #[test]
        fn find_matches_reference(routes in vec(route(), 0..12), reqs in vec(request(), 1..8)) {
            let router = Router::new(routes.clone()).unwrap();
            for req in &reqs {
                prop_assert_eq!(req.find(&router), reference(&routes, req), "request {:?}", req);
            }
        }
    }

    fn rich_router() -> Router {
        Router::new(vec![
            spec(),
            spec().host("a.com").path(exact("/a")),
            spec().host("*.a.com").path(prefix("/a")),
            spec().path(regex("/a/.*")).header("x-a", re("[0-9]+")),
            spec()
                .query("q", re("é.*"))
                .query("r", is("a b"))
                .methods(&[Method::GET]),
            spec()
                .host("*.com")
                .header("x-b", Present)
                .query("q", Present),
        ])
        .unwrap()
    }

    proptest! {
        #[test]
        fn find_never_panics(
            host in proptest::option::of(any::<String>()),
            path in any::<String>(),
            query in proptest::option::of(any::<String>()),
            header_values in vec(vec(any::<u8>(), 0..40), 0..4),
        ) {
            let router = rich_router();
            let mut headers = HeaderMap::new();
            for (i, bytes) in header_values.iter().enumerate() {
                if let Ok(value) = HeaderValue::from_bytes(bytes) {
                    let name = if i % 2 == 0 { "x-a" } else { "x-b" };
                    headers.append(name, value);
                }
            }
            let _ = router.find(&Method::GET, host.as_deref(), &path, query.as_deref(), &headers);
        }

        #[test]
        fn find_never_panics_on_long_inputs(
            host in "[a-zA-Zé.]{200,400}",
            query in "(q=[%a-fé+0-9]{0,300}&?){0,3}",
        ) {
            let _ = rich_router().find(&Method::GET, Some(&host), "/a", Some(&query), &HeaderMap::new());
        }
    }
}
