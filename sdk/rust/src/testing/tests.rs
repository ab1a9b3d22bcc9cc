use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use anyhow::{Result, ensure};
use serde::Deserialize;

use super::emulator::{Phase, RequestHead, ResponseHead, Scope};
use super::*;
use crate::http::HeaderMap;
use crate::sys::{Backend, Host};
use crate::{Body, LocalResponse, LogView, Request, Response, callout, clock, kv, log, metrics};

/// Declares the phases its config lists and logs every call with the context's call count.
struct Probe {
    phases: Phases,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeConfig {
    #[serde(default)]
    phases: Vec<String>,
    #[serde(default)]
    reject: Option<String>,
}

#[derive(Default)]
struct Calls(u32);

impl Probe {
    fn note(ctx: &mut Calls, what: &str) {
        ctx.0 += 1;
        log::info(&format!("{what} #{}", ctx.0));
    }
}

impl Filter for Probe {
    type Config = ProbeConfig;
    type Context = Calls;
    const PHASES: Phases = Phases::ALL;

    fn new(config: ProbeConfig) -> Result<Self, String> {
        if let Some(reason) = config.reject {
            return Err(reason);
        }
        let mut phases = Phases::NONE;
        for p in &config.phases {
            phases |= match p.as_str() {
                "request-headers" => Phases::REQUEST_HEADERS,
                "request-body" => Phases::REQUEST_BODY,
                "response-headers" => Phases::RESPONSE_HEADERS,
                "response-body" => Phases::RESPONSE_BODY,
                "log" => Phases::LOG,
                "stateless" => Phases::STATELESS,
                other => return Err(format!("phases: unknown phase {other:?}")),
            };
        }
        Ok(Self { phases })
    }

    fn phases(&self) -> Phases {
        self.phases
    }

    fn on_request_headers(&self, req: &mut Request, ctx: &mut Calls) -> Action {
        Self::note(ctx, &format!("request-headers {}", req.path()));
        Action::Continue
    }
    fn on_request_body(&self, _: &mut Body, end: bool, ctx: &mut Calls) -> Action {
        Self::note(ctx, &format!("request-body end={end}"));
        Action::Continue
    }
    fn on_response_headers(&self, res: &mut Response, ctx: &mut Calls) -> Action {
        Self::note(ctx, &format!("response-headers {}", res.status()));
        Action::Continue
    }
    fn on_response_body(&self, _: &mut Body, end: bool, ctx: &mut Calls) -> Action {
        Self::note(ctx, &format!("response-body end={end}"));
        Action::Continue
    }
    fn on_log(&self, log: &LogView, ctx: &mut Calls) {
        Self::note(ctx, &format!("log {}", log.response().status()));
    }
}

fn messages(h: &Emulator) -> Vec<String> {
    h.take_logs().into_iter().map(|l| l.message).collect()
}

fn probe(phases: &[&str]) -> Result<Harness<Probe>> {
    Ok(Harness::new(serde_json::json!({ "phases": phases }))?)
}

/// Runs `f` as if it were a phase with this scope, for testing the emulator's rules.
fn in_phase<R>(phase: Option<Phase>, scope: Scope, f: impl FnOnce() -> R) -> Result<(R, Scope)> {
    let mut h = probe(&[])?;
    Ok(h.run(phase, scope, |_| f()))
}

fn request_scope() -> Scope {
    Scope {
        request: Some(RequestHead {
            method: "GET".into(),
            path: "/a".into(),
            headers: vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
            ..RequestHead::default()
        }),
        ..Scope::default()
    }
}

fn response_scope() -> Scope {
    Scope {
        response: Some(ResponseHead {
            status: 200,
            headers: vec![("server".into(), "up".into())],
        }),
        ..request_scope()
    }
}

#[test]
fn config_errors_come_from_serde_and_new() -> Result<()> {
    let e = Harness::<Probe>::new(serde_json::json!({ "phases": 3 })).err();
    ensure!(
        e.as_ref()
            .is_some_and(|e| e.message.starts_with("config: invalid type")),
        "{e:?}"
    );
    let e = Harness::<Probe>::new(serde_json::json!({ "bogus": 1 })).err();
    ensure!(
        e.as_ref()
            .is_some_and(|e| e.message.contains("unknown field `bogus`")),
        "{e:?}"
    );
    let e = Harness::<Probe>::new(serde_json::json!({ "reject": "keys: required" })).err();
    assert_eq!(e, Some(ConfigError::new("keys: required")));
    // The proxy may pass no config at all: that reads as `{}`.
    let h = Harness::<Probe>::from_config_str("  ")?;
    assert_eq!(h.phases(), Phases::NONE);
    Ok(())
}

/// Keeps nothing per request.
struct Stateless;

impl Filter for Stateless {
    type Config = serde::de::IgnoredAny;
    type Context = ();
    const PHASES: Phases = Phases::REQUEST_HEADERS;
    fn new(_: Self::Config) -> Result<Self, String> {
        Ok(Stateless)
    }
}

#[test]
fn a_filter_without_context_is_declared_stateless_and_stores_none() -> Result<()> {
    let mut h = Harness::<Stateless>::new(serde_json::json!({}))?;
    assert_eq!(h.phases(), Phases::REQUEST_HEADERS | Phases::STATELESS);
    h.request_headers(&mut TestRequest::get("/a"));
    assert_eq!(h.live_contexts(), 0);
    // A context type with data stays stateful unless the filter says otherwise.
    let mut p = probe(&["request-headers"])?;
    assert!(!p.phases().contains(Phases::STATELESS));
    p.request_headers(&mut TestRequest::get("/a"));
    assert_eq!(p.live_contexts(), 1);
    Ok(())
}

#[test]
fn a_declared_stateless_filter_gets_a_fresh_context_every_call() -> Result<()> {
    let mut h = probe(&["request-headers", "response-headers", "stateless"])?;
    let mut a = TestRequest::get("/a");
    h.request_headers(&mut a);
    h.response_headers(&mut a, &mut TestResponse::new(200));
    assert_eq!(h.live_contexts(), 0);
    assert_eq!(
        messages(&h),
        ["request-headers /a #1", "response-headers 200 #1"]
    );
    Ok(())
}

#[test]
fn only_declared_phases_run_and_contexts_live_per_request() -> Result<()> {
    let mut h = probe(&["request-headers", "log"])?;
    assert_eq!(h.phases(), Phases::REQUEST_HEADERS | Phases::LOG);

    let mut a = TestRequest::get("/a");
    let mut b = TestRequest::get("/b");
    let mut res = TestResponse::new(204);
    assert_eq!(h.request_headers(&mut a), Action::Continue);
    assert_eq!(h.request_headers(&mut b), Action::Continue);
    assert_eq!(h.request_body(&mut a, b"xyz", true), Action::Continue);
    assert_eq!(a.forwarded_body(), b"xyz");
    assert_eq!(h.response_headers(&mut a, &mut res), Action::Continue);
    h.log(&a, &res);
    assert_eq!(h.live_contexts(), 2);
    h.done(&a);
    assert_eq!(h.live_contexts(), 1);
    h.done(&b);
    h.done(&b); // idempotent
    assert_eq!(h.live_contexts(), 0);
    assert_eq!(
        messages(&h),
        [
            "request-headers /a #1",
            "request-headers /b #1",
            "log 204 #2"
        ]
    );
    // A new request after done starts a fresh context.
    let mut c = TestRequest::get("/c");
    h.request_headers(&mut c);
    assert_eq!(messages(&h), ["request-headers /c #1"]);
    Ok(())
}

#[test]
fn request_head_changes_only_in_request_phases() -> Result<()> {
    let ((), scope) = in_phase(Some(Phase::RequestHeaders), request_scope(), || {
        assert_eq!(Backend::method(), "GET");
        assert_eq!(
            Backend::get_header(HeaderMap::Request, "X-A"),
            Some("1".into())
        );
        assert_eq!(
            Backend::get_header_all(HeaderMap::Request, "x-a"),
            ["1", "2"]
        );
        assert_eq!(Backend::set_header(HeaderMap::Request, "X-B", "b"), Ok(()));
        assert_eq!(
            Backend::append_header(HeaderMap::Request, "x-b", "c"),
            Ok(())
        );
        assert_eq!(Backend::remove_header(HeaderMap::Request, "x-a"), Ok(()));
        assert_eq!(Backend::set_path("/rewritten?q=1"), Ok(()));
        assert!(matches!(
            Backend::set_path("relative"),
            Err(HostError::Invalid(_))
        ));
        assert!(matches!(
            Backend::set_header(HeaderMap::Request, "bad name", "v"),
            Err(HostError::Invalid(_))
        ));
        assert!(matches!(
            Backend::set_header(HeaderMap::Request, "x", "a\r\nb"),
            Err(HostError::Invalid(_))
        ));
        // No response yet: no status; the response map holds the headers to set on the
        // response to come.
        assert_eq!(Backend::status(), 0);
        assert_eq!(Backend::headers(HeaderMap::Response), []);
        assert_eq!(Backend::set_header(HeaderMap::Response, "x-r", "1"), Ok(()));
        assert_eq!(
            Backend::append_header(HeaderMap::Response, "X-R", "2"),
            Ok(())
        );
        assert_eq!(
            Backend::set_header(HeaderMap::Response, "x-gone", "1"),
            Ok(())
        );
        assert_eq!(
            Backend::remove_header(HeaderMap::Response, "x-gone"),
            Ok(())
        );
        assert_eq!(
            Backend::get_header_all(HeaderMap::Response, "x-r"),
            ["1", "2"]
        );
        assert_eq!(Backend::get_header(HeaderMap::Request, "x-r"), None);
        assert!(matches!(
            Backend::set_status(500),
            Err(HostError::Unavailable(_))
        ));
        assert!(matches!(
            Backend::body(BodyKind::Request),
            Err(HostError::Unavailable(_))
        ));
    })?;
    let request = scope.request.unwrap_or_default();
    assert_eq!(
        request.response_headers,
        [
            ("x-r".to_owned(), "1".to_owned()),
            ("x-r".to_owned(), "2".to_owned())
        ]
    );
    assert_eq!(request.path, "/rewritten?q=1");
    assert_eq!(
        request.headers,
        [
            ("x-b".to_owned(), "b".to_owned()),
            ("x-b".to_owned(), "c".to_owned())
        ]
    );
    Ok(())
}

#[test]
fn response_head_changes_only_in_response_headers() -> Result<()> {
    let ((), scope) = in_phase(Some(Phase::ResponseHeaders), response_scope(), || {
        assert_eq!(Backend::status(), 200);
        assert_eq!(Backend::set_status(418), Ok(()));
        assert!(matches!(
            Backend::set_status(99),
            Err(HostError::Invalid(_))
        ));
        assert_eq!(Backend::set_header(HeaderMap::Response, "x-r", "1"), Ok(()));
        assert_eq!(Backend::path(), "/a");
        assert!(matches!(
            Backend::set_header(HeaderMap::Request, "x", "y"),
            Err(HostError::Unavailable(_))
        ));
        assert!(matches!(
            Backend::set_path("/b"),
            Err(HostError::Unavailable(_))
        ));
    })?;
    let response = scope.response.unwrap_or_default();
    assert_eq!(response.status, 418);
    assert_eq!(response.headers.len(), 2);

    in_phase(Some(Phase::Log), response_scope(), || {
        assert_eq!(
            Backend::get_header(HeaderMap::Response, "server"),
            Some("up".into())
        );
        assert!(matches!(
            Backend::set_header(HeaderMap::Response, "x", "y"),
            Err(HostError::Unavailable(_))
        ));
        assert!(matches!(
            Backend::set_status(200),
            Err(HostError::Unavailable(_))
        ));
    })?;
    Ok(())
}

#[test]
fn framing_headers_are_the_proxys_in_every_phase_and_map() -> Result<()> {
    let phases = [
        None,
        Some(Phase::RequestHeaders),
        Some(Phase::RequestBody),
        Some(Phase::ResponseHeaders),
        Some(Phase::ResponseBody),
        Some(Phase::Log),
    ];
    for phase in phases {
        let mut scope = response_scope();
        if let Some(r) = scope.request.as_mut() {
            r.headers.push(("content-length".into(), "5".into()));
        }
        if let Some(r) = scope.response.as_mut() {
            r.headers
                .push(("transfer-encoding".into(), "chunked".into()));
        }
        let before = (scope.request.clone(), scope.response.clone());
        let ((), after) = in_phase(phase, scope, || {
            for map in [HeaderMap::Request, HeaderMap::Response] {
                for name in crate::validate::FRAMING_HEADERS {
                    // The proxy's message, with the name lowercased whatever the filter sent.
                    let refused = Err(HostError::Invalid(format!(
                        "{name} is a framing or hop-by-hop header: the proxy sets it"
                    )));
                    let shouted = name.to_ascii_uppercase();
                    let why = format!("{phase:?} {map:?} {name}");
                    assert_eq!(Backend::set_header(map, &shouted, "0"), refused, "{why}");
                    assert_eq!(Backend::append_header(map, name, "0"), refused, "{why}");
                    assert_eq!(Backend::remove_header(map, &shouted), refused, "{why}");
                }
            }
            // Reading them stays allowed.
            assert_eq!(
                Backend::get_header(HeaderMap::Request, "Content-Length"),
                Some("5".into())
            );
            // (In the request phases the response map is the headers to set on the response
            // to come, empty here.)
            let before_response = matches!(phase, Some(Phase::RequestHeaders | Phase::RequestBody));
            assert_eq!(
                Backend::get_header_all(HeaderMap::Response, "transfer-encoding"),
                if before_response {
                    vec![]
                } else {
                    vec!["chunked".to_owned()]
                }
            );
        })?;
        ensure!(
            (after.request, after.response) == before,
            "{phase:?}: a refused call changed a head"
        );
    }
    // Names that only contain a framing header's name are ordinary headers.
    in_phase(Some(Phase::RequestHeaders), request_scope(), || {
        assert_eq!(
            Backend::set_header(HeaderMap::Request, "x-content-length", "5"),
            Ok(())
        );
        assert_eq!(
            Backend::set_header(HeaderMap::Request, "upgrade-insecure-requests", "1"),
            Ok(())
        );
        assert_eq!(Backend::remove_header(HeaderMap::Request, "tea"), Ok(()));
    })?;
    Ok(())
}

/// Buffers a body until its end, then replaces it with its length.
struct Length;
impl Filter for Length {
    type Config = serde::de::IgnoredAny;
    type Context = ();
    const PHASES: Phases = Phases::REQUEST_BODY.union(Phases::RESPONSE_BODY);
    fn new(_: Self::Config) -> Result<Self, String> {
        Ok(Length)
    }
    fn on_request_body(&self, body: &mut Body, end: bool, _: &mut ()) -> Action {
        if !end {
            return Action::Buffer;
        }
        let Ok(bytes) = body.bytes() else {
            return Action::respond(500);
        };
        match body.set(bytes.len().to_string()) {
            Ok(()) => Action::Continue,
            Err(_) => Action::respond(500),
        }
    }
    fn on_response_body(&self, body: &mut Body, end: bool, _: &mut ()) -> Action {
        if body.response().map(Response::status) == Some(500) {
            return LocalResponse::text(502, "upstream failed").into();
        }
        if body.request().header("x-skip").is_some() {
            return Action::Continue;
        }
        self.on_request_body(body, end, &mut ())
    }
}

#[test]
fn bodies_are_buffered_replaced_and_forwarded() -> Result<()> {
    let mut h = Harness::<Length>::new(serde_json::json!(null))?;
    let mut req = TestRequest::post("/upload");
    assert_eq!(h.request_headers(&mut req), Action::Continue); // undeclared
    assert_eq!(h.request_body(&mut req, b"hello ", false), Action::Buffer);
    assert_eq!(h.request_body(&mut req, b"world", false), Action::Buffer);
    assert_eq!(req.forwarded_body(), b"");
    assert_eq!(h.request_body(&mut req, b"!", true), Action::Continue);
    assert_eq!(req.forwarded_body(), b"12");

    let mut res = TestResponse::new(200);
    assert_eq!(
        h.response_body(&mut req, &mut res, b"abc", true),
        Action::Continue
    );
    assert_eq!(res.forwarded_body(), b"3");

    let mut skip = TestRequest::get("/").header("x-skip", "1");
    let mut res = TestResponse::new(200);
    assert_eq!(
        h.response_body(&mut skip, &mut res, b"abc", false),
        Action::Continue
    );
    assert_eq!(res.forwarded_body(), b"abc");

    let mut res = TestResponse::new(500);
    let action = h.response_body(&mut req, &mut res, b"oops", true);
    assert_eq!(action, LocalResponse::text(502, "upstream failed").into());
    assert_eq!(res.forwarded_body(), b"");
    Ok(())
}

#[test]
fn kv_values_versions_ttl_and_cas() -> Result<()> {
    let host = Emulator::new();
    let _entered = host.enter();
    assert_eq!(kv::get("ns", "k")?, None);
    let v1 = kv::set("ns", "k", b"one", Some(Duration::from_secs(10)))?;
    assert_eq!(
        kv::get("ns", "k")?,
        Some(kv::Entry {
            value: b"one".to_vec(),
            version: v1
        })
    );
    assert_eq!(kv::get("other", "k")?, None);

    assert_eq!(kv::compare_and_swap("ns", "k", None, b"x", None)?, None);
    assert_eq!(
        kv::compare_and_swap("ns", "k", Some(v1 + 100), b"x", None)?,
        None
    );
    let v2 = kv::compare_and_swap("ns", "k", Some(v1), b"two", Some(Duration::from_secs(10)))?;
    ensure!(v2.is_some_and(|v2| v2 > v1), "{v2:?}");

    host.advance(Duration::from_millis(9_999));
    ensure!(kv::get("ns", "k")?.is_some());
    host.advance(Duration::from_millis(1));
    assert_eq!(kv::get("ns", "k")?, None);
    // Expired counts as absent for CAS too.
    ensure!(kv::compare_and_swap("ns", "k", None, b"three", None)?.is_some());
    kv::delete("ns", "k")?;
    kv::delete("ns", "k")?;
    assert_eq!(kv::get("ns", "k")?, None);
    // No namespace is granted by being empty (as in the host).
    ensure!(matches!(kv::get("", "k"), Err(HostError::Denied(_))));
    Ok(())
}

#[test]
fn kv_counters_reset_per_window() -> Result<()> {
    let host = Emulator::new();
    let _entered = host.enter();
    let window = Some(Duration::from_secs(1));
    assert_eq!(kv::increment("c", "k", 1, window)?, 1);
    assert_eq!(kv::increment("c", "k", 2, window)?, 3);
    host.advance(Duration::from_millis(999));
    assert_eq!(kv::increment("c", "k", 1, window)?, 4);
    host.advance(Duration::from_millis(1));
    assert_eq!(kv::increment("c", "k", 1, window)?, 1);
    assert_eq!(kv::increment("c", "forever", -5, None)?, -5);
    host.advance(Duration::from_secs(3600));
    assert_eq!(kv::increment("c", "forever", 5, None)?, 0);
    assert_eq!(kv::get("c", "forever")?, None, "counters are not values");
    kv::increment("c", "max", i64::MAX, None)?;
    // Counters saturate, as the host's do.
    assert_eq!(kv::increment("c", "max", 1, None)?, i64::MAX);
    Ok(())
}

#[test]
fn token_buckets_refill_at_their_rate() -> Result<()> {
    let host = Emulator::new();
    let _entered = host.enter();
    let take = |cost| kv::take_tokens("rl", "ip", 2, Duration::from_secs(1), 4, cost);
    let r = take(1)?;
    assert_eq!(
        r,
        kv::BucketResult {
            allowed: true,
            remaining: 3,
            retry_after: Duration::ZERO,
            reset: Duration::from_millis(500)
        }
    );
    assert_eq!(take(3)?.remaining, 0);
    let r = take(1)?;
    assert_eq!(
        r,
        kv::BucketResult {
            allowed: false,
            remaining: 0,
            retry_after: Duration::from_millis(500),
            reset: Duration::from_secs(2)
        }
    );
    host.advance(Duration::from_millis(250));
    let r = take(1)?;
    ensure!(
        !r.allowed && r.retry_after == Duration::from_millis(250),
        "{r:?}"
    );
    host.advance(Duration::from_millis(250));
    ensure!(take(1)?.allowed);
    host.advance(Duration::from_secs(60));
    assert_eq!(take(0)?.remaining, 4, "refill stops at burst");
    ensure!(matches!(take(5), Err(HostError::Invalid(_))));
    ensure!(matches!(
        kv::take_tokens("rl", "ip", 0, Duration::from_secs(1), 4, 1),
        Err(HostError::Invalid(_))
    ));
    Ok(())
}

#[test]
fn grants_deny_kv_and_callouts() -> Result<()> {
    let host = Emulator::new();
    host.set_grants(Grants::none().kv("allowed").callout("auth"));
    host.on_callout(|_, _| Ok(callout::CalloutResponse::new(204)));
    let _entered = host.enter();
    ensure!(kv::set("allowed", "k", b"v", None).is_ok());
    let e = kv::get("secret", "k").err();
    ensure!(
        matches!(&e, Some(HostError::Denied(m)) if m.contains("\"secret\"")),
        "{e:?}"
    );
    ensure!(matches!(
        kv::increment("secret", "k", 1, None),
        Err(HostError::Denied(_))
    ));
    ensure!(matches!(
        kv::take_tokens("secret", "k", 1, Duration::from_secs(1), 1, 1),
        Err(HostError::Denied(_))
    ));
    let get = |target| callout::send(target, "GET", "/", &[], b"", Duration::from_secs(1));
    assert_eq!(get("auth")?.status, 204);
    ensure!(matches!(get("127.0.0.1:9"), Err(HostError::Denied(_))));
    assert_eq!(host.callouts().len(), 1, "denied callouts are not sent");
    Ok(())
}

#[test]
fn callouts_reach_the_handler() -> Result<()> {
    let host = Emulator::new();
    let _entered = host.enter();
    let send = || {
        callout::send(
            "auth",
            "POST",
            "/check",
            &[("x-token", "t")],
            b"body",
            Duration::from_millis(250),
        )
    };
    let e = send().err();
    ensure!(
        matches!(&e, Some(HostError::Failed(m)) if m.contains("no handler")),
        "{e:?}"
    );

    host.on_callout(|target, req| {
        if req.header("X-Token") != Some("t") {
            return Err(HostError::Failed("connect refused".into()));
        }
        // The handler may use the host (not borrowed while it runs).
        kv::increment("calls", target, 1, None)?;
        Ok(callout::CalloutResponse::new(200)
            .with_header("x-user", "alice")
            .with_body(req.body.clone()))
    });
    let res = send()?;
    assert_eq!(
        (res.status, res.header("x-user"), res.body.as_slice()),
        (200, Some("alice"), &b"body"[..])
    );
    let (target, req) = host.callouts().pop().unwrap_or_default();
    assert_eq!(target, "auth");
    assert_eq!(req.timeout, Duration::from_millis(250));
    assert_eq!(kv::increment("calls", "auth", 0, None)?, 1);
    ensure!(matches!(
        callout::send("auth", "BAD METHOD", "/", &[], b"", Duration::ZERO),
        Err(HostError::Invalid(_))
    ));
    Ok(())
}

#[test]
fn metrics_are_recorded_and_validated() -> Result<()> {
    let host = Emulator::new();
    let _entered = host.enter();
    metrics::counter_add("hits_total", &[("route", "r"), ("code", "200")], 2)?;
    metrics::counter_add("hits_total", &[("code", "200"), ("route", "r")], 3)?;
    metrics::gauge_set("inflight", &[], -4)?;
    metrics::histogram_observe("latency_seconds", &[], 0.25)?;
    metrics::histogram_observe("latency_seconds", &[], 0.5)?;
    assert_eq!(
        host.counter("hits_total", &[("route", "r"), ("code", "200")]),
        5
    );
    assert_eq!(host.counter("hits_total", &[]), 0);
    assert_eq!(host.gauge("inflight", &[]), Some(-4));
    assert_eq!(host.histogram("latency_seconds", &[]), [0.25, 0.5]);
    ensure!(matches!(
        metrics::counter_add("Bad-Name", &[], 1),
        Err(HostError::Invalid(_))
    ));
    ensure!(matches!(
        metrics::counter_add("x", &[("a", "1"), ("a", "2")], 1),
        Err(HostError::Invalid(_))
    ));
    ensure!(matches!(
        metrics::gauge_set("hits_total", &[], 1),
        Err(HostError::Invalid(_))
    ));
    ensure!(matches!(
        metrics::histogram_observe("h", &[], f64::NAN),
        Err(HostError::Invalid(_))
    ));
    Ok(())
}

#[test]
fn clock_and_random_are_controlled_by_the_test() -> Result<()> {
    let host = Emulator::new();
    let _entered = host.enter();
    let (t0, m0) = (clock::now_ms(), clock::monotonic_ns());
    host.advance(Duration::from_millis(1500));
    assert_eq!(clock::now_ms() - t0, 1500);
    assert_eq!(clock::monotonic_ns() - m0, 1_500_000_000);
    host.set_now_ms(42);
    assert_eq!(clock::now_ms(), 42);

    host.seed_random(7);
    let a = clock::random_bytes(13);
    host.seed_random(7);
    assert_eq!(clock::random_bytes(13), a);
    assert_ne!(clock::random_bytes(13), a);
    Ok(())
}

#[test]
fn host_calls_without_a_host_are_unavailable() {
    assert!(matches!(kv::get("ns", "k"), Err(HostError::Unavailable(_))));
    assert!(matches!(
        metrics::counter_add("c", &[], 1),
        Err(HostError::Unavailable(_))
    ));
    assert_eq!(Backend::path(), "");
    log::info("goes to stderr");
}

#[test]
fn logs_are_captured_in_order() -> Result<()> {
    let host = Emulator::new();
    {
        let _entered = host.enter();
        log::debug("one");
        log::error("two");
    }
    assert_eq!(
        host.logs(),
        [
            LogLine {
                level: Level::Debug,
                message: "one".into()
            },
            LogLine {
                level: Level::Error,
                message: "two".into()
            },
        ]
    );
    assert_eq!(host.take_logs().len(), 2);
    assert_eq!(host.logs(), []);
    Ok(())
}

/// Panics, or spins calling the host, on request.
struct Faulty;
impl Filter for Faulty {
    type Config = serde::de::IgnoredAny;
    type Context = ();
    const PHASES: Phases = Phases::REQUEST_HEADERS;
    fn new(_: Self::Config) -> Result<Self, String> {
        Ok(Faulty)
    }
    fn on_request_headers(&self, req: &mut Request, _: &mut ()) -> Action {
        if req.path() == "/panic" {
            panic!("boom");
        }
        loop {
            std::hint::black_box(clock::monotonic_ns());
        }
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> Option<String> {
    let text = payload.downcast_ref::<&str>().map(|s| (*s).to_owned());
    text.or_else(|| payload.downcast_ref::<String>().cloned())
}

#[test]
fn a_panic_poisons_the_harness() -> Result<()> {
    let mut h = Harness::<Faulty>::new(serde_json::json!({}))?;
    let mut req = TestRequest::get("/panic");
    ensure!(catch_unwind(AssertUnwindSafe(|| h.request_headers(&mut req))).is_err());
    let again = catch_unwind(AssertUnwindSafe(|| h.request_headers(&mut req))).err();
    let message = again.as_ref().and_then(panic_message);
    ensure!(
        message.as_deref().is_some_and(|m| m.contains("discarded")),
        "{message:?}"
    );
    // The emulator was uninstalled during unwinding.
    ensure!(matches!(kv::get("ns", "k"), Err(HostError::Unavailable(_))));
    Ok(())
}

#[test]
fn the_time_budget_stops_loops_that_call_the_host() -> Result<()> {
    let mut h = Harness::<Faulty>::new(serde_json::json!({}))?;
    h.set_time_budget(Some(Duration::from_millis(20)));
    let mut req = TestRequest::get("/spin");
    let err = catch_unwind(AssertUnwindSafe(|| h.request_headers(&mut req))).err();
    let message = err.as_ref().and_then(panic_message);
    ensure!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("time budget")),
        "{message:?}"
    );
    Ok(())
}

#[test]
fn harnesses_can_share_a_host() -> Result<()> {
    let host = Emulator::new();
    let a = Harness::<Probe>::with_host(&host, "{}")?;
    let b = Harness::<Probe>::with_host(&host, "{}")?;
    a.advance(Duration::from_secs(1));
    assert_eq!(b.now_ms(), a.now_ms());
    Ok(())
}

/// The trace interface in the emulator: what is added stays with the request's head, under the
/// proxy's rules; an unsampled request keeps nothing; there is no open span in `configure` or
/// `on-log`.
#[test]
fn span_notes_follow_the_proxys_rules() -> Result<()> {
    use crate::trace;
    let mut scope = request_scope();
    scope.request.as_mut().expect("request").span = Some(Span::default());
    let (answers, scope) = in_phase(Some(Phase::RequestHeaders), scope, || {
        let kind =
            |r: Result<(), HostError>| r.map_or_else(|e| e.kind().to_owned(), |()| "ok".into());
        vec![
            trace::sampled().to_string(),
            kind(trace::set_attribute("enduser.id", "alice")),
            kind(trace::set_attribute("enduser.id", "bob")),
            kind(trace::set_attribute("big", &"é".repeat(400))),
            kind(trace::set_attribute("weir.route", "x")),
            kind(trace::set_attribute("a b", "x")),
            kind(trace::add_event("auth.accepted", &[("scope", "read")])),
            kind(trace::add_event("e", &[("url.full", "x")])),
            kind(trace::add_event("", &[])),
        ]
    })?;
    ensure!(
        answers
            == [
                "true", "ok", "ok", "ok", "invalid", "invalid", "ok", "invalid", "invalid"
            ],
        "{answers:?}"
    );
    let span = scope.request.and_then(|r| r.span).expect("a span");
    ensure!(span.attribute("enduser.id") == Some("bob") && span.attributes.len() == 2);
    ensure!(span.attribute("big").map(str::len) == Some(trace::MAX_VALUE_BYTES));
    let events: Vec<_> = span.events_named("auth.accepted").collect();
    ensure!(events.len() == 1 && events[0].attribute("scope") == Some("read"));
    ensure!(events[0].at_ms == super::emulator::START_MS);

    // Not sampled: accepted, nothing kept.
    let (r, scope) = in_phase(Some(Phase::RequestHeaders), request_scope(), || {
        (trace::sampled(), trace::set_attribute("k", "v"))
    })?;
    ensure!(r == (false, Ok(())) && scope.request.and_then(|r| r.span).is_none());

    for phase in [None, Some(Phase::Log)] {
        let mut scope = request_scope();
        scope.request.as_mut().expect("request").span = Some(Span::default());
        let (r, _) = in_phase(phase, scope, || {
            (
                trace::sampled(),
                trace::set_attribute("k", "v").map_err(|e| e.kind().to_owned()),
            )
        })?;
        ensure!(
            r == (false, Err("unavailable".to_owned())),
            "{phase:?}: {r:?}"
        );
    }
    Ok(())
}
