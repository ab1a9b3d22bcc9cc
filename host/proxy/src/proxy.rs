//! The L7 request path as named phases, each one step, read top to bottom in [`Session::proxy`]
//! (the shape of Pingora's `ProxyHttp`):
//!
//! 1. [`Session::route`]: the request's one host and normalized path, decided once; its route.
//! 2. [`Session::upstream_head`]: the head the upstream is sent (hop-by-hop headers out,
//!    forwarding headers, `Via`, request id, path rewrite) and the body, bounded.
//! 3. [`Session::request_filters`]: the route's filters see that request and may change or
//!    answer it.
//! 4. [`Session::send`]: the cluster's circuit breaker; then tries: [`Session::next_try`] on
//!    an endpoint not tried yet, the try judged ([`Session::answered`], [`Session::failed`],
//!    [`Session::timed_out`]), and [`Session::retry`] when policy, budget and body allow.
//! 5. [`Session::response`]: the upstream's head rewritten for the client, then
//!    [`Session::response_filters`]; or [`Session::tunnel`] for a protocol switch.
//! 6. Log: [`Finish`], a guard carried by the response body, records the access log, in-flight
//!    counts and the filters' `on-log` however the response ends (done, failed or abandoned).
//!
//! A phase that ends the request early returns a [`Stop`] (an error, or the filters' own answer);
//! [`handle`] turns either into the response, in one place.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use weir_config::RetryOn;
use weir_filters::Answer;
use weir_observe::{AccessRecord, TimeoutKind};

use crate::Shared;
use crate::body::{
    BodyStalled, BodyTooLarge, BoxError, ClientBodyError, Finish, Idle, ProxyBody, Source,
};
use crate::conn::ConnInfo;
use crate::connector::{ConnectError, Connector};
use crate::error::{ErrorKind, ProxyError};
use crate::filtering::{FilterRun, local_response};
use crate::head::{self, X_REQUEST_ID};
use crate::retry::{Resend, Slot, Tried};
use crate::snapshot::{Cluster, Endpoint, Route, Snapshot};
use crate::trace::{RequestSpans, TraceContext, Traceparent, TryOutcome};

/// Why a phase ended the request early.
enum Stop {
    /// The proxy answers with an error.
    Fail(ProxyError),
    /// The filters decided the answer.
    Answer(Answer),
    /// The route is switched off: its `disabled_response`.
    Disabled(StatusCode, bytes::Bytes),
}

impl From<ProxyError> for Stop {
    fn from(e: ProxyError) -> Stop {
        Stop::Fail(e)
    }
}

impl From<ErrorKind> for Stop {
    fn from(kind: ErrorKind) -> Stop {
        Stop::Fail(ProxyError::new(kind))
    }
}

/// Handles one downstream request. Never fails: errors are responses.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Source>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    conn.request_started(req.version() == Version::HTTP_2);
    // One atomic load; the Arc keeps this snapshot alive for the whole request even if a reload
    // swaps in another.
    let snap = shared.snapshot.load_full();
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
        _ => {
            let id = head::new_request_id();
            req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    };
    let mut ex = Session::new(&snap, &conn, request_id, &req, start);
    let res = match ex.proxy(req).await {
        Ok(res) => res,
        // Boxed, as every phase that is not on every request's way: a future is as large as
        // its largest await, and this one is moved with each request.
        Err(stop) => Box::pin(ex.stopped(stop)).await,
    };
    ex.respond(res, &shared.registry)
}

/// One request's way through the phases: what they share.
struct Session<'s> {
    snap: &'s Snapshot,
    conn: &'s ConnInfo,
    request_id: HeaderValue,
    /// Set by routing; requests answered before it count as unrouted.
    route: Option<&'s Route>,
    /// The route's deadline: its filters' request phases (instance waits and callouts included)
    /// and the upstream's response head.
    deadline: tokio::time::Instant,
    /// The client's protocol version, which the response goes back in.
    downstream: Version,
    /// The client's side of an allowed protocol switch.
    upgrade: Option<OnUpgrade>,
    filters: Option<FilterRun>,
    /// The request's place in a trace, with `tracing:` on.
    trace: Option<TraceContext>,
    /// Why the proxy answered itself, when it did (`ErrorKind::code` and the like).
    reason: &'static str,
    finish: Finish,
}

/// What routing decided: the request's one host and path.
struct Target {
    site: Option<HeaderValue>,
    uri: Uri,
    /// The normalized path, when normalizing changed it.
    normalized: Option<String>,
}

impl Target {
    /// The path routing, filters and the upstream see.
    fn path(&self) -> &str {
        self.normalized.as_deref().unwrap_or(self.uri.path())
    }
}

/// The request as it will go upstream (phases 2 and 3 build it; each try sends it).
struct Outbound {
    parts: http::request::Parts,
    path_and_query: PathAndQuery,
    /// The `Host` upstream: the route's rewrite, or the request's own.
    site: Option<HeaderValue>,
    body: ProxyBody,
}

/// Phase 4's state: one request's tries.
struct Tries<'s> {
    route: &'s Route,
    hash: Option<u64>,
    attempts: u32,
    resend: Resend,
    method: http::Method,
    /// What a retry sends: the head as the first try sent it (taken before it is consumed).
    retry_head: Option<http::HeaderMap>,
    first: Option<http::request::Parts>,
    path_and_query: PathAndQuery,
    site: Option<HeaderValue>,
    tried: Tried,
    /// A place in the cluster's retry budget, held while a retry is in flight.
    retrying: Option<crate::retry::Retrying>,
    /// The endpoint of the current try, and its deadline.
    ep: usize,
    deadline: tokio::time::Instant,
}

/// Which client a try goes through.
enum Via<'s> {
    Hyper(&'s Client<Connector, ProxyBody>),
    /// The native HTTP/1.1 client, to this endpoint.
    Native(&'s crate::h1::Client, usize),
}

impl Via<'_> {
    /// The response head (its body still to read), or why there is none.
    ///
    /// `traceparent` (with `tracing:` on) goes in the head: as a field written straight into it
    /// by the native client, into the header map for hyper.
    async fn send(
        self,
        mut req: Request<ProxyBody>,
        traceparent: Option<Traceparent>,
    ) -> Result<Response<Source>, BoxError> {
        match self {
            Via::Hyper(client) => {
                if let Some(t) = traceparent {
                    (req.headers_mut()).insert(crate::trace::TRACEPARENT.clone(), t.value());
                }
                match client.request(req).await {
                    Ok(res) => Ok(res.map(Source::Hyper)),
                    Err(e) => Err(Box::new(e)),
                }
            }
            Via::Native(client, ep) => match client.send(ep, req, traceparent.as_ref()).await {
                Ok(res) => Ok(res.map(|b| Source::Native(Box::new(b)))),
                Err(e) => Err(Box::new(e)),
            },
        }
    }
}

/// How one try ended, when it did not end the request.
enum TryEnd {
    /// The client's answer.
    Answer(Response<Source>),
    /// A failed try of kind `on`; `last` is what the client gets if no retry follows.
    Failed { on: RetryOn, last: Last },
}

enum Last {
    /// The upstream's own error response, passed on as it is.
    Response(Response<Source>),
    Error(ProxyError),
}

impl<'s> Session<'s> {
    fn new(
        snap: &'s Snapshot,
        conn: &'s Arc<ConnInfo>,
        request_id: HeaderValue,
        req: &Request<Source>,
        start: Instant,
    ) -> Session<'s> {
        let trace = snap
            .sampler
            .map(|sampler| TraceContext::begin(req.headers(), sampler));
        let log = snap.access_log.as_ref().map(|l| {
            let mut record = record_for(conn, req, &request_id);
            if let Some(t) = &trace {
                record.trace_id = t.trace_id_hex();
                record.span_id = t.span_id_hex();
            }
            Box::new((record, l.clone()))
        });
        let spans = match (&trace, &snap.exporter) {
            (Some(t), Some(exporter)) if t.sampled => Some(RequestSpans::begin(
                exporter,
                *t,
                start,
                req,
                conn.client_ip.to_str().unwrap_or_default(),
                &request_id,
            )),
            _ => None,
        };
        Session {
            snap,
            conn,
            request_id,
            route: None,
            deadline: tokio::time::Instant::now(),
            downstream: req.version(),
            upgrade: None,
            filters: None,
            trace,
            reason: "",
            finish: Finish {
                bytes: 0,
                start,
                conn: conn.clone(),
                in_flight: None,
                slot: None,
                log,
                filters: None,
                spans,
            },
        }
    }

    /// The phases, in order.
    async fn proxy(&mut self, req: Request<Source>) -> Result<Response<ProxyBody>, Stop> {
        let (route, target) = self.route(&req)?;
        let mut up = self.upstream_head(route, req, &target);
        // Async phases are entered only when they have work: each await moves a whole future.
        if let Some(chain) = &route.chain {
            Box::pin(self.request_filters(route, chain, &mut up, &target)).await?;
        }
        // Phase 4, tries: each awaited here, so no future holds another.
        let mut tries = self.send(route, up)?;
        let res = loop {
            let (via, req) = self.next_try(&mut tries)?;
            let (traced, traceparent) = self.try_trace();
            let sent = tokio::time::timeout_at(tries.deadline, via.send(req, traceparent)).await;
            if let Some(traced) = traced {
                self.try_span_ends(traced, &tries, &sent);
            }
            let end = match sent {
                Ok(Ok(res)) => Self::answered(&route.cluster, tries.ep, res),
                Ok(Err(e)) => Box::pin(self.failed(&tries, e)).await?,
                Err(_) => self.timed_out(&tries)?,
            };
            if let Some(res) = self.retry(&mut tries, end)? {
                break res;
            }
        };
        // The retry is over: its place in the budget is free for others' (not held while the
        // response filters run).
        tries.retrying = None;
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            return Box::pin(self.tunnel(res)).await;
        }
        let res = self.response(route, res);
        match &self.filters {
            Some(run) => Box::pin(self.response_filters(run.clone(), route, res)).await,
            None => Ok(res),
        }
    }

    /// Phase 1: one host and one path, decided here for routing, filters, the log and the
    /// upstream; then the route.
    fn route(&mut self, req: &Request<Source>) -> Result<(&'s Route, Target), Stop> {
        let site = head::site(req).map_err(|e| ErrorKind::BadRequest(e.message()))?;
        if !head::expectation_met(req.headers()) {
            return Err(ErrorKind::Expectation.into());
        }
        let paths = self.snap.policy(&self.conn.listener).paths;
        // Cheap (shared bytes): the target outlives the request, which is taken apart next.
        let uri = req.uri().clone();
        let normalized = match weir_router::normalize_path(uri.path(), paths) {
            // Borrowed exactly when the path was already normal.
            Ok(std::borrow::Cow::Borrowed(_)) => None,
            Ok(std::borrow::Cow::Owned(p)) => Some(p),
            Err(e) => {
                tracing::debug!(path = uri.path(), "refused: {e}");
                return Err(ErrorKind::BadRequest("invalid request path").into());
            }
        };
        let target = Target {
            site,
            uri,
            normalized,
        };
        self.log_target(&target);
        if let (Some(spans), Some(site)) = (&mut self.finish.spans, &target.site) {
            spans.server_address(site);
        }
        let Some(idx) = self.snap.router.find(
            req.method(),
            target.site.as_ref().map(head::host_of),
            target.path(),
            target.uri.query(),
            req.headers(),
        ) else {
            return Err(ErrorKind::NoRoute.into());
        };
        let route = &self.snap.routes[idx];
        self.route = Some(route);
        if let Some(d) = &route.disabled {
            route.stats.count_disabled();
            return Err(Stop::Disabled(d.status, d.body.clone()));
        }
        self.deadline = tokio::time::Instant::now() + route.timeout;
        if let (Some(limit), Some(len)) = (self.snap.max_body, head::content_length(req.headers()))
            && len > limit
        {
            return Err(ErrorKind::TooLarge.into());
        }
        Ok((route, target))
    }

    /// The log shows what was routed: the request's one host and its normalized path.
    fn log_target(&mut self, target: &Target) {
        let Some(log) = &mut self.finish.log else {
            return;
        };
        if let Some(site) = &target.site {
            log.0.host = site.to_str().unwrap_or_default().to_owned();
        }
        if let Some(path) = &target.normalized {
            log.0.path = match target.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
        }
    }

    /// Phase 2: the request as the upstream will get it, before filters.
    fn upstream_head(
        &mut self,
        route: &Route,
        mut req: Request<Source>,
        target: &Target,
    ) -> Outbound {
        let snap = self.snap;
        self.upgrade = head::is_upgrade(&req, &snap.limits.upgrade_protocols)
            .then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let site = route
            .host_rewrite
            .as_ref()
            .or(target.site.as_ref())
            .cloned();

        self.upstream_headers(&mut parts.headers, site.as_ref(), target);
        let path_and_query = head::rewrite_path(
            route.prefix_rewrite.as_ref(),
            target.path(),
            parts.uri.path(),
            parts.uri.query(),
        )
        .unwrap_or_else(|| {
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        });
        let idle = Idle::new(snap.request_body_timeout, snap.timeouts);
        Outbound {
            parts,
            path_and_query,
            site,
            body: ProxyBody::request(body, snap.max_body, idle),
        }
    }

    /// The request's headers as the upstream gets them: this hop's (framing, hop-by-hop,
    /// `Expect`) go, an allowed upgrade stays, then `Host`, the forwarding headers, `Via` and
    /// the request id.
    fn upstream_headers(
        &self,
        h: &mut http::HeaderMap,
        site: Option<&HeaderValue>,
        target: &Target,
    ) {
        let upgrade_proto = match self.upgrade {
            Some(_) => h.get(header::UPGRADE).cloned(),
            None => None,
        };
        head::drop_stale_length(h);
        head::strip_hop_by_hop(h);
        // This hop met the expectation (hyper sends `100 Continue` when the body is first read).
        h.remove(header::EXPECT);
        if let Some(proto) = upgrade_proto {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            h.insert(header::UPGRADE, proto);
        }
        // For HTTP/2 upstreams Host is kept identical to `:authority` (RFC 9113 §8.3.1 allows
        // that when converting from HTTP/1.1, and some frameworks read only Host).
        match site {
            Some(s) => h.insert(header::HOST, s.clone()),
            None => h.remove(header::HOST),
        };
        let trusted = (self.snap.policy(&self.conn.listener)).trusts(self.conn.client.ip());
        head::set_forwarding(
            h,
            &self.conn.client_ip,
            trusted,
            target.site.as_ref(),
            self.conn.tls,
        );
        head::append_via(h, self.downstream);
        h.insert(X_REQUEST_ID.clone(), self.request_id.clone());
        if let Some(t) = &self.trace {
            t.strip_client_headers(h);
        }
    }

    /// Phase 3: the route's filters see the request as it will go upstream, and may change it
    /// or answer it; with a request-body phase, the body goes upstream through them.
    async fn request_filters(
        &mut self,
        route: &Route,
        chain: &Arc<weir_filters::Chain>,
        up: &mut Outbound,
        target: &Target,
    ) -> Result<(), Stop> {
        // Shared bytes and an address: made text only if a filter asks.
        let props = weir_filters::Props {
            authority: (target.site.clone()).unwrap_or_else(|| HeaderValue::from_static("")),
            scheme: if self.conn.tls { "https" } else { "http" },
            client: Some(self.conn.client),
            route: route.name.clone(),
            cluster: route.cluster.name.clone(),
            request_id: self.request_id.clone(),
        };
        let run = FilterRun::new(
            chain.clone(),
            props,
            up.parts.method.clone(),
            self.deadline,
            self.finish.spans.is_some(),
        );
        self.finish.filters = Some(run.clone());
        self.filters = Some(run.clone());
        let mut p = up.path_and_query.as_str().to_string();
        run.request_headers(&mut up.parts.headers, &mut p)
            .await
            .map_err(Stop::Answer)?;
        if p != up.path_and_query.as_str() {
            up.path_and_query = PathAndQuery::try_from(p)
                .map_err(|_| ErrorKind::BadRequest("invalid path from filter"))?;
        }
        if self.filters_read_body() {
            // The filters may change the body's length.
            up.parts.headers.remove(header::CONTENT_LENGTH);
            let body = std::mem::replace(&mut up.body, ProxyBody::empty());
            up.body = run.pipe_body(body, false, false);
        }
        // Each try carries the proxy's own `traceparent`: one a filter set would go as a second.
        if self.trace.is_some() {
            up.parts.headers.remove(&crate::trace::TRACEPARENT);
        }
        Ok(())
    }

    /// Whether the request body goes through filters (then the response waits for their
    /// verdict on it).
    fn filters_read_body(&self) -> bool {
        self.filters
            .as_ref()
            .is_some_and(|run| run.phases().contains(weir_filters::Phases::REQUEST_BODY))
    }

    /// Phase 4: a place under the cluster's limits, and the tries it may take: the first on the
    /// balancer's pick, each retry on an endpoint not tried yet (like nginx's next upstream: the
    /// same endpoint again at once mostly doubles the wait), so a one-endpoint cluster never
    /// retries.
    fn send(&mut self, route: &'s Route, up: Outbound) -> Result<Tries<'s>, Stop> {
        let cluster = &route.cluster;
        let Outbound {
            mut parts,
            path_and_query,
            site,
            body,
        } = up;
        if let Some(max) = cluster.max_requests {
            let slot = Slot::take(&cluster.stats, max)
                .ok_or(ErrorKind::Overflow("requests in flight", max))?;
            self.finish.slot = Some(slot);
        }
        let attempts = match self.upgrade {
            Some(_) => 1,
            None => cluster.retry.attempts.min(cluster.endpoints.len() as u32),
        };
        parts.version = cluster.version();
        Ok(Tries {
            route,
            // After the filters: they may change what the cluster hashes on.
            hash: cluster
                .hash_on
                .as_ref()
                .map(|h| head::hash_of_parts(h, &parts.headers, self.conn.client)),
            attempts,
            resend: Resend::new(body, attempts, cluster.retry.buffer),
            method: parts.method.clone(),
            retry_head: (attempts > 1).then(|| parts.headers.clone()),
            first: Some(parts),
            path_and_query,
            site,
            tried: Tried::default(),
            retrying: None,
            ep: 0,
            deadline: self.deadline,
        })
    }

    /// The next try: an endpoint not tried yet, counted in flight and logged, and the request
    /// for it.
    fn next_try(&mut self, tries: &mut Tries<'s>) -> Result<(Via<'s>, Request<ProxyBody>), Stop> {
        // A request whose deadline passed in its filters (a callout or an instance wait cut at
        // it) is not sent: the client is answered 504 either way, and an upstream must not act
        // on a request nobody waits for. Checked here, not left to the try's timer, which the
        // runtime may fire a tick late, after a fast upstream has already answered.
        if tokio::time::Instant::now() >= self.deadline {
            self.snap.timeouts.fired(TimeoutKind::UpstreamHead);
            return Err(ProxyError::new(ErrorKind::UpstreamTimeout).into());
        }
        let cluster = &tries.route.cluster;
        let ep = pick_untried(cluster, tries.hash, tries.tried.as_slice());
        tries.tried.push(ep);
        tries.ep = ep;
        self.finish.in_flight = Some(cluster.balancer.begin(ep));
        let endpoint = &cluster.endpoints[ep];
        if let Some(log) = &mut self.finish.log {
            log.0.upstream.clone_from(&endpoint.address);
            log.0.attempts = tries.tried.as_slice().len() as u32;
        }
        let body = tries
            .resend
            .next()
            .ok_or_else(|| ProxyError::upstream("request body cannot be sent again"))?;
        let parts = tries.first.take().unwrap_or_else(|| {
            let mut p = Request::new(()).into_parts().0;
            p.method = tries.method.clone();
            p.headers = tries.retry_head.clone().unwrap_or_default();
            p.version = cluster.version();
            p
        });
        let req = upstream_request(
            cluster,
            endpoint,
            parts,
            tries.site.as_ref(),
            &tries.path_and_query,
            body,
        )?;
        // This try ends at the request's deadline, or sooner by the cluster's per-try limit.
        tries.deadline = cluster.retry.per_try_timeout.map_or(self.deadline, |t| {
            self.deadline.min(tokio::time::Instant::now() + t)
        });
        // Upgrades go through hyper, which hands over the upgraded connection.
        let via = match (&endpoint.h2_client, &cluster.native) {
            (Some(h2), _) => Via::Hyper(h2),
            (None, Some(native)) if self.upgrade.is_none() => Via::Native(native, ep),
            _ => Via::Hyper(&cluster.client),
        };
        Ok((via, req))
    }

    /// The `traceparent` a try sends (with `tracing:` on): a sampled request's try has a span
    /// of its own, which it names; otherwise it names the request's span.
    fn try_trace(&self) -> (Option<([u8; 8], Instant)>, Option<Traceparent>) {
        match (&self.finish.spans, &self.trace) {
            (Some(spans), _) => {
                let (id, traceparent) = spans.try_begins();
                (Some((id, Instant::now())), Some(traceparent))
            }
            (None, Some(t)) => (None, Some(t.traceparent())),
            (None, None) => (None, None),
        }
    }

    fn try_span_ends(
        &mut self,
        (id, start): ([u8; 8], Instant),
        tries: &Tries<'_>,
        sent: &Result<Result<Response<Source>, BoxError>, tokio::time::error::Elapsed>,
    ) {
        let Some(spans) = &mut self.finish.spans else {
            return;
        };
        let outcome = match sent {
            Ok(Ok(res)) => TryOutcome::Status(res.status().as_u16()),
            Ok(Err(e)) => TryOutcome::Failed(e),
            Err(_) => TryOutcome::TimedOut,
        };
        let cluster = &tries.route.cluster;
        spans.try_ended(
            id,
            start,
            &tries.method,
            &cluster.name,
            &cluster.endpoints[tries.ep].address,
            tries.tried.as_slice().len() as u32,
            outcome,
        );
    }

    /// After a try: the response to pass on, or `None` when a retry was admitted (the policy
    /// allows it for this failure and method, the body can be sent again, there is time, and
    /// the cluster's retry budget has room).
    fn retry(&self, tries: &mut Tries<'s>, end: TryEnd) -> Result<Option<Response<Source>>, Stop> {
        let (on, last) = match end {
            TryEnd::Answer(res) => return Ok(Some(res)),
            TryEnd::Failed { on, last } => (on, last),
        };
        let route = tries.route;
        let cluster = &route.cluster;
        let policy = &cluster.retry;
        let attempt = tries.tried.as_slice().len() as u32;
        let admitted = (attempt < tries.attempts
            && policy.retries(on, &tries.method, route.retry_any_method)
            && tries.resend.again()
            && tokio::time::Instant::now() < self.deadline)
            .then(|| policy.admit(&cluster.stats, cluster.in_flight()))
            .flatten();
        match (admitted, last) {
            (Some(r), _) => {
                tracing::debug!(request_id = ?self.request_id, cluster = %cluster.name, endpoint = %cluster.endpoints[tries.ep].address, ?on, attempt, "retrying on another endpoint");
                tries.retrying = Some(r);
                Ok(None)
            }
            // The upstream's own error response goes to the client as it is.
            (None, Last::Response(res)) => Ok(Some(res)),
            (None, Last::Error(e)) => Err(e.into()),
        }
    }

    /// How a try that got a response head ended; feeds passive health.
    fn answered(cluster: &Cluster, ep: usize, res: Response<Source>) -> TryEnd {
        cluster.answered(ep, res.status());
        match cluster.retry.retried_status(res.status()) {
            Some(on) => TryEnd::Failed {
                on,
                last: Last::Response(res),
            },
            None => TryEnd::Answer(res),
        }
    }

    /// A try that got no response head by its deadline (`tries.deadline`): a failed try for
    /// passive health too,
    /// unless the client was still sending its body or the try waited at the cluster's
    /// connection cap. At the request's own deadline, the request ends.
    fn timed_out(&self, tries: &Tries<'_>) -> Result<TryEnd, Stop> {
        let cluster = &tries.route.cluster;
        self.snap.timeouts.fired(TimeoutKind::UpstreamHead);
        if tries.resend.all_sent() && !cluster.at_connection_cap() {
            cluster.try_failed(tries.ep);
        }
        let e = ProxyError::new(ErrorKind::UpstreamTimeout);
        if tries.deadline == self.deadline {
            return Err(e.into());
        }
        Ok(TryEnd::Failed {
            on: RetryOn::Timeout,
            last: Last::Error(e),
        })
    }

    /// A try the upstream client (native or hyper's) failed: a filter's answer, the client's
    /// own body fault, or the endpoint's failure (see `classify`).
    async fn failed(&self, tries: &Tries<'_>, e: BoxError) -> Result<TryEnd, Stop> {
        // A request-body filter that answered stopped the body: its answer stands.
        if let Some(run) = &self.filters
            && let Some(answer) = run.take_answer().await
        {
            return Err(Stop::Answer(answer));
        }
        // A body the client broke (hyper may report it as a reset): the client's fault.
        if let Some(fault) = tries.resend.client_fault() {
            return Err(ProxyError::from(fault).into());
        }
        let e = classify(self.snap, &tries.route.cluster, tries.ep, e);
        match e.retry {
            Some(on) => Ok(TryEnd::Failed {
                on,
                last: Last::Error(e),
            }),
            None => Err(e.into()),
        }
    }

    /// Phase 5, for a `101 Switching Protocols`: the connection's own task relays the two
    /// upgraded connections once hyper hands them over.
    async fn tunnel(&mut self, res: Response<Source>) -> Result<Response<ProxyBody>, Stop> {
        // A switch the client did not ask for (or that is not allowed) cannot be relayed: the
        // client would read the new protocol as HTTP.
        let Some(down) = self.upgrade.take() else {
            return Err(ProxyError::upstream(
                "101 Switching Protocols to a request without an allowed upgrade",
            )
            .into());
        };
        // Upgrades only go through hyper's client (see `next_try`).
        let (parts, body) = res.into_parts();
        let Source::Hyper(body) = body else {
            return Err(
                ProxyError::upstream("101 Switching Protocols from the native client").into(),
            );
        };
        let mut res = Response::from_parts(parts, body);
        let up = hyper::upgrade::on(&mut res);
        *self.conn.tunnel.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(crate::tunnel::Tunnel { down, up });
        let (mut parts, _) = res.into_parts();
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), self.request_id.clone());
        if let Some(run) = self.filters.take() {
            run.set_status(StatusCode::SWITCHING_PROTOCOLS);
            run.finish().await;
        }
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }

    /// Phase 5: the upstream's response as the client gets it.
    fn response(&self, route: &Route, res: Response<Source>) -> Response<ProxyBody> {
        let (mut parts, body) = res.into_parts();
        head::drop_stale_length(&mut parts.headers);
        head::strip_hop_by_hop(&mut parts.headers);
        head::append_via(&mut parts.headers, parts.version);
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), self.request_id.clone());
        parts.version = self.downstream;
        let idle = Idle::new(route.cluster.body_timeout, self.snap.timeouts);
        Response::from_parts(parts, ProxyBody::stream(body, idle))
    }

    /// Phase 5, with filters: the request body's filters may still answer instead of the
    /// upstream; then the response filters see the response and may change or answer it.
    async fn response_filters(
        &self,
        run: FilterRun,
        route: &Route,
        res: Response<ProxyBody>,
    ) -> Result<Response<ProxyBody>, Stop> {
        let (mut parts, mut body) = res.into_parts();
        if self.filters_read_body() {
            body = run
                .settle_request_body(body, route.timeout)
                .await
                .map_err(Stop::Answer)?;
        }
        let deadline = tokio::time::Instant::now() + route.timeout;
        run.response_headers(&mut parts.status, &mut parts.headers, deadline)
            .await
            .map_err(Stop::Answer)?;
        let body = if run.phases().contains(weir_filters::Phases::RESPONSE_BODY) {
            parts.headers.remove(header::CONTENT_LENGTH);
            run.pipe_body(body, true, true)
        } else {
            // With `on-log`, the run finishes when the response body is done (`Finish`).
            if !run.finishes_after_body() {
                run.finish().await;
            }
            body
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The response for a request a phase ended early. A filter's answer is what `on-log` sees;
    /// then the run finishes.
    async fn stopped(&mut self, stop: Stop) -> Response<ProxyBody> {
        self.reason = match &stop {
            Stop::Fail(e) => e.kind.code(),
            Stop::Answer(Answer::Respond(_)) => "filter",
            Stop::Answer(Answer::Fail { .. }) => "filter_failed",
            Stop::Disabled(..) => "route_disabled",
        };
        match stop {
            Stop::Disabled(status, body) => {
                let mut res = Response::new(ProxyBody::full(body));
                *res.status_mut() = status;
                res.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                res.headers_mut()
                    .insert(X_REQUEST_ID.clone(), self.request_id.clone());
                res
            }
            Stop::Fail(e) => {
                if e.source.is_some() {
                    tracing::debug!(request_id = ?self.request_id, "{e:?}");
                }
                let mut res = e.response(&self.request_id);
                if let Some(run) = &self.filters {
                    run.set_response_headers(res.headers_mut()).await;
                }
                res
            }
            Stop::Answer(answer) => {
                let mut res = match answer {
                    Answer::Respond(r) => local_response(r, &self.request_id),
                    Answer::Fail { filter, .. } => {
                        ProxyError::new(ErrorKind::Filter(filter)).response(&self.request_id)
                    }
                };
                if let Some(run) = &self.filters {
                    run.set_response_headers(res.headers_mut()).await;
                    run.set_status(res.status());
                    run.finish().await;
                }
                res
            }
        }
    }

    /// Phase 6 begins: the route's stats, and the log record's outcome; the response body
    /// carries the rest (`Finish`) to its end.
    fn respond(
        mut self,
        res: Response<ProxyBody>,
        registry: &weir_observe::Registry,
    ) -> Response<ProxyBody> {
        if let Some(run) = &self.finish.filters {
            run.set_status(res.status());
            run.verdict_over();
        }
        let status = res.status().as_u16();
        match self.route {
            Some(r) => r.stats.record(status, self.finish.start.elapsed()),
            None => registry.record_unrouted(status),
        }
        if let Some(log) = &mut self.finish.log {
            log.0.status = status;
            log.0.reason = self.reason;
            if let Some(r) = self.route {
                log.0.route = r.name.to_string();
                log.0.cluster = r.cluster.name.to_string();
            }
        }
        if let Some(spans) = &mut self.finish.spans {
            let route = self.route.map(|r| (&r.name, &r.cluster.name));
            spans.responded(status, route, self.reason);
        }
        let (parts, body) = res.into_parts();
        Response::from_parts(parts, body.with_finish(self.finish))
    }
}

/// Try `parts` on `endpoint`: the URI and `Host` for it.
fn upstream_request(
    cluster: &Cluster,
    endpoint: &Endpoint,
    mut parts: http::request::Parts,
    site: Option<&HeaderValue>,
    path_and_query: &PathAndQuery,
    body: ProxyBody,
) -> Result<Request<ProxyBody>, ProxyError> {
    // HTTP/1.0 without Host goes upstream as HTTP/1.1, which needs one: name the endpoint.
    if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(endpoint.authority.as_str())
    {
        parts.headers.insert(header::HOST, v);
    }
    // HTTP/1.1: the URI names the endpoint (one pool per endpoint, shared by every site) and
    // Host carries the site. HTTP/2: the URI authority becomes `:authority`, so it carries the
    // site and the endpoint's own client knows where to connect.
    let authority = match (&endpoint.h2_client, site) {
        (Some(_), Some(site)) => site
            .to_str()
            .ok()
            .and_then(|s| s.parse::<http::uri::Authority>().ok())
            .unwrap_or_else(|| endpoint.authority.clone()),
        _ => endpoint.authority.clone(),
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(cluster.scheme.clone());
    uri.authority = Some(authority);
    uri.path_and_query = Some(path_and_query.clone());
    parts.uri = Uri::from_parts(uri)
        .map_err(|e| ProxyError::new(ErrorKind::BadRequest("invalid request target")).because(e))?;
    Ok(Request::from_parts(parts, body))
}

/// What a client error from a try means: the failure, and (as its `retry`) the kind of failed
/// try when another endpoint could help. Feeds passive health with connect failures and resets.
fn classify(snap: &Snapshot, cluster: &Cluster, ep: usize, e: BoxError) -> ProxyError {
    let (kind, retry) = 'found: {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
        while let Some(s) = src {
            if let Some(c) = s.downcast_ref::<ConnectError>() {
                if let ConnectError::Overflow(max) = c {
                    // The proxy's own limit, not the endpoint's failure: neither health nor retry.
                    break 'found (ErrorKind::Overflow("connections", *max), None);
                }
                cluster.try_failed(ep);
                let kind = match c {
                    ConnectError::Timeout(_) => {
                        snap.timeouts.fired(TimeoutKind::UpstreamConnect);
                        ErrorKind::UpstreamTimeout
                    }
                    ConnectError::Failed { .. } | ConnectError::Overflow(_) => ErrorKind::Upstream,
                };
                break 'found (kind, Some(RetryOn::ConnectFailure));
            }
            if s.downcast_ref::<BodyTooLarge>().is_some() {
                break 'found (ErrorKind::TooLarge, None);
            }
            if s.downcast_ref::<ClientBodyError>().is_some() {
                break 'found (ErrorKind::BadRequest("malformed request body"), None);
            }
            // Counted where it fired; an upstream body cannot stall before its head.
            if s.downcast_ref::<BodyStalled>()
                .is_some_and(|b| b.from_client)
            {
                break 'found (ErrorKind::RequestTimeout, None);
            }
            src = s.source();
        }
        // Closed, reset, or an answer that is not HTTP, before a response head.
        cluster.try_failed(ep);
        (ErrorKind::Upstream, Some(RetryOn::Reset))
    };
    ProxyError {
        kind,
        source: Some(e),
        retry,
    }
}

/// The balancer's pick if it has not been tried yet; else another endpoint not tried (a fresh
/// draw, then the first healthy one in order: the hash policies give one answer per key).
pub(crate) fn pick_untried(cluster: &Cluster, hash: Option<u64>, tried: &[usize]) -> usize {
    let b = &cluster.balancer;
    let first = b.pick(hash);
    if !tried.contains(&first) || tried.len() >= b.len() {
        return first;
    }
    if let Some(i) = (0..b.len())
        .map(|_| b.pick(hash))
        .find(|i| !tried.contains(i))
    {
        return i;
    }
    let untried = |healthy: bool| {
        (0..b.len())
            .map(|k| (first + k) % b.len())
            .find(|&i| !tried.contains(&i) && (!healthy || b.is_healthy(i)))
    };
    untried(true).or_else(|| untried(false)).unwrap_or(first)
}

fn record_for<B>(conn: &ConnInfo, req: &Request<B>, request_id: &HeaderValue) -> AccessRecord {
    AccessRecord {
        time: weir_observe::rfc3339(SystemTime::now()),
        client: conn.client.to_string(),
        listener: conn.listener.to_string(),
        method: req.method().to_string(),
        // Set to the request's site once it is known to be valid.
        host: String::new(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".into(), |p| p.as_str().to_owned()),
        protocol: match req.version() {
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        status: 0,
        bytes: 0,
        duration_ms: 0.0,
        route: String::new(),
        cluster: String::new(),
        upstream: String::new(),
        attempts: 0,
        request_id: request_id.to_str().unwrap_or_default().to_owned(),
        reason: "",
        trace_id: String::new(),
        span_id: String::new(),
    }
}

#[cfg(test)]
mod tests {
    fn returned<A, B, C, R>(_: impl FnOnce(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    fn returned4<A, B, C, D, R>(_: impl FnOnce(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every request's future is built and then moved whole: into the connection's slot (the
    /// native server), into a task (hyper's HTTP/2 server spawns one per stream), and each
    /// awaited call's into its caller's. Its bytes are bytes copied per request (memcpy is ~4%
    /// of a plain request's CPU, ~10% over HTTP/2), which is why phases off the common path
    /// are boxed. The bounds leave a little room; a phase added unboxed will not fit.
    #[test]
    fn the_request_future_stays_small() {
        let handle = returned(super::handle);
        let native = returned4::<&'static crate::h1::Client, _, _, _, _>(crate::h1::Client::send);
        eprintln!("handle: {handle} bytes; the native client's send: {native} bytes");
        assert!(handle <= 6 * 1024, "the request's future is {handle} bytes");
        assert!(
            native <= 1536,
            "the native client's send future is {native} bytes"
        );
    }
}
