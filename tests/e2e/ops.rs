//! End-to-end: operating weir — admin API, metrics, access log, drain, reload, and the CLI.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use anyhow::Result;

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
            "address": up.addr.to_string(), "weight": 3, "healthy": true, "ejected": false, "probes": "off", "warming": false, "in_flight": 0,
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
    // Waits for the reason itself, not only the rejection's first words.
    weir.eventually("the reload rejection naming file, line and field", async || {
        weir.stderr_text().contains(
            "weir.yaml:3: routes[0].cluster: unknown cluster \"bakend\" (did you mean \"backend\"?)",
        )
    })
    .await?;
    assert!(weir.stderr_text().contains("reload rejected"));
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
            "clusters: [ { name: c, endpoints: [ { address: 127.0.0.1:1 } ] } ]\nroutes:\n  - name: app\n    cluster: c\n    tags: [ ok, \"bad tag\" ]\n",
            "bad.yaml:5: routes[0].tags[1]: \"bad tag\" is not a tag",
        ),
        (
            "clusters: [ { name: c, endpoints: [ { address: 127.0.0.1:1 } ] } ]\nroutes:\n  - name: app\n    cluster: c\n    enabled: false\n    disabled_response: { status: 302 }\n",
            "bad.yaml:6: routes[0].disabled_response.status: 302 is not an error status (400 to 599)",
        ),
        (
            "tracing:\n  sample_ratio: 1.5\n",
            "bad.yaml:2: tracing.sample_ratio: 1.5 is not a ratio from 0 to 1",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"https://collector:4318\" }\n",
            "bad.yaml:2: tracing.otlp.endpoint: https is not supported yet",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"http://user:pw@collector:4318\" }\n",
            "bad.yaml:2: tracing.otlp.endpoint: must name host:port (and no credentials)",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"http://collector:4318/otlp?key=1\" }\n",
            "bad.yaml:2: tracing.otlp.endpoint: must not have a query or fragment",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"http://collector\" }\n",
            "bad.yaml:2: tracing.otlp.endpoint: must name a port",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"collector:4318\" }\n",
            "bad.yaml:2: tracing.otlp.endpoint: must start with http://",
        ),
        (
            "tracing:\n  otlp:\n    endpoint: \"http://127.0.0.1:4318\"\n    max_queue_spans: 0\n",
            "bad.yaml:4: tracing.otlp.max_queue_spans: 0 is not from 1 to 1000000",
        ),
        (
            "tracing:\n  otlp:\n    endpoint: \"http://127.0.0.1:4318\"\n    max_queue_spans: 10\n    max_batch_spans: 11\n",
            "bad.yaml:5: tracing.otlp.max_batch_spans: 11 is not from 1 to max_queue_spans",
        ),
        (
            "tracing:\n  otlp:\n    endpoint: \"http://127.0.0.1:4318\"\n    timeout: 0s\n",
            "bad.yaml:4: tracing.otlp.timeout: 0ns is not from 10ms to 60s",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"http://collector:4317/v1\", protocol: grpc }\n",
            "bad.yaml:2: tracing.otlp.endpoint: a grpc endpoint takes no path",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"http://collector:4317\", protocol: thrift }\n",
            "bad.yaml:2: tracing.otlp.protocol: unknown variant \"thrift\"",
        ),
        (
            "tracing:\n  service_name: \"\"\n",
            "bad.yaml:2: tracing.service_name: must be 1 to 255 characters",
        ),
        (
            "access_log: {}\n",
            "bad.yaml:1: access_log: give a path (stdout, stderr or a file), kafka, or both",
        ),
        (
            "access_log:\n  kafka:\n    brokers: [ \"kafka\" ]\n    topic: t\n",
            "bad.yaml:3: access_log.kafka.brokers[0]: invalid address \"kafka\"",
        ),
        (
            "access_log:\n  kafka:\n    brokers: []\n    topic: t\n",
            "bad.yaml:3: access_log.kafka.brokers: give 1 to 16 brokers",
        ),
        (
            "access_log:\n  kafka:\n    brokers: [ 127.0.0.1:9092 ]\n    topic: \"web logs\"\n",
            "bad.yaml:4: access_log.kafka.topic: \"web logs\" is not a Kafka topic name",
        ),
        (
            "access_log:\n  kafka:\n    brokers: [ 127.0.0.1:9092 ]\n    topic: t\n    acks: 2\n",
            "bad.yaml:5: access_log.kafka.acks: acks must be 0, 1 or all",
        ),
        (
            "access_log:\n  kafka:\n    brokers: [ 127.0.0.1:9092 ]\n    topic: t\n    compression: zstd\n",
            "bad.yaml:5: access_log.kafka.compression: unknown variant \"zstd\"",
        ),
        (
            "access_log:\n  kafka:\n    brokers: [ 127.0.0.1:9092 ]\n    topic: t\n    max_queue_lines: 0\n",
            "bad.yaml:5: access_log.kafka.max_queue_lines: 0 is not from 1 to 1000000",
        ),
        (
            "access_log:\n  kafka:\n    brokers: [ 127.0.0.1:9092 ]\n    topic: t\n    linger: 2m\n",
            "bad.yaml:5: access_log.kafka.linger: 120s is not from 1ms to 60s",
        ),
        (
            "tracing:\n  otlp: { endpoint: \"http://127.0.0.1:4318\", headers: { x: y } }\n",
            "bad.yaml:2: tracing.otlp.headers: unknown field \"headers\"",
        ),
        (
            "clusters: [ { name: c, endpoints: [ { address: 127.0.0.1:1 } ] } ]\nroutes:\n  - name: app\n    cluster: c\n    enabled: maybe\n",
            "bad.yaml:5: routes[0].enabled: invalid type",
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
            "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    backlog: 0\n",
            "bad.yaml:4: listeners[0].backlog: 0 is out of range (1 to 65535)",
        ),
        (
            "listeners:\n  - name: a\n    listen: 127.0.0.1:0\n    backlog: -1\n",
            "bad.yaml:4: listeners[0].backlog: invalid value",
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

// ---------------------------------------------------------------------------------------------
// The admin plane (issue #11): secrets, tokens, Host, the Unix socket, bounds.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Every secret below contains this, so one search finds any of them.
const SECRET: &str = "S3CRET";

/// Sends raw bytes on a new connection and reads until the server closes it (or 10 s pass).
async fn raw<S>(mut s: S, request: &[u8]) -> Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(request).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn raw_tcp(addr: std::net::SocketAddr, request: &str) -> Result<String> {
    raw(
        tokio::net::TcpStream::connect(addr).await?,
        request.as_bytes(),
    )
    .await
}

/// The status code of a raw response ("" when none came).
fn status_of(response: &str) -> &str {
    response.split(' ').nth(1).unwrap_or("")
}

fn testbed_config(up: &Upstream, filters: &str, routes: &str) -> String {
    format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
clusters: [ {{ name: backend, endpoints: [ {{ address: \"{}\" }} ] }} ]\n\
filters:\n{}\
routes:\n{routes}",
        up.addr,
        filters.replace("{wasm}", &filter_wasm("weir-testbed").display().to_string())
    )
}

/// `GET /config` (JSON and YAML) shows the shape of the config but no filter config value, no
/// token, and no file a filter config names; `GET /filters` neither.
#[tokio::test]
async fn admin_config_never_shows_a_filter_secret_or_the_token() -> Result<()> {
    let up = Upstream::start("up").await;
    let dir = TempDir::new();
    dir.write("body.txt", "S3CRET-FILE-0123456789\n");
    let filters = concat!(
        "  - { name: edit, module: \"{wasm}\", config: { mode: header-edit, value: S3CRET-VALUE-0123456789, tag: S3CRET-t } }\n",
        "  - { name: answer, module: \"{wasm}\", config: { mode: respond, body: { $text_file: body.txt }, headers: [ [ x-key, S3CRET-KEY-abc ] ] } }\n",
    );
    let routes = concat!(
        "  - { name: one, match: { path_prefix: /one }, cluster: backend, filters: [ edit ] }\n",
        "  - { name: two, match: { path_prefix: /two }, cluster: backend, filters: [ { name: edit, config: { value: S3CRET-ROUTE-0123456789 } } ] }\n",
        "  - { name: three, match: { path_prefix: /three }, cluster: backend, filters: [ answer ] }\n",
    );
    let weir = Weir::start_in(
        dir,
        &format!(
            "admin: {{ listen: 127.0.0.1:0, token: S3CRET-TOKEN-0123456789 }}\n{}",
            testbed_config(&up, filters, routes)
        ),
    )?;
    let auth = [("authorization", "Bearer S3CRET-TOKEN-0123456789")];
    let admin = |p: &str| format!("http://{}{p}", weir.admin);
    // The filters run with their real configs.
    assert_eq!(
        get(&weir.url("public", "/three")).await?.text(),
        "S3CRET-FILE-0123456789\n"
    );
    for path in ["/config", "/config?format=yaml", "/filters"] {
        let got = get_with(&admin(path), &auth).await?;
        assert_eq!(got.status, 200, "{path}");
        let text = got.text();
        assert!(!text.contains(SECRET), "{path} shows a secret:\n{text}");
        assert!(!text.contains("body.txt"), "{path} shows a file:\n{text}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&get_with(&admin("/config"), &auth).await?.text())?;
    assert_eq!(config["admin"]["token"], "<redacted>");
    assert_eq!(config["filters"][0]["name"], "edit");
    assert_eq!(config["filters"][0]["config"], "<redacted>");
    assert_eq!(config["filters"][1]["config"], "<redacted>");
    assert_eq!(
        config["routes"][1]["filters"][0],
        serde_json::json!({ "name": "edit", "config": "<redacted>" })
    );
    assert_eq!(
        config["routes"][0]["filters"][0],
        serde_json::json!({ "name": "edit" })
    );
    assert!(
        !weir.stderr_text().contains(SECRET),
        "{}",
        weir.stderr_text()
    );
    Ok(())
}

/// A filter quotes the config value it refuses (and serde the value of a mistyped field): in an
/// admin API answer, a reload's message and `weir validate`, the config's secrets are masked,
/// also secrets of the file that the API caller never sent, and the text of a file the config
/// inlines.
#[tokio::test]
async fn admin_errors_and_validate_never_echo_a_config_secret_or_file() -> Result<()> {
    let up = Upstream::start("up").await;
    let dir = TempDir::new();
    dir.write("key.txt", "S3CRET-FILE-0123456789\n-----END KEY-----\n");
    // `lurker` is valid YAML but the testbed refuses it (and quotes its path): no route uses it
    // yet, so the proxy starts.
    let filters = concat!(
        "  - { name: ok, module: \"{wasm}\", config: { mode: noop } }\n",
        "  - { name: lurker, module: \"{wasm}\", config: { mode: callout, target: backend, path: S3CRET-PATH-0123456789 } }\n",
    );
    let routes =
        "  - { name: one, match: { path_prefix: /one }, cluster: backend, filters: [ ok ] }\n";
    let weir = Weir::start_in(dir, &testbed_config(&up, filters, routes))?;

    // The API caller never sent the path; the answer must not hand it over.
    let (status, body) = weir
        .admin(
            "PUT",
            "/routes/two",
            r#"{"match": {"path_prefix": "/two"}, "cluster": "backend", "filters": ["lurker"]}"#,
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains(SECRET), "{body}");
    assert!(
        body.contains("filter \\\"lurker\\\" rejected its config: callout: path must start with /, got \\\"<redacted>\\\""),
        "the message still says what is wrong: {body}"
    );

    // A reload of a file whose filter refuses a secret: refused, masked, old config serving.
    let good = std::fs::read_to_string(&weir.config)?;
    let cases = [
        (
            "path: S3CRET-PATH-0123456789",
            "callout: path must start with /",
        ),
        (
            "path: { $text_file: key.txt }",
            "callout: path must start with /",
        ),
        ("mode: S3CRET-MODE-0123456789", "unknown variant"),
    ];
    for (edit, want) in cases {
        let text = good
            .replace(
                "mode: callout, target: backend, path: S3CRET-PATH-0123456789",
                &format!("mode: callout, target: backend, {edit}"),
            )
            .replace("filters: [ ok ]", "filters: [ ok, lurker ]");
        let text = if edit.starts_with("mode:") {
            text.replace("mode: callout, target: backend, mode:", "mode:")
        } else {
            text
        };
        std::fs::write(&weir.config, &text)?;
        let (status, body) = weir.admin("POST", "/reload", "").await?;
        assert_eq!(status, 400, "{edit}: {body}");
        assert!(!body.contains(SECRET), "{edit}: {body}");
        assert!(body.contains(want), "{edit}: want {want:?} in {body}");

        // `weir validate` on the same file.
        let (code, out, err) = weir_cmd(&["validate", weir.config.to_str().unwrap()])?;
        assert_eq!(code, 1, "{edit}: {err}");
        assert!(
            !out.contains(SECRET) && !err.contains(SECRET),
            "{edit}: {out}{err}"
        );
        assert!(
            err.contains(
                "weir.yaml:9: routes[0].filters[1]: filter \"lurker\" rejected its config"
            ),
            "{edit}: {err}"
        );
    }
    std::fs::write(&weir.config, &good)?;
    assert_eq!(get(&weir.url("public", "/one")).await?.status, 200);
    weir.signal(1);
    std::fs::write(
        &weir.config,
        good.replace("filters: [ ok ]", "filters: [ lurker ]"),
    )?;
    weir.signal(1);
    weir.eventually("the reload rejection", async || {
        weir.stderr_text().contains("reload rejected")
    })
    .await?;
    assert!(
        !weir.stderr_text().contains(SECRET),
        "{}",
        weir.stderr_text()
    );
    Ok(())
}

/// `weir validate` never prints a secret: not of a good config, not a mistyped value, not a file
/// that is not a config at all.
#[test]
fn validate_never_prints_a_secret() -> Result<()> {
    let dir = TempDir::new();
    let wasm = filter_wasm("weir-testbed").display().to_string();
    let good = format!(
        "admin: {{ listen: 127.0.0.1:0, token: S3CRET-TOKEN }}\n\
filter_cache: \"{}/cache\"\n\
clusters: [ {{ name: c, endpoints: [ {{ address: 127.0.0.1:9 }} ] }} ]\n\
filters: [ {{ name: f, module: \"{wasm}\", config: {{ mode: header-edit, value: S3CRET-VALUE-0123456789 }} }} ]\n\
routes: [ {{ name: r, match: {{ path_prefix: / }}, cluster: c, filters: [ f ] }} ]\n",
        dir.0.display()
    );
    let (code, out, err) =
        weir_cmd(&["validate", dir.write("good.yaml", &good).to_str().unwrap()])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(": ok (0 listeners, 1 routes, 1 clusters, 1 filters)"),
        "{out}"
    );
    assert!(!out.contains(SECRET) && !err.contains(SECRET), "{out}{err}");

    let cases = [
        (
            good.replace("mode: header-edit, value: S3CRET-VALUE-0123456789", "mode: respond, status: S3CRET-STATUS-0123456789"),
            "invalid type: string \"<redacted>\", expected u16",
        ),
        (
            good.replace("mode: header-edit, value: S3CRET-VALUE-0123456789", "mode: header-edit, S3CRET-KEY-0123456789: x"),
            "rejected its config: config: unknown field `<redacted>`",
        ),
        ("S3CRET-NOT-A-CONFIG-0123456789\n".to_string(), "invalid type: string, expected struct Config"),
        ("-----BEGIN PRIVATE KEY-----\nS3CRETMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n".to_string(), "bad.yaml:"),
        ("admin: S3CRET-ADMIN-0123456789\n".to_string(), "admin: invalid type: string, expected struct AdminConfig"),
        ("workers: S3CRET-0123456789\n".to_string(), "workers: invalid type: string"),
        ("admin: { token: \"S3CRET with spaces\" }\n".to_string(), "admin.token: must be printable ASCII"),
        // A refused OTLP endpoint is not echoed: it may carry a password or an API key.
        ("tracing: { otlp: { endpoint: \"http://u:S3CRET-PW@c:4318\" } }\n".to_string(), "tracing.otlp.endpoint: must name host:port"),
        ("tracing: { otlp: { endpoint: \"http://c:4318/v1?api_key=S3CRET-KEY\" } }\n".to_string(), "tracing.otlp.endpoint: must not have a query"),
        ("tracing: { otlp: { endpoint: \"ftp://u:S3CRET-PW@c:4318\" } }\n".to_string(), "tracing.otlp.endpoint: must start with http://"),
    ];
    for (text, want) in cases {
        let bad = dir.write("bad.yaml", &text);
        let (code, out, err) = weir_cmd(&["validate", bad.to_str().unwrap()])?;
        assert_eq!(code, 1, "{text}\n{err}");
        assert!(
            !out.contains(SECRET) && !err.contains(SECRET),
            "{text}\n{out}{err}"
        );
        assert!(err.contains(want), "want {want:?} in:\n{err}");
    }
    Ok(())
}

/// Without `admin.token`, weir generates one (0600, beside the config, reused), says where it
/// is but never what it is, and every write needs it; reads stay open on loopback. The CLI
/// finds it from the config.
#[tokio::test]
async fn admin_writes_need_the_generated_token_and_the_cli_finds_it() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let up = Upstream::start("u").await;
    let weir = Weir::start(&one_route(&up, ""))?;
    let file = weir.dir.path(".weir-admin-token");
    let token = std::fs::read_to_string(&file)?.trim().to_string();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        std::fs::metadata(&file)?.permissions().mode() & 0o777,
        0o600
    );
    let stderr = weir.stderr_text();
    assert!(
        stderr.contains(&format!(
            "weir: admin writes need the token in {}",
            file.display()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&token),
        "the token is never printed: {stderr}"
    );

    let url = |p: &str| format!("http://{}{p}", weir.admin);
    for path in [
        "/healthz",
        "/ready",
        "/metrics",
        "/config",
        "/clusters",
        "/filters",
    ] {
        assert_eq!(get(&url(path)).await?.status, 200, "{path} stays open");
    }
    let writes = [
        ("POST", "/reload", ""),
        (
            "PUT",
            "/routes/x",
            r#"{"match": {"path_prefix": "/x"}, "cluster": "backend"}"#,
        ),
        ("DELETE", "/routes/app", ""),
        (
            "PUT",
            "/clusters/x",
            r#"{"endpoints": [{"address": "127.0.0.1:9"}]}"#,
        ),
        ("DELETE", "/clusters/backend", ""),
        ("PUT", "/filters/x", "not wasm"),
        ("POST", "/filters/x/rollback", ""),
        ("DELETE", "/filters/x", ""),
        ("PATCH", "/config", ""),
    ];
    let wrong = format!("Bearer {}", &token[..63]);
    let lower = format!("bearer {token}");
    let presented: [Option<&str>; 5] = [
        None,
        Some("Bearer "),
        Some("Bearer secret"),
        Some(&wrong),
        Some(&lower),
    ];
    for (method, path, body) in writes {
        for auth in presented {
            let mut req = http::Request::builder().method(method).uri(url(path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let got = send(&h1_client(), req.body(full(body))?).await?;
            assert_eq!(
                got.status,
                401,
                "{method} {path} with {auth:?}: {}",
                got.text()
            );
            assert!(
                got.text().contains(".weir-admin-token"),
                "says where: {}",
                got.text()
            );
            assert!(!got.text().contains(&token));
        }
    }
    assert_eq!(
        get(&weir.url("public", "/")).await?.status,
        200,
        "nothing changed"
    );
    let (status, body) = weir.admin("POST", "/reload", "").await?;
    assert_eq!(status, 200, "{body}");

    // The CLI: with the config it finds the token; without, it is refused.
    let admin = format!("http://{}", weir.admin);
    let cfg = weir.config.to_str().unwrap();
    let (code, out, err) = weir_cmd(&["reload", "--admin", &admin, "--config", cfg])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reloaded"), "{out}");
    let (code, _, err) = weir_cmd(&["reload", "--admin", &admin])?;
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let out = Command::new(weir_bin())
        .args(["reload", "--admin", &admin])
        .env("WEIR_CONFIG", cfg)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A token file someone else could know is refused at start, without printing its contents.
#[test]
fn a_token_file_others_can_read_is_refused() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new();
    let file = dir.write(
        ".weir-admin-token",
        "S3CRET0123456789abcdef0123456789abcdef\n",
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    let cfg = dir.write("w.yaml", "admin: { listen: 127.0.0.1:0 }\n");
    let out = Command::new(weir_bin()).arg("run").arg(&cfg).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("can be read or written by other users (mode 644; want 600); remove it to get a new token"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
    Ok(())
}

/// Only a `Host` that names the admin listener is served (DNS rebinding sends the attacker's
/// name): its IP, loopback, `localhost` and `admin.hosts`, with its port; HTTP/1.0 may omit it.
#[tokio::test]
async fn admin_refuses_a_host_that_is_not_its_own() -> Result<()> {
    let up = Upstream::start("u").await;
    let weir = Weir::start(&one_route(
        &up,
        "admin: { listen: 127.0.0.1:0, hosts: [ admin.test ] }\n",
    ))?;
    let port = weir.admin.port();
    let token = weir.admin_token();
    let cases: Vec<(String, &str)> = vec![
        (
            format!("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"),
            "200",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: localhost:{port}\r\n"),
            "200",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: LocalHost.:{port}\r\n"),
            "200",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: [::1]:{port}\r\n"),
            "200",
        ),
        (
            "GET /healthz HTTP/1.1\r\nhost: admin.test\r\n".to_string(),
            "200",
        ),
        ("GET /healthz HTTP/1.0\r\n".to_string(), "200"),
        (
            format!("GET /config HTTP/1.1\r\nhost: evil.example:{port}\r\n"),
            "421",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: evil.example:{port}\r\n"),
            "421",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1.nip.io:{port}\r\n"),
            "421",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: localhost.evil.example:{port}\r\n"),
            "421",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: admin.test.evil.example:{port}\r\n"),
            "421",
        ),
        (
            "GET /healthz HTTP/1.1\r\nhost: localhost\r\n".to_string(),
            "421",
        ),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n",
                port.wrapping_add(1)
            ),
            "421",
        ),
        (
            format!("GET /healthz HTTP/1.1\r\nhost: 10.1.2.3:{port}\r\n"),
            "421",
        ),
        (
            format!("GET /healthz HTTP/1.0\r\nhost: evil.example:{port}\r\n"),
            "421",
        ),
        (
            format!(
                "GET http://evil.example:{port}/healthz HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            ),
            "421",
        ),
        (
            format!(
                "POST /reload HTTP/1.1\r\nhost: evil.example:{port}\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\n"
            ),
            "421",
        ),
        ("GET /healthz HTTP/1.1\r\n".to_string(), "400"),
        (
            format!(
                "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nhost: evil.example:{port}\r\n"
            ),
            "400",
        ),
        (
            format!(
                "POST /reload HTTP/1.1\r\nhost: localhost:{port}\r\nauthorization: Bearer {token}\r\ncontent-length: 0\r\n"
            ),
            "200",
        ),
    ];
    for (head, want) in cases {
        let got = raw_tcp(weir.admin, &format!("{head}connection: close\r\n\r\n")).await?;
        assert_eq!(status_of(&got), want, "{head:?}\n{got}");
        if want == "421" {
            assert!(got.contains("does not name this admin listener"), "{got}");
        }
    }
    Ok(())
}

/// `admin.unix` serves the same API on a socket only this user can open (mode 0600), replaces
/// a stale socket, needs the same token for writes, and is removed at exit. The CLI uses it from
/// the config.
#[tokio::test]
async fn admin_serves_the_same_api_on_a_private_unix_socket() -> Result<()> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    let up = Upstream::start("u").await;
    let dir = TempDir::new();
    let sock = dir.path("admin.sock");
    // A socket left behind by a process that is gone.
    drop(std::os::unix::net::UnixListener::bind(&sock)?);
    assert!(std::fs::symlink_metadata(&sock)?.file_type().is_socket());
    let mut weir = Weir::start_in(
        dir,
        &one_route(&up, "admin: { listen: 127.0.0.1:0, unix: admin.sock }\n"),
    )?;
    let meta = std::fs::symlink_metadata(&sock)?;
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        weir.stderr_text()
            .contains(&format!("weir: admin listening on unix:{}", sock.display())),
        "{}",
        weir.stderr_text()
    );
    let unix = async |req: String| -> Result<String> {
        raw(
            tokio::net::UnixStream::connect(&sock).await?,
            req.as_bytes(),
        )
        .await
    };
    let got = unix("GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".into()).await?;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("ok\n"),
        "{got}"
    );
    // No Host check on the socket: only this user can connect.
    let got =
        unix("GET /clusters HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n".into())
            .await?;
    assert_eq!(status_of(&got), "200", "{got}");
    let got = unix(
        "POST /reload HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
    )
    .await?;
    assert_eq!(status_of(&got), "401", "{got}");
    let got = unix(format!(
        "POST /reload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        weir.admin_token()
    ))
    .await?;
    assert_eq!(status_of(&got), "200", "{got}");

    // The CLI: the config names the socket and the token.
    let (code, out, err) = weir_cmd(&["reload", "--config", weir.config.to_str().unwrap()])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reloaded"), "{out}");
    let (code, _, err) = weir_cmd(&["reload", "--admin", &format!("unix:{}", sock.display())])?;
    assert_eq!(code, 1, "no token: refused");
    assert!(err.contains("401"), "{err}");

    weir.signal(15);
    assert_eq!(weir.wait_exit(Duration::from_secs(10))?, Some(0));
    assert!(!sock.exists(), "the socket is removed at exit");
    Ok(())
}

/// An idle admin keep-alive connection does not hold up SIGTERM: the process exits at once,
/// not after `drain_timeout`.
#[tokio::test]
async fn sigterm_does_not_wait_for_an_idle_admin_connection() -> Result<()> {
    let up = Upstream::start("u").await;
    let mut weir = Weir::start(&one_route(&up, "drain_timeout: 30s\n"))?;
    let mut idle = tokio::net::TcpStream::connect(weir.admin).await?;
    idle.write_all(format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", weir.admin).as_bytes())
        .await?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await??;
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A second one that never sent anything.
    let _silent = tokio::net::TcpStream::connect(weir.admin).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    weir.signal(15);
    let code = weir.wait_exit(Duration::from_secs(5))?;
    assert_eq!(code, Some(0), "{}", weir.stderr_text());
    assert!(sent.elapsed() < Duration::from_secs(5));
    assert!(
        weir.stderr_text().contains("drained, bye"),
        "{}",
        weir.stderr_text()
    );
    Ok(())
}

/// Admin connections are bounded: at most 64 open (more wait), a head within
/// `limits.request_head_timeout` (a silent or slow client is cut), bodies capped (413) and
/// timed (408).
#[tokio::test]
async fn admin_connections_heads_and_bodies_are_bounded() -> Result<()> {
    let up = Upstream::start("u").await;
    let weir = Weir::start(&one_route(
        &up,
        "limits: { request_head_timeout: 1s, request_body_timeout: 1s }\n",
    ))?;
    let addr = weir.admin;
    let token = weir.admin_token();

    // A client that never speaks, and one that never finishes its head, are cut.
    for start in ["", "GET /healthz HTTP/1.1\r\nhost: x"] {
        let t = Instant::now();
        let got = raw_tcp(addr, start).await?;
        assert!(
            t.elapsed() < Duration::from_secs(5) && !got.contains("200"),
            "{start:?}: {:?} {got}",
            t.elapsed()
        );
    }

    // Bodies: 1 MiB for JSON, 64 MiB for a module; announced or streamed, 413.
    let head = |method: &str, path: &str, len: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n{len}connection: close\r\n\r\n"
        )
    };
    for (path, len) in [
        ("/routes/x", (1 << 20) + 1),
        ("/clusters/x", 2 << 20),
        ("/filters/x", (64 << 20) + 1),
    ] {
        let got = raw_tcp(
            addr,
            &head("PUT", path, &format!("content-length: {len}\r\n")),
        )
        .await?;
        assert_eq!(status_of(&got), "413", "{path} {len}: {got}");
    }
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(head("PUT", "/routes/x", "transfer-encoding: chunked\r\n").as_bytes())
        .await?;
    let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
    for _ in 0..17 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert_eq!(status_of(&String::from_utf8_lossy(&out)), "413");
    // Under the cap the upload goes through to the API (no such filter: 404).
    let module = vec![b'x'; 3 << 20];
    let (status, body) = weir.admin("PUT", "/filters/x", module).await?;
    assert_eq!(status, 404, "{body}");
    // A body that stops arriving: 408.
    let got = raw_tcp(
        addr,
        &format!(
            "{}{{\"clu",
            head("PUT", "/routes/x", "content-length: 100\r\n")
        ),
    )
    .await?;
    assert_eq!(status_of(&got), "408", "{got}");

    // 64 connections: the 65th waits until one closes.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        // Half a head: each holds a place until the head timeout.
        s.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = tokio::spawn(raw_tcp(
        addr,
        "GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!waiting.is_finished(), "a 65th admin connection was served");
    drop(held);
    let got = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    assert!(
        got.starts_with("HTTP/1.1 421") || got.starts_with("HTTP/1.1 200"),
        "{got}"
    );
    Ok(())
}

/// Routes switched off and on live (admin API, by name and by tag) and in the config: a
/// disabled route answers its `disabled_response` itself (never the upstream, never another
/// route), the change shows on `/routes`, `/config`, `/metrics` and in the access log, and
/// traffic on the other routes never fails while it happens.
#[tokio::test]
async fn routes_switch_off_and_on_live_by_name_and_tag_without_touching_the_others() -> Result<()> {
    let up = Upstream::start("u").await;
    let weir = Weir::start(&format!(
        "access_log: {{ path: \"{{dir}}/access.log\" }}\n\
filter_cache: \"{{dir}}/cache\"\n\
filters: [ {{ name: tb, module: \"{}\", config: {{ mode: noop }} }} ]\n\
listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes:\n\
  - {{ name: orders, match: {{ path_prefix: /orders }}, cluster: backend, tags: [ v1, billing ] }}\n\
  - {{ name: users, match: {{ path_prefix: /users }}, cluster: backend, tags: [ v1 ] }}\n\
  - {{ name: beta, match: {{ path_prefix: /beta }}, cluster: backend, enabled: false, disabled_response: {{ status: 503, body: {{ error: beta closed, retry: [ later ] }} }} }}\n\
  - {{ name: rest, match: {{ path_prefix: / }}, cluster: backend, filters: [ tb ] }}\n\
clusters: [ {{ name: backend, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        filter_wasm("weir-testbed").display(),
        up.addr
    ))?;
    // The catch-all route's filter pool: a switch elsewhere must leave it (and its instances)
    // alone, so its guest-call count only grows.
    let guest_calls = async || -> Result<u64> {
        let (_, f) = weir.admin_get("/filters").await?;
        let f: serde_json::Value = serde_json::from_str(&f)?;
        Ok(f[0]["pools"][0]["guest_calls"].as_u64().unwrap_or(0))
    };
    let url = |p: &str| weir.url("public", p);

    // Disabled in the file: its own answer, as JSON, and the upstream never sees it.
    let got = get(&url("/beta/x")).await?;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert!(got.header("x-request-id").is_some());
    let body: serde_json::Value = serde_json::from_str(&got.text())?;
    assert_eq!(
        body,
        serde_json::json!({ "error": "beta closed", "retry": ["later"] })
    );
    assert_eq!(up.count(), 0, "a disabled route never contacts its cluster");

    // Steady traffic on `rest` (through its filter) while the others are switched: none may
    // fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, rest) = (stop.clone(), url("/other"));
        tokio::spawn(async move {
            let (mut ok, mut bad) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get(&rest).await {
                    Ok(g) if g.status == 200 => ok += 1,
                    Ok(g) => bad.push(g.status.as_u16().to_string()),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (ok, bad)
        })
    };

    assert_eq!(get(&url("/orders/7")).await?.status, 200);
    assert_eq!(get(&url("/other")).await?.status, 200);
    let calls_before = guest_calls().await?;
    assert!(calls_before > 0, "the filter ran");
    let (status, body) = weir.admin("POST", "/routes/orders/disable", "").await?;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        v,
        serde_json::json!({ "enabled": false, "routes": ["orders"] })
    );
    let orders_seen = || {
        up.seen()
            .iter()
            .filter(|s| s.path.starts_with("/orders"))
            .count()
    };
    let seen = orders_seen();
    let got = get(&url("/orders/7")).await?;
    assert_eq!(
        got.status, 404,
        "matched and answered, not passed on to the catch-all route"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&got.text())?,
        serde_json::json!({ "error": "not found" })
    );
    assert_eq!(
        orders_seen(),
        seen,
        "the disabled route's request never reached the upstream"
    );

    let (_, routes) = weir.admin_get("/routes").await?;
    let routes: serde_json::Value = serde_json::from_str(&routes)?;
    assert_eq!(
        routes[0],
        serde_json::json!({ "name": "orders", "cluster": "backend", "enabled": false, "tags": ["v1", "billing"] })
    );
    assert_eq!(routes[1]["enabled"], true);
    let (_, config) = weir.admin_get("/config").await?;
    let config: serde_json::Value = serde_json::from_str(&config)?;
    assert_eq!(config["routes"][0]["enabled"], false);
    assert_eq!(config["routes"][2]["disabled_response"]["status"], 503);
    assert_eq!(
        weir.sample("weir_route_enabled{route=\"orders\"}").await?,
        0.0
    );
    assert_eq!(
        weir.sample("weir_route_enabled{route=\"users\"}").await?,
        1.0
    );
    assert_eq!(
        weir.sample("weir_route_enabled{route=\"beta\"}").await?,
        0.0
    );
    assert_eq!(
        weir.sample("weir_route_disabled_requests_total{route=\"orders\",cluster=\"backend\"}")
            .await?,
        1.0
    );
    assert_eq!(
        weir.sample("weir_requests_total{route=\"orders\",cluster=\"backend\",status=\"404\"}")
            .await?,
        1.0
    );

    // By tag: both v1 routes go, the untagged ones stay.
    let (status, body) = weir.admin("POST", "/routes/disable?tag=v1", "").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)?["routes"],
        serde_json::json!(["orders", "users"])
    );
    assert_eq!(get(&url("/users/1")).await?.status, 404);
    assert_eq!(get(&url("/other")).await?.status, 200);
    assert!(
        guest_calls().await? > calls_before,
        "the other route's filter pool was carried over, not rebuilt, by two switches"
    );
    let (status, body) = weir.admin("POST", "/routes/enable?tag=v1", "").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&url("/users/1")).await?.status, 200);
    assert_eq!(get(&url("/orders/7")).await?.status, 200);
    assert_eq!(
        weir.sample("weir_route_enabled{route=\"orders\"}").await?,
        1.0
    );
    let (status, _) = weir.admin("POST", "/routes/beta/enable", "").await?;
    assert_eq!(status, 200);
    assert_eq!(get(&url("/beta/x")).await?.status, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, bad) = load.await?;
    assert!(
        ok > 0 && bad.is_empty(),
        "traffic on another route failed while routes were switched: {ok} ok, {bad:?}"
    );

    // Mistakes are refused and change nothing; writes need the token.
    assert_eq!(weir.admin("POST", "/routes/nope/disable", "").await?.0, 404);
    assert_eq!(
        weir.admin("POST", "/routes/disable?tag=nope", "").await?.0,
        404
    );
    assert_eq!(
        weir.admin("POST", "/routes/disable?tag=a%20b", "").await?.0,
        400
    );
    assert_eq!(weir.admin("POST", "/routes/disable", "").await?.0, 400);
    let anonymous = send(
        &h1_client(),
        http::Request::post(format!("http://{}/routes/orders/disable", weir.admin))
            .body(full(""))?,
    )
    .await?;
    assert_eq!(anonymous.status, 401);
    assert_eq!(get(&url("/orders/7")).await?.status, 200);

    // The access log says why the disabled requests got the proxy's own answer.
    let disabled_count =
        |l: &[serde_json::Value]| l.iter().filter(|v| v["reason"] == "route_disabled").count();
    let lines = weir
        .access_log("the access log lines", |l| disabled_count(l) >= 3)
        .await?;
    let disabled: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["reason"] == "route_disabled")
        .collect();
    assert_eq!(disabled.len(), 3, "{lines:?}");
    assert_eq!(
        (
            disabled[0]["route"].as_str(),
            disabled[0]["status"].as_u64()
        ),
        (Some("beta"), Some(503))
    );
    assert_eq!(
        (
            disabled[1]["route"].as_str(),
            disabled[1]["status"].as_u64()
        ),
        (Some("orders"), Some(404))
    );
    assert!(
        lines
            .iter()
            .filter(|v| v["status"] == 200)
            .all(|v| v.get("reason").is_none()),
        "proxied requests carry no reason"
    );
    Ok(())
}

/// W3C Trace Context with `tracing:` on: a valid `traceparent` is continued (same trace, the
/// caller's sampling decision, this proxy's span as the upstream's parent, `tracestate` kept);
/// none or a malformed one starts a new trace sampled at the ratio and drops `tracestate`; the
/// access log carries the trace and span ids. With `tracing:` off the headers pass untouched.
///
/// Through both upstream clients: the native one writes the proxy's `traceparent` into the head
/// it sends, hyper's gets it in the header map; either way exactly one reaches the upstream.
#[tokio::test]
async fn trace_context_is_continued_or_started_and_passed_upstream() -> Result<()> {
    for client in ["native", "hyper"] {
        trace_context_through(client).await?;
    }
    Ok(())
}

async fn trace_context_through(client: &str) -> Result<()> {
    let up = Upstream::start("u").await;
    let cfg = one_route(
        &up,
        "access_log: { path: \"{dir}/access.log\" }\ntracing: { sample_ratio: 0 }\n",
    )
    .replace("] } ]", &format!("], client: {client} }} ]"));
    assert!(cfg.contains(&format!("client: {client}")));
    let weir = Weir::start(&cfg)?;
    let parse = |v: &str| -> (String, String, String) {
        let p: Vec<&str> = v.split('-').collect();
        assert_eq!((p.len(), p[0], v.len()), (4, "00", 55), "{v}");
        (p[1].to_string(), p[2].to_string(), p[3].to_string())
    };
    let upstream_trace = || {
        let seen = up.last();
        assert!(
            seen.headers.get_all("traceparent").iter().count() <= 1,
            "{client}: one traceparent at most: {:?}",
            seen.headers
        );
        let tp = seen
            .headers
            .get("traceparent")
            .map(|v| v.to_str().unwrap().to_string());
        let ts = seen
            .headers
            .get("tracestate")
            .map(|v| v.to_str().unwrap().to_string());
        (tp.expect("the upstream gets a traceparent"), ts)
    };

    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    get_with(
        &weir.url("public", "/a"),
        &[("traceparent", caller), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await?;
    let (tp, ts) = upstream_trace();
    let (trace, parent, flags) = parse(&tp);
    assert_eq!(
        trace, "0af7651916cd43dd8448eb211c80319c",
        "the caller's trace continues"
    );
    assert_ne!(
        parent, "b7ad6b7169203331",
        "the upstream's parent is the proxy's own span"
    );
    assert_eq!(
        flags, "01",
        "the caller's sampling decision stands over ratio 0"
    );
    assert_eq!(ts.as_deref(), Some("congo=t61rcWkgMzE"));
    let proxy_span = parent;

    get(&weir.url("public", "/b")).await?;
    let (tp, ts) = upstream_trace();
    let (trace, _, flags) = parse(&tp);
    assert_ne!(trace, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(flags, "00", "a new trace at ratio 0 is not sampled");
    assert_eq!(ts, None);

    for garbage in [
        &format!("{caller}, {caller}"),
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "hello",
    ] {
        get_with(
            &weir.url("public", "/c"),
            &[("traceparent", garbage), ("tracestate", "evil=1")],
        )
        .await?;
        let (tp, ts) = upstream_trace();
        let (trace, _, _) = parse(&tp);
        assert_ne!(
            trace, "0af7651916cd43dd8448eb211c80319c",
            "{garbage:?} must not be continued"
        );
        assert_eq!(
            ts, None,
            "{garbage:?}: the client's tracestate goes with its broken traceparent"
        );
    }
    // Two valid headers are not one trace: a new one, and neither goes on.
    get_with(
        &weir.url("public", "/c"),
        &[
            ("traceparent", caller),
            ("traceparent", caller),
            ("tracestate", "evil=1"),
        ],
    )
    .await?;
    let (tp, ts) = upstream_trace();
    assert_ne!(parse(&tp).0, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(ts, None);

    // Lines are written as responses end, not always in the order the requests were sent.
    let lines = weir
        .access_log("the first request's access log line", |l| {
            l.iter().any(|l| l["path"] == "/a")
        })
        .await?;
    let first = lines.iter().find(|l| l["path"] == "/a").unwrap();
    assert_eq!(first["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(first["span_id"], proxy_span.as_str());

    // Off: the proxy does not take part; the headers are the client's.
    let plain = Weir::start(&one_route(&up, ""))?;
    get_with(
        &plain.url("public", "/d"),
        &[("traceparent", "hello"), ("tracestate", "x=1")],
    )
    .await?;
    let (tp, ts) = upstream_trace();
    assert_eq!((tp.as_str(), ts.as_deref()), ("hello", Some("x=1")));
    Ok(())
}

/// What an OTLP/HTTP receiver got: every export request's content type, resource
/// `service.name` and spans, decoded with the official protobuf definitions.
#[derive(Default)]
pub(crate) struct Received {
    pub content_types: Vec<String>,
    pub services: Vec<String>,
    pub spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>,
}

pub(crate) async fn otlp_receiver() -> (Upstream, Arc<Mutex<Received>>) {
    use http_body_util::BodyExt;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;
    let got = Arc::new(Mutex::new(Received::default()));
    let got2 = got.clone();
    let receiver = Upstream::with("otlp", move |req, seen| {
        let got = got2.clone();
        async move {
            assert_eq!(
                (seen.method.as_str(), seen.path.as_str()),
                ("POST", "/v1/traces")
            );
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let export = ExportTraceServiceRequest::decode(body).expect("valid OTLP protobuf");
            let mut got = got.lock().unwrap();
            got.content_types.push(
                seen.headers
                    .get("content-type")
                    .map_or("", |v| v.to_str().unwrap())
                    .to_string(),
            );
            for rs in export.resource_spans {
                for kv in rs.resource.unwrap_or_default().attributes {
                    if let (true, Some(Value::StringValue(s))) =
                        (kv.key == "service.name", kv.value.and_then(|v| v.value))
                    {
                        got.services.push(s);
                    }
                }
                for ss in rs.scope_spans {
                    got.spans.extend(ss.spans);
                }
            }
            http::Response::new(full(""))
        }
    })
    .await;
    (receiver, got)
}

pub(crate) fn attr(
    span: &opentelemetry_proto::tonic::trace::v1::Span,
    key: &str,
) -> Option<String> {
    attr_of(&span.attributes, key)
}

/// The value of `key` among OTLP attributes, as text.
pub(crate) fn attr_of(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let kv = attributes.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// Spans go to an OTLP/HTTP receiver: a server span per sampled request (continuing the
/// caller's trace), a client span per upstream try (the failed first try and its retry, each
/// the parent the upstream was told of) and a span per filter phase, all children of the
/// server span; a request whose caller did not sample is not exported; the metrics count it.
// Multi-threaded: the receiver must answer while the test waits for the proxy to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_spans_are_exported_over_otlp() -> Result<()> {
    let (receiver, got) = otlp_receiver().await;
    let up = Upstream::start("u").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let yaml = format!(
        "tracing: {{ sample_ratio: 1, service_name: edge-test, otlp: {{ endpoint: \"http://{}\", flush_interval: 50ms }} }}\n\
listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
filters: [ {{ name: tag, module: \"{}\", config: {{ mode: header-edit, value: v, tag: t }} }} ]\n\
routes: [ {{ name: app, match: {{ path_prefix: / }}, cluster: backend, filters: [ tag ] }} ]\n\
clusters: [ {{ name: backend, endpoints: [ {{ address: \"{dead}\" }}, {{ address: \"{}\" }} ] }} ]\n",
        receiver.addr,
        filter_wasm("weir-testbed").display(),
        up.addr
    );
    let weir = Weir::start(&yaml)?;
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let got1 = get_with(
        &weir.url("public", "/a?token=secret"),
        &[(
            "traceparent",
            &format!("00-{caller_trace}-b7ad6b7169203331-01"),
        )],
    )
    .await?;
    assert_eq!(got1.status, 200);
    let upstream_tp = up.last().headers["traceparent"].to_str()?.to_string();
    // Not sampled by the caller: continued, never exported.
    let unsampled = "11111111111111111111111111111111";
    get_with(
        &weir.url("public", "/b"),
        &[(
            "traceparent",
            &format!("00-{unsampled}-b7ad6b7169203331-00"),
        )],
    )
    .await?;
    // A new trace at ratio 1 is sampled.
    get(&weir.url("public", "/c")).await?;

    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        {
            let got = got.lock().unwrap();
            let servers = got.spans.iter().filter(|s| s.kind == 2).count();
            if servers >= 2 {
                break got.spans.clone();
            }
        }
        assert!(Instant::now() < deadline, "spans were not exported in 10s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    {
        let got = got.lock().unwrap();
        assert!(
            got.content_types
                .iter()
                .all(|c| c == "application/x-protobuf")
        );
        assert!(
            got.services.iter().all(|s| s == "edge-test"),
            "{:?}",
            got.services
        );
    }
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) != unsampled),
        "an unsampled trace was exported"
    );
    let of_trace: Vec<_> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == caller_trace)
        .collect();
    let server = of_trace
        .iter()
        .find(|s| s.kind == 2)
        .expect("a server span for the caller's trace");
    assert_eq!(server.name, "GET app");
    assert_eq!(hex(&server.parent_span_id), "b7ad6b7169203331");
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(server, "url.path").as_deref(),
        Some("/a"),
        "no query in spans"
    );
    assert_eq!(attr(server, "weir.route").as_deref(), Some("app"));
    assert_eq!(
        attr(server, "client.address").as_deref(),
        Some("127.0.0.1"),
        "the client's address, without its port (OpenTelemetry's semantic conventions)"
    );
    assert_eq!(
        attr(server, "server.address"),
        Some(weir.addr("public").to_string()),
        "the site routing found"
    );
    assert_eq!(
        attr(server, "weir.request_id").as_deref(),
        got1.headers
            .get("x-request-id")
            .map(|v| v.to_str().unwrap()),
    );
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);
    // UNIX times: within a minute of the test's clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    assert!(now.abs_diff(server.start_time_unix_nano) < 60_000_000_000);
    for child in of_trace.iter().filter(|s| s.kind != 2) {
        assert_eq!(child.parent_span_id, server.span_id, "{}", child.name);
        assert!(child.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(
            child.end_time_unix_nano <= server.end_time_unix_nano,
            "{}",
            child.name
        );
    }
    // Client spans: the try on the dead endpoint (an error), then its retry.
    let mut tries: Vec<_> = of_trace.iter().filter(|s| s.kind == 3).collect();
    tries.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert_eq!(tries[0].name, "GET backend");
    assert_eq!(attr(tries[0], "server.address"), Some(dead.to_string()));
    assert_eq!(
        tries[0].status.as_ref().map(|s| s.code),
        Some(2),
        "an error"
    );
    assert_eq!(attr(tries[1], "server.address"), Some(up.addr.to_string()));
    assert_eq!(
        attr(tries[1], "http.request.resend_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        attr(tries[1], "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        upstream_tp,
        format!("00-{caller_trace}-{}-01", hex(&tries[1].span_id)),
        "the upstream's parent is the try that reached it"
    );
    // Internal spans: the filter's two phases.
    let mut phases: Vec<_> = of_trace
        .iter()
        .filter(|s| s.kind == 1)
        .map(|s| (s.name.clone(), attr(s, "weir.filter.outcome")))
        .collect();
    phases.sort();
    assert_eq!(
        phases,
        [
            ("filter tag request-headers".into(), Some("continue".into())),
            (
                "filter tag response-headers".into(),
                Some("continue".into())
            ),
        ]
    );
    let exported = weir.sample("weir_trace_spans_exported_total").await?;
    assert!(exported >= of_trace.len() as f64, "{exported}");
    assert_eq!(
        weir.sample("weir_trace_spans_dropped_total{reason=\"queue_full\"}")
            .await?,
        0.0
    );

    // Spans still waiting for their interval when the proxy is told to stop are sent before
    // it exits.
    let mut slow = Weir::start(&yaml.replace("flush_interval: 50ms", "flush_interval: 60s"))?;
    let last = "22222222222222222222222222222222";
    get_with(
        &slow.url("public", "/last"),
        &[("traceparent", &format!("00-{last}-b7ad6b7169203331-01"))],
    )
    .await?;
    slow.signal(15);
    assert_eq!(slow.wait_exit(Duration::from_secs(10))?, Some(0));
    let got = got.lock().unwrap();
    assert!(
        got.spans
            .iter()
            .any(|s| s.kind == 2 && hex(&s.trace_id) == last),
        "the last request's spans were lost at exit"
    );
    Ok(())
}

/// `protocol: grpc`: spans go as OTLP/gRPC `Export` calls over HTTP/2 (h2c), length-prefixed
/// protobuf, and the call's `grpc-status` trailer decides: 0 is exported, anything else is a
/// failed export, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_grpc() -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let spans = Arc::new(Mutex::new(Vec::new()));
    let refuse = Arc::new(AtomicBool::new(false));
    let (spans2, refuse2) = (spans.clone(), refuse.clone());
    let receiver = Upstream::with("otlp-grpc", move |req, seen| {
        let (spans, refuse) = (spans2.clone(), refuse2.clone());
        async move {
            assert_eq!(seen.version, http::Version::HTTP_2, "gRPC is HTTP/2");
            assert_eq!(
                seen.path,
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            );
            assert_eq!(seen.headers["content-type"], "application/grpc");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body[0], 0, "not compressed");
            let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
            assert_eq!(len, body.len() - 5, "one length-prefixed message");
            let export = ExportTraceServiceRequest::decode(&body[5..]).expect("valid protobuf");
            for rs in export.resource_spans {
                for ss in rs.scope_spans {
                    spans.lock().unwrap().extend(ss.spans);
                }
            }
            let mut trailers = http::HeaderMap::new();
            let code = if refuse.load(SeqCst) { "14" } else { "0" };
            trailers.insert("grpc-status", code.parse().unwrap());
            // An empty ExportTraceServiceResponse, then the status.
            let frames = vec![
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&[
                    0, 0, 0, 0, 0,
                ]))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut res =
                http::Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            res.headers_mut()
                .insert("content-type", "application/grpc".parse().unwrap());
            res
        }
    })
    .await;
    let up = Upstream::start("u").await;
    let weir = Weir::start(&one_route(
        &up,
        &format!(
            "tracing: {{ sample_ratio: 1, otlp: {{ endpoint: \"http://{}\", protocol: grpc, flush_interval: 50ms }} }}\n",
            receiver.addr
        ),
    ))?;
    get(&weir.url("public", "/g")).await?;
    weir.eventually("the span arrives over gRPC", async || {
        spans.lock().unwrap().iter().any(|s| s.name == "GET app")
    })
    .await?;
    weir.eventually("it is counted exported", async || {
        weir.sample("weir_trace_spans_exported_total")
            .await
            .is_ok_and(|n| n >= 2.0)
    })
    .await?;

    // A non-zero grpc-status is a failed export.
    refuse.store(true, SeqCst);
    get(&weir.url("public", "/h")).await?;
    weir.eventually("a refused export is counted", async || {
        weir.sample("weir_trace_spans_dropped_total{reason=\"export_failed\"}")
            .await
            .is_ok_and(|n| n >= 2.0)
    })
    .await?;
    Ok(())
}
