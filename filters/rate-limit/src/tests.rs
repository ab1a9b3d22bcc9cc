use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::json;
use weir_filter::testing::{Emulator, Grants, Harness, TestRequest, TestResponse};
use weir_filter::{Action, LocalResponse};

use super::*;

fn limiter(config: serde_json::Value) -> Result<Harness<RateLimit>> {
    Ok(Harness::new(config)?)
}

/// Runs one request through both phases; returns the 429 (or 503) if the filter answered,
/// else the response as the client would see it.
fn hit(h: &mut Harness<RateLimit>, mut req: TestRequest) -> Result<Outcome> {
    let action = h.request_headers(&mut req);
    let out = match action {
        Action::Continue => {
            let mut res = TestResponse::new(200);
            ensure!(h.response_headers(&mut req, &mut res) == Action::Continue);
            Outcome::Passed(res)
        }
        Action::Respond(r) => Outcome::Answered(r),
        Action::Buffer => anyhow::bail!("buffer from a header phase"),
    };
    h.done(&req);
    Ok(out)
}

#[derive(Debug)]
enum Outcome {
    Passed(TestResponse),
    Answered(LocalResponse),
}

impl Outcome {
    fn status(&self) -> u16 {
        match self {
            Outcome::Passed(r) => r.status(),
            Outcome::Answered(r) => r.status,
        }
    }
    fn header(&self, name: &str) -> Option<&str> {
        match self {
            Outcome::Passed(r) => r.header_value(name),
            Outcome::Answered(r) => r.header_value(name),
        }
    }
    /// (status, limit, remaining, reset) as the client sees them.
    fn quota(&self) -> (u16, Option<&str>, Option<&str>, Option<&str>) {
        (
            self.status(),
            self.header("ratelimit-limit"),
            self.header("ratelimit-remaining"),
            self.header("ratelimit-reset"),
        )
    }
}

fn from(ip: &str) -> TestRequest {
    TestRequest::get("/api").client(format!("{ip}:40000"))
}

#[test]
fn burst_passes_then_429_with_retry_after_and_ratelimit_headers() -> Result<()> {
    let mut h = limiter(json!({ "rate": 1, "per": "2s", "burst": 3 }))?;
    // One guest call per request: the request phase, and no context-done.
    assert_eq!(h.phases(), Phases::REQUEST_HEADERS | Phases::STATELESS);
    for remaining in ["2", "1", "0"] {
        let out = hit(&mut h, from("10.0.0.1"))?;
        // Reset: time until the bucket is full again, in whole seconds rounded up.
        let reset = match remaining {
            "2" => "2",
            "1" => "4",
            _ => "6",
        };
        assert_eq!(out.quota(), (200, Some("3"), Some(remaining), Some(reset)));
    }
    let Outcome::Answered(r) = hit(&mut h, from("10.0.0.1"))? else {
        anyhow::bail!("the fourth request must be answered locally");
    };
    assert_eq!(r.status, 429);
    assert_eq!(r.body, br#"{"error":"rate limited"}"#);
    assert_eq!(r.header_value("content-type"), Some("application/json"));
    assert_eq!(r.header_value("retry-after"), Some("2"));
    assert_eq!(r.header_value("ratelimit-limit"), Some("3"));
    assert_eq!(r.header_value("ratelimit-remaining"), Some("0"));
    assert_eq!(r.header_value("ratelimit-reset"), Some("6"));
    assert_eq!(
        h.counter(
            "ratelimit_requests_total",
            &[("route", "test-route"), ("result", "allowed")]
        ),
        3
    );
    assert_eq!(
        h.counter(
            "ratelimit_requests_total",
            &[("route", "test-route"), ("result", "limited")]
        ),
        1
    );

    // Another client has its own bucket.
    assert_eq!(hit(&mut h, from("10.0.0.2"))?.status(), 200);

    // Retry-After is honest: after it, the request passes.
    h.advance(Duration::from_secs(2));
    assert_eq!(
        hit(&mut h, from("10.0.0.1"))?.quota(),
        (200, Some("3"), Some("0"), Some("6"))
    );
    assert_eq!(hit(&mut h, from("10.0.0.1"))?.status(), 429);
    assert_eq!(h.live_contexts(), 0);
    Ok(())
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() -> Result<()> {
    let mut h = limiter(json!({ "rate": 10, "per": "1s", "burst": 1 }))?;
    assert_eq!(hit(&mut h, from("10.0.0.1"))?.status(), 200);
    let out = hit(&mut h, from("10.0.0.1"))?;
    // 100 ms until a token is back: announced as 1 second, never 0.
    assert_eq!((out.status(), out.header("retry-after")), (429, Some("1")));
    h.advance(Duration::from_millis(100));
    assert_eq!(hit(&mut h, from("10.0.0.1"))?.status(), 200);
    Ok(())
}

#[test]
fn header_key_gives_each_api_key_its_bucket_and_falls_back_to_the_ip() -> Result<()> {
    let mut h = limiter(json!({ "key": "header:X-Api-Key", "rate": 1, "per": "1m", "burst": 1 }))?;
    let keyed = |k: &str| from("10.0.0.9").header("x-api-key", k);
    assert_eq!(hit(&mut h, keyed("alpha"))?.status(), 200);
    assert_eq!(hit(&mut h, keyed("alpha"))?.status(), 429);
    assert_eq!(
        hit(&mut h, keyed("beta"))?.status(),
        200,
        "same IP, other key"
    );
    // No key: the client IP's bucket (not an "empty key" bucket shared by everyone).
    assert_eq!(hit(&mut h, from("10.0.0.9"))?.status(), 200);
    assert_eq!(
        hit(&mut h, from("10.0.0.9").header("x-api-key", "  "))?.status(),
        429
    );
    assert_eq!(hit(&mut h, from("10.0.0.10"))?.status(), 200);
    assert_eq!(
        h.counter("ratelimit_key_fallbacks_total", &[("route", "test-route")]),
        3
    );
    Ok(())
}

/// An unsigned JWT with this payload (rate-limit never checks signatures).
fn jwt(payload: &serde_json::Value) -> String {
    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
    format!(
        "{}.{}.sig",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(payload.to_string().as_bytes())
    )
}

#[test]
fn claim_key_reads_the_bearer_payload() -> Result<()> {
    let mut h = limiter(json!({ "key": "claim:sub", "rate": 1, "per": "1h", "burst": 2 }))?;
    let bearer = |p: serde_json::Value| {
        from("10.0.0.1").header("authorization", format!("Bearer {}", jwt(&p)))
    };
    assert_eq!(
        hit(&mut h, bearer(json!({ "sub": "alice", "iat": 1 })))?.status(),
        200
    );
    assert_eq!(
        hit(&mut h, bearer(json!({ "sub": "alice", "iat": 2 })))?.status(),
        200
    );
    assert_eq!(
        hit(&mut h, bearer(json!({ "sub": "alice", "iat": 3 })))?.status(),
        429,
        "same subject, other token"
    );
    assert_eq!(hit(&mut h, bearer(json!({ "sub": "bob" })))?.status(), 200);
    // A numeric claim is a key too.
    assert_eq!(hit(&mut h, bearer(json!({ "sub": 42 })))?.status(), 200);
    // No claim, a broken token, another scheme: the client IP's bucket.
    assert_eq!(hit(&mut h, bearer(json!({ "aud": "x" })))?.status(), 200);
    let broken = from("10.0.0.1").header("authorization", "Bearer not-a-jwt");
    assert_eq!(hit(&mut h, broken)?.status(), 200);
    let basic = from("10.0.0.1").header("authorization", "Basic YWxpY2U6cHc=");
    assert_eq!(
        hit(&mut h, basic)?.status(),
        429,
        "third request of 10.0.0.1's bucket"
    );
    Ok(())
}

#[test]
fn bearer_claim_decoding() {
    let token = jwt(&json!({ "sub": "ä", "n": 7, "ok": true, "nil": null, "obj": { "a": 1 } }));
    let auth = format!("bearer {token}");
    assert_eq!(bearer_claim(&auth, "sub").as_deref(), Some("ä"));
    assert_eq!(bearer_claim(&auth, "n").as_deref(), Some("7"));
    assert_eq!(bearer_claim(&auth, "ok").as_deref(), Some("true"));
    assert_eq!(bearer_claim(&auth, "obj").as_deref(), Some(r#"{"a":1}"#));
    assert_eq!(bearer_claim(&auth, "nil"), None);
    assert_eq!(bearer_claim(&auth, "missing"), None);
    assert_eq!(bearer_claim("Bearer a.!!!.c", "sub"), None);
    assert_eq!(bearer_claim("Bearer a.b", "sub"), None);
    assert_eq!(bearer_claim("Bearer", "sub"), None);
    assert_eq!(bearer_claim("", "sub"), None);
    // Padded, standard-alphabet payloads decode too.
    assert_eq!(
        base64url_decode("eyJzdWIiOiJ4In0="),
        Some(br#"{"sub":"x"}"#.to_vec())
    );
    assert_eq!(base64url_decode("a"), None);
}

#[test]
fn routes_and_limits_never_share_a_bucket() -> Result<()> {
    let host = Emulator::new();
    // One module, two configs (the route override changed the rate), as the proxy would run it.
    let mut base = Harness::<RateLimit>::with_host(&host, r#"{ "rate": 2, "per": "1m" }"#)?;
    let mut strict = Harness::<RateLimit>::with_host(&host, r#"{ "rate": 1, "per": "1m" }"#)?;
    let on = |route: &str| from("10.0.0.1").route(route);
    assert_eq!(hit(&mut base, on("a"))?.quota().2, Some("1"));
    assert_eq!(hit(&mut base, on("a"))?.quota().2, Some("0"));
    assert_eq!(hit(&mut base, on("a"))?.status(), 429);
    assert_eq!(
        hit(&mut base, on("b"))?.status(),
        200,
        "same config, other route"
    );
    assert_eq!(
        hit(&mut strict, on("a"))?.quota(),
        (200, Some("1"), Some("0"), Some("60"))
    );
    assert_eq!(hit(&mut strict, on("a"))?.status(), 429);
    Ok(())
}

#[test]
fn cost_takes_several_tokens() -> Result<()> {
    let mut h = limiter(json!({ "rate": 5, "per": "1s", "burst": 5, "cost": 2 }))?;
    assert_eq!(hit(&mut h, from("10.0.0.1"))?.quota().2, Some("3"));
    assert_eq!(hit(&mut h, from("10.0.0.1"))?.quota().2, Some("1"));
    let out = hit(&mut h, from("10.0.0.1"))?;
    assert_eq!(
        (out.status(), out.header("ratelimit-remaining")),
        (429, Some("1"))
    );
    Ok(())
}

#[test]
fn an_ungranted_namespace_fails_open_by_default_and_logs_once() -> Result<()> {
    let host = Emulator::new();
    host.set_grants(Grants::none().kv("other"));
    let mut h = Harness::<RateLimit>::with_host(&host, r#"{ "rate": 1 }"#)?;
    for _ in 0..3 {
        let out = hit(&mut h, from("10.0.0.1"))?;
        assert_eq!(
            out.quota(),
            (200, None, None, None),
            "allowed, and no quota to report"
        );
    }
    let warnings: Vec<String> = h.logs().into_iter().map(|l| l.message).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("denied") && warnings[0].contains("grants: { kv: [ratelimit] }"),
        "{warnings:?}"
    );
    assert_eq!(
        h.counter(
            "ratelimit_backend_errors_total",
            &[("route", "test-route"), ("kind", "denied")]
        ),
        3
    );

    // Granted later (as after a fix): back to limiting, and the recovery is logged.
    host.set_grants(Grants::none().kv("ratelimit"));
    assert_eq!(hit(&mut h, from("10.0.0.1"))?.status(), 200);
    assert_eq!(hit(&mut h, from("10.0.0.1"))?.status(), 429);
    assert!(
        h.logs()
            .iter()
            .any(|l| l.message.contains("available again"))
    );
    Ok(())
}

#[test]
fn on_backend_error_deny_answers_503() -> Result<()> {
    let host = Emulator::new();
    host.set_grants(Grants::none());
    let mut h =
        Harness::<RateLimit>::with_host(&host, r#"{ "rate": 1, "on_backend_error": "deny" }"#)?;
    let Outcome::Answered(r) = hit(&mut h, from("10.0.0.1"))? else {
        anyhow::bail!("deny must answer");
    };
    assert_eq!(
        (r.status, r.body.as_slice()),
        (503, &br#"{"error":"rate limiter unavailable"}"#[..])
    );
    Ok(())
}

#[test]
fn response_headers_can_be_turned_off_and_the_tightest_limit_wins() -> Result<()> {
    let mut h = limiter(json!({ "rate": 1, "response_headers": false }))?;
    let mut req = from("10.0.0.1");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.response_headers_to_set(), []);
    h.done(&req);

    // Two limits on one route, in either order: the headers describe the one closer to running
    // out, and they replace any the upstream sent.
    for tight_first in [true, false] {
        let mut tight = limiter(json!({ "rate": 2 }))?;
        let mut loose = limiter(json!({ "rate": 10 }))?;
        let (first, second) = if tight_first {
            (&mut tight, &mut loose)
        } else {
            (&mut loose, &mut tight)
        };
        let mut req = from("10.0.0.1");
        assert_eq!(first.request_headers(&mut req), Action::Continue);
        assert_eq!(second.request_headers(&mut req), Action::Continue);
        let mut res = TestResponse::new(200)
            .header("ratelimit-limit", "99")
            .header("ratelimit-remaining", "98")
            .header("server", "up");
        assert_eq!(
            second.response_headers(&mut req, &mut res),
            Action::Continue
        );
        assert_eq!(
            (
                res.header_value("ratelimit-limit"),
                res.header_value("ratelimit-remaining"),
                res.header_value("ratelimit-reset"),
                res.header_value("server"),
            ),
            (Some("2"), Some("1"), Some("1"), Some("up")),
            "tight first: {tight_first}"
        );
        assert_eq!(res.header_values("ratelimit-limit").len(), 1);
        first.done(&req);
        second.done(&req);
    }
    Ok(())
}

#[test]
fn configs_are_validated_with_clear_messages() {
    let err = |config: serde_json::Value| match Harness::<RateLimit>::new(config) {
        Ok(_) => String::from("<accepted>"),
        Err(e) => e.message,
    };
    assert_eq!(
        err(json!({})),
        "rate: required: tokens added per `per` (e.g. rate: 100)"
    );
    assert_eq!(err(json!({ "rate": 0 })), "rate: must be at least 1");
    assert_eq!(
        err(json!({ "rate": 1, "per": "1.5s" })),
        "per: \"1.5s\" is not a duration (a whole number with ms, s, m or h, e.g. \"1s\" or \"500ms\")"
    );
    assert_eq!(
        err(json!({ "rate": 1, "per": "0ms" })),
        "per: must be at least 1ms"
    );
    assert_eq!(
        err(json!({ "rate": 1, "burst": 0 })),
        "burst: must be at least 1 (or leave it out: default rate)"
    );
    assert_eq!(
        err(json!({ "rate": 1, "cost": 0 })),
        "cost: must be at least 1"
    );
    assert_eq!(
        err(json!({ "rate": 1, "burst": 2, "cost": 3 })),
        "cost: 3 is more than burst 2, so no request could ever pass; raise burst or lower cost"
    );
    assert_eq!(
        err(json!({ "rate": 1, "namespace": "" })),
        "namespace: must not be empty"
    );
    assert_eq!(
        err(json!({ "rate": 1, "key": "ip" })),
        "key: \"ip\" is not one of client_ip, header:<name>, claim:<name>"
    );
    assert_eq!(
        err(json!({ "rate": 1, "key": "header:bad name" })),
        "key: \"header:bad name\": \"bad name\" is not a valid header name (e.g. \"header:x-api-key\")"
    );
    assert_eq!(
        err(json!({ "rate": 1, "key": "claim:" })),
        "key: \"claim:\": name the claim (e.g. \"claim:sub\")"
    );
    assert!(
        err(json!({ "rate": 1, "rat": 2 })).starts_with("config: unknown field `rat`"),
        "{}",
        err(json!({ "rate": 1, "rat": 2 }))
    );
    assert!(
        err(json!({ "rate": 1, "on_backend_error": "maybe" }))
            .starts_with("config: unknown variant `maybe`")
    );
    assert_eq!(
        err(
            json!({ "rate": 100, "per": "1s", "burst": 20, "key": "claim:sub", "namespace": "rl", "cost": 1, "on_backend_error": "deny" })
        ),
        "<accepted>"
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
    for bad in [
        "",
        "s",
        "1",
        "1 s",
        "-1s",
        "1d",
        "99999999999999999999s",
        "18446744073709551615h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn client_ips_parse_for_v4_and_v6() {
    assert_eq!(ip_of("10.1.2.3:5000"), "10.1.2.3");
    assert_eq!(ip_of("[::1]:5000"), "::1");
    assert_eq!(ip_of("weird"), "weird");
    // A non-canonical spelling is normalized, so one client is one bucket however it is written.
    assert_eq!(ip_of("[0:0:0:0:0:0:0:1]:5000"), "::1");
    assert_eq!(ip_of("[::ffff:10.0.0.1]:80"), "::ffff:10.0.0.1");
}

#[test]
fn hostile_inputs_never_panic() -> Result<()> {
    let mut h = limiter(json!({ "key": "claim:sub", "rate": 1000 }))?;
    let long = "a".repeat(70_000);
    for auth in [
        "Bearer ...".to_owned(),
        "Bearer a.=====.c".to_owned(),
        format!("Bearer a.{long}.c"),
        "Bearer a.bnVsbA.c".to_owned(), // payload "null"
        "Bearer a.W10.c".to_owned(),    // payload "[]"
        "Bearer a.\u{e9}\u{e9}.c".to_owned(),
    ] {
        assert_eq!(
            hit(&mut h, from("10.0.0.1").header("authorization", auth))?.status(),
            200
        );
    }
    let mut h = limiter(json!({ "rate": 1000 }))?;
    assert_eq!(hit(&mut h, TestRequest::get("/").client(""))?.status(), 200);
    Ok(())
}
