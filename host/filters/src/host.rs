//! The host side of the WIT imports: what a filter can see and do, checked against the phase
//! that is running and the capabilities its config grants.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::weir::filter::{
    callout, clock, http as whttp, kv, log, metrics, trace, types,
};
use crate::budget::Budget;
use crate::module::RuntimeInner;
use crate::pool::PoolShared;
use crate::series::{Kind, Refused};
use crate::state::{State, StateError};

type HostError = types::HostError;

/// Facts about the request that filters can read but not change. Kept as the proxy has them
/// (shared bytes, an address), and made text only when a filter asks: most filtered requests
/// never read most of them.
#[derive(Debug, Clone)]
pub struct Props {
    /// Authority the client asked for (empty when none).
    pub authority: HeaderValue,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Client address.
    pub client: Option<std::net::SocketAddr>,
    /// Matched route.
    pub route: Arc<str>,
    /// Its cluster.
    pub cluster: Arc<str>,
    /// The request id.
    pub request_id: HeaderValue,
}

impl Default for Props {
    fn default() -> Props {
        Props {
            authority: HeaderValue::from_static(""),
            scheme: "",
            client: None,
            route: Arc::from(""),
            cluster: Arc::from(""),
            request_id: HeaderValue::from_static(""),
        }
    }
}

impl Props {
    /// The request id as text (empty if it is not visible ASCII, which the proxy's ids are).
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }
}

/// The request/response state a phase call works on. The proxy moves it into the store for the
/// call and takes it back after (moves, no copies).
#[derive(Debug, Default)]
pub struct Exchange {
    /// Request method.
    pub method: http::Method,
    /// Path with query as it will be sent upstream.
    pub path: String,
    /// Set when a filter changed the path.
    pub path_changed: bool,
    /// Request headers (as they will go upstream).
    pub request_headers: HeaderMap,
    /// Response status (0 before a response exists).
    pub status: u16,
    /// Response headers. Before there is a response (the request phases), the headers the
    /// filters set on the response to come: [`set_response_headers`] puts them on whatever
    /// response the client gets.
    pub response_headers: HeaderMap,
    /// Body bytes of the running body phase.
    pub body: Vec<u8>,
    /// Read-only facts.
    pub props: Arc<Props>,
    /// The request's deadline: binding an instance, and callouts, end by then (a callout's own
    /// timeout is cut to what is left).
    pub deadline: Option<tokio::time::Instant>,
    /// Set for a request whose trace is exported: what becomes of the filters in its spans.
    pub trace: Option<Box<SpanNotes>>,
}

/// Puts the headers the request phases set on the response (`pending`) onto the response the
/// client gets. On the upstream's response (`replace`), each name in `pending` replaces that
/// name's values, as Envoy's `response_headers_to_add` with overwrite and nginx's `add_header`
/// do. A response made here (a filter's local response, the proxy's error) keeps its own
/// headers: only names it does not set are added, so a filter answering 429 after another
/// filter set `RateLimit-*` has the last word. Lets a filter that only needs the request phase
/// (a rate limit's `RateLimit-*` headers) stay a single guest call per request.
pub fn set_response_headers(res: &mut HeaderMap, pending: HeaderMap, replace: bool) {
    let mut name: Option<HeaderName> = None;
    // The first value of each name comes with the name; the others with `None`.
    for (n, value) in pending {
        match n {
            Some(n) => {
                if replace || !res.contains_key(&n) {
                    res.insert(n.clone(), value);
                    name = Some(n);
                } else {
                    name = None;
                }
            }
            None => {
                if let Some(n) = &name {
                    res.append(n.clone(), value);
                }
            }
        }
    }
}

/// Phase runs recorded per request at most; a streamed body's phases past that are not.
pub const MAX_PHASE_RUNS: usize = 64;
/// Attributes all filters together may set on a request's span.
pub const MAX_SPAN_ATTRIBUTES: usize = 32;
/// Events all filters together may add to a request's span.
pub const MAX_SPAN_EVENTS: usize = 32;
/// Attributes one event may carry.
pub const MAX_EVENT_ATTRIBUTES: usize = 16;
/// Longest attribute key or event name, in bytes.
pub const MAX_SPAN_NAME_BYTES: usize = 128;
/// Longest attribute value kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_SPAN_VALUE_BYTES: usize = 512;
/// Attribute key prefixes the proxy's own span attributes use: a filter cannot set these.
pub const RESERVED_SPAN_PREFIXES: [&str; 7] = [
    "http.", "url.", "server.", "client.", "network.", "error.", "weir.",
];

/// What the filters of a request whose trace is exported leave for its spans.
#[derive(Debug, Default)]
pub struct SpanNotes {
    /// Each filter phase as it ran (at most [`MAX_PHASE_RUNS`]).
    pub phase_runs: Vec<PhaseRun>,
    /// Attributes for the request's span, in the order first set.
    pub attributes: Vec<(String, String)>,
    /// Events for the request's span.
    pub events: Vec<SpanEvent>,
}

/// An event a filter added to the request's span.
#[derive(Debug, Clone)]
pub struct SpanEvent {
    /// The filter that added it.
    pub filter: Arc<str>,
    pub name: String,
    pub at: std::time::Instant,
    pub attributes: Vec<(String, String)>,
}

/// One filter phase as it ran, for the request's trace.
#[derive(Debug, Clone)]
pub struct PhaseRun {
    /// The filter's name.
    pub filter: Arc<str>,
    /// `request-headers`, `request-body`, `response-headers` or `response-body`.
    pub phase: &'static str,
    pub start: std::time::Instant,
    pub end: std::time::Instant,
    /// `continue`, `buffer`, `respond`, or `failed: <kind>`.
    pub outcome: String,
}

/// A response made by a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

/// Which call is running, for permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Configure,
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    Log,
}

impl Phase {
    /// The phase's name in the WIT.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Configure => "configure",
            Phase::RequestHeaders => "request-headers",
            Phase::RequestBody => "request-body",
            Phase::ResponseHeaders => "response-headers",
            Phase::ResponseBody => "response-body",
            Phase::Log => "log",
        }
    }

    fn is_request(self) -> bool {
        matches!(self, Phase::RequestHeaders | Phase::RequestBody)
    }
}

/// Memory budget: growing linear memory past the cap traps (and is recorded as a breach).
pub(crate) struct MemLimiter {
    pub cap: usize,
    pub breached: bool,
    /// Linear memory the instance has now (wasm memories only grow).
    pub size: usize,
}

impl wasmtime::ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.breached = true;
            wasmtime::bail!(
                "memory budget of {} bytes exceeded (wanted {desired})",
                self.cap
            );
        }
        self.size = desired;
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Everything a store of one filter instance carries.
pub(crate) struct HostState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    /// Crypto keys in `table` (at most `weir_crypto::MAX_KEYS_PER_INSTANCE`).
    pub(crate) keys: usize,
    pub limiter: MemLimiter,
    pub ex: Exchange,
    pub phase: Phase,
    pub shared: Arc<PoolShared>,
    /// Time budget of the running call.
    pub budget: Budget,
    /// Callouts made by the running call (at most [`MAX_CALLOUTS_PER_CALL`]).
    pub callouts: u32,
    /// Series this instance has written, resolved (see [`HostState::series`]).
    series: Vec<Resolved>,
}

/// A series a filter instance wrote before: its call, and where its value lives.
struct Resolved {
    kind: Kind,
    name: String,
    labels: Vec<(String, String)>,
    series: weir_observe::FilterSeries,
}

/// Most series one instance keeps resolved; past this, its other series are looked up on
/// every write (filters write a handful: decisions by outcome, a latency).
const RESOLVED_SERIES: usize = 32;
/// Longest series (name and labels, in bytes) an instance keeps resolved: what the cache holds
/// outside the guest's memory limit stays small (32 × 256 bytes), whatever labels a filter uses.
const RESOLVED_SERIES_BYTES: usize = 256;

/// Most callouts one phase call may make: each holds the instance (and the request) while it
/// waits.
pub(crate) const MAX_CALLOUTS_PER_CALL: u32 = 8;

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    pub fn new(shared: Arc<PoolShared>) -> HostState {
        // A WASI context with nothing in it: no preopens, no env, no args, no sockets. Guest
        // stdout/stderr are discarded (filters log through the `log` interface).
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            keys: 0,
            limiter: MemLimiter {
                cap: shared.spec.memory,
                breached: false,
                size: 0,
            },
            ex: Exchange::default(),
            phase: Phase::Configure,
            budget: Budget::new(shared.spec.time_per_phase, shared.runtime.watchdog.clone()),
            callouts: 0,
            series: Vec::new(),
            shared,
        }
    }

    fn map(&mut self, map: types::HeaderMap, write: bool) -> Result<&mut HeaderMap, HostError> {
        match map {
            types::HeaderMap::Request => {
                if write && !self.phase.is_request() {
                    return Err(HostError::Unavailable(
                        "request headers can only be changed in request phases".into(),
                    ));
                }
                if self.phase == Phase::Configure {
                    return Err(HostError::Unavailable("no request during configure".into()));
                }
                Ok(&mut self.ex.request_headers)
            }
            // In the request phases this is the headers to set on the response to come (see
            // [`set_response_headers`]); from the response phases on, the response's.
            types::HeaderMap::Response => match self.phase {
                Phase::Configure => {
                    Err(HostError::Unavailable("no request during configure".into()))
                }
                Phase::Log if write => Err(HostError::Unavailable(
                    "headers are read-only in on-log".into(),
                )),
                _ => Ok(&mut self.ex.response_headers),
            },
        }
    }

    fn granted_kv(&self, ns: &str) -> Result<(), HostError> {
        if self.shared.spec.grants.kv.iter().any(|g| g == ns) {
            Ok(())
        } else {
            Err(HostError::Denied(format!(
                "kv namespace {ns:?} is not granted to filter {:?}",
                self.shared.spec.filter
            )))
        }
    }
}

fn lossy(v: &HeaderValue) -> String {
    match v.to_str() {
        Ok(s) => s.to_string(),
        // Header values may carry UTF-8 (obs-text); hand them over as text, not as an error.
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    }
}

fn header_name(name: &str) -> Result<HeaderName, HostError> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| HostError::Invalid(format!("invalid header name {name:?}")))
}

/// A header name a filter may change: valid, and not one of [`crate::FRAMING_HEADERS`].
fn writable_header(name: &str) -> Result<HeaderName, HostError> {
    let n = header_name(name)?;
    if crate::FRAMING_HEADERS.contains(&n.as_str()) {
        return Err(HostError::Invalid(format!(
            "{} is a framing or hop-by-hop header: the proxy sets it",
            n.as_str()
        )));
    }
    Ok(n)
}

fn header_value(value: &str) -> Result<HeaderValue, HostError> {
    HeaderValue::from_bytes(value.as_bytes())
        .map_err(|_| HostError::Invalid(format!("invalid header value {value:?}")))
}

/// Most headers in the list of one host call (a callout's request headers).
pub const MAX_CALL_HEADERS: usize = 256;
/// Most header lines a filter may grow a header map to with `set-header` and `append-header`
/// (a map that arrived larger may still be changed, just not grown).
pub const MAX_MAP_HEADERS: usize = 1024;
/// Most bytes of names and values a filter may grow a header map (or a callout's headers) to.
pub const MAX_HEADER_BYTES: usize = 256 << 10;

fn header_bytes<'a>(h: impl Iterator<Item = (&'a str, usize)>) -> (usize, usize) {
    h.fold((0, 0), |(lines, bytes), (n, v)| {
        (lines + 1, bytes + n.len() + v)
    })
}

/// Refuses `name: value` added to `m` (replacing the values of `name` when `replace`) if it
/// grows the map past [`MAX_MAP_HEADERS`] lines or [`MAX_HEADER_BYTES`] bytes.
fn grows_within(
    m: &HeaderMap,
    replace: bool,
    name: &HeaderName,
    value: &HeaderValue,
) -> Result<(), Refused> {
    let (lines, bytes) = header_bytes(m.iter().map(|(n, v)| (n.as_str(), v.len())));
    let (gone_lines, gone_bytes) = if replace {
        header_bytes(m.get_all(name).iter().map(|v| (name.as_str(), v.len())))
    } else {
        (0, 0)
    };
    let new_lines = lines - gone_lines + 1;
    let new_bytes = bytes - gone_bytes + name.as_str().len() + value.len();
    if new_lines > MAX_MAP_HEADERS && new_lines > lines {
        return Err(Refused {
            limit: Some("header_lines"),
            message: format!("a header map may hold at most {MAX_MAP_HEADERS} lines"),
        });
    }
    if new_bytes > MAX_HEADER_BYTES && new_bytes > bytes {
        return Err(Refused {
            limit: Some("header_bytes"),
            message: format!(
                "a header map may hold at most {MAX_HEADER_BYTES} bytes of names and values"
            ),
        });
    }
    Ok(())
}

impl HostState {
    /// A header bound as the filter sees it (`invalid`), counted on `/metrics`.
    fn header_refused(&self, r: Refused) -> HostError {
        if let Some(limit) = r.limit {
            (self.shared.runtime.registry).filter_limit_hit(&self.shared.spec.filter, limit);
        }
        HostError::Invalid(r.message)
    }
}

impl types::Host for HostState {}

impl whttp::Host for HostState {
    fn method(&mut self) -> wasmtime::Result<String> {
        Ok(self.ex.method.as_str().to_string())
    }
    fn path(&mut self) -> wasmtime::Result<String> {
        Ok(self.ex.path.clone())
    }
    fn set_path(&mut self, path: String) -> wasmtime::Result<Result<(), HostError>> {
        if !self.phase.is_request() {
            return Ok(Err(HostError::Unavailable(
                "the path can only be changed in request phases".into(),
            )));
        }
        if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
            return Ok(Err(HostError::Invalid(format!("invalid path {path:?}"))));
        }
        self.ex.path = path;
        self.ex.path_changed = true;
        Ok(Ok(()))
    }
    fn authority(&mut self) -> wasmtime::Result<String> {
        Ok(self
            .ex
            .props
            .authority
            .to_str()
            .unwrap_or_default()
            .to_string())
    }
    fn scheme(&mut self) -> wasmtime::Result<String> {
        Ok(self.ex.props.scheme.to_string())
    }
    fn client_address(&mut self) -> wasmtime::Result<String> {
        Ok(self
            .ex
            .props
            .client
            .map(|a| a.to_string())
            .unwrap_or_default())
    }
    fn route_name(&mut self) -> wasmtime::Result<String> {
        Ok(self.ex.props.route.to_string())
    }
    fn cluster_name(&mut self) -> wasmtime::Result<String> {
        Ok(self.ex.props.cluster.to_string())
    }
    fn request_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.ex.props.request_id().to_string())
    }
    fn status(&mut self) -> wasmtime::Result<u16> {
        Ok(self.ex.status)
    }
    fn set_status(&mut self, status: u16) -> wasmtime::Result<Result<(), HostError>> {
        if self.phase != Phase::ResponseHeaders {
            return Ok(Err(HostError::Unavailable(
                "the status can only be changed in on-response-headers".into(),
            )));
        }
        if !(200..=599).contains(&status) {
            return Ok(Err(HostError::Invalid(format!(
                "status {status} is not in 200..=599"
            ))));
        }
        self.ex.status = status;
        Ok(Ok(()))
    }
    fn get_header(
        &mut self,
        map: types::HeaderMap,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self
            .map(map, false)
            .ok()
            .and_then(|m| m.get(name.as_str()).map(lossy)))
    }
    fn get_header_all(
        &mut self,
        map: types::HeaderMap,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        Ok(self
            .map(map, false)
            .map(|m| m.get_all(name.as_str()).iter().map(lossy).collect())
            .unwrap_or_default())
    }
    fn set_header(
        &mut self,
        map: types::HeaderMap,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), HostError>> {
        Ok((|| {
            let (n, v) = (writable_header(&name)?, header_value(&value)?);
            let m = self.map(map, true)?;
            if let Err(b) = grows_within(m, true, &n, &v) {
                return Err(self.header_refused(b));
            }
            m.insert(n, v);
            Ok(())
        })())
    }
    fn append_header(
        &mut self,
        map: types::HeaderMap,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), HostError>> {
        Ok((|| {
            let (n, v) = (writable_header(&name)?, header_value(&value)?);
            let m = self.map(map, true)?;
            if let Err(b) = grows_within(m, false, &n, &v) {
                return Err(self.header_refused(b));
            }
            m.append(n, v);
            Ok(())
        })())
    }
    fn remove_header(
        &mut self,
        map: types::HeaderMap,
        name: String,
    ) -> wasmtime::Result<Result<(), HostError>> {
        Ok((|| {
            let n = writable_header(&name)?;
            self.map(map, true)?.remove(n);
            Ok(())
        })())
    }
    fn headers(&mut self, map: types::HeaderMap) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self
            .map(map, false)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.as_str().to_string(), lossy(v)))
                    .collect()
            })
            .unwrap_or_default())
    }
    fn body(&mut self, kind: types::BodyKind) -> wasmtime::Result<Result<Vec<u8>, HostError>> {
        let ok = matches!(
            (kind, self.phase),
            (types::BodyKind::Request, Phase::RequestBody)
                | (types::BodyKind::Response, Phase::ResponseBody)
        );
        if !ok {
            return Ok(Err(HostError::Unavailable(
                "the body is only readable in its own body phase".into(),
            )));
        }
        Ok(Ok(self.ex.body.clone()))
    }
    fn set_body(
        &mut self,
        kind: types::BodyKind,
        bytes: Vec<u8>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        let ok = matches!(
            (kind, self.phase),
            (types::BodyKind::Request, Phase::RequestBody)
                | (types::BodyKind::Response, Phase::ResponseBody)
        );
        if !ok {
            return Ok(Err(HostError::Unavailable(
                "the body can only be replaced in its own body phase".into(),
            )));
        }
        self.ex.body = bytes;
        Ok(Ok(()))
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        let filter = &*self.shared.spec.filter;
        let id = self.ex.props.request_id();
        match level {
            types::Level::Trace => tracing::trace!(filter, request_id = %id, "{message}"),
            types::Level::Debug => tracing::debug!(filter, request_id = %id, "{message}"),
            types::Level::Info => tracing::info!(filter, request_id = %id, "{message}"),
            types::Level::Warn => tracing::warn!(filter, request_id = %id, "{message}"),
            types::Level::Error => tracing::error!(filter, request_id = %id, "{message}"),
        }
        Ok(())
    }
}

/// A span attribute key or event name a filter may use: 1–[`MAX_SPAN_NAME_BYTES`] bytes of
/// `[A-Za-z0-9._-]`.
fn span_name(what: &str, name: &str) -> Result<(), HostError> {
    if name.is_empty()
        || name.len() > MAX_SPAN_NAME_BYTES
        || !(name.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(HostError::Invalid(format!(
            "{what} {:?}: 1 to {MAX_SPAN_NAME_BYTES} bytes of [A-Za-z0-9._-]",
            capped(name, 64)
        )));
    }
    Ok(())
}

/// An attribute key a filter may set: a valid name outside [`RESERVED_SPAN_PREFIXES`].
fn span_key(key: &str) -> Result<(), HostError> {
    span_name("span attribute", key)?;
    if let Some(p) = RESERVED_SPAN_PREFIXES.iter().find(|p| key.starts_with(**p)) {
        return Err(HostError::Invalid(format!(
            "span attribute {key:?}: keys under {p:?} are the proxy's"
        )));
    }
    Ok(())
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn capped(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl HostState {
    /// The request's span notes, when its trace is exported and still open to filters.
    fn span_notes(&mut self) -> Result<Option<&mut SpanNotes>, HostError> {
        match self.phase {
            Phase::Configure => Err(HostError::Unavailable("no request during configure".into())),
            Phase::Log => Err(HostError::Unavailable(
                "the request's span has been exported before on-log".into(),
            )),
            _ => Ok(self.ex.trace.as_deref_mut()),
        }
    }

    /// A span bound as the filter sees it (`invalid`), counted on `/metrics`.
    fn span_refused(&self, limit: &'static str, message: String) -> HostError {
        (self.shared.runtime.registry).filter_limit_hit(&self.shared.spec.filter, limit);
        HostError::Invalid(message)
    }
}

impl trace::Host for HostState {
    fn sampled(&mut self) -> wasmtime::Result<bool> {
        Ok(self.span_notes().is_ok_and(|n| n.is_some()))
    }

    fn set_attribute(
        &mut self,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(e) = span_key(&key) {
            return Ok(Err(e));
        }
        let notes = match self.span_notes() {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(Ok(())),
            Err(e) => return Ok(Err(e)),
        };
        let value = capped(&value, MAX_SPAN_VALUE_BYTES).to_owned();
        if let Some(kept) = notes.attributes.iter_mut().find(|(k, _)| *k == key) {
            kept.1 = value;
            return Ok(Ok(()));
        }
        if notes.attributes.len() >= MAX_SPAN_ATTRIBUTES {
            return Ok(Err(self.span_refused(
                "span_attributes",
                format!(
                    "a request's span takes at most {MAX_SPAN_ATTRIBUTES} attributes from filters"
                ),
            )));
        }
        notes.attributes.push((key, value));
        Ok(Ok(()))
    }

    fn add_event(
        &mut self,
        name: String,
        attributes: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if let Err(e) = span_name("span event", &name) {
            return Ok(Err(e));
        }
        if attributes.len() > MAX_EVENT_ATTRIBUTES {
            return Ok(Err(self.span_refused(
                "span_event_attributes",
                format!("a span event carries at most {MAX_EVENT_ATTRIBUTES} attributes"),
            )));
        }
        for (k, _) in &attributes {
            if let Err(e) = span_key(k) {
                return Ok(Err(e));
            }
        }
        let filter = self.shared.spec.filter.clone();
        let notes = match self.span_notes() {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(Ok(())),
            Err(e) => return Ok(Err(e)),
        };
        if notes.events.len() >= MAX_SPAN_EVENTS {
            return Ok(Err(self.span_refused(
                "span_events",
                format!("a request's span takes at most {MAX_SPAN_EVENTS} events from filters"),
            )));
        }
        let attributes = (attributes.into_iter())
            .map(|(k, v)| {
                let v = capped(&v, MAX_SPAN_VALUE_BYTES).to_owned();
                (k, v)
            })
            .collect();
        notes.events.push(SpanEvent {
            filter,
            name,
            at: std::time::Instant::now(),
            attributes,
        });
        Ok(Ok(()))
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64)
    }
    fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(self.shared.runtime.epoch_start.elapsed().as_nanos() as u64)
    }
    fn random_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        let mut buf = vec![0u8; len.min(1 << 16) as usize];
        // The OS CSPRNG; failing to read it is a host fault, never predictable bytes.
        getrandom::fill(&mut buf).map_err(|e| wasmtime::Error::msg(format!("getrandom: {e}")))?;
        Ok(buf)
    }
}

impl HostState {
    /// Writes the series of a metrics call (`write`): one this instance wrote before (no
    /// look-up, no check: an admitted series stays admitted, and the process keeps it), else
    /// checked, admitted and resolved (see [`crate::series`]), and kept for the next call when
    /// there is room and its names are short.
    fn write_series(
        &mut self,
        kind: Kind,
        name: String,
        labels: Vec<(String, String)>,
        write: impl FnOnce(&weir_observe::FilterSeries),
    ) -> Result<(), HostError> {
        let known =
            (self.series.iter()).find(|r| r.kind == kind && r.name == name && r.labels == labels);
        if let Some(r) = known {
            write(&r.series);
            return Ok(());
        }
        self.admit_series(&name, kind, &labels)?;
        let (filter, registry) = (&*self.shared.spec.filter, &self.shared.runtime.registry);
        let series = match kind {
            Kind::Counter => registry.filter_counter(filter, &name, &labels),
            Kind::Gauge => registry.filter_gauge(filter, &name, &labels),
            Kind::Histogram => registry.filter_histogram(filter, &name, &labels),
        };
        write(&series);
        let bytes = name.len()
            + (labels.iter())
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if bytes > RESOLVED_SERIES_BYTES {
            return Ok(());
        }
        if self.series.len() == RESOLVED_SERIES {
            // Full: the newest takes the last place (the first ones stay fast).
            self.series.pop();
        }
        self.series.push(Resolved {
            kind,
            name,
            labels,
            series,
        });
        Ok(())
    }

    /// Checks a metrics call and admits its series (see [`crate::series`]); a refusal past a
    /// bound is counted on `/metrics`.
    fn admit_series(
        &self,
        name: &str,
        kind: Kind,
        labels: &[(String, String)],
    ) -> Result<(), HostError> {
        let filter = &*self.shared.spec.filter;
        let rt = &self.shared.runtime;
        rt.series.admit(filter, name, kind, labels).map_err(|r| {
            if let Some(limit) = r.limit {
                rt.registry.filter_limit_hit(filter, limit);
            }
            HostError::Invalid(r.message)
        })
    }
}

impl metrics::Host for HostState {
    fn counter_add(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        delta: u64,
    ) -> wasmtime::Result<Result<(), HostError>> {
        Ok(self.write_series(Kind::Counter, name, labels, |s| s.add(delta)))
    }
    fn gauge_set(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: i64,
    ) -> wasmtime::Result<Result<(), HostError>> {
        Ok(self.write_series(Kind::Gauge, name, labels, |s| s.set(value)))
    }
    fn histogram_observe(
        &mut self,
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if !value.is_finite() {
            return Ok(Err(HostError::Invalid(format!(
                "histogram {name:?}: observation must be finite, got {value}"
            ))));
        }
        Ok(self.write_series(Kind::Histogram, name, labels, |s| s.observe(value)))
    }
}

impl HostState {
    /// A state call's failure as the filter sees it: `invalid` for an oversized key or value,
    /// `failed` for a full namespace (the same call may work once keys expire) or a backend that
    /// failed. Bounds hit are counted on `/metrics`.
    fn state_failed(&self, e: StateError) -> HostError {
        match e {
            StateError::Refused(e) => {
                self.shared
                    .runtime
                    .registry
                    .filter_limit_hit(&self.shared.spec.filter, e.limit());
                if e.is_invalid_argument() {
                    HostError::Invalid(e.to_string())
                } else {
                    HostError::Failed(e.to_string())
                }
            }
            StateError::Failed(m) => HostError::Failed(m),
        }
    }

    /// Before a state call: checks the grant, bounds the wait by the backend's timeout and the
    /// request's deadline, and keeps a remote backend's network wait out of the CPU budget.
    fn state_begin(&mut self, namespace: &str) -> Result<StateCall, HostError> {
        self.granted_kv(namespace)?;
        let runtime = self.shared.runtime.clone();
        let Some(remote) = runtime.state.remote() else {
            return Ok(StateCall {
                runtime,
                wait: Duration::ZERO,
                remote: false,
            });
        };
        let mut wait = remote.config().pool.timeout;
        if let Some(deadline) = self.ex.deadline {
            wait = wait.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        }
        self.budget.pause();
        Ok(StateCall {
            runtime,
            wait,
            remote: true,
        })
    }

    /// After a state call.
    fn state_end<T>(
        &mut self,
        call: &StateCall,
        res: Result<T, StateError>,
    ) -> Result<T, HostError> {
        if call.remote {
            self.budget.resume();
        }
        res.map_err(|e| self.state_failed(e))
    }
}

/// A state call under way (see [`HostState::state_begin`]).
struct StateCall {
    runtime: Arc<RuntimeInner>,
    /// How long the backend may take.
    wait: Duration,
    /// Whether the filter's budget is paused.
    remote: bool,
}

impl StateCall {
    fn state(&self) -> &State {
        &self.runtime.state
    }
}

impl kv::Host for HostState {
    async fn get(
        &mut self,
        namespace: String,
        key: String,
    ) -> Result<Option<kv::Entry>, HostError> {
        let c = self.state_begin(&namespace)?;
        let res = c.state().get(&namespace, &key, c.wait).await;
        self.state_end(&c, res)
            .map(|e| e.map(|(value, version)| kv::Entry { value, version }))
    }
    async fn set(
        &mut self,
        namespace: String,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<u64, HostError> {
        let c = self.state_begin(&namespace)?;
        let res = c.state().set(&namespace, &key, value, ttl_ms, c.wait).await;
        self.state_end(&c, res)
    }
    async fn compare_and_swap(
        &mut self,
        namespace: String,
        key: String,
        expected: u64,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<Option<u64>, HostError> {
        let c = self.state_begin(&namespace)?;
        let res = c
            .state()
            .compare_and_swap(&namespace, &key, expected, value, ttl_ms, c.wait)
            .await;
        self.state_end(&c, res)
    }
    async fn delete(&mut self, namespace: String, key: String) -> Result<(), HostError> {
        let c = self.state_begin(&namespace)?;
        let res = c.state().delete(&namespace, &key, c.wait).await;
        self.state_end(&c, res)
    }
    async fn increment(
        &mut self,
        namespace: String,
        key: String,
        delta: i64,
        ttl_ms: u64,
    ) -> Result<i64, HostError> {
        let c = self.state_begin(&namespace)?;
        let res = c
            .state()
            .increment(&namespace, &key, delta, ttl_ms, c.wait)
            .await;
        self.state_end(&c, res)
    }
    async fn take_tokens(
        &mut self,
        namespace: String,
        key: String,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: u64,
    ) -> Result<kv::BucketResult, HostError> {
        if rate == 0 || period_ms == 0 || burst == 0 {
            return Err(HostError::Invalid(
                "rate, period-ms and burst must be greater than 0".into(),
            ));
        }
        let c = self.state_begin(&namespace)?;
        let res = c
            .state()
            .take_tokens(&namespace, &key, rate, period_ms, burst, cost, c.wait)
            .await;
        self.state_end(&c, res).map(|t| kv::BucketResult {
            allowed: t.allowed,
            remaining: t.remaining,
            retry_after_ms: t.retry_after_ms,
            reset_ms: t.reset_ms,
        })
    }
}

impl callout::Host for HostState {
    async fn send(
        &mut self,
        target: String,
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<types::CalloutResponse, HostError> {
        if !self.shared.spec.grants.callouts.contains(&target) {
            return Err(HostError::Denied(format!(
                "callouts to {target:?} are not granted to filter {:?}",
                self.shared.spec.filter
            )));
        }
        if headers.len() > MAX_CALL_HEADERS {
            return Err(self.header_refused(Refused {
                limit: Some("headers_per_call"),
                message: format!(
                    "a callout may carry at most {MAX_CALL_HEADERS} headers, not {}",
                    headers.len()
                ),
            }));
        }
        let (_, bytes) = header_bytes(headers.iter().map(|(n, v)| (n.as_str(), v.len())));
        if bytes > MAX_HEADER_BYTES {
            return Err(self.header_refused(Refused {
                limit: Some("header_bytes"),
                message: format!(
                    "a callout may carry at most {MAX_HEADER_BYTES} bytes of header names and values"
                ),
            }));
        }
        let Some(client) = self.shared.runtime.callouts.clone() else {
            return Err(HostError::Unavailable(
                "callouts are not available in this process".into(),
            ));
        };
        let mut req = http::Request::builder()
            .method(method.as_str())
            .uri(path.as_str())
            .body(Bytes::from(body))
            .map_err(|e| HostError::Invalid(format!("invalid callout request: {e}")))?;
        for (k, v) in &headers {
            req.headers_mut().append(header_name(k)?, header_value(v)?);
        }
        if self.callouts >= MAX_CALLOUTS_PER_CALL {
            return Err(HostError::Unavailable(format!(
                "at most {MAX_CALLOUTS_PER_CALL} callouts per phase"
            )));
        }
        self.callouts += 1;
        let mut timeout = Duration::from_millis(u64::from(timeout_ms.clamp(1, 60_000)));
        // A callout ends by the request's deadline: past it, nobody waits for the answer.
        if let Some(deadline) = self.ex.deadline {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(HostError::Failed(
                    "the request's deadline has passed".into(),
                ));
            }
            timeout = timeout.min(left);
        }
        // Waiting on the network is not the filter's CPU time: keep it out of the phase budget.
        self.budget.pause();
        let res = client.send(&target, req, timeout).await;
        self.budget.resume();
        let res = res.map_err(|e| HostError::Failed(e.chain()))?;
        let (parts, body) = res.into_parts();
        Ok(types::CalloutResponse {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), lossy(v)))
                .collect(),
            body: body.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests;
