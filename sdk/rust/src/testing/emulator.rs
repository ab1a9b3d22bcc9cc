//! The in-process host behind [`testing`](crate::testing): its state, and [`Host`] over it.
//!
//! A thread-local points at the emulator of the harness whose phase is running (or that was
//! [`entered`](crate::testing::Emulator::enter)); with none, host calls fail with
//! `unavailable` and getters return empty values, as a real host does outside a phase.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::{CalloutRequest, Grants, LogLine, Span, SpanEvent};
use crate::HostError;
use crate::callout::CalloutResponse;
use crate::http::{BodyKind, HeaderMap};
use crate::kv::{BucketResult, Entry};
use crate::log::Level;
use crate::sys::Host;
use crate::trace;

pub(crate) type Shared = Rc<RefCell<State>>;
pub(crate) type CalloutHandler =
    dyn FnMut(&str, &CalloutRequest) -> Result<CalloutResponse, HostError>;

thread_local! {
    static CURRENT: RefCell<Option<Shared>> = const { RefCell::new(None) };
}

/// Keeps an emulator installed as this thread's host; restores the previous one on drop
/// (also when a phase panics).
pub(crate) struct Installed {
    previous: Option<Shared>,
}

pub(crate) fn install(state: &Shared) -> Installed {
    let previous = CURRENT.with(|c| c.borrow_mut().replace(Rc::clone(state)));
    Installed { previous }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// A phase, as the emulator's access rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Log,
}

fn phase_name(phase: Option<Phase>) -> &'static str {
    match phase {
        None => "outside a phase",
        Some(Phase::RequestHeaders) => "on-request-headers",
        Some(Phase::RequestBody) => "on-request-body",
        Some(Phase::ResponseHeaders) => "on-response-headers",
        Some(Phase::ResponseBody) => "on-response-body",
        Some(Phase::Log) => "on-log",
    }
}

fn kind_name(kind: BodyKind) -> &'static str {
    match kind {
        BodyKind::Request => "request",
        BodyKind::Response => "response",
    }
}

/// A request head as the emulated host holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequestHead {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) authority: String,
    pub(crate) scheme: String,
    pub(crate) client: String,
    pub(crate) route: String,
    pub(crate) cluster: String,
    pub(crate) request_id: String,
    pub(crate) headers: Vec<(String, String)>,
    /// What filters added to the request's span; `None` when it is not sampled.
    pub(crate) span: Option<Span>,
    /// The headers the request phases set on the response to come (the response map before
    /// there is a response): each name replaces that name's values in the response.
    pub(crate) response_headers: Vec<(String, String)>,
}

/// Puts the headers the request phases set (`pending`) on a response's: each name in
/// `pending` replaces that name's values, as the proxy does with the response the client gets.
pub(crate) fn set_response_headers(
    headers: &mut Vec<(String, String)>,
    pending: Vec<(String, String)>,
) {
    headers.retain(|(n, _)| !pending.iter().any(|(p, _)| p.eq_ignore_ascii_case(n)));
    headers.extend(pending);
}

/// A response head as the emulated host holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
}

/// What the running phase can see.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    pub(crate) phase: Option<Phase>,
    pub(crate) request: Option<RequestHead>,
    pub(crate) response: Option<ResponseHead>,
    pub(crate) body: Option<(BodyKind, Vec<u8>)>,
    pub(crate) deadline: Option<(Instant, Duration)>,
}

#[derive(Debug)]
struct Stored {
    value: Vec<u8>,
    version: u64,
    expires_at: Option<u64>,
}

#[derive(Debug)]
struct Counter {
    value: i64,
    expires_at: Option<u64>,
}

/// A token bucket in "token-milliseconds": `tokens * period_ms`, so refill is exact integer
/// arithmetic (`rate` per elapsed millisecond).
#[derive(Debug)]
struct Bucket {
    scaled: u128,
    last_ms: u64,
}

type Key = (String, String);

#[derive(Debug, Default)]
struct Kv {
    last_version: u64,
    values: HashMap<Key, Stored>,
    counters: HashMap<Key, Counter>,
    buckets: HashMap<Key, Bucket>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Metric {
    Counter(u64),
    Gauge(i64),
    Histogram(Vec<f64>),
}

impl Metric {
    fn kind(&self) -> &'static str {
        match self {
            Self::Counter(_) => "counter",
            Self::Gauge(_) => "gauge",
            Self::Histogram(_) => "histogram",
        }
    }
}

pub(crate) type MetricKey = (String, Vec<(String, String)>);

/// Everything the emulated host knows.
pub(crate) struct State {
    pub(crate) scope: Scope,
    pub(crate) time_budget: Option<Duration>,
    pub(crate) now_ms: u64,
    pub(crate) monotonic_ns: u64,
    pub(crate) rng: u64,
    pub(crate) grants: Grants,
    kv: Kv,
    pub(crate) metrics: BTreeMap<MetricKey, Metric>,
    pub(crate) logs: Vec<LogLine>,
    pub(crate) callouts: Vec<(String, CalloutRequest)>,
    pub(crate) callout_handler: Option<Rc<RefCell<CalloutHandler>>>,
}

/// 2023-11-14T22:13:20Z: a fixed, recognisable start for the fake wall clock.
pub(crate) const START_MS: u64 = 1_700_000_000_000;

impl Default for State {
    fn default() -> Self {
        Self {
            scope: Scope::default(),
            time_budget: None,
            now_ms: START_MS,
            monotonic_ns: 1_000_000_000,
            rng: 0x9E37_79B9_7F4A_7C15,
            grants: Grants::all(),
            kv: Kv::default(),
            metrics: BTreeMap::new(),
            logs: Vec::new(),
            callouts: Vec::new(),
            callout_handler: None,
        }
    }
}

fn no_host() -> HostError {
    HostError::Unavailable(
        "no host: call host functions from a phase run by weir_filter::testing::Harness, \
         or inside Emulator::enter"
            .to_owned(),
    )
}

/// Runs `f` on the installed emulator, or returns `default()` without one. Every host call
/// passes here, so it is also where the emulated time budget is enforced.
fn with<R>(default: impl FnOnce() -> R, f: impl FnOnce(&mut State) -> R) -> R {
    let Some(shared) = CURRENT.with(|c| c.borrow().clone()) else {
        return default();
    };
    let mut state = shared.borrow_mut();
    if let Some((deadline, budget)) = state.scope.deadline
        && Instant::now() > deadline
    {
        let phase = phase_name(state.scope.phase);
        drop(state);
        panic!(
            "weir-filter emulator: {phase} exceeded its time budget of {budget:?} \
             (in the proxy this traps: epoch deadline)"
        );
    }
    f(&mut state)
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn check_header(name: &str, value: Option<&str>) -> Result<(), HostError> {
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(HostError::Invalid(format!("invalid header name {name:?}")));
    }
    if let Some(value) = value
        && value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(HostError::Invalid(format!(
            "invalid value for header {name:?}: control characters are not allowed"
        )));
    }
    Ok(())
}

/// A header a filter may change: a valid name that is not one of the proxy's framing headers,
/// and a valid value. Checked in this order, before the phase, as the proxy does.
fn check_writable(name: &str, value: Option<&str>) -> Result<(), HostError> {
    check_header(name, None)?;
    if crate::validate::is_framing_header(name) {
        return Err(HostError::Invalid(format!(
            "{} is a framing or hop-by-hop header: the proxy sets it",
            name.to_ascii_lowercase()
        )));
    }
    check_header(name, value)
}

fn header_first(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

fn header_all(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

// The host's bounds (host/filters/src/series.rs and kv.rs), kept equal by the shared host-call
// table (tests/filters/host-calls.json), which runs here and in the real proxy.
const MAX_METRIC_NAME_BYTES: usize = 128;
const MAX_LABELS: usize = 16;
const MAX_LABEL_NAME_BYTES: usize = 128;
const MAX_LABEL_VALUE_BYTES: usize = 256;
const RESERVED_LABELS: [&str; 3] = ["filter", "le", "quantile"];
const HOST_METRICS: [&str; 8] = [
    "calls_total",
    "call_duration_seconds",
    "call_duration_seconds_bucket",
    "call_duration_seconds_sum",
    "call_duration_seconds_count",
    "failures_total",
    "budget_breaches_total",
    "limit_rejections_total",
];
const MAX_KV_KEY_BYTES: usize = 1 << 10;
const MAX_KV_VALUE_BYTES: usize = 64 << 10;

fn check_kv_value(value: &[u8]) -> Result<(), HostError> {
    if value.len() > MAX_KV_VALUE_BYTES {
        return Err(HostError::Invalid(format!(
            "value of {} bytes is larger than the limit of {MAX_KV_VALUE_BYTES} bytes",
            value.len()
        )));
    }
    Ok(())
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A metric's identity: its name and its labels in sorted order (label order does not matter).
pub(crate) fn metric_key(name: &str, labels: &[(&str, &str)]) -> MetricKey {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|&(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

fn ceil_div(n: u128, d: u128) -> u64 {
    u64::try_from(n.div_ceil(d)).unwrap_or(u64::MAX)
}

fn expiry(now: u64, ttl_ms: u64) -> Option<u64> {
    (ttl_ms > 0).then(|| now.saturating_add(ttl_ms))
}

fn expired(expires_at: Option<u64>, now: u64) -> bool {
    expires_at.is_some_and(|t| now >= t)
}

impl State {
    fn headers(&self, map: HeaderMap) -> Option<&Vec<(String, String)>> {
        match (map, self.scope.phase) {
            (HeaderMap::Request, _) => self.scope.request.as_ref().map(|r| &r.headers),
            // Before there is a response: the headers to set on it.
            (HeaderMap::Response, Some(Phase::RequestHeaders | Phase::RequestBody)) => {
                self.scope.request.as_ref().map(|r| &r.response_headers)
            }
            (HeaderMap::Response, _) => self.scope.response.as_ref().map(|r| &r.headers),
        }
    }

    fn request_mut(&mut self, what: &str) -> Result<&mut RequestHead, HostError> {
        let phase = self.scope.phase;
        match (phase, self.scope.request.as_mut()) {
            (Some(Phase::RequestHeaders | Phase::RequestBody), Some(request)) => Ok(request),
            _ => Err(HostError::Unavailable(format!(
                "{what}: the request can only change in the request phases (now {})",
                phase_name(phase)
            ))),
        }
    }

    /// The request's span, when sampled; `unavailable` outside the phases that can add to it
    /// (as in the proxy, which exports the span before `on-log`).
    fn span_mut(&mut self) -> Result<Option<&mut Span>, HostError> {
        match self.scope.phase {
            None | Some(Phase::Log) => Err(HostError::Unavailable(format!(
                "no open span {}: the proxy exports it before on-log",
                phase_name(self.scope.phase)
            ))),
            Some(_) => Ok(self.scope.request.as_mut().and_then(|r| r.span.as_mut())),
        }
    }

    fn response_mut(&mut self, what: &str) -> Result<&mut ResponseHead, HostError> {
        let phase = self.scope.phase;
        match (phase, self.scope.response.as_mut()) {
            (Some(Phase::ResponseHeaders), Some(response)) => Ok(response),
            _ => Err(HostError::Unavailable(format!(
                "{what}: the response head can only change in on-response-headers (now {})",
                phase_name(phase)
            ))),
        }
    }

    fn headers_mut(
        &mut self,
        map: HeaderMap,
        what: &str,
    ) -> Result<&mut Vec<(String, String)>, HostError> {
        match (map, self.scope.phase) {
            (HeaderMap::Request, _) => Ok(&mut self.request_mut(what)?.headers),
            (HeaderMap::Response, Some(Phase::RequestHeaders | Phase::RequestBody)) => {
                Ok(&mut self.request_mut(what)?.response_headers)
            }
            (HeaderMap::Response, _) => Ok(&mut self.response_mut(what)?.headers),
        }
    }

    /// A namespace must be granted (an empty one never is); a key written is at most 1 KiB
    /// (reads of longer keys find nothing, as in the host).
    fn check_kv(&self, ns: &str, key: &str) -> Result<(), HostError> {
        if key.len() > MAX_KV_KEY_BYTES {
            return Err(HostError::Invalid(format!(
                "key of {} bytes is longer than the limit of {MAX_KV_KEY_BYTES} bytes",
                key.len()
            )));
        }
        if !self.grants.allows_kv(ns) {
            return Err(HostError::Denied(format!(
                "kv namespace {ns:?} is not granted (add it to the filter's grants.kv)"
            )));
        }
        Ok(())
    }

    fn next_version(&mut self) -> u64 {
        self.kv.last_version += 1;
        self.kv.last_version
    }

    fn live_value(&mut self, key: &Key) -> Option<&Stored> {
        let now = self.now_ms;
        if self
            .kv
            .values
            .get(key)
            .is_some_and(|s| expired(s.expires_at, now))
        {
            self.kv.values.remove(key);
        }
        self.kv.values.get(key)
    }

    fn record_metric(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        fresh: Metric,
        update: impl FnOnce(&mut Metric) -> bool,
    ) -> Result<(), HostError> {
        if !is_metric_name(name) {
            return Err(HostError::Invalid(format!(
                "invalid metric name {name:?}: use [a-z_][a-z0-9_]*"
            )));
        }
        if name.len() > MAX_METRIC_NAME_BYTES {
            return Err(HostError::Invalid(format!(
                "metric name of {} bytes is longer than {MAX_METRIC_NAME_BYTES}",
                name.len()
            )));
        }
        if HOST_METRICS.contains(&name) {
            return Err(HostError::Invalid(format!(
                "metric name {name:?} is taken by the host's weir_filter_{name}"
            )));
        }
        if labels.len() > MAX_LABELS {
            return Err(HostError::Invalid(format!(
                "metric {name:?}: {} labels, at most {MAX_LABELS}",
                labels.len()
            )));
        }
        for (i, (label, value)) in labels.iter().enumerate() {
            if !is_label_name(label) || label.len() > MAX_LABEL_NAME_BYTES {
                return Err(HostError::Invalid(format!(
                    "metric {name:?}: invalid label name {label:?}"
                )));
            }
            if RESERVED_LABELS.contains(label) || label.starts_with("__") {
                return Err(HostError::Invalid(format!(
                    "metric {name:?}: label name {label:?} is reserved (filter, le, quantile and __*)"
                )));
            }
            if value.len() > MAX_LABEL_VALUE_BYTES {
                return Err(HostError::Invalid(format!(
                    "metric {name:?}: value of label {label:?} is {} bytes, at most {MAX_LABEL_VALUE_BYTES}",
                    value.len()
                )));
            }
            if labels[..i].iter().any(|(other, _)| other == label) {
                return Err(HostError::Invalid(format!(
                    "metric {name:?}: label {label:?} given twice"
                )));
            }
        }
        if let Some(((_, _), existing)) = self
            .metrics
            .iter()
            .find(|((n, _), m)| n == name && m.kind() != fresh.kind())
        {
            return Err(HostError::Invalid(format!(
                "metric {name:?} is a {}, not a {}",
                existing.kind(),
                fresh.kind()
            )));
        }
        let metric = self
            .metrics
            .entry(metric_key(name, labels))
            .or_insert(fresh);
        let updated = update(metric);
        debug_assert!(updated, "metric kinds were checked above");
        Ok(())
    }
}

/// [`Host`] over the installed emulator.
pub(crate) struct Emulated;

thread_local! {
    /// Keys made natively on this thread and not yet dropped (the proxy bounds them per
    /// instance; a native test is one instance per thread).
    static LIVE_KEYS: Arc<AtomicUsize> = Arc::new(AtomicUsize::new(0));
}

/// A crypto key of the emulator: the proxy's own key type, counted while it lives.
pub(crate) struct Counted<T> {
    key: T,
    live: Arc<AtomicUsize>,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Relaxed);
    }
}

fn counted<T>(made: Result<T, weir_crypto::KeyError>) -> Result<Counted<T>, HostError> {
    let key = made.map_err(|e| HostError::Invalid(e.0))?;
    let live = LIVE_KEYS.with(Arc::clone);
    if live.load(Relaxed) >= crate::crypto::MAX_KEYS {
        let max = crate::crypto::MAX_KEYS;
        return Err(HostError::Invalid(format!(
            "an instance holds at most {max} keys; drop keys it no longer uses"
        )));
    }
    live.fetch_add(1, Relaxed);
    Ok(Counted { key, live })
}

fn hash(h: crate::crypto::Hash) -> weir_crypto::Hash {
    use crate::crypto::Hash as H;
    match h {
        H::Sha256 => weir_crypto::Hash::Sha256,
        H::Sha384 => weir_crypto::Hash::Sha384,
        H::Sha512 => weir_crypto::Hash::Sha512,
    }
}

fn signature(a: crate::crypto::SignatureAlgorithm) -> weir_crypto::SignatureAlgorithm {
    use crate::crypto::SignatureAlgorithm as S;
    use weir_crypto::SignatureAlgorithm as A;
    match a {
        S::RsaPkcs1Sha256 => A::RsaPkcs1Sha256,
        S::RsaPkcs1Sha384 => A::RsaPkcs1Sha384,
        S::RsaPkcs1Sha512 => A::RsaPkcs1Sha512,
        S::RsaPssSha256 => A::RsaPssSha256,
        S::RsaPssSha384 => A::RsaPssSha384,
        S::RsaPssSha512 => A::RsaPssSha512,
        S::EcdsaP256Sha256 => A::EcdsaP256Sha256,
        S::EcdsaP384Sha384 => A::EcdsaP384Sha384,
        S::Ed25519 => A::Ed25519,
    }
}

impl Host for Emulated {
    type HmacKey = Counted<weir_crypto::HmacKey>;
    type VerifyingKey = Counted<weir_crypto::VerifyingKey>;

    fn digest(h: crate::crypto::Hash, data: &[u8]) -> Vec<u8> {
        weir_crypto::digest(hash(h), data)
    }
    fn constant_time_equal(a: &[u8], b: &[u8]) -> bool {
        weir_crypto::constant_time_equal(a, b)
    }
    fn hmac_key(h: crate::crypto::Hash, secret: &[u8]) -> Result<Self::HmacKey, HostError> {
        counted(weir_crypto::HmacKey::new(hash(h), secret))
    }
    fn hmac_sign(key: &Self::HmacKey, message: &[u8]) -> Vec<u8> {
        key.key.sign(message)
    }
    fn hmac_verify(key: &Self::HmacKey, message: &[u8], tag: &[u8]) -> bool {
        key.key.verify(message, tag)
    }
    fn verifying_key_spki(
        alg: crate::crypto::SignatureAlgorithm,
        der: &[u8],
    ) -> Result<Self::VerifyingKey, HostError> {
        counted(weir_crypto::VerifyingKey::from_spki(signature(alg), der))
    }
    fn verifying_key_rsa(
        alg: crate::crypto::SignatureAlgorithm,
        modulus: &[u8],
        exponent: &[u8],
    ) -> Result<Self::VerifyingKey, HostError> {
        counted(weir_crypto::VerifyingKey::from_rsa_components(
            signature(alg),
            modulus,
            exponent,
        ))
    }
    fn verifying_key_raw(
        alg: crate::crypto::SignatureAlgorithm,
        key: &[u8],
    ) -> Result<Self::VerifyingKey, HostError> {
        counted(weir_crypto::VerifyingKey::from_raw(signature(alg), key))
    }
    fn verify_signature(key: &Self::VerifyingKey, message: &[u8], sig: &[u8]) -> bool {
        key.key.verify(message, sig)
    }

    fn method() -> String {
        with(String::new, |s| {
            s.scope
                .request
                .as_ref()
                .map(|r| r.method.clone())
                .unwrap_or_default()
        })
    }
    fn path() -> String {
        with(String::new, |s| {
            s.scope
                .request
                .as_ref()
                .map(|r| r.path.clone())
                .unwrap_or_default()
        })
    }
    fn set_path(path: &str) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                if !path.starts_with('/') || path.chars().any(|c| c.is_ascii_control() || c == ' ')
                {
                    return Err(HostError::Invalid(format!(
                        "invalid path {path:?}: it must start with / and contain no spaces or control characters"
                    )));
                }
                s.request_mut("set-path")?.path = path.to_owned();
                Ok(())
            },
        )
    }
    fn authority() -> String {
        with(String::new, |s| {
            s.scope
                .request
                .as_ref()
                .map(|r| r.authority.clone())
                .unwrap_or_default()
        })
    }
    fn scheme() -> String {
        with(String::new, |s| {
            s.scope
                .request
                .as_ref()
                .map(|r| r.scheme.clone())
                .unwrap_or_default()
        })
    }
    fn client_address() -> String {
        with(String::new, |s| {
            s.scope
                .request
                .as_ref()
                .map(|r| r.client.clone())
                .unwrap_or_default()
        })
    }
    fn route_name() -> String {
        with(String::new, |s| {
            s.scope
                .request
                .as_ref()
                .map(|r| r.route.clone())
                .unwrap_or_default()
        })
    }
    fn cluster_name() -> String {
        with(String::new, |s| {
            s.scope
                .request
                .as_ref()
                .map(|r| r.cluster.clone())
                .unwrap_or_default()
        })
    }
    fn request_id() -> String {
        with(String::new, |s| {
            s.scope
                .request
                .as_ref()
                .map(|r| r.request_id.clone())
                .unwrap_or_default()
        })
    }
    fn status() -> u16 {
        with(|| 0, |s| s.scope.response.as_ref().map_or(0, |r| r.status))
    }
    fn set_status(status: u16) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                if !(100..=599).contains(&status) {
                    return Err(HostError::Invalid(format!(
                        "invalid status {status}: use 100-599"
                    )));
                }
                s.response_mut("set-status")?.status = status;
                Ok(())
            },
        )
    }

    fn get_header(map: HeaderMap, name: &str) -> Option<String> {
        with(
            || None,
            |s| s.headers(map).and_then(|h| header_first(h, name)),
        )
    }
    fn get_header_all(map: HeaderMap, name: &str) -> Vec<String> {
        with(Vec::new, |s| {
            s.headers(map)
                .map(|h| header_all(h, name))
                .unwrap_or_default()
        })
    }
    fn set_header(map: HeaderMap, name: &str, value: &str) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                check_writable(name, Some(value))?;
                let headers = s.headers_mut(map, "set-header")?;
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                headers.push((name.to_ascii_lowercase(), value.to_owned()));
                Ok(())
            },
        )
    }
    fn append_header(map: HeaderMap, name: &str, value: &str) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                check_writable(name, Some(value))?;
                let headers = s.headers_mut(map, "append-header")?;
                headers.push((name.to_ascii_lowercase(), value.to_owned()));
                Ok(())
            },
        )
    }
    fn remove_header(map: HeaderMap, name: &str) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                check_writable(name, None)?;
                let headers = s.headers_mut(map, "remove-header")?;
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                Ok(())
            },
        )
    }
    fn headers(map: HeaderMap) -> Vec<(String, String)> {
        with(Vec::new, |s| s.headers(map).cloned().unwrap_or_default())
    }

    fn body(kind: BodyKind) -> Result<Vec<u8>, HostError> {
        with(
            || Err(no_host()),
            |s| match &s.scope.body {
                Some((k, bytes)) if *k == kind => Ok(bytes.clone()),
                _ => Err(HostError::Unavailable(format!(
                    "the {} body is only readable in its body phase (now {})",
                    kind_name(kind),
                    phase_name(s.scope.phase)
                ))),
            },
        )
    }
    fn set_body(kind: BodyKind, bytes: &[u8]) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| match &mut s.scope.body {
                Some((k, held)) if *k == kind => {
                    bytes.clone_into(held);
                    Ok(())
                }
                _ => Err(HostError::Unavailable(format!(
                    "the {} body can only change in its body phase (now {})",
                    kind_name(kind),
                    phase_name(s.scope.phase)
                ))),
            },
        )
    }

    fn log(level: Level, message: &str) {
        with(
            || eprintln!("[weir-filter {level:?}, no host] {message}"),
            |s| {
                // Shown by `cargo test` for failing tests, which is when it helps.
                eprintln!("[weir-filter {level:?}] {message}");
                s.logs.push(LogLine {
                    level,
                    message: message.to_owned(),
                });
            },
        );
    }

    fn now_ms() -> u64 {
        with(|| START_MS, |s| s.now_ms)
    }
    fn monotonic_ns() -> u64 {
        with(|| 0, |s| s.monotonic_ns)
    }
    fn random_bytes(len: u32) -> Vec<u8> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        with(
            || vec![0; len],
            |s| {
                let mut out = Vec::with_capacity(len);
                while out.len() < len {
                    // xorshift64*: deterministic, seedable, good enough for tests.
                    let mut x = s.rng;
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    s.rng = x;
                    let word = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                    let n = word.len().min(len - out.len());
                    out.extend_from_slice(&word[..n]);
                }
                out
            },
        )
    }

    fn counter_add(name: &str, labels: &[(&str, &str)], delta: u64) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                s.record_metric(name, labels, Metric::Counter(0), |m| match m {
                    Metric::Counter(v) => {
                        *v = v.saturating_add(delta);
                        true
                    }
                    _ => false,
                })
            },
        )
    }
    fn gauge_set(name: &str, labels: &[(&str, &str)], value: i64) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                s.record_metric(name, labels, Metric::Gauge(0), |m| match m {
                    Metric::Gauge(v) => {
                        *v = value;
                        true
                    }
                    _ => false,
                })
            },
        )
    }
    fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                if !value.is_finite() {
                    return Err(HostError::Invalid(format!(
                        "histogram {name:?}: observation must be finite, got {value}"
                    )));
                }
                s.record_metric(name, labels, Metric::Histogram(Vec::new()), |m| match m {
                    Metric::Histogram(v) => {
                        v.push(value);
                        true
                    }
                    _ => false,
                })
            },
        )
    }

    fn kv_get(ns: &str, key: &str) -> Result<Option<Entry>, HostError> {
        with(
            || Err(no_host()),
            |s| {
                s.check_kv(ns, "")?;
                Ok(s.live_value(&(ns.to_owned(), key.to_owned()))
                    .map(|v| Entry {
                        value: v.value.clone(),
                        version: v.version,
                    }))
            },
        )
    }
    fn kv_set(ns: &str, key: &str, value: &[u8], ttl_ms: u64) -> Result<u64, HostError> {
        with(
            || Err(no_host()),
            |s| {
                s.check_kv(ns, key)?;
                check_kv_value(value)?;
                let version = s.next_version();
                let expires_at = expiry(s.now_ms, ttl_ms);
                s.kv.values.insert(
                    (ns.to_owned(), key.to_owned()),
                    Stored {
                        value: value.to_vec(),
                        version,
                        expires_at,
                    },
                );
                Ok(version)
            },
        )
    }
    fn kv_compare_and_swap(
        ns: &str,
        key: &str,
        expected: u64,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<u64>, HostError> {
        with(
            || Err(no_host()),
            |s| {
                s.check_kv(ns, key)?;
                check_kv_value(value)?;
                let k = (ns.to_owned(), key.to_owned());
                let current = s.live_value(&k).map_or(0, |v| v.version);
                if current != expected {
                    return Ok(None);
                }
                let version = s.next_version();
                let expires_at = expiry(s.now_ms, ttl_ms);
                s.kv.values.insert(
                    k,
                    Stored {
                        value: value.to_vec(),
                        version,
                        expires_at,
                    },
                );
                Ok(Some(version))
            },
        )
    }
    fn kv_delete(ns: &str, key: &str) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                s.check_kv(ns, "")?;
                let k = (ns.to_owned(), key.to_owned());
                s.kv.values.remove(&k);
                s.kv.counters.remove(&k);
                s.kv.buckets.remove(&k);
                Ok(())
            },
        )
    }
    fn kv_increment(ns: &str, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, HostError> {
        with(
            || Err(no_host()),
            |s| {
                s.check_kv(ns, key)?;
                let now = s.now_ms;
                let counter =
                    s.kv.counters
                        .entry((ns.to_owned(), key.to_owned()))
                        .or_insert(Counter {
                            value: 0,
                            expires_at: expiry(now, ttl_ms),
                        });
                if expired(counter.expires_at, now) {
                    // Fixed window: a new one starts with this increment.
                    *counter = Counter {
                        value: 0,
                        expires_at: expiry(now, ttl_ms),
                    };
                }
                // Saturating, as the host's counters are.
                counter.value = counter.value.saturating_add(delta);
                Ok(counter.value)
            },
        )
    }
    fn kv_take_tokens(
        ns: &str,
        key: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: u64,
    ) -> Result<BucketResult, HostError> {
        with(
            || Err(no_host()),
            |s| {
                s.check_kv(ns, key)?;
                if rate == 0 || period_ms == 0 || burst == 0 {
                    return Err(HostError::Invalid(format!(
                        "token bucket {ns}/{key}: rate, period and burst must be positive \
                         (got rate {rate}, period {period_ms} ms, burst {burst})"
                    )));
                }
                if cost > burst {
                    return Err(HostError::Invalid(format!(
                        "token bucket {ns}/{key}: cost {cost} exceeds burst {burst}, it could never pass"
                    )));
                }
                let now = s.now_ms;
                let (rate, period) = (u128::from(rate), u128::from(period_ms));
                let full = u128::from(burst) * period;
                let bucket =
                    s.kv.buckets
                        .entry((ns.to_owned(), key.to_owned()))
                        .or_insert(Bucket {
                            scaled: full,
                            last_ms: now,
                        });
                let elapsed = u128::from(now.saturating_sub(bucket.last_ms));
                bucket.scaled = full.min(bucket.scaled.saturating_add(elapsed * rate));
                bucket.last_ms = now;
                let need = u128::from(cost) * period;
                let allowed = bucket.scaled >= need;
                if allowed {
                    bucket.scaled -= need;
                }
                let retry_after_ms = if allowed {
                    0
                } else {
                    ceil_div(need - bucket.scaled, rate)
                };
                Ok(BucketResult {
                    allowed,
                    remaining: u64::try_from(bucket.scaled / period).unwrap_or(u64::MAX),
                    retry_after: Duration::from_millis(retry_after_ms),
                    reset: Duration::from_millis(ceil_div(full - bucket.scaled, rate)),
                })
            },
        )
    }

    fn callout_send(
        target: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<CalloutResponse, HostError> {
        let request = CalloutRequest {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: headers
                .iter()
                .map(|&(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            body: body.to_vec(),
            timeout: Duration::from_millis(u64::from(timeout_ms)),
        };
        let handler = with(
            || Err(no_host()),
            |s| {
                if !s.grants.allows_callout(target) {
                    return Err(HostError::Denied(format!(
                        "callout target {target:?} is not granted (add it to the filter's grants.callouts)"
                    )));
                }
                if method.is_empty() || !method.chars().all(is_token_char) {
                    return Err(HostError::Invalid(format!(
                        "invalid callout method {method:?}"
                    )));
                }
                if !path.starts_with('/') {
                    return Err(HostError::Invalid(format!(
                        "invalid callout path {path:?}: it must start with /"
                    )));
                }
                for (name, value) in headers {
                    check_header(name, Some(value))?;
                }
                s.callouts.push((target.to_owned(), request.clone()));
                Ok(s.callout_handler.clone())
            },
        )?;
        // The emulator is not borrowed while the handler runs, so it may use the host too.
        match handler {
            Some(handler) => (handler.borrow_mut())(target, &request),
            None => Err(HostError::Failed(format!(
                "callout to {target:?}: no handler registered (Harness::on_callout)"
            ))),
        }
    }

    fn span_sampled() -> bool {
        with(|| false, |s| s.span_mut().is_ok_and(|span| span.is_some()))
    }
    fn span_set_attribute(key: &str, value: &str) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                check_span_key(key)?;
                let Some(span) = s.span_mut()? else {
                    return Ok(());
                };
                let value = capped(value, trace::MAX_VALUE_BYTES).to_owned();
                if let Some(kept) = span.attributes.iter_mut().find(|(k, _)| k == key) {
                    kept.1 = value;
                    return Ok(());
                }
                if span.attributes.len() >= trace::MAX_ATTRIBUTES {
                    return Err(HostError::Invalid(format!(
                        "a request's span takes at most {} attributes from filters",
                        trace::MAX_ATTRIBUTES
                    )));
                }
                span.attributes.push((key.to_owned(), value));
                Ok(())
            },
        )
    }
    fn span_add_event(name: &str, attributes: &[(&str, &str)]) -> Result<(), HostError> {
        with(
            || Err(no_host()),
            |s| {
                check_span_name("span event", name)?;
                if attributes.len() > trace::MAX_EVENT_ATTRIBUTES {
                    return Err(HostError::Invalid(format!(
                        "a span event carries at most {} attributes",
                        trace::MAX_EVENT_ATTRIBUTES
                    )));
                }
                for (k, _) in attributes {
                    check_span_key(k)?;
                }
                let at_ms = s.now_ms;
                let Some(span) = s.span_mut()? else {
                    return Ok(());
                };
                if span.events.len() >= trace::MAX_EVENTS {
                    return Err(HostError::Invalid(format!(
                        "a request's span takes at most {} events from filters",
                        trace::MAX_EVENTS
                    )));
                }
                span.events.push(SpanEvent {
                    name: name.to_owned(),
                    at_ms,
                    attributes: (attributes.iter())
                        .map(|(k, v)| {
                            (
                                (*k).to_owned(),
                                capped(v, trace::MAX_VALUE_BYTES).to_owned(),
                            )
                        })
                        .collect(),
                });
                Ok(())
            },
        )
    }
}

/// A span attribute key or event name: 1 to 128 bytes of `[A-Za-z0-9._-]`.
fn check_span_name(what: &str, name: &str) -> Result<(), HostError> {
    if name.is_empty()
        || name.len() > trace::MAX_NAME_BYTES
        || !(name.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(HostError::Invalid(format!(
            "{what} {:?}: 1 to {} bytes of [A-Za-z0-9._-]",
            capped(name, 64),
            trace::MAX_NAME_BYTES
        )));
    }
    Ok(())
}

/// An attribute key a filter may set: a valid name outside the proxy's prefixes.
fn check_span_key(key: &str) -> Result<(), HostError> {
    check_span_name("span attribute", key)?;
    if let Some(p) = trace::RESERVED_PREFIXES
        .iter()
        .find(|p| key.starts_with(**p))
    {
        return Err(HostError::Invalid(format!(
            "span attribute {key:?}: keys under {p:?} are the proxy's"
        )));
    }
    Ok(())
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn capped(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
