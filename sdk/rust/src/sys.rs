//! The one place where the SDK reaches the host.
//!
//! [`Host`] mirrors the WIT imports one to one, in SDK types. Inside a component (`wasm32`) the
//! [`Backend`] is the wit-bindgen imports; natively it is the in-process emulator of
//! [`testing`](crate::testing). Everything above this module (argument conversion, the public
//! API, the export glue) is shared by both, so a filter tested natively runs the same code as
//! in the proxy.

use crate::HostError;
use crate::callout::CalloutResponse;
use crate::crypto::{Hash, SignatureAlgorithm};
use crate::http::{BodyKind, HeaderMap};
use crate::kv::{BucketResult, Entry};
use crate::log::Level;

#[cfg(target_arch = "wasm32")]
pub(crate) mod wasm;

/// The host: the WIT imports of `filter-world`, one function each.
pub(crate) trait Host {
    fn method() -> String;
    fn path() -> String;
    fn set_path(path: &str) -> Result<(), HostError>;
    fn authority() -> String;
    fn scheme() -> String;
    fn client_address() -> String;
    fn route_name() -> String;
    fn cluster_name() -> String;
    fn request_id() -> String;
    fn status() -> u16;
    fn set_status(status: u16) -> Result<(), HostError>;

    fn get_header(map: HeaderMap, name: &str) -> Option<String>;
    fn get_header_all(map: HeaderMap, name: &str) -> Vec<String>;
    fn set_header(map: HeaderMap, name: &str, value: &str) -> Result<(), HostError>;
    fn append_header(map: HeaderMap, name: &str, value: &str) -> Result<(), HostError>;
    fn remove_header(map: HeaderMap, name: &str) -> Result<(), HostError>;
    fn headers(map: HeaderMap) -> Vec<(String, String)>;

    fn body(kind: BodyKind) -> Result<Vec<u8>, HostError>;
    fn set_body(kind: BodyKind, bytes: &[u8]) -> Result<(), HostError>;

    fn log(level: Level, message: &str);

    fn now_ms() -> u64;
    fn monotonic_ns() -> u64;
    fn random_bytes(len: u32) -> Vec<u8>;

    fn counter_add(name: &str, labels: &[(&str, &str)], delta: u64) -> Result<(), HostError>;
    fn gauge_set(name: &str, labels: &[(&str, &str)], value: i64) -> Result<(), HostError>;
    fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) -> Result<(), HostError>;

    fn kv_get(ns: &str, key: &str) -> Result<Option<Entry>, HostError>;
    fn kv_set(ns: &str, key: &str, value: &[u8], ttl_ms: u64) -> Result<u64, HostError>;
    fn kv_compare_and_swap(
        ns: &str,
        key: &str,
        expected: u64,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<u64>, HostError>;
    fn kv_delete(ns: &str, key: &str) -> Result<(), HostError>;
    fn kv_increment(ns: &str, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, HostError>;
    fn kv_take_tokens(
        ns: &str,
        key: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: u64,
    ) -> Result<BucketResult, HostError>;

    fn callout_send(
        target: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u32,
    ) -> Result<CalloutResponse, HostError>;

    fn span_sampled() -> bool;
    fn span_set_attribute(key: &str, value: &str) -> Result<(), HostError>;
    fn span_add_event(name: &str, attributes: &[(&str, &str)]) -> Result<(), HostError>;

    /// An HMAC key handle.
    type HmacKey;
    /// A verifying key handle.
    type VerifyingKey;
    fn digest(hash: Hash, data: &[u8]) -> Vec<u8>;
    fn constant_time_equal(a: &[u8], b: &[u8]) -> bool;
    fn hmac_key(hash: Hash, secret: &[u8]) -> Result<Self::HmacKey, HostError>;
    fn hmac_sign(key: &Self::HmacKey, message: &[u8]) -> Vec<u8>;
    fn hmac_verify(key: &Self::HmacKey, message: &[u8], tag: &[u8]) -> bool;
    fn verifying_key_spki(
        alg: SignatureAlgorithm,
        der: &[u8],
    ) -> Result<Self::VerifyingKey, HostError>;
    fn verifying_key_rsa(
        alg: SignatureAlgorithm,
        modulus: &[u8],
        exponent: &[u8],
    ) -> Result<Self::VerifyingKey, HostError>;
    fn verifying_key_raw(
        alg: SignatureAlgorithm,
        key: &[u8],
    ) -> Result<Self::VerifyingKey, HostError>;
    fn verify_signature(key: &Self::VerifyingKey, message: &[u8], signature: &[u8]) -> bool;
}

/// The host this build talks to.
#[cfg(target_arch = "wasm32")]
pub(crate) type Backend = wasm::Wasm;
/// The host this build talks to.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type Backend = crate::testing::emulator::Emulated;
