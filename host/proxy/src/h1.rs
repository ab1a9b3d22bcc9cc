//! Weir's own HTTP/1.1 upstream client (`clusters[].client: native`, the default).
//!
//! hyper-util's pooled client hands each request to a task that owns the connection, through a
//! channel, and the response back the same way: two cross-task wake-ups and a channel per
//! request, which the benchmark profile shows as the largest part of the proxy's own cost. Here
//! the request's own task takes a connection from the endpoint's pool (or opens one), writes the
//! head and body, reads the response head with `httparse`, and hands the client a body that
//! reads the rest from the same connection; when that body ends cleanly the connection goes
//! back to the pool. No task, no channel.
//!
//! The response side is strict, because what it passes on is what the client trusts:
//! - the head is bounded ([`MAX_HEAD`] bytes, [`MAX_HEADERS`] fields); obsolete line folding,
//!   invalid names or values, and framing that could be read two ways (`Content-Length` values
//!   that disagree, `chunked` twice or not last) are refused (the client gets 502);
//! - `Transfer-Encoding` wins over `Content-Length` (RFC 9112 §6.3), and such a connection is
//!   not reused; a body without framing is read to the connection's end, never reused either;
//! - a connection goes back to the pool only when the request was written whole, the response
//!   was read to its exact end with nothing after it, and neither side said `close`;
//! - `1xx` answers before the final one are skipped; `101` is passed up (upgrades themselves go
//!   through hyper, so the request path refuses it).
//!
//! The request is written while the response head is read, so an upstream that answers early
//! (a `413` before reading the body) is heard at once. A request with no body that fails on a
//! pooled connection before any byte came back (the upstream closed it as it was reused) is
//! sent once more on a new connection, as hyper does.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;

use crate::body::{BoxError, ProxyBody};
use crate::connector::{ConnectError, Connector, UpstreamConn};
use crate::trace::Traceparent;

/// Longest response head (status line and fields) taken from an upstream.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most fields in a response head (and in a trailer section).
pub(crate) const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section.
const MAX_TRAILERS: usize = 16 * 1024;
/// The first read of a response; bodies read up to [`MAX_READ`] at a time.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;
/// Body frames smaller than this are copied beside their chunk framing; larger ones are
/// written as they are (vectored).
const COPY_BELOW: usize = 1024;

/// Why a try on the native client failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("cannot connect")]
    Connect(#[source] ConnectError),
    /// The request body failed (the client's fault, a filter, a limit): its error is the source.
    #[error("request body failed")]
    Body(#[source] BoxError),
    #[error("request body does not match its content-length")]
    BodyLength,
    #[error("upstream closed the connection before a response head")]
    Closed,
    #[error("upstream connection failed")]
    Io(#[source] io::Error),
    #[error("invalid response from upstream: {0}")]
    Invalid(&'static str),
}

/// One cluster's native client: a pool per endpoint.
pub(crate) struct Client {
    connector: Connector,
    pools: Vec<Arc<Pool>>,
}

/// One endpoint's idle connections, most recently used last.
pub(crate) struct Pool {
    uri: Uri,
    idle: Mutex<Vec<Parked>>,
    /// A connection was parked: a request waiting for one (at the cluster's connection cap,
    /// or still connecting) takes it.
    parked: tokio::sync::Notify,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Parked {
    conn: UpstreamConn,
    since: Instant,
}

impl Pool {
    /// The most recently parked connection that is still usable.
    fn checkout(&self) -> Option<UpstreamConn> {
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                match idle.pop() {
                    None => break None,
                    Some(p) if p.since.elapsed() < self.idle_timeout && p.conn.is_quiet() => {
                        break Some(p.conn);
                    }
                    Some(p) => stale.push(p),
                }
            }
        };
        // Closed outside the lock.
        drop(stale);
        found
    }

    /// Parks a connection that finished an exchange cleanly (or closes it when the pool is
    /// full).
    fn put(&self, conn: UpstreamConn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Parked {
                conn,
                since: Instant::now(),
            });
            drop(idle);
            self.parked.notify_one();
        }
    }

    /// Closes connections idle past the timeout or no longer quiet.
    fn reap(&self) {
        let stale: Vec<Parked> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (keep, stale) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|p| p.since.elapsed() < self.idle_timeout && p.conn.is_quiet());
            *idle = keep;
            stale
        };
        drop(stale);
    }
}

impl Client {
    /// A client for `endpoints` (their URIs, in the cluster's order), keeping at most
    /// `max_idle` idle connections per endpoint for at most `idle_timeout`.
    pub(crate) fn new(
        connector: Connector,
        endpoints: impl IntoIterator<Item = Uri>,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Client {
        let pools: Vec<Arc<Pool>> = endpoints
            .into_iter()
            .map(|uri| {
                Arc::new(Pool {
                    uri,
                    idle: Mutex::new(Vec::new()),
                    parked: tokio::sync::Notify::new(),
                    max_idle,
                    idle_timeout,
                })
            })
            .collect();
        // Idle connections the upstream closed are noticed at checkout; the reaper closes the
        // ones nobody checks out (it ends with the cluster).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak: Vec<Weak<Pool>> = pools.iter().map(Arc::downgrade).collect();
            let every = (idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let mut alive = false;
                    for pool in weak.iter().filter_map(Weak::upgrade) {
                        alive = true;
                        pool.reap();
                    }
                    if !alive {
                        return;
                    }
                }
            });
        }
        Client { connector, pools }
    }

    /// Idle connections parked for endpoint `ep` (for tests and the admin view).
    #[cfg(test)]
    fn idle(&self, ep: usize) -> usize {
        self.pools[ep].idle.lock().unwrap().len()
    }

    /// A pooled connection, or a new one; whichever comes first while connecting (or waiting
    /// at the cluster's connection cap) is taken, and whether it was pooled.
    async fn connection(&self, pool: &Pool) -> Result<(UpstreamConn, bool), Error> {
        // Registered before looking, so a connection parked in between is not missed.
        let parked = pool.parked.notified();
        tokio::pin!(parked);
        parked.as_mut().enable();
        if let Some(c) = pool.checkout() {
            return Ok((c, true));
        }
        let open = self.connector.open(&pool.uri);
        tokio::pin!(open);
        loop {
            tokio::select! {
                r = &mut open => return Ok((r.map_err(Error::Connect)?, false)),
                () = &mut parked => {
                    parked.set(pool.parked.notified());
                    parked.as_mut().enable();
                    if let Some(c) = pool.checkout() {
                        return Ok((c, true));
                    }
                }
            }
        }
    }

    /// Sends `req` to endpoint `ep`: the response head, with a body that reads the rest.
    pub(crate) async fn send(
        &self,
        ep: usize,
        req: Request<ProxyBody>,
        traceparent: Option<&Traceparent>,
    ) -> Result<Response<Body>, Error> {
        let pool = &self.pools[ep];
        let (parts, body) = req.into_parts();
        let (head, framing) = encode_head(&parts, &body, traceparent)?;
        // Only a request without a body can be sent twice (see below).
        let mut body = (framing != Framing::Empty).then_some(body);
        let mut fresh = false;
        loop {
            // A pooled connection at once; connecting (or waiting for one) is boxed, so the
            // common case's future does not carry the connector's.
            let (mut conn, reused) = if fresh {
                let c = Box::pin(self.connector.open(&pool.uri)).await;
                (c.map_err(Error::Connect)?, false)
            } else if let Some(c) = pool.checkout() {
                (c, true)
            } else {
                Box::pin(self.connection(pool)).await?
            };
            let mut ex = Exchange {
                upload: Some(Upload {
                    out: VecDeque::from([head.clone()]),
                    framing,
                    body: body.take(),
                }),
                write_failed: None,
                read: BytesMut::new(),
                method: &parts.method,
            };
            match std::future::poll_fn(|cx| ex.poll(cx, &mut conn)).await {
                Ok(head) => {
                    return Ok(head.into_response(conn, ex, pool.clone()));
                }
                // The upstream closed a pooled connection as it was reused: nothing came back
                // and nothing but the head went out, so once more on a new connection.
                Err(Error::Closed | Error::Io(_))
                    if reused && ex.read.is_empty() && framing == Framing::Empty =>
                {
                    tracing::debug!(endpoint = ?pool.uri, "pooled connection was closed; resending on a new one");
                    fresh = true;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// How the request body is framed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// No body.
    Empty,
    /// `Content-Length`: bytes still to write.
    Length(u64),
    Chunked,
}

/// The request line and fields, and how the body follows. The framing is the proxy's: a
/// `Content-Length` the head carries is kept (and the body held to it); otherwise the body's
/// own size, or chunked.
/// `traceparent` (the proxy's, with `tracing:` on) is written as one more field.
fn encode_head(
    parts: &http::request::Parts,
    body: &ProxyBody,
    traceparent: Option<&Traceparent>,
) -> Result<(Bytes, Framing), Error> {
    let mut out = BytesMut::with_capacity(256 + parts.headers.len() * 32);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let declared = match parts.headers.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            std::str::from_utf8(v.as_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(Error::BodyLength)?,
        ),
        None => None,
    };
    let framing = match declared {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if body.is_end_stream() => Framing::Empty,
        None => match body.size_hint().exact() {
            Some(0) => Framing::Empty,
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
                Framing::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        },
    };
    for (name, value) in &parts.headers {
        // The framing above is the only one sent.
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(t) = traceparent {
        out.extend_from_slice(b"traceparent: ");
        out.extend_from_slice(t.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((out.freeze(), framing))
}

/// One request written and its response head read, at the same time.
struct Exchange<'a> {
    /// The request still being written (`None` once it all went out).
    upload: Option<Upload>,
    /// Writing failed: the upstream may still have answered (then the answer stands).
    write_failed: Option<io::Error>,
    read: BytesMut,
    method: &'a Method,
}

impl Exchange<'_> {
    fn poll(&mut self, cx: &mut Context<'_>, io: &mut UpstreamConn) -> Poll<Result<Head, Error>> {
        loop {
            let mut progress = false;
            // The response head, as far as it has come.
            if !self.read.is_empty() {
                if let Some(head) = parse_head(&mut self.read, self.method)? {
                    return Poll::Ready(Ok(head));
                }
                if self.read.len() > MAX_HEAD {
                    return Poll::Ready(Err(Error::Invalid("response head too large")));
                }
            }
            if self.read.capacity() - self.read.len() < 1024 {
                self.read.reserve(FIRST_READ);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut self.read) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(match self.write_failed.take() {
                        Some(e) => Error::Io(e),
                        None if self.read.is_empty() => Error::Closed,
                        None => Error::Invalid("response head cut short"),
                    }));
                }
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => {}
            }
            if let Some(up) = &mut self.upload {
                match up.poll_write(cx, io) {
                    Poll::Ready(Ok(())) => {
                        self.upload = None;
                        progress = true;
                    }
                    Poll::Ready(Err(WriteError::Io(e))) => {
                        // Keep reading: an upstream that answered and closed is still heard.
                        self.upload = None;
                        self.write_failed = Some(e);
                        progress = true;
                    }
                    Poll::Ready(Err(WriteError::Fatal(e))) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

/// A request on its way out: queued bytes, then the rest of the body. An upstream may answer
/// before the body is all sent (an echo, an early `413`): the response body then keeps
/// writing it while it is read.
struct Upload {
    /// Bytes to write, in order.
    out: VecDeque<Bytes>,
    framing: Framing,
    /// The request body, until it ended.
    body: Option<ProxyBody>,
}

impl Upload {
    /// Writes what is queued and the body after it, to the end of the request.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut UpstreamConn,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            while !self.out.is_empty() {
                let mut slices = [IoSlice::new(&[]); 16];
                let n = self.out.len().min(slices.len());
                for (s, b) in slices.iter_mut().zip(self.out.iter()) {
                    *s = IoSlice::new(b);
                }
                let wrote = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))
                    .map_err(WriteError::Io)?;
                if wrote == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                advance(&mut self.out, wrote);
            }
            let Some(body) = self.body.as_mut() else {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                return Poll::Ready(Ok(()));
            };
            if self.framing == Framing::Empty {
                self.body = None;
                continue;
            }
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => self.queue_frame(frame)?,
                Some(Err(e)) => return Poll::Ready(Err(WriteError::Fatal(Error::Body(e)))),
                None => {
                    match self.framing {
                        Framing::Length(0) | Framing::Empty => {}
                        Framing::Length(_) => {
                            return Poll::Ready(Err(WriteError::Fatal(Error::BodyLength)));
                        }
                        Framing::Chunked => self.out.push_back(Bytes::from_static(b"0\r\n\r\n")),
                    }
                    self.body = None;
                }
            }
        }
    }

    /// Queues a body frame. Request trailers are not sent: the `Trailer` field that would
    /// declare them is hop-by-hop and already gone, and fields in trailers (framing, routing,
    /// credentials) are where smuggling hides (hyper's client sends none here either).
    fn queue_frame(&mut self, frame: Frame<Bytes>) -> Result<(), WriteError> {
        let Ok(data) = frame.into_data() else {
            return Ok(());
        };
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            Framing::Length(left) => {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or(WriteError::Fatal(Error::BodyLength))?;
                self.out.push_back(data);
            }
            Framing::Chunked => {
                let size = format!("{:x}\r\n", data.len());
                if data.len() < COPY_BELOW {
                    let mut b = BytesMut::with_capacity(size.len() + data.len() + 2);
                    b.extend_from_slice(size.as_bytes());
                    b.extend_from_slice(&data);
                    b.extend_from_slice(b"\r\n");
                    self.out.push_back(b.freeze());
                } else {
                    self.out.push_back(Bytes::from(size));
                    self.out.push_back(data);
                    self.out.push_back(Bytes::from_static(b"\r\n"));
                }
            }
            Framing::Empty => return Err(WriteError::Fatal(Error::BodyLength)),
        }
        Ok(())
    }
}

enum WriteError {
    /// The connection failed (the upstream may have answered first).
    Io(io::Error),
    /// The request cannot be completed whatever the upstream says.
    Fatal(Error),
}

fn advance(out: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = out.front_mut() else { return };
        if front.len() <= n {
            n -= front.len();
            out.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

/// A parsed final response head, and how its body is framed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: State,
    /// Neither side asked to close, and the framing allows reuse.
    keep_alive: bool,
}

impl Head {
    fn into_response(
        self,
        conn: UpstreamConn,
        ex: Exchange<'_>,
        pool: Arc<Pool>,
    ) -> Response<Body> {
        let reusable = self.keep_alive && ex.write_failed.is_none();
        let mut body = Body {
            conn: Some(conn),
            pool,
            buf: ex.read,
            state: self.body,
            upload: ex.upload.map(Box::new),
            reusable,
            handed: false,
            failed: None,
        };
        // A response without a body is over already: a reader that sees its end polls nothing.
        if matches!(body.state, State::Length(0)) {
            body.done();
        }
        let mut res = Response::new(body);
        *res.status_mut() = self.status;
        *res.version_mut() = self.version;
        *res.headers_mut() = self.headers;
        res
    }
}

/// Takes a final response head off the front of `buf`: `None` while it is incomplete.
/// Interim (`1xx` other than `101`) heads are dropped on the way.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    loop {
        let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Invalid("too many response header fields"));
            }
            Err(_) => return Err(Error::Invalid("malformed response head")),
        };
        let code = res.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Invalid("invalid response status"))?;
        let version = if res.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        // Room for what the proxy adds on the way down (`Via`, `X-Request-Id`) and a little for
        // filters, so the map does not grow (reallocating both its tables) as they are added.
        let mut headers = HeaderMap::with_capacity(res.headers.len() + 4);
        let (mut close_token, mut keep_alive_token) = (false, false);
        let mut length: Option<u64> = None;
        let mut codings = 0usize;
        let mut chunked_last = false;
        let mut chunked_count = 0usize;
        for f in res.headers.iter() {
            let name = HeaderName::from_bytes(f.name.as_bytes())
                .map_err(|_| Error::Invalid("invalid response header name"))?;
            let value = HeaderValue::from_bytes(f.value)
                .map_err(|_| Error::Invalid("invalid response header value"))?;
            if name == header::CONTENT_LENGTH {
                for v in f.value.split(|&b| b == b',') {
                    let n = parse_length(trim(v))
                        .ok_or(Error::Invalid("invalid response content-length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(Error::Invalid("conflicting response content-lengths"));
                    }
                    length = Some(n);
                }
            } else if name == header::TRANSFER_ENCODING {
                for coding in f.value.split(|&b| b == b',').map(trim) {
                    if coding.is_empty() {
                        continue;
                    }
                    codings += 1;
                    chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                    chunked_count += usize::from(chunked_last);
                }
            } else if name == header::CONNECTION {
                for token in f.value.split(|&b| b == b',').map(trim) {
                    close_token |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            headers.append(name, value);
        }
        buf.advance(len);
        // HTTP/1.1 persists unless told to close; HTTP/1.0 only when told to keep alive.
        let close = close_token || (version == Version::HTTP_10 && !keep_alive_token);
        let no_body = method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let (body, reusable) = if no_body {
            (State::Length(0), status != StatusCode::SWITCHING_PROTOCOLS)
        } else if codings > 0 {
            if chunked_count > 1 || (chunked_count == 1 && !chunked_last) {
                return Err(Error::Invalid("ambiguous response transfer-encoding"));
            }
            // Transfer-Encoding wins (RFC 9112 §6.3); a message that had both is not trusted
            // with the connection afterwards.
            let had_length = headers.remove(header::CONTENT_LENGTH).is_some();
            if chunked_last {
                (State::Chunked(Chunk::Size), !had_length)
            } else {
                (State::Eof, false)
            }
        } else {
            match length {
                Some(n) => (State::Length(n), true),
                None => (State::Eof, false),
            }
        };
        return Ok(Some(Head {
            status,
            version,
            headers,
            body,
            keep_alive: reusable && !close,
        }));
    }
}

pub(crate) fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Digits only, at most 19 of them (no sign, no spaces, no overflow).
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Where a response body stands.
#[derive(Clone, Copy, Debug)]
pub(crate) enum State {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(Chunk),
    /// Read to the connection's end.
    Eof,
    Done,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// Bytes left of a chunk's data.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// A response body read from the upstream connection; the connection goes back to its pool
/// when the body ends cleanly, and is closed when the body is dropped early or fails.
pub(crate) struct Body {
    conn: Option<UpstreamConn>,
    pool: Arc<Pool>,
    buf: BytesMut,
    state: State,
    /// The rest of the request, still being written (boxed: it holds a `ProxyBody`, which may
    /// hold this body).
    upload: Option<Box<Upload>>,
    reusable: bool,
    /// A data frame went out since the last `Pending`.
    handed: bool,
    /// A failure held back one turn, so the data before it is flushed to the client first.
    failed: Option<Error>,
}

impl Body {
    /// The body ended as framed: the connection goes back to the pool if nothing else is on it.
    fn done(&mut self) {
        self.state = State::Done;
        let conn = self.conn.take();
        // A request not written whole leaves the connection mid-message.
        let written = self.upload.take().is_none();
        if let Some(conn) = conn
            && self.reusable
            && written
            && self.buf.is_empty()
        {
            self.pool.put(conn);
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.state = State::Done;
        self.conn = None;
        self.upload = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Writes more of the request, if any is left.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        let (Some(up), Some(conn)) = (&mut self.upload, &mut self.conn) else {
            return Ok(());
        };
        match up.poll_write(cx, conn) {
            Poll::Ready(Ok(())) => self.upload = None,
            Poll::Ready(Err(WriteError::Io(e))) => {
                // The upstream stopped reading; its answer may still be whole.
                tracing::debug!("request body not sent whole: {e}");
                self.upload = None;
                self.reusable = false;
            }
            Poll::Ready(Err(WriteError::Fatal(e))) => return Err(e),
            Poll::Pending => {}
        }
        Ok(())
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Err(e) = this.poll_upload(cx) {
            return this.fail(e);
        }
        match this.poll_response(cx) {
            Poll::Pending => {
                this.handed = false;
                Poll::Pending
            }
            Poll::Ready(Some(Err(e))) if this.handed => {
                // The data just handed over reaches the client before the failure ends it.
                this.handed = false;
                this.failed = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            ready => {
                this.handed = matches!(ready, Poll::Ready(Some(Ok(_))));
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Reads into `buf` from `io`, reserving room for about `want` bytes (bounded).
pub(crate) fn poll_read_into<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: u64,
) -> Poll<io::Result<usize>> {
    let want = (want.min(MAX_READ as u64) as usize).max(FIRST_READ);
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The next frame of a body framed as `state` says (one decoder for responses read from
/// upstreams and requests read from clients). At the body's end `state` is `Done`: after the
/// last data frame when the length was known, so a reader that stops at `is_end_stream` leaves
/// nothing behind. Errors leave `state` as it was; the caller ends the body.
pub(crate) fn poll_decode<R: tokio::io::AsyncRead + Unpin>(
    state: &mut State,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    io: &mut R,
) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    // Reads more, or fails with `short` at the connection's end.
    macro_rules! fill {
        ($want:expr, $short:expr) => {
            match ready!(poll_read_into(io, cx, buf, $want)) {
                Ok(0) => return Poll::Ready(Some(Err(Error::Invalid($short)))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
            }
        };
    }
    loop {
        match *state {
            State::Done => return Poll::Ready(None),
            State::Length(0) => {
                *state = State::Done;
                return Poll::Ready(None);
            }
            State::Length(n) | State::Chunked(Chunk::Data(n)) => {
                if buf.is_empty() {
                    fill!(n, "body cut short");
                    continue;
                }
                let k = (n.min(buf.len() as u64)) as usize;
                let data = buf.split_to(k).freeze();
                let left = n - k as u64;
                *state = match *state {
                    State::Length(_) if left == 0 => State::Done,
                    State::Length(_) => State::Length(left),
                    _ if left == 0 => State::Chunked(Chunk::DataEnd),
                    _ => State::Chunked(Chunk::Data(left)),
                };
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            State::Eof => {
                if !buf.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                }
                match ready!(poll_read_into(io, cx, buf, MAX_READ as u64)) {
                    Ok(0) => {
                        *state = State::Done;
                        return Poll::Ready(None);
                    }
                    Ok(_) => {}
                    Err(e) => return Poll::Ready(Some(Err(Error::Io(e)))),
                }
            }
            State::Chunked(Chunk::Size) => match memchr::memchr(b'\n', buf) {
                Some(end) => {
                    let line = buf.split_to(end + 1);
                    let Some(size) = chunk_size(&line) else {
                        return Poll::Ready(Some(Err(Error::Invalid("malformed chunk size"))));
                    };
                    *state = State::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                None if buf.len() > MAX_CHUNK_LINE => {
                    return Poll::Ready(Some(Err(Error::Invalid("chunk size line too long"))));
                }
                None => fill!(FIRST_READ as u64, "chunked body cut short"),
            },
            State::Chunked(Chunk::DataEnd) => {
                if buf.len() >= 2 {
                    if &buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(Error::Invalid(
                            "chunk data not followed by CRLF",
                        ))));
                    }
                    buf.advance(2);
                    *state = State::Chunked(Chunk::Size);
                    continue;
                }
                fill!(FIRST_READ as u64, "chunked body cut short");
            }
            State::Chunked(Chunk::Trailers) => {
                let end = if buf.starts_with(b"\r\n") {
                    Some(2)
                } else {
                    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
                };
                match end {
                    Some(end) => {
                        let section = buf.split_to(end);
                        let trailers = match parse_trailers(&section) {
                            Ok(t) => t,
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        };
                        *state = State::Done;
                        if trailers.is_empty() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    None if buf.len() > MAX_TRAILERS => {
                        return Poll::Ready(Some(Err(Error::Invalid("trailer section too large"))));
                    }
                    None => fill!(FIRST_READ as u64, "chunked body cut short"),
                }
            }
        }
    }
}

impl Body {
    /// The next frame of the response; the connection is parked as soon as the body is over.
    fn poll_response(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        // The connection goes only when the body is over (`done`, `fail`).
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let next = ready!(poll_decode(&mut self.state, &mut self.buf, cx, conn));
        match next {
            Some(Err(e)) => self.fail(e),
            next => {
                if matches!(self.state, State::Done) {
                    self.done();
                }
                Poll::Ready(next)
            }
        }
    }
}

/// A chunk-size line (`1a;ext=v\r\n`): the size. Hex digits only (at most 15, so no overflow),
/// extensions ignored, the line ending exactly CRLF.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let digits = match memchr::memchr(b';', line) {
        Some(i) => &line[..i],
        None => line,
    };
    // Whitespace may come before the extensions (RFC 9112 §7.1.1's BWS), never before the size.
    let mut digits = digits;
    while let [rest @ .., b' ' | b'\t'] = digits {
        digits = rest;
    }
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    // Extensions carry no line breaks or controls.
    if line.iter().any(|&b| b < 0x20 && b != b'\t') {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// A trailer section (fields then an empty line); framing fields are not allowed in it.
fn parse_trailers(section: &[u8]) -> Result<HeaderMap, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err(Error::Invalid("malformed trailer section")),
    };
    let mut trailers = HeaderMap::new();
    for f in parsed {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| Error::Invalid("invalid trailer name"))?;
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::HOST
        {
            continue;
        }
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| Error::Invalid("invalid trailer value"))?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

pub(crate) mod server;

#[cfg(test)]
mod tests;
