//! Native tests through the SDK harness: tokens are signed here with test-only keys.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer as _;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::SignatureEncoding;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::Sha256;
use weir_filter::testing::{Harness, TestRequest};
use weir_filter::{Action, LocalResponse};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A 2048-bit RSA key generated for these tests only (it protects nothing).
const RSA_PRIVATE_PEM: &str = include_str!("../testdata/rsa-2048-test-only.pem");
/// A 1024-bit RSA public key: too small, must be refused.
const RSA_1024_PUBLIC_PEM: &str = include_str!("../testdata/rsa-1024-test-only.pub.pem");
const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
/// The harness clock starts at 2023-11-14T22:13:20Z.
const NOW: i64 = 1_700_000_000;

enum Signer {
    Hs(Vec<u8>),
    Rs(Box<rsa::RsaPrivateKey>),
    Es(p256::ecdsa::SigningKey),
}

impl Signer {
    fn hs() -> Signer {
        Signer::Hs(SECRET.as_bytes().to_vec())
    }
    fn rs() -> Signer {
        Signer::Rs(Box::new(
            rsa::RsaPrivateKey::from_pkcs8_pem(RSA_PRIVATE_PEM).expect("test rsa key"),
        ))
    }
    /// A P-256 key from a fixed scalar: reproducible without an RNG.
    fn es(seed: u8) -> Signer {
        Signer::Es(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("scalar"))
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Hs(_) => "HS256",
            Signer::Rs(_) => "RS256",
            Signer::Es(_) => "ES256",
        }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            Signer::Hs(secret) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac");
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            }
            Signer::Rs(key) => rsa::pkcs1v15::SigningKey::<Sha256>::new((**key).clone())
                .sign(input)
                .to_vec(),
            Signer::Es(key) => {
                let sig: p256::ecdsa::Signature = key.sign(input);
                sig.to_bytes().to_vec()
            }
        }
    }

    fn public_pem(&self) -> String {
        match self {
            Signer::Hs(_) => unreachable!("no public key"),
            Signer::Rs(key) => key
                .to_public_key()
                .to_public_key_pem(Default::default())
                .expect("pem"),
            Signer::Es(key) => key
                .verifying_key()
                .to_public_key_pem(Default::default())
                .expect("pem"),
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        match self {
            Signer::Hs(secret) => json!({ "kty": "oct", "kid": kid, "k": b64(secret) }),
            Signer::Rs(key) => json!({
                "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be()),
            }),
            Signer::Es(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                json!({
                    "kty": "EC", "kid": kid, "crv": "P-256",
                    "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y")),
                })
            }
        }
    }

    fn key_config(&self, kid: Option<&str>) -> Value {
        let mut k = match self {
            Signer::Hs(secret) => json!({
                "alg": "HS256", "secret": String::from_utf8(secret.clone()).expect("utf8"),
            }),
            _ => json!({ "alg": self.alg(), "public_key_pem": self.public_pem() }),
        };
        if let Some(kid) = kid {
            k["kid"] = json!(kid);
        }
        k
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with this header (as given) and claims, signed by `signer`.
fn token_with_header(header: &Value, claims: &Value, signer: &Signer) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = signer.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

fn token(signer: &Signer, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({ "alg": signer.alg(), "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    token_with_header(&header, claims, signer)
}

fn claims() -> Value {
    json!({
        "sub": "alice", "email": "alice@example.com", "iss": "https://issuer.test",
        "aud": "api", "exp": NOW + 600, "iat": NOW, "roles": ["admin", "dev"],
    })
}

fn bearer(token: &str) -> TestRequest {
    TestRequest::get("/orders").header("authorization", format!("Bearer {token}"))
}

fn config(keys: Value) -> Value {
    json!({
        "keys": keys,
        "issuer": "https://issuer.test",
        "audiences": ["api", "admin-api"],
        "forward_claims": { "sub": "x-user-id", "email": "x-user-email", "roles": "x-roles" },
    })
}

/// The 401's `error_description`, checked against the challenge and the JSON body.
fn refusal(action: &Action) -> Result<String, Box<dyn std::error::Error>> {
    let r: &LocalResponse = action.local_response().ok_or("expected a local response")?;
    assert_eq!(r.status, 401);
    assert_eq!(r.header_value("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&r.body)?;
    let description = body["error_description"].as_str().ok_or("no description")?;
    let challenge = r.header_value("www-authenticate").ok_or("no challenge")?;
    if body["error"] == "invalid_token" {
        assert_eq!(
            challenge,
            format!(
                "Bearer realm=\"weir\", error=\"invalid_token\", error_description=\"{description}\""
            )
        );
    } else {
        assert_eq!(body["error"], "missing_token");
        assert_eq!(challenge, "Bearer realm=\"weir\"");
    }
    Ok(description.to_owned())
}

fn refused(
    h: &mut Harness<JwtAuth>,
    req: TestRequest,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut req = req;
    let action = h.request_headers(&mut req);
    h.done(&req);
    refusal(&action)
}

#[test]
fn valid_tokens_of_each_algorithm_pass_and_claims_are_forwarded() -> TestResult {
    for signer in [Signer::hs(), Signer::rs(), Signer::es(7)] {
        let mut h = Harness::<JwtAuth>::new(config(json!([signer.key_config(None)])))?;
        let t = token(&signer, None, &claims());
        let mut req = bearer(&t)
            .header("x-user-id", "mallory")
            .header("x-user-id", "eve");
        assert_eq!(
            h.request_headers(&mut req),
            Action::Continue,
            "{}",
            signer.alg()
        );
        assert_eq!(
            req.header_values("x-user-id"),
            ["alice"],
            "client values are replaced"
        );
        assert_eq!(req.header_value("x-user-email"), Some("alice@example.com"));
        assert_eq!(req.header_value("x-roles"), Some("admin,dev"));
        let auth = format!("Bearer {t}");
        assert_eq!(
            req.header_value("authorization"),
            Some(auth.as_str()),
            "kept by default"
        );
        h.done(&req);
        assert_eq!(
            h.counter("jwt_auth_decisions_total", &[("result", "allowed")]),
            1
        );
    }
    Ok(())
}

#[test]
fn missing_or_foreign_credentials_get_a_bare_challenge() -> TestResult {
    let mut h = Harness::<JwtAuth>::new(config(json!([Signer::hs().key_config(None)])))?;
    for req in [
        TestRequest::get("/"),
        TestRequest::get("/").header("authorization", "Basic YWxpY2U6cHc="),
        TestRequest::get("/").header("authorization", "Bearer"),
        TestRequest::get("/").header("authorization", ""),
    ] {
        assert_eq!(refused(&mut h, req)?, "a bearer token is required");
    }
    assert_eq!(
        h.counter("jwt_auth_decisions_total", &[("result", "denied")]),
        4
    );
    Ok(())
}

#[test]
fn claims_are_checked_with_leeway() -> TestResult {
    let hs = Signer::hs();
    let mut h = Harness::<JwtAuth>::new(config(json!([hs.key_config(None)])))?;
    let with = |patch: Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().into_iter().flatten() {
            if v.is_null() {
                c.as_object_mut().map(|m| m.remove(k));
            } else {
                c[k] = v.clone();
            }
        }
        token(&hs, None, &c)
    };
    let cases = [
        (json!({ "exp": NOW - 31 }), Some("token expired")),
        (json!({ "exp": NOW - 30 }), Some("token expired")),
        (json!({ "exp": NOW - 29 }), None),
        (json!({ "exp": (NOW as f64) - 29.5 }), None),
        (json!({ "exp": "tomorrow" }), Some("invalid claims")),
        (json!({ "exp": null }), Some("token has no expiry")),
        (json!({ "nbf": NOW + 31 }), Some("token not yet valid")),
        (json!({ "nbf": NOW + 30 }), None),
        (json!({ "nbf": NOW }), None),
        (
            json!({ "iss": "https://evil.test" }),
            Some("invalid issuer"),
        ),
        (json!({ "iss": null }), Some("invalid issuer")),
        (json!({ "iss": 7 }), Some("invalid issuer")),
        (json!({ "aud": "other" }), Some("invalid audience")),
        (json!({ "aud": null }), Some("invalid audience")),
        (json!({ "aud": ["other", "admin-api"] }), None),
        (json!({ "aud": ["other", 3] }), Some("invalid audience")),
    ];
    for (patch, want) in cases {
        let mut req = bearer(&with(patch.clone()));
        let action = h.request_headers(&mut req);
        h.done(&req);
        match want {
            None => assert_eq!(action, Action::Continue, "{patch}"),
            Some(want) => assert_eq!(refusal(&action)?, want, "{patch}"),
        }
    }
    Ok(())
}

/// A token whose claims are this JSON text exactly (what `serde_json` would never write:
/// escapes, duplicate members, odd spacing), signed by `signer`.
fn token_with_claims_text(claims: &str, signer: &Signer) -> String {
    let header = json!({ "alg": signer.alg(), "typ": "JWT" });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.as_bytes())
    );
    let sig = signer.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// The claims are read from the token's text as JSON defines it, whatever way it was written:
/// escaped member names and values mean what they decode to, a member given twice is its last
/// value (what a JSON object keeps), and a payload that is not one object is malformed.
#[test]
fn claims_are_read_as_json_whatever_their_spelling() -> TestResult {
    let hs = Signer::hs();
    let mut h = Harness::<JwtAuth>::new(config(json!([hs.key_config(None)])))?;
    let (iss, future, past) = ("https://issuer.test", NOW + 600, NOW - 600);
    let ok = |h: &mut Harness<JwtAuth>,
              text: String|
     -> Result<TestRequest, Box<dyn std::error::Error>> {
        let mut req = bearer(&token_with_claims_text(&text, &hs));
        let action = h.request_headers(&mut req);
        h.done(&req);
        assert_eq!(action, Action::Continue, "{text}");
        Ok(req)
    };
    // Escapes in names and values; spacing; members in any order.
    let req = ok(
        &mut h,
        format!(
            r#" {{ "sub" : "alice\"x" , "aud":[ "api" ],"exp":{future},
              "iss":"https:\/\/issuer.test", "roles": ["a", "b"] }} "#
        ),
    )?;
    assert_eq!(req.header_value("x-user-id"), Some("alice\"x"));
    assert_eq!(req.header_value("x-roles"), Some("a,b"));
    // A member given twice: its last value counts, for the checks and for the headers.
    let req = ok(
        &mut h,
        format!(
            r#"{{"sub":"mallory","sub":"alice","exp":{past},"exp":{future},"iss":"{iss}","aud":"api"}}"#
        ),
    )?;
    assert_eq!(req.header_value("x-user-id"), Some("alice"));
    let text =
        format!(r#"{{"sub":"alice","exp":{future},"exp":{past},"iss":"{iss}","aud":"api"}}"#);
    let denied = refused(&mut h, bearer(&token_with_claims_text(&text, &hs)))?;
    assert_eq!(denied, "token expired");
    // A number forwarded is its JSON text; an object, compact JSON.
    let req = ok(
        &mut h,
        format!(
            r#"{{"sub":42,"email":{{"a": [1, 2]}},"exp":{future}.5,"iss":"{iss}","aud":"api"}}"#
        ),
    )?;
    assert_eq!(req.header_value("x-user-id"), Some("42"));
    assert_eq!(req.header_value("x-user-email"), Some(r#"{"a":[1,2]}"#));
    // Not one JSON object, or not JSON at all: malformed (never a panic).
    for text in [
        "[]",
        "\"claims\"",
        "{\"exp\":1",
        "{\"exp\":1}}",
        "{\"exp\":1,}",
        "{\"exp\":01}",
        "",
    ] {
        let denied = refused(&mut h, bearer(&token_with_claims_text(text, &hs)))?;
        assert_eq!(denied, "malformed token", "{text:?}");
    }
    // A member read (forwarded) whose string does not decode: malformed, never forwarded.
    // (A raw control character is refused earlier, with the payload's syntax.)
    for sub in [r#""\ud800""#, r#""a\udc00b""#, "\"\u{1}\"", r#"["\ud800"]"#] {
        let text = format!(r#"{{"sub":{sub},"exp":{future},"iss":"{iss}","aud":"api"}}"#);
        let req = bearer(&token_with_claims_text(&text, &hs)).header("x-user-id", "mallory");
        let denied = refused(&mut h, req)?;
        assert_eq!(denied, "malformed token", "{sub}");
    }
    // A member nobody reads is not interpreted: a lone surrogate there passes (signed).
    let req = ok(
        &mut h,
        format!(r#"{{"sub":"alice","note":"\ud800","exp":{future},"iss":"{iss}","aud":"api"}}"#),
    )?;
    assert_eq!(req.header_value("x-user-id"), Some("alice"));
    // A check's member that does not decode fails that check.
    let text = format!(r#"{{"exp":{future},"iss":"\ud800","aud":"api"}}"#);
    let denied = refused(&mut h, bearer(&token_with_claims_text(&text, &hs)))?;
    assert_eq!(denied, "invalid issuer");
    let text = format!(r#"{{"exp":{future},"iss":"{iss}","aud":"\udc00"}}"#);
    let denied = refused(&mut h, bearer(&token_with_claims_text(&text, &hs)))?;
    assert_eq!(denied, "invalid audience");
    // A claim whose value cannot be read as the check needs: invalid claims, not a pass.
    for exp in ["\"tomorrow\"", "1e400", "null", "true", "[1]"] {
        let text = format!(r#"{{"exp":{exp},"iss":"{iss}","aud":"api"}}"#);
        let denied = refused(&mut h, bearer(&token_with_claims_text(&text, &hs)))?;
        assert_eq!(denied, "invalid claims", "{exp}");
    }
    Ok(())
}

#[test]
fn expiry_follows_the_clock() -> TestResult {
    let hs = Signer::hs();
    let mut h = Harness::<JwtAuth>::new(json!({
        "keys": [hs.key_config(None)], "leeway_s": 0,
    }))?;
    let t = token(&hs, None, &json!({ "sub": "a", "exp": NOW + 10 }));
    let mut req = bearer(&t);
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    h.done(&req);
    h.advance(std::time::Duration::from_secs(10));
    assert_eq!(refused(&mut h, bearer(&t))?, "token expired");
    Ok(())
}

#[test]
fn require_exp_can_be_turned_off() -> TestResult {
    let hs = Signer::hs();
    let t = token(&hs, None, &json!({ "sub": "svc" }));
    let mut h = Harness::<JwtAuth>::new(json!({ "keys": [hs.key_config(None)] }))?;
    assert_eq!(refused(&mut h, bearer(&t))?, "token has no expiry");
    let mut h = Harness::<JwtAuth>::new(json!({
        "keys": [hs.key_config(None)], "require_exp": false,
    }))?;
    let mut req = bearer(&t);
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    Ok(())
}

#[test]
fn forged_and_malformed_tokens_are_refused() -> TestResult {
    let (hs, rs, es) = (Signer::hs(), Signer::rs(), Signer::es(7));
    let keys = json!([rs.key_config(Some("rsa-1")), es.key_config(None)]);
    let mut h = Harness::<JwtAuth>::new(config(keys))?;
    let good = token(&rs, Some("rsa-1"), &claims());

    // Flip one bit of the signature.
    let (input, sig) = good.rsplit_once('.').ok_or("dots")?;
    let mut sig = URL_SAFE_NO_PAD.decode(sig)?;
    sig[10] ^= 1;
    let flipped = format!("{input}.{}", b64(&sig));
    // Same header and signature, other claims.
    let (header, _) = good.split_once('.').ok_or("dots")?;
    let evil_claims = b64(
        json!({ "sub": "root", "exp": NOW + 600, "iss": "https://issuer.test", "aud": "api" })
            .to_string()
            .as_bytes(),
    );
    let swapped = format!(
        "{header}.{evil_claims}.{}",
        good.rsplit_once('.').ok_or("dots")?.1
    );
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims().to_string().as_bytes())
    );
    let none_upper = format!(
        "{}.{}.",
        b64(br#"{"alg":"NONE"}"#),
        b64(claims().to_string().as_bytes())
    );
    // The classic key confusion: HS256 with the RSA public key's PEM as the secret.
    let confused = token(
        &Signer::Hs(rs.public_pem().into_bytes()),
        Some("rsa-1"),
        &claims(),
    );
    let confused_no_kid = token(&Signer::Hs(rs.public_pem().into_bytes()), None, &claims());
    let other_ec_key = token(&Signer::es(9), None, &claims());
    let hs_no_key = token(&hs, None, &claims());
    let unknown_kid = token(&rs, Some("rsa-2"), &claims());
    let crit = token_with_header(
        &json!({ "alg": "RS256", "kid": "rsa-1", "crit": ["b64"], "b64": false }),
        &claims(),
        &rs,
    );
    let es512 = token_with_header(&json!({ "alg": "ES512" }), &claims(), &hs);
    let hs512_no_key = token_with_header(&json!({ "alg": "HS512" }), &claims(), &hs);
    let array_claims = token_with_header(&json!({ "alg": "ES256" }), &json!([1, 2]), &es);

    let cases: Vec<(String, &str)> = vec![
        (flipped, "invalid signature"),
        (swapped, "invalid signature"),
        (other_ec_key, "invalid signature"),
        (none, "unsupported algorithm"),
        (none_upper, "unsupported algorithm"),
        (es512, "unsupported algorithm"),
        (hs512_no_key, "no key for this algorithm"),
        (confused, "algorithm does not match the key"),
        (confused_no_kid, "no key for this algorithm"),
        (hs_no_key, "no key for this algorithm"),
        (unknown_kid, "unknown key id"),
        (crit, "unsupported critical header"),
        (array_claims, "malformed token"),
        ("abc".into(), "malformed token"),
        ("a.b".into(), "malformed token"),
        ("a.b.c.d".into(), "malformed token"),
        ("..".into(), "malformed token"),
        (format!("{good}="), "malformed token"),
        (format!("{good}.x"), "malformed token"),
        (good.replacen('.', "!.", 1), "malformed token"),
        ("e30.e30.e30".into(), "malformed token"),
        (format!("{}.e30.AAAA", b64(b"not json")), "malformed token"),
    ];
    for (t, want) in cases {
        assert_eq!(refused(&mut h, bearer(&t))?, want, "{t}");
    }
    assert_eq!(
        h.counter("jwt_auth_decisions_total", &[("result", "allowed")]),
        0
    );
    // And the untouched token still passes.
    let mut req = bearer(&good);
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    Ok(())
}

#[test]
fn no_input_makes_the_filter_panic() -> TestResult {
    let (rs, es) = (Signer::rs(), Signer::es(7));
    let mut h = Harness::<JwtAuth>::new(config(json!([
        rs.key_config(None),
        es.key_config(Some("e")),
        Signer::hs().key_config(Some("h")),
    ])))?;
    let good = token(&es, Some("e"), &claims());
    // Every truncation and a sweep of single-byte substitutions of a valid token, plus
    // pseudo-random junk: all must be answered, none may trap (a panic fails the test).
    let mut inputs: Vec<String> = (0..good.len()).map(|n| good[..n].to_owned()).collect();
    for (i, c) in good.char_indices().step_by(3) {
        for sub in ['.', '-', '_', '=', 'A', '/', ' ', 'é'] {
            let mut s = good.clone();
            s.replace_range(i..i + c.len_utf8(), &sub.to_string());
            inputs.push(s);
        }
    }
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..300 {
        let len = (x % 120) as usize;
        let s: String = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"ab.-_=eyJ0{}\""
                    .get((x % 14) as usize)
                    .copied()
                    .unwrap_or(b'.') as char
            })
            .collect();
        inputs.push(s);
    }
    for (i, t) in inputs.iter().enumerate() {
        let mut req = bearer(t);
        let action = h.request_headers(&mut req);
        h.done(&req);
        if t != &good {
            assert_eq!(
                action.local_response().map(|r| r.status),
                Some(401),
                "input {i}: {t}"
            );
        }
    }
    Ok(())
}

#[test]
fn jwks_keys_are_selected_by_kid() -> TestResult {
    let (rs, es_a, es_b) = (Signer::rs(), Signer::es(1), Signer::es(2));
    let mut cfg = config(json!([]));
    cfg["jwks"] = json!({ "keys": [
        rs.jwk("r1"),
        es_a.jwk("a"),
        es_b.jwk("b"),
        Signer::hs().jwk("h"),
        // Not usable here: skipped with a warning, not an error.
        { "kty": "RSA", "kid": "x", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB" },
        { "kty": "OKP", "kid": "x", "crv": "X25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
        { "kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA" },
        { "kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB" },
    ]});
    let mut h = Harness::<JwtAuth>::new(cfg)?;
    let skipped = h
        .logs()
        .iter()
        .filter(|l| l.message.contains("skipped"))
        .count();
    assert_eq!(skipped, 4, "{:?}", h.logs());

    for (signer, kid) in [
        (&rs, "r1"),
        (&es_a, "a"),
        (&es_b, "b"),
        (&Signer::hs(), "h"),
    ] {
        let mut req = bearer(&token(signer, Some(kid), &claims()));
        assert_eq!(h.request_headers(&mut req), Action::Continue, "kid {kid}");
        h.done(&req);
    }
    // Key b's signature under kid a: the kid picks key a, which does not verify it.
    assert_eq!(
        refused(&mut h, bearer(&token(&es_b, Some("a"), &claims())))?,
        "invalid signature"
    );
    assert_eq!(
        refused(&mut h, bearer(&token(&es_b, Some("zz"), &claims())))?,
        "unknown key id"
    );
    // No kid in the token: every ES256 key is tried.
    let mut req = bearer(&token(&es_b, None, &claims()));
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    Ok(())
}

#[test]
fn an_unknown_kid_falls_back_to_keys_without_kid() -> TestResult {
    let es = Signer::es(3);
    let mut h = Harness::<JwtAuth>::new(config(json!([es.key_config(None)])))?;
    let mut req = bearer(&token(&es, Some("rotated-away"), &claims()));
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    Ok(())
}

#[test]
fn strip_token_removes_the_authorization_header() -> TestResult {
    let hs = Signer::hs();
    let mut cfg = config(json!([hs.key_config(None)]));
    cfg["strip_token"] = json!(true);
    cfg["realm"] = json!("orders api");
    let mut h = Harness::<JwtAuth>::new(cfg)?;
    let mut req = bearer(&token(&hs, None, &claims()));
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("authorization"), None);
    h.done(&req);
    let mut req = TestRequest::get("/");
    let action = h.request_headers(&mut req);
    let challenge = action
        .local_response()
        .and_then(|r| r.header_value("www-authenticate"));
    assert_eq!(challenge, Some("Bearer realm=\"orders api\""));
    Ok(())
}

#[test]
fn claims_that_cannot_be_headers_are_left_out() -> TestResult {
    let hs = Signer::hs();
    let mut h = Harness::<JwtAuth>::new(config(json!([hs.key_config(None)])))?;
    let mut c = claims();
    c["email"] = json!("a\r\nx-admin: yes");
    c["sub"] = json!(42);
    c.as_object_mut().map(|m| m.remove("roles"));
    let mut req = bearer(&token(&hs, None, &c)).header("x-roles", "spoofed");
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-user-id"), Some("42"));
    assert_eq!(req.header_value("x-user-email"), None);
    assert_eq!(
        req.header_value("x-roles"),
        None,
        "absent claim: spoofed header removed"
    );
    assert_eq!(req.header_value("x-admin"), None);
    Ok(())
}

#[test]
fn bad_configs_are_refused_with_a_clear_message() {
    let rs = Signer::rs();
    let cases = [
        (json!({}), "no usable keys"),
        (json!({ "keys": [] }), "no usable keys"),
        (
            json!({ "keys": [{ "alg": "ES512", "secret": SECRET }] }),
            "keys[0].alg: unknown algorithm \"ES512\"",
        ),
        (
            json!({ "keys": [{ "alg": "HS512", "secret": SECRET }] }),
            "keys[0].secret: an HS512 secret must be at least 64 bytes",
        ),
        (
            json!({ "keys": [{ "alg": "ES384", "public_key_pem": Signer::es(3).public_pem() }] }),
            "keys[0].public_key_pem: not a usable ES384 public key",
        ),
        (
            json!({ "jwks": { "keys": [{ "kty": "EC", "alg": "ES384", "crv": "P-256", "x": "AA", "y": "AA" }] } }),
            "jwks.keys[0].crv: ES384 needs curve P-384",
        ),
        (
            json!({ "jwks": { "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": "AAAA" }] } }),
            "jwks.keys[0].x: not an Ed25519 key",
        ),
        (
            json!({ "keys": [{ "alg": "none", "secret": SECRET }] }),
            "keys[0].alg: \"none\" is never accepted",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": "short" }] }),
            "keys[0].secret: an HS256 secret must be at least 32 bytes",
        ),
        (
            json!({ "keys": [{ "alg": "HS256" }] }),
            "keys[0]: alg HS256 needs a secret",
        ),
        (
            json!({ "keys": [{ "alg": "RS256", "secret": SECRET }] }),
            "keys[0]: alg RS256 needs public_key_pem",
        ),
        (
            json!({ "keys": [{ "alg": "RS256", "secret": SECRET, "public_key_pem": rs.public_pem() }] }),
            "not both",
        ),
        (
            json!({ "keys": [{ "alg": "RS256", "public_key_pem": RSA_PRIVATE_PEM }] }),
            "keys[0].public_key_pem: this is a private key",
        ),
        (
            json!({ "keys": [{ "alg": "RS256", "public_key_pem": RSA_1024_PUBLIC_PEM }] }),
            "the RSA key has 1024 bits; 2048 to 8192 are accepted",
        ),
        (
            json!({ "keys": [{ "alg": "ES256", "public_key_pem": rs.public_pem() }] }),
            "keys[0].public_key_pem: not a usable ES256 public key (ecdsa-p256-sha256 needs an EC key on its curve)",
        ),
        (
            json!({ "keys": [{ "alg": "RS256", "public_key_pem": "garbage" }] }),
            "keys[0].public_key_pem: not an RSA public key",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": SECRET, "kid": "" }] }),
            "keys[0].kid: must not be empty",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": SECRET, "kidd": "a" }] }),
            "unknown field `kidd`",
        ),
        (
            json!({ "jwks": { "keys": [{ "kty": "RSA", "n": "!!", "e": "AQAB" }] } }),
            "jwks.keys[0].n: not base64url",
        ),
        (
            json!({ "jwks": { "keys": [{ "kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA" }] } }),
            "jwks.keys[0]: P-256 coordinates",
        ),
        (
            json!({ "jwks": { "keys": [{ "kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32]) }] } }),
            "not a point on P-256",
        ),
        (
            json!({ "jwks": { "keys": [{ "kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB" }] } }),
            "alg ES256 does not fit key type RSA",
        ),
        (
            json!({ "jwks": { "keys": [{ "kty": "oct", "k": "c2hvcnQ" }] } }),
            "jwks.keys[0].k: an HS256 secret must be at least 32 bytes",
        ),
        (
            json!({ "jwks": { "keys": [{ "alg": "RS256" }] } }),
            "jwks.keys[0]: missing field `kty`",
        ),
        (
            json!({ "jwks": { "keys": [{ "kty": "RSA", "kid": "old", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB" }] } }),
            "no usable keys",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": SECRET }], "realm": "a\"b" }),
            "realm:",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": SECRET }], "forward_claims": { "sub": "x user" } }),
            "forward_claims.sub: \"x user\" is not a valid header name",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": SECRET }], "forward_claims": { "sub": "Content-Length" } }),
            "forward_claims.sub: content-length is a framing or hop-by-hop header: the proxy sets it",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": SECRET }], "forward_claims": { "sub": "x-u", "uid": "X-U" } }),
            "already set",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": SECRET }], "forward_claims": { "sub": "authorization" } }),
            "cannot forward into the authorization header",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": SECRET }], "issuer": "" }),
            "issuer: must not be empty",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": SECRET }], "leeway_s": 100000 }),
            "leeway_s: at most",
        ),
        (
            json!({ "keys": [{ "alg": "HS256", "secret": SECRET }], "audience": "api" }),
            "unknown field `audience`",
        ),
    ];
    for (cfg, want) in cases {
        match Harness::<JwtAuth>::new(cfg.clone()) {
            Ok(_) => panic!("accepted {cfg}"),
            Err(e) => assert!(
                e.message.contains(want),
                "{cfg}\n  got: {}\n want: {want}",
                e.message
            ),
        }
    }
}

#[test]
fn pkcs1_rsa_pem_is_accepted_too() -> TestResult {
    use rsa::pkcs1::EncodeRsaPublicKey;
    let rs = Signer::rs();
    let Signer::Rs(key) = &rs else { unreachable!() };
    let pem = key.to_public_key().to_pkcs1_pem(Default::default())?;
    assert!(pem.starts_with("-----BEGIN RSA PUBLIC KEY-----"));
    let mut h = Harness::<JwtAuth>::new(json!({
        "keys": [{ "alg": "RS256", "public_key_pem": pem }],
    }))?;
    let mut req = bearer(&token(&rs, None, &claims()));
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    Ok(())
}

/// The README's quickstart: its config is accepted and its demo token passes.
#[test]
fn the_readme_quickstart_works() -> TestResult {
    let readme = include_str!("../README.md");
    let yaml = weir_filter::testing::first_yaml_block(readme)?;
    let doc: Value = weir_config::yaml_value(yaml)?;
    let mut h = Harness::<JwtAuth>::new(doc["filters"][0]["config"].clone())?;
    let token = readme
        .lines()
        .find_map(|l| l.strip_prefix("TOKEN="))
        .ok_or("no TOKEN= line in the README")?;
    let mut req = bearer(token);
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(req.header_value("x-user-id"), Some("alice"));
    assert_eq!(req.header_value("x-user-email"), Some("alice@example.com"));
    h.done(&req);
    assert_eq!(
        refused(&mut h, TestRequest::get("/orders"))?,
        "a bearer token is required"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// OpenID Connect discovery

/// A provider stand-in behind the emulator's callouts: its discovery document names
/// `jwks_uri` on another host (only the path is used), and its JWKS is whatever `jwks` holds
/// at the time (so a test can rotate keys). Returns the harness and the JWKS cell.
fn discovering(
    jwks: Value,
    extra: Value,
) -> (Harness<JwtAuth>, std::rc::Rc<std::cell::RefCell<Value>>) {
    use weir_filter::callout::CalloutResponse;
    let mut config = json!({
        "discovery": { "server": "idp", "min_refresh_interval_s": 30 },
        "audiences": ["api"],
    });
    for (k, v) in extra.as_object().expect("object") {
        config[k] = v.clone();
    }
    let h = Harness::<JwtAuth>::new(config).expect("config accepted");
    let cell = std::rc::Rc::new(std::cell::RefCell::new(jwks));
    let served = cell.clone();
    h.on_callout(move |target, req| {
        assert_eq!((target, req.method.as_str()), ("idp", "GET"));
        let body = match req.path.as_str() {
            "/.well-known/openid-configuration" => json!({
                "issuer": "https://issuer.test",
                "jwks_uri": "https://keys.issuer.test/oauth/jwks.json?v=2",
            }),
            "/oauth/jwks.json?v=2" => served.borrow().clone(),
            other => panic!("unexpected path {other}"),
        };
        Ok(CalloutResponse::new(200).with_body(body.to_string().into_bytes()))
    });
    (h, cell)
}

fn jwks_of(keys: &[(&Signer, &str)]) -> Value {
    json!({ "keys": keys.iter().map(|(s, kid)| s.jwk(kid)).collect::<Vec<_>>() })
}

#[test]
fn discovery_fetches_the_issuers_keys_once_and_checks_its_issuer() -> TestResult {
    let rs = Signer::rs();
    let (mut h, _) = discovering(jwks_of(&[(&rs, "k1")]), json!({}));
    for _ in 0..3 {
        let mut req = bearer(&token(&rs, Some("k1"), &claims()));
        assert_eq!(h.request_headers(&mut req), Action::Continue);
        h.done(&req);
    }
    assert_eq!(h.callouts().len(), 2, "the document and the JWKS, once");
    // The discovered issuer is required when the config names none.
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    let mut req = bearer(&token(&rs, Some("k1"), &c));
    assert!(matches!(h.request_headers(&mut req), Action::Respond(_)));
    Ok(())
}

#[test]
fn discovery_follows_a_key_rotation_but_rate_limits_unknown_kids() -> TestResult {
    let (old, new) = (Signer::es(1), Signer::es(2));
    let (mut h, jwks) = discovering(jwks_of(&[(&old, "old")]), json!({}));
    let mut req = bearer(&token(&old, Some("old"), &claims()));
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    h.done(&req);
    // The provider rotates; a token with the new kid triggers a fetch once the interval allows.
    *jwks.borrow_mut() = jwks_of(&[(&new, "new")]);
    h.advance(Duration::from_secs(31));
    let mut req = bearer(&token(&new, Some("new"), &claims()));
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    h.done(&req);
    assert_eq!(h.callouts().len(), 4);
    // Made-up kids: at most one fetch per min_refresh_interval_s, however many arrive.
    for i in 0..50 {
        let mut req = bearer(&token(&new, Some(&format!("bogus-{i}")), &claims()));
        assert!(matches!(h.request_headers(&mut req), Action::Respond(_)));
        h.done(&req);
    }
    assert_eq!(h.callouts().len(), 4, "within 30 s of the last fetch: none");
    h.advance(Duration::from_secs(31));
    let mut req = bearer(&token(&new, Some("bogus-x"), &claims()));
    assert!(matches!(h.request_headers(&mut req), Action::Respond(_)));
    assert_eq!(h.callouts().len(), 6, "one more fetch after the interval");
    Ok(())
}

#[test]
fn a_failed_discovery_keeps_the_keys_it_had_and_never_admits_without_keys() -> TestResult {
    let rs = Signer::rs();
    // Valid for a day: the test moves the clock past refresh_s.
    let mut long = claims();
    long["exp"] = json!(NOW + 86_400);
    let (mut h, jwks) = discovering(json!({ "keys": "not a list" }), json!({}));
    let mut req = bearer(&token(&rs, Some("k1"), &long));
    assert!(
        matches!(h.request_headers(&mut req), Action::Respond(_)),
        "no keys: refused"
    );
    h.done(&req);
    *jwks.borrow_mut() = jwks_of(&[(&rs, "k1")]);
    h.advance(Duration::from_secs(31));
    let mut req = bearer(&token(&rs, Some("k1"), &long));
    assert_eq!(
        h.request_headers(&mut req),
        Action::Continue,
        "fetched on retry"
    );
    h.done(&req);
    // Past refresh_s the keys are fetched again; a broken JWKS then keeps the old keys.
    *jwks.borrow_mut() = json!({ "keys": [] });
    h.advance(Duration::from_secs(3601));
    let mut req = bearer(&token(&rs, Some("k1"), &long));
    assert_eq!(h.request_headers(&mut req), Action::Continue);
    assert_eq!(
        h.counter("jwt_auth_discovery_fetches_total", &[("result", "failed")]),
        2
    );
    Ok(())
}

#[test]
fn discovery_config_errors_name_the_field() {
    for (discovery, want) in [
        (json!({ "server": "" }), "discovery.server"),
        (
            json!({ "server": "idp", "path": "well-known" }),
            "discovery.path",
        ),
        (
            json!({ "server": "idp", "refresh_s": 0 }),
            "discovery.refresh_s",
        ),
        (
            json!({ "server": "idp", "refresh_s": 10, "min_refresh_interval_s": 60 }),
            "discovery.min_refresh_interval_s",
        ),
        (
            json!({ "server": "idp", "timeout_ms": 0 }),
            "discovery.timeout_ms",
        ),
        (json!({ "server": "idp", "jwks": 1 }), "unknown field"),
    ] {
        let e = Harness::<JwtAuth>::new(json!({ "discovery": discovery }))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains(want)),
            "{want}: {e:?}"
        );
    }
}

/// The decision is on the request's trace span: the caller as `enduser.id` when accepted, an
/// `auth.refused` event with the error and reason (never the token) when not.
#[test]
fn the_decision_is_noted_on_the_trace_span() -> TestResult {
    let hs = Signer::hs();
    let mut h = Harness::<JwtAuth>::new(config(json!([hs.key_config(None)])))?;
    let mut ok = bearer(&token(&hs, None, &claims()));
    assert_eq!(h.request_headers(&mut ok), Action::Continue);
    let span = ok.span().ok_or("sampled")?;
    assert_eq!(span.attribute("enduser.id"), Some("alice"));
    assert!(span.events.is_empty());

    let mut expired = claims();
    expired["exp"] = json!(NOW - 3600);
    let bad_token = token(&hs, None, &expired);
    for (mut req, error) in [
        (TestRequest::get("/"), "missing_token"),
        (bearer(&bad_token), "invalid_token"),
    ] {
        assert!(!h.request_headers(&mut req).is_continue());
        let span = req.span().ok_or("sampled")?;
        assert_eq!(span.attribute("enduser.id"), None);
        let refused: Vec<_> = span.events_named("auth.refused").collect();
        assert_eq!(refused.len(), 1, "{error}");
        assert_eq!(refused[0].attribute("error"), Some(error));
        assert!(
            refused[0]
                .attribute("reason")
                .is_some_and(|r| !r.is_empty())
        );
        assert!(
            refused[0]
                .attributes
                .iter()
                .all(|(_, v)| !v.contains(&bad_token)),
            "the token is never on a span"
        );
    }
    Ok(())
}

/// OpenSSL-made test keys (PKCS#8 to sign, SubjectPublicKeyInfo to verify), shared with
/// weir-crypto's tests; they protect nothing.
const KEYS: &str = "../../host/crypto/tests/keys";
const RSA_PK8: &[u8] = include_bytes!("../../../host/crypto/tests/keys/rsa2048.pk8.der");
const RSA_SPKI: &[u8] = include_bytes!("../../../host/crypto/tests/keys/rsa2048.spki.der");
const P384_PK8: &[u8] = include_bytes!("../../../host/crypto/tests/keys/p384.pk8.der");
const P384_SPKI: &[u8] = include_bytes!("../../../host/crypto/tests/keys/p384.spki.der");
const ED_PK8: &[u8] = include_bytes!("../../../host/crypto/tests/keys/ed25519.pk8.der");
const ED_SPKI: &[u8] = include_bytes!("../../../host/crypto/tests/keys/ed25519.spki.der");
const SECRET_64: &str = "test-secret-0123456789abcdef-0123456789abcdef-0123456789abcdef-xy";

/// A JWS signature made by ring (an implementation other than the one that verifies).
fn ring_sign(alg: &str, input: &[u8]) -> Vec<u8> {
    use ring::signature as rs;
    let rng = ring::rand::SystemRandom::new();
    let rsa = |enc: &'static dyn rs::RsaEncoding| {
        let pair = rs::RsaKeyPair::from_pkcs8(RSA_PK8).expect(KEYS);
        let mut sig = vec![0; pair.public().modulus_len()];
        pair.sign(enc, &rng, input, &mut sig).expect("rsa sign");
        sig
    };
    let hmac = |a| ring::hmac::sign(&ring::hmac::Key::new(a, SECRET_64.as_bytes()), input);
    match alg {
        "HS384" => hmac(ring::hmac::HMAC_SHA384).as_ref().to_vec(),
        "HS512" => hmac(ring::hmac::HMAC_SHA512).as_ref().to_vec(),
        "RS384" => rsa(&rs::RSA_PKCS1_SHA384),
        "RS512" => rsa(&rs::RSA_PKCS1_SHA512),
        "PS256" => rsa(&rs::RSA_PSS_SHA256),
        "PS384" => rsa(&rs::RSA_PSS_SHA384),
        "PS512" => rsa(&rs::RSA_PSS_SHA512),
        "ES384" => {
            rs::EcdsaKeyPair::from_pkcs8(&rs::ECDSA_P384_SHA384_FIXED_SIGNING, P384_PK8, &rng)
                .expect(KEYS)
                .sign(&rng, input)
                .expect("ecdsa sign")
                .as_ref()
                .to_vec()
        }
        "EdDSA" => rs::Ed25519KeyPair::from_pkcs8_maybe_unchecked(ED_PK8)
            .expect(KEYS)
            .sign(input)
            .as_ref()
            .to_vec(),
        other => unreachable!("{other}"),
    }
}

fn pem(der: &[u8]) -> String {
    use base64::engine::general_purpose::STANDARD;
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(der)
    )
}

fn ring_token(alg: &str, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(json!({ "alg": alg, "typ": "JWT" }).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = ring_sign(alg, input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

#[test]
fn every_jose_algorithm_verifies_and_refuses_forgeries() -> TestResult {
    let rsa_pub = {
        use rsa::pkcs8::DecodePublicKey;
        rsa::RsaPublicKey::from_public_key_der(RSA_SPKI)?
    };
    // The SPKI's subjectPublicKey is its tail: the point (P-384) or the key (Ed25519).
    let (xy, ed_x) = (
        &P384_SPKI[P384_SPKI.len() - 96..],
        &ED_SPKI[ED_SPKI.len() - 32..],
    );
    let keys: Vec<(&str, Value)> = vec![
        ("HS384", json!({ "alg": "HS384", "secret": SECRET_64 })),
        ("HS512", json!({ "alg": "HS512", "secret": SECRET_64 })),
        (
            "HS512",
            json!({ "kty": "oct", "alg": "HS512", "k": b64(SECRET_64.as_bytes()) }),
        ),
        (
            "RS384",
            json!({ "alg": "RS384", "public_key_pem": pem(RSA_SPKI) }),
        ),
        (
            "RS512",
            json!({ "alg": "RS512", "public_key_pem": pem(RSA_SPKI) }),
        ),
        (
            "PS256",
            json!({ "alg": "PS256", "public_key_pem": pem(RSA_SPKI) }),
        ),
        (
            "PS384",
            json!({ "alg": "PS384", "public_key_pem": pem(RSA_SPKI) }),
        ),
        (
            "PS512",
            json!({ "kty": "RSA", "alg": "PS512",
            "n": b64(&rsa_pub.n().to_bytes_be()), "e": b64(&rsa_pub.e().to_bytes_be()) }),
        ),
        (
            "ES384",
            json!({ "alg": "ES384", "public_key_pem": pem(P384_SPKI) }),
        ),
        (
            "ES384",
            json!({ "kty": "EC", "crv": "P-384", "x": b64(&xy[..48]), "y": b64(&xy[48..]) }),
        ),
        (
            "EdDSA",
            json!({ "alg": "EdDSA", "public_key_pem": pem(ED_SPKI) }),
        ),
        (
            "EdDSA",
            json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(ed_x) }),
        ),
    ];
    for (alg, key) in keys {
        let cfg = if key.get("kty").is_some() {
            let mut c = config(json!([]));
            c["jwks"] = json!({ "keys": [key] });
            c
        } else {
            config(json!([key]))
        };
        let mut h = Harness::<JwtAuth>::new(cfg)?;
        let good = ring_token(alg, &claims());
        let mut req = bearer(&good);
        assert_eq!(h.request_headers(&mut req), Action::Continue, "{alg}");
        assert_eq!(req.header_value("x-user-id"), Some("alice"), "{alg}");
        h.done(&req);
        // One bit of the signature, of the claims, or a neighbour's name for the algorithm.
        let (input, sig) = good.rsplit_once('.').ok_or("token")?;
        let mut bad = URL_SAFE_NO_PAD.decode(sig)?;
        bad[7] ^= 1;
        let flipped = format!("{input}.{}", b64(&bad));
        assert_eq!(
            refused(&mut h, bearer(&flipped))?,
            "invalid signature",
            "{alg}"
        );
        let mut other = claims();
        other["sub"] = json!("mallory");
        let mut forged_input = ring_token(alg, &other);
        forged_input.truncate(forged_input.rfind('.').ok_or("token")?);
        let spliced = format!("{forged_input}.{sig}");
        assert_eq!(
            refused(&mut h, bearer(&spliced))?,
            "invalid signature",
            "{alg}"
        );
        let renamed = match alg {
            "PS256" => "RS256",
            "RS384" => "PS384",
            "HS384" => "HS256",
            _ => continue,
        };
        let header = b64(json!({ "alg": renamed }).to_string().as_bytes());
        let (_, rest) = good.split_once('.').ok_or("token")?;
        assert_eq!(
            refused(&mut h, bearer(&format!("{header}.{rest}")))?,
            "no key for this algorithm",
            "{alg} as {renamed}"
        );
    }
    Ok(())
}
