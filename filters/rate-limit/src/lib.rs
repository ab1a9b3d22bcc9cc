//! Weir's rate-limit filter: a token bucket per client, kept by the host.
//!
//! Every request takes `cost` tokens from a bucket of capacity `burst` that refills at `rate`
//! tokens per `per`. The bucket lives in the host's shared state
//! ([`kv::take_tokens`]), not in the filter instance, so all
//! instances (and, once counters move to a shared backend, all proxies) count together.
//!
//! * Allowed: the request goes on; the response gets `RateLimit-Limit`, `RateLimit-Remaining`
//!   and `RateLimit-Reset` (unless `response_headers: false`).
//! * Over the limit: `429` with `Retry-After` (seconds, rounded up), the same `RateLimit-*`
//!   headers and the JSON body `{"error":"rate limited"}`; the upstream is not contacted.
//! * The bucket is chosen by `key`: `client_ip`, `header:<name>` or `claim:<name>` (a claim of
//!   the `Authorization: Bearer` JWT, read *without* verifying it: jwt-auth must run earlier in
//!   the chain). A request without that header or claim falls back to its client IP.
//! * Buckets are per route and per limit: the bucket key holds the route name and the
//!   `rate`/`per`/`burst` in force, so a route whose override changes the rate never shares a
//!   bucket with another route.
//! * The host refusing the bucket (namespace not granted, backend down) follows
//!   `on_backend_error`: `allow` (default: a broken limiter must not take the API down; a
//!   warning is logged when it starts failing) or `deny` (503).
//!
//! The configuration reference is the crate's README.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use weir_filter::{
    Action, Filter, HostError, LocalResponse, Phases, Request, export_filter, kv, log, metrics,
};

/// The filter's config, as the proxy passes it (the route's override merged over the
/// filter's default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What identifies a client: `client_ip`, `header:<name>` or `claim:<name>`.
    /// Default: `client_ip`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Tokens added per `per`. Required, at least 1.
    #[serde(default)]
    pub rate: Option<u64>,
    /// The refill period, a duration string (`500ms`, `1s`, `1m`, `1h`). Default: `1s`.
    #[serde(default = "default_per")]
    pub per: String,
    /// Bucket capacity: how many requests may arrive at once. Default: `rate`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// The KV namespace holding the buckets; it must be granted (`grants: { kv: [..] }`).
    /// Default: `ratelimit`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Tokens one request takes. Default: 1; at most `burst`.
    #[serde(default = "default_cost")]
    pub cost: u64,
    /// What to do when the host cannot serve the bucket. Default: `allow`.
    #[serde(default)]
    pub on_backend_error: OnBackendError,
    /// Whether allowed responses carry the `RateLimit-*` headers. Default: true.
    #[serde(default = "weir_filter::defaults::yes")]
    pub response_headers: bool,
}

fn default_key() -> String {
    "client_ip".to_owned()
}
fn default_per() -> String {
    "1s".to_owned()
}
fn default_namespace() -> String {
    "ratelimit".to_owned()
}
fn default_cost() -> u64 {
    1
}

/// What a request gets when the token bucket is unavailable (for example, the namespace is not
/// granted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendError {
    /// Let the request through, without `RateLimit-*` headers (fail open).
    #[default]
    Allow,
    /// Answer `503` with `{"error":"rate limiter unavailable"}` (fail closed).
    Deny,
}

/// What identifies a client, parsed from `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The TCP peer's IP address.
    ClientIp,
    /// The first value of this request header (lowercase name).
    Header(String),
    /// This top-level claim of the `Authorization: Bearer` JWT payload.
    Claim(String),
}

impl KeySource {
    /// Parses `client_ip`, `header:<name>` or `claim:<name>`.
    pub fn parse(key: &str) -> Result<Self, String> {
        if key == "client_ip" {
            return Ok(Self::ClientIp);
        }
        if let Some(name) = key.strip_prefix("header:") {
            if !is_token(name) {
                return Err(format!(
                    "key: {key:?}: {name:?} is not a valid header name (e.g. \"header:x-api-key\")"
                ));
            }
            return Ok(Self::Header(name.to_ascii_lowercase()));
        }
        if let Some(name) = key.strip_prefix("claim:") {
            if name.is_empty() {
                return Err(format!("key: {key:?}: name the claim (e.g. \"claim:sub\")"));
            }
            return Ok(Self::Claim(name.to_owned()));
        }
        Err(format!(
            "key: {key:?} is not one of client_ip, header:<name>, claim:<name>"
        ))
    }
}

/// Whether `s` is an HTTP token (a valid header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a duration string: a whole number with `ms`, `s`, `m` or `h` (`500ms`, `1s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = t.split_at(digits);
    let bad = || {
        format!(
            "{text:?} is not a duration (a whole number with ms, s, m or h, e.g. \"1s\" or \"500ms\")"
        )
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(ms_per_unit).ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

/// The rate limiter, configured.
#[derive(Debug)]
pub struct RateLimit {
    key: KeySource,
    rate: u64,
    period: Duration,
    burst: u64,
    cost: u64,
    namespace: String,
    on_backend_error: OnBackendError,
    response_headers: bool,
    /// `rate/per/burst` as it goes into every bucket key: a different limit, a different bucket.
    limit_tag: String,
    /// Whether the last bucket call failed; the warning is logged once per failure streak, not
    /// once per request.
    failing: Cell<bool>,
}

/// The IP part of `ip:port` (`[v6]:port` too); the whole string if it does not parse. An IPv4
/// address is sliced, not re-formatted (Rust's parser takes only its canonical dotted form);
/// IPv6 is re-formatted, so one client is one bucket however its address is spelled.
fn ip_of(address: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    match address.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(_)) => match address.rsplit_once(':') {
            Some((ip, _)) => Cow::Borrowed(ip),
            None => Cow::Borrowed(address),
        },
        Ok(sa) => Cow::Owned(sa.ip().to_string()),
        Err(_) => match address.rsplit_once(':') {
            Some((ip, _)) => Cow::Borrowed(ip.trim_start_matches('[').trim_end_matches(']')),
            None => Cow::Borrowed(address),
        },
    }
}

/// Decodes base64url (the standard alphabet and `=` padding are accepted too).
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A top-level claim of the bearer JWT in `authorization`, as text. Not verified: the
/// signature is jwt-auth's job, earlier in the chain.
pub fn bearer_claim(authorization: &str, claim: &str) -> Option<String> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut parts = token.trim().split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let payload: serde_json::Value = serde_json::from_slice(&base64url_decode(payload)?).ok()?;
    match payload.get(claim)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.is_empty() => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl RateLimit {
    /// Who the request is from, as `kind=value`, and whether that fell back to the client IP.
    /// The request's bucket key, `<route>|<limit>|<client>` with the client as `header=..`,
    /// `claim=..` or `ip=..`, built in one buffer (this runs on every request); and whether the
    /// configured source was missing, so the client IP stood in.
    fn bucket_key(&self, req: &Request, route: &str) -> (String, bool) {
        let found = match &self.key {
            KeySource::ClientIp => None,
            KeySource::Header(name) => req
                .header(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| ("header=", v)),
            KeySource::Claim(name) => req
                .header("authorization")
                .and_then(|auth| bearer_claim(&auth, name))
                .map(|v| ("claim=", v)),
        };
        let fell_back = found.is_none() && self.key != KeySource::ClientIp;
        let address: String;
        let ip: std::borrow::Cow<'_, str>;
        let (kind, client) = match &found {
            Some((kind, v)) => (*kind, v.as_str()),
            None => {
                address = req.client_address();
                ip = ip_of(&address);
                ("ip=", &*ip)
            }
        };
        let mut key = String::with_capacity(
            route.len() + self.limit_tag.len() + kind.len() + client.len() + 2,
        );
        for part in [route, "|", &self.limit_tag, "|", kind, client] {
            key.push_str(part);
        }
        (key, fell_back)
    }

    fn limited(&self, bucket: &kv::BucketResult) -> Action {
        let retry_after_s = bucket.retry_after.as_millis().div_ceil(1000).max(1);
        let reset_s = bucket.reset.as_millis().div_ceil(1000);
        let body = serde_json::json!({ "error": "rate limited" });
        LocalResponse::json(429, &body)
            .header("retry-after", retry_after_s.to_string())
            .header("ratelimit-limit", self.burst.to_string())
            .header("ratelimit-remaining", bucket.remaining.to_string())
            .header("ratelimit-reset", reset_s.to_string())
            .into()
    }

    fn backend_error(&self, e: &HostError, route: &str) -> Action {
        let _ = metrics::counter_add(
            "ratelimit_backend_errors_total",
            &[("route", route), ("kind", e.kind())],
            1,
        );
        if !self.failing.replace(true) {
            let what = match self.on_backend_error {
                OnBackendError::Allow => "allowing requests unlimited (on_backend_error: allow)",
                OnBackendError::Deny => "answering 503 (on_backend_error: deny)",
            };
            let hint = match e {
                HostError::Denied(_) => format!(
                    "; grant the namespace in the filter's config: grants: {{ kv: [{}] }}",
                    self.namespace
                ),
                _ => String::new(),
            };
            log::warn(&format!(
                "rate-limit: token bucket unavailable ({e}); {what} until it recovers{hint}"
            ));
        }
        match self.on_backend_error {
            OnBackendError::Allow => Action::Continue,
            OnBackendError::Deny => {
                let body = serde_json::json!({ "error": "rate limiter unavailable" });
                LocalResponse::json(503, &body).into()
            }
        }
    }
}

impl Filter for RateLimit {
    type Config = Config;
    /// No per-request state: the `RateLimit-*` headers are set on the response to come from
    /// the request phase, so a request costs one guest call.
    type Context = ();
    const PHASES: Phases = Phases::REQUEST_HEADERS;

    fn new(config: Config) -> Result<Self, String> {
        let key = KeySource::parse(&config.key)?;
        let rate = match config.rate {
            None => return Err("rate: required: tokens added per `per` (e.g. rate: 100)".into()),
            Some(0) => return Err("rate: must be at least 1".into()),
            Some(r) => r,
        };
        let period = parse_duration(&config.per).map_err(|e| format!("per: {e}"))?;
        if period.is_zero() {
            return Err("per: must be at least 1ms".into());
        }
        let burst = match config.burst {
            Some(0) => {
                return Err("burst: must be at least 1 (or leave it out: default rate)".into());
            }
            Some(b) => b,
            None => rate,
        };
        if config.cost == 0 {
            return Err("cost: must be at least 1".into());
        }
        if config.cost > burst {
            return Err(format!(
                "cost: {} is more than burst {burst}, so no request could ever pass; raise burst or lower cost",
                config.cost
            ));
        }
        if config.namespace.is_empty() {
            return Err("namespace: must not be empty".into());
        }
        let limit_tag = format!("{rate}/{}ms/{burst}", period.as_millis());
        Ok(Self {
            key,
            rate,
            period,
            burst,
            cost: config.cost,
            namespace: config.namespace,
            on_backend_error: config.on_backend_error,
            response_headers: config.response_headers,
            limit_tag,
            failing: Cell::new(false),
        })
    }

    fn on_request_headers(&self, req: &mut Request, _: &mut ()) -> Action {
        let route = req.route_name();
        let (bucket_key, fell_back) = self.bucket_key(req, &route);
        if fell_back {
            metrics::count("ratelimit_key_fallbacks_total", &[("route", &route)]);
        }
        let taken = kv::take_tokens(
            &self.namespace,
            &bucket_key,
            self.rate,
            self.period,
            self.burst,
            self.cost,
        );
        let bucket = match taken {
            Ok(bucket) => bucket,
            Err(e) => return self.backend_error(&e, &route),
        };
        if self.failing.replace(false) {
            log::info("rate-limit: token bucket available again");
        }
        if !bucket.allowed {
            metrics::count(
                "ratelimit_requests_total",
                &[("route", &route), ("result", "limited")],
            );
            return self.limited(&bucket);
        }
        metrics::count(
            "ratelimit_requests_total",
            &[("route", &route), ("result", "allowed")],
        );
        if self.response_headers {
            self.quota_headers(req, &bucket);
        }
        Action::Continue
    }
}

impl RateLimit {
    /// `RateLimit-*` on the response to come. With several limits on one route (each a
    /// rate-limit filter in the chain), the headers describe the one closest to running out:
    /// a later limit with more left leaves an earlier one's headers in place.
    fn quota_headers(&self, req: &mut Request, bucket: &kv::BucketResult) {
        let tighter = req
            .response_header("ratelimit-remaining")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|other| other < bucket.remaining);
        if tighter {
            return;
        }
        let reset_s = bucket.reset.as_millis().div_ceil(1000);
        let set = req
            .set_response_header("ratelimit-limit", &self.burst.to_string())
            .and_then(|()| {
                req.set_response_header("ratelimit-remaining", &bucket.remaining.to_string())
            })
            .and_then(|()| req.set_response_header("ratelimit-reset", &reset_s.to_string()));
        if let Err(e) = set {
            log::warn(&format!("rate-limit: response headers: {e}"));
        }
    }
}

export_filter!(RateLimit);

#[cfg(test)]
mod tests;
