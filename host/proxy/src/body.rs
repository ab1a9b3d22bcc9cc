//! The one body type of the data path: streams bodies through without buffering them, counts
//! bytes, enforces the request body limit, and runs the request's completion hook when done.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use weir_balance::InFlight;
use weir_observe::{AccessRecord, TimeoutKind, TimeoutStats};

use crate::conn::ConnInfo;
use crate::filtering::FilterRun;

/// Errors across body boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client sent a body that does not parse (bad chunk framing, a short body): its request
/// is refused with 400, not blamed on the upstream.
#[derive(Debug, thiserror::Error)]
#[error("malformed request body: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

/// A body stalled: no frame arrived within its idle limit.
#[derive(Debug, thiserror::Error)]
#[error("{} stalled for {limit:?}", if *from_client { "the request body" } else { "the upstream's response body" })]
pub struct BodyStalled {
    pub limit: Duration,
    pub from_client: bool,
}

/// The deadline between two frames of a streamed body. The timer is armed only when the body
/// has nothing ready (bodies that arrive at once never touch the timer wheel) and only counts
/// time the peer sent nothing: it fires when the inner body is still pending past the deadline.
pub(crate) struct Idle {
    limit: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
    stats: &'static TimeoutStats,
}

impl Idle {
    pub fn new(limit: Duration, stats: &'static TimeoutStats) -> Idle {
        Idle {
            limit,
            sleep: None,
            waiting: false,
            stats,
        }
    }

    /// The body is pending: arm the timer if this wait just began; true once it has expired.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let at = tokio::time::Instant::now() + self.limit;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        self.sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

/// A request body grew past `limits.max_request_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// A body read off a connection: hyper's (a client's request, an upstream response through
/// hyper's client), the native HTTP/1.1 client's, or a request body the native HTTP/1.1
/// server reads.
pub(crate) enum Source {
    Hyper(Incoming),
    /// Boxed: it carries its connection and buffers, and would size every body by them.
    Native(Box<crate::h1::Body>),
    Client(crate::h1::server::RequestBody),
}

pub(crate) enum SourceError {
    Hyper(hyper::Error),
    Native(crate::h1::Error),
}

impl Source {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SourceError>>> {
        match self {
            Source::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(SourceError::Hyper))),
            Source::Native(b) => Pin::new(b.as_mut())
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(SourceError::Native))),
            Source::Client(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(SourceError::Native))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Hyper(b) => b.is_end_stream(),
            Source::Native(b) => b.is_end_stream(),
            Source::Client(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Hyper(b) => b.size_hint(),
            Source::Native(b) => b.size_hint(),
            Source::Client(b) => b.size_hint(),
        }
    }
}

type Frames = tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>;

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream {
        body: Source,
        limit: Option<u64>,
        /// A request body: its errors are the client's ([`ClientBodyError`]).
        from_client: bool,
        idle: Idle,
    },
    /// Fed by a task (filter body phases).
    Channel(Frames),
    /// One try's copy of a request body kept for retries.
    Replay(crate::retry::Replay),
    /// Frames read ahead, then the rest of a body.
    Held {
        held: std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>,
        rest: Box<ProxyBody>,
    },
}

/// Carried by a response body, and run when it is finished or abandoned (drop): in-flight
/// counts, the cluster's request slot, the access log, and the filters' `on-log`.
pub(crate) struct Finish {
    pub bytes: u64,
    pub start: Instant,
    pub conn: Arc<ConnInfo>,
    pub in_flight: Option<InFlight>,
    /// A place under the cluster's `limits.max_requests`, held to the end of the response.
    pub slot: Option<crate::retry::Slot>,
    pub log: Option<Box<(AccessRecord, weir_observe::AccessLog)>>,
    /// The request's filter run: when this drops, so does a clone of it, and the last clone's
    /// drop runs `on-log` and `context-done` if nothing else did.
    pub filters: Option<FilterRun>,
    /// A sampled request's spans (with `tracing.otlp`), exported from here.
    pub spans: Option<Box<crate::trace::RequestSpans>>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.conn.request_done();
        if let Some(spans) = self.spans.take() {
            let notes =
                (self.filters.as_ref()).map_or_else(Default::default, FilterRun::take_span_notes);
            spans.end(self.bytes, notes);
        }
        if let Some(mut log) = self.log.take() {
            log.0.bytes = self.bytes;
            log.0.duration_ms = self.start.elapsed().as_secs_f64() * 1e3;
            log.1.write(&log.0);
        }
    }
}

/// A body on its way through the proxy.
pub struct ProxyBody {
    kind: Kind,
    seen: u64,
    /// Runs (on drop) when the response has been sent or abandoned: access log, in-flight counts.
    finish: Option<Finish>,
}

impl ProxyBody {
    /// No body.
    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Empty,
            seen: 0,
            finish: None,
        }
    }

    /// A body held in memory (local responses).
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody {
            kind: Kind::Full(Some(b.into())),
            seen: 0,
            finish: None,
        }
    }

    /// A streamed response body, cut when it stalls for longer than `idle`.
    pub(crate) fn stream(body: Source, idle: Idle) -> Self {
        ProxyBody {
            kind: Kind::Stream {
                body,
                limit: None,
                from_client: false,
                idle,
            },
            seen: 0,
            finish: None,
        }
    }

    /// A streamed request body, optionally capped at `limit` bytes, failed when it stalls for
    /// longer than `idle`.
    pub(crate) fn request(body: Source, limit: Option<u64>, idle: Idle) -> Self {
        ProxyBody {
            kind: Kind::Stream {
                body,
                limit,
                from_client: true,
                idle,
            },
            seen: 0,
            finish: None,
        }
    }

    /// A try's request body, read from a tape that keeps it for the next try.
    pub(crate) fn replay(r: crate::retry::Replay) -> Self {
        ProxyBody {
            kind: Kind::Replay(r),
            seen: 0,
            finish: None,
        }
    }

    /// A body fed frame by frame from a channel.
    pub(crate) fn channel(rx: Frames) -> Self {
        ProxyBody {
            kind: Kind::Channel(rx),
            seen: 0,
            finish: None,
        }
    }

    /// `held` (frames already read from `rest`), then the rest of `rest`.
    pub(crate) fn held(
        held: std::collections::VecDeque<Result<Frame<Bytes>, BoxError>>,
        rest: ProxyBody,
    ) -> Self {
        ProxyBody {
            kind: Kind::Held {
                held,
                rest: Box::new(rest),
            },
            seen: 0,
            finish: None,
        }
    }

    pub(crate) fn with_finish(mut self, finish: Finish) -> Self {
        self.finish = Some(finish);
        self
    }

    fn count_frame(&mut self, next: &Option<Result<Frame<Bytes>, BoxError>>) {
        if let Some(Ok(frame)) = next
            && let Some(d) = frame.data_ref()
        {
            self.count(d.len() as u64);
        }
    }

    fn count(&mut self, n: u64) {
        self.seen += n;
        if let Some(f) = &mut self.finish {
            f.bytes = self.seen;
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => {
                let frame = b.take();
                if let Some(b) = &frame {
                    let n = b.len() as u64;
                    this.count(n);
                }
                Poll::Ready(frame.map(|b| Ok(Frame::data(b))))
            }
            Kind::Stream {
                body,
                limit,
                from_client,
                idle,
            } => {
                let limit = *limit;
                let Poll::Ready(next) = body.poll_frame(cx) else {
                    if idle.expired(cx) {
                        idle.stats.fired(if *from_client {
                            TimeoutKind::RequestBody
                        } else {
                            TimeoutKind::UpstreamBody
                        });
                        tracing::debug!(limit = ?idle.limit, from_client, "body stalled");
                        return Poll::Ready(Some(Err(Box::new(BodyStalled {
                            limit: idle.limit,
                            from_client: *from_client,
                        }))));
                    }
                    return Poll::Pending;
                };
                idle.waiting = false;
                match next {
                    Some(Ok(frame)) => {
                        if let Some(d) = frame.data_ref() {
                            let n = d.len() as u64;
                            this.count(n);
                            if let Some(limit) = limit
                                && this.seen > limit
                            {
                                return Poll::Ready(Some(Err(Box::new(BodyTooLarge(limit)))));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => {
                        let e: BoxError = match e {
                            SourceError::Hyper(e) => Box::new(e),
                            SourceError::Native(e) => Box::new(e),
                        };
                        if *from_client {
                            Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
                        } else {
                            Poll::Ready(Some(Err(e)))
                        }
                    }
                    None => Poll::Ready(None),
                }
            }
            Kind::Channel(rx) => {
                let next = ready!(rx.poll_recv(cx));
                this.count_frame(&next);
                Poll::Ready(next)
            }
            Kind::Replay(r) => {
                let next = ready!(r.poll_frame(cx));
                this.count_frame(&next);
                Poll::Ready(next)
            }
            Kind::Held { held, rest } => {
                let next = match held.pop_front() {
                    Some(frame) => Some(frame),
                    None => ready!(Pin::new(&mut **rest).poll_frame(cx)),
                };
                this.count_frame(&next);
                Poll::Ready(next)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Stream { body, .. } => body.is_end_stream(),
            Kind::Channel(_) => false,
            Kind::Replay(r) => r.is_end_stream(),
            Kind::Held { held, rest } => held.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream { body, .. } => body.size_hint(),
            Kind::Replay(r) => r.size_hint(),
            Kind::Channel(_) | Kind::Held { .. } => SizeHint::default(),
        }
    }
}
