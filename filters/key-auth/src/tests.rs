//! Native tests through the SDK harness.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weir_filter::Action;
use weir_filter::log::Level;
use weir_filter::testing::{Harness, TestRequest};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ALICE_KEY: &str = "alice-test-key-1";
const BOB_KEY: &str = "bob-test-key-2";

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config() -> Value {
    json!({
        "keys": [
            { "consumer": "alice", "sha256": sha256_hex(ALICE_KEY) },
            { "consumer": "bob", "sha256": sha256_hex(BOB_KEY).to_uppercase() },
        ],
        "query": "api_key",
    })
}

/// Status, `WWW-Authenticate` and the JSON body's `error` of a refusal.
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
fn a_known_key_in_the_header_passes_and_is_stripped() -> TestResult {
    let mut h = Harness::<KeyAuth>::new(config())?;
    let mut req = TestRequest::get("/orders?id=7")
        .header("x-api-key", ALICE_KEY)
        .header("x-consumer", "mallory");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(
        req.header_values("x-consumer"),
        ["alice"],
        "the client's value is replaced"
    );
    assert_eq!(req.header_value("x-api-key"), None);
    assert_eq!(req.path(), "/orders?id=7");
    h.done(&req);

    let mut req = TestRequest::get("/").header("X-Api-Key", format!(" {BOB_KEY} "));
    assert_eq!(
        h.request_headers(&mut req),
        Action::Continue,
        "uppercase hex, padded value"
    );
    assert_eq!(req.header_value("x-consumer"), Some("bob"));
    assert_eq!(
        h.counter("key_auth_decisions_total", &[("result", "allowed")]),
        2
    );
    Ok(())
}

#[test]
fn a_known_key_in_the_query_passes_and_is_stripped() -> TestResult {
    let mut h = Harness::<KeyAuth>::new(config())?;
    let mut req = TestRequest::get(format!("/orders?id=7&api_key={ALICE_KEY}&x=%2F"));
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-consumer"), Some("alice"));
    assert_eq!(req.path(), "/orders?id=7&x=%2F");
    h.done(&req);

    let mut req = TestRequest::get(format!("/orders?api_key={BOB_KEY}"));
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.path(), "/orders");
    Ok(())
}

#[test]
fn strip_key_false_forwards_the_key() -> TestResult {
    let mut cfg = config();
    cfg["strip_key"] = json!(false);
    cfg["consumer_header"] = json!("x-client");
    let mut h = Harness::<KeyAuth>::new(cfg)?;
    let mut req = TestRequest::get(format!("/?api_key={ALICE_KEY}")).header("x-api-key", ALICE_KEY);
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-api-key"), Some(ALICE_KEY));
    assert_eq!(req.path(), format!("/?api_key={ALICE_KEY}"));
    assert_eq!(req.header_value("x-client"), Some("alice"));
    assert_eq!(req.header_value("x-consumer"), None);
    Ok(())
}

#[test]
fn missing_and_unknown_keys_get_a_401() -> TestResult {
    let mut h = Harness::<KeyAuth>::new(config())?;
    let missing = (
        401,
        Some("ApiKey realm=\"weir\""),
        "missing_api_key".to_owned(),
    );
    let invalid = (
        401,
        Some("ApiKey realm=\"weir\""),
        "invalid_api_key".to_owned(),
    );
    let cases = [
        (TestRequest::get("/"), &missing),
        (TestRequest::get("/").header("x-api-key", ""), &missing),
        (TestRequest::get("/?api_key="), &missing),
        (TestRequest::get("/?other=1"), &missing),
        (TestRequest::get("/").header("x-api-key", "nope"), &invalid),
        (
            TestRequest::get("/").header("x-api-key", sha256_hex(ALICE_KEY)),
            &invalid,
        ),
        (TestRequest::get("/?api_key=alice-test-key-"), &invalid),
        (
            TestRequest::get(format!("/?api_key={}", ALICE_KEY.to_uppercase())),
            &invalid,
        ),
        // The header wins over the query: a bad header key is not rescued by a good query.
        (
            TestRequest::get(format!("/?api_key={ALICE_KEY}")).header("x-api-key", "nope"),
            &invalid,
        ),
        // Junk never traps.
        (TestRequest::get("/?api_key=%ff%fe%00%"), &invalid),
        (TestRequest::get("/?api_key=\u{1F600}&&&=&"), &invalid),
    ];
    for (mut req, want) in cases {
        let action = h.request_headers(&mut req);
        assert_eq!(&refusal(&action), want, "{req:?}");
        h.done(&req);
    }
    assert_eq!(
        h.counter("key_auth_decisions_total", &[("result", "denied")]),
        11
    );
    Ok(())
}

#[test]
fn the_query_alone_can_carry_the_key() -> TestResult {
    let mut h = Harness::<KeyAuth>::new(json!({
        "keys": [{ "consumer": "alice", "sha256": sha256_hex(ALICE_KEY) }],
        "header": null,
        "query": "key",
        "realm": "public api",
    }))?;
    let mut req = TestRequest::get("/").header("x-api-key", ALICE_KEY);
    let action = h.request_headers(&mut req);
    assert_eq!(refusal(&action).1, Some("ApiKey realm=\"public api\""));
    h.done(&req);
    let mut req = TestRequest::get(format!("/?key={ALICE_KEY}")).header("x-api-key", "other");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.path(), "/");
    assert_eq!(
        req.header_value("x-api-key"),
        Some("other"),
        "not a configured header"
    );
    Ok(())
}

#[test]
fn plain_keys_work_with_a_warning() -> TestResult {
    let mut h = Harness::<KeyAuth>::new(json!({
        "keys": [{ "consumer": "dev", "key": "dev-key" }],
    }))?;
    let warnings: Vec<_> = h
        .logs()
        .into_iter()
        .filter(|l| l.level == Level::Warn)
        .collect();
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .message
            .contains("keys[0] (consumer \"dev\") is a plain-text key"),
        "{warnings:?}"
    );
    let mut req = TestRequest::get("/").header("x-api-key", "dev-key");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-consumer"), Some("dev"));
    Ok(())
}

#[test]
fn bad_configs_are_refused_with_a_clear_message() {
    let good = sha256_hex(ALICE_KEY);
    let cases = [
        (json!({}), "missing field `keys`"),
        (json!({ "keys": [] }), "keys: at least one key is required"),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": "abc" }] }),
            "keys[0].sha256: expected 64 hex digits",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": "g".repeat(64) }] }),
            "keys[0].sha256: expected 64 hex digits",
        ),
        (
            json!({ "keys": [{ "consumer": "a" }] }),
            "keys[0]: give sha256",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": good, "key": "k" }] }),
            "not both",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "key": "" }] }),
            "keys[0].key: must not be empty",
        ),
        (
            json!({ "keys": [{ "consumer": "", "sha256": good }] }),
            "keys[0].consumer",
        ),
        (
            json!({ "keys": [{ "consumer": "a\nb", "sha256": good }] }),
            "keys[0].consumer",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": good }, { "consumer": "b", "key": ALICE_KEY }] }),
            "keys[1]: the same key as keys[0]",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": good }], "header": null }),
            "give at least one place",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": good }], "header": "x key" }),
            "header: \"x key\" is not a valid header name",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": good }], "consumer_header": "connection" }),
            "consumer_header: connection is a framing or hop-by-hop header: the proxy sets it",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": good }], "query": "" }),
            "query: must not be empty",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": good }], "consumer_header": "" }),
            "consumer_header",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": good }], "consumer_header": "X-Api-Key" }),
            "consumer_header: must differ from header",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": good }], "realm": "" }),
            "realm:",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha256": good }], "strip": true }),
            "unknown field `strip`",
        ),
        (
            json!({ "keys": [{ "consumer": "a", "sha265": good }] }),
            "unknown field `sha265`",
        ),
    ];
    for (cfg, want) in cases {
        match Harness::<KeyAuth>::new(cfg.clone()) {
            Ok(_) => panic!("accepted {cfg}"),
            Err(e) => assert!(
                e.message.contains(want),
                "{cfg}\n  got: {}\n want: {want}",
                e.message
            ),
        }
    }
}

/// The README's quickstart: its config is accepted and its demo key passes both ways.
#[test]
fn the_readme_quickstart_works() -> TestResult {
    let readme = include_str!("../README.md");
    let yaml = weir_filter::testing::first_yaml_block(readme)?;
    let doc: Value = weir_config::yaml_value(yaml)?;
    let mut h = Harness::<KeyAuth>::new(doc["filters"][0]["config"].clone())?;
    let mut req = TestRequest::get("/catalog").header("x-api-key", "weir-demo-key-alice");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-consumer"), Some("alice"));
    h.done(&req);
    let mut req = TestRequest::get("/catalog?api_key=weir-demo-key-alice&page=2");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.path(), "/catalog?page=2");
    Ok(())
}
