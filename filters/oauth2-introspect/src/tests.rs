//! Native tests through the SDK harness, with the emulator standing in for the authorization
//! server's callout and the shared store.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use serde_json::{Value, json};
use weir_filter::Action;
use weir_filter::callout::CalloutResponse;
use weir_filter::testing::{Harness, TestRequest};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn config() -> Value {
    json!({
        "server": "auth",
        "path": "/oauth2/introspect",
        "client_id": "weir gw",
        "client_secret": "s3cr&t",
        "forward_claims": { "sub": "x-user", "scope": "x-scope" },
    })
}

/// A harness whose authorization server answers `answer(token)` with 200.
fn harness(config: Value, answer: impl Fn(&str) -> Value + 'static) -> Harness<Introspect> {
    let h = Harness::<Introspect>::new(config).expect("config accepted");
    h.on_callout(move |target, req| {
        assert_eq!(target, "auth");
        let body = String::from_utf8(req.body.clone()).expect("utf-8 form");
        let token = body
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .expect("a token field");
        Ok(CalloutResponse::new(200)
            .with_header("content-type", "application/json")
            .with_body(answer(&decode(token)).to_string().into_bytes()))
    });
    h
}

/// Undoes `form_encode` (the test's own decoder, so the two are checked against each other).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

fn bearer(path: &str, token: &str) -> TestRequest {
    TestRequest::get(path).header("authorization", format!("Bearer {token}"))
}

/// Status, `WWW-Authenticate` and the JSON body's `error` of a refusal.
fn refusal(action: &Action) -> (u16, String, String) {
    let r = action.local_response().expect("a local response");
    let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    (
        r.status,
        r.header_value("www-authenticate")
            .unwrap_or_default()
            .to_owned(),
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn an_active_token_passes_with_its_claims_and_is_asked_for_once() -> TestResult {
    let mut h = harness(config(), |t| {
        assert_eq!(t, "tok+en/=&x");
        json!({ "active": true, "sub": "alice", "scope": "read write", "secret_member": "x" })
    });
    let mut req = bearer("/orders", "tok+en/=&x").header("x-user", "mallory");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(
        req.header_values("x-user"),
        ["alice"],
        "the client's value is replaced"
    );
    assert_eq!(req.header_value("x-scope"), Some("read write"));
    assert!(
        req.header_value("authorization").is_some(),
        "kept by default"
    );
    h.done(&req);

    let calls = h.callouts();
    assert_eq!(calls.len(), 1);
    let (_, sent) = &calls[0];
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/oauth2/introspect")
    );
    assert_eq!(
        sent.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        String::from_utf8(sent.body.clone())?,
        "token=tok%2Ben%2F%3D%26x&token_type_hint=access_token",
        "the token cannot add form fields"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode("weir%20gw:s3cr%26t");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(sent.timeout, Duration::from_millis(500));

    // Cached: the next request with the same token costs no callout.
    let mut req = bearer("/orders", "tok+en/=&x");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-user"), Some("alice"));
    assert_eq!(h.callouts().len(), 1);
    assert_eq!(
        h.counter("oauth2_introspect_cache_total", &[("result", "hit")]),
        1
    );
    assert_eq!(
        h.counter(
            "oauth2_introspect_decisions_total",
            &[("result", "allowed")]
        ),
        2
    );
    // The store holds the answer under the token's hash, and only the members needed.
    let key = hex::encode(Sha256::digest(b"tok+en/=&x"));
    let _entered = h.host().enter();
    let entry = kv::get("oauth2-introspect", &key)?.ok_or("cached")?;
    let kept: Value = serde_json::from_slice(&entry.value)?;
    assert_eq!(
        kept,
        json!({ "active": true, "members": { "sub": "alice", "scope": "read write" } })
    );
    Ok(())
}

#[test]
fn an_inactive_token_is_refused_and_remembered_for_the_negative_ttl() -> TestResult {
    let mut h = harness(config(), |_| json!({ "active": false, "sub": "ignored" }));
    for _ in 0..3 {
        let mut req = bearer("/", "revoked");
        let (status, challenge, error) = refusal(&h.request_headers(&mut req));
        assert_eq!((status, error.as_str()), (401, "invalid_token"));
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        h.done(&req);
    }
    assert_eq!(h.callouts().len(), 1, "the refusal is cached");
    h.advance(Duration::from_secs(11));
    let mut req = bearer("/", "revoked");
    assert_eq!(refusal(&h.request_headers(&mut req)).0, 401);
    assert_eq!(h.callouts().len(), 2, "asked again after negative_ttl_s");
    Ok(())
}

#[test]
fn a_cached_answer_never_outlives_the_tokens_exp() -> TestResult {
    let h0 = Harness::<Introspect>::new(config())?;
    let exp = h0.now_ms() / 1000 + 5;
    drop(h0);
    let mut h = harness(
        config(),
        move |_| json!({ "active": true, "sub": "a", "exp": exp }),
    );
    let mut req = bearer("/", "short");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    h.done(&req);
    h.advance(Duration::from_secs(6));
    // The cache dropped it at exp; the server (still saying active, with the old exp) is
    // asked again, and the filter refuses the expired token itself.
    let mut req = bearer("/", "short");
    let (status, challenge, _) = refusal(&h.request_headers(&mut req));
    assert_eq!(status, 401);
    assert!(challenge.contains("has expired"), "{challenge}");
    assert_eq!(h.callouts().len(), 2);
    Ok(())
}

#[test]
fn scopes_audience_and_issuer_are_checked() -> TestResult {
    let mut c = config();
    c["required_scopes"] = json!(["orders:read", "orders:write"]);
    c["audiences"] = json!(["api://orders"]);
    c["issuer"] = json!("https://as.example");
    let answers = |t: &str| match t {
        "good" => {
            json!({ "active": true, "scope": "orders:write orders:read", "aud": ["x", "api://orders"], "iss": "https://as.example" })
        }
        "few-scopes" => {
            json!({ "active": true, "scope": "orders:read", "aud": "api://orders", "iss": "https://as.example" })
        }
        "other-aud" => {
            json!({ "active": true, "scope": "orders:read orders:write", "aud": "api://billing", "iss": "https://as.example" })
        }
        "no-aud" => {
            json!({ "active": true, "scope": "orders:read orders:write", "iss": "https://as.example" })
        }
        "other-iss" => {
            json!({ "active": true, "scope": "orders:read orders:write", "aud": "api://orders", "iss": "https://evil" })
        }
        _ => {
            json!({ "active": true, "scope": "orders:read orders:write", "aud": "api://orders", "iss": "https://as.example", "nbf": u64::MAX / 2 })
        }
    };
    let mut h = harness(c, answers);
    let mut req = bearer("/", "good");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    h.done(&req);
    let mut req = bearer("/", "few-scopes");
    let (status, challenge, error) = refusal(&h.request_headers(&mut req));
    assert_eq!((status, error.as_str()), (403, "insufficient_scope"));
    assert!(
        challenge.contains("scope=\"orders:read orders:write\""),
        "{challenge}"
    );
    h.done(&req);
    for (token, why) in [
        ("other-aud", "audience"),
        ("no-aud", "audience"),
        ("other-iss", "issuer"),
        ("future", "not valid yet"),
    ] {
        let mut req = bearer("/", token);
        let (status, challenge, error) = refusal(&h.request_headers(&mut req));
        assert_eq!((status, error.as_str()), (401, "invalid_token"), "{token}");
        assert!(challenge.contains(why), "{token}: {challenge}");
        h.done(&req);
    }
    Ok(())
}

#[test]
fn missing_malformed_and_oversized_tokens_cost_no_callout() -> TestResult {
    let mut h = harness(config(), |_| json!({ "active": true }));
    for req in [
        TestRequest::get("/"),
        TestRequest::get("/").header("authorization", "Basic YTpi"),
        TestRequest::get("/").header("authorization", "Bearer "),
    ] {
        let mut req = req;
        let (status, challenge, error) = refusal(&h.request_headers(&mut req));
        assert_eq!((status, error.as_str()), (401, "missing_token"));
        assert_eq!(challenge, "Bearer realm=\"weir\"");
        h.done(&req);
    }
    for token in ["x".repeat(MAX_TOKEN_BYTES + 1), "caf\u{e9}".to_owned()] {
        let mut req = bearer("/", &token);
        assert_eq!(refusal(&h.request_headers(&mut req)).0, 401);
        h.done(&req);
    }
    assert!(h.callouts().is_empty());
    Ok(())
}

/// The authorization server failing fails the phase (a trap: the filter's `on_error` decides),
/// and nothing is cached from it.
#[test]
fn a_failing_authorization_server_fails_the_phase_and_is_not_cached() -> TestResult {
    type Answer = Box<dyn Fn() -> Result<CalloutResponse, HostError>>;
    let failures: Vec<(&str, Answer)> = vec![
        (
            "unreachable",
            Box::new(|| Err(HostError::Failed("connection refused".into()))),
        ),
        ("status", Box::new(|| Ok(CalloutResponse::new(503)))),
        (
            "not json",
            Box::new(|| Ok(CalloutResponse::new(200).with_body(b"<html>".to_vec()))),
        ),
        (
            "no active",
            Box::new(|| Ok(CalloutResponse::new(200).with_body(br#"{"sub":"a"}"#.to_vec()))),
        ),
        (
            "active not bool",
            Box::new(|| Ok(CalloutResponse::new(200).with_body(br#"{"active":"true"}"#.to_vec()))),
        ),
        (
            "array",
            Box::new(|| Ok(CalloutResponse::new(200).with_body(b"[true]".to_vec()))),
        ),
    ];
    for (what, answer) in failures {
        let mut h = Harness::<Introspect>::new(config())?;
        h.on_callout(move |_, _| answer());
        let mut req = bearer("/", "t");
        let trapped = catch_unwind(AssertUnwindSafe(|| h.request_headers(&mut req)));
        assert!(trapped.is_err(), "{what}: the phase must fail");
        let key = hex::encode(Sha256::digest(b"t"));
        let entered = h.host().enter();
        assert_eq!(kv::get("oauth2-introspect", &key)?, None, "{what}");
        drop(entered);
    }
    Ok(())
}

#[test]
fn bad_configs_are_refused_with_the_field() {
    for (patch, want) in [
        (
            json!({ "client_secret": null }),
            "client_id and client_secret",
        ),
        (json!({ "path": "introspect" }), "path:"),
        (json!({ "server": "" }), "server:"),
        (json!({ "timeout_ms": 0 }), "timeout_ms:"),
        (json!({ "cache": { "ttl_s": 86400 } }), "cache:"),
        (
            json!({ "forward_claims": { "sub": "Authorization" } }),
            "forward_claims.sub",
        ),
        (
            json!({ "forward_claims": { "sub": "x-a", "aud": "X-A" } }),
            "already set",
        ),
        (json!({ "required_scopes": ["a b"] }), "required_scopes[0]"),
        (json!({ "host": "a b" }), "host:"),
    ] {
        let mut c = config();
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                c.as_object_mut().expect("object").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let e = Harness::<Introspect>::new(c).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains(want)),
            "{patch}: {e:?}"
        );
    }
}

/// The README's config is accepted and works against a stand-in server.
#[test]
fn the_readme_config_works() -> TestResult {
    let readme = include_str!("../README.md");
    let yaml = weir_filter::testing::first_yaml_block(readme)?;
    let doc: Value = weir_config::yaml_value(yaml)?;
    let filter = &doc["filters"][0];
    assert_eq!(filter["grants"]["kv"][0], "oauth2-introspect");
    let mut config = filter["config"].clone();
    config["client_secret"] = json!("from-the-file");
    let target = filter["grants"]["callouts"][0]
        .as_str()
        .ok_or("a callout grant")?
        .to_owned();
    let h = Harness::<Introspect>::new(config)?;
    h.on_callout(move |t, _| {
        assert_eq!(t, target);
        Ok(CalloutResponse::new(200).with_body(
            br#"{"active":true,"sub":"alice","client_id":"shop","scope":"orders:read"}"#.to_vec(),
        ))
    });
    let mut h = h;
    let mut req = bearer("/orders", "abc");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-user"), Some("alice"));
    Ok(())
}
