//! The L7 request path: route, pick an endpoint, rewrite the head, forward, stream back.
//! Every failure becomes a response here, in one place (`Fail::response`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use weir_balance::InFlight;
use weir_config::RetryOn;
use weir_observe::{AccessRecord, TimeoutKind};

use crate::Shared;
use crate::body::{BodyStalled, BodyTooLarge, ClientBodyError, Idle, ProxyBody};
use crate::connector::ConnectError;
use crate::filtering::{FilterRun, Outcome, Settled, local_response};
use crate::head;
use crate::listener::ConnInfo;
use crate::snapshot::{Cluster, Route, Snapshot};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Runs when the response is finished or abandoned (drop): in-flight counts and the access log.
pub(crate) struct Finish {
    pub bytes: u64,
    start: Instant,
    conn: Arc<ConnInfo>,
    _in_flight: Option<InFlight>,
    /// A place under the cluster's `limits.max_requests`, held to the end of the response.
    _slot: Option<crate::retry::Slot>,
    log: Option<Box<(AccessRecord, weir_observe::AccessLog)>>,
    /// The request's filter run: when this drops, so does a clone of it, and the last clone's
    /// drop runs `on-log` and `context-done` if nothing else did.
    filters: Option<FilterRun>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.conn.request_done();
        if let Some(mut log) = self.log.take() {
            log.0.bytes = self.bytes;
            log.0.duration_ms = self.start.elapsed().as_secs_f64() * 1e3;
            log.1.write(&log.0);
        }
    }
}

/// Why a request was answered by the proxy itself.
enum Fail {
    BadRequest(&'static str),
    /// An `Expect` other than `100-continue` (RFC 9110 §10.1.1).
    Expectation,
    NoRoute,
    TooLarge,
    /// The request body stalled (`limits.request_body_timeout`).
    RequestTimeout,
    UpstreamTimeout,
    Upstream(String),
    /// A cluster limit (circuit breaker) was reached: what, and the limit.
    Overflow(&'static str, usize),
    /// A fail-closed filter failed.
    Filter(Arc<str>),
}

impl Fail {
    fn status(&self) -> StatusCode {
        match self {
            Fail::BadRequest(_) => StatusCode::BAD_REQUEST,
            Fail::Expectation => StatusCode::EXPECTATION_FAILED,
            Fail::NoRoute => StatusCode::NOT_FOUND,
            Fail::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Fail::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Fail::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Fail::Upstream(_) => StatusCode::BAD_GATEWAY,
            Fail::Overflow(..) => StatusCode::SERVICE_UNAVAILABLE,
            Fail::Filter(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn response(&self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let what = match self {
            Fail::BadRequest(why) => why,
            Fail::Expectation => "only the expectation 100-continue is supported",
            Fail::NoRoute => "no route matches this request",
            Fail::TooLarge => "request body too large",
            Fail::RequestTimeout => "request body timed out",
            Fail::UpstreamTimeout => "upstream timed out",
            Fail::Upstream(_) => "upstream unavailable",
            Fail::Filter(name) => {
                return self.respond_with(request_id, &format!("filter {name:?} failed"));
            }
            Fail::Overflow(what, max) => {
                return self.respond_with(
                    request_id,
                    &format!("upstream cluster at its limit of {max} {what}"),
                );
            }
        };
        self.respond_with(request_id, what)
    }

    fn respond_with(&self, request_id: &HeaderValue, what: &str) -> Response<ProxyBody> {
        let id = request_id.to_str().unwrap_or_default();
        let body = format!("{} {what} (request id {id})\n", self.status().as_u16());
        let mut res = Response::new(ProxyBody::full(body));
        *res.status_mut() = self.status();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        res.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        res
    }
}

/// Handles one downstream request. Never fails: errors are responses.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    conn.request_started(req.version() == Version::HTTP_2);
    // One atomic load; the Arc keeps this snapshot alive for the whole request even if a reload
    // swaps in another.
    let snap = shared.snapshot.load_full();
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
        _ => {
            let id = new_request_id();
            req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    };
    let log = snap
        .access_log
        .as_ref()
        .map(|l| Box::new((record_for(&conn, &req, &request_id), l.clone())));
    let mut finish = Finish {
        bytes: 0,
        start,
        conn: conn.clone(),
        _in_flight: None,
        _slot: None,
        log,
        filters: None,
    };

    let (res, route) = match forward(&snap, &conn, req, &request_id, &mut finish).await {
        Ok((res, route)) => (res, Some(route)),
        Err((fail, route)) => {
            if let Fail::Upstream(why) = &fail {
                tracing::debug!(request_id = ?request_id, "upstream error: {why}");
            }
            (fail.response(&request_id), route)
        }
    };
    if let Some(run) = &finish.filters {
        run.set_status(res.status());
        run.verdict_over();
    }
    let status = res.status().as_u16();
    match route {
        Some(r) => r.stats.record(status, start.elapsed()),
        None => shared.registry.record_unrouted(status),
    }
    if let Some(log) = &mut finish.log {
        log.0.status = status;
        if let Some(r) = route {
            log.0.route = r.name.to_string();
            log.0.cluster = r.cluster.name.to_string();
        }
    }
    let (parts, body) = res.into_parts();
    Response::from_parts(parts, body.with_finish(finish))
}

type Forwarded<'s> = Result<(Response<ProxyBody>, &'s Route), (Fail, Option<&'s Route>)>;

async fn forward<'s>(
    snap: &'s Snapshot,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    request_id: &HeaderValue,
    finish: &mut Finish,
) -> Forwarded<'s> {
    // One host and one path, decided here, for routing, filters, the log and the upstream.
    let site = head::site(&req).map_err(|e| (Fail::BadRequest(e.message()), None))?;
    if !head::expectation_met(req.headers()) {
        return Err((Fail::Expectation, None));
    }
    let policy = snap.policy(&conn.listener);
    // Cheap (shared bytes); frees `req` to be taken apart while the path is borrowed.
    let uri = req.uri().clone();
    let path = match weir_router::normalize_path(uri.path(), policy.paths) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(path = uri.path(), "refused: {e}");
            return Err((Fail::BadRequest("invalid request path"), None));
        }
    };
    if let Some(log) = &mut finish.log {
        // The log shows what was routed: the request's one host and its normalized path.
        if let Some(site) = &site {
            log.0.host = site.to_str().unwrap_or_default().to_owned();
        }
        // `normalize_path` borrows exactly when the path was already normal.
        if let std::borrow::Cow::Owned(path) = &path {
            log.0.path = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
        }
    }
    let Some(idx) = snap.router.find(
        req.method(),
        site.as_ref().map(head::host_of),
        &path,
        uri.query(),
        req.headers(),
    ) else {
        return Err((Fail::NoRoute, None));
    };
    let route = &snap.routes[idx];
    let cluster = &route.cluster;
    // The route's timeout bounds the request phases of its filters (instance waits and
    // callouts included) and the upstream's response head together.
    let deadline = tokio::time::Instant::now() + route.timeout;

    if let (Some(limit), Some(len)) = (snap.max_body, content_length(req.headers()))
        && len > limit
    {
        return Err((Fail::TooLarge, Some(route)));
    }

    let upgrade =
        is_upgrade(&req, &snap.limits.upgrade_protocols).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let upstream_site = route.host_rewrite.as_ref().or(site.as_ref());

    let downstream_version = parts.version;
    let h = &mut parts.headers;
    let upgrade_proto = if upgrade.is_some() {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    };
    head::drop_stale_length(h);
    strip_hop_by_hop(h);
    // This hop met the expectation (hyper sends `100 Continue` when the body is first read).
    h.remove(header::EXPECT);
    if let Some(proto) = &upgrade_proto {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto.clone());
    }
    // For HTTP/2 upstreams Host is kept identical to `:authority` (RFC 9113 §8.3.1 allows that
    // when converting from HTTP/1.1, and some frameworks read only Host).
    match upstream_site {
        Some(s) => h.insert(header::HOST, s.clone()),
        None => h.remove(header::HOST),
    };
    let trusted = policy.trusts(conn.client.ip());
    head::set_forwarding(h, &conn.client_ip, trusted, site.as_ref(), conn.tls);
    append_via(h, downstream_version);
    h.insert(X_REQUEST_ID.clone(), request_id.clone());

    let mut path_and_query = rewrite_path(route, &path, parts.uri.path(), parts.uri.query())
        .unwrap_or_else(|| {
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        });

    // Filters see the request as it will go upstream, and may change it or answer it.
    let filters = match &route.chain {
        None => None,
        Some(chain) => {
            let props = weir_filters::Props {
                authority: site
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                scheme: if conn.tls { "https" } else { "http" },
                client: conn.client.to_string(),
                route: route.name.clone(),
                cluster: cluster.name.clone(),
                request_id: request_id.to_str().unwrap_or_default().to_string(),
            };
            let run = FilterRun::new(chain.clone(), props, parts.method.clone(), deadline);
            finish.filters = Some(run.clone());
            let mut p = path_and_query.as_str().to_string();
            if let Some(out) = run.request_headers(&mut parts.headers, &mut p).await {
                return answer(&run, out, request_id, route).await;
            }
            if p != path_and_query.as_str() {
                path_and_query = PathAndQuery::try_from(p)
                    .map_err(|_| (Fail::BadRequest("invalid path from filter"), Some(route)))?;
            }
            Some(run)
        }
    };

    let hash = cluster
        .hash_on
        .as_ref()
        .map(|h| hash_of_parts(h, &parts.headers, conn.client));
    parts.version = if cluster.h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let filtered_body = filters
        .as_ref()
        .is_some_and(|run| run.phases().contains(weir_filters::Phases::REQUEST_BODY));
    let request_idle = Idle::new(snap.request_body_timeout, snap.timeouts);
    let up_body = match &filters {
        Some(run) if filtered_body => {
            // The filters may change the body's length.
            parts.headers.remove(header::CONTENT_LENGTH);
            run.pipe_body(
                ProxyBody::request(body, snap.max_body, request_idle),
                false,
                false,
            )
        }
        _ => ProxyBody::request(body, snap.max_body, request_idle),
    };

    if let Some(max) = cluster.max_requests {
        match crate::retry::Slot::take(&cluster.stats, max) {
            Some(slot) => finish._slot = Some(slot),
            None => return Err((Fail::Overflow("requests in flight", max), Some(route))),
        }
    }

    // Tries: the first on the balancer's pick, each retry on an endpoint not tried yet.
    let policy = &cluster.retry;
    // Each retry needs an endpoint not tried yet (like nginx's next upstream: trying a failed
    // endpoint again at once mostly doubles the wait), so a one-endpoint cluster never retries.
    let attempts = if upgrade.is_some() {
        1
    } else {
        policy.attempts.min(cluster.endpoints.len() as u32)
    };
    let mut resend = crate::retry::Resend::new(up_body, attempts, policy.buffer);
    // What a retry sends: the head as the first try sent it (taken before it is consumed).
    let method = parts.method.clone();
    let retry_head = (attempts > 1).then(|| parts.headers.clone());
    let mut first = Some(parts);
    let mut tried = crate::retry::Tried::default();
    let mut retrying = None;
    let mut res = loop {
        let ep_idx = pick_untried(cluster, hash, tried.as_slice());
        tried.push(ep_idx);
        let attempt = tried.as_slice().len() as u32;
        finish._in_flight = Some(cluster.balancer.begin(ep_idx));
        let endpoint = &cluster.endpoints[ep_idx];
        if let Some(log) = &mut finish.log {
            log.0.upstream.clone_from(&endpoint.address);
            log.0.attempts = attempt;
        }
        let Some(body) = resend.next() else {
            return Err((
                Fail::Upstream("request body cannot be sent again".into()),
                Some(route),
            ));
        };
        let mut parts = match first.take() {
            Some(p) => p,
            None => {
                let headers = retry_head.as_ref().expect("a retry has the head");
                let mut p = Request::new(()).into_parts().0;
                p.method = method.clone();
                p.headers = headers.clone();
                p.version = if cluster.h2 {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                };
                p
            }
        };
        // HTTP/1.0 without Host goes upstream as HTTP/1.1, which needs one: name the endpoint.
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(endpoint.authority.as_str())
        {
            parts.headers.insert(header::HOST, v);
        }
        // HTTP/1.1: the URI names the endpoint (one pool per endpoint, shared by every site) and
        // Host carries the site. HTTP/2: the URI authority becomes `:authority`, so it carries
        // the site and the endpoint's own client knows where to connect.
        let authority = match (&endpoint.h2_client, upstream_site) {
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
        parts.uri = match Uri::from_parts(uri) {
            Ok(u) => u,
            Err(_) => return Err((Fail::BadRequest("invalid request target"), Some(route))),
        };
        let up_req = Request::from_parts(parts, body);
        let client = endpoint.h2_client.as_ref().unwrap_or(&cluster.client);
        // This try ends at the request's deadline, or sooner by the cluster's per-try limit.
        let try_deadline = policy
            .per_try_timeout
            .map_or(deadline, |t| deadline.min(tokio::time::Instant::now() + t));
        let sent = tokio::time::timeout_at(try_deadline, client.request(up_req)).await;
        // A failed try: how it failed, and what the client gets if it is not retried.
        let (kind, last) = match sent {
            Ok(Ok(res)) => {
                cluster.answered(ep_idx, res.status());
                match policy.retried_status(res.status()) {
                    Some(kind) => (kind, Err(res)),
                    None => break res,
                }
            }
            Err(_) => {
                // No head in time: a failed try for passive health too — unless the client was
                // still sending its body, or the try waited at the cluster's connection cap.
                snap.timeouts.fired(TimeoutKind::UpstreamHead);
                if resend.all_sent() && !cluster.at_connection_cap() {
                    cluster.try_failed(ep_idx);
                }
                if try_deadline == deadline {
                    return Err((Fail::UpstreamTimeout, Some(route)));
                }
                (RetryOn::Timeout, Ok(Fail::UpstreamTimeout))
            }
            Ok(Err(e)) => {
                if let Some(run) = &filters
                    && let Some(out) = run.take_outcome().await
                {
                    return answer(run, out, request_id, route).await;
                }
                // A body the client broke (hyper may report it as a reset): the client's fault.
                if let Some(fault) = resend.client_fault() {
                    let fail = match fault {
                        crate::retry::ClientFault::TooLarge => Fail::TooLarge,
                        crate::retry::ClientFault::Malformed => {
                            Fail::BadRequest("malformed request body")
                        }
                        crate::retry::ClientFault::Stalled => Fail::RequestTimeout,
                    };
                    return Err((fail, Some(route)));
                }
                match classify(snap, cluster, ep_idx, &e) {
                    (fail, Some(kind)) => (kind, Ok(fail)),
                    (fail, None) => return Err((fail, Some(route))),
                }
            }
        };
        let admitted = (attempt < attempts
            && policy.retries(kind, &method, route.retry_any_method)
            && resend.again()
            && tokio::time::Instant::now() < deadline)
            .then(|| policy.admit(&cluster.stats, cluster.in_flight()))
            .flatten();
        match (admitted, last) {
            (Some(r), _) => {
                tracing::debug!(request_id = ?request_id, cluster = %cluster.name, endpoint = %endpoint.address, ?kind, attempt, "retrying on another endpoint");
                retrying = Some(r);
            }
            // The upstream's own error response goes to the client as it is.
            (None, Err(res)) => break res,
            (None, Ok(fail)) => return Err((fail, Some(route))),
        }
    };
    drop(retrying);
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A switch the client did not ask for (or that is not allowed) cannot be relayed: the
        // client would read the new protocol as HTTP.
        let Some(down) = upgrade else {
            return Err((
                Fail::Upstream(
                    "101 Switching Protocols to a request without an allowed upgrade".into(),
                ),
                Some(route),
            ));
        };
        // Relayed by the connection's own task once hyper hands the connection over.
        let up = hyper::upgrade::on(&mut res);
        *conn.tunnel.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(crate::tunnel::Tunnel { down, up });
        let (mut parts, _) = res.into_parts();
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        if let Some(run) = filters {
            run.set_status(StatusCode::SWITCHING_PROTOCOLS);
            run.finish().await;
        }
        return Ok((Response::from_parts(parts, ProxyBody::empty()), route));
    }

    let (mut parts, body) = res.into_parts();
    head::drop_stale_length(&mut parts.headers);
    let mut body = ProxyBody::stream(body, Idle::new(cluster.body_timeout, snap.timeouts));
    if filtered_body && let Some(run) = &filters {
        match run.settle_request_body(body, route.timeout).await {
            Settled::Answer(out) => return answer(run, out, request_id, route).await,
            Settled::Body(b) => body = b,
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    append_via(&mut parts.headers, parts.version);
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    parts.version = downstream_version;
    let Some(run) = filters else {
        return Ok((Response::from_parts(parts, body), route));
    };
    if let Some(out) = run
        .response_headers(
            &mut parts.status,
            &mut parts.headers,
            tokio::time::Instant::now() + route.timeout,
        )
        .await
    {
        return answer(&run, out, request_id, route).await;
    }
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
    Ok((Response::from_parts(parts, body), route))
}

/// The filters decided the answer: `on-log` sees its status, then the run finishes.
async fn answer<'s>(
    run: &FilterRun,
    out: Outcome,
    request_id: &HeaderValue,
    route: &'s Route,
) -> Forwarded<'s> {
    let answer = match out {
        Outcome::Local(r) => Ok((local_response(r, request_id), route)),
        Outcome::Failed(filter) => Err((Fail::Filter(filter), Some(route))),
    };
    run.set_status(match &answer {
        Ok((res, _)) => res.status(),
        Err((fail, _)) => fail.status(),
    });
    run.finish().await;
    answer
}

/// Maps a client error to a failure and, when a retry could help, the kind of failed try;
/// feeds passive health checks with connect failures and resets.
fn classify(
    snap: &Snapshot,
    cluster: &Cluster,
    ep: usize,
    e: &hyper_util::client::legacy::Error,
) -> (Fail, Option<RetryOn>) {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            if let ConnectError::Overflow(max) = c {
                // The proxy's own limit, not the endpoint's failure: neither health nor retry.
                return (Fail::Overflow("connections", *max), None);
            }
            cluster.try_failed(ep);
            let fail = match c {
                ConnectError::Timeout(_) => {
                    snap.timeouts.fired(TimeoutKind::UpstreamConnect);
                    Fail::UpstreamTimeout
                }
                ConnectError::Failed { .. } | ConnectError::Overflow(_) => {
                    Fail::Upstream(c.to_string())
                }
            };
            return (fail, Some(RetryOn::ConnectFailure));
        }
        if s.downcast_ref::<BodyTooLarge>().is_some() {
            return (Fail::TooLarge, None);
        }
        if s.downcast_ref::<ClientBodyError>().is_some() {
            return (Fail::BadRequest("malformed request body"), None);
        }
        if let Some(stalled) = s.downcast_ref::<BodyStalled>() {
            // Counted where it fired; an upstream body cannot stall before its head.
            if stalled.from_client {
                return (Fail::RequestTimeout, None);
            }
        }
        src = s.source();
    }
    // Closed, reset, or an answer that is not HTTP, before a response head.
    cluster.try_failed(ep);
    (Fail::Upstream(format!("{e:?}")), Some(RetryOn::Reset))
}

/// The balancer's pick if it has not been tried yet; else another endpoint not tried (a fresh
/// draw, then the first healthy one in order: the hash policies give one answer per key).
fn pick_untried(cluster: &Cluster, hash: Option<u64>, tried: &[usize]) -> usize {
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

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// An upgrade to one of `limits.upgrade_protocols` (default: WebSocket, RFC 6455), the protocol
/// switches passed through. Any other `Upgrade` (h2c above all, which would turn the upstream
/// connection into an unrouted HTTP/2 tunnel; config refuses to allow it) is dropped with the
/// other hop-by-hop headers and the request is forwarded as plain HTTP/1.1.
fn is_upgrade(req: &Request<Incoming>, allowed: &[String]) -> bool {
    let mut upgrade = req.headers().get_all(header::UPGRADE).iter();
    req.version() == Version::HTTP_11
        && upgrade.next().is_some_and(|u| {
            allowed
                .iter()
                .any(|a| u.as_bytes().eq_ignore_ascii_case(a.as_bytes()))
        })
        && upgrade.next().is_none()
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including every header named in Connection.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        // Every Connection line counts (HeaderMap::remove would return only the first value).
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        h.remove(header::CONNECTION);
        for name in named {
            h.remove(name);
        }
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        h.remove(name);
    }
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::UPGRADE);
    h.remove(header::TRAILER);
    h.remove(header::PROXY_AUTHENTICATE);
    h.remove(header::PROXY_AUTHORIZATION);
    // `TE: trailers` is the one TE value meaningful end to end (gRPC needs it).
    if let Some(te) = h.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        h.remove(header::TE);
    }
}

fn append_via(h: &mut HeaderMap, v: Version) {
    let ours = match v {
        Version::HTTP_2 => "2 weir",
        Version::HTTP_10 => "1.0 weir",
        _ => "1.1 weir",
    };
    let value = match head::joined(h, &header::VIA) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {ours}")).ok(),
        None => Some(HeaderValue::from_static(ours)),
    };
    if let Some(value) = value {
        h.insert(header::VIA, value);
    }
}

fn rewrite_path(
    route: &Route,
    normalized: &str,
    raw_path: &str,
    query: Option<&str>,
) -> Option<PathAndQuery> {
    let (from, to) = match &route.prefix_rewrite {
        Some((from, to)) => (from.as_str(), to.as_str()),
        // Normalization changed the path: send the normalized one, like nginx does.
        None if normalized != raw_path => ("", ""),
        None => return None,
    };
    // The route matched, so the path starts with `from` (ignoring case, if the route does).
    let rest = match normalized.get(..from.len()) {
        Some(head) if head.eq_ignore_ascii_case(from) => &normalized[from.len()..],
        _ => normalized,
    };
    let mut s = String::with_capacity(to.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(to);
    s.push_str(rest);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s).ok()
}

fn hash_of_parts(on: &weir_config::HashOn, headers: &HeaderMap, client: SocketAddr) -> u64 {
    use weir_config::HashOn;
    match on {
        HashOn::Header(name) => match headers.get(name.as_str()) {
            Some(v) => weir_balance::hash_key(v.as_bytes()),
            None => client_hash(client),
        },
        HashOn::Cookie(name) => {
            cookie(headers, name).map_or_else(|| client_hash(client), weir_balance::hash_key)
        }
        HashOn::ClientIp => client_hash(client),
    }
}

fn client_hash(client: SocketAddr) -> u64 {
    match client.ip() {
        std::net::IpAddr::V4(ip) => weir_balance::hash_key(&ip.octets()),
        std::net::IpAddr::V6(ip) => weir_balance::hash_key(&ip.octets()),
    }
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    h.get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
        .next()
}

/// A random 128-bit id, formatted like a UUID v4.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    n = (n & !(0xf000 << 64)) | (0x4000 << 64); // version 4
    n = (n & !(0xc000 << 48)) | (0x8000 << 48); // variant 10xx
    let mut out = BytesMut::with_capacity(36);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.put_u8(b'-');
        }
        out.put_u8(HEX[((n >> (124 - 4 * i)) & 0xf) as usize]);
    }
    HeaderValue::from_maybe_shared(out.freeze()).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn record_for(conn: &ConnInfo, req: &Request<Incoming>, request_id: &HeaderValue) -> AccessRecord {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("proxy-authorization", "x"),
            ("x-keep", "yes"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-keep"]);

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn via_appends() {
        let mut h = HeaderMap::new();
        append_via(&mut h, Version::HTTP_11);
        append_via(&mut h, Version::HTTP_2);
        assert_eq!(h.get(header::VIA).unwrap(), "1.1 weir, 2 weir");
    }

    #[test]
    fn request_ids_look_like_uuid_v4_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert_eq!(s.matches('-').count(), 4);
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; sid=abc ;b=2"),
        );
        assert_eq!(cookie(&h, "sid"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "zz"), None);
    }
}
