//! End-to-end: route matching, rewrites and path normalization.

use anyhow::Result;

use crate::support::*;

/// One upstream per cluster, so the answering upstream names the route that matched.
async fn routed_proxy() -> Result<(Weir, Vec<Upstream>)> {
    let names = [
        "exact-host",
        "wild-host",
        "deep-wild",
        "exact-path",
        "regex-path",
        "long-prefix",
        "short-prefix",
        "methods",
        "header",
        "query",
        "any",
    ];
    let mut ups = Vec::new();
    for n in names {
        ups.push(Upstream::start(n).await);
    }
    let clusters: String = ups
        .iter()
        .map(|u| {
            format!(
                "  - {{ name: {}, endpoints: [ {{ address: \"{}\" }} ] }}\n",
                u.name, u.addr
            )
        })
        .collect();
    let yaml = format!(
        "listeners:\n  - {{ name: public, listen: 127.0.0.1:0 }}\n\
routes:\n\
  - {{ name: any, match: {{ path_prefix: / }}, cluster: any }}\n\
  - {{ name: short-prefix, match: {{ host: app.test, path_prefix: /v1/ }}, cluster: short-prefix }}\n\
  - {{ name: long-prefix, match: {{ host: app.test, path_prefix: /v1/users/ }}, cluster: long-prefix }}\n\
  - {{ name: regex-path, match: {{ host: app.test, path_regex: \"/v1/users/[0-9]+\" }}, cluster: regex-path }}\n\
  - {{ name: exact-path, match: {{ host: app.test, path: /v1/users/42 }}, cluster: exact-path }}\n\
  - {{ name: exact-host, match: {{ host: app.test }}, cluster: exact-host }}\n\
  - {{ name: wild-host, match: {{ host: \"*.app.test\" }}, cluster: wild-host }}\n\
  - {{ name: deep-wild, match: {{ host: \"*.eu.app.test\" }}, cluster: deep-wild }}\n\
  - {{ name: methods, match: {{ host: m.test, methods: [POST, PUT] }}, cluster: methods }}\n\
  - {{ name: header, match: {{ host: h.test, headers: {{ x-env: canary, x-tier: {{ regex: \"gold|silver\" }} }} }}, cluster: header }}\n\
  - {{ name: query, match: {{ host: q.test, query: {{ debug: \"1\", user: {{ present: true }} }} }}, cluster: query }}\n\
clusters:\n{clusters}"
    );
    Ok((Weir::start(&yaml)?, ups))
}

#[tokio::test]
async fn most_specific_route_wins_for_each_kind_of_match() -> Result<()> {
    let (weir, _ups) = routed_proxy().await?;
    let base = weir.addr("public");
    // (method, host, path, extra headers, expected upstream; "" = 404 from the proxy)
    // (method, host, path, extra headers, expected upstream; "" = 404 from the proxy)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "app.test", "/", &[], "exact-host"),
        ("GET", "APP.test:8080", "/", &[], "exact-host"),
        ("GET", "app.test", "/v1/other", &[], "short-prefix"),
        ("GET", "app.test", "/v1/users/abc", &[], "long-prefix"),
        ("GET", "app.test", "/v1/users/77", &[], "regex-path"),
        ("GET", "app.test", "/v1/users/42", &[], "exact-path"),
        ("GET", "app.test", "/v1/users/42?x=1", &[], "exact-path"),
        ("GET", "www.app.test", "/v1/users/42", &[], "wild-host"),
        ("GET", "a.b.app.test", "/", &[], "wild-host"),
        ("GET", "x.eu.app.test", "/", &[], "deep-wild"),
        ("GET", "other.test", "/v1/users/42", &[], "any"),
        ("GET", "m.test", "/", &[], "any"),
        ("POST", "m.test", "/", &[], "methods"),
        ("PUT", "m.test", "/", &[], "methods"),
        (
            "GET",
            "h.test",
            "/",
            &[("x-env", "canary"), ("x-tier", "gold")],
            "header",
        ),
        (
            "GET",
            "h.test",
            "/",
            &[("x-env", "canary"), ("x-tier", "bronze")],
            "any",
        ),
        (
            "GET",
            "h.test",
            "/",
            &[("x-env", "prod"), ("x-tier", "gold")],
            "any",
        ),
        ("GET", "q.test", "/?debug=1&user=bob", &[], "query"),
        ("GET", "q.test", "/?user=&debug=%31", &[], "query"),
        ("GET", "q.test", "/?debug=2&user=bob", &[], "any"),
        ("GET", "q.test", "/?debug=1", &[], "any"),
    ];
    let client = h1_client();
    let mut wrong = Vec::new();
    for (method, host, path, headers, want) in cases {
        let mut b = http::Request::builder()
            .method(*method)
            .uri(format!("http://{base}{path}"))
            .header("host", *host);
        for (k, v) in *headers {
            b = b.header(*k, *v);
        }
        let got = send(&client, b.body(full(""))?).await?;
        if got.upstream() != *want {
            wrong.push(format!(
                "{method} {host}{path} {headers:?}: want {want:?}, got {:?} ({})",
                got.upstream(),
                got.status
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

#[tokio::test]
async fn no_matching_route_is_a_404_from_the_proxy() -> Result<()> {
    let up = Upstream::start("only").await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, match: {{ host: only.test }}, cluster: c }} ]\n\
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        up.addr
    ))?;
    let got = get_with(&weir.url("public", "/x"), &[("host", "elsewhere.test")]).await?;
    assert_eq!(got.status, 404);
    assert_eq!(got.upstream(), "");
    assert!(got.text().contains("no route"), "{}", got.text());
    assert!(got.header("x-request-id").is_some());
    assert_eq!(up.count(), 0);
    Ok(())
}

#[tokio::test]
async fn rewrites_path_prefix_and_host() -> Result<()> {
    let up = Upstream::start("api").await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes:\n\
  - {{ name: r, match: {{ path_prefix: /v1/ }}, cluster: c, rewrite: {{ path_prefix: /v2/, host: internal.svc }} }}\n\
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        up.addr
    ))?;
    let got = get_with(
        &weir.url("public", "/v1/users?id=7"),
        &[("host", "api.example.com")],
    )
    .await?;
    assert_eq!(got.status, 200);
    let seen = up.last();
    assert_eq!(seen.path, "/v2/users?id=7");
    assert_eq!(seen.headers["host"], "internal.svc");
    assert_eq!(seen.headers["x-forwarded-host"], "api.example.com");
    Ok(())
}

#[tokio::test]
async fn dot_segments_are_normalized_before_routing_and_climbing_out_is_rejected() -> Result<()> {
    let public = Upstream::start("public").await;
    let admin = Upstream::start("admin").await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes:\n\
  - {{ name: admin, match: {{ path_prefix: /admin/ }}, cluster: admin }}\n\
  - {{ name: public, match: {{ path_prefix: /public/ }}, cluster: public }}\n\
clusters:\n\
  - {{ name: public, endpoints: [ {{ address: \"{}\" }} ] }}\n\
  - {{ name: admin, endpoints: [ {{ address: \"{}\" }} ] }}\n",
        public.addr, admin.addr
    ))?;
    // curl --path-as-is sends the dot segments untouched.
    let out = curl(&[
        "--path-as-is",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &weir.url("public", "/public/../admin/x"),
    ])
    .await?;
    assert_eq!(out, "200");
    assert_eq!(
        admin.last().path,
        "/admin/x",
        "the upstream sees the normalized path the route was chosen on"
    );
    assert_eq!(public.count(), 0);
    let out = curl(&[
        "--path-as-is",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &weir.url("public", "/../etc/passwd"),
    ])
    .await?;
    assert_eq!(out, "400");
    Ok(())
}

/// An `/admin` route (upstream `admin`) and a catch-all (upstream `public`), like an auth-filtered
/// path beside an open one.
async fn acl_proxy(listener_extra: &str) -> Result<(Weir, Upstream, Upstream)> {
    let admin = Upstream::start("admin").await;
    let public = Upstream::start("public").await;
    let yaml = format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0{listener_extra} }} ]\n\
routes:\n\
  - {{ name: admin, match: {{ path_prefix: /admin, case_sensitive: false }}, cluster: admin }}\n\
  - {{ name: internal, match: {{ host: internal.test }}, cluster: admin }}\n\
  - {{ name: public, match: {{}}, cluster: public }}\n\
clusters:\n\
  - {{ name: admin, endpoints: [ {{ address: \"{}\" }} ] }}\n\
  - {{ name: public, endpoints: [ {{ address: \"{}\" }} ] }}\n",
        admin.addr, public.addr
    );
    Ok((Weir::start(&yaml)?, admin, public))
}

/// Writes `raw` on a fresh connection and returns the status of the first response (0 when the
/// proxy closed without one).
async fn raw_status(addr: std::net::SocketAddr, raw: &str) -> Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(raw.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut chunk)).await??;
        if n == 0 {
            return Ok(0);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf[9..12]).parse()?)
}

/// Finding 1 of issue #10: the URI authority (absolute-form, HTTP/2 `:authority`) routed the
/// request, but the upstream got the client's `Host`.
#[tokio::test]
async fn the_authority_routes_and_is_the_host_the_upstream_gets() -> Result<()> {
    let (weir, admin, public) = acl_proxy("").await?;
    let addr = weir.addr("public");
    let status = raw_status(
        addr,
        "GET http://public.test/x HTTP/1.1\r\nHost: internal.test\r\n\r\n",
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(
        admin.count(),
        0,
        "routed as public.test, served as internal.test"
    );
    assert_eq!(public.last().headers["host"], "public.test");

    let status = raw_status(
        addr,
        "GET http://internal.test/y HTTP/1.1\r\nHost: public.test\r\n\r\n",
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(admin.last().headers["host"], "internal.test");

    // HTTP/2: `:authority` (the proxy's address here) wins over a `host` header the same way.
    let req = http::Request::get(format!("http://{addr}/h2"))
        .header("host", "internal.test")
        .body(full(""))?;
    let got = send(&h2c_client(), req).await?;
    assert_eq!(got.status, 200);
    let seen = public
        .seen()
        .into_iter()
        .chain(admin.seen())
        .find(|s| s.path == "/h2");
    let seen = seen.expect("the h2 request reached an upstream");
    assert_eq!(
        seen.headers["host"],
        addr.to_string(),
        "the upstream's Host is the :authority the request was routed by"
    );
    Ok(())
}

/// Finding 2: HTTP/1.1 without Host was forwarded (RFC 9112 §3.2: 400). HTTP/1.0 may omit it.
#[tokio::test]
async fn http11_without_host_is_refused() -> Result<()> {
    let (weir, admin, public) = acl_proxy("").await?;
    let addr = weir.addr("public");
    assert_eq!(raw_status(addr, "GET /x HTTP/1.1\r\n\r\n").await?, 400);
    assert_eq!(
        raw_status(
            addr,
            "GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"
        )
        .await?,
        400
    );
    assert_eq!(
        raw_status(addr, "GET /x HTTP/1.1\r\nHost: a b\r\n\r\n").await?,
        400
    );
    assert_eq!(admin.count() + public.count(), 0);
    assert_eq!(raw_status(addr, "GET /x HTTP/1.0\r\n\r\n").await?, 200);
    // It goes up as HTTP/1.1, which needs a Host: the endpoint's address.
    assert_eq!(public.last().headers["host"], public.addr.to_string());
    Ok(())
}

/// Finding 3: encoded paths missed the `/admin` route and reached the catch-all. Each one now
/// either reaches `admin` (decoded to `/admin`) or is refused with 400; none reaches `public`.
#[tokio::test]
async fn encoded_paths_cannot_route_around_a_path_rule() -> Result<()> {
    let (weir, admin, public) = acl_proxy("").await?;
    let addr = weir.addr("public");
    let cases = [
        ("/%61dmin", 200),
        ("/ADMIN", 200),
        ("/public/%2e%2e/admin", 200),
        ("/public/%2E%2e%2fadmin", 400),
        ("/public/..%2fadmin", 400),
        ("/public/%252e%252e/admin", 400),
        ("/public/%25%32%65%25%32%65/admin", 400),
        ("/public\\..\\admin", 400),
        ("/admin;x", 400),
        ("/public/..;/admin", 400),
        ("/%c0%ae%c0%ae/admin", 400),
        ("/public/%2e%2e%5cadmin", 400),
        ("/adm%69n/x", 200),
    ];
    let mut wrong = Vec::new();
    for (path, want) in cases {
        let before = admin.count();
        let status = raw_status(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        )
        .await?;
        let reached_admin = admin.count() > before;
        if status != want || (want == 200 && !reached_admin) {
            wrong.push(format!(
                "{path}: want {want}, got {status} (admin reached: {reached_admin})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        public.count(),
        0,
        "a path reached the catch-all: {:?}",
        public.seen()
    );
    for seen in admin.seen() {
        assert!(
            seen.path.starts_with("/admin") || seen.path.starts_with("/ADMIN"),
            "{}",
            seen.path
        );
    }

    // The documented alternatives: `decode` folds `%2F` into a separator, `strip` drops `;x`.
    let (weir, admin, public) =
        acl_proxy(", paths: { escaped_slashes: decode, parameters: strip }").await?;
    let addr = weir.addr("public");
    for path in ["/public/..%2fadmin", "/admin;x", "/public/..;/admin"] {
        let status = raw_status(
            addr,
            &format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        )
        .await?;
        assert_eq!(status, 200, "{path}");
        assert_eq!(admin.last().path, "/admin", "{path}");
    }
    assert_eq!(public.count(), 0);
    Ok(())
}
