//! End-to-end: wasm filters in the real proxy — phases, chains, per-route config, budgets and
//! failure policies, capabilities. The filter is `tests/filters/testbed`, built from source.

use std::time::{Duration, Instant};

use crate::support::*;
use anyhow::Result;

/// A config with one upstream cluster `backend` and the testbed filter under several names
/// (`filters` is YAML list items), plus `routes` (YAML list items).
fn config(up: &Upstream, filters: &str, routes: &str) -> String {
    let wasm = filter_wasm("weir-testbed");
    let filters = filters.replace("{wasm}", &wasm.display().to_string());
    format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
clusters: [ {{ name: backend, endpoints: [ {{ address: \"{}\" }} ] }} ]\n\
filters:\n{filters}\
routes:\n{routes}",
        up.addr
    )
}

fn tb(name: &str, config: &str, extra: &str) -> String {
    format!("  - {{ name: {name}, module: \"{{wasm}}\", config: {config}{extra} }}\n")
}

fn route(name: &str, prefix: &str, filters: &str) -> String {
    format!(
        "  - {{ name: {name}, match: {{ path_prefix: {prefix} }}, cluster: backend, filters: {filters} }}\n"
    )
}

#[tokio::test]
async fn header_edits_run_in_order_on_requests_and_in_reverse_on_responses() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = [
        tb("a", "{ mode: header-edit, value: first, tag: a }", ""),
        tb("b", "{ mode: header-edit, value: second, tag: b }", ""),
        tb("c", "{ mode: header-edit, value: third, tag: c }", ""),
    ]
    .concat();
    let routes = [
        route("chain", "/chain", "[a, b, c]"),
        route("plain", "/", "[]"),
    ]
    .concat();
    let weir = Weir::start(&config(&up, &filters, &routes))?;

    let got = get(&weir.url("public", "/chain")).await?;
    assert_eq!(got.status, 200);
    let seen = up.last();
    let chain: Vec<&str> = seen
        .headers
        .get_all("x-chain")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(chain, ["a", "b", "c"], "request phases run in route order");
    assert_eq!(
        seen.headers["x-testbed"], "third",
        "the last filter's set wins upstream"
    );
    let chain: Vec<&str> = got
        .headers
        .get_all("x-chain")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        chain,
        ["c", "b", "a"],
        "response phases run in reverse order"
    );
    assert_eq!(got.header("x-testbed"), Some("first"));

    // A route without filters never reaches the runtime.
    let got = get(&weir.url("public", "/plain")).await?;
    assert_eq!(got.status, 200);
    assert!(got.header("x-chain").is_none());
    let (_, metrics) = weir.admin_get("/metrics").await?;
    assert!(
        metrics.contains("weir_filter_calls_total{filter=\"a\",route=\"chain\"} 2"),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("weir_filter_") && l.contains("route=\"plain\"")),
        "no filter stats for the plain route:\n{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn context_done_is_called_for_stateful_filters_and_skipped_for_stateless_ones() -> Result<()>
{
    let up = Upstream::start("up").await;
    let filters = [
        tb("lite", "{ mode: noop }", ""),
        tb("keeps", "{ mode: state }", ""),
    ]
    .concat();
    let weir = Weir::start(&config(&up, &filters, &route("both", "/", "[lite, keeps]")))?;
    for _ in 0..3 {
        assert_eq!(get(&weir.url("public", "/x")).await?.status, 200);
    }
    let (status, body) = weir.admin_get("/filters").await?;
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body)?;
    let pair = |name: &str| {
        list.as_array()
            .and_then(|l| l.iter().find(|f| f["name"] == name))
            .map(|f| f["pools"][0].clone())
            .unwrap_or_default()
    };
    // noop declares itself stateless: one guest call per request, no context-done.
    assert_eq!(
        pair("lite")["phases"],
        serde_json::json!(["request-headers", "stateless"]),
        "{body}"
    );
    assert_eq!(pair("lite")["guest_calls"], 3, "{body}");
    // state keeps the path per request: both header phases, then context-done.
    assert_eq!(
        pair("keeps")["phases"],
        serde_json::json!(["request-headers", "response-headers"]),
        "{body}"
    );
    assert_eq!(pair("keeps")["guest_calls"], 9, "{body}");
    Ok(())
}

#[tokio::test]
async fn a_filter_can_answer_without_the_upstream_and_later_filters_do_not_run() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = [
        tb("deny", "{ mode: respond, status: 403, body: nope }", ""),
        tb("edit", "{ mode: header-edit }", ""),
    ]
    .concat();
    let routes = [
        route("deny-first", "/first", "[deny, edit]"),
        route("deny-last", "/last", "[edit, deny]"),
    ]
    .concat();
    let weir = Weir::start(&config(&up, &filters, &routes))?;
    let got = get(&weir.url("public", "/first")).await?;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (403, "nope"));
    assert!(got.header("x-request-id").is_some());
    assert!(
        got.header("x-chain").is_none(),
        "the short-circuit skips the rest of the chain"
    );
    // Filters before the one that answered see its response in their response phase.
    let got = get(&weir.url("public", "/last")).await?;
    assert_eq!((got.status.as_u16(), got.text().as_str()), (403, "nope"));
    assert_eq!(
        got.header("x-chain"),
        Some("testbed"),
        "the earlier filter's response phase ran"
    );
    assert_eq!(up.count(), 0);
    Ok(())
}

#[tokio::test]
async fn one_module_serves_routes_with_different_configs() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = tb("edit", "{ mode: header-edit, value: default, tag: t }", "");
    let routes = [
        route("one", "/one", "[edit]"),
        route(
            "two",
            "/two",
            "[ { name: edit, config: { value: overridden } } ]",
        ),
    ]
    .concat();
    let weir = Weir::start(&config(&up, &filters, &routes))?;
    get(&weir.url("public", "/one")).await?;
    assert_eq!(up.last().headers["x-testbed"], "default");
    get(&weir.url("public", "/two")).await?;
    let seen = up.last();
    assert_eq!(seen.headers["x-testbed"], "overridden");
    assert_eq!(
        seen.headers["x-chain"], "t",
        "keys not overridden come from the filter's config"
    );
    Ok(())
}

#[tokio::test]
async fn runaway_filters_follow_their_failure_policy_and_the_proxy_keeps_serving() -> Result<()> {
    let up = Upstream::start("up").await;
    let limits = ", limits: { time_per_phase: 20ms, memory: 8MiB }";
    let filters = [
        tb(
            "loop-closed",
            "{ mode: loop }",
            &format!("{limits}, on_error: fail-closed"),
        ),
        tb(
            "loop-open",
            "{ mode: loop }",
            &format!("{limits}, on_error: fail-open"),
        ),
        tb(
            "bomb-closed",
            "{ mode: membomb }",
            &format!("{limits}, on_error: fail-closed"),
        ),
        tb(
            "bomb-open",
            "{ mode: membomb }",
            &format!("{limits}, on_error: fail-open"),
        ),
        tb(
            "panic-closed",
            "{ mode: panic }",
            &format!("{limits}, on_error: fail-closed"),
        ),
        tb(
            "panic-open",
            "{ mode: panic }",
            &format!("{limits}, on_error: fail-open"),
        ),
        tb("edit", "{ mode: header-edit, tag: after }", ""),
    ]
    .concat();
    let mut routes = String::new();
    for f in ["loop", "bomb", "panic"] {
        for p in ["closed", "open"] {
            routes += &route(
                &format!("{f}-{p}"),
                &format!("/{f}-{p}"),
                &format!("[{f}-{p}, edit]"),
            );
        }
    }
    routes += &route("healthy", "/", "[edit]");
    let mut weir = Weir::start(&config(&up, &filters, &routes))?;

    for f in ["loop", "bomb", "panic"] {
        for round in 0..2 {
            let started = Instant::now();
            let got = get(&weir.url("public", &format!("/{f}-closed"))).await?;
            assert_eq!(
                got.status,
                503,
                "{f} fail-closed, round {round}: {}",
                got.text()
            );
            let id = got.header("x-request-id").unwrap_or_default().to_string();
            assert!(
                got.text()
                    .contains(&format!("filter \"{f}-closed\" failed (request id {id})")),
                "{}",
                got.text()
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{f}: stopped promptly ({:?})",
                started.elapsed()
            );

            let got = get(&weir.url("public", &format!("/{f}-open"))).await?;
            assert_eq!(
                got.status, 200,
                "{f} fail-open skips the filter, round {round}"
            );
            assert_eq!(
                got.header("x-chain"),
                Some("after"),
                "the rest of the chain still runs"
            );

            let got = get(&weir.url("public", "/healthy")).await?;
            assert_eq!(got.status, 200, "other routes are unaffected");
        }
    }
    let (_, metrics) = weir.admin_get("/metrics").await?;
    for (filter, kind) in [
        ("loop-closed", "deadline"),
        ("loop-open", "deadline"),
        ("bomb-closed", "memory"),
        ("panic-open", "panic"),
    ] {
        let line = format!(
            "weir_filter_failures_total{{filter=\"{filter}\",route=\"{filter}\",kind=\"{kind}\"}} 2"
        );
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line}\n{metrics}"
        );
    }
    assert!(
        metrics.contains(
            "weir_filter_budget_breaches_total{filter=\"loop-closed\",route=\"loop-closed\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        weir.stderr_text().contains("filter failed"),
        "failures are logged"
    );
    assert!(
        !weir.stderr_text().contains("thread '"),
        "the proxy itself never panics:\n{}",
        weir.stderr_text()
    );
    assert!(weir.child.try_wait()?.is_none(), "weir is still running");
    Ok(())
}

/// Context switches of the process's thread named `name` (voluntary and not).
fn thread_switches(pid: u32, name: &str) -> Result<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        if std::fs::read_to_string(dir.join("comm"))?.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status"))?;
        return Ok(status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum());
    }
    anyhow::bail!("no thread named {name} in process {pid}")
}

/// The epoch thread advances the epoch only when a running call may have spent its time: an
/// idle proxy with filters sleeps (it used to wake every millisecond: 1.8% of a core here,
/// forever). That it still stops runaway calls is `runaway_filters_follow_their_failure_policy`.
#[tokio::test]
async fn the_epoch_thread_sleeps_while_no_call_can_be_over_its_time() -> Result<()> {
    let up = Upstream::start("up").await;
    let weir = Weir::start(&config(
        &up,
        &tb("edit", "{ mode: header-edit, tag: t }", ""),
        &route("all", "/", "[edit]"),
    ))?;
    let pid = weir.child.id();
    for _ in 0..50 {
        let got = get(&weir.url("public", "/")).await?;
        assert_eq!(got.status, 200);
    }
    assert!(
        up.last().headers.contains_key("x-testbed"),
        "the filter ran"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let idle_from = thread_switches(pid, "weir-epoch")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = thread_switches(pid, "weir-epoch")? - idle_from;
    assert!(
        idle <= 5,
        "the epoch thread woke {idle} times in an idle second"
    );
    Ok(())
}

#[tokio::test]
async fn capabilities_are_denied_unless_granted() -> Result<()> {
    let up = Upstream::start("up").await;
    let auth = Upstream::start("auth").await;
    let filters = [
        tb(
            "granted",
            "{ mode: callout, target: auth, path: /check }",
            ", grants: { callouts: [ auth ] }",
        ),
        tb(
            "ungranted",
            "{ mode: callout, target: auth, path: /check }",
            "",
        ),
        tb(
            "direct",
            &format!(
                "{{ mode: callout, target: \"{}\", path: /direct }}",
                auth.addr
            ),
            &format!(", grants: {{ callouts: [ \"{}\" ] }}", auth.addr),
        ),
        tb(
            "count",
            "{ mode: kv-counter, ns: hits }",
            ", grants: { kv: [ hits ] }",
        ),
        tb(
            "count-denied",
            "{ mode: kv-counter, ns: hits }",
            ", grants: { kv: [ other ] }",
        ),
    ]
    .concat();
    let routes = [
        route("granted", "/granted", "[granted]"),
        route("ungranted", "/ungranted", "[ungranted]"),
        route("direct", "/direct", "[direct]"),
        route("count", "/count", "[count]"),
        route("count-denied", "/count-denied", "[count-denied]"),
    ]
    .concat();
    let yaml = config(&up, &filters, &routes).replace(
        "clusters: [",
        &format!(
            "clusters: [ {{ name: auth, endpoints: [ {{ address: \"{}\" }} ] }},",
            auth.addr
        ),
    );
    let weir = Weir::start(&yaml)?;

    get(&weir.url("public", "/granted")).await?;
    assert_eq!(
        up.last().headers["x-callout"],
        "200",
        "a granted cluster callout is answered"
    );
    assert_eq!(auth.last().path, "/check");
    get(&weir.url("public", "/direct")).await?;
    assert_eq!(
        up.last().headers["x-callout"],
        "200",
        "a granted host:port callout is answered"
    );
    assert_eq!(auth.last().path, "/direct");
    let before = auth.count();
    get(&weir.url("public", "/ungranted")).await?;
    let v = up.last().headers["x-callout"].to_str()?.to_string();
    assert!(v.starts_with("denied:"), "a typed error, not a trap: {v}");
    assert_eq!(auth.count(), before, "nothing was sent");

    for n in 1..=3 {
        get(&weir.url("public", "/count")).await?;
        assert_eq!(
            up.last().headers["x-count"],
            n.to_string().as_str(),
            "the counter is shared across requests"
        );
    }
    get(&weir.url("public", "/count-denied")).await?;
    assert!(
        up.last().headers["x-count"]
            .to_str()?
            .starts_with("denied:")
    );
    Ok(())
}

#[tokio::test]
async fn per_request_state_never_leaks_between_concurrent_requests() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = tb("state", "{ mode: state }", ", limits: { max_instances: 2 }");
    let weir = Weir::start(&config(&up, &filters, &route("r", "/", "[state]")))?;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = weir.url("public", &format!("/req/{i}"));
        tasks.push(tokio::spawn(async move {
            let delay = (i % 5 * 3).to_string();
            let got = get_with(&url, &[("x-delay-ms", delay.as_str())]).await?;
            anyhow::Ok((i, got))
        }));
    }
    for t in tasks {
        let (i, got) = t.await??;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(
            got.header("x-state-path"),
            Some(format!("/req/{i}").as_str())
        );
    }
    Ok(())
}

#[tokio::test]
async fn body_phases_transform_request_and_response_bodies() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = tb("upper", "{ mode: body-upper }", "");
    let weir = Weir::start(&config(&up, &filters, &route("r", "/", "[upper]")))?;
    let (tx, body) = channel_body();
    let client = h1_client();
    let req = http::Request::post(weir.url("public", "/echo")).body(body)?;
    let sending = tokio::spawn(async move {
        for part in ["hello ", "wörld ", "from a streamed body"] {
            tx.send(bytes::Bytes::from(part)).await?;
        }
        anyhow::Ok(())
    });
    let got = send(&client, req).await?;
    sending.await??;
    // The upstream echoes what it received (uppercased once), and the response is uppercased
    // again (a no-op on uppercase text); non-ASCII bytes pass untouched.
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "HELLO WöRLD FROM A STREAMED BODY");
    Ok(())
}

#[tokio::test]
async fn a_config_the_filter_rejects_is_an_error_at_its_route() -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = tb("strict", "{ mode: bad-config }", "");
    let dir = TempDir::new();
    let text = config(&up, &filters, &route("r", "/", "[strict]"))
        .replace("{dir}", &dir.0.display().to_string());
    let cfg = dir.write(
        "weir.yaml",
        &format!("admin: {{ listen: 127.0.0.1:0 }}\n{text}"),
    );
    let out = tokio::process::Command::new(weir_bin())
        .arg("validate")
        .arg(&cfg)
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("weir.yaml:8: routes[0].filters[0]: filter \"strict\" rejected its config"),
        "{err}"
    );

    // A module that is not a component is rejected at its line too.
    let junk = dir.write("junk.wasm", "not wasm");
    let text = text.replace(
        &filter_wasm("weir-testbed").display().to_string(),
        &junk.display().to_string(),
    );
    let cfg = dir.write(
        "weir.yaml",
        &format!("admin: {{ listen: 127.0.0.1:0 }}\n{text}"),
    );
    let out = tokio::process::Command::new(weir_bin())
        .arg("validate")
        .arg(&cfg)
        .output()
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0]") || err.contains("filters[0].module"),
        "{err}"
    );
    assert!(err.contains("not a WebAssembly component"), "{err}");
    Ok(())
}

/// Filter memories are reserved whole (4 GiB and a guard each, so guests need no bounds
/// checks); where the address space cannot hold that (`ulimit -v`), the proxy says so and runs
/// the same filters with bounds checks instead of refusing to start.
#[tokio::test]
async fn a_bounded_address_space_costs_bounds_checks_not_the_start() -> Result<()> {
    let up = Upstream::start("up").await;
    let dir = TempDir::new();
    let text = config(
        &up,
        &tb("noop", "{ mode: noop }", ""),
        &route("r", "/", "[noop]"),
    )
    .replace("{dir}", &dir.0.display().to_string());
    // 16 slots: 128 GiB of whole reservations, about 9 GiB of bounded ones.
    let cfg = dir.write(
        "weir.yaml",
        &format!("admin: {{ listen: 127.0.0.1:0 }}\nfilter_instances: 16\n{text}"),
    );
    let validate = |limit_kib: Option<u64>| {
        // No limit: the shell's own (which may be bounded already: then no `ulimit` call).
        let limit = limit_kib.map_or(String::new(), |k| k.to_string());
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg("[ -z \"$2\" ] || ulimit -v \"$2\" || exit 3; exec \"$0\" validate \"$1\"")
            .arg(weir_bin())
            .arg(&cfg)
            .arg(limit)
            .output()
    };
    let warning = "filters run with bounds checks";
    let out = validate(None).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains(warning), "{err}");
    let out = validate(Some(32 << 20)).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(warning), "{err}");
    Ok(())
}

#[tokio::test]
async fn compiled_filters_are_cached_on_disk_by_content_hash() -> Result<()> {
    let up = Upstream::start("up").await;
    let cache = TempDir::new();
    let filters = tb("noop", "{ mode: noop }", "");
    let yaml = config(&up, &filters, &route("r", "/", "[noop]"))
        .replace("\"{dir}/cache\"", &format!("\"{}\"", cache.0.display()));
    let list = || -> Result<Vec<(String, std::time::SystemTime)>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&cache.0)? {
            let e = e?;
            v.push((
                e.file_name().to_string_lossy().into_owned(),
                e.metadata()?.modified()?,
            ));
        }
        Ok(v)
    };
    let weir = Weir::start(&yaml)?;
    assert_eq!(get(&weir.url("public", "/")).await?.status, 200);
    drop(weir);
    let first = list()?;
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].0.ends_with(".cwasm") && first[0].0.len() > 64,
        "named by content hash: {first:?}"
    );

    // A restart with the same module reuses the artifact instead of compiling and rewriting it.
    let weir = Weir::start(&yaml)?;
    assert_eq!(get(&weir.url("public", "/")).await?.status, 200);
    assert_eq!(list()?, first);
    Ok(())
}

/// Sends `GET path` twice on one keep-alive connection and returns both responses' (status,
/// headers, body), each framed by its own Content-Length, failing on a desync or a stall.
async fn twice_on_one_connection(
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<Vec<(u16, String, Vec<u8>)>> {
    use anyhow::Context as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .context("a length-framed response")?
                    .trim()
                    .parse()?;
                if buf.len() >= end + 4 + len {
                    let status = head[9..12].parse()?;
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    out.push((status, head, body));
                    break;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
                .await
                .context("response stalled: framing does not match the body")??;
            anyhow::ensure!(n > 0, "connection closed mid-response");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    anyhow::ensure!(buf.is_empty(), "bytes after the responses: {buf:?}");
    Ok(out)
}

#[tokio::test]
async fn framing_and_hop_by_hop_headers_belong_to_the_proxy() -> Result<()> {
    let up = Upstream::start("up").await;
    let names = [
        "content-length",
        "Transfer-Encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ];
    let mut filters = String::new();
    let mut routes = String::new();
    for (i, name) in names.iter().enumerate() {
        filters += &tb(
            &format!("set{i}"),
            &format!("{{ mode: set-header, name: {name}, value: \"1\" }}"),
            "",
        );
        routes += &route(
            &format!("set{i}"),
            &format!("/set{i}/"),
            &format!("[set{i}]"),
        );
    }
    // A local response that claims a length its body does not have.
    filters += &tb(
        "liar",
        "{ mode: respond, body: hello, headers: [ [content-length, \"999\"], [transfer-encoding, chunked], [connection, close], [x-kept, yes] ] }",
        "",
    );
    routes += &route("liar", "/liar", "[liar]");
    let weir = Weir::start(&config(&up, &filters, &routes))?;
    let addr = weir.addr("public");

    for (i, name) in names.iter().enumerate() {
        let got = twice_on_one_connection(addr, &format!("/set{i}/x")).await?;
        for (status, head, body) in &got {
            assert_eq!(*status, 200, "{name}: {head}");
            assert!(body.is_empty(), "{name}: {head}");
            assert!(head.contains("x-upstream: up"), "{name}: {head}");
            let lower = name.to_ascii_lowercase();
            assert!(
                head.contains(&format!(
                    "x-set-error: invalid: {lower} is a framing or hop-by-hop header"
                )),
                "{name}: the host refuses the change: {head}"
            );
        }
        let seen = up.last();
        assert_ne!(
            seen.headers.get(*name).map(|v| v.as_bytes()),
            Some(&b"1"[..]),
            "{name} did not reach the upstream as the filter set it"
        );
    }

    let got = twice_on_one_connection(addr, "/liar").await?;
    for (status, head, body) in &got {
        assert_eq!(*status, 200);
        assert_eq!(body, b"hello", "the body frames the response: {head}");
        assert!(head.contains("content-length: 5"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(head.contains("x-kept: yes"), "{head}");
    }
    Ok(())
}

/// Issue #11 (bounds 7): `histogram_observe(NaN)` panicked the host. A non-finite value is now
/// `invalid` to the filter, and the proxy keeps serving.
#[tokio::test]
async fn non_finite_metric_values_are_invalid_not_a_host_panic() -> Result<()> {
    let up = Upstream::start("up").await;
    let mut filters = String::new();
    let mut routes = String::new();
    for (i, value) in ["NaN", "inf", "-inf", "0.25"].iter().enumerate() {
        filters += &tb(
            &format!("obs{i}"),
            &format!("{{ mode: observe, value: \"{value}\" }}"),
            "",
        );
        routes += &route(
            &format!("obs{i}"),
            &format!("/obs{i}/"),
            &format!("[obs{i}]"),
        );
    }
    let weir = Weir::start(&config(&up, &filters, &routes))?;
    for (i, want) in ["invalid:", "invalid:", "invalid:", "ok"]
        .iter()
        .enumerate()
    {
        let got = get(&weir.url("public", &format!("/obs{i}/x"))).await?;
        assert_eq!(got.status, 200, "{}", got.text());
        let seen = up.last();
        let outcome = seen.headers["x-observe"].to_str()?;
        assert!(outcome.starts_with(want), "obs{i}: {outcome}");
    }
    let (_, metrics) = weir.admin_get("/metrics").await?;
    assert!(metrics.contains("testbed_seconds"), "{metrics}");
    Ok(())
}
