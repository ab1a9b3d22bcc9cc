use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::json;
use weir_filter::callout::CalloutResponse;
use weir_filter::testing::{Emulator, Grants, Harness, TestRequest, TestResponse};
use weir_filter::{Action, HostError, LocalResponse, Phases};

use super::*;

fn testbed(config: serde_json::Value) -> Result<Harness<Testbed>> {
    Ok(Harness::new(config)?)
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    let text = payload.downcast_ref::<&str>().map(|s| (*s).to_owned());
    text.or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[test]
fn noop_continues_and_changes_nothing() -> Result<()> {
    let mut h = testbed(json!({ "mode": "noop" }))?;
    assert_eq!(h.phases(), Phases::REQUEST_HEADERS | Phases::STATELESS);
    let mut req = TestRequest::get("/a?b=1").header("x-in", "1");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!((req.path(), req.headers().len()), ("/a?b=1", 1));
    h.done(&req);
    assert_eq!(h.live_contexts(), 0);
    Ok(())
}

#[test]
fn header_edit_sets_and_appends_in_chain_order() -> Result<()> {
    let host = Emulator::new();
    let mut first = Harness::<Testbed>::with_host(
        &host,
        r#"{ "mode": "header-edit", "value": "one", "tag": "a" }"#,
    )?;
    let mut second = Harness::<Testbed>::with_host(
        &host,
        r#"{ "mode": "header-edit", "value": "two", "tag": "b" }"#,
    )?;
    assert_eq!(
        first.phases(),
        Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS | Phases::STATELESS
    );

    let mut req = TestRequest::get("/")
        .header("x-testbed", "client")
        .header("x-chain", "client");
    assert_eq!(first.request_headers(&mut req), Action::Continue);
    assert_eq!(second.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_values("x-testbed"), ["two"]);
    assert_eq!(req.header_values("x-chain"), ["client", "a", "b"]);

    // Response phases run in reverse chain order.
    let mut res = TestResponse::new(200).header("x-chain", "upstream");
    assert_eq!(
        second.response_headers(&mut req, &mut res),
        Action::Continue
    );
    assert_eq!(first.response_headers(&mut req, &mut res), Action::Continue);
    assert_eq!(res.header_values("x-testbed"), ["one"]);
    assert_eq!(res.header_values("x-chain"), ["upstream", "b", "a"]);

    let defaults = testbed(json!({ "mode": "header-edit" }))?;
    assert_eq!(
        defaults.filter().config,
        Config::HeaderEdit {
            value: "on".into(),
            tag: "testbed".into()
        }
    );
    let mut bad = testbed(json!({ "mode": "header-edit", "value": "a\nb" }))?;
    let action = bad.request_headers(&mut TestRequest::get("/"));
    assert_eq!(action.local_response().map(|r| r.status), Some(500));
    Ok(())
}

#[test]
fn respond_answers_locally() -> Result<()> {
    let mut h = testbed(json!({ "mode": "respond", "status": 418, "body": "teapot" }))?;
    let action = h.request_headers(&mut TestRequest::get("/"));
    assert_eq!(action, Action::Respond(LocalResponse::text(418, "teapot")));

    let mut h = testbed(json!({ "mode": "respond" }))?;
    let action = h.request_headers(&mut TestRequest::get("/"));
    assert_eq!(action, Action::Respond(LocalResponse::text(200, "")));

    let e = Harness::<Testbed>::new(json!({ "mode": "respond", "status": 99 })).err();
    ensure!(e.is_some_and(|e| e.message.contains("status must be 200-599")));
    Ok(())
}

#[test]
fn loop_never_returns() -> Result<()> {
    let mut h = testbed(json!({ "mode": "loop" }))?;
    // Natively the harness's time budget stands in for the proxy's epoch deadline.
    h.set_time_budget(Some(Duration::from_millis(50)));
    let mut req = TestRequest::get("/");
    let err = catch_unwind(AssertUnwindSafe(|| h.request_headers(&mut req))).err();
    let message = err.as_ref().map(panic_message).unwrap_or_default();
    ensure!(message.contains("time budget"), "{message:?}");
    Ok(())
}

#[test]
fn membomb_allocates_until_it_traps() -> Result<()> {
    // Natively a limit keeps the test machine alive; in the proxy there is none.
    let mut h = testbed(json!({ "mode": "membomb", "limit_mb": 8 }))?;
    let mut req = TestRequest::get("/");
    let err = catch_unwind(AssertUnwindSafe(|| h.request_headers(&mut req))).err();
    let message = err.as_ref().map(panic_message).unwrap_or_default();
    assert_eq!(message, "testbed: membomb reached limit_mb = 8");
    Ok(())
}

#[test]
fn panic_traps() -> Result<()> {
    let mut h = testbed(json!({ "mode": "panic" }))?;
    let mut req = TestRequest::get("/");
    let err = catch_unwind(AssertUnwindSafe(|| h.request_headers(&mut req))).err();
    let message = err.as_ref().map(panic_message).unwrap_or_default();
    assert_eq!(message, "testbed: panic mode");
    Ok(())
}

#[test]
fn callout_reports_status_or_host_error() -> Result<()> {
    let config =
        json!({ "mode": "callout", "target": "auth", "path": "/check?x=1", "timeout_ms": 250 });
    let mut h = testbed(config.clone())?;
    h.on_callout(|target, req| match target {
        "auth" => Ok(CalloutResponse::new(204)),
        _ => Err(HostError::Failed(format!(
            "connect {target}: refused ({})",
            req.path
        ))),
    });
    let mut req = TestRequest::get("/");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-callout"), Some("204"));
    let (target, sent) = h.callouts().pop().unwrap_or_default();
    assert_eq!(
        (
            target.as_str(),
            sent.method.as_str(),
            sent.path.as_str(),
            sent.timeout
        ),
        ("auth", "GET", "/check?x=1", Duration::from_millis(250))
    );

    let mut h = testbed(json!({ "mode": "callout", "target": "127.0.0.1:1" }))?;
    h.on_callout(|target, req| {
        Err(HostError::Failed(format!(
            "connect {target}: refused ({})",
            req.path
        )))
    });
    let mut req = TestRequest::get("/");
    h.request_headers(&mut req);
    assert_eq!(
        req.header_value("x-callout"),
        Some("failed: connect 127.0.0.1:1: refused (/)")
    );

    let mut h = testbed(config)?;
    h.set_grants(Grants::none());
    let mut req = TestRequest::get("/");
    h.request_headers(&mut req);
    let value = req.header_value("x-callout").unwrap_or_default();
    ensure!(
        value.starts_with("denied: callout target \"auth\""),
        "{value}"
    );

    let e = Harness::<Testbed>::new(json!({ "mode": "callout" })).err();
    ensure!(e.is_some_and(|e| e.message.contains("missing field `target`")));
    Ok(())
}

#[test]
fn body_upper_buffers_then_uppercases_both_bodies() -> Result<()> {
    let mut h = testbed(json!({ "mode": "body-upper" }))?;
    assert_eq!(
        h.phases(),
        Phases::REQUEST_BODY | Phases::RESPONSE_BODY | Phases::STATELESS
    );
    let mut req = TestRequest::post("/echo");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(h.request_body(&mut req, b"hello, ", false), Action::Buffer);
    assert_eq!(
        h.request_body(&mut req, "w\u{f6}rld".as_bytes(), false),
        Action::Buffer
    );
    assert_eq!(req.forwarded_body(), b"");
    assert_eq!(h.request_body(&mut req, b"!", true), Action::Continue);
    assert_eq!(req.forwarded_body(), "HELLO, W\u{f6}RLD!".as_bytes());

    let mut res = TestResponse::new(200);
    assert_eq!(
        h.response_body(&mut req, &mut res, b"ok", true),
        Action::Continue
    );
    assert_eq!(res.forwarded_body(), b"OK");
    Ok(())
}

#[test]
fn state_is_per_request_and_dropped_when_done() -> Result<()> {
    let mut h = testbed(json!({ "mode": "state" }))?;
    let mut a = TestRequest::get("/a");
    let mut b = TestRequest::get("/b");
    h.request_headers(&mut a);
    h.request_headers(&mut b);
    let (mut ra, mut rb) = (TestResponse::new(200), TestResponse::new(200));
    assert_eq!(h.response_headers(&mut b, &mut rb), Action::Continue);
    assert_eq!(h.response_headers(&mut a, &mut ra), Action::Continue);
    assert_eq!(ra.header_value("x-state-path"), Some("/a"));
    assert_eq!(rb.header_value("x-state-path"), Some("/b"));
    assert_eq!(h.live_contexts(), 2);
    h.done(&a);
    h.done(&b);
    assert_eq!(h.live_contexts(), 0);

    // A request whose context never saw request-headers has no path (another filter answered).
    let mut c = TestRequest::get("/c");
    let mut rc = TestResponse::new(403);
    h.response_headers(&mut c, &mut rc);
    assert_eq!(rc.header_value("x-state-path"), Some("<none>"));
    // A context that arrives non-empty (it never should) is reported.
    let action = h.request_headers(&mut c);
    assert_eq!(action, Action::Continue);
    let action = h.request_headers(&mut c);
    assert_eq!(action.local_response().map(|r| r.status), Some(500));
    Ok(())
}

#[test]
fn kv_counter_counts_across_requests_and_instances() -> Result<()> {
    let host = Emulator::new();
    host.set_grants(Grants::none().kv("hits"));
    let config = r#"{ "mode": "kv-counter", "ns": "hits" }"#;
    let mut instances = [
        Harness::<Testbed>::with_host(&host, config)?,
        Harness::<Testbed>::with_host(&host, config)?,
    ];
    for (i, expected) in [(0, "1"), (1, "2"), (0, "3")] {
        let h = &mut instances[i];
        let mut req = TestRequest::get("/");
        let mut res = TestResponse::new(200);
        assert_eq!(h.request_headers(&mut req), Action::Continue);
        assert_eq!(h.response_headers(&mut req, &mut res), Action::Continue);
        assert_eq!(req.header_value("x-count"), Some(expected));
        assert_eq!(res.header_value("x-count"), Some(expected));
        h.done(&req);
    }

    let mut denied =
        Harness::<Testbed>::with_host(&host, r#"{ "mode": "kv-counter", "ns": "other" }"#)?;
    let mut req = TestRequest::get("/");
    denied.request_headers(&mut req);
    let value = req.header_value("x-count").unwrap_or_default();
    ensure!(
        value.starts_with("denied: kv namespace \"other\""),
        "{value}"
    );
    Ok(())
}

#[test]
fn bad_config_rejects_unless_told_not_to() -> Result<()> {
    for config in [
        json!({ "mode": "bad-config" }),
        json!({ "mode": "bad-config", "fail": true }),
    ] {
        let e = Harness::<Testbed>::new(config).err();
        ensure!(e.is_some_and(|e| e.message.starts_with("testbed: bad-config mode rejects")));
    }
    let mut h = testbed(json!({ "mode": "bad-config", "fail": false }))?;
    assert_eq!(
        h.request_headers(&mut TestRequest::get("/")),
        Action::Continue
    );
    Ok(())
}

#[test]
fn unknown_modes_and_fields_are_config_errors() {
    for (config, expected) in [
        (json!({ "mode": "nope" }), "unknown variant `nope`"),
        (json!({}), "missing field `mode`"),
        (
            json!({ "mode": "header-edit", "valu": "x" }),
            "unknown field `valu`",
        ),
        (
            json!({ "mode": "noop", "extra": 1 }),
            "unknown field `extra`",
        ),
    ] {
        let e = Harness::<Testbed>::new(config.clone()).err();
        assert!(
            e.as_ref().is_some_and(|e| e.message.contains(expected)),
            "{config}: {e:?}"
        );
    }
}

/// The host-call table (`tests/filters/host-calls.json`) in the Rust SDK's emulator: the same
/// answers the real proxy gives (tests/e2e runs the table there).
#[test]
fn host_calls_answer_as_the_shared_table_says() -> Result<()> {
    let table: serde_json::Value = serde_json::from_str(include_str!("../../host-calls.json"))?;
    let cases = table["cases"].as_array().expect("cases").clone();
    let host = Emulator::new();
    host.set_grants(Grants::none().kv("granted"));
    let config = json!({ "mode": "host-calls", "calls": cases }).to_string();
    let mut h = Harness::<Testbed>::with_host(&host, &config)?;
    let mut req = TestRequest::get("/calls");
    let Action::Respond(res) = h.request_headers(&mut req) else {
        anyhow::bail!("host-calls answers");
    };
    let body = String::from_utf8(res.body)?;
    let answers: Vec<&str> = body.lines().collect();
    ensure!(answers.len() == cases.len(), "one answer per call: {body}");
    let wrong: Vec<String> = cases
        .iter()
        .zip(&answers)
        .filter(|(case, answer)| case["expect"] != **answer)
        .map(|(case, answer)| format!("{case} answered {answer:?}"))
        .collect();
    ensure!(
        wrong.is_empty(),
        "the Rust emulator disagrees with the table:\n{}",
        wrong.join("\n")
    );
    Ok(())
}
