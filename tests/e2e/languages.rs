//! End-to-end: filters written in Rust, Go and AssemblyScript, built from source with
//! `weir filter build` and loaded by the real proxy (Go and AssemblyScript as core modules that
//! the proxy turns into components). One table of phase behaviours runs against the testbed
//! filter in each language, and one against each example filter in each language.

use std::time::{Duration, Instant};

use crate::support::*;
use anyhow::{Context as _, Result, ensure};

/// The languages, with where their testbed filter and examples live.
#[derive(Debug, Clone, Copy)]
enum Lang {
    Rust,
    Go,
    AssemblyScript,
}

const LANGS: [Lang; 3] = [Lang::Rust, Lang::Go, Lang::AssemblyScript];

impl Lang {
    fn testbed(self) -> std::path::PathBuf {
        match self {
            Lang::Rust => filter_wasm("weir-testbed"),
            Lang::Go => project_wasm("tests/filters/testbed-go"),
            Lang::AssemblyScript => project_wasm("tests/filters/testbed-as"),
        }
    }

    fn example(self, name: &str) -> std::path::PathBuf {
        match self {
            Lang::Rust => filter_wasm(&format!("example-{name}")),
            Lang::Go => project_wasm(&format!("examples/go/{name}")),
            Lang::AssemblyScript => project_wasm(&format!("examples/assemblyscript/{name}")),
        }
    }
}

/// Proxy config: cluster `backend` → `up`, the given filters and routes (YAML list items).
/// The compiled-filter cache is shared by this file's tests (entries are keyed by content hash
/// and written atomically): a Go module takes seconds to compile in a debug build.
fn config(up: &Upstream, filters: &str, routes: &str) -> String {
    let cache = repo_root().join("target/wasm-e2e/cache");
    format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{}\"\n\
clusters: [ {{ name: backend, endpoints: [ {{ address: \"{}\" }} ] }} ]\n\
filters:\n{filters}routes:\n{routes}",
        cache.display(),
        up.addr
    )
}

fn route(path: &str, filters: &str) -> String {
    let name = path.trim_start_matches('/');
    format!(
        "  - {{ name: r-{name}, match: {{ path_prefix: {path} }}, cluster: backend, filters: [{filters}] }}\n"
    )
}

/// Text with characters a wrong string encoding would mangle: two-byte, three-byte and a
/// surrogate pair in UTF-16.
const UNICODE: &str = "grüße ✓ 😀";

/// The raw bytes of a header, as UTF-8 text (headers are bytes; `to_str` refuses non-ASCII).
fn header_text(h: &http::HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

async fn post(url: &str, body: impl Into<bytes::Bytes>) -> Result<Got> {
    let req = http::Request::post(url).body(full(body))?;
    send(&h1_client(), req).await
}

/// The testbed's phase behaviours, one language.
async fn conformance(lang: Lang) -> Result<()> {
    let up = Upstream::start("up").await;
    let wasm = lang.testbed().display().to_string();
    let f = |name: &str, config: &str, extra: &str| {
        format!("  - {{ name: {name}, module: \"{wasm}\", config: {config}{extra} }}\n")
    };
    let filters = [
        f("noop", "{ mode: noop }", ""),
        f(
            "edit",
            &format!("{{ mode: header-edit, value: \"{UNICODE}\", tag: t1 }}"),
            "",
        ),
        f("edit2", "{ mode: header-edit, value: two, tag: t2 }", ""),
        f(
            "respond",
            &format!("{{ mode: respond, status: 418, body: \"no tea {UNICODE}\" }}"),
            "",
        ),
        f(
            "upper",
            "{ mode: body-upper }",
            ", limits: { max_body: 2MiB, time_per_phase: 100ms }",
        ),
        f("state", "{ mode: state }", ", limits: { max_instances: 2 }"),
        f(
            "count",
            "{ mode: kv-counter, ns: hits }",
            ", grants: { kv: [hits] }",
        ),
        f("count-denied", "{ mode: kv-counter, ns: secret }", ""),
        f("panic", "{ mode: panic }", ""),
        f("panic-open", "{ mode: panic }", ", on_error: fail-open"),
        f(
            "loop",
            "{ mode: loop }",
            ", limits: { time_per_phase: 20ms }",
        ),
        f(
            "callout",
            "{ mode: callout, target: backend, path: /check }",
            ", grants: { callouts: [backend] }",
        ),
    ]
    .concat();
    let routes = [
        route("/noop", "noop"),
        route("/edit", "edit, edit2"),
        route("/respond", "edit, respond"),
        route("/upper", "upper"),
        route("/state", "state"),
        route("/count-denied", "count-denied"),
        route("/count", "count"),
        route("/panic-open", "panic-open, edit2"),
        route("/panic", "panic"),
        route("/loop", "loop"),
        route("/callout", "callout"),
    ]
    .concat();
    let weir = Weir::start(&config(&up, &filters, &routes))?;
    let url = |p: &str| weir.url("public", p);

    let got = get(&url("/noop")).await?;
    ensure!(got.status == 200, "noop: {}", got.status);
    ensure!(up.last().path == "/noop");

    // Request phases run in order, response phases in reverse; non-ASCII values survive.
    let got = get(&url("/edit")).await?;
    let seen = up.last();
    ensure!(header_text(&seen.headers, "x-testbed").as_deref() == Some("two"));
    let chain: Vec<_> = seen.headers.get_all("x-chain").iter().collect();
    ensure!(chain == ["t1", "t2"], "request x-chain: {chain:?}");
    ensure!(
        header_text(&got.headers, "x-testbed").as_deref() == Some(UNICODE),
        "response x-testbed: {:?}",
        got.headers.get("x-testbed")
    );
    let chain: Vec<_> = got.headers.get_all("x-chain").iter().collect();
    ensure!(chain == ["t2", "t1"], "response x-chain: {chain:?}");
    ensure!(got.header("x-testbed-build") == Some("v1"));

    // A local response skips the upstream and goes back through earlier response phases.
    let before = up.count();
    let got = get(&url("/respond")).await?;
    ensure!(got.status == 418);
    ensure!(
        got.text() == format!("no tea {UNICODE}"),
        "body {:?}",
        got.text()
    );
    ensure!(got.header("content-type") == Some("text/plain; charset=utf-8"));
    ensure!(header_text(&got.headers, "x-testbed").as_deref() == Some(UNICODE));
    ensure!(up.count() == before, "the upstream was not called");

    // Bodies both ways, buffered to their end; non-ASCII bytes untouched.
    let got = post(&url("/upper"), format!("hello {UNICODE}")).await?;
    ensure!(got.status == 200);
    ensure!(
        got.text() == format!("HELLO {}", UNICODE.to_ascii_uppercase()),
        "upper: {:?}",
        got.text()
    );

    // A 1 MiB body through a body filter (request and response phase).
    let mut big: String = format!("abc {UNICODE} ").repeat((1 << 20) / 16);
    let mut end = 1 << 20;
    while !big.is_char_boundary(end) {
        end -= 1;
    }
    big.truncate(end);
    let got = post(&url("/upper"), big.clone()).await?;
    ensure!(
        got.status == 200,
        "1 MiB: {} {}",
        got.status,
        got.text().len()
    );
    ensure!(got.body.len() == big.len());
    ensure!(got.text() == big.to_ascii_uppercase(), "1 MiB body altered");

    // Per-request state, with requests interleaved on two instances.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let u = url(&format!("/state/{i}"));
        tasks.push(tokio::spawn(async move {
            let delay = (i % 4 * 5).to_string();
            anyhow::Ok((i, get_with(&u, &[("x-delay-ms", delay.as_str())]).await?))
        }));
    }
    for t in tasks {
        let (i, got) = t.await??;
        ensure!(
            got.status == 200,
            "state {i}: {} {}",
            got.status,
            got.text()
        );
        ensure!(got.header("x-state-path") == Some(format!("/state/{i}").as_str()));
    }

    // Host counters are shared; ungranted namespaces are a typed error, not a trap.
    for n in 1..=3 {
        let got = get(&url("/count")).await?;
        ensure!(
            got.header("x-count") == Some(n.to_string().as_str()),
            "count {n}"
        );
    }
    let got = get(&url("/count-denied")).await?;
    let v = got.header("x-count").unwrap_or_default();
    ensure!(v.starts_with("denied"), "an ungranted namespace: {v:?}");

    // Traps follow the failure policy; the proxy keeps serving.
    let got = get(&url("/panic")).await?;
    ensure!(got.status == 503, "panic, fail-closed: {}", got.status);
    ensure!(got.text().contains("request id"), "{}", got.text());
    let got = get(&url("/panic-open")).await?;
    ensure!(got.status == 200, "panic, fail-open: {}", got.status);
    ensure!(header_text(&up.last().headers, "x-testbed").as_deref() == Some("two"));
    let t0 = Instant::now();
    let got = get(&url("/loop")).await?;
    ensure!(got.status == 503, "runaway loop: {}", got.status);
    ensure!(
        t0.elapsed() < Duration::from_secs(5),
        "the deadline stopped it"
    );
    ensure!(get(&url("/noop")).await?.status == 200, "still serving");

    // A granted callout.
    let got = get(&url("/callout")).await?;
    ensure!(got.status == 200);
    ensure!(header_text(&up.last().headers, "x-callout").as_deref() == Some("200"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_testbed_behaves_the_same_in_rust_go_and_assemblyscript() -> Result<()> {
    for lang in LANGS {
        conformance(lang)
            .await
            .with_context(|| format!("{lang:?} testbed"))?;
    }
    Ok(())
}

#[tokio::test]
async fn a_config_the_filter_rejects_is_refused_in_every_language() -> Result<()> {
    let up = Upstream::start("up").await;
    for lang in LANGS {
        let wasm = lang.testbed().display().to_string();
        let yaml = config(
            &up,
            &format!("  - {{ name: bad, module: \"{wasm}\", config: {{ mode: bad-config }} }}\n"),
            &route("/", "bad"),
        );
        let dir = TempDir::new();
        let file = dir.write(
            "weir.yaml",
            &yaml.replace("{dir}", &dir.0.display().to_string()),
        );
        let out = std::process::Command::new(weir_bin())
            .arg("validate")
            .arg(&file)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{lang:?}: validate accepted it");
        ensure!(
            err.contains("bad-config mode rejects its config"),
            "{lang:?}: the filter's own message: {err}"
        );
    }
    Ok(())
}

/// The three example filters, one language.
async fn examples(lang: Lang) -> Result<()> {
    let up = Upstream::start("up").await;
    let filters = [
        format!(
            "  - {{ name: auth, module: \"{}\", config: {{ keys: {{ k-1: \"Jürgen\" }} }} }}\n",
            lang.example("header-auth").display()
        ),
        format!(
            "  - {{ name: limit, module: \"{}\", config: {{ limit: 2, window_ms: 60000 }}, grants: {{ kv: [ratelimit] }} }}\n",
            lang.example("rate-limit").display()
        ),
        format!(
            "  - {{ name: json, module: \"{}\", config: {{ remove: [pw], rename: {{ n: name }}, set: {{ v: 2, added: {{ ok: true }} }} }} }}\n",
            lang.example("json-transform").display()
        ),
    ]
    .concat();
    let routes = [
        route("/auth", "auth"),
        route("/limited", "limit"),
        route("/json", "json"),
    ]
    .concat();
    let weir = Weir::start(&config(&up, &filters, &routes))?;
    let url = |p: &str| weir.url("public", p);

    // header-auth
    let got = get(&url("/auth")).await?;
    ensure!(got.status == 401, "no key: {}", got.status);
    ensure!(got.header("www-authenticate") == Some("ApiKey header=\"x-api-key\""));
    ensure!(
        got.text() == r#"{"error":"missing api key"}"#,
        "{}",
        got.text()
    );
    let got = get_with(&url("/auth"), &[("x-api-key", "wrong")]).await?;
    ensure!(got.status == 403, "wrong key: {}", got.status);
    let got = get_with(&url("/auth"), &[("x-api-key", "k-1")]).await?;
    ensure!(got.status == 200, "good key: {}", got.status);
    let seen = up.last();
    ensure!(header_text(&seen.headers, "x-client").as_deref() == Some("Jürgen"));
    ensure!(
        seen.headers.get("x-api-key").is_none(),
        "the key is not forwarded"
    );

    // rate-limit: per client key, then by client IP.
    for left in ["1", "0"] {
        let got = get_with(&url("/limited"), &[("x-client", "c1")]).await?;
        ensure!(got.status == 200);
        ensure!(
            got.header("x-ratelimit-remaining") == Some(left),
            "remaining {left}"
        );
        ensure!(got.header("x-ratelimit-limit") == Some("2"));
    }
    let got = get_with(&url("/limited"), &[("x-client", "c1")]).await?;
    ensure!(got.status == 429, "over the limit: {}", got.status);
    ensure!(got.header("retry-after") == Some("60"));
    ensure!(got.text() == "rate limited");
    let got = get(&url("/limited")).await?;
    ensure!(
        got.status == 200,
        "another client (by IP) has its own window"
    );

    // json-transform
    let got = post(
        &url("/json"),
        r#"{"n":"Jürgen 😀","pw":"x","v":1,"keep":[1,{"a":null}]}"#,
    )
    .await?;
    ensure!(got.status == 200, "json: {} {}", got.status, got.text());
    let v: serde_json::Value = serde_json::from_slice(&got.body)?;
    ensure!(
        v == serde_json::json!({ "name": "Jürgen 😀", "v": 2, "keep": [1, { "a": null }], "added": { "ok": true } }),
        "transformed: {v}"
    );
    let keys: Vec<_> = got.text().match_indices("\":").map(|(i, _)| i).collect();
    ensure!(keys.len() >= 4);
    let order = ["\"name\"", "\"v\"", "\"keep\"", "\"added\""].map(|k| got.text().find(k));
    ensure!(
        order.windows(2).all(|w| w[0] < w[1]),
        "member order: {}",
        got.text()
    );
    let got = post(&url("/json"), "[1, 2]")
        .await
        .with_context(|| format!("POST [1, 2]; weir's stderr:\n{}", weir.stderr_text()))?;
    ensure!(got.status == 400, "not an object: {}", got.status);
    ensure!(got.text() == r#"{"error":"body must be a JSON object"}"#);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_filters_behave_the_same_in_rust_go_and_assemblyscript() -> Result<()> {
    for lang in LANGS {
        examples(lang)
            .await
            .with_context(|| format!("{lang:?} examples"))?;
    }
    Ok(())
}

/// Sends `n` GETs over `conns` keep-alive connections; all must be 200.
async fn load(url: &str, n: usize, conns: usize) -> Result<()> {
    let client = h1_client();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (client, url) = (client.clone(), url.to_owned());
        let share = n / conns + usize::from(c < n % conns);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let req = http::Request::get(url.as_str()).body(full(""))?;
                let got = send(&client, req).await?;
                ensure!(got.status == 200, "{} {}", got.status, got.text());
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_serves_100k_requests_with_flat_memory_in_every_language() -> Result<()> {
    for lang in LANGS {
        let up = Upstream::start("up").await;
        let wasm = lang.testbed().display().to_string();
        let filters = format!(
            "  - {{ name: edit, module: \"{wasm}\", config: {{ mode: header-edit, value: \"{UNICODE}\" }}, limits: {{ max_instances: 1 }} }}\n"
        );
        let weir = Weir::start(&config(&up, &filters, &route("/", "edit")))?;
        let url = weir.url("public", "/x");
        load(&url, 10_000, 8).await.context("warm-up")?;
        let warm = weir.rss_kib();
        load(&url, 90_000, 8).await.context("load")?;
        let after = weir.rss_kib();
        let (_, metrics) = weir.admin_get("/metrics").await?;
        ensure!(
            !metrics.contains("weir_filter_failures_total{filter=\"edit\""),
            "{lang:?}: no call failed (and so no instance was replaced)"
        );
        ensure!(
            after < warm + 4096,
            "{lang:?}: RSS grew from {warm} KiB to {after} KiB over 90k requests"
        );
        eprintln!("{lang:?}: RSS {warm} KiB after 10k requests, {after} KiB after 100k");
    }
    Ok(())
}

#[tokio::test]
async fn a_request_body_phase_answer_wins_over_an_upstream_that_answered_early() -> Result<()> {
    // This upstream answers as soon as it has the head, without reading the body.
    let up = Upstream::with("early", |_req, _seen| async {
        http::Response::new(full("early"))
    })
    .await;
    let filters = format!(
        "  - {{ name: json, module: \"{}\", config: {{}} }}\n",
        Lang::Rust.example("json-transform").display()
    );
    let weir = Weir::start(&config(&up, &filters, &route("/", "json")))?;
    let (tx, body) = channel_body();
    let req = http::Request::post(weir.url("public", "/x")).body(body)?;
    let sending = tokio::spawn(async move {
        // Let the upstream answer first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = tx.send(bytes::Bytes::from_static(b"[1, 2]")).await;
    });
    let got = send(&h1_client(), req).await?;
    sending.await?;
    ensure!(got.status == 400, "{} {}", got.status, got.text());
    ensure!(got.text() == r#"{"error":"body must be a JSON object"}"#);
    // And a valid body still gets the upstream's answer.
    let got = post(&weir.url("public", "/x"), r#"{"a":1}"#).await?;
    ensure!(
        got.status == 200 && got.text() == "early",
        "{} {}",
        got.status,
        got.text()
    );
    Ok(())
}

/// Runs a command in `dir`, failing with its output.
fn run_in(dir: &std::path::Path, cmd: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Result<()> {
    let out = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} in {} failed:\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `weir filter new` makes a project at a path (like `cargo new`), whose own tests pass and
/// which `weir filter build` turns into a filter the proxy serves — without the user setting
/// up anything the project's scripts did not: the build finds the Go in `.tools/bin` without
/// it on PATH, and runs `npm install` for an AssemblyScript project that has not.
#[tokio::test]
async fn new_projects_test_build_and_serve_in_every_language() -> Result<()> {
    let path = tools_path();
    // A PATH without the project's tools: only `weir filter build` must find them.
    let tools = repo_root().join(".tools/bin");
    let bare_path = std::env::join_paths(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .filter(|d| d.canonicalize().ok() != tools.canonicalize().ok()),
    )?;
    let target = repo_root().join("target/wasm-e2e/scaffold");
    let env = [
        ("PATH", path.as_os_str()),
        ("CARGO_TARGET_DIR", target.as_os_str()),
    ];
    let bare_env = [
        ("PATH", bare_path.as_os_str()),
        ("CARGO_TARGET_DIR", target.as_os_str()),
    ];
    let dir = TempDir::new();
    let up = Upstream::start("up").await;
    for (lang, test) in [
        ("rust", &["cargo", "test", "--quiet"][..]),
        ("go", &["go", "test", "./..."][..]),
        ("assemblyscript", &["npm", "test"][..]),
    ] {
        let name = format!("hello-{lang}");
        let at = format!("filters/{lang}/{name}");
        run_in(
            &dir.0,
            &[weir_bin(), "filter", "new", "--lang", lang, &at],
            &env,
        )?;
        let project = dir.0.join(&at);
        ensure!(
            project.join("README.md").is_file(),
            "{lang}: the project has a README"
        );
        let wasm = dir.0.join(format!("{name}.wasm"));
        run_in(
            &project,
            &[
                weir_bin(),
                "filter",
                "build",
                ".",
                "-o",
                &wasm.display().to_string(),
            ],
            &bare_env,
        )
        .with_context(|| format!("{lang}: weir filter build in a fresh project"))?;
        run_in(&project, test, &env).with_context(|| format!("{lang}: the project's own tests"))?;
        let weir = Weir::start(&config(
            &up,
            &format!("  - {{ name: f, module: \"{}\" }}\n", wasm.display()),
            &route("/", "f"),
        ))
        .with_context(|| format!("{lang}: the new filter loads"))?;
        let got = get(&weir.url("public", "/")).await?;
        ensure!(got.status == 200, "{lang}: {} {}", got.status, got.text());
    }
    Ok(())
}

/// The host-call table (`tests/filters/host-calls.json`) in the real proxy, made by the testbed
/// in each language: every call with hostile arguments gets the answer the table gives. Each
/// SDK's emulator runs the same table in its own tests (cargo test -p weir-testbed, go test in
/// tests/filters/testbed-go, npm test in tests/filters/testbed-as), so a filter that passes its
/// SDK tests meets the same host in the proxy. The request is traced, and what the table's
/// trace calls added reaches the OTLP receiver on the request's server span.
// Multi-threaded: the OTLP receiver answers while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_answer_as_the_shared_table_says_in_every_language() -> Result<()> {
    let table: serde_json::Value =
        serde_json::from_str(include_str!("../filters/host-calls.json"))?;
    let cases = table["cases"].as_array().expect("cases").clone();
    let up = Upstream::start("up").await;
    let (receiver, received) = crate::ops::otlp_receiver().await;
    for (n, lang) in LANGS.into_iter().enumerate() {
        let dir = TempDir::new();
        let calls = serde_json::json!({ "mode": "host-calls", "calls": cases });
        std::fs::write(dir.0.join("host-calls.json"), calls.to_string())?;
        let filters = format!(
            "  - {{ name: calls, module: \"{}\", config: {{ $json_file: host-calls.json }}, grants: {{ kv: [ granted ] }} }}\n",
            lang.testbed().display()
        );
        let tracing = format!(
            "tracing: {{ sample_ratio: 1, otlp: {{ endpoint: \"http://{}\", flush_interval: 50ms }} }}\n",
            receiver.addr
        );
        let yaml = tracing + &config(&up, &filters, &route("/calls", "calls"));
        let weir =
            Weir::start_in(dir, &yaml).with_context(|| format!("{lang:?}: the testbed loads"))?;
        let trace_id = format!("{:032x}", 0xca11_5000 + n);
        let got = get_with(
            &weir.url("public", "/calls"),
            &[("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))],
        )
        .await?;
        ensure!(got.status == 200, "{lang:?}: {} {}", got.status, got.text());
        let text = got.text();
        let answers: Vec<&str> = text.lines().collect();
        ensure!(
            answers.len() == cases.len(),
            "{lang:?}: one answer per call: {text}"
        );
        let wrong: Vec<String> = cases
            .iter()
            .zip(&answers)
            .filter(|(case, answer)| case["expect"] != **answer)
            .map(|(case, answer)| {
                let mut case = case.to_string();
                case.truncate(160);
                format!("{case} answered {answer:?}")
            })
            .collect();
        ensure!(
            wrong.is_empty(),
            "{lang:?}: the proxy disagrees with the table:\n{}",
            wrong.join("\n")
        );

        // The table's crypto.key-limit makes keys until one is refused: once per language.
        for limit in [
            "span_attributes",
            "span_events",
            "span_event_attributes",
            "crypto_keys",
        ] {
            let hits = (weir.sample(&format!(
                "weir_filter_limit_rejections_total{{filter=\"calls\",limit=\"{limit}\"}}"
            )))
            .await?;
            ensure!(hits == 1.0, "{lang:?}: {limit} refused {hits} times");
        }
        // What the filter added is on the request's server span, as the table left it.
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let deadline = Instant::now() + Duration::from_secs(10);
        let server = loop {
            let found = (received.lock().unwrap().spans.iter())
                .find(|s| s.kind == 2 && hex(&s.trace_id) == trace_id)
                .cloned();
            if let Some(s) = found {
                break s;
            }
            ensure!(Instant::now() < deadline, "{lang:?}: no server span in 10s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let attr = |k: &str| crate::ops::attr(&server, k);
        ensure!(
            attr("enduser.id").as_deref() == Some("carol"),
            "{lang:?}: {:?}",
            server.attributes
        );
        ensure!(
            attr("big") == Some("é".repeat(256)),
            "{lang:?}: a long value is cut at 512 bytes, on a character boundary"
        );
        ensure!(
            attr("fill.28").is_some() && attr("one.more").is_none(),
            "{lang:?}"
        );
        ensure!(
            attr("weir.route").as_deref() == Some("r-calls"),
            "{lang:?}: the proxy's own attributes stay"
        );
        ensure!(
            server.events.len() == 32,
            "{lang:?}: {} events",
            server.events.len()
        );
        let refused = &server.events[0];
        ensure!(refused.name == "auth.refused", "{lang:?}: {}", refused.name);
        let ev = |k: &str| crate::ops::attr_of(&refused.attributes, k);
        ensure!(
            ev("reason").as_deref() == Some("the token has expired"),
            "{lang:?}"
        );
        ensure!(ev("weir.filter").as_deref() == Some("calls"), "{lang:?}");
        ensure!(
            refused.time_unix_nano >= server.start_time_unix_nano
                && refused.time_unix_nano <= server.end_time_unix_nano,
            "{lang:?}: the event is within its span"
        );
    }
    Ok(())
}
