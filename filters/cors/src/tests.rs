use anyhow::{Result, bail};
use serde_json::json;
use weir_filter::testing::{Harness, TestRequest, TestResponse};
use weir_filter::{Action, LocalResponse};

use super::*;

fn cors(config: serde_json::Value) -> Result<Harness<Cors>> {
    Ok(Harness::new(config)?)
}

fn config_error(config: serde_json::Value) -> String {
    match Harness::<Cors>::new(config) {
        Ok(_) => "<accepted>".to_owned(),
        Err(e) => e.message,
    }
}

fn app() -> Result<Harness<Cors>> {
    cors(json!({
        "allow_origins": ["https://app.example.com", "*.example.org", "https://*.example.net:8443"],
        "allow_methods": ["GET", "post", "DELETE"],
        "allow_headers": ["Authorization", "x-request-id"],
        "expose_headers": ["x-request-id", "RateLimit-Remaining"],
        "allow_credentials": true,
        "max_age_s": 600
    }))
}

fn preflight(origin: &str, method: &str, headers: Option<&str>) -> TestRequest {
    let mut r = TestRequest::new("OPTIONS", "/api")
        .header("origin", origin)
        .header("access-control-request-method", method);
    if let Some(h) = headers {
        r = r.header("access-control-request-headers", h);
    }
    r
}

/// The filter's answer to a preflight (it must answer one).
fn answer(h: &mut Harness<Cors>, mut req: TestRequest) -> Result<LocalResponse> {
    let action = h.request_headers(&mut req);
    h.done(&req);
    match action {
        Action::Respond(r) => Ok(r),
        other => bail!("expected a local response, got {other:?}"),
    }
}

/// A non-preflight request through both phases; the response as the client sees it.
fn actual(h: &mut Harness<Cors>, mut req: TestRequest, res: TestResponse) -> Result<TestResponse> {
    let mut res = res;
    if h.request_headers(&mut req) != Action::Continue {
        bail!("an actual request must go on");
    }
    h.response_headers(&mut req, &mut res);
    h.done(&req);
    Ok(res)
}

fn headers(r: &LocalResponse) -> Vec<(&str, &str)> {
    r.headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn allowed_preflight_gets_204_with_every_allow_header() -> Result<()> {
    let mut h = app()?;
    let r = answer(
        &mut h,
        preflight(
            "https://app.example.com",
            "DELETE",
            Some("Authorization, Content-Type"),
        ),
    )?;
    assert_eq!(r.status, 204);
    assert_eq!(
        headers(&r),
        [
            ("access-control-allow-origin", "https://app.example.com"),
            ("access-control-allow-methods", "GET, POST, DELETE"),
            (
                "access-control-allow-headers",
                "authorization, content-type"
            ),
            ("access-control-allow-credentials", "true"),
            ("access-control-max-age", "600"),
            (
                "vary",
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
            ),
        ]
    );
    assert!(r.body.is_empty());
    assert_eq!(
        h.counter("cors_preflights_total", &[("result", "allowed")]),
        1
    );
    assert_eq!(h.live_contexts(), 0);
    Ok(())
}

#[test]
fn preflights_for_other_origins_methods_or_headers_get_403() -> Result<()> {
    let mut h = app()?;
    for (req, why) in [
        (
            preflight("https://evil.example", "GET", None),
            "origin not allowed",
        ),
        (
            preflight("https://app.example.com.evil.example", "GET", None),
            "origin not allowed",
        ),
        (
            preflight("https://app.example.com", "PUT", None),
            "method PUT not allowed",
        ),
        (
            preflight("https://app.example.com", "GET", Some("x-admin")),
            "header x-admin not allowed",
        ),
    ] {
        let r = answer(&mut h, req)?;
        assert_eq!(r.status, 403);
        assert_eq!(r.header_value("access-control-allow-origin"), None);
        assert_eq!(r.header_value("vary"), Some("Origin"));
        let body: serde_json::Value = serde_json::from_slice(&r.body)?;
        assert_eq!(body, json!({ "error": format!("cors: {why}") }));
    }
    assert_eq!(
        h.counter("cors_preflights_total", &[("result", "denied")]),
        4
    );
    Ok(())
}

#[test]
fn actual_requests_from_allowed_origins_get_cors_headers_and_vary() -> Result<()> {
    let mut h = app()?;
    let req = TestRequest::get("/api").header("origin", "https://app.example.com");
    let res = actual(
        &mut h,
        req,
        TestResponse::new(200).header("vary", "Accept-Encoding"),
    )?;
    assert_eq!(
        res.header_value("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        res.header_value("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        res.header_value("access-control-expose-headers"),
        Some("x-request-id, ratelimit-remaining")
    );
    assert_eq!(res.header_values("vary"), ["Accept-Encoding", "Origin"]);

    // A plain OPTIONS (no Access-Control-Request-Method) is an actual request.
    let req = TestRequest::new("OPTIONS", "/api").header("origin", "https://app.example.com");
    let res = actual(&mut h, req, TestResponse::new(200))?;
    assert_eq!(
        res.header_value("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(
        h.counter("cors_requests_total", &[("result", "allowed")]),
        2
    );
    Ok(())
}

#[test]
fn disallowed_origins_and_same_origin_requests_pass_without_cors_headers() -> Result<()> {
    let mut h = app()?;
    let req = TestRequest::get("/api").header("origin", "https://evil.example");
    let res = actual(&mut h, req, TestResponse::new(200).header("vary", "origin"))?;
    assert_eq!(
        res.headers(),
        [("vary".to_owned(), "origin".to_owned())],
        "Vary: Origin is not repeated"
    );
    let res = actual(&mut h, TestRequest::get("/api"), TestResponse::new(200))?;
    assert_eq!(res.headers(), [("vary".to_owned(), "Origin".to_owned())]);
    assert_eq!(h.counter("cors_requests_total", &[("result", "denied")]), 1);
    Ok(())
}

#[test]
fn wildcard_subdomains() -> Result<()> {
    let h = app()?;
    let f = h.filter();
    // `*.example.org`: any subdomain, http or https, any port; not the bare domain.
    for ok in [
        "https://a.example.org",
        "http://a.b.example.org:3000",
        "HTTPS://A.EXAMPLE.ORG",
    ] {
        assert!(f.allow_origin(ok).is_some(), "{ok}");
    }
    for no in [
        "https://example.org",
        "https://aexample.org",
        "https://a.example.org.evil.io",
        "ftp://a.example.org",
        "https://a.example.org/",
        "a.example.org",
    ] {
        assert_eq!(f.allow_origin(no), None, "{no}");
    }
    // `https://*.example.net:8443`: that scheme and port only.
    assert!(f.allow_origin("https://x.example.net:8443").is_some());
    assert_eq!(f.allow_origin("https://x.example.net"), None);
    assert_eq!(f.allow_origin("http://x.example.net:8443"), None);
    Ok(())
}

#[test]
fn star_without_credentials_sends_star_and_no_vary() -> Result<()> {
    let mut h = cors(
        json!({ "allow_origins": ["*"], "allow_methods": ["*"], "allow_headers": ["*"], "expose_headers": ["*"] }),
    )?;
    let r = answer(
        &mut h,
        preflight("https://anyone.example", "PATCH", Some("x-one,x-two")),
    )?;
    assert_eq!(r.status, 204);
    assert_eq!(r.header_value("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.header_value("access-control-allow-methods"),
        Some("PATCH"),
        "any method: the one asked for"
    );
    assert_eq!(
        r.header_value("access-control-allow-headers"),
        Some("x-one, x-two")
    );
    assert_eq!(r.header_value("access-control-allow-credentials"), None);

    let req = TestRequest::get("/").header("origin", "null");
    let res = actual(&mut h, req, TestResponse::new(200))?;
    assert_eq!(res.header_value("access-control-allow-origin"), Some("*"));
    assert_eq!(res.header_value("access-control-expose-headers"), Some("*"));
    assert_eq!(
        res.header_value("vary"),
        None,
        "the answer does not depend on the origin"
    );
    Ok(())
}

#[test]
fn star_with_credentials_echoes_the_origin_and_never_null() -> Result<()> {
    let mut h = cors(json!({ "allow_origins": ["*"], "allow_credentials": true }))?;
    let r = answer(&mut h, preflight("https://anyone.example", "POST", None))?;
    assert_eq!(
        r.header_value("access-control-allow-origin"),
        Some("https://anyone.example")
    );
    assert_eq!(
        r.header_value("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(r.header_value("access-control-allow-headers"), None);

    let req = TestRequest::get("/").header("origin", "https://anyone.example");
    let res = actual(&mut h, req, TestResponse::new(200))?;
    assert_eq!(
        res.header_value("access-control-allow-origin"),
        Some("https://anyone.example")
    );
    assert_eq!(res.header_value("vary"), Some("Origin"));

    let req = TestRequest::get("/").header("origin", "null");
    let res = actual(&mut h, req, TestResponse::new(200))?;
    assert_eq!(res.header_value("access-control-allow-origin"), None);

    // Listed explicitly, `null` is the operator's choice.
    let h = cors(json!({ "allow_origins": ["null"], "allow_credentials": true }))?;
    assert_eq!(h.filter().allow_origin("null").as_deref(), Some("null"));
    Ok(())
}

#[test]
fn upstream_cors_headers_are_replaced_for_allowed_origins() -> Result<()> {
    let mut h = cors(json!({ "allow_origins": ["https://app.example.com"] }))?;
    let req = TestRequest::get("/").header("origin", "https://app.example.com");
    let res = TestResponse::new(200).header("access-control-allow-origin", "*");
    let res = actual(&mut h, req, res)?;
    assert_eq!(
        res.header_values("access-control-allow-origin"),
        ["https://app.example.com"]
    );
    assert_eq!(res.header_value("access-control-allow-credentials"), None);
    Ok(())
}

#[test]
fn configs_are_validated_with_clear_messages() {
    assert_eq!(
        config_error(json!({})),
        "allow_origins: list at least one origin (\"https://app.example.com\", \"*.example.com\" or \"*\")"
    );
    assert_eq!(
        config_error(json!({ "allow_origins": ["app.example.com"] })),
        "allow_origins[0]: \"app.example.com\" needs a scheme (\"https://app.example.com\"), or a wildcard for every subdomain (\"*.app.example.com\")"
    );
    assert_eq!(
        config_error(json!({ "allow_origins": ["https://app.example.com/"] })),
        "allow_origins[0]: \"https://app.example.com/\" is not an origin: write scheme://host[:port] with no path or trailing slash (\"https://app.example.com\"), \"*.example.com\" or \"*\""
    );
    assert_eq!(
        config_error(json!({ "allow_origins": ["https://app.*.com"] })),
        "allow_origins[0]: \"https://app.*.com\": a wildcard may only stand for subdomains, at the start of the host (\"*.example.com\"), or alone (\"*\")"
    );
    assert_eq!(
        config_error(json!({ "allow_origins": ["*.example.com:8443"] })),
        "allow_origins[0]: \"*.example.com:8443\": a port needs a scheme (\"https://*.example.com:8443\")"
    );
    assert!(
        config_error(json!({ "allow_origins": ["*."] }))
            .starts_with("allow_origins[0]: \"*.\" is not an origin")
    );
    assert_eq!(
        config_error(json!({ "allow_origins": ["*"], "allow_methods": [] })),
        "allow_methods: list at least one method (or \"*\")"
    );
    assert_eq!(
        config_error(json!({ "allow_origins": ["*"], "allow_methods": ["GET POST"] })),
        "allow_methods[0]: \"GET POST\" is not a method"
    );
    assert_eq!(
        config_error(json!({ "allow_origins": ["*"], "allow_headers": ["x y"] })),
        "allow_headers[0]: \"x y\" is not a header name"
    );
    assert_eq!(
        config_error(
            json!({ "allow_origins": ["*"], "expose_headers": ["*"], "allow_credentials": true })
        ),
        "expose_headers[0]: \"*\" does not work with allow_credentials (browsers read it as a header named *): list the headers"
    );
    assert!(
        config_error(json!({ "allow_origins": ["*"], "max_age": 5 }))
            .starts_with("config: unknown field `max_age`")
    );
    assert_eq!(
        config_error(
            json!({ "allow_origins": ["http://localhost:3000", "https://[::1]:8443", "null"] })
        ),
        "<accepted>"
    );
}

#[test]
fn origin_parsing() {
    assert_eq!(
        split_origin("https://a.b:80"),
        Some(("https".into(), "a.b".into(), Some("80".into())))
    );
    assert_eq!(
        split_origin("http://[::1]:3000"),
        Some(("http".into(), "[::1]".into(), Some("3000".into())))
    );
    assert_eq!(
        split_origin("http://[::1]"),
        Some(("http".into(), "[::1]".into(), None))
    );
    for bad in [
        "",
        "https://",
        "https://a:",
        "https://a:x",
        "://a",
        "https://a/b",
        "https://u@a",
        "http://[::1",
    ] {
        assert_eq!(split_origin(bad), None, "{bad:?}");
    }
}

#[test]
fn hostile_inputs_never_panic() -> Result<()> {
    let mut h = app()?;
    let long = "a".repeat(50_000);
    for origin in [
        "",
        "null",
        "https://",
        "*",
        "https://[",
        "https://[]:",
        &format!("https://{long}.example.org"),
        "\u{1f980}://x",
    ] {
        let _ = answer(&mut h, preflight(origin, "GET", Some(",,, ,")));
        actual(
            &mut h,
            TestRequest::get("/").header("origin", origin),
            TestResponse::new(200),
        )?;
    }
    Ok(())
}
