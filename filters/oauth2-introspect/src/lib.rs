//! The `oauth2-introspect` filter: `Authorization: Bearer <token>` checked by asking the
//! authorization server (RFC 7662 token introspection) through a callout, with the answer kept
//! in the shared store for a while so most requests cost no round trip.
//!
//! * An active token passes when its `scope` holds every `required_scopes`, its `aud` one of
//!   `audiences` and its `iss` is `issuer` (each when configured); chosen members of the
//!   introspection answer go upstream as request headers (replacing what the client sent
//!   under those names).
//! * No token: 401 `missing_token`; an inactive, expired or foreign token: 401 `invalid_token`;
//!   missing scopes: 403 `insufficient_scope` (RFC 6750 challenges).
//! * Answers are cached in the KV namespace `cache.namespace` under the SHA-256 of the token
//!   (the token itself is never stored or logged): active ones for at most `cache.ttl_s`, and
//!   never past the token's `exp`; inactive ones for `cache.negative_ttl_s`. With
//!   `state.backend: redis` every gateway shares the cache.
//! * When the authorization server cannot answer (unreachable, timeout, not 200, not an RFC 7662
//!   JSON object) the phase fails, and the filter's `on_error` decides: `fail-closed` (default)
//!   answers 503, `fail-open` lets the request through unchecked.
//!
//! See the crate's README for the config reference.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use weir_filter::auth::{Bearer, ForwardHeaders, bearer_token, header_value};
use weir_filter::{
    Action, Filter, HostError, Phases, Request, callout, clock, export_filter, kv, log, metrics,
};

#[cfg(test)]
mod tests;

/// The filter's config (JSON from the proxy; YAML in the proxy's config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The authorization server: a cluster name, or `host:port`; it must be granted in the
    /// filter's `grants.callouts`.
    pub server: String,
    /// The introspection endpoint's path, e.g. `/oauth2/introspect`.
    pub path: String,
    /// The `Host` the authorization server is asked under. Default: the endpoint's address.
    #[serde(default)]
    pub host: Option<String>,
    /// The proxy's client id at the authorization server (HTTP Basic, RFC 6749 §2.3.1).
    /// Default: none (no client authentication is sent).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The client secret; `$text_file` keeps it out of the config. Default: none.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// How long one introspection may take, in milliseconds (also cut to the request's
    /// deadline). Default: 500.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Every one of these must be in the token's `scope`. Default: none.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// The token's `aud` must contain at least one of these. Default: empty, not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The token's `iss` must be this. Default: not checked.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Member of the introspection answer → request header set from it upstream, e.g.
    /// `{ sub: x-user, client_id: x-client-id, scope: x-scope }`. Default: none.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Whether `Authorization` is removed before the request goes upstream. Default: false.
    #[serde(default)]
    pub strip_token: bool,
    /// The realm in `WWW-Authenticate`. Default: `weir`.
    #[serde(default = "weir_filter::defaults::realm")]
    pub realm: String,
    /// The introspection cache.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// Where and how long introspection answers are kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// The KV namespace (grant it in `grants.kv`). Default: `oauth2-introspect`.
    pub namespace: String,
    /// Longest an active answer is kept, in seconds; never past the token's `exp`. 0 turns
    /// caching off. Default: 60.
    pub ttl_s: u64,
    /// How long an inactive answer is kept, in seconds (0: not kept). Default: 10.
    pub negative_ttl_s: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            namespace: "oauth2-introspect".to_owned(),
            ttl_s: 60,
            negative_ttl_s: 10,
        }
    }
}

fn default_timeout_ms() -> u64 {
    500
}

/// Longest token sent for introspection: anything longer is refused without a round trip.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Largest introspection answer accepted (the proxy caps callout bodies too).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest a cached answer may be kept, whatever the config says: a revoked token must not
/// pass for a day.
const MAX_TTL_S: u64 = 3600;

/// The configured filter.
pub struct Introspect {
    server: String,
    path: String,
    host: Option<String>,
    /// `Basic base64(id:secret)`, when client credentials are configured.
    authorization: Option<String>,
    timeout: Duration,
    required_scopes: Vec<String>,
    audiences: Vec<String>,
    issuer: Option<String>,
    forward: ForwardHeaders,
    strip_token: bool,
    bearer: Bearer,
    cache: CacheConfig,
}

/// What is kept of an introspection answer: whether it is active, and the members the
/// checks and `forward_claims` read (never the token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Answer {
    active: bool,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    members: Map<String, Value>,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Inactive,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingScope,
}

impl Refusal {
    fn description(self) -> &'static str {
        match self {
            Refusal::Inactive => "the token is not active",
            Refusal::Expired => "the token has expired",
            Refusal::NotYetValid => "the token is not valid yet",
            Refusal::WrongIssuer => "the token has another issuer",
            Refusal::WrongAudience => "the token is not meant for this audience",
            Refusal::MissingScope => "the token lacks a required scope",
        }
    }
}

impl Filter for Introspect {
    type Config = Config;
    type Context = ();
    const PHASES: Phases = Phases::REQUEST_HEADERS;

    fn new(config: Config) -> Result<Self, String> {
        if config.server.is_empty() {
            return Err("server: must name a cluster or host:port".to_owned());
        }
        if !config.path.starts_with('/') || config.path.chars().any(|c| c.is_ascii_control()) {
            return Err(format!(
                "path: {:?} must start with / and hold no control characters",
                config.path
            ));
        }
        if let Some(h) = &config.host
            && (h.is_empty() || h.chars().any(|c| c.is_ascii_control() || c == ' '))
        {
            return Err(format!("host: {h:?} is not a host"));
        }
        let authorization = match (&config.client_id, &config.client_secret) {
            (Some(id), Some(secret)) => {
                if id.is_empty() {
                    return Err("client_id: must not be empty".to_owned());
                }
                let pair = format!("{}:{}", form_encode(id), form_encode(secret));
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, None) => None,
            _ => return Err("client_id and client_secret: give both or neither".to_owned()),
        };
        if !(1..=60_000).contains(&config.timeout_ms) {
            return Err(format!(
                "timeout_ms: {} is not from 1 to 60000",
                config.timeout_ms
            ));
        }
        for (i, s) in config.required_scopes.iter().enumerate() {
            if s.is_empty() || s.contains(|c: char| c == ' ' || c.is_control()) {
                return Err(format!("required_scopes[{i}]: {s:?} is not a scope token"));
            }
        }
        let forward = ForwardHeaders::new("member", config.forward_claims)?;
        let bearer = Bearer::new(&config.realm)?;
        let cache = config.cache;
        if cache.ttl_s > MAX_TTL_S || cache.negative_ttl_s > MAX_TTL_S {
            return Err(format!(
                "cache: ttl_s and negative_ttl_s are at most {MAX_TTL_S} (a revoked token must not pass for longer)"
            ));
        }
        if cache.namespace.is_empty() {
            return Err("cache.namespace: must not be empty".to_owned());
        }
        Ok(Introspect {
            server: config.server,
            path: config.path,
            host: config.host,
            authorization,
            timeout: Duration::from_millis(config.timeout_ms),
            required_scopes: config.required_scopes,
            audiences: config.audiences,
            issuer: config.issuer,
            forward,
            strip_token: config.strip_token,
            bearer,
            cache,
        })
    }

    fn on_request_headers(&self, req: &mut Request, _: &mut ()) -> Action {
        let Some(token) = bearer_token(req.header("authorization").as_deref()) else {
            count("denied");
            return self.bearer.missing_token();
        };
        if token.len() > MAX_TOKEN_BYTES || !token.bytes().all(|b| b.is_ascii_graphic()) {
            count("denied");
            return self.refuse(Refusal::Inactive);
        }
        let key = hex::encode(Sha256::digest(token.as_bytes()));
        let answer = match self.cached(&key) {
            Some(a) => a,
            None => {
                let a = self.introspect(&token);
                self.keep(&key, &a);
                a
            }
        };
        if let Err(refusal) = self.check(&answer, clock::now_ms() / 1000) {
            count("denied");
            log::debug(&format!(
                "oauth2-introspect: token refused: {}",
                refusal.description()
            ));
            return self.refuse(refusal);
        }
        if let Err(e) = (self.forward).apply(req, |m| answer.members.get(m).map(header_value)) {
            return internal_error(&e);
        }
        if self.strip_token
            && let Err(e) = req.remove_header("authorization")
        {
            return internal_error(&e);
        }
        weir_filter::auth::identified(answer.members.get("sub"));
        count("allowed");
        Action::Continue
    }
}

export_filter!(Introspect);

impl Introspect {
    /// The cached answer for this token hash, if any (a store that fails is a miss).
    fn cached(&self, key: &str) -> Option<Answer> {
        if self.cache.ttl_s == 0 && self.cache.negative_ttl_s == 0 {
            return None;
        }
        let hit = match kv::get(&self.cache.namespace, key) {
            Ok(Some(entry)) => serde_json::from_slice::<Answer>(&entry.value).ok(),
            Ok(None) => None,
            Err(e) => {
                log::debug(&format!("oauth2-introspect: cache unavailable: {e}"));
                None
            }
        };
        cache_count(if hit.is_some() { "hit" } else { "miss" });
        hit
    }

    /// Keeps an answer: an active one until the earlier of `ttl_s` and its `exp`.
    fn keep(&self, key: &str, answer: &Answer) {
        let now_s = clock::now_ms() / 1000;
        let ttl_s = if answer.active {
            match answer.members.get("exp").and_then(Value::as_u64) {
                Some(exp) => self.cache.ttl_s.min(exp.saturating_sub(now_s)),
                None => self.cache.ttl_s,
            }
        } else {
            self.cache.negative_ttl_s
        };
        if ttl_s == 0 {
            return;
        }
        let Ok(value) = serde_json::to_vec(answer) else {
            return;
        };
        // A full namespace refuses the write: the answer is simply not kept.
        if let Err(e) = kv::set(
            &self.cache.namespace,
            key,
            &value,
            Some(Duration::from_secs(ttl_s)),
        ) {
            log::debug(&format!("oauth2-introspect: answer not cached: {e}"));
        }
    }

    /// Asks the authorization server. It failing is this phase failing: the panic is a trap,
    /// and the filter's `on_error` decides what the request gets.
    fn introspect(&self, token: &str) -> Answer {
        match self.ask(token) {
            Ok(a) => a,
            Err(why) => {
                metrics::count("oauth2_introspect_server_errors_total", &[]);
                panic!("oauth2-introspect: the authorization server failed: {why}");
            }
        }
    }

    fn ask(&self, token: &str) -> Result<Answer, String> {
        let body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let mut headers = vec![
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
        ];
        if let Some(a) = &self.authorization {
            headers.push(("authorization", a.as_str()));
        }
        if let Some(h) = &self.host {
            headers.push(("host", h.as_str()));
        }
        let res = callout::send(
            &self.server,
            "POST",
            &self.path,
            &headers,
            body.as_bytes(),
            self.timeout,
        )
        .map_err(|e| format!("{e}"))?;
        if res.status != 200 {
            return Err(format!("it answered {}", res.status));
        }
        if res.body.len() > MAX_ANSWER_BYTES {
            return Err(format!("its answer is over {MAX_ANSWER_BYTES} bytes"));
        }
        parse_answer(&res.body, self.forward.members())
    }

    /// The checks an active answer must pass, at `now_s`.
    fn check(&self, answer: &Answer, now_s: u64) -> Result<(), Refusal> {
        if !answer.active {
            return Err(Refusal::Inactive);
        }
        let m = &answer.members;
        if m.get("exp")
            .and_then(Value::as_u64)
            .is_some_and(|exp| exp <= now_s)
        {
            return Err(Refusal::Expired);
        }
        if m.get("nbf")
            .and_then(Value::as_u64)
            .is_some_and(|nbf| nbf > now_s)
        {
            return Err(Refusal::NotYetValid);
        }
        if let Some(iss) = &self.issuer
            && m.get("iss").and_then(Value::as_str) != Some(iss.as_str())
        {
            return Err(Refusal::WrongIssuer);
        }
        if !self.audiences.is_empty() {
            let ok = match m.get("aud") {
                Some(Value::String(a)) => self.audiences.contains(a),
                Some(Value::Array(list)) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audiences.iter().any(|want| want == a)),
                _ => false,
            };
            if !ok {
                return Err(Refusal::WrongAudience);
            }
        }
        if !self.required_scopes.is_empty() {
            let scopes: BTreeSet<&str> = m
                .get("scope")
                .and_then(Value::as_str)
                .unwrap_or("")
                .split(' ')
                .collect();
            if !self
                .required_scopes
                .iter()
                .all(|s| scopes.contains(s.as_str()))
            {
                return Err(Refusal::MissingScope);
            }
        }
        Ok(())
    }

    /// A 401 `invalid_token`, or a 403 `insufficient_scope` naming the scopes needed.
    fn refuse(&self, refusal: Refusal) -> Action {
        let description = refusal.description();
        if refusal == Refusal::MissingScope {
            return (self.bearer).insufficient_scope(&self.required_scopes, description);
        }
        self.bearer.invalid_token(description)
    }
}

/// An RFC 7662 answer: a JSON object with a boolean `active`. Only what the checks and `forward`
/// read is kept.
fn parse_answer<'a>(body: &[u8], forward: impl Iterator<Item = &'a str>) -> Result<Answer, String> {
    let mut all: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("its answer is not a JSON object".to_owned()),
        Err(e) => return Err(format!("its answer is not JSON: {e}")),
    };
    let Some(active) = all.get("active").and_then(Value::as_bool) else {
        return Err("its answer has no boolean \"active\"".to_owned());
    };
    if !active {
        // RFC 7662 §2.2: nothing else of an inactive answer may be relied on.
        return Ok(Answer {
            active,
            members: Map::new(),
        });
    }
    let wanted: BTreeSet<&str> = ["exp", "nbf", "iss", "aud", "scope"]
        .into_iter()
        .chain(forward)
        .collect();
    all.retain(|k, _| wanted.contains(k.as_str()));
    Ok(Answer {
        active,
        members: all,
    })
}

/// `application/x-www-form-urlencoded` for one value: unreserved bytes as they are, the rest
/// percent-encoded (so `+`, `&` and `=` in a token cannot change the form).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Counts a decision (best effort: counting never changes it).
fn count(result: &str) {
    metrics::count("oauth2_introspect_decisions_total", &[("result", result)]);
}

fn cache_count(result: &str) {
    metrics::count("oauth2_introspect_cache_total", &[("result", result)]);
}

fn internal_error(e: &HostError) -> Action {
    log::error(&format!("oauth2-introspect: {e}"));
    count("denied");
    Action::respond(500)
}
