//! Weir's own HTTP/1.1 server side (`listeners[].server: native`, the default for plain
//! listeners).
//!
//! hyper's server runs each connection as a dispatcher that hands the request to the service
//! and the response back through its own state machine; here the connection's task reads the
//! head with `httparse`, runs the request path ([`crate::proxy::handle`]) in place and writes
//! the response with one gathered write where it can. The request body, when there is one, is
//! read by whoever reads the request body (the upstream client) straight off this connection.
//!
//! What is strict here, because the upstream trusts what comes through:
//! - the head is bounded (`limits.max_request_header_bytes`, `limits.max_request_headers`:
//!   431); obsolete line folding, invalid names or values, a space before the colon, an invalid
//!   method or target are 400;
//! - framing has one reading or the request is refused: `Content-Length` values that disagree,
//!   a signed or non-numeric length, `Transfer-Encoding` with `Content-Length`, `chunked` twice
//!   or not last, any other coding, or `Transfer-Encoding` in HTTP/1.0 are 400, and the
//!   connection closes (RFC 9112 §6.1, §6.3);
//! - a connection is reused only when the request body was read to its exact end.
//!
//! What this path does not take goes to hyper, on the same connection with the bytes read so
//! far: the HTTP/2 preface, `CONNECT`, `Upgrade` (WebSocket) and `Expect: 100-continue`. From
//! then on hyper serves the connection, with the same limits and timeouts.
//!
//! Idle keep-alive connections hold no buffers: both are released while the connection waits
//! for its next request.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use weir_config::Limits;
use weir_observe::{BUFFER_POOL_BYTES, TimeoutKind, TimeoutStats};

use super::{Chunk, Error, State, poll_decode, poll_read_into};
use crate::Shared;
use crate::body::{ProxyBody, Source};
use crate::conn::ConnInfo;
use crate::error::ErrorKind;

/// Fields parsed on the stack; a limit above this parses into a vector.
const STACK_FIELDS: usize = 128;
/// Room left in a request's header map for what the proxy adds on the way up (`Host`, the
/// three `X-Forwarded-*`, `Via`, `X-Request-Id`, `traceparent`) and a little for filters: a map
/// that grows reallocates both its tables, which cost ~5% of a plain request's instructions.
const ADDED_REQUEST_FIELDS: usize = 10;
/// The first read of a request head.
const HEAD_READ: usize = 4 * 1024;
/// Body data smaller than this is copied into the write buffer (one write for head and body).
const GATHER_BELOW: usize = 16 * 1024;
/// The write buffer is written out once it holds this much.
const WRITE_HIGH: usize = 64 * 1024;
/// After refusing a request whose body was not read: how long, and how much, is read and
/// thrown away before closing, so the client reads the answer instead of a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// Buffers of idle connections, kept per thread for the next busy one: an idle keep-alive
/// connection holds none, and a busy one does not pay the allocator for them. Bounded: at most
/// [`POOL_MAX`] buffers of about [`POOL_BUF`] bytes per thread.
const POOL_BUF: usize = 8 * 1024;
const POOL_MAX: usize = 256;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> BytesMut {
    match POOL.with(|p| p.borrow_mut().pop()) {
        Some(b) => {
            BUFFER_POOL_BYTES.fetch_sub(b.capacity() as u64, Relaxed);
            b
        }
        None => BytesMut::with_capacity(POOL_BUF),
    }
}

/// Gives `buf` up (to the pool, when it is empty and of the pool's size).
fn give_buf(buf: &mut BytesMut) {
    let b = std::mem::take(buf);
    if b.is_empty() && (POOL_BUF / 2..=2 * POOL_BUF).contains(&b.capacity()) {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                BUFFER_POOL_BYTES.fetch_add(b.capacity() as u64, Relaxed);
                p.push(b);
            }
        });
    }
}

/// How long a keep-alive connection waits for its next request before it releases its
/// buffers and request slot (requests in a row reuse them).
const RELEASE_AFTER: Duration = Duration::from_millis(50);

/// The read half of a connection and what was read from it, shared by the connection's task
/// (request heads) and the request body (its bytes).
struct ReadSide {
    io: OwnedReadHalf,
    buf: BytesMut,
    /// How far the current request's body was read.
    body: Progress,
    /// Which request the connection is on: a body of an earlier request reads nothing more.
    request: u64,
}

enum Progress {
    /// No body, or read to its end.
    Done,
    Reading(State),
    /// Failed part way: the connection is mid-message.
    Broken,
}

type Side = Arc<Mutex<ReadSide>>;

fn lock(side: &Side) -> MutexGuard<'_, ReadSide> {
    side.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request body read off the client's connection.
pub(crate) struct RequestBody {
    side: Side,
    request: u64,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let mut g = lock(&self.side);
        let ReadSide {
            io,
            buf,
            body,
            request,
        } = &mut *g;
        if *request != self.request {
            return Poll::Ready(Some(Err(Error::Invalid(
                "request body read after its request",
            ))));
        }
        let state = match body {
            Progress::Done => return Poll::Ready(None),
            Progress::Broken => {
                return Poll::Ready(Some(Err(Error::Invalid("request body failed"))));
            }
            Progress::Reading(state) => state,
        };
        let next = std::task::ready!(poll_decode(state, buf, cx, io));
        if matches!(next, Some(Err(_))) {
            *body = Progress::Broken;
        } else if matches!(state, State::Done) {
            *body = Progress::Done;
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        let g = lock(&self.side);
        g.request == self.request && matches!(g.body, Progress::Done)
    }

    fn size_hint(&self) -> SizeHint {
        let g = lock(&self.side);
        match g.body {
            Progress::Done => SizeHint::with_exact(0),
            Progress::Reading(State::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// What the parsed head says about the exchange, beyond the request itself.
struct Asked {
    method: Method,
    /// The client lets the connection persist after this request.
    keep_alive: bool,
    /// `TE: trailers`: the client takes trailer fields in a chunked response.
    trailers: bool,
    version: Version,
}

fn bad(reason: &'static str) -> ErrorKind {
    ErrorKind::BadRequest(reason)
}

/// What comes next on a connection.
enum Next {
    Request(Box<Parsed>),
    /// The connection ended (closed by the client, idle, drained, or a head timeout).
    Closed,
    /// A request this path does not serve: hyper takes the connection.
    HandOver,
    /// A head refused before any request runs (400, 431).
    Refuse(ErrorKind),
}

struct Parsed {
    parts: http::request::Parts,
    body: Progress,
    asked: Asked,
}

/// Takes one request head off the front of `buf`: `None` while incomplete.
fn parse(buf: &mut BytesMut, limits: &Limits, first: bool) -> Result<Option<Parsed>, Next> {
    if first && buf.starts_with(b"PRI ") {
        // The HTTP/2 preface (h2c with prior knowledge).
        return Err(Next::HandOver);
    }
    let max_fields = limits.max_request_headers;
    let max_head = (limits.max_request_header_bytes.bytes() as usize).max(1024);
    // Uninitialized: httparse writes only the fields it finds.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap;
    let fields: &mut [MaybeUninit<httparse::Header<'_>>] = if max_fields <= STACK_FIELDS {
        &mut stack[..max_fields]
    } else {
        heap = Vec::with_capacity(max_fields.min(64 * 1024));
        heap.resize_with(max_fields.min(64 * 1024), MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(len)) if len > max_head => {
            return Err(Next::Refuse(ErrorKind::HeadTooLarge(
                "request head too large",
            )));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(Next::Refuse(ErrorKind::HeadTooLarge(
                "request head too large",
            )));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Next::Refuse(ErrorKind::HeadTooLarge(
                "too many header fields",
            )));
        }
        Err(_) => return Err(Next::Refuse(bad("malformed request head"))),
    };
    let refuse = Next::Refuse;
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| refuse(bad("invalid method")))?;
    if method == Method::CONNECT {
        return Err(Next::HandOver);
    }
    let target = req.path.unwrap_or_default();
    // origin-form, absolute-form, or `*` for OPTIONS (authority-form is CONNECT's); the URI
    // itself is parsed below, from the head's own bytes.
    let absolute = !target.starts_with('/') && target != "*";
    let form_ok = target != "*" || method == Method::OPTIONS;
    if !form_ok {
        return Err(refuse(bad("invalid request target")));
    }
    // Where a slice of `buf` starts and ends: values are taken from the head's bytes once the
    // parser lets go of them, without a copy each.
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        (
            s.as_ptr() as usize - base,
            s.as_ptr() as usize - base + s.len(),
        )
    };
    let target = span(target.as_bytes());
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };

    let mut fields = Vec::with_capacity(req.headers.len());
    let (mut close, mut keep_alive, mut trailers) = (false, false, false);
    let mut length: Option<u64> = None;
    let (mut codings, mut chunked, mut chunked_last) = (0usize, 0usize, false);
    for f in req.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| refuse(bad("invalid header name")))?;
        if name == header::CONTENT_LENGTH {
            for v in f.value.split(|&b| b == b',') {
                let n = super::parse_length(super::trim(v))
                    .ok_or_else(|| refuse(bad("invalid content-length")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(refuse(bad("conflicting content-lengths")));
                }
                length = Some(n);
            }
            // One length goes on, written once (see below), however the client repeated it.
            continue;
        } else if name == header::TRANSFER_ENCODING {
            for coding in f.value.split(|&b| b == b',').map(super::trim) {
                if coding.is_empty() {
                    continue;
                }
                codings += 1;
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                chunked += usize::from(chunked_last);
            }
        } else if name == header::CONNECTION {
            for token in f.value.split(|&b| b == b',').map(super::trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::TE {
            trailers |= f
                .value
                .split(|&b| b == b',')
                .any(|t| super::trim(t).eq_ignore_ascii_case(b"trailers"));
        } else if name == header::UPGRADE || name == header::EXPECT {
            // Upgrades and `100 Continue` are hyper's (see the module docs).
            return Err(Next::HandOver);
        }
        fields.push((name, span(f.value)));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.1))
        .map_err(|_| refuse(bad("invalid request target")))?;
    if absolute && (uri.scheme().is_none() || uri.authority().is_none()) {
        return Err(refuse(bad("invalid request target")));
    }
    let mut headers = HeaderMap::with_capacity(fields.len() + ADDED_REQUEST_FIELDS);
    for (name, (from, to)) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(from..to))
            .map_err(|_| refuse(bad("invalid header value")))?;
        headers.append(name, value);
    }
    let body = if codings > 0 {
        if version == Version::HTTP_10 {
            return Err(refuse(bad("transfer-encoding in HTTP/1.0")));
        }
        if length.is_some() {
            return Err(refuse(bad("both transfer-encoding and content-length")));
        }
        if chunked != 1 || !chunked_last || codings != 1 {
            return Err(refuse(bad("unsupported transfer-encoding")));
        }
        Progress::Reading(State::Chunked(Chunk::Size))
    } else {
        if let Some(n) = length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        match length {
            Some(0) | None => Progress::Done,
            Some(n) => Progress::Reading(State::Length(n)),
        }
    };
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method.clone();
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Parsed {
        parts,
        body,
        asked: Asked {
            method,
            keep_alive: !close && (version == Version::HTTP_11 || keep_alive),
            trailers,
            version,
        },
    }))
}

/// The write half, with the buffer responses are gathered in.
struct Out {
    io: OwnedWriteHalf,
    buf: BytesMut,
    send_timeout: Duration,
    timeouts: &'static TimeoutStats,
}

impl Out {
    /// Writes the buffer, then `extra`: each write must move bytes within `send_timeout`.
    async fn write(&mut self, extra: Option<&[u8]>) -> io::Result<()> {
        let (mut a, mut b) = (0usize, 0usize);
        let extra = extra.unwrap_or_default();
        while a < self.buf.len() || b < extra.len() {
            let slices = [IoSlice::new(&self.buf[a..]), IoSlice::new(&extra[b..])];
            let n = match tokio::time::timeout(self.send_timeout, self.io.write_vectored(&slices))
                .await
            {
                Ok(r) => r?,
                Err(_) => {
                    self.timeouts.fired(TimeoutKind::Send);
                    return Err(io::ErrorKind::TimedOut.into());
                }
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_buf = n.min(self.buf.len() - a);
            a += from_buf;
            b += n - from_buf;
        }
        self.buf.clear();
        Ok(())
    }
}

/// How the response body is framed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Nothing follows the head (`HEAD`, `204`, `304`).
    None,
    Length(u64),
    Chunked,
    /// To the connection's end (an HTTP/1.0 client and a body of unknown length).
    Close,
}

thread_local! {
    /// The `Date` value, formatted once a second per thread.
    static DATE: RefCell<(u64, HeaderValue)> =
        const { RefCell::new((0, HeaderValue::from_static(""))) };
}

fn date() -> HeaderValue {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (
                secs,
                HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .unwrap_or_else(|_| HeaderValue::from_static("")),
            );
        }
        d.1.clone()
    })
}

/// Writes the status line and fields into `out` and decides the framing.
fn encode_head(
    out: &mut BytesMut,
    res: &mut Response<ProxyBody>,
    asked: &Asked,
    close: &mut bool,
) -> Framing {
    let status = res.status();
    let headers = res.headers_mut();
    let bodiless = asked.method == Method::HEAD || status == StatusCode::NOT_MODIFIED;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| super::parse_length(v.as_bytes()));
    let framing = if status.is_informational() || status == StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
        Framing::None
    } else if bodiless {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else {
        let body = res.body();
        let exact = if body.is_end_stream() {
            Some(0)
        } else {
            body.size_hint().exact()
        };
        match exact {
            Some(n) => {
                res.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                Framing::Length(n)
            }
            None if asked.version == Version::HTTP_11 => Framing::Chunked,
            None => {
                *close = true;
                Framing::Close
            }
        }
    };
    let headers = res.headers();
    out.reserve(128 + headers.len() * 48);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // The framing and the connection's fate are this hop's: a length is sent only with a
        // body it frames (or a bodiless answer that reports one).
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH
                && matches!(framing, Framing::Chunked | Framing::Close))
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if *close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if asked.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes a response: head and small bodies gathered into one write, larger data written as
/// it is. `Ok(true)` when the response went out whole and framed (the connection may go on).
fn begin_response(
    out: &mut Out,
    mut res: Response<ProxyBody>,
    asked: &Asked,
    close: &mut bool,
) -> (Framing, ProxyBody) {
    if out.buf.capacity() == 0 {
        out.buf = take_buf();
    }
    let framing = encode_head(&mut out.buf, &mut res, asked, close);
    (framing, res.into_body())
}

/// Writes what [`begin_response`] began: the head gathered in `out`, then the body as framed.
/// The body is the caller's (held once, in the connection's future, which is as large as its
/// largest await).
async fn write_body(
    out: &mut Out,
    side: &Side,
    body: &mut ProxyBody,
    framing: Framing,
    send_trailers: bool,
) -> io::Result<bool> {
    let mut watching = true;
    if framing == Framing::None {
        out.write(None).await?;
        return Ok(true);
    }
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut trailers = None;
    loop {
        // What the body has ready now; when it has nothing, what is gathered goes out first.
        let next = std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(f) => Some(f),
                Poll::Pending => None,
            })
        })
        .await;
        let next = match next {
            Some(next) => next,
            None => {
                if !out.buf.is_empty() {
                    out.write(None).await?;
                }
                // While the body waits, the connection is watched (when its request body was
                // read): a client that went away ends the response (as hyper does).
                loop {
                    let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
                    if !watching || !matches!(lock(side).body, Progress::Done) {
                        break frame.await;
                    }
                    tokio::select! {
                        biased;
                        f = frame => break f,
                        gone = watch(side) => match gone {
                            Some(true) => return Err(io::ErrorKind::ConnectionReset.into()),
                            Some(false) => {}
                            None => watching = false,
                        },
                    }
                }
            }
        };
        let frame = match next {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!("response body failed: {e}");
                out.write(None).await?;
                return Ok(false);
            }
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        if let Framing::Length(_) = framing {
            if data.len() as u64 > left {
                // More than the head said: what fits goes out, and the connection ends.
                let fits = data.slice(..left as usize);
                out.write(Some(&fits)).await?;
                return Ok(false);
            }
            left -= data.len() as u64;
        }
        if framing == Framing::Chunked {
            out.buf
                .extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if data.len() < GATHER_BELOW {
            out.buf.extend_from_slice(&data);
            if framing == Framing::Chunked {
                out.buf.extend_from_slice(b"\r\n");
            }
            if out.buf.len() >= WRITE_HIGH {
                out.write(None).await?;
            }
        } else {
            out.write(Some(&data)).await?;
            if framing == Framing::Chunked {
                out.buf.extend_from_slice(b"\r\n");
            }
        }
    }
    match framing {
        Framing::Chunked => {
            out.buf.extend_from_slice(b"0\r\n");
            if let Some(t) = trailers.filter(|_| send_trailers) {
                for (name, value) in &t {
                    out.buf.extend_from_slice(name.as_str().as_bytes());
                    out.buf.extend_from_slice(b": ");
                    out.buf.extend_from_slice(value.as_bytes());
                    out.buf.extend_from_slice(b"\r\n");
                }
            }
            out.buf.extend_from_slice(b"\r\n");
        }
        Framing::Length(_) if left > 0 => {
            // Shorter than the head said: the client sees the connection end early.
            out.write(None).await?;
            return Ok(false);
        }
        _ => {}
    }
    out.write(None).await?;
    Ok(framing != Framing::Close)
}

/// Serves one plain-TCP connection.
pub(crate) async fn serve(
    stream: TcpStream,
    pre: bytes::Bytes,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    limits: Arc<Limits>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let accepted = tokio::time::Instant::now();
    let timeouts = shared.registry.timeouts();
    let (rd, wr) = stream.into_split();
    let side: Side = Arc::new(Mutex::new(ReadSide {
        io: rd,
        // Bytes read past a PROXY header are the first of the first head.
        buf: if pre.is_empty() {
            BytesMut::new()
        } else {
            BytesMut::from(&pre[..])
        },
        body: Progress::Done,
        request: 0,
    }));
    let mut out = Out {
        io: wr,
        buf: BytesMut::new(),
        send_timeout: limits.send_timeout,
        timeouts,
    };
    let mut handling = None;
    let mut first = true;
    loop {
        let head_since = first.then_some(accepted);
        let parsed = match next_head(
            &side,
            &mut out,
            &mut handling,
            &limits,
            head_since,
            &mut shutdown,
            timeouts,
        )
        .await
        {
            Next::Request(p) => p,
            Next::Closed => return,
            Next::HandOver => {
                drop(handling);
                // Boxed: hyper's connection future is large, and rarely needed.
                Box::pin(hand_over(
                    side, out, conn, shared, &limits, &builder, shutdown,
                ))
                .await;
                return;
            }
            Next::Refuse(r) => {
                refuse(&side, &mut out, r).await;
                return;
            }
        };
        first = false;
        let Parsed { parts, body, asked } = *parsed;
        let has_body = !matches!(body, Progress::Done);
        let request = {
            let mut g = lock(&side);
            g.request += 1;
            g.body = body;
            g.request
        };
        let req = Request::from_parts(
            parts,
            Source::Client(RequestBody {
                side: side.clone(),
                request,
            }),
        );
        // The request runs in the connection's slot (boxed: the connection's own future stays
        // small while it idles; kept while the connection is busy, so requests in a row
        // allocate nothing for it).
        let slot = handling.get_or_insert_with(|| Box::pin(None));
        slot.set(Some(crate::proxy::handle(
            shared.clone(),
            conn.clone(),
            req,
        )));
        // Without a body to read, the connection is watched while the request is handled: a
        // client that goes away cancels its request (as hyper does); bytes of a next request
        // wait in the buffer.
        let mut watching = !has_body;
        let res = loop {
            let run = std::future::poll_fn(|cx| match slot.as_mut().as_pin_mut() {
                Some(f) => f.poll(cx),
                None => Poll::Pending,
            });
            tokio::select! {
                biased;
                res = run => break res,
                gone = watch(&side), if watching => match gone {
                    Some(true) => return,
                    Some(false) => {}
                    None => watching = false,
                },
            }
        };
        slot.set(None);
        // A request body not read to its end by now leaves the connection mid-message: the
        // response says it closes.
        let unread = |side: &Side| !matches!(lock(side).body, Progress::Done);
        let mut close = !asked.keep_alive || *shutdown.borrow() || unread(&side);
        let (framing, mut body) = begin_response(&mut out, res, &asked, &mut close);
        let written = write_body(&mut out, &side, &mut body, framing, asked.trailers).await;
        // The response is over (its `Finish` runs here: the access log, in-flight counts).
        drop(body);
        match written {
            Ok(true) if !close && !unread(&side) => {}
            Ok(_) => {
                finish(&side, &mut out, unread(&side)).await;
                return;
            }
            Err(e) => {
                tracing::debug!(client = %conn.client, "writing the response failed: {e}");
                return;
            }
        }
    }
}

/// Watches the connection while a request without a body is handled: `Some(true)` when the
/// client went away, `Some(false)` when bytes came (kept for the next request), `None` when
/// there is no more to watch (the buffer holds a next request already).
async fn watch(side: &Side) -> Option<bool> {
    std::future::poll_fn(|cx| {
        let mut g = lock(side);
        if !g.buf.is_empty() {
            return Poll::Ready(None);
        }
        let ReadSide { io, buf, .. } = &mut *g;
        match poll_read_into(io, cx, buf, HEAD_READ as u64) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Some(true)),
            Poll::Ready(Ok(_)) => Poll::Ready(Some(false)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Reads the next request head. `head_since`: when the head timer started (at accept for a
/// connection's first request; otherwise at the head's first byte).
async fn next_head<T>(
    side: &Side,
    out: &mut Out,
    held: &mut Option<T>,
    limits: &Limits,
    mut head_since: Option<tokio::time::Instant>,
    shutdown: &mut watch::Receiver<bool>,
    timeouts: &'static TimeoutStats,
) -> Next {
    let first = head_since.is_some();
    let now = tokio::time::Instant::now();
    let idle_until = now + limits.idle_timeout;
    // A connection that has waited this long lets go of its buffers and request slot.
    let release_at = now + RELEASE_AFTER;
    let mut released = false;
    loop {
        {
            let mut g = lock(side);
            if !g.buf.is_empty() {
                head_since.get_or_insert_with(tokio::time::Instant::now);
                match parse(&mut g.buf, limits, first) {
                    Ok(Some(p)) => return Next::Request(Box::new(p)),
                    Ok(None) => {}
                    Err(next) => return next,
                }
            } else if *shutdown.borrow() {
                // Draining: an idle connection closes.
                return Next::Closed;
            } else if released || first {
                give_buf(&mut g.buf);
                give_buf(&mut out.buf);
                *held = None;
            }
        }
        let deadline = match head_since {
            Some(t) => t + limits.request_head_timeout,
            None if !released => release_at.min(idle_until),
            None => idle_until,
        };
        tokio::select! {
            r = read_more(side) => match r {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(deadline) => {
                if head_since.is_some() {
                    // Slowloris (or a connection that never spoke): no answer, just closed.
                    timeouts.fired(TimeoutKind::RequestHead);
                    tracing::debug!(first, "request head timeout");
                    return Next::Closed;
                }
                if released || deadline >= idle_until {
                    return Next::Closed;
                }
                // Idle for a moment: nothing is held while it waits on.
                released = true;
            }
            _ = shutdown.changed(), if !*shutdown.borrow() => {}
        }
    }
}

/// Reads more of a head: waits for readability with no buffer held, then reads.
async fn read_more(side: &Side) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut g = lock(side);
        let took = g.buf.capacity() == 0;
        if took {
            std::task::ready!(g.io.as_ref().poll_read_ready(cx))?;
            g.buf = take_buf();
        }
        let ReadSide { io, buf, .. } = &mut *g;
        let want = (buf.len() as u64).max(HEAD_READ as u64);
        let read = poll_read_into(io, cx, buf, want);
        // Readiness can be stale (a new connection starts out ready): a buffer taken for a read
        // that found nothing goes back.
        if took && read.is_pending() && buf.is_empty() {
            give_buf(buf);
        }
        read
    })
    .await
}

/// Answers a refused head and closes.
async fn refuse(side: &Side, out: &mut Out, why: ErrorKind) {
    let status = why.status();
    tracing::debug!(%status, reason = %why, "request refused");
    // No body: nothing of what the client sent is echoed (as hyper answers).
    let mut res = Response::new(ProxyBody::empty());
    *res.status_mut() = status;
    let asked = Asked {
        method: Method::GET,
        keep_alive: false,
        trailers: false,
        version: Version::HTTP_11,
    };
    let (framing, mut body) = begin_response(out, res, &asked, &mut true);
    if write_body(out, side, &mut body, framing, false)
        .await
        .is_ok()
    {
        finish(side, out, true).await;
    }
}

/// Closes after a response: the write side first; then, when the client may still be sending
/// (a body not read), a bounded read of what it sends, so it reads the response rather than a
/// reset.
async fn finish(side: &Side, out: &mut Out, linger: bool) {
    let _ = out.io.shutdown().await;
    if !linger {
        return;
    }
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut seen = 0;
        while seen < LINGER_BYTES {
            let n = std::future::poll_fn(|cx| {
                let mut g = lock(side);
                g.buf.clear();
                let ReadSide { io, buf, .. } = &mut *g;
                poll_read_into(io, cx, buf, 16 * 1024)
            })
            .await;
            match n {
                Ok(0) | Err(_) => return,
                Ok(n) => seen += n,
            }
        }
    })
    .await;
}

/// Gives the connection to hyper's server, with what was read of it so far.
async fn hand_over(
    side: Side,
    out: Out,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    limits: &Limits,
    builder: &auto::Builder<TokioExecutor>,
    shutdown: watch::Receiver<bool>,
) {
    // A body of an earlier request still held somewhere: the connection cannot be whole.
    let Ok(side) = Arc::try_unwrap(side) else {
        tracing::debug!(client = %conn.client, "not handed over: an earlier request body is still held");
        return;
    };
    let side = side.into_inner().unwrap_or_else(|e| e.into_inner());
    let Ok(stream) = side.io.reunite(out.io) else {
        return;
    };
    crate::listener::serve(
        stream,
        side.buf.freeze(),
        conn,
        builder,
        shared,
        limits,
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is bounded per thread, holds only empty buffers of its size, and its gauge counts
    /// what it holds.
    #[test]
    fn the_buffer_pool_is_bounded_and_counted() {
        let before = BUFFER_POOL_BYTES.load(Relaxed);
        let mut taken: Vec<BytesMut> = (0..POOL_MAX + 10).map(|_| take_buf()).collect();
        for b in &mut taken {
            give_buf(b);
        }
        let pooled = POOL.with(|p| p.borrow().len());
        assert_eq!(pooled, POOL_MAX);
        let held = POOL.with(|p| p.borrow().iter().map(|b| b.capacity() as u64).sum::<u64>());
        assert!(held <= (POOL_MAX * 2 * POOL_BUF) as u64);
        assert_eq!(BUFFER_POOL_BYTES.load(Relaxed) - before, held);
        POOL.with(|p| p.borrow_mut().clear());
        BUFFER_POOL_BYTES.fetch_sub(held, Relaxed);
        // Not pooled: a buffer holding bytes, and one grown far past the pool's size.
        let mut full = take_buf();
        full.extend_from_slice(b"pending");
        give_buf(&mut full);
        let mut big = BytesMut::with_capacity(64 * POOL_BUF);
        give_buf(&mut big);
        assert_eq!(POOL.with(|p| p.borrow().len()), 0);
        assert_eq!(BUFFER_POOL_BYTES.load(Relaxed), before);
    }
}
