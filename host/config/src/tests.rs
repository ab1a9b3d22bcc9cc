use std::path::Path;

use crate::*;

fn load(text: &str) -> Result<LoadedConfig, ConfigError> {
    LoadedConfig::from_str(Path::new("weir.yaml"), text)
}

fn err(text: &str) -> String {
    load(text)
        .expect_err("config should be rejected")
        .to_string()
}

const GOOD: &str = "\
admin: { listen: 127.0.0.1:9901 }
listeners:
  - { name: public, listen: 127.0.0.1:8080, protocol: http }
routes:
  - name: api
    match: { host: api.example.com, path_prefix: /v1/, methods: [GET, POST], headers: { x-env: canary } }
    cluster: api
    rewrite: { path_prefix: /v2/ }
clusters:
  - name: api
    lb: maglev
    hash_on: { header: x-user }
    endpoints: [ { address: 127.0.0.1:9001, weight: 2 }, { address: 127.0.0.1:9002 } ]
    timeouts: { connect: 1s, request: 15s, idle: 60s }
";

#[test]
fn parses_the_documented_shape() {
    let c = load(GOOD).expect("valid").config;
    assert_eq!(c.listeners[0].protocol, ListenerProtocol::Http);
    assert_eq!(
        c.routes[0].matches.headers["x-env"],
        ValueRule::Exact("canary".into())
    );
    assert_eq!(c.clusters[0].lb, LbPolicy::Maglev);
    assert_eq!(c.clusters[0].hash_on, Some(HashOn::Header("x-user".into())));
    assert_eq!(c.clusters[0].endpoints[1].weight, 1);
    assert_eq!(
        c.clusters[0].timeouts.request,
        std::time::Duration::from_secs(15)
    );
    assert_eq!(c.limits, Limits::default());
}

#[test]
fn unknown_key_names_line_field_and_suggestion() {
    let text = GOOD.replace("    cluster: api\n", "    clustr: api\n");
    assert_eq!(
        err(&text),
        "weir.yaml:7: routes[0].clustr: unknown field \"clustr\" (did you mean \"cluster\"?)"
    );
}

#[test]
fn unknown_variant_suggests() {
    let text = GOOD.replace("lb: maglev", "lb: round_robn");
    let e = err(&text);
    assert!(e.starts_with("weir.yaml:11: clusters[0].lb: unknown variant \"round_robn\" (did you mean \"round_robin\"?)"), "{e}");
}

#[test]
fn unknown_cluster_is_located_and_suggested() {
    let text = GOOD.replace("    cluster: api\n", "    cluster: apj\n");
    assert_eq!(
        err(&text),
        "weir.yaml:7: routes[0].cluster: unknown cluster \"apj\" (did you mean \"api\"?)"
    );
}

#[test]
fn all_issues_are_reported_in_line_order() {
    let text = GOOD
        .replace("    cluster: api\n", "    cluster: nope\n")
        .replace("weight: 2", "weight: 0");
    let e = err(&text);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(
        lines[0].starts_with("weir.yaml:7: routes[0].cluster: unknown cluster \"nope\""),
        "{e}"
    );
    assert!(
        lines[1].starts_with("weir.yaml:13: clusters[0].endpoints[0].weight: must be at least 1"),
        "{e}"
    );
}

#[test]
fn syntax_error_has_a_line() {
    let e = err("listeners:\n  - { name: a, listen: 127.0.0.1:1\n");
    assert!(e.starts_with("weir.yaml:"), "{e}");
    assert!(e.chars().nth(10).is_some_and(|c| c.is_ascii_digit()), "{e}");
}

#[test]
fn bad_values_are_rejected_with_their_field() {
    let cases = [
        (
            GOOD.replace("connect: 1s", "connect: 1 parsec"),
            "weir.yaml:14: clusters[0].timeouts.connect: invalid duration",
        ),
        (
            GOOD.replace("127.0.0.1:8080", "127.0.0.1:http"),
            "weir.yaml:3: listeners[0].listen: invalid socket address",
        ),
        (
            GOOD.replace("127.0.0.1:9002", "localhost"),
            "weir.yaml:13: clusters[0].endpoints[1].address: invalid address",
        ),
        (
            GOOD.replace("[GET, POST]", "[GET, post]"),
            "weir.yaml:6: routes[0].match.methods[1]: invalid method",
        ),
        (
            GOOD.replace("path_prefix: /v1/,", "path_prefix: /v1/, path: /x,"),
            "weir.yaml:6: routes[0].match.path_prefix: give only one of",
        ),
        (
            GOOD.replace("lb: maglev", "lb: random"),
            "weir.yaml:12: clusters[0].hash_on: only ring_hash and maglev",
        ),
        (
            GOOD.replace("protocol: http }", "protocol: https }"),
            "weir.yaml:3: listeners[0].tls: an https listener needs",
        ),
        (
            GOOD.replace("x-env: canary", "x-env: { regex: \"(\" }"),
            "weir.yaml:6: routes[0].match.headers.x-env: invalid regex",
        ),
        (
            GOOD.replace("x-env: canary", "x-env: { exact: a, regex: b }"),
            "weir.yaml:6: routes[0].match.headers.x-env: give exactly one of",
        ),
        (
            format!("{GOOD}  - name: api\n    endpoints: [ {{ address: 127.0.0.1:1 }} ]\n"),
            "weir.yaml:15: clusters[1].name: duplicate name \"api\"",
        ),
        (
            "limits: { max_request_header_bytes: 12 parsecs }\n".to_string(),
            "weir.yaml:1: limits.max_request_header_bytes: unknown size unit",
        ),
        (
            format!("{GOOD}filter_instances: 4\n"),
            "weir.yaml:15: filter_instances: must be between 16 and 100000 (got 4)",
        ),
        (
            format!("{GOOD}filter_instances: 1000000\n"),
            "weir.yaml:15: filter_instances: must be between 16 and 100000",
        ),
        (
            format!("{GOOD}filter_instances: -1\n"),
            "weir.yaml:15: filter_instances: invalid value",
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .map(|(text, want)| (err(text), want))
        .filter(|(got, want)| !got.starts_with(**want))
        .map(|(got, want)| format!("want {want:?}\n got {got:?}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn time_per_phase_is_bounded() {
    let filter = |t: &str| {
        format!(
            "filters:\n  - name: f\n    module: f.wasm\n    limits: {{ time_per_phase: {t} }}\n"
        )
    };
    let want =
        "weir.yaml:4: filters[0].limits.time_per_phase: must be greater than 0 and at most 60s";
    // Instantiation is given 20 times the budget: none of these may reach it (nor overflow it).
    for t in [
        "0s",
        "60001ms",
        "61s",
        "1h",
        "10000000y",
        "18446744073709551615s",
    ] {
        let e = err(&filter(t));
        assert!(e.starts_with(want), "{t}: {e}");
    }
    for t in ["1ms", "5ms", "60s"] {
        let c = load(&filter(t))
            .unwrap_or_else(|e| panic!("{t}: {e}"))
            .config;
        assert!(c.filters[0].limits.time_per_phase <= MAX_TIME_PER_PHASE);
    }
}

#[test]
fn sizes_and_durations() {
    let c = load("limits: { max_request_header_bytes: 16KiB, idle_timeout: 1m30s }\n")
        .unwrap()
        .config;
    assert_eq!(c.limits.max_request_header_bytes, ByteSize(16 * 1024));
    assert_eq!(c.limits.idle_timeout, std::time::Duration::from_secs(90));
}

#[test]
fn config_round_trips_through_json() {
    let c = load(GOOD).unwrap().config;
    let json = serde_json::to_string(&c).unwrap();
    let back: Config = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
}

#[test]
fn line_index_finds_nested_fields() {
    let idx = LineIndex::build(GOOD);
    assert_eq!(idx.line_of("routes[0].match.host"), Some(6));
    assert_eq!(idx.line_of("clusters[0].endpoints[1].address"), Some(13));
    assert_eq!(idx.line_of("clusters[0].timeouts.idle"), Some(14));
    assert_eq!(idx.line_of("clusters[0].nonexistent"), Some(10));
}

#[test]
fn every_example_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            LoadedConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen > 0, "no example configs found in {}", dir.display());
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC*") {
        let _ = load(&s);
    }
}

#[test]
fn every_deadline_after_the_head_has_a_nonzero_default_and_refuses_zero() {
    let c = load("{}\n").unwrap().config;
    let l = &c.limits;
    for d in [
        l.request_body_timeout,
        l.send_timeout,
        l.tunnel_idle_timeout,
        l.request_head_timeout,
        l.idle_timeout,
    ] {
        assert!(!d.is_zero());
    }
    assert_eq!(l.upgrade_protocols, vec!["websocket".to_string()]);
    for field in [
        "request_body_timeout",
        "send_timeout",
        "tunnel_idle_timeout",
        "request_head_timeout",
        "idle_timeout",
    ] {
        let e = err(&format!("limits:\n  {field}: 0s\n"));
        assert!(
            e.contains(&format!(
                "weir.yaml:2: limits.{field}: must be greater than 0"
            )),
            "{field}: {e}"
        );
    }
    let e = err(
        "clusters:\n  - name: c\n    endpoints: [ { address: \"127.0.0.1:1\" } ]\n    timeouts: { body: 0s }\n",
    );
    assert!(
        e.contains("clusters[0].timeouts.body: must be greater than 0"),
        "{e}"
    );
}

#[test]
fn h2c_and_non_tokens_are_refused_as_upgrade_protocols() {
    for (p, want) in [
        ("h2c", "h2c is refused"),
        ("H2C", "h2c is refused"),
        ("h2c/1", "h2c is refused"),
        ("\"\"", "is not a protocol token"),
        ("\"web socket\"", "is not a protocol token"),
        ("\"a,b\"", "is not a protocol token"),
    ] {
        let e = err(&format!(
            "limits:\n  upgrade_protocols: [ websocket, {p} ]\n"
        ));
        assert!(
            e.contains("limits.upgrade_protocols[1]") && e.contains(want),
            "{p}: {e}"
        );
    }
    let c = load("limits: { upgrade_protocols: [ websocket, x-custom/2 ] }\n")
        .unwrap()
        .config;
    assert_eq!(c.limits.upgrade_protocols.len(), 2);
}

/// Values serde would quote in an error (a secret in the wrong place, a file that is not a
/// config at all) never appear in the message; the field and the kind of value still do.
#[test]
fn errors_never_quote_the_value_they_refuse() {
    let cases = [
        (
            "workers: s3cret-workers\n",
            "s3cret",
            "workers: invalid type: string, expected usize",
        ),
        (
            "limits: { max_connections: true }\n",
            "true",
            "limits.max_connections: invalid type: boolean, expected usize",
        ),
        (
            "limits: { max_connections: 3.14159 }\n",
            "3.14159",
            "limits.max_connections: invalid type: floating point, expected usize",
        ),
        (
            "admin: \"s3cret \\\"quoted\\\" value\"\n",
            "s3cret",
            "admin: invalid type: string, expected struct AdminConfig",
        ),
        // A file that is not YAML mapping at all (a key, a password file) is not echoed back.
        (
            "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBg\n",
            "MIIEvQIBADANBg",
            "invalid type: string, expected struct Config",
        ),
        (
            "root:x:0:0:root:/root:/bin/bash\n",
            "/bin/bash",
            "invalid type: string, expected struct Config",
        ),
        (
            "workers: -7\n",
            "-7",
            "workers: invalid value: integer, expected usize",
        ),
    ];
    for (text, secret, want) in cases {
        let msg = err(text);
        assert!(!msg.contains(secret), "{secret:?} shown in {msg:?}");
        assert!(msg.contains(want), "want {want:?} in {msg:?}");
    }
    assert_eq!(
        crate::error::without_values("invalid type: string \"abc, expected x"),
        "invalid type: string",
        "a cut message drops everything after the kind"
    );
}

#[test]
fn admin_token_must_be_a_bearer_token_and_is_never_echoed() {
    for bad in [
        "\"\"",
        "\"two words\"",
        "\"tab\\there\"",
        "\"caf\u{e9}-s3cret\"",
    ] {
        let msg = err(&format!("admin: {{ token: {bad} }}\n"));
        assert!(
            msg.starts_with(
                "weir.yaml:1: admin.token: must be printable ASCII without spaces (a bearer token)"
            ),
            "{msg}"
        );
        assert!(
            !msg.contains("two words") && !msg.contains("s3cret"),
            "{msg}"
        );
    }
    let c = load("admin: { token: abc.DEF-123_~+/= , unix: admin.sock, token_file: t/tok }\n")
        .unwrap()
        .config;
    assert_eq!(c.admin.unix.as_deref(), Some(Path::new("admin.sock")));
    assert_eq!(c.admin.token_file.as_deref(), Some(Path::new("t/tok")));
    assert!(err("admin: { unix: \"\" }\n").contains("admin.unix: must not be empty"));
}

#[test]
fn redacted_hides_the_token_and_every_filter_config_whole() {
    let text = "\
admin: { listen: 127.0.0.1:9901, token: tok-s3cret }
listeners: [ { name: public, listen: 127.0.0.1:8080 } ]
filters:
  - name: auth
    module: auth.wasm
    config: { keys: { key-s3cret: alice }, hmac: hmac-s3cret, n: 12345, nested: [ { pem: { $text_file: key.pem } } ] }
routes:
  - { name: a, match: { path_prefix: /a }, cluster: c, filters: [ auth ] }
  - { name: b, match: { path_prefix: /b }, cluster: c, filters: [ { name: auth, config: { hmac: route-s3cret } } ] }
clusters: [ { name: c, endpoints: [ { address: 127.0.0.1:9 } ] } ]
";
    let c = load(text).unwrap().config;
    let shown = c.redacted();
    let json = serde_json::to_string(&shown).unwrap();
    let yaml = crate::to_yaml(&shown).unwrap();
    for out in [&json, &yaml] {
        for secret in ["s3cret", "12345", "key.pem"] {
            assert!(!out.contains(secret), "{secret:?} shown in {out}");
        }
    }
    assert_eq!(shown.admin.token.as_deref(), Some(REDACTED));
    assert_eq!(shown.filters[0].config, serde_json::json!(REDACTED));
    assert_eq!(
        shown.routes[0].filters[0].config, None,
        "no override stays none"
    );
    assert_eq!(
        shown.routes[1].filters[0].config,
        Some(serde_json::json!(REDACTED))
    );
    // Everything else is shown as it is.
    assert_eq!(shown.filters[0].module, c.filters[0].module);
    assert_eq!(shown.routes, {
        let mut r = c.routes.clone();
        r[1].filters[0].config = Some(serde_json::json!(REDACTED));
        r
    });
    assert_eq!(shown.clusters, c.clusters);
}

/// The README's configuration reference is a config this version accepts: every key it shows
/// exists, with a value of the documented form (so the reference cannot rot).
#[test]
fn the_readme_reference_config_parses() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split_once("## Configuration reference")
        .expect("README has a configuration reference")
        .1;
    let block = section
        .split_once("```yaml\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("a yaml block in the reference")
        .0;
    if let Err(e) = LoadedConfig::from_str(Path::new("README.md"), block) {
        panic!("the README's reference config is refused:\n{e}");
    }
}

/// Hostile YAML is refused quickly, with its line, before it costs memory: alias bombs, deep
/// nesting, duplicate keys (which would otherwise silently keep the last value).
#[test]
fn hostile_yaml_is_refused_with_its_line() {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
            p = i - 1
        ));
    }
    let started = std::time::Instant::now();
    let msg = load(&bomb).unwrap_err().to_string();
    assert!(msg.contains("more than 1000000 values"), "{msg}");
    assert!(msg.starts_with("weir.yaml:6:"), "{msg}"); // a5: 10^6 values
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    for deep in [
        format!("workers: {}1{}\n", "[".repeat(100_000), "]".repeat(100_000)),
        (0..10_000)
            .map(|i| format!("{}k:\n", " ".repeat(i)))
            .collect(),
    ] {
        let msg = load(&deep).unwrap_err().to_string();
        assert!(
            msg.contains("nested deeper than 128 levels") || msg.contains("recursion"),
            "{msg}"
        );
    }

    let dup = "workers: 2\nlisteners: [ { name: public, listen: 127.0.0.1:0 } ]\nworkers: 3\n";
    assert_eq!(
        load(dup).unwrap_err().to_string(),
        "weir.yaml:3: duplicate key \"workers\""
    );
}

/// `to_yaml` (GET /config?format=yaml, and how admin edits are re-read) gives back exactly the
/// value it was given, strings that look like other types or YAML syntax included.
#[test]
fn yaml_rendering_reads_back_the_same() {
    let tricky = [
        "*",
        "&a",
        "!tag",
        "yes",
        "on",
        "123",
        "-1.5",
        "0x1f",
        "",
        " lead",
        "trail ",
        "a: b",
        "- x",
        "#c",
        "x #c",
        "null",
        "~",
        "true",
        "a\nb",
        "tab\there",
        "\"q\"",
        "'s'",
        "{",
        "[",
        "é ünïcödé",
        "%x",
        "@x",
        "`x",
        "|",
        ">",
        "? k",
        "...",
        "---",
        "\\",
        "1e3",
        ".inf",
    ];
    let value = serde_json::json!({
        "strings": tricky.as_slice(),
        "nested": { "list": [ { "k": "v", "n": 1, "f": 2.5, "b": false, "z": null } ] },
        "big": u64::MAX,
        "neg": i64::MIN,
    });
    let text = crate::to_yaml(&value).unwrap();
    assert_eq!(crate::yaml_value(&text).unwrap(), value, "{text}");
}

#[test]
fn state_backends_parse_with_defaults_and_bad_ones_name_their_field() {
    let c = load("{}").unwrap().config;
    assert_eq!(c.state, StateConfig::default());
    assert_eq!(c.state.backend, StateBackend::Embedded);
    let c = load(
        "state: { backend: redis, url: \"redis://127.0.0.1:6379/2\", pool: { size: 16, timeout: 20ms }, on_unavailable: fail, key_prefix: \"edge:\" }\n",
    )
    .unwrap()
    .config;
    assert_eq!(c.state.backend, StateBackend::Redis);
    assert_eq!(c.state.pool.size, 16);
    assert_eq!(c.state.pool.timeout, std::time::Duration::from_millis(20));
    assert_eq!(c.state.on_unavailable, OnUnavailable::Fail);
    assert_eq!(c.state.key_prefix, "edge:");
    // Round trip through YAML (admin API edits re-render the config).
    let again = load(&crate::to_yaml(&c).unwrap()).unwrap().config;
    assert_eq!(again.state, c.state);
    let c = load(
        "state: { backend: redis, url: \"rediss://r.internal:6380/0\", tls: { ca: ca.pem, cert: c.pem, key: c.key } }\n",
    )
    .unwrap()
    .config;
    let c2 = load(
        "state: { backend: redis, url: \"redis://h:1\", lease: { share: 0.05, max_age: 250ms } }\n",
    )
    .unwrap()
    .config;
    assert_eq!(c2.state.lease.share, 0.05);
    assert_eq!(
        c2.state.lease.max_age,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(
        load(&crate::to_yaml(&c2).unwrap()).unwrap().config.state,
        c2.state
    );
    let tls = c.state.tls.clone().unwrap();
    assert_eq!(tls.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
    assert_eq!(tls.key.as_deref(), Some(std::path::Path::new("c.key")));
    let again = load(&crate::to_yaml(&c).unwrap()).unwrap().config;
    assert_eq!(again.state, c.state);
    assert!(
        !crate::to_yaml(&load("{}").unwrap().config)
            .unwrap()
            .contains("state"),
        "the default is not rendered"
    );

    for (text, field, says) in [
        ("state: { backend: redis }", "state.url", "needs a url"),
        (
            "state: { url: \"redis://h:1\" }",
            "state.url",
            "only used with backend: redis",
        ),
        (
            "state: { backend: redis, url: \"http://h:1\" }",
            "state.url",
            "must start with redis://",
        ),
        (
            "state: { backend: redis, url: \"127.0.0.1:6379\" }",
            "state.url",
            "must start with redis://",
        ),
        (
            "state: { backend: redis, url: \"rediss://h:1/0#insecure\" }",
            "state.url",
            "certificate checks cannot be turned off",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", tls: { ca: ca.pem } }",
            "state.tls",
            "only used with a rediss:// url",
        ),
        (
            "state: { backend: redis, url: \"rediss://h:1\", tls: { cert: c.pem } }",
            "state.tls",
            "cert and key go together",
        ),
        (
            "state: { backend: redis, url: \"rediss://h:1\", tls: { ca: a, verify: no } }",
            "state.tls",
            "unknown field",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", pool: { size: 0 } }",
            "state.pool.size",
            "between 1 and 256",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", pool: { size: 100000 } }",
            "state.pool.size",
            "between 1 and 256",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", pool: { timeout: 0s } }",
            "state.pool.timeout",
            "greater than 0",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", pool: { timeout: 1h } }",
            "state.pool.timeout",
            "at most 10s",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", key_prefix: \"a b\" }",
            "state.key_prefix",
            "visible ASCII",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", lease: { share: 0.9 } }",
            "state.lease.share",
            "between 0 (off) and 0.5",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", lease: { share: -0.1 } }",
            "state.lease.share",
            "between 0 (off) and 0.5",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", lease: { share: 0.1, max_age: 0s } }",
            "state.lease.max_age",
            "greater than 0",
        ),
        (
            "state: { lease: { share: 0.1 } }",
            "state.lease",
            "for backend: redis",
        ),
        (
            "state: { backend: memcached }",
            "state.backend",
            "unknown variant",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", on_unavailable: maybe }",
            "state.on_unavailable",
            "unknown variant",
        ),
        (
            "state: { backend: redis, url: \"redis://h:1\", pool: { size: 1, extra: 2 } }",
            "state.pool",
            "unknown field",
        ),
    ] {
        let e = err(&format!("{text}\n"));
        assert!(e.contains(field) && e.contains(says), "{text}: {e}");
    }
}

#[test]
fn a_redis_password_is_never_echoed() {
    for url in [
        "redis://:hunter2-s3cret@127.0.0.1:6379/0",
        "redis://alice:hunter2-s3cret@127.0.0.1:6379/0",
        "redis://s3cret-token@redis.example:6380",
        "rediss://s3cret-token@redis.example:6380",
        "http://alice:s3cret@h:1",
    ] {
        // A valid URL: /config shows it without the credentials.
        let text = format!("state: {{ backend: redis, url: \"{url}\" }}\n");
        match load(&text) {
            Ok(l) => {
                let shown = l.config.redacted();
                let out = serde_json::to_string(&shown).unwrap();
                assert!(!out.contains("s3cret"), "{out}");
                let shown_url = shown.state.url.unwrap();
                assert!(shown_url.contains(REDACTED), "{shown_url}");
                assert!(
                    shown_url.ends_with(url.rsplit('@').next().unwrap()),
                    "{shown_url}"
                );
            }
            // An invalid one: the error does not quote it.
            Err(e) => assert!(!e.to_string().contains("s3cret"), "{e}"),
        }
    }
}

#[test]
fn kv_namespaces_must_be_simple_names() {
    let base = |ns: &str| {
        format!("filters: [ {{ name: f, module: f.wasm, grants: {{ kv: [ {ns} ] }} }} ]\n")
    };
    assert!(load(&base("ratelimit")).is_ok());
    assert!(load(&base("rl-go.v2_x")).is_ok());
    for bad in ["\"a:b\"", "\"\"", "\"a b\"", "\"ns/../x\"", &"x".repeat(65)] {
        let e = err(&base(bad));
        assert!(
            e.contains("filters[0].grants.kv[0]") && e.contains("not a namespace name"),
            "{bad}: {e}"
        );
    }
}
