//! End-to-end: the first-party auth filters — `jwt-auth`, `key-auth`, `basic-auth` — built
//! from source and loaded by the real proxy, between a real client and a real upstream. The
//! tests make their own keys (an RSA key, P-256 keys from rcgen), sign their own tokens and
//! hash their own credentials.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::*;
use anyhow::{Context, Result, anyhow};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey;
use rsa::pkcs8::EncodePublicKey;
use rsa::signature::SignatureEncoding;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Config

/// A config with one upstream cluster `backend`, these filters and these routes (YAML list
/// items, see [`filter`] and [`route`]).
fn config(up: &Upstream, filters: &[String], routes: &[String]) -> String {
    format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
clusters: [ {{ name: backend, endpoints: [ {{ address: \"{}\" }} ] }} ]\n\
filters:\n{}\
routes:\n{}",
        up.addr,
        filters.concat(),
        routes.concat()
    )
}

/// A filter named `name`, the component of crate `package` built from source, with this
/// config (JSON is YAML, so it goes in as is).
///
/// The phase budget is raised from its 5ms default: an RS256 or ES256 check takes about 1–2ms
/// of CPU in the component and PBKDF2 with 1000 iterations about 1ms, and on a 2-core machine
/// where several test proxies compile components at once, that wall time can stretch past 5ms.
/// These tests are about the filters' decisions; budgets have their own tests in e2e filters::.
fn filter(name: &str, package: &str, config: &Value) -> String {
    format!(
        "  - {{ name: {name}, module: \"{}\", config: {config}, limits: {{ time_per_phase: 100ms }} }}\n",
        filter_wasm(package).display()
    )
}

fn route(name: &str, prefix: &str, filters: &str) -> String {
    format!(
        "  - {{ name: {name}, match: {{ path_prefix: {prefix} }}, cluster: backend, filters: {filters} }}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Keys and tokens

const HS_SECRET: &str = "e2e-hs256-secret-at-least-32-bytes-long";
const ISSUER: &str = "https://id.weir.test";

/// Keys generated once per test process: RSA-2048 with the `rsa` crate, P-256 with rcgen.
struct Keys {
    rsa: rsa::RsaPrivateKey,
    es: p256::ecdsa::SigningKey,
    /// rcgen's SPKI PEM of `es`, as an operator would paste it into the config.
    es_pem: String,
    es2: p256::ecdsa::SigningKey,
}

fn keys() -> Result<&'static Keys> {
    static KEYS: OnceLock<Result<Keys, String>> = OnceLock::new();
    let made = KEYS.get_or_init(|| {
        let p256_pair = || -> Result<(p256::ecdsa::SigningKey, String), String> {
            let pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let key = p256::ecdsa::SigningKey::from_pkcs8_der(&pair.serialize_der())
                .map_err(|e| format!("rcgen's key is not P-256 PKCS#8: {e}"))?;
            Ok((key, pair.public_key_pem()))
        };
        let (es, es_pem) = p256_pair()?;
        let (es2, _) = p256_pair()?;
        let rsa =
            rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| e.to_string())?;
        Ok(Keys {
            rsa,
            es,
            es_pem,
            es2,
        })
    });
    made.as_ref().map_err(|e| anyhow!("test keys: {e}"))
}

enum Signer<'a> {
    Hs(&'a [u8]),
    Rs(&'a rsa::RsaPrivateKey),
    Es(&'a p256::ecdsa::SigningKey),
}

impl Signer<'_> {
    fn alg(&self) -> &'static str {
        match self {
            Signer::Hs(_) => "HS256",
            Signer::Rs(_) => "RS256",
            Signer::Es(_) => "ES256",
        }
    }

    fn sign(&self, input: &[u8]) -> Result<Vec<u8>> {
        Ok(match self {
            Signer::Hs(secret) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(secret)?;
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            }
            Signer::Rs(key) => rsa::pkcs1v15::SigningKey::<Sha256>::new((*key).clone())
                .sign(input)
                .to_vec(),
            Signer::Es(key) => {
                let sig: p256::ecdsa::Signature = key.sign(input);
                sig.to_bytes().to_vec()
            }
        })
    }
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS of `claims` with this header, signed by `signer`.
fn jws(header: &Value, claims: &Value, signer: &Signer) -> Result<String> {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = signer.sign(input.as_bytes())?;
    Ok(format!("{input}.{}", b64url(&sig)))
}

fn jwt(signer: &Signer, kid: Option<&str>, claims: &Value) -> Result<String> {
    let mut header = json!({ "alg": signer.alg(), "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    jws(&header, claims, signer)
}

fn now() -> Result<i64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64)
}

/// Valid claims for the tests' issuer and audience, with `patch` applied (null removes).
fn claims(patch: Value) -> Result<Value> {
    let now = now()?;
    let mut c = json!({
        "sub": "alice", "email": "alice@example.com", "iss": ISSUER, "aud": "orders",
        "iat": now, "exp": now + 300,
    });
    let map = c.as_object_mut().context("claims object")?;
    for (k, v) in patch.as_object().into_iter().flatten() {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    Ok(c)
}

fn rsa_public_pem(k: &Keys) -> Result<String> {
    Ok(k.rsa
        .to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)?)
}

fn jwt_config(k: &Keys) -> Result<Value> {
    Ok(json!({
        "keys": [
            { "alg": "HS256", "secret": HS_SECRET },
            { "alg": "RS256", "public_key_pem": rsa_public_pem(k)? },
            { "alg": "ES256", "public_key_pem": k.es_pem },
        ],
        "issuer": ISSUER,
        "audiences": ["orders", "billing"],
        "forward_claims": { "sub": "x-user-id", "email": "x-user-email" },
    }))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------------------------
// Assertions

/// Request headers of a test case.
type Headers<'a> = Vec<(&'a str, &'a str)>;

/// The values of a header the upstream saw, in order.
fn seen_values(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// A proxy-made 401: its challenge and its JSON body's `error` and `error_description`.
fn refusal(got: &Got) -> Result<(String, String, String)> {
    assert_eq!(got.status, 401, "{}", got.text());
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.upstream(), "", "a local response, not the upstream's");
    let body: Value = serde_json::from_slice(&got.body).context("401 body is JSON")?;
    let field = |f: &str| body[f].as_str().unwrap_or_default().to_owned();
    Ok((
        got.header("www-authenticate")
            .unwrap_or_default()
            .to_owned(),
        field("error"),
        field("error_description"),
    ))
}

fn invalid_token(realm: &str, description: &str) -> (String, String, String) {
    (
        format!(
            "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""
        ),
        "invalid_token".to_owned(),
        description.to_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// jwt-auth

#[tokio::test]
async fn jwt_auth_accepts_each_algorithm_and_forwards_claims() -> Result<()> {
    let k = keys()?;
    let up = Upstream::start("up").await;
    let routes = [
        route("api", "/api", "[jwt]"),
        route(
            "strip",
            "/strip",
            "[ { name: jwt, config: { strip_token: true } } ]",
        ),
    ];
    let weir = Weir::start(&config(
        &up,
        &[filter("jwt", "jwt-auth", &jwt_config(k)?)],
        &routes,
    ))?;

    let signers = [
        Signer::Hs(HS_SECRET.as_bytes()),
        Signer::Rs(&k.rsa),
        Signer::Es(&k.es),
    ];
    for signer in &signers {
        let user = format!("user-{}", signer.alg());
        let token = jwt(
            signer,
            None,
            &claims(json!({ "sub": user, "aud": ["other", "billing"] }))?,
        )?;
        let got = get_with(
            &weir.url("public", "/api/orders"),
            &[("authorization", &bearer(&token)), ("x-user-id", "spoofed")],
        )
        .await?;
        assert_eq!(
            (got.status.as_u16(), got.upstream()),
            (200, "up"),
            "{}: {}",
            signer.alg(),
            got.text()
        );
        let seen = up.last();
        assert_eq!(
            seen_values(&seen, "x-user-id"),
            [user],
            "the claim replaces the client's header"
        );
        assert_eq!(seen_values(&seen, "x-user-email"), ["alice@example.com"]);
        assert_eq!(
            seen_values(&seen, "authorization"),
            [bearer(&token)],
            "kept by default"
        );
    }

    // A route override strips the token before it goes upstream.
    let token = jwt(&signers[2], None, &claims(json!({}))?)?;
    let got = get_with(
        &weir.url("public", "/strip"),
        &[("authorization", &bearer(&token))],
    )
    .await?;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = up.last();
    assert!(seen.headers.get("authorization").is_none(), "{seen:?}");
    assert_eq!(seen_values(&seen, "x-user-id"), ["alice"]);

    let (_, metrics) = weir.admin_get("/metrics").await?;
    assert!(
        metrics
            .contains("weir_filter_jwt_auth_decisions_total{filter=\"jwt\",result=\"allowed\"} 4"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("weir_filter_failures_total{filter=\"jwt\""),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn jwt_auth_refuses_bad_tokens_before_the_upstream() -> Result<()> {
    let k = keys()?;
    let up = Upstream::start("up").await;
    let mut cfg = jwt_config(k)?;
    cfg["realm"] = json!("orders");
    let weir = Weir::start(&config(
        &up,
        &[filter("jwt", "jwt-auth", &cfg)],
        &[route("api", "/", "[jwt]")],
    ))?;
    let now = now()?;
    let (hs, es) = (Signer::Hs(HS_SECRET.as_bytes()), Signer::Es(&k.es));

    let good = jwt(&es, None, &claims(json!({}))?)?;
    let (signed, sig) = good.rsplit_once('.').context("three parts")?;
    let mut sig = URL_SAFE_NO_PAD.decode(sig)?;
    sig[0] ^= 0x80;
    let flipped = format!("{signed}.{}", b64url(&sig));
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims(json!({}))?.to_string().as_bytes())
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            jwt(&hs, None, &claims(json!({ "exp": now - 120 }))?)?,
            "token expired",
        ),
        (
            "not yet valid",
            jwt(&es, None, &claims(json!({ "nbf": now + 120 }))?)?,
            "token not yet valid",
        ),
        (
            "wrong issuer",
            jwt(&hs, None, &claims(json!({ "iss": "https://evil.test" }))?)?,
            "invalid issuer",
        ),
        (
            "wrong audience",
            jwt(&es, None, &claims(json!({ "aud": ["payroll"] }))?)?,
            "invalid audience",
        ),
        (
            "other secret",
            jwt(
                &Signer::Hs(b"another-secret-that-is-32-bytes-long!!"),
                None,
                &claims(json!({}))?,
            )?,
            "invalid signature",
        ),
        (
            "other ec key",
            jwt(&Signer::Es(&k.es2), None, &claims(json!({}))?)?,
            "invalid signature",
        ),
        ("flipped signature", flipped, "invalid signature"),
        ("alg none", alg_none, "unsupported algorithm"),
        ("not a jwt", "not-a-jwt".to_owned(), "malformed token"),
        ("four parts", format!("{good}.AAAA"), "malformed token"),
        ("bad base64", good.replacen('.', "*.", 1), "malformed token"),
    ];
    for (what, token, description) in cases {
        let got = get_with(
            &weir.url("public", "/orders"),
            &[("authorization", &bearer(&token))],
        )
        .await?;
        assert_eq!(
            refusal(&got)?,
            invalid_token("orders", description),
            "{what}"
        );
    }
    for header in [None, Some("Basic YWxpY2U6cHc="), Some("Bearer")] {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", *h)).collect();
        let got = get_with(&weir.url("public", "/orders"), &headers).await?;
        let want = (
            "Bearer realm=\"orders\"".to_owned(),
            "missing_token".to_owned(),
            "a bearer token is required".to_owned(),
        );
        assert_eq!(refusal(&got)?, want, "{header:?}");
    }
    assert_eq!(up.count(), 0, "no refused request reached the upstream");

    // The untouched token passes: the refusals were about the tokens, not the setup.
    let got = get_with(
        &weir.url("public", "/orders"),
        &[("authorization", &bearer(&good))],
    )
    .await?;
    assert_eq!(got.status, 200, "{}", got.text());
    let (_, metrics) = weir.admin_get("/metrics").await?;
    assert!(
        metrics
            .contains("weir_filter_jwt_auth_decisions_total{filter=\"jwt\",result=\"denied\"} 14"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn jwt_auth_picks_jwks_keys_by_kid() -> Result<()> {
    let k = keys()?;
    let up = Upstream::start("up").await;
    let ec_jwk = |key: &p256::ecdsa::SigningKey, kid: &str| -> Result<Value> {
        let point = key.verifying_key().to_encoded_point(false);
        Ok(json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": b64url(point.x().context("x")?), "y": b64url(point.y().context("y")?),
        }))
    };
    let cfg = json!({
        "jwks": { "keys": [
            {
                "kty": "RSA", "kid": "rsa-2024", "alg": "RS256", "use": "sig",
                "n": b64url(&k.rsa.n().to_bytes_be()), "e": b64url(&k.rsa.e().to_bytes_be()),
            },
            ec_jwk(&k.es, "es-a")?,
            ec_jwk(&k.es2, "es-b")?,
            // A curve the filter does not implement: skipped with a warning.
            { "kty": "OKP", "crv": "X448", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
        ]},
        "issuer": ISSUER,
        "audiences": ["orders"],
        "forward_claims": { "sub": "x-user-id" },
    });
    let weir = Weir::start(&config(
        &up,
        &[filter("jwt", "jwt-auth", &cfg)],
        &[route("api", "/", "[jwt]")],
    ))?;
    assert!(
        weir.stderr_text()
            .contains("OKP curve \"X448\" is not supported"),
        "{}",
        weir.stderr_text()
    );

    let (rs, es, es2) = (Signer::Rs(&k.rsa), Signer::Es(&k.es), Signer::Es(&k.es2));
    for (signer, kid) in [(&rs, "rsa-2024"), (&es, "es-a"), (&es2, "es-b")] {
        let token = jwt(signer, Some(kid), &claims(json!({ "sub": kid }))?)?;
        let got = get_with(
            &weir.url("public", "/"),
            &[("authorization", &bearer(&token))],
        )
        .await?;
        assert_eq!(got.status, 200, "kid {kid}: {}", got.text());
        assert_eq!(seen_values(&up.last(), "x-user-id"), [kid]);
    }
    let refused = [
        // es2's signature under es-a's kid: the kid picks the key, which does not verify it.
        (
            jwt(&es2, Some("es-a"), &claims(json!({}))?)?,
            "invalid signature",
        ),
        (
            jwt(&es, Some("es-z"), &claims(json!({}))?)?,
            "unknown key id",
        ),
        // HS256 naming the RSA key (the key-confusion attack) never reaches a verifier.
        (
            jwt(
                &Signer::Hs(rsa_public_pem(k)?.as_bytes()),
                Some("rsa-2024"),
                &claims(json!({}))?,
            )?,
            "algorithm does not match the key",
        ),
    ];
    let before = up.count();
    for (token, description) in refused {
        let got = get_with(
            &weir.url("public", "/"),
            &[("authorization", &bearer(&token))],
        )
        .await?;
        assert_eq!(refusal(&got)?, invalid_token("weir", description));
    }
    assert_eq!(up.count(), before);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// key-auth

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const ALICE_KEY: &str = "alice-e2e-api-key";
const BOB_DEV_KEY: &str = "bob-dev-key";

fn key_config() -> Value {
    json!({
        "keys": [
            { "consumer": "alice", "sha256": sha256_hex(ALICE_KEY) },
            { "consumer": "bob", "key": BOB_DEV_KEY },
        ],
        "query": "api_key",
    })
}

#[tokio::test]
async fn key_auth_admits_known_keys_from_header_or_query_and_strips_them() -> Result<()> {
    let up = Upstream::start("up").await;
    let weir = Weir::start(&config(
        &up,
        &[filter("keys", "key-auth", &key_config())],
        &[route("api", "/", "[keys]")],
    ))?;
    assert!(
        weir.stderr_text().contains("plain-text key"),
        "the dev key is flagged:\n{}",
        weir.stderr_text()
    );

    let got = get_with(
        &weir.url("public", "/items?page=2"),
        &[("x-api-key", ALICE_KEY), ("x-consumer", "spoofed")],
    )
    .await?;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = up.last();
    assert_eq!(seen_values(&seen, "x-consumer"), ["alice"]);
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "the key does not go upstream"
    );
    assert_eq!(seen.path, "/items?page=2");

    let got = get(&weir.url(
        "public",
        &format!("/items?page=2&api_key={BOB_DEV_KEY}&sort=asc"),
    ))
    .await?;
    assert_eq!(got.status, 200, "{}", got.text());
    let seen = up.last();
    assert_eq!(seen_values(&seen, "x-consumer"), ["bob"]);
    assert_eq!(
        seen.path, "/items?page=2&sort=asc",
        "the key is cut out of the query"
    );

    let challenge = "ApiKey realm=\"weir\"".to_owned();
    let stored_hash = sha256_hex(ALICE_KEY);
    let cases: Vec<(String, Headers, &str)> = vec![
        ("/items".into(), vec![], "missing_api_key"),
        ("/items?api_key=".into(), vec![], "missing_api_key"),
        (
            "/items".into(),
            vec![("x-api-key", "wrong")],
            "invalid_api_key",
        ),
        ("/items?api_key=wrong".into(), vec![], "invalid_api_key"),
        // The stored hash is not a key.
        (
            "/items".into(),
            vec![("x-api-key", &stored_hash)],
            "invalid_api_key",
        ),
    ];
    let before = up.count();
    for (path, headers, error) in cases {
        let got = get_with(&weir.url("public", &path), &headers).await?;
        let (got_challenge, got_error, _) = refusal(&got)?;
        assert_eq!(
            (got_challenge, got_error.as_str()),
            (challenge.clone(), error),
            "{path} {headers:?}"
        );
    }
    assert_eq!(
        up.count(),
        before,
        "no refused request reached the upstream"
    );
    let (_, metrics) = weir.admin_get("/metrics").await?;
    for line in [
        "weir_filter_key_auth_decisions_total{filter=\"keys\",result=\"allowed\"} 2",
        "weir_filter_key_auth_decisions_total{filter=\"keys\",result=\"denied\"} 5",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line}\n{metrics}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// basic-auth

/// alice / wonderland: PBKDF2-HMAC-SHA256, 1000 iterations (made with Python's hashlib).
const ALICE_PBKDF2: &str =
    "pbkdf2-sha256:1000:d2Vpci1kZW1vLXNhbHQtMQ==:7hxb7tckYtFQzyv6sb08xI6S/IV9ucjsR92AL7rJVgA=";

fn basic(user_pass: &str) -> String {
    format!("Basic {}", STANDARD.encode(user_pass.as_bytes()))
}

#[tokio::test]
async fn basic_auth_admits_good_credentials_and_challenges_the_rest() -> Result<()> {
    let up = Upstream::start("up").await;
    let bob_hash = format!("sha256:pepper:{}", sha256_hex("pepperlooking-glass"));
    let cfg = json!({
        "users": [
            { "username": "alice", "password_hash": ALICE_PBKDF2 },
            { "username": "bob", "password_hash": bob_hash },
        ],
    });
    let weir = Weir::start(&config(
        &up,
        &[filter("basic", "basic-auth", &cfg)],
        &[route("api", "/", "[basic]")],
    ))?;

    // alice's first request pays for PBKDF2; later ones hit the instance's cache.
    for (creds, user) in [
        ("alice:wonderland", "alice"),
        ("alice:wonderland", "alice"),
        ("bob:looking-glass", "bob"),
        ("alice:wonderland", "alice"),
    ] {
        let got = get_with(
            &weir.url("public", "/"),
            &[("authorization", &basic(creds)), ("x-user", "spoofed")],
        )
        .await?;
        assert_eq!(got.status, 200, "{creds}: {}", got.text());
        let seen = up.last();
        assert_eq!(seen_values(&seen, "x-user"), [user]);
        assert!(
            seen.headers.get("authorization").is_none(),
            "stripped by default"
        );
    }

    let challenge = "Basic realm=\"weir\", charset=\"UTF-8\"".to_owned();
    let not_utf8 = format!("Basic {}", STANDARD.encode([0xff, b':', 0xfe]));
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing_credentials"),
        (Some("Bearer abc".into()), "missing_credentials"),
        (Some(basic("alice:wonderlant")), "invalid_credentials"),
        (Some(basic("bob:wonderland")), "invalid_credentials"),
        (Some(basic("mallory:wonderland")), "invalid_credentials"),
        (Some(basic("alice")), "invalid_credentials"),
        (Some("Basic !!!".into()), "invalid_credentials"),
        (Some(not_utf8), "invalid_credentials"),
    ];
    let before = up.count();
    for (auth, error) in &cases {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let got = get_with(&weir.url("public", "/"), &headers).await?;
        let (got_challenge, got_error, _) = refusal(&got)?;
        assert_eq!(
            (got_challenge, got_error.as_str()),
            (challenge.clone(), *error),
            "{auth:?}"
        );
    }
    assert_eq!(
        up.count(),
        before,
        "no refused request reached the upstream"
    );

    let (_, metrics) = weir.admin_get("/metrics").await?;
    for line in [
        "weir_filter_basic_auth_decisions_total{filter=\"basic\",result=\"allowed\"} 4",
        "weir_filter_basic_auth_decisions_total{filter=\"basic\",result=\"denied\"} 8",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line}\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("weir_filter_failures_total{filter=\"basic\""),
        "no budget breach:\n{metrics}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Chains and config errors

#[tokio::test]
async fn chained_auth_filters_run_in_route_order() -> Result<()> {
    let k = keys()?;
    let up = Upstream::start("up").await;
    let filters = [
        filter("jwt", "jwt-auth", &jwt_config(k)?),
        filter("keys", "key-auth", &key_config()),
    ];
    let routes = [
        route("chain", "/chain", "[jwt, keys]"),
        route("reverse", "/reverse", "[keys, jwt]"),
    ];
    let weir = Weir::start(&config(&up, &filters, &routes))?;
    let token = bearer(&jwt(&Signer::Es(&k.es), None, &claims(json!({}))?)?);
    let bearer_challenge = "Bearer realm=\"weir\"";
    let key_challenge = "ApiKey realm=\"weir\"";

    let cases: Vec<(&str, Headers, &str)> = vec![
        ("/chain", vec![], bearer_challenge),
        ("/chain", vec![("x-api-key", ALICE_KEY)], bearer_challenge),
        ("/chain", vec![("authorization", &token)], key_challenge),
        ("/reverse", vec![], key_challenge),
        ("/reverse", vec![("x-api-key", ALICE_KEY)], bearer_challenge),
    ];
    for (path, headers, challenge) in cases {
        let got = get_with(&weir.url("public", path), &headers).await?;
        assert_eq!(refusal(&got)?.0, challenge, "{path} {headers:?}");
    }
    assert_eq!(up.count(), 0);

    for path in ["/chain", "/reverse"] {
        let got = get_with(
            &weir.url("public", path),
            &[("authorization", &token), ("x-api-key", ALICE_KEY)],
        )
        .await?;
        assert_eq!(got.status, 200, "{path}: {}", got.text());
        let seen = up.last();
        assert_eq!(seen_values(&seen, "x-user-id"), ["alice"], "{path}");
        assert_eq!(seen_values(&seen, "x-consumer"), ["alice"], "{path}");
        assert!(seen.headers.get("x-api-key").is_none());
        assert_eq!(seen_values(&seen, "authorization"), [token.as_str()]);
    }
    Ok(())
}

#[tokio::test]
async fn bad_filter_configs_are_errors_at_their_route() -> Result<()> {
    let up = Upstream::start("up").await;
    let cases = [
        (
            filter(
                "auth",
                "jwt-auth",
                &json!({ "keys": [{ "alg": "HS256", "secret": "short" }] }),
            ),
            "filter \"auth\" rejected its config: keys[0].secret: an HS256 secret must be at least 32 bytes",
        ),
        (
            filter(
                "auth",
                "jwt-auth",
                &json!({ "keys": [{ "alg": "none", "secret": HS_SECRET }] }),
            ),
            "filter \"auth\" rejected its config: keys[0].alg: \"none\" is never accepted",
        ),
        (
            filter(
                "auth",
                "jwt-auth",
                &json!({ "keys": [{ "alg": "ES512", "public_key_pem": "x" }] }),
            ),
            "filter \"auth\" rejected its config: keys[0].alg: unknown algorithm \"ES512\"",
        ),
        (
            filter(
                "auth",
                "key-auth",
                &json!({ "keys": [{ "consumer": "a", "sha256": "abc" }] }),
            ),
            "filter \"auth\" rejected its config: keys[0].sha256: expected 64 hex digits",
        ),
        (
            filter(
                "auth",
                "basic-auth",
                &json!({ "users": [{ "username": "a", "password_hash": "md5:x" }] }),
            ),
            "filter \"auth\" rejected its config: users[0].password_hash: unknown format",
        ),
    ];
    for (filters, want) in cases {
        let dir = TempDir::new();
        let text = config(&up, &[filters], &[route("r", "/", "[auth]")])
            .replace("{dir}", &dir.0.display().to_string());
        let file = dir.write(
            "weir.yaml",
            &format!("admin: {{ listen: 127.0.0.1:0 }}\n{text}"),
        );
        let out = tokio::process::Command::new(weir_bin())
            .arg("validate")
            .arg(&file)
            .output()
            .await?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("weir.yaml:8: routes[0].filters[0]: {want}")),
            "want {want}\n got {err}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// oauth2-introspect

/// An RFC 7662 authorization server stand-in: `POST /introspect` with HTTP Basic client
/// authentication and a form-encoded `token`; `good` is active (scopes `orders:read`),
/// `reader-only` lacks `orders:write`, anything else is inactive; `x-fail: 1` on a request's
/// token makes the server answer 503 (an outage).
async fn authorization_server() -> Upstream {
    use http_body_util::BodyExt;
    Upstream::with("as", |req, seen| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let form = String::from_utf8_lossy(&body).into_owned();
        let expect_auth = format!("Basic {}", STANDARD.encode("weir:s3cret"));
        let authorized = seen
            .headers
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == expect_auth.as_bytes());
        let token = form
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .unwrap_or("");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (status, answer) = match (authorized, seen.path.as_str(), token) {
            (false, _, _) => (401, json!({ "error": "invalid_client" })),
            (_, p, _) if p != "/introspect" => (404, json!({})),
            (_, _, "outage") => (503, json!({})),
            (_, _, "good") => (
                200,
                json!({ "active": true, "sub": "alice", "client_id": "shop", "scope": "orders:read orders:write", "exp": now + 300 }),
            ),
            (_, _, "reader-only") => (
                200,
                json!({ "active": true, "sub": "bob", "scope": "orders:read", "exp": now + 300 }),
            ),
            _ => (200, json!({ "active": false })),
        };
        let mut res = http::Response::new(full(answer.to_string()));
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        res
    })
    .await
}

/// `oauth2-introspect` against a real HTTP authorization server through the callout API:
/// active tokens pass with their claims (asked once, then from the shared cache), inactive and
/// missing tokens are 401, missing scopes 403; a server outage follows the filter's `on_error`
/// (503 on a fail-closed route, through on a fail-open one), and nothing reaches the upstream
/// unless admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_introspect_admits_active_tokens_and_follows_on_error_when_the_server_fails()
-> Result<()> {
    let up = Upstream::start("u").await;
    let auth = authorization_server().await;
    let module = filter_wasm("oauth2-introspect");
    let yaml = format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
clusters:\n\
  - {{ name: backend, endpoints: [ {{ address: \"{up}\" }} ] }}\n\
  - {{ name: auth, endpoints: [ {{ address: \"{auth}\" }} ] }}\n\
filters:\n\
  - {{ name: strict, module: \"{m}\", grants: {{ callouts: [ auth ], kv: [ oauth2-introspect ] }}, limits: {{ time_per_phase: 100ms }}, config: {{ server: auth, path: /introspect, client_id: weir, client_secret: s3cret, required_scopes: [ \"orders:write\" ], forward_claims: {{ sub: x-user, client_id: x-client-id }} }} }}\n\
  - {{ name: lenient, module: \"{m}\", on_error: fail-open, grants: {{ callouts: [ auth ], kv: [ oauth2-introspect ] }}, limits: {{ time_per_phase: 100ms }}, config: {{ server: auth, path: /introspect, client_id: weir, client_secret: s3cret }} }}\n\
routes:\n\
  - {{ name: orders, match: {{ path_prefix: /orders }}, cluster: backend, filters: [ strict ] }}\n\
  - {{ name: open, match: {{ path_prefix: /open }}, cluster: backend, filters: [ lenient ] }}\n",
        up = up.addr,
        auth = auth.addr,
        m = module.display()
    );
    let weir = Weir::start(&yaml)?;
    let orders = weir.url("public", "/orders");

    for _ in 0..3 {
        let got = get_with(
            &orders,
            &[("authorization", "Bearer good"), ("x-user", "mallory")],
        )
        .await?;
        assert_eq!(got.status, 200, "{}", got.text());
        let seen = up.last();
        assert_eq!(seen_values(&seen, "x-user"), ["alice"]);
        assert_eq!(seen_values(&seen, "x-client-id"), ["shop"]);
    }
    assert_eq!(auth.count(), 1, "asked once; then answered from the cache");
    assert_eq!(up.count(), 3);

    let got = get(&orders).await?;
    let (challenge, error, _) = refusal(&got)?;
    assert_eq!(
        (challenge.as_str(), error.as_str()),
        ("Bearer realm=\"weir\"", "missing_token")
    );
    let got = get_with(&orders, &[("authorization", "Bearer revoked")]).await?;
    assert_eq!(
        refusal(&got)?,
        invalid_token("weir", "the token is not active")
    );
    let got = get_with(&orders, &[("authorization", "Bearer reader-only")]).await?;
    assert_eq!(got.status, 403, "{}", got.text());
    assert!(
        got.header("www-authenticate")
            .is_some_and(|c| c.contains("error=\"insufficient_scope\"")
                && c.contains("scope=\"orders:write\"")),
        "{:?}",
        got.header("www-authenticate")
    );
    assert_eq!(up.count(), 3, "refused requests never reach the upstream");

    // The server fails: fail-closed answers 503, fail-open lets the request through.
    let got = get_with(&orders, &[("authorization", "Bearer outage")]).await?;
    assert_eq!(got.status, 503, "{}", got.text());
    assert_eq!(up.count(), 3);
    let got = get_with(
        &weir.url("public", "/open"),
        &[("authorization", "Bearer outage")],
    )
    .await?;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(up.count(), 4);
    // Not cached: the outage is asked about again.
    let before = auth.count();
    get_with(&orders, &[("authorization", "Bearer outage")]).await?;
    assert_eq!(auth.count(), before + 1);

    let (_, m) = weir.admin_get("/metrics").await?;
    for series in [
        "weir_filter_oauth2_introspect_cache_total{filter=\"strict\",result=\"hit\"} 2",
        "weir_filter_oauth2_introspect_decisions_total{filter=\"strict\",result=\"allowed\"} 3",
        "weir_filter_oauth2_introspect_server_errors_total{filter=\"strict\"} 2",
    ] {
        assert!(m.contains(series), "{series} not in\n{m}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// jwt-auth with OpenID Connect discovery

/// The JWK of a P-256 verification key.
fn es_jwk(key: &p256::ecdsa::SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_encoded_point(false);
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": b64url(point.x().expect("x")), "y": b64url(point.y().expect("y")),
    })
}

/// `jwt-auth` with `discovery`: the keys come from a real HTTP identity provider (discovery
/// document, then the JWKS its `jwks_uri` names); a key rotation at the provider is followed
/// on the first token with the new `kid`, old-key tokens are then refused, and a flood of
/// made-up `kid`s costs at most one fetch per `min_refresh_interval_s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_discovers_the_issuers_keys_and_follows_a_rotation() -> Result<()> {
    use std::sync::{Arc, Mutex};
    let k = keys()?;
    let jwks = Arc::new(Mutex::new(json!({ "keys": [es_jwk(&k.es, "k1")] })));
    let served = jwks.clone();
    let idp = Upstream::with("idp", move |_req, seen| {
        let served = served.clone();
        async move {
            let body = match seen.path.as_str() {
                "/.well-known/openid-configuration" => json!({
                    "issuer": ISSUER,
                    "jwks_uri": "https://keys.weir.test/oauth2/jwks",
                    "authorization_endpoint": "https://id.weir.test/authorize",
                }),
                "/oauth2/jwks" => served.lock().unwrap().clone(),
                _ => json!({}),
            };
            http::Response::new(full(body.to_string()))
        }
    })
    .await;
    let up = Upstream::start("u").await;
    let yaml = format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
clusters:\n\
  - {{ name: backend, endpoints: [ {{ address: \"{}\" }} ] }}\n\
  - {{ name: idp, endpoints: [ {{ address: \"{}\" }} ] }}\n\
filters:\n\
  - {{ name: jwt, module: \"{}\", grants: {{ callouts: [ idp ] }}, limits: {{ time_per_phase: 100ms }}, config: {{ discovery: {{ server: idp, min_refresh_interval_s: 1 }}, audiences: [ orders ], forward_claims: {{ sub: x-user-id }} }} }}\n\
routes: [ {{ name: orders, match: {{ path_prefix: / }}, cluster: backend, filters: [ jwt ] }} ]\n",
        up.addr,
        idp.addr,
        filter_wasm("jwt-auth").display()
    );
    let weir = Weir::start(&yaml)?;
    let url = weir.url("public", "/orders");
    let es1 = Signer::Es(&k.es);
    let es2 = Signer::Es(&k.es2);

    let got = get_with(
        &url,
        &[(
            "authorization",
            &bearer(&jwt(&es1, Some("k1"), &claims(json!({}))?)?),
        )],
    )
    .await?;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(seen_values(&up.last(), "x-user-id"), ["alice"]);
    assert_eq!(idp.count(), 2, "the document, then the JWKS");
    // The discovered issuer is enforced.
    let foreign = jwt(
        &es1,
        Some("k1"),
        &claims(json!({ "iss": "https://other.test" }))?,
    )?;
    let got = get_with(&url, &[("authorization", &bearer(&foreign))]).await?;
    assert_eq!(refusal(&got)?.2, "invalid issuer");

    // The provider rotates to k2. The first k2 token after min_refresh_interval_s fetches the
    // new keys.
    *jwks.lock().unwrap() = json!({ "keys": [es_jwk(&k.es2, "k2")] });
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let new = jwt(&es2, Some("k2"), &claims(json!({ "sub": "bob" }))?)?;
    let got = get_with(&url, &[("authorization", &bearer(&new))]).await?;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(seen_values(&up.last(), "x-user-id"), ["bob"]);
    assert_eq!(idp.count(), 4);
    let old = jwt(&es1, Some("k1"), &claims(json!({}))?)?;
    let got = get_with(&url, &[("authorization", &bearer(&old))]).await?;
    assert_eq!(got.status, 401, "a rotated-out key no longer verifies");

    // Made-up kids: no fetch storm.
    let before = idp.count();
    let flood = std::time::Instant::now();
    for i in 0..20 {
        let bogus = jwt(&es2, Some(&format!("bogus-{i}")), &claims(json!({}))?)?;
        let got = get_with(&url, &[("authorization", &bearer(&bogus))]).await?;
        assert_eq!(got.status, 401);
    }
    // At most one fetch (document and JWKS) per started second of the flood.
    let allowed = 2 * (flood.elapsed().as_secs() as usize + 1);
    assert!(
        idp.count() - before <= allowed,
        "{} callouts for 20 unknown kids",
        idp.count() - before
    );
    Ok(())
}
