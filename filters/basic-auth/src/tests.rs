//! Native tests through the SDK harness.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weir_filter::Action;
use weir_filter::log::Level;
use weir_filter::testing::{Harness, TestRequest};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// alice / wonderland, 1000 iterations, made with Python's `hashlib.pbkdf2_hmac` (the
/// README's recipe), so the format is checked against an independent implementation.
const ALICE_PBKDF2: &str =
    "pbkdf2-sha256:1000:d2Vpci1kZW1vLXNhbHQtMQ==:7hxb7tckYtFQzyv6sb08xI6S/IV9ucjsR92AL7rJVgA=";
/// bob / looking-glass, salt `demo-salt`, also from Python.
const BOB_SHA256: &str =
    "sha256:demo-salt:f46cc246c5331f3efc741b2b2780cec6a0424342d4fb0b10b4f58e668223590f";

fn config() -> Value {
    json!({
        "users": [
            { "username": "alice", "password_hash": ALICE_PBKDF2 },
            { "username": "bob", "password_hash": BOB_SHA256 },
        ],
    })
}

fn basic(user_pass: &str) -> String {
    format!("Basic {}", hash::b64(user_pass.as_bytes()))
}

fn with_auth(value: impl Into<String>) -> TestRequest {
    TestRequest::get("/").header("authorization", value)
}

/// Status, challenge and JSON `error` of a refusal.
fn refusal(action: &Action) -> (u16, Option<&str>, String) {
    let r = action.local_response().expect("a local response");
    let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    (
        r.status,
        r.header_value("www-authenticate"),
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[test]
fn good_credentials_pass_with_the_username_forwarded() -> TestResult {
    let mut h = Harness::<BasicAuth>::new(config())?;
    for (creds, user) in [("alice:wonderland", "alice"), ("bob:looking-glass", "bob")] {
        let mut req = with_auth(basic(creds)).header("x-user", "mallory");
        assert_eq!(h.request_headers(&mut req), Action::Continue, "{creds}");
        assert_eq!(
            req.header_values("x-user"),
            [user],
            "the client's value is replaced"
        );
        assert_eq!(
            req.header_value("authorization"),
            None,
            "stripped by default"
        );
        h.done(&req);
    }
    // Scheme case and padding do not matter.
    let unpadded = hash::b64(b"bob:looking-glass")
        .trim_end_matches('=')
        .to_owned();
    let mut req = with_auth(format!("bAsIc   {unpadded}"));
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(
        h.counter("basic_auth_decisions_total", &[("result", "allowed")]),
        3
    );
    Ok(())
}

#[test]
fn bad_credentials_get_the_basic_challenge() -> TestResult {
    let mut h = Harness::<BasicAuth>::new(config())?;
    let challenge = Some("Basic realm=\"weir\", charset=\"UTF-8\"");
    let cases = [
        (TestRequest::get("/"), "missing_credentials"),
        (with_auth("Bearer abc"), "missing_credentials"),
        (with_auth("Basic"), "missing_credentials"),
        (with_auth(basic("alice:wonderlant")), "invalid_credentials"),
        (with_auth(basic("alice:")), "invalid_credentials"),
        (with_auth(basic("alice")), "invalid_credentials"),
        (with_auth(basic("carol:wonderland")), "invalid_credentials"),
        (with_auth(basic(":wonderland")), "invalid_credentials"),
        (with_auth(basic("bob:looking-glasS")), "invalid_credentials"),
        (with_auth("Basic !!!notbase64"), "invalid_credentials"),
        (
            with_auth(format!("Basic {}", hash::b64(&[0xff, 0xfe, b':', 0x80]))),
            "invalid_credentials",
        ),
        (with_auth("Basic ===="), "invalid_credentials"),
    ];
    for (mut req, error) in cases {
        let action = h.request_headers(&mut req);
        assert_eq!(
            refusal(&action),
            (401, challenge, error.to_owned()),
            "{req:?}"
        );
        h.done(&req);
    }
    assert_eq!(
        h.counter("basic_auth_decisions_total", &[("result", "denied")]),
        12
    );
    assert_eq!(h.filter().cached(), 0, "failures are never cached");
    Ok(())
}

#[test]
fn accepted_credentials_are_cached_per_instance() -> TestResult {
    let mut cfg = config();
    cfg["cache_size"] = json!(2);
    let mut h = Harness::<BasicAuth>::new(cfg)?;
    let mut pass = |creds: &str| {
        let mut req = with_auth(basic(creds));
        let action = h.request_headers(&mut req);
        h.done(&req);
        (action.is_continue(), h.filter().cached())
    };
    assert_eq!(pass("alice:wonderland"), (true, 1));
    assert_eq!(pass("alice:wonderland"), (true, 1), "a hit adds nothing");
    assert_eq!(
        pass("alice:wrong"),
        (false, 1),
        "the cache is keyed by the password too"
    );
    assert_eq!(pass("bob:looking-glass"), (true, 2));
    assert_eq!(pass("alice:wonderland"), (true, 2));
    // Full: the next new entry starts the cache over.
    let mut cfg = config();
    cfg["users"]
        .as_array_mut()
        .ok_or("users")?
        .push(json!({ "username": "carol", "password_hash": sha256_hash("s4lt", "pw") }));
    cfg["cache_size"] = json!(2);
    let mut h = Harness::<BasicAuth>::new(cfg)?;
    for (creds, cached) in [
        ("alice:wonderland", 1),
        ("bob:looking-glass", 2),
        ("carol:pw", 1),
    ] {
        let mut req = with_auth(basic(creds));
        assert!(h.request_headers(&mut req).is_continue());
        assert_eq!(h.filter().cached(), cached, "{creds}");
    }
    let mut cfg = config();
    cfg["cache_size"] = json!(0);
    let mut h = Harness::<BasicAuth>::new(cfg)?;
    let mut req = with_auth(basic("alice:wonderland"));
    assert!(h.request_headers(&mut req).is_continue());
    assert_eq!(h.filter().cached(), 0, "cache_size 0 turns it off");
    Ok(())
}

fn sha256_hash(salt: &str, password: &str) -> String {
    let digest = Sha256::digest(format!("{salt}{password}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{salt}:{hex}")
}

fn pbkdf2_hash(iterations: u32, salt: &[u8], password: &str) -> String {
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut key);
    format!(
        "pbkdf2-sha256:{iterations}:{}:{}",
        hash::b64(salt),
        hash::b64(&key)
    )
}

#[test]
fn options_change_the_header_the_realm_and_stripping() -> TestResult {
    let mut h = Harness::<BasicAuth>::new(json!({
        "users": [
            { "username": "ünïcode", "password_hash": sha256_hash("a:b:c", "pä:ss") },
            { "username": "svc", "password_hash": pbkdf2_hash(10, b"12345678", "") },
        ],
        "user_header": "x-authenticated-user",
        "strip_authorization": false,
        "realm": "staff only",
    }))?;
    let auth = basic("ünïcode:pä:ss");
    let mut req = with_auth(auth.clone());
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-authenticated-user"), Some("ünïcode"));
    assert_eq!(req.header_value("authorization"), Some(auth.as_str()));
    h.done(&req);
    let mut req = with_auth(basic("svc:"));
    assert_eq!(
        h.request_headers(&mut req),
        Action::Continue,
        "an empty password can be valid"
    );
    h.done(&req);
    let mut req = TestRequest::get("/");
    let action = h.request_headers(&mut req);
    assert_eq!(
        refusal(&action).1,
        Some("Basic realm=\"staff only\", charset=\"UTF-8\"")
    );
    Ok(())
}

#[test]
fn many_iterations_are_allowed_with_a_warning() -> TestResult {
    let h = Harness::<BasicAuth>::new(json!({
        "users": [{ "username": "a", "password_hash": pbkdf2_hash(5000, b"saltsalt", "p") }],
    }))?;
    let warnings: Vec<_> = h
        .logs()
        .into_iter()
        .filter(|l| l.level == Level::Warn)
        .collect();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].message.contains("5000 PBKDF2 iterations"),
        "{warnings:?}"
    );
    Ok(())
}

#[test]
fn bad_configs_are_refused_with_a_clear_message() {
    let good = BOB_SHA256;
    let user = |hash: &str| json!({ "users": [{ "username": "a", "password_hash": hash }] });
    let cases = [
        (json!({}), "missing field `users`".to_owned()),
        (
            json!({ "users": [] }),
            "users: at least one user".to_owned(),
        ),
        (
            user("plain"),
            "users[0].password_hash: unknown format".to_owned(),
        ),
        (
            user("sha256:abc"),
            "users[0].password_hash: expected sha256:<salt>".to_owned(),
        ),
        (
            user("sha256::f46cc246c5331f3efc741b2b2780cec6a0424342d4fb0b10b4f58e668223590f"),
            "the salt must not be empty".to_owned(),
        ),
        (
            user("sha256:salt:f46c"),
            "expected 64 hex digits".to_owned(),
        ),
        (
            user("pbkdf2-sha256:1000:c2FsdHNhbHQ="),
            "expected pbkdf2-sha256:<iterations>".to_owned(),
        ),
        (
            user("pbkdf2-sha256:0:c2FsdHNhbHQ=:AAAAAAAAAAAAAAAAAAAAAA=="),
            "iterations must be 1..=1000000".to_owned(),
        ),
        (
            user("pbkdf2-sha256:2000000:c2FsdHNhbHQ=:AAAAAAAAAAAAAAAAAAAAAA=="),
            "iterations must be".to_owned(),
        ),
        (
            user("pbkdf2-sha256:ten:c2FsdHNhbHQ=:AAAAAAAAAAAAAAAAAAAAAA=="),
            "iterations must be".to_owned(),
        ),
        (
            user("pbkdf2-sha256:10:c2FsdA==:AAAAAAAAAAAAAAAAAAAAAA=="),
            "the salt must be at least 8 bytes".to_owned(),
        ),
        (
            user("pbkdf2-sha256:10:!!:AAAAAAAAAAAAAAAAAAAAAA=="),
            "the salt is not standard base64".to_owned(),
        ),
        (
            user("pbkdf2-sha256:10:c2FsdHNhbHQ=:AAAA"),
            "the hash must be 16 to 64 bytes".to_owned(),
        ),
        (
            user("pbkdf2-sha256:10:c2FsdHNhbHQ=:*"),
            "the hash is not standard base64".to_owned(),
        ),
        (
            json!({ "users": [{ "username": "a:b", "password_hash": good }] }),
            "users[0].username".to_owned(),
        ),
        (
            json!({ "users": [{ "username": "", "password_hash": good }] }),
            "users[0].username".to_owned(),
        ),
        (
            json!({ "users": [{ "username": "a", "password_hash": good }, { "username": "a", "password_hash": good }] }),
            "users[1].username: \"a\" appears twice".to_owned(),
        ),
        (
            json!({ "users": [{ "username": "a", "password": "x" }] }),
            "unknown field `password`".to_owned(),
        ),
        (
            json!({ "users": [{ "username": "a", "password_hash": good }], "user_header": "x user" }),
            "user_header:".to_owned(),
        ),
        (
            json!({ "users": [{ "username": "a", "password_hash": good }], "user_header": "Authorization" }),
            "user_header: must not be authorization".to_owned(),
        ),
        (
            json!({ "users": [{ "username": "a", "password_hash": good }], "realm": "\u{7}" }),
            "realm:".to_owned(),
        ),
        (
            json!({ "users": [{ "username": "a", "password_hash": good }], "cache_size": 1_000_000 }),
            "cache_size: at most 65536".to_owned(),
        ),
    ];
    for (cfg, want) in cases {
        match Harness::<BasicAuth>::new(cfg.clone()) {
            Ok(_) => panic!("accepted {cfg}"),
            Err(e) => assert!(
                e.message.contains(&want),
                "{cfg}\n  got: {}\n want: {want}",
                e.message
            ),
        }
    }
}

/// The README's quickstart: its config is accepted and its demo credentials pass.
#[test]
fn the_readme_quickstart_works() -> TestResult {
    let readme = include_str!("../README.md");
    let yaml = weir_filter::testing::first_yaml_block(readme)?;
    let doc: Value = weir_config::yaml_value(yaml)?;
    let mut h = Harness::<BasicAuth>::new(doc["filters"][0]["config"].clone())?;
    for (creds, user) in [("alice:wonderland", "alice"), ("bob:looking-glass", "bob")] {
        let mut req = with_auth(basic(creds));
        assert_eq!(h.request_headers(&mut req), Action::Continue, "{creds}");
        assert_eq!(req.header_value("x-user"), Some(user));
        h.done(&req);
    }
    let mut req = with_auth(basic("alice:wrong"));
    let action = h.request_headers(&mut req);
    assert_eq!(
        refusal(&action).1,
        Some("Basic realm=\"staff\", charset=\"UTF-8\"")
    );
    Ok(())
}

/// The filter's PBKDF2 (on the proxy's HMAC) derives what RustCrypto's does, for one and two
/// blocks, partial blocks, and passwords empty, short and longer than the hash's block.
#[test]
fn pbkdf2_on_the_proxys_hmac_matches_rustcrypto() {
    let long = "p".repeat(100);
    for password in ["", "p", "wonderland", long.as_str()] {
        for len in [16, 20, 32, 33, 64] {
            for iterations in [1, 2, 7] {
                let mut want = vec![0u8; len];
                pbkdf2::pbkdf2_hmac::<Sha256>(
                    password.as_bytes(),
                    b"saltsalt",
                    iterations,
                    &mut want,
                );
                let got =
                    crate::hash::pbkdf2_sha256(password.as_bytes(), b"saltsalt", iterations, len);
                assert_eq!(got, Some(want), "{password:?} {len} {iterations}");
            }
        }
    }
}
