//! End-to-end: route matching, rewrites and path normalization.

use anyhow::Result;

mod support;

use support::*;

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
