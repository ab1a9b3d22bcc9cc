//! The real host: wit-bindgen's imports and exports, and the conversions between their types
//! and the SDK's.

use std::cell::RefCell;

use super::Host;
use crate::callout::CalloutResponse;
use crate::http::{BodyKind, HeaderMap};
use crate::kv::{BucketResult, Entry};
use crate::log::Level;
use crate::runtime::Runtime;
use crate::{Action, Filter, HostError, Phases};

/// Generated bindings for `weir:filter/filter-world`.
///
/// `unsafe` is allowed here only: the canonical-ABI glue wit-bindgen generates is unsafe by
/// nature (raw pointers into linear memory, `export_name` functions). Nothing else in the SDK is.
#[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "filter-world",
        // The export macro is expanded in the filter's crate by `export_filter!`, which must
        // not need its own wit-bindgen dependency.
        pub_export_macro: true,
        export_macro_name: "__weir_filter_export",
        default_bindings_module: "weir_filter::__private::bindings",
        runtime_path: "weir_filter::__private::wit_bindgen::rt",
    });
}

use crate::crypto::{Hash, SignatureAlgorithm};
use bindings::exports::weir::filter::filter as wexp;
use bindings::weir::filter::{callout, clock, crypto, http, kv, log, metrics, trace, types};

/// [`Host`] over the component's imports.
pub(crate) struct Wasm;

fn map(map: HeaderMap) -> types::HeaderMap {
    match map {
        HeaderMap::Request => types::HeaderMap::Request,
        HeaderMap::Response => types::HeaderMap::Response,
    }
}

fn kind(kind: BodyKind) -> types::BodyKind {
    match kind {
        BodyKind::Request => types::BodyKind::Request,
        BodyKind::Response => types::BodyKind::Response,
    }
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|&(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

impl From<types::HostError> for HostError {
    fn from(e: types::HostError) -> Self {
        match e {
            types::HostError::Denied(m) => Self::Denied(m),
            types::HostError::Unavailable(m) => Self::Unavailable(m),
            types::HostError::Invalid(m) => Self::Invalid(m),
            types::HostError::Failed(m) => Self::Failed(m),
        }
    }
}

fn hash(h: Hash) -> crypto::HashAlgorithm {
    match h {
        Hash::Sha256 => crypto::HashAlgorithm::Sha256,
        Hash::Sha384 => crypto::HashAlgorithm::Sha384,
        Hash::Sha512 => crypto::HashAlgorithm::Sha512,
    }
}

fn signature(a: SignatureAlgorithm) -> crypto::SignatureAlgorithm {
    use SignatureAlgorithm as A;
    use crypto::SignatureAlgorithm as W;
    match a {
        A::RsaPkcs1Sha256 => W::RsaPkcs1Sha256,
        A::RsaPkcs1Sha384 => W::RsaPkcs1Sha384,
        A::RsaPkcs1Sha512 => W::RsaPkcs1Sha512,
        A::RsaPssSha256 => W::RsaPssSha256,
        A::RsaPssSha384 => W::RsaPssSha384,
        A::RsaPssSha512 => W::RsaPssSha512,
        A::EcdsaP256Sha256 => W::EcdsaP256Sha256,
        A::EcdsaP384Sha384 => W::EcdsaP384Sha384,
        A::Ed25519 => W::Ed25519,
    }
}

impl Host for Wasm {
    type HmacKey = crypto::HmacKey;
    type VerifyingKey = crypto::VerifyingKey;

    fn digest(h: Hash, data: &[u8]) -> Vec<u8> {
        crypto::digest(hash(h), data)
    }
    fn constant_time_equal(a: &[u8], b: &[u8]) -> bool {
        crypto::constant_time_equal(a, b)
    }
    fn hmac_key(h: Hash, secret: &[u8]) -> Result<Self::HmacKey, HostError> {
        Ok(crypto::HmacKey::create(hash(h), secret)?)
    }
    fn hmac_sign(key: &Self::HmacKey, message: &[u8]) -> Vec<u8> {
        key.sign(message)
    }
    fn hmac_verify(key: &Self::HmacKey, message: &[u8], tag: &[u8]) -> bool {
        key.verify(message, tag)
    }
    fn verifying_key_spki(
        alg: SignatureAlgorithm,
        der: &[u8],
    ) -> Result<Self::VerifyingKey, HostError> {
        Ok(crypto::VerifyingKey::from_spki(signature(alg), der)?)
    }
    fn verifying_key_rsa(
        alg: SignatureAlgorithm,
        modulus: &[u8],
        exponent: &[u8],
    ) -> Result<Self::VerifyingKey, HostError> {
        Ok(crypto::VerifyingKey::from_rsa_components(
            signature(alg),
            modulus,
            exponent,
        )?)
    }
    fn verifying_key_raw(
        alg: SignatureAlgorithm,
        key: &[u8],
    ) -> Result<Self::VerifyingKey, HostError> {
        Ok(crypto::VerifyingKey::from_raw(signature(alg), key)?)
    }
    fn verify_signature(key: &Self::VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
        key.verify(message, signature)
    }

    fn method() -> String {
        http::method()
    }
    fn path() -> String {
        http::path()
    }
    fn set_path(path: &str) -> Result<(), HostError> {
        Ok(http::set_path(path)?)
    }
    fn authority() -> String {
        http::authority()
    }
    fn scheme() -> String {
        http::scheme()
    }
    fn client_address() -> String {
        http::client_address()
    }
    fn route_name() -> String {
        http::route_name()
    }
    fn cluster_name() -> String {
        http::cluster_name()
    }
    fn request_id() -> String {
        http::request_id()
    }
    fn status() -> u16 {
        http::status()
    }
    fn set_status(status: u16) -> Result<(), HostError> {
        Ok(http::set_status(status)?)
    }

    fn get_header(m: HeaderMap, name: &str) -> Option<String> {
        http::get_header(map(m), name)
    }
    fn get_header_all(m: HeaderMap, name: &str) -> Vec<String> {
        http::get_header_all(map(m), name)
    }
    fn set_header(m: HeaderMap, name: &str, value: &str) -> Result<(), HostError> {
        Ok(http::set_header(map(m), name, value)?)
    }
    fn append_header(m: HeaderMap, name: &str, value: &str) -> Result<(), HostError> {
        Ok(http::append_header(map(m), name, value)?)
    }
    fn remove_header(m: HeaderMap, name: &str) -> Result<(), HostError> {
        Ok(http::remove_header(map(m), name)?)
    }
    fn headers(m: HeaderMap) -> Vec<(String, String)> {
        http::headers(map(m))
    }

    fn body(k: BodyKind) -> Result<Vec<u8>, HostError> {
        Ok(http::body(kind(k))?)
    }
    fn set_body(k: BodyKind, bytes: &[u8]) -> Result<(), HostError> {
        Ok(http::set_body(kind(k), bytes)?)
    }

    fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => types::Level::Trace,
            Level::Debug => types::Level::Debug,
            Level::Info => types::Level::Info,
            Level::Warn => types::Level::Warn,
            Level::Error => types::Level::Error,
        };
        log::write(level, message);
    }

    fn now_ms() -> u64 {
        clock::now_ms()
    }
    fn monotonic_ns() -> u64 {
        clock::monotonic_ns()
    }
    fn random_bytes(len: u32) -> Vec<u8> {
        clock::random_bytes(len)
    }

    fn span_sampled() -> bool {
        trace::sampled()
    }
    fn span_set_attribute(key: &str, value: &str) -> Result<(), HostError> {
        Ok(trace::set_attribute(key, value)?)
    }
    fn span_add_event(name: &str, attributes: &[(&str, &str)]) -> Result<(), HostError> {
        Ok(trace::add_event(name, &pairs(attributes))?)
    }

    fn counter_add(name: &str, labels: &[(&str, &str)], delta: u64) -> Result<(), HostError> {
        Ok(metrics::counter_add(name, &pairs(labels), delta)?)
    }
    fn gauge_set(name: &str, labels: &[(&str, &str)], value: i64) -> Result<(), HostError> {
        Ok(metrics::gauge_set(name, &pairs(labels), value)?)
    }
    fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) -> Result<(), HostError> {
        Ok(metrics::histogram_observe(name, &pairs(labels), value)?)
    }

    fn kv_get(ns: &str, key: &str) -> Result<Option<Entry>, HostError> {
        Ok(kv::get(ns, key)?.map(|e| Entry {
            value: e.value,
            version: e.version,
        }))
    }
    fn kv_set(ns: &str, key: &str, value: &[u8], ttl_ms: u64) -> Result<u64, HostError> {
        Ok(kv::set(ns, key, value, ttl_ms)?)
    }
    fn kv_compare_and_swap(
        ns: &str,
        key: &str,
        expected: u64,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<u64>, HostError> {
        Ok(kv::compare_and_swap(ns, key, expected, value, ttl_ms)?)
    }
    fn kv_delete(ns: &str, key: &str) -> Result<(), HostError> {
        Ok(kv::delete(ns, key)?)
    }
    fn kv_increment(ns: &str, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, HostError> {
        Ok(kv::increment(ns, key, delta, ttl_ms)?)
    }
    fn kv_take_tokens(
        ns: &str,
        key: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: u64,
    ) -> Result<BucketResult, HostError> {
        let r = kv::take_tokens(ns, key, rate, period_ms, burst, cost)?;
        Ok(BucketResult {
            allowed: r.allowed,
            remaining: r.remaining,
            retry_after: std::time::Duration::from_millis(r.retry_after_ms),
            reset: std::time::Duration::from_millis(r.reset_ms),
        })
    }

    fn callout_send(
        target: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<CalloutResponse, HostError> {
        let r = callout::send(target, method, path, &pairs(headers), body, timeout_ms)?;
        Ok(CalloutResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }
}

/// The exported `filter` interface, as `export_filter!` sees it.
pub use wexp::Guest;
/// WIT `phases`.
pub type WitPhases = types::Phases;
/// WIT `action`.
pub type WitAction = types::Action;
/// WIT `config-error`.
pub type WitConfigError = types::ConfigError;

fn phases(p: Phases) -> WitPhases {
    let mut out = WitPhases::empty();
    for (sdk, wit) in [
        (Phases::REQUEST_HEADERS, WitPhases::REQUEST_HEADERS),
        (Phases::REQUEST_BODY, WitPhases::REQUEST_BODY),
        (Phases::RESPONSE_HEADERS, WitPhases::RESPONSE_HEADERS),
        (Phases::RESPONSE_BODY, WitPhases::RESPONSE_BODY),
        (Phases::LOG, WitPhases::LOG),
        (Phases::STATELESS, WitPhases::STATELESS),
    ] {
        if p.contains(sdk) {
            out |= wit;
        }
    }
    out
}

fn action(a: Action) -> WitAction {
    match a {
        Action::Continue => WitAction::Continue,
        Action::Buffer => WitAction::Buffer,
        Action::Respond(r) => WitAction::Respond(types::LocalResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }),
    }
}

/// Sends panic messages to the proxy's log (through the `log` import) before the trap: the
/// proxy gives filters no usable stderr, so without this a trap would say only "unreachable".
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info.payload_as_str().unwrap_or("(non-string payload)");
            let line = match info.location() {
                Some(at) => format!("filter panicked at {at}: {message}"),
                None => format!("filter panicked: {message}"),
            };
            log::write(types::Level::Error, &line);
            previous(info);
        }));
    });
}

/// One component's filter instance: what `configure` stored, in a `thread_local` the
/// `export_filter!` expansion declares (a component instance is single-threaded).
pub struct Slot<F: Filter>(RefCell<Option<Runtime<F>>>);

impl<F: Filter> Default for Slot<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Filter> Slot<F> {
    /// An unconfigured slot.
    pub const fn new() -> Self {
        Self(RefCell::new(None))
    }

    /// WIT `configure`: replaces the instance (the host calls it once per instance).
    pub fn configure(&self, config: &str) -> Result<WitPhases, WitConfigError> {
        install_panic_hook();
        let runtime =
            Runtime::<F>::configure(config).map_err(|e| WitConfigError { message: e.message })?;
        let declared = phases(runtime.phases());
        *self.0.borrow_mut() = Some(runtime);
        Ok(declared)
    }

    fn with<R>(&self, phase: &str, f: impl FnOnce(&mut Runtime<F>) -> R) -> R {
        let mut slot = self.0.borrow_mut();
        match slot.as_mut() {
            Some(runtime) => f(runtime),
            // A host bug, not a filter one: trapping is the only honest answer.
            None => panic!("weir-filter: {phase} called before configure succeeded"),
        }
    }

    /// WIT `on-request-headers`.
    pub fn on_request_headers(&self, context: u32) -> WitAction {
        action(self.with("on-request-headers", |r| r.on_request_headers(context)))
    }

    /// WIT `on-request-body`.
    pub fn on_request_body(&self, context: u32, end: bool) -> WitAction {
        action(self.with("on-request-body", |r| r.on_request_body(context, end)))
    }

    /// WIT `on-response-headers`.
    pub fn on_response_headers(&self, context: u32) -> WitAction {
        action(self.with("on-response-headers", |r| r.on_response_headers(context)))
    }

    /// WIT `on-response-body`.
    pub fn on_response_body(&self, context: u32, end: bool) -> WitAction {
        action(self.with("on-response-body", |r| r.on_response_body(context, end)))
    }

    /// WIT `on-log`.
    pub fn on_log(&self, context: u32) {
        self.with("on-log", |r| r.on_log(context));
    }

    /// WIT `context-done`.
    pub fn context_done(&self, context: u32) {
        self.with("context-done", |r| r.context_done(context));
    }
}
