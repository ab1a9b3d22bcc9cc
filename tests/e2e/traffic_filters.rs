//! End-to-end: the first-party traffic filters (`filters/rate-limit`, `filters/transform`,
//! `filters/cors`), built from source, in the real proxy with real upstreams and clients.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use http_body_util::BodyExt;

/// A config with one upstream cluster `backend`, `filters` and `routes` (YAML list items).
fn config(up: &Upstream, filters: &str, routes: &str) -> String {
    format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
clusters: [ {{ name: backend, endpoints: [ {{ address: \"{}\" }} ] }} ]\n\
filters:\n{filters}\
routes:\n{routes}",
        up.addr
    )
}

/// A filter list item: `name` runs the component of crate `package` with `config` (YAML flow).
fn filter(name: &str, package: &str, config: &str, extra: &str) -> String {
    let wasm = filter_wasm(package);
    format!(
        "  - {{ name: {name}, module: \"{}\", config: {config}{extra} }}\n",
        wasm.display()
    )
}

fn route(name: &str, prefix: &str, filters: &str) -> String {
    format!(
        "  - {{ name: {name}, match: {{ path_prefix: {prefix} }}, cluster: backend, filters: {filters} }}\n"
    )
}

/// Sends `method url` with headers and an empty body over HTTP/1.1.
async fn call(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Got> {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&h1_client(), b.body(full(""))?).await
}

/// Every value of a response header, in order.
fn values<'a>(got: &'a Got, name: &str) -> Vec<&'a str> {
    got.headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// The `RateLimit-*` headers and the status, as one comparable value.
fn quota(got: &Got) -> (u16, Option<&str>, Option<&str>) {
    (
        got.status.as_u16(),
        got.header("ratelimit-limit"),
        got.header("ratelimit-remaining"),
    )
}

/// A metric line's value from `/metrics`, if present.
async fn metric(weir: &Weir, line_prefix: &str) -> Result<Option<u64>> {
    let (_, text) = weir.admin_get("/metrics").await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok()))
}

// ---------------------------------------------------------------------------------------------
// rate-limit

#[tokio::test]
async fn rate_limit_passes_a_burst_then_429s_until_retry_after() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = filter(
        "limit",
        "rate-limit",
        "{ rate: 1, per: 1s, burst: 3 }",
        ", grants: { kv: [ratelimit] }",
    );
    let weir = Weir::start(&config(&up, &filters, &route("api", "/", "[limit]")))?;
    let url = weir.url("public", "/api");

    for remaining in ["2", "1", "0"] {
        let got = get(&url).await?;
        assert_eq!(
            quota(&got),
            (200, Some("3"), Some(remaining)),
            "{}",
            got.text()
        );
        assert!(got.header("ratelimit-reset").is_some());
    }
    let limited = get(&url).await?;
    assert_eq!(quota(&limited), (429, Some("3"), Some("0")));
    assert_eq!(limited.text(), r#"{"error":"rate limited"}"#);
    assert_eq!(limited.header("content-type"), Some("application/json"));
    assert!(limited.header("x-request-id").is_some());
    assert!(limited.header("ratelimit-reset").is_some());
    let retry_after: u64 = limited
        .header("retry-after")
        .context("429 without retry-after")?
        .parse()?;
    assert_eq!(
        retry_after, 1,
        "one token per second comes back within a second"
    );
    assert_eq!(up.count(), 3, "the 429 never reached the upstream");

    // Retry-After is a promise: once it has passed, the next request goes through.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let got = get(&url).await?;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(up.count(), 4);

    let limited_line =
        "weir_filter_ratelimit_requests_total{filter=\"limit\",route=\"api\",result=\"limited\"}";
    assert_eq!(metric(&weir, limited_line).await?, Some(1));
    Ok(())
}

/// rate-limit is one guest call per request (no response phase, no `context-done`): its
/// `RateLimit-*` headers are set on the response to come from the request phase, and reach
/// whatever response the client gets. The upstream's own headers of those names are replaced;
/// a later limit's 429 keeps its own (the tighter limit has the last word); the proxy's 502 for
/// a dead upstream gets them too; of two limits, the headers describe the tighter.
#[tokio::test]
async fn rate_limit_headers_set_in_the_request_phase_reach_every_response() -> Result<()> {
    let up = Upstream::with("up", |_req, _seen| async {
        http::Response::builder()
            .header("ratelimit-limit", "1000")
            .header("ratelimit-remaining", "999")
            .header("x-served-by", "origin")
            .body(BodyExt::boxed(full("ok")))
            .expect("response")
    })
    .await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let filters = [
        filter(
            "loose",
            "rate-limit",
            "{ rate: 10, per: 1m }",
            ", grants: { kv: [ratelimit] }",
        ),
        filter(
            "tight",
            "rate-limit",
            "{ rate: 2, per: 1m, key: \"header:x-tight\" }",
            ", grants: { kv: [ratelimit] }",
        ),
    ]
    .concat();
    let routes = [
        route("api", "/api", "[loose]"),
        route("both", "/both", "[loose, tight]"),
        "  - { name: down, match: { path_prefix: /down }, cluster: dead, filters: [loose] }\n"
            .to_string(),
    ]
    .concat();
    let cfg = config(&up, &filters, &routes).replace(
        "clusters: [ ",
        &format!("clusters: [ {{ name: dead, endpoints: [ {{ address: \"{dead}\" }} ] }}, "),
    );
    let weir = Weir::start(&cfg)?;

    let got = get(&weir.url("public", "/api")).await?;
    assert_eq!(quota(&got), (200, Some("10"), Some("9")), "{}", got.text());
    assert_eq!(
        values(&got, "ratelimit-limit"),
        ["10"],
        "the upstream's replaced"
    );
    assert_eq!(got.header("x-served-by"), Some("origin"));

    // Two limits: the tighter describes the response, in the order they run.
    for remaining in ["1", "0"] {
        let got = call("GET", &weir.url("public", "/both"), &[("x-tight", "k")]).await?;
        assert_eq!(quota(&got), (200, Some("2"), Some(remaining)));
    }
    // The tight limit answers 429 with its own headers; the loose one's do not override them.
    let got = call("GET", &weir.url("public", "/both"), &[("x-tight", "k")]).await?;
    assert_eq!(quota(&got), (429, Some("2"), Some("0")), "{}", got.text());
    assert_eq!(values(&got, "ratelimit-remaining"), ["0"]);
    assert!(got.header("retry-after").is_some());

    // The proxy's own error response gets them.
    let got = get(&weir.url("public", "/down")).await?;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(got.header("ratelimit-limit"), Some("10"));
    assert!(got.header("ratelimit-remaining").is_some());

    // One guest call per request, context-done included: 1 + 3 + 1 requests went through
    // `loose`, 3 through `tight`.
    let (status, body) = weir.admin_get("/filters").await?;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body)?;
    let guest_calls = |name: &str| -> u64 {
        let pools = list
            .as_array()
            .and_then(|l| l.iter().find(|f| f["name"] == name))
            .and_then(|f| f["pools"].as_array().cloned())
            .unwrap_or_default();
        pools.iter().filter_map(|p| p["guest_calls"].as_u64()).sum()
    };
    assert_eq!(
        (guest_calls("loose"), guest_calls("tight")),
        (5, 3),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn rate_limit_by_header_gives_each_api_key_its_own_bucket() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = filter(
        "limit",
        "rate-limit",
        "{ key: \"header:x-api-key\", rate: 1, per: 1m, burst: 2 }",
        ", grants: { kv: [ratelimit] }",
    );
    let weir = Weir::start(&config(&up, &filters, &route("api", "/", "[limit]")))?;
    let url = weir.url("public", "/");
    let cases: &[(&[(&str, &str)], u16)] = &[
        (&[("x-api-key", "alpha")], 200),
        (&[("x-api-key", "alpha")], 200),
        (&[("x-api-key", "alpha")], 429),
        (&[("x-api-key", "beta")], 200),
        (&[("x-api-key", "beta")], 200),
        (&[("x-api-key", "beta")], 429),
        // Without the header: the client IP's bucket, which nobody has used yet.
        (&[], 200),
        (&[("x-api-key", "alpha")], 429),
    ];
    for (i, (headers, status)) in cases.iter().enumerate() {
        let got = get_with(&url, headers).await?;
        assert_eq!(got.status, *status, "case {i}: {headers:?}");
    }
    Ok(())
}

/// A hand-made, unsigned JWT (rate-limit reads claims; verifying is jwt-auth's job).
fn unsigned_jwt(payload: &serde_json::Value) -> String {
    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{}.", b64url(payload.to_string().as_bytes()))
}

#[tokio::test]
async fn rate_limit_by_jwt_claim() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = filter(
        "limit",
        "rate-limit",
        "{ key: \"claim:sub\", rate: 1, per: 1m, burst: 1 }",
        ", grants: { kv: [ratelimit] }",
    );
    let weir = Weir::start(&config(&up, &filters, &route("api", "/", "[limit]")))?;
    let url = weir.url("public", "/");
    let bearer = |p: serde_json::Value| format!("Bearer {}", unsigned_jwt(&p));
    let cases = [
        (bearer(serde_json::json!({ "sub": "alice", "iat": 1 })), 200),
        (bearer(serde_json::json!({ "sub": "alice", "iat": 2 })), 429),
        (bearer(serde_json::json!({ "sub": "bob" })), 200),
        (bearer(serde_json::json!({ "sub": "bob" })), 429),
        // No `sub`: falls back to the client IP's bucket.
        (bearer(serde_json::json!({ "scope": "read" })), 200),
        ("Bearer garbage".to_owned(), 429),
    ];
    for (i, (auth, status)) in cases.iter().enumerate() {
        let got = get_with(&url, &[("authorization", auth)]).await?;
        assert_eq!(got.status, *status, "case {i}: {auth}");
    }
    Ok(())
}

#[tokio::test]
async fn rate_limit_route_overrides_get_their_own_rate_and_buckets() -> Result<()> {
    let up = Upstream::start("up").await;
    // `burst` defaults to `rate`, so overriding only the rate changes the burst too.
    let filters = filter(
        "limit",
        "rate-limit",
        "{ rate: 100, per: 1m }",
        ", grants: { kv: [ratelimit] }",
    );
    let routes = [
        route("two", "/two", "[ { name: limit, config: { rate: 2 } } ]"),
        route("four", "/four", "[ { name: limit, config: { rate: 4 } } ]"),
        route("default", "/", "[limit]"),
    ]
    .concat();
    let weir = Weir::start(&config(&up, &filters, &routes))?;

    for (path, rate) in [("/two", 2u32), ("/four", 4)] {
        let url = weir.url("public", path);
        for n in 1..=rate {
            let got = get(&url).await?;
            let remaining = (rate - n).to_string();
            let limit = rate.to_string();
            assert_eq!(
                quota(&got),
                (200, Some(limit.as_str()), Some(remaining.as_str())),
                "{path} request {n}"
            );
        }
        let got = get(&url).await?;
        assert_eq!(got.status, 429, "{path}: over its own rate");
    }
    // Same client, same module: the default route's bucket is untouched by the others.
    let got = get(&weir.url("public", "/other")).await?;
    assert_eq!(quota(&got), (200, Some("100"), Some("99")));
    Ok(())
}

#[tokio::test]
async fn rate_limit_without_its_kv_grant_fails_open_or_closed_as_configured() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = [
        filter("open", "rate-limit", "{ rate: 1, burst: 1 }", ""),
        filter(
            "closed",
            "rate-limit",
            "{ rate: 1, burst: 1, on_backend_error: deny }",
            ", grants: { kv: [other] }",
        ),
    ]
    .concat();
    let routes = [
        route("open", "/open", "[open]"),
        route("closed", "/closed", "[closed]"),
    ]
    .concat();
    let weir = Weir::start(&config(&up, &filters, &routes))?;

    // Default: a limiter that cannot count lets traffic through (burst 1 is not enforced) ...
    for _ in 0..3 {
        let got = get(&weir.url("public", "/open")).await?;
        assert_eq!(quota(&got), (200, None, None), "{}", got.text());
    }
    // ... and says why, once, with the fix.
    weir.eventually("the missing-grant warning", async || {
        let err = weir.stderr_text();
        err.contains("token bucket unavailable") && err.contains("grants: { kv: [ratelimit] }")
    })
    .await?;
    let warnings = weir
        .stderr_text()
        .matches("token bucket unavailable")
        .count();
    assert_eq!(
        warnings, 1,
        "logged once per failure streak, not per request"
    );
    let line = "weir_filter_ratelimit_backend_errors_total{filter=\"open\",route=\"open\",kind=\"denied\"}";
    assert_eq!(metric(&weir, line).await?, Some(3));

    // `on_backend_error: deny` answers 503 instead.
    let got = get(&weir.url("public", "/closed")).await?;
    assert_eq!(got.status, 503);
    assert_eq!(got.text(), r#"{"error":"rate limiter unavailable"}"#);
    assert_eq!(up.count(), 3);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// transform

/// An upstream that answers with a few headers the transform edits and, for POSTs, echoes the
/// body back in 16 KiB chunks, remembering what it received.
async fn header_and_echo_upstream(received: Arc<Mutex<Vec<u8>>>) -> Upstream {
    Upstream::with("up", move |req, _seen| {
        let received = received.clone();
        async move {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            *received.lock().unwrap() = body.to_vec();
            let chunks: Vec<Result<hyper::body::Frame<Bytes>, Infallible>> = body
                .chunks(16 * 1024)
                .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
            http::Response::builder()
                .header("x-internal", "secret")
                .header("cache-control", "max-age=60")
                .header("x-served-by", "origin")
                .body(BodyExt::boxed(body))
                .expect("response")
        }
    })
    .await
}

#[tokio::test]
async fn transform_edits_headers_both_ways_with_request_id_templates() -> Result<()> {
    let up = header_and_echo_upstream(Arc::default()).await;
    let filters = filter(
        "edit",
        "transform",
        "{ request: { add: { x-added: [one, two] }, set: { x-env: prod, x-trace: \"rid=$request_id route=$route\" }, remove: [x-remove-me] }, \
           response: { add: { x-served-by: weir, x-echo: \"${request_id}\" }, set: { cache-control: no-store }, remove: [x-internal] } }",
        "",
    );
    let weir = Weir::start(&config(&up, &filters, &route("api", "/", "[edit]")))?;
    let got = get_with(
        &weir.url("public", "/x"),
        &[
            ("x-env", "dev"),
            ("x-remove-me", "1"),
            ("x-added", "client"),
            ("x-request-id", "rid-42"),
        ],
    )
    .await?;
    assert_eq!(got.status, 200);

    let seen = up.last();
    let upstream = |name: &str| -> Vec<String> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(upstream("x-added"), ["client", "one", "two"]);
    assert_eq!(upstream("x-env"), ["prod"]);
    assert_eq!(upstream("x-remove-me"), Vec::<String>::new());
    assert_eq!(upstream("x-trace"), ["rid=rid-42 route=api"]);

    assert_eq!(got.header("x-internal"), None);
    assert_eq!(values(&got, "cache-control"), ["no-store"]);
    assert_eq!(values(&got, "x-served-by"), ["origin", "weir"]);
    assert_eq!(got.header("x-echo"), Some("rid-42"));

    // A generated request id is substituted the same way.
    let got = get(&weir.url("public", "/y")).await?;
    let id = got.header("x-request-id").context("x-request-id")?;
    assert_eq!(got.header("x-echo"), Some(id));
    assert_eq!(
        up.last().headers["x-trace"].to_str()?,
        format!("rid={id} route=api")
    );
    Ok(())
}

/// With `tracing:` on, the upstream's `traceparent` is the proxy's: a filter that sets one
/// (here transform, with `set` and `add`) does not replace it or send a second; with tracing off
/// the filter's goes through like any header.
#[tokio::test]
async fn the_upstreams_traceparent_is_the_proxys_whatever_a_filter_sets() -> Result<()> {
    let up = Upstream::start("up").await;
    let forged = "00-11111111111111111111111111111111-2222222222222222-01";
    let filters = filter(
        "forge",
        "transform",
        &format!(
            "{{ request: {{ set: {{ traceparent: \"{forged}\" }}, add: {{ traceparent: \"{forged}\" }} }} }}"
        ),
        "",
    );
    let routes = route("api", "/", "[forge]");
    let traced = Weir::start(&format!(
        "tracing: {{ sample_ratio: 0 }}\n{}",
        config(&up, &filters, &routes)
    ))?;
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for sent in [None, Some(caller)] {
        let headers: Vec<(&str, &str)> = sent.iter().map(|v| ("traceparent", *v)).collect();
        assert_eq!(
            get_with(&traced.url("public", "/x"), &headers)
                .await?
                .status,
            200
        );
        let seen: Vec<String> = (up.last().headers.get_all("traceparent").iter())
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(seen.len(), 1, "{sent:?}: {seen:?}");
        assert!(!seen[0].contains("1111111111"), "{sent:?}: {seen:?}");
        if sent.is_some() {
            assert!(
                seen[0].starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "{seen:?}"
            );
        }
    }
    let plain = Weir::start(&config(&up, &filters, &routes))?;
    assert_eq!(get(&plain.url("public", "/x")).await?.status, 200);
    assert_eq!(
        (up.last().headers.get_all("traceparent").iter()).collect::<Vec<_>>(),
        [forged, forged]
    );
    Ok(())
}

#[tokio::test]
async fn transform_rewrites_paths_by_prefix_and_regex() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = [
        filter("prefix", "transform", "{ rewrite_path: { prefix: { from: /old/, to: /new/v2/ } } }", ""),
        filter(
            "regex",
            "transform",
            "{ rewrite_path: { regex: { pattern: \"^/users/(?P<id>[0-9]+)/profile$\", replacement: \"/v2/profiles/${id}\" } } }",
            "",
        ),
    ]
    .concat();
    let routes = [
        route("old", "/old/", "[prefix]"),
        route("users", "/users/", "[regex]"),
    ]
    .concat();
    let weir = Weir::start(&config(&up, &filters, &routes))?;
    let cases = [
        ("/old/items/7?sort=asc", "/new/v2/items/7?sort=asc"),
        (
            "/users/42/profile?fields=name",
            "/v2/profiles/42?fields=name",
        ),
        ("/users/abc/profile", "/users/abc/profile"),
    ];
    for (sent, upstream) in cases {
        let got = get(&weir.url("public", sent)).await?;
        assert_eq!(got.status, 200, "{sent}");
        assert_eq!(up.last().path, upstream, "{sent}");
    }
    Ok(())
}

#[tokio::test]
async fn transform_replaces_in_large_streamed_bodies_both_ways() -> Result<()> {
    let received = Arc::new(Mutex::new(Vec::new()));
    let up = header_and_echo_upstream(received.clone()).await;
    let filters = [
        filter(
            "bodies",
            "transform",
            "{ body: { request: [ { find: cat, replace: dog } ], response: [ { find: dog, replace: wolf }, { find: internal.example, replace: api.example.com } ] } }",
            // Whole-body work takes longer than the 5ms default allows on a loaded machine.
            ", limits: { time_per_phase: 200ms }",
        ),
        filter("hdrs", "transform", "{ request: { set: { x-a: \"1\" } } }", ""),
    ]
    .concat();
    let routes = [
        route("bodies", "/bodies", "[bodies]"),
        route("hdrs", "/hdrs", "[hdrs]"),
    ]
    .concat();
    let weir = Weir::start(&config(&up, &filters, &routes))?;

    // ~200 KiB in 4 KiB chunks; "cat" straddles chunk boundaries (4096 is not a multiple of 13).
    let unit = "a cat here.  ";
    let text = unit.repeat(200 * 1024 / unit.len());
    let chunks: Vec<Bytes> = text
        .as_bytes()
        .chunks(4096)
        .map(Bytes::copy_from_slice)
        .collect();
    ensure!(chunks.len() > 16 && text.len() > 64 * 1024);
    let post = async |path: &str, chunks: Vec<Bytes>| -> Result<Got> {
        let (tx, body) = channel_body();
        let req = http::Request::post(weir.url("public", path))
            .header("accept-encoding", "gzip")
            .body(body)?;
        let sending = tokio::spawn(async move {
            for c in chunks {
                tx.send(c).await?;
            }
            anyhow::Ok(())
        });
        let got = send(&h1_client(), req).await?;
        sending.await??;
        Ok(got)
    };

    let got = post("/bodies", chunks.clone()).await?;
    assert_eq!(got.status, 200, "{}\n{}", got.text(), weir.stderr_text());
    let upstream_saw = String::from_utf8(received.lock().unwrap().clone())?;
    assert_eq!(
        upstream_saw,
        text.replace("cat", "dog"),
        "request body: every cat, across chunks"
    );
    assert_eq!(
        got.text(),
        text.replace("cat", "wolf"),
        "response body: the echoed dogs"
    );
    assert_eq!(
        up.last().headers.get("accept-encoding"),
        None,
        "response rules ask the upstream for an uncompressed body"
    );

    // A route without body rules never pays for a body copy: two header phases, nothing else.
    let got = post("/hdrs", chunks).await?;
    assert_eq!(got.text(), text, "bodies pass untouched");
    let calls = metric(
        &weir,
        "weir_filter_calls_total{filter=\"hdrs\",route=\"hdrs\"}",
    )
    .await?;
    assert_eq!(calls, Some(1), "request headers only");
    Ok(())
}

#[tokio::test]
async fn transform_bodies_over_max_body_fail_the_request() -> Result<()> {
    // An upstream that answers only after the whole body (an echoing one would answer first).
    let up = header_and_echo_upstream(Arc::default()).await;
    let filters = filter(
        "bodies",
        "transform",
        "{ body: { request: [ { find: a, replace: b } ] } }",
        ", limits: { max_body: 64KiB, time_per_phase: 200ms }",
    );
    let weir = Weir::start(&config(&up, &filters, &route("r", "/", "[bodies]")))?;
    // 100 KiB streamed in 4 KiB chunks: the filter holds them until the end, past its limit.
    let (tx, body) = channel_body();
    let req = http::Request::post(weir.url("public", "/")).body(body)?;
    let sending = tokio::spawn(async move {
        for _ in 0..25 {
            if tx.send(Bytes::from(vec![b'a'; 4096])).await.is_err() {
                break; // the proxy gave up on the body, as it should
            }
        }
    });
    let got = send(&h1_client(), req).await?;
    sending.await?;
    let text = got.text();
    assert_eq!(got.status, 503, "{}", &text[..text.len().min(200)]);
    assert!(text.contains("filter \"bodies\" failed"), "{text}");

    let req = http::Request::post(weir.url("public", "/")).body(full(vec![b'a'; 1000]))?;
    let got = send(&h1_client(), req).await?;
    assert_eq!((got.status.as_u16(), got.body.len()), (200, 1000));
    assert!(got.body.iter().all(|b| *b == b'b'));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// cors

/// Weir with three CORS policies: `/api` (listed origins, credentials), `/public` (`*`) and
/// `/creds` (`*` with credentials).
async fn cors_proxy(up: &Upstream) -> Result<Weir> {
    let filters = [
        filter(
            "cors",
            "cors",
            "{ allow_origins: [\"https://app.example.com\", \"*.example.org\"], allow_methods: [GET, POST, DELETE], \
               allow_headers: [authorization, x-api-key], expose_headers: [x-request-id], allow_credentials: true, max_age_s: 600 }",
            "",
        ),
        filter("public", "cors", "{ allow_origins: [\"*\"] }", ""),
        filter("creds", "cors", "{ allow_origins: [\"*\"], allow_credentials: true }", ""),
    ]
    .concat();
    let routes = [
        route("api", "/api", "[cors]"),
        route("public", "/public", "[public]"),
        route("creds", "/creds", "[creds]"),
    ]
    .concat();
    Weir::start(&config(up, &filters, &routes))
}

/// The `access-control-*` headers of a response, sorted, as (name, value).
fn cors_headers(got: &Got) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = got
        .headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("access-control-"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    v.sort();
    v
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn cors_preflights_are_answered_by_the_proxy() -> Result<()> {
    let up = Upstream::start("up").await;
    let weir = cors_proxy(&up).await?;
    let url = weir.url("public", "/api/items");

    let got = call(
        "OPTIONS",
        &url,
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "DELETE"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ],
    )
    .await?;
    assert_eq!(got.status, 204);
    assert_eq!(
        cors_headers(&got),
        pairs(&[
            ("access-control-allow-origin", "https://app.example.com"),
            ("access-control-allow-methods", "GET, POST, DELETE"),
            (
                "access-control-allow-headers",
                "authorization, content-type"
            ),
            ("access-control-allow-credentials", "true"),
            ("access-control-max-age", "600"),
        ])
    );
    assert!(got.body.is_empty());

    let denied: [(&[(&str, &str)], &str); 3] = [
        (
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
            "origin not allowed",
        ),
        (
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
            ],
            "method PUT not allowed",
        ),
        (
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-admin"),
            ],
            "header x-admin not allowed",
        ),
    ];
    for (headers, why) in denied {
        let got = call("OPTIONS", &url, headers).await?;
        assert_eq!(got.status, 403, "{headers:?}");
        assert_eq!(cors_headers(&got), vec![], "{headers:?}");
        assert_eq!(got.text(), format!("{{\"error\":\"cors: {why}\"}}"));
    }
    assert_eq!(up.count(), 0, "preflights never reach the upstream");
    Ok(())
}

#[tokio::test]
async fn cors_actual_requests_get_headers_for_allowed_origins_only() -> Result<()> {
    let up = Upstream::start("up").await;
    let weir = cors_proxy(&up).await?;
    let url = weir.url("public", "/api/items");
    let allowed = pairs(&[
        ("access-control-allow-credentials", "true"),
        ("access-control-expose-headers", "x-request-id"),
    ]);
    // (origin, whether it is allowed): exact, wildcard subdomains, and near misses.
    let cases = [
        ("https://app.example.com", true),
        ("https://shop.example.org", true),
        ("http://a.b.example.org:8080", true),
        ("https://example.org", false),
        ("https://app.example.com.evil.example", false),
        ("https://evil.example", false),
    ];
    for (origin, ok) in cases {
        let got = get_with(&url, &[("origin", origin)]).await?;
        assert_eq!(got.status, 200, "{origin}");
        let mut want = if ok { allowed.clone() } else { vec![] };
        if ok {
            want.push(("access-control-allow-origin".to_owned(), origin.to_owned()));
            want.sort();
        }
        assert_eq!(cors_headers(&got), want, "{origin}");
        assert_eq!(
            values(&got, "vary"),
            ["Origin"],
            "{origin}: caches must key on Origin"
        );
    }
    // A POST is an actual request too (no preflight needed for a simple one).
    let got = call("POST", &url, &[("origin", "https://app.example.com")]).await?;
    assert_eq!(
        got.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(up.count(), cases.len() + 1);
    Ok(())
}

#[tokio::test]
async fn cors_star_is_star_without_credentials_and_echoes_with_them() -> Result<()> {
    let up = Upstream::start("up").await;
    let weir = cors_proxy(&up).await?;
    let origin = [("origin", "https://anyone.example")];

    let got = get_with(&weir.url("public", "/public"), &origin).await?;
    assert_eq!(
        cors_headers(&got),
        pairs(&[("access-control-allow-origin", "*")])
    );
    assert_eq!(got.header("vary"), None);

    let got = get_with(&weir.url("public", "/creds"), &origin).await?;
    assert_eq!(
        cors_headers(&got),
        pairs(&[
            ("access-control-allow-origin", "https://anyone.example"),
            ("access-control-allow-credentials", "true"),
        ])
    );
    assert_eq!(got.header("vary"), Some("Origin"));

    let preflight = [
        ("origin", "https://anyone.example"),
        ("access-control-request-method", "POST"),
    ];
    let got = call("OPTIONS", &weir.url("public", "/creds"), &preflight).await?;
    assert_eq!(got.status, 204);
    assert_eq!(
        got.header("access-control-allow-origin"),
        Some("https://anyone.example")
    );
    assert_eq!(got.header("access-control-allow-credentials"), Some("true"));
    Ok(())
}
