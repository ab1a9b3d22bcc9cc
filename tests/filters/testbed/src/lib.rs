//! The test filter for Weir's end-to-end tests: one component, many behaviours, chosen by its
//! JSON config so a test can load one module under many configs.
//!
//! | `mode` | phases | behaviour |
//! |---|---|---|
//! | `noop` | request-headers | returns `Continue` |
//! | `header-edit` | request-headers, response-headers | sets `x-testbed: <value>` and appends `x-chain: <tag>`, on the request and on the response |
//! | `respond` | request-headers | answers `status` (default 200) with `body` (default empty), `content-type: text/plain; charset=utf-8` and the extra `headers` (name, value pairs) |
//! | `observe` | request-headers | records `value` (a number as text: `"0.5"`, `"NaN"`, `"inf"`) in histogram `testbed_seconds`; request header `x-observe` gets `ok` or `kind: message` of the host error |
//! | `label-flood` | request-headers | adds 1 to counter `testbed_flood` under `count` new label values (`id` = path + index) and one `label` value of `label_bytes` bytes; request header `x-flood` gets `ok` or the first host error |
//! | `set-header` | request-headers, response-headers | sets `name: value` on the request and on the response (set, append and remove in turn, so `value` ends up set); a host error goes to response header `x-set-error` |
//! | `loop` | request-headers | never returns (the proxy's time budget must end it) |
//! | `membomb` | request-headers | allocates and touches 1 MiB chunks until allocation fails, then traps; `limit_mb` stops (and panics) earlier, for native tests |
//! | `panic` | request-headers | panics (a trap) |
//! | `panic-if` | request-headers | panics when the request carries header `name`, else as `noop` |
//! | `callout` | request-headers | `GET path` (default `/`) to `target`, `timeout_ms` (default 1000); request header `x-callout` gets the status, or `kind: message` of the host error |
//! | `body-upper` | request-body, response-body | buffers each body to its end and uppercases ASCII |
//! | `body-panic` | request-body, response-body | passes chunks on until one contains `panic`, then panics (a trap mid-body) |
//! | `state` | request-headers, response-headers | keeps the request path in the per-request context and returns it as response header `x-state-path`; answers 500 if a context ever arrives non-empty |
//! | `kv-counter` | request-headers, response-headers | increments counter `key` (default `requests`) in KV namespace `ns`; `x-count` (request and response) gets the new value, or `kind: message` of the host error |
//! | `bad-config` | request-headers | rejects the config unless `"fail": false` (then as `noop`) |
//! | `host-calls` | request-headers | makes each call of `calls` (the shared table `tests/filters/host-calls.json`: metrics, KV, header and trace calls with hostile arguments) and answers 200 with one line per call: `ok`, `ok <value>`, or the host error's kind |
//! | `lifecycle` | request-headers, response-headers, log | counts `testbed_contexts_opened` (request-headers), `testbed_logs` (on-log) and `testbed_contexts_done` (when the SDK drops the context at context-done): live contexts are opened − done |
//!
//! Unknown modes and unknown fields are config errors. A host error the mode does not report
//! in a header becomes a `500` local response with body `testbed: <error>`.

use std::time::Duration;

use serde::Deserialize;
use weir_filter::{
    Action, Body, Filter, HostError, LocalResponse, Phases, Request, Response, callout, clock,
    export_filter, kv,
};

/// Which build this is (`x-testbed-build` in header-edit mode): the `v2` feature makes a second,
/// different module from the same source, for hot-swap tests.
pub const BUILD: &str = if cfg!(feature = "v2") { "v2" } else { "v1" };

/// The testbed's config: `{ "mode": "...", ...mode fields }`.
///
/// Modes without fields are empty struct variants, not unit variants: serde ignores unknown
/// fields next to the tag of a unit variant, even with `deny_unknown_fields`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Config {
    /// Does nothing.
    Noop {},
    /// Makes host calls and answers what each returned.
    HostCalls {
        /// The calls, in order.
        calls: Vec<HostCall>,
    },
    /// Edits request and response headers.
    HeaderEdit {
        /// Value of `x-testbed`. Default: `on`.
        #[serde(default = "default_value")]
        value: String,
        /// Value appended to `x-chain`. Default: `testbed`.
        #[serde(default = "default_tag")]
        tag: String,
    },
    /// Answers locally.
    Respond {
        /// Status, 200–599. Default: 200.
        #[serde(default = "default_status")]
        status: u16,
        /// Body text. Default: empty.
        #[serde(default)]
        body: String,
        /// Extra headers. Default: none.
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
    /// Counts contexts opened and done, and on-log calls.
    Lifecycle {},
    /// Creates many series of one counter, and a label of a given size.
    LabelFlood {
        /// New label values per request.
        count: u32,
        /// Size of one more label's value.
        #[serde(default)]
        label_bytes: u32,
    },
    /// Records a histogram observation.
    Observe {
        /// The value, parsed as an f64 (so it can be NaN or infinite).
        value: String,
    },
    /// Sets a header on both messages, reporting a refusal.
    SetHeader {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
    /// Loops forever.
    Loop {},
    /// Allocates until it traps.
    Membomb {
        /// Stop after this many MiB by panicking (for native tests). Default: no limit.
        #[serde(default)]
        limit_mb: Option<u64>,
    },
    /// Panics.
    Panic {},
    /// Panics when the request carries this header.
    PanicIf {
        /// Header name.
        name: String,
    },
    /// Sends a callout.
    Callout {
        /// A granted cluster name or `host:port`.
        target: String,
        /// Path with query. Default: `/`.
        #[serde(default = "default_path")]
        path: String,
        /// Timeout in milliseconds. Default: 1000.
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
    },
    /// Uppercases bodies.
    BodyUpper {},
    /// Panics on the first body chunk that contains `panic`.
    BodyPanic {},
    /// Echoes the request path from per-request state.
    State {},
    /// Counts requests in KV.
    KvCounter {
        /// KV namespace (must be granted).
        ns: String,
        /// Counter key. Default: `requests`.
        #[serde(default = "default_key")]
        key: String,
    },
    /// Rejects its config.
    BadConfig {
        /// Whether to reject. Default: true.
        #[serde(default = "default_fail")]
        fail: bool,
    },
}

fn default_value() -> String {
    "on".to_owned()
}
fn default_tag() -> String {
    "testbed".to_owned()
}
fn default_status() -> u16 {
    200
}
fn default_path() -> String {
    "/".to_owned()
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_key() -> String {
    "requests".to_owned()
}
fn default_fail() -> bool {
    true
}

/// The filter: its config, validated.
#[derive(Debug)]
pub struct Testbed {
    config: Config,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct Context {
    /// `state`: the path seen at request-headers.
    path: Option<String>,
    /// `kv-counter`: what went into the request's `x-count`.
    count: Option<String>,
    /// `set-header`: the host's refusal on the request side.
    set_error: Option<String>,
    /// `lifecycle`: request-headers ran in this context.
    opened: bool,
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.opened {
            let _ = weir_filter::metrics::counter_add("testbed_contexts_done", &[], 1);
        }
    }
}

/// Sets, appends, removes and sets again `name` on a request or response; the first host
/// error, if any.
macro_rules! set_append_remove {
    ($m:expr, $name:expr, $value:expr) => {
        $m.set_header($name, $value)
            .and_then(|()| $m.append_header($name, $value))
            .and_then(|()| $m.remove_header($name))
            .and_then(|()| $m.set_header($name, $value))
            .err()
            .map(|e| error_value(&e))
    };
}

/// A host error as a 500 local response: the testbed never hides one.
fn fail(e: &HostError) -> Action {
    LocalResponse::text(500, format!("testbed: {e}")).into()
}

/// A host error as a header value (control characters, which a header cannot carry, become
/// spaces).
fn error_value(e: &HostError) -> String {
    e.to_string()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// One host call of the shared table (`tests/filters/host-calls.json`), run alike by the real
/// proxy and by each SDK's emulator, so they can be held to one answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCall {
    /// `metrics.counter-add`, `metrics.gauge-set`, `metrics.histogram-observe`, `kv.set`,
    /// `kv.get`, `kv.increment`, `http.set-header`, `http.append-header`, `http.remove-header`,
    /// `http.set-response-header`, `http.append-response-header`, `http.response-header`,
    /// `trace.sampled`, `trace.set-attribute` (`name`, `value`), `trace.add-event` (`name`,
    /// `labels` as its attributes), `crypto.digest` (`alg`, `value`), `crypto.hmac` and
    /// `crypto.hmac-verify` (`alg`, `key` the secret, `value`, `signature`), `crypto.equal`
    /// (`name`, `value`), `crypto.verify` (`alg`, `name` the key form `spki`/`raw`/`rsa`, `key`
    /// in hex, `n:e` for `rsa`, `value`, `signature`), `crypto.key-limit`.
    pub call: String,
    /// A metric's or header's name.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: Vec<(String, String)>,
    /// A number (as text: `"NaN"`, `"-1"`) or a header value or KV value.
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub key: String,
    /// A crypto algorithm's WIT name (`sha256`, `rsa-pss-sha384`).
    #[serde(default)]
    pub alg: String,
    /// A signature or HMAC tag, in hex.
    #[serde(default)]
    pub signature: String,
    /// What the table expects; the filter ignores it.
    #[serde(default)]
    pub expect: String,
}

/// Bytes from hex; anything else is a testbed input error, shown as the empty list.
fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| s.get(2 * i..2 * i + 2))
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl HostCall {
    /// The `crypto.*` calls.
    fn crypto(&self) -> Result<String, HostError> {
        use weir_filter::crypto::{
            self, Hash, HmacKey, MAX_KEYS, SignatureAlgorithm as S, VerifyingKey,
        };
        let hash = match self.alg.as_str() {
            "sha384" => Hash::Sha384,
            "sha512" => Hash::Sha512,
            _ => Hash::Sha256,
        };
        match self.call.as_str() {
            "crypto.digest" => Ok(hex(&crypto::digest(hash, self.value.as_bytes()))),
            "crypto.hmac" => Ok(hex(
                &HmacKey::new(hash, self.key.as_bytes())?.sign(self.value.as_bytes())
            )),
            "crypto.hmac-verify" => Ok(HmacKey::new(hash, self.key.as_bytes())?
                .verify(self.value.as_bytes(), &unhex(&self.signature))
                .to_string()),
            "crypto.equal" => Ok(crypto::constant_time_equal(
                self.name.as_bytes(),
                self.value.as_bytes(),
            )
            .to_string()),
            "crypto.verify" => {
                let alg = match self.alg.as_str() {
                    "rsa-pkcs1-sha384" => S::RsaPkcs1Sha384,
                    "rsa-pkcs1-sha512" => S::RsaPkcs1Sha512,
                    "rsa-pss-sha256" => S::RsaPssSha256,
                    "rsa-pss-sha384" => S::RsaPssSha384,
                    "rsa-pss-sha512" => S::RsaPssSha512,
                    "ecdsa-p256-sha256" => S::EcdsaP256Sha256,
                    "ecdsa-p384-sha384" => S::EcdsaP384Sha384,
                    "ed25519" => S::Ed25519,
                    _ => S::RsaPkcs1Sha256,
                };
                let key = match self.name.as_str() {
                    "spki" => VerifyingKey::from_spki(alg, &unhex(&self.key))?,
                    "rsa" => {
                        let (n, e) = self.key.split_once(':').unwrap_or_default();
                        VerifyingKey::from_rsa_components(alg, &unhex(n), &unhex(e))?
                    }
                    _ => VerifyingKey::from_raw(alg, &unhex(&self.key))?,
                };
                Ok(key
                    .verify(self.value.as_bytes(), &unhex(&self.signature))
                    .to_string())
            }
            // Keys are made until one is refused, then all dropped: how many the bound allowed.
            "crypto.key-limit" => {
                let mut keys = Vec::new();
                while keys.len() <= MAX_KEYS {
                    match HmacKey::new(hash, b"k") {
                        Ok(k) => keys.push(k),
                        Err(_) => break,
                    }
                }
                Ok(keys.len().to_string())
            }
            other => Ok(format!("unknown call {other:?}")),
        }
    }

    /// Makes the call: `ok`, `ok <value>`, or the host error's kind.
    fn run(&self, req: &mut Request) -> String {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let number = || self.value.parse::<f64>().unwrap_or(f64::NAN);
        let unit = |r: Result<(), HostError>| r.map(|()| String::new());
        let result = match self.call.as_str() {
            "metrics.counter-add" => unit(weir_filter::metrics::counter_add(
                &self.name,
                &labels,
                self.value.parse().unwrap_or(1),
            )),
            "metrics.gauge-set" => unit(weir_filter::metrics::gauge_set(
                &self.name,
                &labels,
                self.value.parse().unwrap_or(0),
            )),
            "metrics.histogram-observe" => unit(weir_filter::metrics::histogram_observe(
                &self.name,
                &labels,
                number(),
            )),
            "kv.set" => kv::set(&self.namespace, &self.key, self.value.as_bytes(), None)
                .map(|_| String::new()),
            "kv.get" => kv::get(&self.namespace, &self.key).map(|e| match e {
                Some(e) => String::from_utf8_lossy(&e.value).into_owned(),
                None => "none".to_owned(),
            }),
            "kv.increment" => kv::increment(
                &self.namespace,
                &self.key,
                self.value.parse().unwrap_or(1),
                None,
            )
            .map(|n| n.to_string()),
            "http.set-header" => unit(req.set_header(&self.name, &self.value)),
            "http.append-header" => unit(req.append_header(&self.name, &self.value)),
            "http.remove-header" => unit(req.remove_header(&self.name)),
            "http.set-response-header" => unit(req.set_response_header(&self.name, &self.value)),
            "http.append-response-header" => {
                unit(req.append_response_header(&self.name, &self.value))
            }
            "http.response-header" => Ok(req
                .response_header(&self.name)
                .unwrap_or_else(|| "none".to_owned())),
            "trace.sampled" => Ok(weir_filter::trace::sampled().to_string()),
            "trace.set-attribute" => {
                unit(weir_filter::trace::set_attribute(&self.name, &self.value))
            }
            "trace.add-event" => unit(weir_filter::trace::add_event(&self.name, &labels)),
            call if call.starts_with("crypto.") => self.crypto(),
            other => return format!("unknown call {other:?}"),
        };
        match result {
            Ok(v) if v.is_empty() => "ok".to_owned(),
            Ok(v) => format!("ok {v}"),
            Err(e) => e.kind().to_owned(),
        }
    }
}

/// `Continue`, or the host error as a 500.
fn or_fail(result: Result<(), HostError>) -> Action {
    match result {
        Ok(()) => Action::Continue,
        Err(e) => fail(&e),
    }
}

/// Never returns. The clock import is opaque to the optimizer, so the loop cannot be removed;
/// in the proxy the epoch deadline traps it, natively the harness's time budget panics.
fn spin() -> ! {
    loop {
        std::hint::black_box(clock::monotonic_ns());
    }
}

/// Allocates and touches 1 MiB chunks, keeping them all, until allocation fails (or
/// `limit_mb` is reached); both end in a panic, which in the proxy is a trap.
fn membomb(limit_mb: Option<u64>) -> ! {
    const CHUNK: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let held = hoard.len() as u64;
        if limit_mb.is_some_and(|limit| held >= limit) {
            panic!("testbed: membomb reached limit_mb = {held}");
        }
        let mut chunk = Vec::new();
        if chunk.try_reserve_exact(CHUNK).is_err() {
            panic!("testbed: membomb: allocation failed after {held} MiB");
        }
        // Writing every byte makes the pages real, not just reserved.
        chunk.resize(CHUNK, 0xA5);
        hoard.push(std::hint::black_box(chunk));
    }
}

/// `body-upper`: hold the body until its end, then uppercase it.
fn panic_on_marker(body: &mut Body) -> Action {
    match body.bytes() {
        Ok(b) if b.windows(5).any(|w| w == b"panic") => panic!("testbed: body-panic mode"),
        Ok(_) => Action::Continue,
        Err(e) => fail(&e),
    }
}

fn upper(body: &mut Body, end: bool) -> Action {
    if !end {
        return Action::Buffer;
    }
    let mut bytes = match body.bytes() {
        Ok(bytes) => bytes,
        Err(e) => return fail(&e),
    };
    bytes.make_ascii_uppercase();
    match body.set(bytes) {
        Ok(()) => Action::Continue,
        Err(e) => fail(&e),
    }
}

impl Filter for Testbed {
    type Config = Config;
    type Context = Context;
    /// The most any mode declares; [`phases`](Filter::phases) narrows it per mode.
    const PHASES: Phases = Phases::ALL;

    fn new(config: Config) -> Result<Self, String> {
        match &config {
            Config::BadConfig { fail: true } => {
                return Err(
                    "testbed: bad-config mode rejects its config (set \"fail\": false to accept)"
                        .to_owned(),
                );
            }
            Config::Respond { status, .. } if !(200..=599).contains(status) => {
                return Err(format!("respond: status must be 200-599, got {status}"));
            }
            Config::Callout { target, path, .. } => {
                if target.is_empty() {
                    return Err("callout: target must not be empty".to_owned());
                }
                if !path.starts_with('/') {
                    return Err(format!("callout: path must start with /, got {path:?}"));
                }
            }
            Config::KvCounter { ns, .. } if ns.is_empty() => {
                return Err("kv-counter: ns must not be empty".to_owned());
            }
            _ => {}
        }
        Ok(Self { config })
    }

    /// Only `state` and `kv-counter` keep something per request; the other modes are stateless.
    fn phases(&self) -> Phases {
        match self.config {
            Config::State {} | Config::KvCounter { .. } | Config::SetHeader { .. } => {
                Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS
            }
            Config::Lifecycle {} => {
                Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS | Phases::LOG
            }
            Config::HeaderEdit { .. } => {
                Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS | Phases::STATELESS
            }
            Config::BodyPanic {} => {
                Phases::REQUEST_BODY | Phases::RESPONSE_BODY | Phases::STATELESS
            }
            Config::BodyUpper {} => {
                Phases::REQUEST_BODY | Phases::RESPONSE_BODY | Phases::STATELESS
            }
            Config::Noop {}
            | Config::HostCalls { .. }
            | Config::Respond { .. }
            | Config::Loop {}
            | Config::Membomb { .. }
            | Config::Panic {}
            | Config::PanicIf { .. }
            | Config::Callout { .. }
            | Config::Observe { .. }
            | Config::LabelFlood { .. }
            | Config::BadConfig { .. } => Phases::REQUEST_HEADERS | Phases::STATELESS,
        }
    }

    fn on_request_headers(&self, req: &mut Request, ctx: &mut Context) -> Action {
        match &self.config {
            Config::Noop {}
            | Config::BadConfig { .. }
            | Config::BodyUpper {}
            | Config::BodyPanic {} => Action::Continue,
            Config::HostCalls { calls } => {
                let lines: Vec<String> = calls.iter().map(|c| c.run(req)).collect();
                LocalResponse::new(200)
                    .header("content-type", "text/plain")
                    .body(lines.join("\n"))
                    .into()
            }
            Config::Lifecycle {} => {
                ctx.opened = true;
                or_fail(weir_filter::metrics::counter_add(
                    "testbed_contexts_opened",
                    &[],
                    1,
                ))
            }
            Config::HeaderEdit { value, tag } => or_fail(
                req.set_header("x-testbed", value)
                    .and_then(|()| req.append_header("x-chain", tag))
                    .and_then(|()| req.set_header("x-testbed-build", BUILD)),
            ),
            Config::Respond {
                status,
                body,
                headers,
            } => headers
                .iter()
                .fold(LocalResponse::text(*status, body.clone()), |r, (k, v)| {
                    r.header(k, v)
                })
                .into(),
            Config::SetHeader { name, value } => {
                ctx.set_error = set_append_remove!(req, name, value);
                Action::Continue
            }
            Config::Observe { value } => {
                let v: f64 = value.parse().unwrap_or(f64::NAN);
                let outcome =
                    match weir_filter::metrics::histogram_observe("testbed_seconds", &[], v) {
                        Ok(()) => "ok".to_owned(),
                        Err(e) => error_value(&e),
                    };
                or_fail(req.set_header("x-observe", &outcome))
            }
            Config::LabelFlood { count, label_bytes } => {
                let path = req.path();
                let mut outcome = Ok(());
                for i in 0..*count {
                    let id = format!("{path}-{i}");
                    outcome = outcome.and_then(|()| {
                        weir_filter::metrics::counter_add("testbed_flood", &[("id", &id)], 1)
                    });
                }
                if *label_bytes > 0 {
                    let big = "v".repeat(*label_bytes as usize);
                    outcome = outcome.and_then(|()| {
                        weir_filter::metrics::counter_add("testbed_flood", &[("big", &big)], 1)
                    });
                }
                let outcome = match outcome {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => error_value(&e),
                };
                or_fail(req.set_header("x-flood", &outcome))
            }
            Config::Loop {} => spin(),
            Config::Membomb { limit_mb } => membomb(*limit_mb),
            Config::Panic {} => panic!("testbed: panic mode"),
            Config::PanicIf { name } => {
                if req.header(name).is_some() {
                    panic!("testbed: panic-if mode, {name} present");
                }
                Action::Continue
            }
            Config::Callout {
                target,
                path,
                timeout_ms,
            } => {
                let timeout = Duration::from_millis(*timeout_ms);
                let outcome = match callout::send(target, "GET", path, &[], b"", timeout) {
                    Ok(res) => res.status.to_string(),
                    Err(e) => error_value(&e),
                };
                or_fail(req.set_header("x-callout", &outcome))
            }
            Config::State {} => {
                if let Some(old) = &ctx.path {
                    return LocalResponse::text(
                        500,
                        format!("testbed: context reused (held {old})"),
                    )
                    .into();
                }
                ctx.path = Some(req.path());
                Action::Continue
            }
            Config::KvCounter { ns, key } => {
                let count = match kv::increment(ns, key, 1, None) {
                    Ok(n) => n.to_string(),
                    Err(e) => error_value(&e),
                };
                let action = or_fail(req.set_header("x-count", &count));
                ctx.count = Some(count);
                action
            }
        }
    }

    fn on_request_body(&self, body: &mut Body, end: bool, _ctx: &mut Context) -> Action {
        match self.config {
            Config::BodyUpper {} => upper(body, end),
            Config::BodyPanic {} => panic_on_marker(body),
            _ => Action::Continue,
        }
    }

    fn on_response_headers(&self, res: &mut Response, ctx: &mut Context) -> Action {
        match &self.config {
            Config::HeaderEdit { value, tag } => or_fail(
                res.set_header("x-testbed", value)
                    .and_then(|()| res.append_header("x-chain", tag))
                    .and_then(|()| res.set_header("x-testbed-build", BUILD)),
            ),
            Config::State {} => {
                let path = ctx.path.as_deref().unwrap_or("<none>");
                or_fail(res.set_header("x-state-path", path))
            }
            Config::KvCounter { .. } => match &ctx.count {
                Some(count) => or_fail(res.set_header("x-count", count)),
                None => Action::Continue,
            },
            Config::SetHeader { name, value } => {
                let error = set_append_remove!(res, name, value);
                match ctx.set_error.take().or(error) {
                    Some(e) => or_fail(res.set_header("x-set-error", &e)),
                    None => Action::Continue,
                }
            }
            _ => Action::Continue,
        }
    }

    fn on_response_body(&self, body: &mut Body, end: bool, _ctx: &mut Context) -> Action {
        match self.config {
            Config::BodyUpper {} => upper(body, end),
            Config::BodyPanic {} => panic_on_marker(body),
            _ => Action::Continue,
        }
    }
    fn on_log(&self, _log: &weir_filter::LogView, _ctx: &mut Context) {
        if let Config::Lifecycle {} = self.config {
            let _ = weir_filter::metrics::counter_add("testbed_logs", &[], 1);
        }
    }
}

export_filter!(Testbed);

#[cfg(test)]
mod tests;
