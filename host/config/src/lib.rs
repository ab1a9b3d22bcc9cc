//! Weir's configuration: the YAML schema, parsing with `file:line: field: message` errors, and the
//! semantic checks that need the whole file (names resolve, ranges make sense).
//!
//! Raw file → [`Config`] (this crate) → compiled snapshot (`weir-proxy`). Every struct denies unknown
//! fields: a mistyped key is an error, never a silent default.

#![deny(missing_docs)]

mod error;
mod lines;
mod units;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{ConfigError, Issue};
pub use lines::LineIndex;
pub use lines::{to_yaml, yaml_value};
pub use units::{ByteSize, Percent};
pub use validate::is_tag;

/// The whole proxy configuration, as written in the YAML file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Worker threads for the data path. Default: the number of CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// The admin listener (health, metrics, config). Default: `127.0.0.1:9901`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where to write JSON access log lines. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
    /// W3C Trace Context: continue or start a trace per request and pass it upstream.
    /// Default: off (`traceparent` and `tracestate` pass through untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    /// Edge limits applied to every downstream connection.
    #[serde(default)]
    pub limits: Limits,
    /// How long SIGTERM waits for in-flight requests before exiting. Default: `30s`.
    #[serde(default = "defaults::drain_timeout", with = "units::duration")]
    pub drain_timeout: Duration,
    /// Downstream listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// L7 routes; the most specific match wins, ties go to the earlier route.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Upstream clusters that routes send traffic to.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// WebAssembly filters routes can use, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
    /// Where compiled filters are cached (by content hash). Default: `$XDG_CACHE_HOME/weir`
    /// or `~/.cache/weir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_cache: Option<PathBuf>,
    /// Most filter instances alive at once in the whole process (default 1000). Each is a slot
    /// of the pooling allocator, which reserves address space (not memory) for two linear
    /// memories up front: 4 GiB and a guard each, about 8 GiB per slot, so a guest's memory
    /// accesses need no bounds checks. Where that does not fit (`ulimit -v`, a memory checker)
    /// the proxy warns and falls back to 288 MiB per memory, with bounds checks (slower guests).
    /// Read at start; a change takes a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_instances: Option<u32>,
    /// Where filters' shared state (KV, counters, token buckets) lives. Default: in this process.
    #[serde(default, skip_serializing_if = "StateConfig::is_default")]
    pub state: StateConfig,
}

/// Where filters' shared state lives: in this process (`embedded`), or in Redis, shared by every
/// gateway instance that points at the same server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `embedded` (default) or `redis`.
    #[serde(default)]
    pub backend: StateBackend,
    /// The Redis server, for `backend: redis`: `redis://[user:password@]host:port[/db]`,
    /// `rediss://…` (TLS; see `tls`) or `redis+unix:///path/to/socket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// For `rediss://`: the CA to trust (default: the system's roots) and a client certificate
    /// for servers that require one (`tls-auth-clients yes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<StateTls>,
    /// Connections and the time budget of one operation.
    #[serde(default)]
    pub pool: StatePool,
    /// What a filter's state call does while Redis cannot be reached: `local` (default: use this
    /// process's own store, counted in `weir_state_fallbacks_total`) or `fail` (the call fails
    /// with `failed`, and the filter's own error handling decides).
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Prepended to every Redis key, so several deployments can share one server. Default:
    /// `weir:`.
    #[serde(default = "defaults::key_prefix")]
    pub key_prefix: String,
    /// Token leases: a token-bucket call that goes to Redis also takes a share of the bucket's
    /// burst for this process, and the next calls are served from it without a round trip.
    /// Off by default (every call asks Redis: exact).
    #[serde(default, skip_serializing_if = "TokenLease::is_off")]
    pub lease: TokenLease,
}

/// How much of a token bucket one process may take ahead, and for how long.
///
/// The global limit is never exceeded (leased tokens are taken from the shared bucket first);
/// the cost is that tokens leased to one instance cannot serve another: with N instances, up to
/// `N × share × burst` tokens may sit unused in leases, and a lease's leftover is lost when it
/// expires.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenLease {
    /// Share of the bucket's burst taken ahead per Redis call, from 0 (off) to 0.5. Default: 0.
    pub share: f64,
    /// A lease is used for at most this long. Default: `1s`.
    #[serde(with = "units::duration")]
    pub max_age: Duration,
}

impl Default for TokenLease {
    fn default() -> Self {
        TokenLease {
            share: 0.0,
            max_age: Duration::from_secs(1),
        }
    }
}

impl TokenLease {
    fn is_off(&self) -> bool {
        *self == TokenLease::default()
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Embedded,
            url: None,
            tls: None,
            pool: StatePool::default(),
            on_unavailable: OnUnavailable::Local,
            key_prefix: defaults::key_prefix(),
            lease: TokenLease::default(),
        }
    }
}

impl StateConfig {
    fn is_default(&self) -> bool {
        *self == StateConfig::default()
    }
}

/// TLS to Redis (`rediss://`). Paths are relative to the config file. The server's name (or IP)
/// in the URL is verified against its certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateTls {
    /// PEM file of CA certificates to trust instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM certificate chain presented to the server; needs `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// The shared-state backends.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    /// In this process: fast, but each instance has its own.
    #[default]
    Embedded,
    /// A Redis server (or anything that speaks its protocol and Lua scripting, like Valkey).
    Redis,
}

/// Connections to the state backend.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StatePool {
    /// Connections, each pipelining every request's commands. Default: 4.
    pub size: usize,
    /// Longest wait for one operation; past it the operation counts as unavailable. Default:
    /// `50ms`.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
}

impl Default for StatePool {
    fn default() -> Self {
        StatePool {
            size: 4,
            timeout: Duration::from_millis(50),
        }
    }
}

/// What state calls do while the backend cannot be reached.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Use this process's own store until the backend is back.
    #[default]
    Local,
    /// Fail the call (`failed`).
    Fail,
}

/// A WebAssembly filter: a module, its default config, its budgets and its grants.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Unique name; routes refer to it.
    pub name: String,
    /// The `.wasm` file (a component, or a core module built by one of Weir's SDKs). Relative
    /// to the config file.
    pub module: PathBuf,
    /// The filter's config (any YAML), passed to it as JSON; a route may override keys.
    #[serde(default = "defaults::empty_object")]
    pub config: serde_json::Value,
    /// Budgets.
    #[serde(default)]
    pub limits: FilterLimits,
    /// What happens to a request when the filter traps or breaks a budget. Default:
    /// `fail-closed`.
    #[serde(default)]
    pub on_error: FailurePolicy,
    /// Capabilities the filter may use; everything else is denied.
    #[serde(default)]
    pub grants: Grants,
}

/// A filter's budgets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterLimits {
    /// Linear memory cap per instance; growing past it traps. Default: `16MiB`, at most `256MiB`.
    pub memory: ByteSize,
    /// CPU time one phase call may take (callout waits excluded; time the thread was not
    /// running is not charged); past it the call traps.
    /// Default: `5ms`, at most `60s` ([`MAX_TIME_PER_PHASE`]).
    #[serde(with = "units::duration")]
    pub time_per_phase: Duration,
    /// Most body bytes the filter may hold with `buffer`. Default: `1MiB`.
    pub max_body: ByteSize,
    /// Most instances of one (filter, config) pair; more concurrent requests share them.
    /// Default: `16`.
    pub max_instances: usize,
}

/// Largest `limits.time_per_phase`. Instantiation gets a multiple of it, and a filter that needs
/// more than a minute of CPU per request is a bug, not a budget.
pub const MAX_TIME_PER_PHASE: Duration = Duration::from_secs(60);

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            memory: ByteSize(16 << 20),
            time_per_phase: Duration::from_millis(5),
            max_body: ByteSize(1 << 20),
            max_instances: 16,
        }
    }
}

/// What a filter failure does to the request.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer 503 (with the request id).
    #[default]
    #[serde(rename = "fail-closed", alias = "fail_closed")]
    FailClosed,
    /// Skip the filter for the rest of the request.
    #[serde(rename = "fail-open", alias = "fail_open")]
    FailOpen,
}

/// Capabilities granted to a filter.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Callout targets: cluster names or `host:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callouts: Vec<String>,
    /// Shared key-value namespaces (KV, counters, token buckets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kv: Vec<String>,
}

/// A route's use of a filter: its name, optionally with config keys that override the
/// filter's default config (merged recursively, objects only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterRef {
    /// The filter's name.
    pub name: String,
    /// Keys merged over the filter's config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// The admin listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on. Default: `127.0.0.1:9901`. Use port 0 to pick a free port.
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token every admin request must carry (`Authorization: Bearer ..`), except
    /// `/healthz` and `/ready`. Required when `listen` is not a loopback address. Without it,
    /// the proxy generates one into [`token_file`](Self::token_file) and requires it for every
    /// write (reads stay open on loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Where the generated token is kept when `token` is not set (created mode 0600, reused
    /// across restarts). Relative to the config file. Default: `.weir-admin-token` beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// DNS names the TCP admin listener also answers to in `Host` (say, a name in front of a
    /// non-loopback listener). Always accepted: the listener's own IP, `localhost` and loopback
    /// IPs (any IP when it listens on `0.0.0.0`/`::`), with its port. Any other `Host` is refused
    /// (421), so a web page cannot drive the admin API through DNS rebinding. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Also serve the admin API on this Unix socket (created mode 0600; a stale socket is
    /// replaced). Relative to the config file. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<PathBuf>,
}

/// The generated admin token's file name, beside the config file, when `admin.token_file` is not
/// set.
pub const DEFAULT_ADMIN_TOKEN_FILE: &str = ".weir-admin-token";

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: defaults::admin_listen(),
            token: None,
            token_file: None,
            hosts: Vec::new(),
            unix: None,
        }
    }
}

/// What `GET /config` and other displays show in place of a secret.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// A copy safe to show: the admin token and every filter's config (a filter's own and each
    /// route's override) replaced by [`REDACTED`]. Filter configs are redacted whole, keys
    /// included: a filter may key its secrets (`keys: { <api key>: alice }`).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        if c.admin.token.is_some() {
            c.admin.token = Some(REDACTED.into());
        }
        let hidden = serde_json::Value::String(REDACTED.into());
        for f in &mut c.filters {
            f.config = hidden.clone();
        }
        for r in &mut c.routes {
            for f in &mut r.filters {
                if f.config.is_some() {
                    f.config = Some(hidden.clone());
                }
            }
        }
        if let Some(url) = &mut c.state.url {
            *url = redact_userinfo(url);
        }
        c
    }
}

/// A URL with its user and password (everything before `@` in the authority) replaced.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return REDACTED.into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Where access log lines go: a stream or file, a Kafka topic, or both (at least one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout`, `stderr`, or a file path (appended to). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Each line also produced to a Kafka topic. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaConfig>,
}

/// Access log lines produced to a Kafka topic: batched and compressed by a thread of their own,
/// in bounded memory. When the brokers are slow or down, lines are dropped and counted
/// (`weir_access_log_kafka_dropped_total`); the data path never waits on Kafka.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` (1 to 16); the topic's partition leaders are found from
    /// them.
    pub brokers: Vec<String>,
    /// The topic (1 to 249 of `[A-Za-z0-9._-]`).
    pub topic: String,
    /// The record key: `route` (a route's lines stay in order on one partition), `request_id`
    /// (spread evenly), or `none` (batches go round the partitions). Default: `route`.
    #[serde(default)]
    pub key: KafkaKey,
    /// Acknowledgements a batch waits for: `0` (none: sent is counted sent), `1` (the leader)
    /// or `all` (every in-sync replica). Default: `1`.
    #[serde(default)]
    pub acks: KafkaAcks,
    /// `none`, `gzip` or `lz4`. Default: `lz4`.
    #[serde(default)]
    pub compression: KafkaCompression,
    /// Lines waiting at most; past that, new lines are dropped and counted
    /// (`reason="queue_full"`). Default: `16384`.
    #[serde(default = "defaults::max_queue_lines")]
    pub max_queue_lines: usize,
    /// Bytes of lines per produce request at most. Default: `1MiB`.
    #[serde(default = "defaults::max_batch_bytes")]
    pub max_batch_bytes: ByteSize,
    /// The longest a line waits for its batch to fill. Default: `100ms`.
    #[serde(default = "defaults::linger", with = "units::duration")]
    pub linger: Duration,
    /// Time allowed to connect, and for each request to be answered; a batch that fails or
    /// times out is dropped and counted (`reason="send_failed"`), not retried into a growing
    /// backlog. Default: `5s`.
    #[serde(default = "defaults::export_timeout", with = "units::duration")]
    pub timeout: Duration,
    /// The client id brokers see. Default: `weir`.
    #[serde(default = "defaults::kafka_client_id")]
    pub client_id: String,
}

/// What a Kafka record's key is.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    /// The route's name.
    #[default]
    Route,
    /// The request id.
    RequestId,
    /// No key.
    None,
}

/// Acknowledgements a produce request waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KafkaAcks {
    /// None: the broker does not answer.
    Zero,
    /// The partition leader's.
    #[default]
    One,
    /// Every in-sync replica's.
    All,
}

impl KafkaAcks {
    /// The protocol's `acks` value.
    pub fn wire(self) -> i16 {
        match self {
            KafkaAcks::Zero => 0,
            KafkaAcks::One => 1,
            KafkaAcks::All => -1,
        }
    }
}

impl Serialize for KafkaAcks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KafkaAcks::Zero => s.serialize_u8(0),
            KafkaAcks::One => s.serialize_u8(1),
            KafkaAcks::All => s.serialize_str("all"),
        }
    }
}

impl<'de> Deserialize<'de> for KafkaAcks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(0) => Ok(KafkaAcks::Zero),
            Raw::N(1) => Ok(KafkaAcks::One),
            Raw::N(-1) => Ok(KafkaAcks::All),
            Raw::S(s) if s == "all" => Ok(KafkaAcks::All),
            Raw::S(s) if s == "0" => Ok(KafkaAcks::Zero),
            Raw::S(s) if s == "1" => Ok(KafkaAcks::One),
            _ => Err(serde::de::Error::custom("acks must be 0, 1 or all")),
        }
    }
}

/// How record batches are compressed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCompression {
    /// Not compressed.
    None,
    /// gzip.
    Gzip,
    /// LZ4 (frame format): fast, about half the size of JSON lines.
    #[default]
    Lz4,
}

/// Distributed tracing (W3C Trace Context).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The share of new traces (requests without a valid `traceparent`) that are sampled, 0 to
    /// 1, decided from the trace id so every hop that uses the same rule agrees. A request that
    /// carries a valid `traceparent` keeps its caller's decision (parent-based sampling).
    /// Default: 1.
    #[serde(default = "defaults::sample_ratio")]
    pub sample_ratio: f64,
    /// Whether a request's valid `traceparent` decides if it is sampled (the W3C and
    /// OpenTelemetry default). `false`: the trace is still continued, but `sample_ratio`
    /// decides for it too, so clients at the edge cannot have every request they send traced
    /// and exported. Default: true.
    #[serde(default = "defaults::yes")]
    pub parent_based: bool,
    /// The `service.name` exported spans carry. Default: `weir`.
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
    /// Export sampled requests' spans over OTLP/HTTP (protobuf). Default: none (trace context
    /// is still continued and propagated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpConfig>,
}

/// Where and how spans are exported: batched by a thread of their own, off the data path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The receiver's base URL, `http://host:port`. With `http/protobuf` (an OpenTelemetry
    /// Collector's port 4318) spans are POSTed to `<endpoint>/v1/traces`; with `grpc` (port
    /// 4317, HTTP/2 without TLS) to the `TraceService/Export` method, and the URL takes no path.
    pub endpoint: String,
    /// `http/protobuf` or `grpc`. Default: `http/protobuf`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Spans waiting for export at most; past that, new spans are dropped and counted
    /// (`weir_trace_spans_dropped_total{reason="queue_full"}`). Default: `8192`.
    #[serde(default = "defaults::max_queue_spans")]
    pub max_queue_spans: usize,
    /// Spans per export request at most. Default: `512`.
    #[serde(default = "defaults::max_batch_spans")]
    pub max_batch_spans: usize,
    /// The longest a span waits to be exported when batches do not fill. Default: `1s`.
    #[serde(default = "defaults::flush_interval", with = "units::duration")]
    pub flush_interval: Duration,
    /// Time allowed for one export request; a batch that fails or times out is dropped and
    /// counted (`reason="export_failed"`), never retried into a growing backlog. Default: `5s`.
    #[serde(default = "defaults::export_timeout", with = "units::duration")]
    pub timeout: Duration,
}

/// Edge limits. Every field has a default that is safe for the open internet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line + headers) accepted; larger gets 431. Default: `64KiB`.
    pub max_request_header_bytes: ByteSize,
    /// Most request headers accepted; more gets 431. Default: `100`.
    pub max_request_headers: usize,
    /// Time allowed to receive a complete request head (slowloris guard). Default: `10s`.
    #[serde(with = "units::duration")]
    pub request_head_timeout: Duration,
    /// A downstream connection with no request in flight and no bytes moving is closed after
    /// this long. Default: `60s`.
    #[serde(with = "units::duration")]
    pub idle_timeout: Duration,
    /// Most concurrent downstream connections per listener; further ones wait in the accept
    /// queue. Default: `10000`.
    pub max_connections: usize,
    /// HTTP/2 streams a client may have open at once on one connection. Default: `256`.
    pub h2_max_concurrent_streams: u32,
    /// Largest request body accepted; larger gets 413. Default: unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<ByteSize>,
    /// Longest wait for the next piece of a request body; expiry answers 408 (or cuts the
    /// request, if the upstream already answered). Default: `60s`.
    #[serde(with = "units::duration")]
    pub request_body_timeout: Duration,
    /// Longest a response write may stay blocked on a client that does not read; expiry closes
    /// the connection. Default: `60s`.
    #[serde(with = "units::duration")]
    pub send_timeout: Duration,
    /// `Upgrade` protocols passed through to the upstream (compared ignoring case). `h2c` is
    /// refused: it would turn the upstream connection into an unrouted tunnel.
    /// Default: `[websocket]`.
    pub upgrade_protocols: Vec<String>,
    /// An upgraded connection (a WebSocket, say) with no bytes moving either way is closed
    /// after this long. Default: `5m`.
    #[serde(with = "units::duration")]
    pub tunnel_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_bytes: ByteSize(64 * 1024),
            max_request_headers: 100,
            request_head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            h2_max_concurrent_streams: 256,
            max_request_body_bytes: None,
            request_body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            upgrade_protocols: vec!["websocket".into()],
            tunnel_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// A downstream listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// Address to listen on; port 0 picks a free port (printed at start).
    pub listen: SocketAddr,
    /// `http` (HTTP/1.1 and h2c) or `https` (TLS with ALPN h2 / http/1.1).
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Certificates for `https`; required there, refused for `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// How request paths are normalized before routing (and forwarded).
    #[serde(default, skip_serializing_if = "PathPolicy::is_default")]
    pub paths: PathPolicy,
    /// Peers (`10.0.0.0/8`, `::1/128`, or a bare address) whose forwarding headers
    /// (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`) are believed and appended to. From every other
    /// peer they are replaced. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Connections the kernel holds for the listener before it accepts them (`listen(2)`'s
    /// backlog, capped by `net.core.somaxconn`). Default 4096; a connection that finds it full
    /// waits for a SYN retransmit. Bound at start.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Which server reads plain HTTP/1.1 on this listener: `native` (Weir's own: the
    /// connection's task reads each head with httparse and writes the response itself; HTTP/2,
    /// upgrades and `Expect: 100-continue` are handed to hyper on the same connection) or
    /// `hyper`. TLS listeners use hyper. Default: `native`. Bound at start.
    #[serde(default, skip_serializing_if = "Http1Server::is_default")]
    pub server: Http1Server,
    /// `tcp` listeners: the cluster every connection is relayed to (balanced over its
    /// endpoints; hashing balancers hash the client's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `tls_passthrough` listeners: the ClientHello's server name picks the cluster; exact
    /// names before `*.suffix` wildcards (longest first), `*` takes the rest (and hellos
    /// without a server name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SniRoute>,
    /// The PROXY protocol: `accept` it from `trusted_proxies` (any listener), `send` it to
    /// upstreams (`tcp` and `tls_passthrough` listeners).
    #[serde(default, skip_serializing_if = "ProxyProtocolConfig::is_default")]
    pub proxy_protocol: ProxyProtocolConfig,
    /// `tcp` and `tls_passthrough` listeners: a connection that moves no byte either way for
    /// this long is closed. Default: `10m`.
    #[serde(
        default,
        with = "units::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// `tcp` and `tls_passthrough` listeners on Linux: relay with `splice(2)` through a pipe,
    /// without copying through user space. `false` copies. Default: `true`.
    #[serde(default = "defaults::yes", skip_serializing_if = "defaults::is_true")]
    pub splice: bool,
}

/// One `sni` entry of a `tls_passthrough` listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    /// `api.example.com`, `*.example.com` (any name ending in `.example.com`) or `*`.
    pub server_names: Vec<String>,
    /// The cluster that gets these connections.
    pub cluster: String,
}

/// `listeners[].proxy_protocol`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyProtocolConfig {
    /// Peers in `trusted_proxies` must open each connection with a PROXY header of this
    /// version (`v1`, `v2` or `any`); its source address is then the client's. Peers not
    /// trusted are served as if this were not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept: Option<ProxyAccept>,
    /// Open each upstream connection with a PROXY header (`v1` or `v2`) naming the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send: Option<ProxyVersion>,
}

impl ProxyProtocolConfig {
    fn is_default(&self) -> bool {
        *self == ProxyProtocolConfig::default()
    }
}

/// A PROXY protocol version to send.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProxyVersion {
    /// The text form.
    V1,
    /// The binary form.
    V2,
}

/// The PROXY protocol versions a listener accepts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProxyAccept {
    /// Only the text form.
    V1,
    /// Only the binary form.
    V2,
    /// Either.
    Any,
}

/// See [`ListenerConfig::server`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Http1Server {
    /// Weir's own HTTP/1.1 server.
    #[default]
    Native,
    /// hyper's server.
    Hyper,
}

impl Http1Server {
    fn is_default(&self) -> bool {
        *self == Http1Server::default()
    }
}

fn default_backlog() -> u32 {
    4096
}

/// A listener's path normalization options (see the README's "Security model").
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PathPolicy {
    /// `%2F` and `%5C` in a path: `reject` (400, the default), `keep` (forwarded encoded, not a
    /// separator for routing) or `decode` (to `/`, before `..` is resolved).
    pub escaped_slashes: EscapedSlashesAction,
    /// `;` in a path: `reject` (400, the default), `strip` (`;...` removed from each segment
    /// before `..` is resolved) or `keep` (an ordinary character).
    pub parameters: PathParametersAction,
}

impl PathPolicy {
    fn is_default(&self) -> bool {
        *self == PathPolicy::default()
    }
}

/// See [`PathPolicy::escaped_slashes`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashesAction {
    /// 400.
    #[default]
    Reject,
    /// Forwarded as `%2F` / `%5C`.
    Keep,
    /// Decoded to `/`.
    Decode,
}

/// See [`PathPolicy::parameters`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PathParametersAction {
    /// 400.
    #[default]
    Reject,
    /// Removed from every segment.
    Strip,
    /// Kept as ordinary characters.
    Keep,
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address (a single host).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong: not an address, a prefix longer than the address, or
    /// host bits set beyond the prefix.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR (like 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network() != addr {
            return Err(format!(
                "{s:?} has host bits set beyond /{prefix} (did you mean {}/{prefix}?)",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    fn bits(addr: std::net::IpAddr) -> u128 {
        match addr {
            std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
            std::net::IpAddr::V6(a) => u128::from(a),
        }
    }

    fn mask(&self) -> u128 {
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        let host_bits = u32::from(width - self.prefix);
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        all.checked_shl(host_bits).map_or(0, |m| m & all)
    }

    fn network(&self) -> std::net::IpAddr {
        let n = Self::bits(self.addr) & self.mask();
        match self.addr {
            std::net::IpAddr::V4(_) => std::net::IpAddr::V4((n as u32).into()),
            std::net::IpAddr::V6(_) => std::net::IpAddr::V6(n.into()),
        }
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts
    /// as its IPv4 address.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.addr.is_ipv4() && Self::bits(ip) & self.mask() == Self::bits(self.addr)
    }
}

/// Downstream protocol of a listener.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerProtocol {
    /// Plain text: HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[default]
    Http,
    /// TLS 1.2/1.3 termination; HTTP/2 or HTTP/1.1 chosen by ALPN.
    Https,
    /// Layer 4: each connection's bytes are relayed to an endpoint of `cluster`.
    Tcp,
    /// Layer 4 with TLS left to the upstream: the ClientHello's server name (SNI) picks the
    /// cluster (`sni`), then the bytes are relayed untouched.
    TlsPassthrough,
}

impl ListenerProtocol {
    /// Whether connections are relayed as bytes (`tcp`, `tls_passthrough`).
    pub fn is_l4(self) -> bool {
        matches!(
            self,
            ListenerProtocol::Tcp | ListenerProtocol::TlsPassthrough
        )
    }
}

/// TLS settings of an `https` listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chains with their keys (PEM). The one whose names match the client's SNI is
    /// used; the first is the fallback when SNI is absent or matches none.
    pub certificates: Vec<CertificateConfig>,
}

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file with the certificate chain, leaf first. Relative to the config file.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1). Relative to the config file.
    pub key: PathBuf,
}

/// An L7 route: a match and where matching requests go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// What requests this route takes. An empty match takes everything.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// The cluster that serves matching requests.
    pub cluster: String,
    /// Changes to the request before it goes upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Filters run for this route, in order (responses in reverse order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterRef>,
    /// Overrides the cluster's request timeout for this route.
    #[serde(
        default,
        with = "units::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Retry this route's non-idempotent requests (POST, PATCH, ...) also after their bytes
    /// reached an upstream, as the cluster's `retries.on` allows — for APIs whose writes are
    /// safe to repeat (idempotency keys). Default: false: only a POST that never reached an
    /// upstream is retried.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_non_idempotent: bool,
    /// Whether the route serves requests. A disabled route still takes the requests it
    /// matches (they do not fall through to another route) and answers them with
    /// `disabled_response`, without running filters or contacting the cluster. Switched live
    /// with `POST /routes/{name}/disable` and `/enable` (or by tag). Default: true.
    #[serde(default = "defaults::yes", skip_serializing_if = "defaults::is_true")]
    pub enabled: bool,
    /// Labels for switching groups of routes at once (`POST /routes/disable?tag=beta`): 1 to 64
    /// letters, digits, `_`, `-`, `.` or `:` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// What a disabled route answers. Default: `404` with `{"error":"not found"}` (the
    /// client cannot tell a switched-off API from one that never existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_response: Option<DisabledResponse>,
}

/// The answer of a disabled route: a status and a JSON body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DisabledResponse {
    /// 400 to 599. Default: 404.
    pub status: u16,
    /// Any JSON value, sent as `application/json`. Default: `{"error": "<the status's reason
    /// phrase, lowercase>"}`, such as `{"error":"service unavailable"}` for 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

/// What a disabled route without `disabled_response` answers.
impl Default for DisabledResponse {
    fn default() -> Self {
        DisabledResponse {
            status: 404,
            body: None,
        }
    }
}

/// The conditions a request must meet, all of them, to take a route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// `api.example.com` (exact, case-insensitive) or `*.example.com` (any subdomain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path, exactly (query excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A path prefix (plain string prefix: write `/v1/` to leave out `/v1x`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// A regular expression the whole path must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// `false`: `path`, `path_prefix` and `path_regex` ignore ASCII case (for upstreams that
    /// serve `/ADMIN` as `/admin`). Default: `true`.
    #[serde(default = "defaults::yes", skip_serializing_if = "defaults::is_true")]
    pub case_sensitive: bool,
    /// Allowed methods; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header name → value rule; all must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueRule>,
    /// Query parameter name → value rule; all must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, ValueRule>,
}

impl Default for RouteMatch {
    fn default() -> Self {
        RouteMatch {
            host: None,
            path: None,
            path_prefix: None,
            path_regex: None,
            case_sensitive: true,
            methods: Vec::new(),
            headers: BTreeMap::new(),
            query: BTreeMap::new(),
        }
    }
}

/// How a header or query value is matched: a plain string is an exact match; otherwise one of
/// `{ exact: .. }`, `{ regex: .. }` (whole value), `{ present: true }`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueRule {
    /// The value equals this string.
    Exact(String),
    /// The whole value matches this regular expression.
    Regex(String),
    /// The header or parameter is present, with any value.
    Present(bool),
}

/// Request changes made before forwarding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched `path_prefix` with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Replaces the Host (HTTP/1.1) / :authority (HTTP/2) sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// An upstream cluster: endpoints, how to pick one, and how to talk to them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique name, used by routes, logs and metrics.
    pub name: String,
    /// Load balancing policy. Default: `round_robin`.
    #[serde(default)]
    pub lb: LbPolicy,
    /// What `ring_hash` and `maglev` hash on. Default: `client_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// Upstream protocol. Default: `http1`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// The HTTP/1.1 client: `native` (Weir's own: the request's task writes the request and
    /// reads the response on a pooled connection it holds) or `hyper` (hyper-util's pooled
    /// client, a connection task per upstream connection). `h2` clusters and protocol upgrades
    /// always use hyper. Default: `native`.
    #[serde(default, skip_serializing_if = "Http1Client::is_default")]
    pub client: Http1Client,
    /// TLS to the upstream; when present, connections use TLS (with ALPN for `h2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// The endpoints (`host:port`).
    pub endpoints: Vec<EndpointConfig>,
    /// Timeouts for upstream connections and requests.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Passive health checking: endpoints that fail to connect are skipped for a while.
    #[serde(default)]
    pub health: PassiveHealth,
    /// Retrying a failed try on another endpoint.
    #[serde(default)]
    pub retries: Retries,
    /// Circuit breaking: caps on what the cluster may have open at once.
    #[serde(default)]
    pub limits: ClusterLimits,
    /// Idle pooled connections kept per endpoint. Default: `64`.
    #[serde(default = "defaults::max_idle_per_endpoint")]
    pub max_idle_per_endpoint: usize,
    /// An endpoint back in rotation (its ejection over, or its probes passing again) takes a
    /// share of traffic that grows from 10% to full over this time, so a backend back from an
    /// outage is not flooded while its caches and pools are cold. Not for picks by hash key
    /// (`ring_hash`, `maglev`). Default: none (a full share at once).
    #[serde(
        default,
        with = "units::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub slow_start: Option<Duration>,
}

/// Load balancing policies.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// In turn, proportionally to weights, smoothly interleaved.
    WeightedRoundRobin,
    /// Power of two choices on in-flight requests per weight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring (`hash_on` decides the key).
    RingHash,
    /// Maglev consistent hashing (`hash_on` decides the key).
    Maglev,
}

impl LbPolicy {
    /// Whether the policy uses a hash key.
    pub fn is_hash(self) -> bool {
        matches!(self, LbPolicy::RingHash | LbPolicy::Maglev)
    }
}

/// The key a hashing balancer uses: `client_ip`, `{ header: NAME }` or `{ cookie: NAME }`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// A request header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

/// Protocol spoken to upstream endpoints.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2: cleartext prior knowledge (h2c) without `tls`, ALPN `h2` with `tls`.
    H2,
}

/// See [`ClusterConfig::client`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Http1Client {
    /// Weir's own HTTP/1.1 client.
    #[default]
    Native,
    /// hyper-util's legacy pooled client.
    Hyper,
}

impl Http1Client {
    fn is_default(&self) -> bool {
        *self == Http1Client::default()
    }
}

/// TLS to upstream endpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM file of CA certificates to trust. Required unless `insecure_skip_verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Server name sent as SNI and verified. Default: the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Do not verify the upstream certificate (testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One upstream endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `ip:port` or `hostname:port` (resolved at connect time).
    pub address: String,
    /// Relative weight for weighted policies. Default: `1`.
    #[serde(default = "defaults::weight")]
    pub weight: u32,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP (and TLS) connect. Expiry → 504. Default: `1s`.
    #[serde(with = "units::duration")]
    pub connect: Duration,
    /// From sending the request to receiving the response head. Expiry → 504. Default: `15s`.
    #[serde(with = "units::duration")]
    pub request: Duration,
    /// Longest wait for the next piece of the response body once the head is in; expiry cuts
    /// the response (the client sees it end early). Default: `60s`.
    #[serde(with = "units::duration")]
    pub body: Duration,
    /// Idle pooled upstream connections are closed after this long. Default: `60s`.
    #[serde(with = "units::duration")]
    pub idle: Duration,
    /// HTTP/2 upstreams: a PING on each connection this often (also while idle), so a
    /// black-holed connection is found and closed instead of timing requests out. Default: `30s`.
    #[serde(with = "units::duration")]
    pub ping_interval: Duration,
    /// HTTP/2 upstreams: a PING not answered within this closes the connection. Default: `10s`.
    #[serde(with = "units::duration")]
    pub ping_timeout: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(15),
            body: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
        }
    }
}

/// Retries: a try that fails in one of the `on` ways is repeated on an endpoint not tried yet
/// (so a one-endpoint cluster never retries) when that is safe — the request never reached the upstream (`connect-failure`), or its method is
/// idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE) — its body (if any) is
/// still held, the route's deadline has time left, and the retry budget allows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retries {
    /// Tries in all, the first included (1 to 10); `1` turns retries off. Default: `2`.
    pub attempts: u32,
    /// Which failures are retried. Default: `[connect-failure, reset]` (nginx's
    /// `proxy_next_upstream error`).
    pub on: Vec<RetryOn>,
    /// Each try's own time to the response head (the route's timeout still bounds them all);
    /// expiry is a `timeout` failure. Default: none.
    #[serde(with = "units::opt_duration", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Retries in flight may be at most this share of the cluster's requests in flight (ten
    /// are always allowed), so a failing cluster cannot cause a retry storm. Default: `20%`.
    pub budget: units::Percent,
    /// A request body is kept for a retry while it is at most this large; a larger body is
    /// retried only if no byte of it was sent. Default: `64KiB`.
    pub buffer: ByteSize,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure, RetryOn::Reset],
            per_try_timeout: None,
            budget: units::Percent(20),
            buffer: ByteSize(64 << 10),
        }
    }
}

/// Circuit breaking (`clusters[].limits`): past a cap a request is answered 503 at once
/// instead of piling onto a struggling cluster. Default: no caps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterLimits {
    /// Requests in flight to the cluster (from routing to the end of the response body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<usize>,
    /// Upstream connections open to the cluster's endpoints together (pooled idle or busy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// With `max_connections` reached, this many requests may wait (up to the cluster's
    /// `timeouts.request`) for a pooled connection to come free or a place to connect; more
    /// are answered 503. Default: `1024`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<usize>,
}

/// A kind of failed try.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection could not be made (refused, unreachable, TLS, connect timeout): the
    /// request never left the proxy, so any method is retried.
    ConnectFailure,
    /// The connection closed or reset before a response head.
    Reset,
    /// `per_try_timeout` expired.
    Timeout,
    /// The upstream answered 502, 503 or 504.
    GatewayError,
    /// The upstream answered any 5xx.
    #[serde(rename = "5xx")]
    Status5xx,
}

/// Health checking: passive (outlier ejection from live traffic) and, optionally, active probes.
/// An endpoint takes traffic while it is neither ejected nor failing its probes; when every
/// endpoint is out, traffic goes to all of them (panic mode) rather than nowhere.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealth {
    /// Failed tries in a row (no connection, a reset or timeout before the head, a 502/503/504)
    /// that eject an endpoint. `0` disables ejection. Default: `3`.
    pub max_failures: u32,
    /// Other 5xx answers (500, 501, 505, ...) in a row that eject an endpoint. `0` disables.
    /// Default: `5`.
    pub max_5xx: u32,
    /// How long a first ejection lasts; each ejection that follows without a success between
    /// lasts twice the one before, up to `max_cooldown`. Default: `10s`.
    #[serde(with = "units::duration")]
    pub cooldown: Duration,
    /// The longest ejection. Default: `5m`.
    #[serde(with = "units::duration")]
    pub max_cooldown: Duration,
    /// At most this share of the endpoints is ejected at once (one always may be). Default:
    /// `50%`.
    pub max_ejected: units::Percent,
    /// Active probes of every endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveHealth>,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            max_failures: 3,
            max_5xx: 5,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(300),
            max_ejected: units::Percent(50),
            active: None,
        }
    }
}

/// Active health checks (`health.active`): each endpoint is probed on its own jittered timer;
/// `unhealthy` failed probes in a row take it out, `healthy` passed probes in a row bring it
/// back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveHealth {
    /// The path to GET. Default: `/healthz`.
    pub path: String,
    /// The statuses that pass. Default: any 2xx or 3xx.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<u16>,
    /// Only connect (TCP, and TLS when the cluster uses it): a connection passes. Default: false.
    pub tcp: bool,
    /// Time between probes of one endpoint (±10% jitter, so endpoints are not probed in step).
    /// Default: `5s`.
    #[serde(with = "units::duration")]
    pub interval: Duration,
    /// A probe not answered within this fails. Default: `2s`.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// Passed probes in a row that bring an endpoint back. Default: `2`.
    pub healthy: u32,
    /// Failed probes in a row that take an endpoint out. Default: `3`.
    pub unhealthy: u32,
    /// The Host header of HTTP probes. Default: the endpoint's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Default for ActiveHealth {
    fn default() -> Self {
        ActiveHealth {
            path: "/healthz".into(),
            statuses: Vec::new(),
            tcp: false,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy: 2,
            unhealthy: 3,
            host: None,
        }
    }
}

mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;

    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9901))
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn sample_ratio() -> f64 {
        1.0
    }
    pub fn service_name() -> String {
        "weir".into()
    }
    pub fn max_queue_spans() -> usize {
        8192
    }
    pub fn max_batch_spans() -> usize {
        512
    }
    pub fn flush_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn export_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn max_queue_lines() -> usize {
        16 * 1024
    }
    pub fn max_batch_bytes() -> crate::ByteSize {
        crate::ByteSize(1 << 20)
    }
    pub fn linger() -> Duration {
        Duration::from_millis(100)
    }
    pub fn kafka_client_id() -> String {
        "weir".to_owned()
    }
    pub fn is_true(b: &bool) -> bool {
        *b
    }
    pub fn max_idle_per_endpoint() -> usize {
        64
    }
    pub fn key_prefix() -> String {
        "weir:".into()
    }
    pub fn empty_object() -> serde_json::Value {
        serde_json::Value::Object(Default::default())
    }
}

/// A parsed and validated config, with what is needed to report later errors against its source.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration.
    pub config: Config,
    /// The file it came from (for messages and for resolving relative paths).
    pub file: PathBuf,
    /// Where each field stands in the file.
    pub lines: LineIndex,
}

impl LoadedConfig {
    /// Reads, parses and validates a config file.
    pub fn from_file(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_str(path, &text)
    }

    /// Parses and validates config text; `file` names it in messages.
    pub fn from_str(file: &Path, text: &str) -> Result<LoadedConfig, ConfigError> {
        let (value, lines) = lines::parse(text).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            line: Some(e.line),
            issue: Issue {
                path: String::new(),
                message: e.message,
            },
        })?;
        let config: Config = serde_path_to_error::deserialize(value)
            .map_err(|e| error::from_serde(file, &lines, &e))?;
        let issues = validate::validate(&config);
        if !issues.is_empty() {
            return Err(ConfigError::Invalid {
                file: file.to_path_buf(),
                lines,
                issues,
            });
        }
        Ok(LoadedConfig {
            config,
            file: file.to_path_buf(),
            lines,
        })
    }

    /// Resolves a path written in the config relative to the config file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match self.file.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// Builds an error for a problem found after parsing (say, a certificate that does not load),
    /// located at `path` (e.g. `listeners[1].tls.certificates[0].cert`).
    pub fn error_at(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            lines: self.lines.clone(),
            issues: vec![Issue::new(path, message)],
        }
    }
}

/// Merges `over` into `base`: objects recursively, anything else replaced.
pub fn merge_json(base: &serde_json::Value, over: &serde_json::Value) -> serde_json::Value {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                let merged = match out.get(k) {
                    Some(prev) => merge_json(prev, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            serde_json::Value::Object(out)
        }
        _ => over.clone(),
    }
}

/// Suggests the closest of `candidates` to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// How spans travel to the receiver.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC (unary `Export` calls over HTTP/2 without TLS).
    #[serde(rename = "grpc")]
    Grpc,
}

/// The path of OTLP/gRPC's trace export method.
pub const OTLP_GRPC_TRACES_PATH: &str =
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The URL an OTLP/HTTP receiver takes traces at: `endpoint` (`http://host:port`, optionally
/// with a base path) followed by `/v1/traces`. Credentials, queries and `https` are refused:
/// the config is served by `GET /config`, and export goes to a collector on a trusted network.
pub fn otlp_traces_url(endpoint: &str, protocol: OtlpProtocol) -> Result<http::Uri, String> {
    // No message echoes the endpoint: a refused one may carry a password or an API key.
    if endpoint.starts_with("https://") {
        return Err(
            "https is not supported yet: export over http to a collector on a trusted network"
                .into(),
        );
    }
    let rest = endpoint
        .strip_prefix("http://")
        .ok_or("must start with http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() || authority.contains('@') {
        return Err("must name host:port (and no credentials)".into());
    }
    if path.contains(['?', '#']) {
        return Err("must not have a query or fragment".into());
    }
    let path = path.trim_end_matches('/');
    let full = match protocol {
        OtlpProtocol::HttpProtobuf => format!("http://{authority}{path}/v1/traces"),
        OtlpProtocol::Grpc if path.is_empty() => {
            format!("http://{authority}{OTLP_GRPC_TRACES_PATH}")
        }
        OtlpProtocol::Grpc => return Err("a grpc endpoint takes no path".into()),
    };
    let uri: http::Uri = full.parse().map_err(|e| format!("is not a URL: {e}"))?;
    if uri.port_u16().is_none() {
        return Err("must name a port (OTLP/HTTP's is 4318, OTLP/gRPC's 4317)".into());
    }
    Ok(uri)
}
