//! End-to-end: operating weir — admin API, metrics, access log, drain, reload, and the CLI.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use support::*;

fn one_route(up: &Upstream, extra: &str) -> String {
    format!(
        "{extra}listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: app, match: {{ path_prefix: / }}, cluster: backend }} ]\n\
clusters: [ {{ name: backend, endpoints: [ {{ address: \"{}\", weight: 3 }} ] }} ]\n",
        up.addr
    )
}

#[tokio::test]
async fn admin_serves_health_readiness_config_and_clusters() -> Result<()> {
    let up = Upstream::start("u").await;
    let weir = Weir::start(&one_route(&up, ""))?;
    assert_eq!(
        weir.admin_get("/healthz").await?,
        (http::StatusCode::OK, "ok\n".to_string())
    );
    assert_eq!(
        weir.admin_get("/ready").await?,
        (http::StatusCode::OK, "ready\n".to_string())
    );

    let (status, body) = weir.admin_get("/config").await?;
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(config["routes"][0]["name"], "app");
    assert_eq!(
        config["clusters"][0]["endpoints"][0]["address"],
        up.addr.to_string()
    );
    assert_eq!(
        config["clusters"][0]["timeouts"]["request"], "15s",
        "defaults are shown in the effective config"
    );
    assert_eq!(config["limits"]["max_request_headers"], 100);

    let (status, body) = weir.admin_get("/clusters").await?;
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        clusters[0]["endpoints"][0],
        serde_json::json!({
            "address": up.addr.to_string(), "weight": 3, "healthy": true, "in_flight": 0,
            "connections": 0, "connect_failures": 0
        })
    );
    assert_eq!(weir.admin_get("/nope").await?.0, 404);
    Ok(())
}

#[tokio::test]
async fn metrics_count_requests_by_route_cluster_and_status_with_latency_and_pool_gauges()
-> Result<()> {
    let up = Upstream::start("u").await;
    let weir = Weir::start(&one_route(&up, ""))?;
    let client = h1_client();
    for _ in 0..3 {
        let got = send(
            &client,
            http::Request::get(weir.url("public", "/x")).body(full(""))?,
        )
        .await?;
        assert_eq!(got.status, 200);
    }
    let (_, text) = weir.admin_get("/metrics").await?;
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has("weir_requests_total{route=\"app\",cluster=\"backend\",status=\"200\"} 3"),
        "{text}"
    );
    assert!(
        has("weir_request_duration_seconds_count{route=\"app\",cluster=\"backend\"} 3"),
        "{text}"
    );
    assert!(
        has(&format!(
            "weir_upstream_connections{{cluster=\"backend\",endpoint=\"{}\"}} 1",
            up.addr
        )),
        "one pooled connection:\n{text}"
    );
    assert!(
        has(&format!(
            "weir_upstream_connections_opened_total{{cluster=\"backend\",endpoint=\"{}\"}} 1",
            up.addr
        )),
        "{text}"
    );
    assert!(
        has("weir_downstream_connections_total{listener=\"public\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "weir_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(text.contains("# TYPE weir_request_duration_seconds histogram"));
    Ok(())
}

#[tokio::test]
async fn access_log_writes_one_json_line_per_request() -> Result<()> {
    let up = Upstream::start("u").await;
    let weir = Weir::start(&one_route(
        &up,
        "access_log: { path: \"{dir}/access.log\" }\n",
    ))?;
    let got = get_with(
        &weir.url("public", "/hello?x=1"),
        &[("host", "site.test"), ("x-request-id", "req-123")],
    )
    .await?;
    assert_eq!(got.status, 200);
    let path = weir.dir.path("access.log");
    let mut line = String::new();
    weir.eventually("an access log line", async || {
        line = std::fs::read_to_string(&path).unwrap_or_default();
        !line.is_empty()
    })
    .await?;
    assert_eq!(line.lines().count(), 1, "{line}");
    let v: serde_json::Value = serde_json::from_str(line.trim())?;
    assert_eq!(v["method"], "GET");
    assert_eq!(v["host"], "site.test");
    assert_eq!(v["path"], "/hello?x=1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "app");
    assert_eq!(v["cluster"], "backend");
    assert_eq!(v["upstream"], up.addr.to_string());
    assert_eq!(v["request_id"], "req-123");
    assert_eq!(v["listener"], "public");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["bytes"], 0);
    assert!(
        v["client"]
            .as_str()
            .unwrap_or_default()
            .starts_with("127.0.0.1:"),
        "{v}"
    );
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{v}");
    assert!(
        v["time"]
            .as_str()
            .is_some_and(|t| t.len() == 24 && t.ends_with('Z')),
        "{v}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_accepting_finishes_in_flight_requests_and_exits_zero() -> Result<()> {
    let up = Upstream::start("slow").await;
    let mut weir = Weir::start(&one_route(&up, "drain_timeout: 10s\n"))?;
    let url = weir.url("public", "/slow");
    let in_flight = tokio::spawn(async move { get_with(&url, &[("x-delay-ms", "700")]).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    weir.signal(15);
    // Readiness flips while draining; new connections are refused once the listener closes.
    let addr = weir.addr("public");
    weir.eventually("the listener to close", async || {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await?;
    let got = in_flight.await??;
    assert_eq!(
        got.status, 200,
        "the in-flight request completed during the drain"
    );
    let code = weir.wait_exit(Duration::from_secs(10))?;
    assert_eq!(code, Some(0), "stderr:\n{}", weir.stderr_text());
    assert!(
        sent.elapsed() >= Duration::from_millis(300),
        "exit waited for the in-flight request"
    );
    assert!(
        weir.stderr_text().contains("drained"),
        "{}",
        weir.stderr_text()
    );
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_the_config_and_a_bad_change_keeps_the_old_one() -> Result<()> {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let weir = Weir::start(&one_route(&a, ""))?;
    let url = weir.url("public", "/");
    assert_eq!(get(&url).await?.upstream(), "a");

    // A broken edit: rejected with file:line, old config keeps serving.
    let good = std::fs::read_to_string(&weir.config)?;
    std::fs::write(
        &weir.config,
        good.replace("cluster: backend", "cluster: bakend"),
    )?;
    weir.signal(1);
    weir.eventually("the reload rejection", async || {
        weir.stderr_text().contains("reload rejected")
    })
    .await?;
    assert!(
        weir.stderr_text().contains(
            "weir.yaml:3: routes[0].cluster: unknown cluster \"bakend\" (did you mean \"backend\"?)"
        ),
        "{}",
        weir.stderr_text()
    );
    assert_eq!(get(&url).await?.upstream(), "a");

    // A good edit: new requests go to b.
    std::fs::write(
        &weir.config,
        good.replace(&a.addr.to_string(), &b.addr.to_string()),
    )?;
    weir.signal(1);
    weir.eventually("requests to reach the new upstream", async || {
        get(&url).await.is_ok_and(|g| g.upstream() == "b")
    })
    .await?;
    Ok(())
}

fn weir_cmd(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(weir_bin()).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn validate_accepts_good_configs_and_names_file_line_and_field_for_bad_ones() -> Result<()> {
    let dir = TempDir::new();
    let good = dir.write(
        "good.yaml",
        "listeners: [ { name: public, listen: 127.0.0.1:0 } ]\n\
routes: [ { name: app, match: { path_prefix: / }, cluster: backend } ]\n\
clusters: [ { name: backend, endpoints: [ { address: 127.0.0.1:9 } ] } ]\n",
    );
    let (code, out, _) = weir_cmd(&["validate", good.to_str().unwrap()])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("ok (1 listeners, 1 routes, 1 clusters, 0 filters)"),
        "{out}"
    );

    let cases = [
        (
            "routes: [ { name: app, clustr: backend } ]\n",
            "bad.yaml:1: routes[0].clustr: unknown field \"clustr\" (did you mean \"cluster\"?)",
        ),
        (
            "listeners:\n  - name: s\n    listen: 127.0.0.1:0\n    protocol: https\n    tls: { certificates: [ { cert: missing.pem, key: missing.key } ] }\n",
            "bad.yaml:5: listeners[0].tls.certificates[0]: cannot read certificate",
        ),
        (
            "clusters:\n  - name: c\n    lb: least_requests\n    endpoints: [ { address: 127.0.0.1:1 } ]\n",
            "bad.yaml:3: clusters[0].lb: unknown variant \"least_requests\" (did you mean \"least_request\"?)",
        ),
        (
            "listeners: [ { name: a, listen: 127.0.0.1:0 }\n",
            "bad.yaml:2:",
        ),
        (
            "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    trusted_proxies: [ 10.0.0.0/8, 10.0.0.1/8 ]\n",
            "bad.yaml:4: listeners[0].trusted_proxies[1]: \"10.0.0.1/8\" has host bits set beyond /8 (did you mean 10.0.0.0/8?)",
        ),
        (
            "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    trusted_proxies: [ localhost ]\n",
            "bad.yaml:4: listeners[0].trusted_proxies[0]: \"localhost\" is not an IP address",
        ),
        (
            "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    paths: { escaped_slashes: decod }\n",
            "bad.yaml:4: listeners[0].paths.escaped_slashes: unknown variant \"decod\" (did you mean \"decode\"?)",
        ),
        (
            "routes:\n  - name: r\n    match: { path_prefix: /caf%c3%a9/ }\n    cluster: c\nclusters: [ { name: c, endpoints: [ { address: 127.0.0.1:1 } ] } ]\n",
            "bad.yaml:3: routes[0].match.path_prefix: \"/caf%c3%a9/\" never matches: requests are normalized first; write \"/caf%C3%A9/\"",
        ),
        (
            "routes:\n  - name: r\n    match: { path: \"/a/../b\" }\n    cluster: c\nclusters: [ { name: c, endpoints: [ { address: 127.0.0.1:1 } ] } ]\n",
            "routes[0].match.path: \"/a/../b\" never matches",
        ),
    ];
    for (text, want) in cases {
        let bad = dir.write("bad.yaml", text);
        let (code, _, err) = weir_cmd(&["validate", bad.to_str().unwrap()])?;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
    let (code, _, err) = weir_cmd(&["validate", dir.path("absent.yaml").to_str().unwrap()])?;
    assert_eq!(code, 1);
    assert!(err.contains("absent.yaml"), "{err}");
    Ok(())
}

#[test]
fn help_describes_the_commands() -> Result<()> {
    let (code, out, _) = weir_cmd(&["--help"])?;
    assert_eq!(code, 0);
    for cmd in ["run", "validate", "quickstart", "demo-upstream"] {
        assert!(out.contains(cmd), "--help lacks {cmd}:\n{out}");
    }
    Ok(())
}

#[tokio::test]
async fn run_fails_clearly_when_the_port_is_taken() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let dir = TempDir::new();
    let cfg = dir.write(
        "w.yaml",
        &format!(
            "admin: {{ listen: 127.0.0.1:0 }}\nlisteners: [ {{ name: public, listen: \"{}\" }} ]\n",
            taken.local_addr()?
        ),
    );
    let out = tokio::process::Command::new(weir_bin())
        .arg("run")
        .arg(&cfg)
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listener \"public\": cannot listen on"),
        "{err}"
    );
    Ok(())
}

/// The quickstart is an example of safe layout: a route's auth filter protects an upstream only
/// if no route without it reaches the same cluster (`Host: localhost` once reached `/admin`
/// through the catch-all route, past basic-auth).
#[test]
fn the_quickstart_never_routes_around_its_auth_filters() -> Result<()> {
    let file = repo_root().join("examples/quickstart.yaml");
    let loaded = weir_config::LoadedConfig::from_file(&file)?;
    let c = &loaded.config;
    let auth = |name: &str| {
        c.filters.iter().any(|f| {
            f.name == name && {
                let m = f.module.to_string_lossy();
                m.contains("auth")
            }
        })
    };
    let mut protected = 0;
    for cluster in &c.clusters {
        let routes: Vec<_> = c
            .routes
            .iter()
            .filter(|r| r.cluster == cluster.name)
            .collect();
        let guarded = |r: &&weir_config::RouteConfig| r.filters.iter().any(|f| auth(&f.name));
        if routes.iter().any(guarded) {
            protected += 1;
            for r in &routes {
                assert!(
                    guarded(r),
                    "route {:?} reaches cluster {:?}, which auth filters protect, without one",
                    r.name,
                    cluster.name
                );
            }
        }
    }
    assert!(protected >= 2, "the quickstart shows protected clusters");
    Ok(())
}
