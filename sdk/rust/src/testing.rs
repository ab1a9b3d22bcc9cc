//! Run a filter's phases natively, in plain `cargo test`: no proxy, no wasm.
//!
//! [`Harness`] configures a filter through the same code as the component export, then drives
//! its phases the way the proxy does: it calls only declared phases, creates a context per
//! [`TestRequest`], holds [`Action::Buffer`]ed body bytes and forwards the rest. Every host
//! call goes to an [`Emulator`]: header maps and bodies, a fake clock the test advances, KV
//! with versions, TTLs, counters and token buckets, recorded metrics and logs, callouts answered
//! by a closure, and capability grants so denials can be tested.
//!
//! ```
//! use weir_filter::testing::{Harness, TestRequest};
//! use weir_filter::{Action, Filter, Phases, Request};
//!
//! struct Tag;
//! impl Filter for Tag {
//!     type Config = serde::de::IgnoredAny;
//!     type Context = ();
//!     const PHASES: Phases = Phases::REQUEST_HEADERS;
//!     fn new(_: Self::Config) -> Result<Self, String> {
//!         Ok(Tag)
//!     }
//!     fn on_request_headers(&self, req: &mut Request, _: &mut ()) -> Action {
//!         match req.set_header("x-tag", "1") {
//!             Ok(()) => Action::Continue,
//!             Err(_) => Action::respond(500),
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), weir_filter::ConfigError> {
//! let mut h = Harness::<Tag>::new(serde_json::json!({}))?;
//! let mut req = TestRequest::get("/").client("10.0.0.1:5000");
//! assert_eq!(h.request_headers(&mut req), Action::Continue);
//! assert_eq!(req.header_value("x-tag"), Some("1"));
//! h.done(&req);
//! assert_eq!(h.live_contexts(), 0);
//! # Ok(())
//! # }
//! ```
//!
//! # How the emulator differs from the proxy
//!
//! * Time stands still unless the test calls [`Emulator::advance`]; randomness is a seeded
//!   generator ([`Emulator::seed_random`]).
//! * Grants default to [`Grants::all`]; the proxy denies by default. Use [`Grants::none`]
//!   plus what the filter's config would grant to test like production.
//! * Header names are stored lowercase, as the proxy's HTTP stack does.
//! * Request heads change only in the request phases, response heads only in
//!   `on-response-headers`, bodies only in their body phase; other attempts are
//!   [`HostError::Unavailable`], as the WIT documents.
//! * A panic in a phase is a trap: it propagates to the test, and the harness refuses further
//!   calls, as the proxy discards a trapped instance. The time budget
//!   ([`Emulator::set_time_budget`]) is checked at host calls only, so a loop that never calls
//!   the host cannot be stopped natively; memory is not capped.
//! * Headers a request phase sets on the response (the response map before there is one) wait
//!   in the request ([`TestRequest::response_headers_to_set`]) and are put on the response by
//!   [`Harness::response_headers`], whether or not the filter has that phase, as the proxy puts
//!   them on the response the client gets.
//! * A phase's [`Action::Respond`] comes back as the filter built it: the harness does not
//!   send it anywhere (the proxy would also add the headers above whose names it does not set). The proxy drops its [`FRAMING_HEADERS`](crate::validate::FRAMING_HEADERS)
//!   and frames the body itself (header setters refuse those names here as in the proxy).
//! * KV counters and token buckets live beside values under the same keys without sharing
//!   them: `get` does not see a counter. [`kv::delete`](crate::kv::delete) removes all three.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub(crate) mod emulator;

use emulator::{Metric, Phase, RequestHead, ResponseHead, Scope, Shared};

use crate::callout::CalloutResponse;
use crate::http::BodyKind;
use crate::log::Level;
use crate::runtime::Runtime;
use crate::{Action, ConfigError, Filter, HostError, Phases};

/// Which capabilities the emulated host grants.
///
/// ```
/// use weir_filter::testing::Grants;
/// let g = Grants::none().kv("ratelimit").callout("auth");
/// assert!(g.allows_kv("ratelimit") && !g.allows_kv("sessions"));
/// assert!(g.allows_callout("auth") && !g.allows_callout("127.0.0.1:9000"));
/// assert!(Grants::all().allows_kv("anything"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    kv: Option<BTreeSet<String>>,
    callouts: Option<BTreeSet<String>>,
}

impl Default for Grants {
    fn default() -> Self {
        Self::all()
    }
}

impl Grants {
    /// Everything is granted (the emulator's default).
    pub fn all() -> Self {
        Self {
            kv: None,
            callouts: None,
        }
    }

    /// Nothing is granted (the proxy's default); add grants with [`kv`](Self::kv) and
    /// [`callout`](Self::callout).
    pub fn none() -> Self {
        Self {
            kv: Some(BTreeSet::new()),
            callouts: Some(BTreeSet::new()),
        }
    }

    /// Grants a KV namespace (and, if KV was "all", restricts KV to the namespaces listed).
    #[must_use]
    pub fn kv(mut self, namespace: impl Into<String>) -> Self {
        self.kv
            .get_or_insert_with(BTreeSet::new)
            .insert(namespace.into());
        self
    }

    /// Grants a callout target (and, if callouts were "all", restricts them to those listed).
    #[must_use]
    pub fn callout(mut self, target: impl Into<String>) -> Self {
        self.callouts
            .get_or_insert_with(BTreeSet::new)
            .insert(target.into());
        self
    }

    /// Whether this KV namespace is granted.
    /// Never the empty namespace: a proxy config cannot grant it.
    pub fn allows_kv(&self, namespace: &str) -> bool {
        !namespace.is_empty() && self.kv.as_ref().is_none_or(|s| s.contains(namespace))
    }

    /// Whether this callout target is granted.
    pub fn allows_callout(&self, target: &str) -> bool {
        self.callouts.as_ref().is_none_or(|s| s.contains(target))
    }
}

/// A log line a filter wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// Its message.
    pub message: String,
}

/// What filters added to a request's trace span through [`crate::trace`]: the emulator keeps it
/// with the [`TestRequest`], under the proxy's rules (names checked, the proxy's keys refused,
/// values cut, counts bounded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Span {
    /// Attributes, in the order first set.
    pub attributes: Vec<(String, String)>,
    /// Events, in order.
    pub events: Vec<SpanEvent>,
}

impl Span {
    /// An attribute's value.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        (self.attributes.iter())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The events of this name.
    pub fn events_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a SpanEvent> {
        self.events.iter().filter(move |e| e.name == name)
    }
}

/// An event a filter added to a request's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanEvent {
    /// Its name.
    pub name: String,
    /// When, on the emulator's wall clock (ms since the UNIX epoch).
    pub at_ms: u64,
    /// Its attributes (the proxy adds `weir.filter`; the emulator does not).
    pub attributes: Vec<(String, String)>,
}

impl SpanEvent {
    /// An attribute's value.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        (self.attributes.iter())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A callout as the filter sent it (what a callout handler receives).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CalloutRequest {
    /// Request method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// The filter's timeout.
    pub timeout: Duration,
}

impl CalloutRequest {
    /// The first value of a header (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The emulated host: a cheap handle (clones share state) with inspection and control methods.
///
/// A [`Harness`] dereferences to its emulator, so `h.advance(..)`, `h.logs()` and
/// `h.on_callout(..)` work on the harness directly. Use [`enter`](Self::enter) to call host
/// functions outside any phase, e.g. to unit-test a filter's helper functions.
#[derive(Clone, Default)]
pub struct Emulator {
    state: Shared,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator").finish_non_exhaustive()
    }
}

/// While alive, host calls on this thread go to an emulator (see [`Emulator::enter`]).
#[must_use = "host calls go to the emulator only while this guard lives"]
pub struct Entered {
    _installed: emulator::Installed,
}

impl fmt::Debug for Entered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Entered")
    }
}

impl Emulator {
    /// A fresh host: empty KV, no metrics or logs, everything granted, clock at
    /// 2023-11-14T22:13:20Z.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes this emulator the host of the current thread until the guard drops, outside any
    /// request (request-scoped calls see no request, as in `configure`).
    ///
    /// ```
    /// use weir_filter::{kv, testing::Emulator};
    /// let host = Emulator::new();
    /// {
    ///     let _entered = host.enter();
    ///     assert_eq!(kv::increment("ns", "k", 5, None), Ok(5));
    /// }
    /// assert!(kv::increment("ns", "k", 5, None).is_err()); // no host any more
    /// ```
    pub fn enter(&self) -> Entered {
        Entered {
            _installed: emulator::install(&self.state),
        }
    }

    /// Sets the capabilities granted from now on.
    pub fn set_grants(&self, grants: Grants) {
        self.state.borrow_mut().grants = grants;
    }

    /// Answers callouts with this closure (target, request) → response or error. Without one,
    /// a granted callout fails with [`HostError::Failed`]. The closure may itself use host
    /// functions (e.g. read KV); it may not send a callout.
    pub fn on_callout(
        &self,
        handler: impl FnMut(&str, &CalloutRequest) -> Result<CalloutResponse, HostError> + 'static,
    ) {
        self.state.borrow_mut().callout_handler = Some(Rc::new(RefCell::new(handler)));
    }

    /// Every callout sent so far (granted or not denied at validation), as (target, request).
    pub fn callouts(&self) -> Vec<(String, CalloutRequest)> {
        self.state.borrow().callouts.clone()
    }

    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        let mut s = self.state.borrow_mut();
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        s.now_ms = s.now_ms.saturating_add(ms);
        s.monotonic_ns = s.monotonic_ns.saturating_add(ns);
    }

    /// The fake wall clock, in milliseconds since the UNIX epoch.
    pub fn now_ms(&self) -> u64 {
        self.state.borrow().now_ms
    }

    /// Sets the fake wall clock (the monotonic clock is left alone).
    pub fn set_now_ms(&self, now_ms: u64) {
        self.state.borrow_mut().now_ms = now_ms;
    }

    /// Reseeds the generator behind [`clock::random_bytes`](crate::clock::random_bytes).
    pub fn seed_random(&self, seed: u64) {
        // xorshift needs a non-zero state.
        self.state.borrow_mut().rng = seed ^ 0x9E37_79B9_7F4A_7C15 | 1;
    }

    /// Emulates the proxy's per-phase time budget (epoch deadline): a host call made after a
    /// phase has run this long panics, as the proxy would trap. `None` (default) disables it.
    pub fn set_time_budget(&self, budget: Option<Duration>) {
        self.state.borrow_mut().time_budget = budget;
    }

    /// Log lines written so far.
    pub fn logs(&self) -> Vec<LogLine> {
        self.state.borrow().logs.clone()
    }

    /// Removes and returns the log lines written so far.
    pub fn take_logs(&self) -> Vec<LogLine> {
        std::mem::take(&mut self.state.borrow_mut().logs)
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<Metric> {
        let key = emulator::metric_key(name, labels);
        self.state.borrow().metrics.get(&key).cloned()
    }

    /// A counter's value (0 if never added to). Label order does not matter.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.metric(name, labels) {
            Some(Metric::Counter(v)) => v,
            _ => 0,
        }
    }

    /// A gauge's value, if set.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
        match self.metric(name, labels) {
            Some(Metric::Gauge(v)) => Some(v),
            _ => None,
        }
    }

    /// A histogram's observations, in order.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.metric(name, labels) {
            Some(Metric::Histogram(v)) => v,
            _ => Vec::new(),
        }
    }
}

static NEXT_CONTEXT: AtomicU32 = AtomicU32::new(1);

/// A request as the proxy would present it to a filter. Build it, pass it to the harness's
/// phases, then look at what the filter changed.
///
/// Defaults: authority `localhost`, scheme `http`, client `127.0.0.1:40000`, route
/// `test-route`, cluster `test-cluster`, request id `test-<context id>`.
#[derive(Debug, Clone)]
pub struct TestRequest {
    context: u32,
    head: RequestHead,
    forwarded: Vec<u8>,
    held: Vec<u8>,
}

impl TestRequest {
    /// A request with this method and path (with query). Each request gets its own context id.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        let context = NEXT_CONTEXT.fetch_add(1, Ordering::Relaxed);
        Self {
            context,
            head: RequestHead {
                method: method.into(),
                path: path.into(),
                authority: "localhost".to_owned(),
                scheme: "http".to_owned(),
                client: "127.0.0.1:40000".to_owned(),
                route: "test-route".to_owned(),
                cluster: "test-cluster".to_owned(),
                request_id: format!("test-{context}"),
                headers: Vec::new(),
                span: Some(Span::default()),
                response_headers: Vec::new(),
            },
            forwarded: Vec::new(),
            held: Vec::new(),
        }
    }

    /// A `GET` request.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new("GET", path)
    }

    /// A `POST` request.
    pub fn post(path: impl Into<String>) -> Self {
        Self::new("POST", path)
    }

    /// Adds a header (name stored lowercase).
    #[must_use]
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.head
            .headers
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets the authority (`host[:port]`).
    #[must_use]
    pub fn authority(mut self, authority: impl Into<String>) -> Self {
        self.head.authority = authority.into();
        self
    }

    /// Sets the scheme (`http` or `https`).
    #[must_use]
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.head.scheme = scheme.into();
        self
    }

    /// Sets the client address (`ip:port`).
    #[must_use]
    pub fn client(mut self, address: impl Into<String>) -> Self {
        self.head.client = address.into();
        self
    }

    /// Sets the matched route's name.
    #[must_use]
    pub fn route(mut self, name: impl Into<String>) -> Self {
        self.head.route = name.into();
        self
    }

    /// Sets the cluster's name.
    #[must_use]
    pub fn cluster(mut self, name: impl Into<String>) -> Self {
        self.head.cluster = name.into();
        self
    }

    /// Sets the request id.
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.head.request_id = id.into();
        self
    }

    /// The context id the harness uses for this request.
    pub fn context_id(&self) -> u32 {
        self.context
    }

    /// A request whose trace is not sampled: [`trace::sampled`](crate::trace::sampled) is
    /// false and what filters add is dropped. Requests are sampled by default.
    #[must_use]
    pub fn unsampled(mut self) -> Self {
        self.head.span = None;
        self
    }

    /// What filters added to the request's span so far (`None` when not sampled).
    pub fn span(&self) -> Option<&Span> {
        self.head.span.as_ref()
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.head.method
    }

    /// The path (with query) as it would go upstream.
    pub fn path(&self) -> &str {
        &self.head.path
    }

    /// The first value of a header (case-insensitive), as it would go upstream.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        first(&self.head.headers, name)
    }

    /// Every value of a header, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        all(&self.head.headers, name)
    }

    /// All headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.head.headers
    }

    /// The headers the request phases set on the response to come, in order: the proxy puts
    /// them on whatever response the client gets, each name replacing that name's values.
    pub fn response_headers_to_set(&self) -> &[(String, String)] {
        &self.head.response_headers
    }

    /// The body bytes forwarded upstream so far (after the filter's changes; bytes it is
    /// buffering are not included).
    pub fn forwarded_body(&self) -> &[u8] {
        &self.forwarded
    }
}

/// A response as the upstream would send it. Build it, pass it to the response phases, then
/// look at what the filter changed.
#[derive(Debug, Clone)]
pub struct TestResponse {
    head: ResponseHead,
    forwarded: Vec<u8>,
    held: Vec<u8>,
}

impl TestResponse {
    /// A response with this status and no headers.
    pub fn new(status: u16) -> Self {
        Self {
            head: ResponseHead {
                status,
                headers: Vec::new(),
            },
            forwarded: Vec::new(),
            held: Vec::new(),
        }
    }

    /// Adds a header (name stored lowercase).
    #[must_use]
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.head
            .headers
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// The status as it would go downstream.
    pub fn status(&self) -> u16 {
        self.head.status
    }

    /// The first value of a header (case-insensitive), as it would go downstream.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        first(&self.head.headers, name)
    }

    /// Every value of a header, in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        all(&self.head.headers, name)
    }

    /// All headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.head.headers
    }

    /// The body bytes forwarded downstream so far (see [`TestRequest::forwarded_body`]).
    pub fn forwarded_body(&self) -> &[u8] {
        &self.forwarded
    }
}

fn first<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn all<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A configured filter driven like the proxy drives it. Dereferences to its [`Emulator`].
///
/// Phase methods mirror the proxy: a phase the filter did not declare is not called (the
/// method returns [`Action::Continue`] and passes bodies through). A panicking phase
/// propagates the panic and poisons the harness, as a trap discards the instance.
pub struct Harness<F: Filter> {
    runtime: Runtime<F>,
    host: Emulator,
    poisoned: bool,
}

impl<F: Filter> fmt::Debug for Harness<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness")
            .field("phases", &self.runtime.phases())
            .field("live_contexts", &self.runtime.live_contexts())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<F: Filter> Deref for Harness<F> {
    type Target = Emulator;
    fn deref(&self) -> &Emulator {
        &self.host
    }
}

impl<F: Filter> Harness<F> {
    /// Configures the filter with this JSON on a fresh [`Emulator`], as the proxy's
    /// `configure` does: a config that does not deserialize, or an `Err` from
    /// [`Filter::new`], is a [`ConfigError`].
    pub fn new(config: serde_json::Value) -> Result<Self, ConfigError> {
        Self::with_host(&Emulator::new(), &config.to_string())
    }

    /// Configures the filter with this exact config string (as the proxy would pass it).
    pub fn from_config_str(config: &str) -> Result<Self, ConfigError> {
        Self::with_host(&Emulator::new(), config)
    }

    /// Configures the filter on an existing emulator, so several harnesses (filters, or
    /// instances of one filter) share KV, metrics, logs and the clock.
    pub fn with_host(host: &Emulator, config: &str) -> Result<Self, ConfigError> {
        let runtime = {
            let _entered = host.enter();
            Runtime::configure(config)?
        };
        Ok(Self {
            runtime,
            host: host.clone(),
            poisoned: false,
        })
    }

    /// The emulator (also reachable through `Deref`).
    pub fn host(&self) -> &Emulator {
        &self.host
    }

    /// The configured filter.
    pub fn filter(&self) -> &F {
        self.runtime.filter()
    }

    /// The phases the filter declared.
    pub fn phases(&self) -> Phases {
        self.runtime.phases()
    }

    /// How many request contexts are alive (created by a phase, not yet [`done`](Self::done)).
    pub fn live_contexts(&self) -> usize {
        self.runtime.live_contexts()
    }

    /// Runs one phase call: installs `scope` and the emulator, calls `f`, returns the scope.
    fn run<R>(
        &mut self,
        phase: Option<Phase>,
        scope: Scope,
        f: impl FnOnce(&mut Runtime<F>) -> R,
    ) -> (R, Scope) {
        assert!(
            !self.poisoned,
            "weir-filter harness: an earlier phase panicked (a trap): the proxy would have \
             discarded this instance; create a new Harness"
        );
        {
            let mut state = self.host.state.borrow_mut();
            state.scope = scope;
            state.scope.phase = phase;
            state.scope.deadline = state.time_budget.map(|b| (Instant::now() + b, b));
        }
        let _installed = emulator::install(&self.host.state);
        self.poisoned = true;
        let out = f(&mut self.runtime);
        self.poisoned = false;
        let scope = std::mem::take(&mut self.host.state.borrow_mut().scope);
        (out, scope)
    }

    /// `on-request-headers` for `req`; afterwards `req` shows the filter's changes.
    pub fn request_headers(&mut self, req: &mut TestRequest) -> Action {
        if !self.phases().contains(Phases::REQUEST_HEADERS) {
            return Action::Continue;
        }
        let scope = Scope {
            request: Some(std::mem::take(&mut req.head)),
            ..Scope::default()
        };
        let id = req.context;
        let (action, scope) = self.run(Some(Phase::RequestHeaders), scope, |r| {
            r.on_request_headers(id)
        });
        req.head = scope.request.unwrap_or_default();
        action
    }

    /// `on-request-body` with one chunk of `req`'s body. Bytes held by an earlier
    /// [`Action::Buffer`] come first; after `Continue` (or `Buffer` on the last chunk) the
    /// bytes, as the filter left them, join [`TestRequest::forwarded_body`].
    pub fn request_body(&mut self, req: &mut TestRequest, chunk: &[u8], end: bool) -> Action {
        if !self.phases().contains(Phases::REQUEST_BODY) {
            req.forwarded.extend_from_slice(chunk);
            return Action::Continue;
        }
        let mut bytes = std::mem::take(&mut req.held);
        bytes.extend_from_slice(chunk);
        let scope = Scope {
            request: Some(std::mem::take(&mut req.head)),
            body: Some((BodyKind::Request, bytes)),
            ..Scope::default()
        };
        let id = req.context;
        let (action, scope) = self.run(Some(Phase::RequestBody), scope, |r| {
            r.on_request_body(id, end)
        });
        req.head = scope.request.unwrap_or_default();
        let bytes = scope.body.map(|(_, b)| b).unwrap_or_default();
        settle_body(&action, end, bytes, &mut req.held, &mut req.forwarded);
        action
    }

    /// `on-response-headers` for `req`'s response `res`; afterwards `res` shows the
    /// filter's changes (the request is read-only here).
    pub fn response_headers(&mut self, req: &mut TestRequest, res: &mut TestResponse) -> Action {
        let pending = std::mem::take(&mut req.head.response_headers);
        emulator::set_response_headers(&mut res.head.headers, pending);
        if !self.phases().contains(Phases::RESPONSE_HEADERS) {
            return Action::Continue;
        }
        let scope = Scope {
            request: Some(std::mem::take(&mut req.head)),
            response: Some(std::mem::take(&mut res.head)),
            ..Scope::default()
        };
        let id = req.context;
        let (action, scope) = self.run(Some(Phase::ResponseHeaders), scope, |r| {
            r.on_response_headers(id)
        });
        req.head = scope.request.unwrap_or_default();
        res.head = scope.response.unwrap_or_default();
        action
    }

    /// `on-response-body` with one chunk of `res`'s body; as [`request_body`](Self::request_body).
    pub fn response_body(
        &mut self,
        req: &mut TestRequest,
        res: &mut TestResponse,
        chunk: &[u8],
        end: bool,
    ) -> Action {
        if !self.phases().contains(Phases::RESPONSE_BODY) {
            res.forwarded.extend_from_slice(chunk);
            return Action::Continue;
        }
        let mut bytes = std::mem::take(&mut res.held);
        bytes.extend_from_slice(chunk);
        let scope = Scope {
            request: Some(std::mem::take(&mut req.head)),
            response: Some(std::mem::take(&mut res.head)),
            body: Some((BodyKind::Response, bytes)),
            ..Scope::default()
        };
        let id = req.context;
        let (action, scope) = self.run(Some(Phase::ResponseBody), scope, |r| {
            r.on_response_body(id, end)
        });
        req.head = scope.request.unwrap_or_default();
        res.head = scope.response.unwrap_or_default();
        let bytes = scope.body.map(|(_, b)| b).unwrap_or_default();
        settle_body(&action, end, bytes, &mut res.held, &mut res.forwarded);
        action
    }

    /// `on-log` for a finished exchange (heads readable, not writable).
    pub fn log(&mut self, req: &TestRequest, res: &TestResponse) {
        if !self.phases().contains(Phases::LOG) {
            return;
        }
        let scope = Scope {
            request: Some(req.head.clone()),
            response: Some(res.head.clone()),
            ..Scope::default()
        };
        let id = req.context;
        self.run(Some(Phase::Log), scope, |r| r.on_log(id));
    }

    /// `context-done`: the request is over and its context is dropped. The proxy calls it once
    /// per request, whatever the phases, unless the filter is [`Phases::STATELESS`].
    pub fn done(&mut self, req: &TestRequest) {
        let id = req.context;
        self.run(None, Scope::default(), |r| r.context_done(id));
    }
}

/// Where body bytes go after a body phase: held for the next call, or forwarded.
fn settle_body(
    action: &Action,
    end: bool,
    bytes: Vec<u8>,
    held: &mut Vec<u8>,
    forwarded: &mut Vec<u8>,
) {
    match action {
        Action::Buffer if !end => *held = bytes,
        Action::Continue | Action::Buffer => forwarded.extend_from_slice(&bytes),
        // A local response replaces the rest of this body.
        Action::Respond(_) => {}
    }
}

/// The first fenced `yaml` block of a Markdown document: the config a filter's README shows, for
/// a test that checks the README still works.
///
/// ```
/// let readme = "# f\n\n```yaml\nfilters: []\n```\n";
/// assert_eq!(weir_filter::testing::first_yaml_block(readme), Ok("filters: []\n"));
/// assert!(weir_filter::testing::first_yaml_block("no config").is_err());
/// ```
pub fn first_yaml_block(markdown: &str) -> Result<&str, String> {
    let (_, rest) = markdown
        .split_once("```yaml\n")
        .ok_or("no ```yaml block in the document")?;
    let (block, _) = rest
        .split_once("```")
        .ok_or("the ```yaml block is not closed")?;
    Ok(block)
}

#[cfg(test)]
mod tests;
