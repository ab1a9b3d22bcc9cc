//! Retries: which failed tries may be repeated on another endpoint, the budget that keeps a
//! failing cluster from turning into a retry storm, and the tape that keeps a request body so
//! it can be sent again.
//!
//! The rule is one sentence: a try is repeated only when the upstream cannot have acted on it —
//! no connection was made — or acting twice is harmless — the method is idempotent — and the
//! whole body can be sent again, the route's deadline has time left, and the budget allows.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body::{Body as _, Frame, SizeHint};
use weir_config::{Retries, RetryOn};
use weir_observe::ClusterStats;

use crate::body::{BoxError, ProxyBody};

/// At least this many retries may be in flight, whatever the budget's share says (Envoy's
/// `min_retry_concurrency`, there 3), so a cluster under light load can still retry every
/// request that meets a failing endpoint: ten retries cannot make a storm.
const MIN_RETRY_CONCURRENCY: usize = 10;

/// A cluster's retry settings, precomputed.
pub(crate) struct RetryPolicy {
    /// Tries in all (1: no retries).
    pub attempts: u32,
    on: u8,
    pub per_try_timeout: Option<Duration>,
    budget_percent: usize,
    /// Request body bytes kept for a retry.
    pub buffer: usize,
}

fn bit(kind: RetryOn) -> u8 {
    match kind {
        RetryOn::ConnectFailure => 1,
        RetryOn::Reset => 2,
        RetryOn::Timeout => 4,
        RetryOn::GatewayError => 8,
        RetryOn::Status5xx => 16,
    }
}

impl RetryPolicy {
    pub fn new(r: &Retries) -> RetryPolicy {
        RetryPolicy {
            attempts: r.attempts.max(1),
            on: r.on.iter().fold(0, |acc, k| acc | bit(*k)),
            per_try_timeout: r.per_try_timeout,
            budget_percent: usize::from(r.budget.0),
            buffer: usize::try_from(r.buffer.bytes()).unwrap_or(usize::MAX),
        }
    }

    /// Whether a try that failed as `kind` may be repeated, as far as the policy and the method
    /// go (the body, the deadline and the budget are checked by the caller).
    /// `any_method`: the route opted in to retrying non-idempotent requests.
    pub fn retries(&self, kind: RetryOn, method: &Method, any_method: bool) -> bool {
        self.on & bit(kind) != 0
            && (kind == RetryOn::ConnectFailure || any_method || idempotent(method))
    }

    /// A response status that is a failed try of kind `GatewayError` or `Status5xx`, when the
    /// policy retries it.
    pub fn retried_status(&self, status: http::StatusCode) -> Option<RetryOn> {
        if !status.is_server_error() {
            return None;
        }
        let gateway = matches!(status.as_u16(), 502..=504);
        if gateway && self.on & bit(RetryOn::GatewayError) != 0 {
            Some(RetryOn::GatewayError)
        } else if self.on & bit(RetryOn::Status5xx) != 0 {
            Some(RetryOn::Status5xx)
        } else {
            None
        }
    }

    /// Takes a place for one retry if the budget has one: retries in flight stay under
    /// `budget`% of the cluster's requests in flight (`in_flight`, counted by the balancer) and
    /// at least [`MIN_RETRY_CONCURRENCY`].
    pub fn admit(&self, stats: &Arc<ClusterStats>, in_flight: usize) -> Option<Retrying> {
        let allowed = (in_flight * self.budget_percent / 100).max(MIN_RETRY_CONCURRENCY);
        // A race may let one or two more through; the budget is a bound on storms, not a quota.
        if stats.retrying.load(Relaxed) >= allowed {
            stats.retries_over_budget.fetch_add(1, Relaxed);
            return None;
        }
        stats.retrying.fetch_add(1, Relaxed);
        stats.retries.fetch_add(1, Relaxed);
        Some(Retrying(stats.clone()))
    }
}

/// RFC 9110 §9.2.2: the methods a client may repeat because doing so twice is harmless.
pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A retry in flight (counted against the budget until dropped).
pub(crate) struct Retrying(Arc<ClusterStats>);

impl Drop for Retrying {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Relaxed);
    }
}

/// A request's place under the cluster's `limits.max_requests`; given back on drop.
pub(crate) struct Slot(Arc<ClusterStats>);

impl Slot {
    /// A place if fewer than `max` requests are in flight; else counts the overflow.
    pub fn take(stats: &Arc<ClusterStats>, max: usize) -> Option<Slot> {
        let taken = stats
            .requests
            .fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1))
            .is_ok();
        if taken {
            Some(Slot(stats.clone()))
        } else {
            stats.overflow_requests.fetch_add(1, Relaxed);
            None
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Relaxed);
    }
}

/// The endpoints a request has tried, in order (at most [`MAX_ATTEMPTS`]; no allocation).
#[derive(Default)]
pub(crate) struct Tried {
    list: [usize; MAX_ATTEMPTS],
    len: usize,
}

/// Most tries of one request (config refuses more).
pub(crate) const MAX_ATTEMPTS: usize = 10;

impl Tried {
    pub fn push(&mut self, i: usize) {
        if self.len < MAX_ATTEMPTS {
            self.list[self.len] = i;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[usize] {
        &self.list[..self.len]
    }
}

/// A request body as each try sends it.
pub(crate) enum Resend {
    /// Sent once: no try after the first.
    Once(Option<ProxyBody>),
    /// No body: every try sends none.
    Empty,
    /// Kept while sent, up to a bound.
    Tape(Arc<Mutex<Tape>>),
}

/// How the client's side of a request body failed: the request is refused as the client's
/// fault, never retried and never blamed on an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientFault {
    /// Past `limits.max_request_body_bytes`.
    TooLarge,
    /// Bad framing, or cut short.
    Malformed,
    /// Stalled past `limits.request_body_timeout`.
    Stalled,
}

impl ClientFault {
    fn of(e: &BoxError) -> Option<ClientFault> {
        if e.downcast_ref::<crate::body::BodyTooLarge>().is_some() {
            Some(ClientFault::TooLarge)
        } else if e.downcast_ref::<crate::body::ClientBodyError>().is_some() {
            Some(ClientFault::Malformed)
        } else if e
            .downcast_ref::<crate::body::BodyStalled>()
            .is_some_and(|s| s.from_client)
        {
            Some(ClientFault::Stalled)
        } else {
            None
        }
    }
}

impl Resend {
    /// `body` for a request that may be tried `attempts` times, keeping at most `bound` bytes.
    pub fn new(body: ProxyBody, attempts: u32, bound: usize) -> Resend {
        if body.is_end_stream() {
            Resend::Empty
        } else if attempts <= 1 {
            Resend::Once(Some(body))
        } else {
            let hint = body.size_hint();
            Resend::Tape(Arc::new(Mutex::new(Tape {
                source: body,
                hint,
                kept: Vec::new(),
                kept_bytes: 0,
                bound,
                taken: 0,
                lost: false,
                ended: false,
                fault: None,
                failed: false,
                generation: 0,
            })))
        }
    }

    /// Whether a next try can send the body again. Asking stops every earlier try from reading
    /// the body any further (hyper may still be sending it after a response came), so the
    /// answer cannot change before the next try starts.
    pub fn again(&self) -> bool {
        match self {
            Resend::Once(_) => false,
            Resend::Empty => true,
            Resend::Tape(t) => {
                let mut tape = t.lock().unwrap_or_else(|e| e.into_inner());
                tape.generation += 1;
                !tape.lost && !tape.failed
            }
        }
    }

    /// How the client's body failed, if it did (seen by any try).
    pub fn client_fault(&self) -> Option<ClientFault> {
        match self {
            Resend::Tape(t) => t.lock().unwrap_or_else(|e| e.into_inner()).fault,
            _ => None,
        }
    }

    /// Whether the whole body went out (known only when there is none, or it was kept): a try
    /// that then times out is the endpoint's fault, not a slow client's.
    pub fn all_sent(&self) -> bool {
        match self {
            Resend::Once(_) => false,
            Resend::Empty => true,
            Resend::Tape(t) => t.lock().unwrap_or_else(|e| e.into_inner()).ended,
        }
    }

    /// The body for the next try, from its start; `None` when it cannot be sent again (sent
    /// once, or more of it went out than was kept).
    pub fn next(&mut self) -> Option<ProxyBody> {
        match self {
            Resend::Once(b) => b.take(),
            Resend::Empty => Some(ProxyBody::empty()),
            Resend::Tape(t) => {
                let tape = t.lock().unwrap_or_else(|e| e.into_inner());
                if tape.lost {
                    return None;
                }
                let (hint, generation) = (tape.hint, tape.generation);
                drop(tape);
                Some(ProxyBody::replay(Replay {
                    tape: t.clone(),
                    pos: 0,
                    hint,
                    generation,
                }))
            }
        }
    }
}

/// The request body, read once from the client (or the filters) and kept for the next try.
pub(crate) struct Tape {
    source: ProxyBody,
    hint: SizeHint,
    kept: Vec<Kept>,
    kept_bytes: usize,
    bound: usize,
    /// Frames read from `source`.
    taken: usize,
    /// More than `bound` bytes went out: what was kept is gone and no try can start again.
    lost: bool,
    ended: bool,
    /// The source failed: every try reading on gets an error (never a clean end: that would
    /// send a truncated body as complete), and none starts again.
    failed: bool,
    /// Why, when it was the client's fault.
    fault: Option<ClientFault>,
    /// The newest try: only it may read on.
    generation: u64,
}

enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Kept::Data(b) => Frame::data(b.clone()),
            Kept::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

/// One try's view of the tape: what was kept, then the rest of the source.
pub(crate) struct Replay {
    tape: Arc<Mutex<Tape>>,
    pos: usize,
    hint: SizeHint,
    generation: u64,
}

impl Replay {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut tape = self.tape.lock().unwrap_or_else(|e| e.into_inner());
        let tape = &mut *tape;
        if self.generation != tape.generation {
            return Poll::Ready(Some(Err("a later try is sending this request body".into())));
        }
        if tape.failed {
            return Poll::Ready(Some(Err("the request body failed".into())));
        }
        if !tape.lost && self.pos < tape.kept.len() {
            self.pos += 1;
            return Poll::Ready(Some(Ok(tape.kept[self.pos - 1].frame())));
        }
        if self.pos != tape.taken {
            // Only the try that read past the bound can go on (and is the only one running).
            return Poll::Ready(Some(Err(
                "the request body can no longer be sent again".into()
            )));
        }
        if tape.ended {
            return Poll::Ready(None);
        }
        let next = match std::pin::Pin::new(&mut tape.source).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(n) => n,
        };
        match &next {
            None => tape.ended = true,
            Some(Err(e)) => {
                tape.failed = true;
                tape.fault = ClientFault::of(e);
            }
            Some(Ok(frame)) => {
                tape.taken += 1;
                self.pos += 1;
                let n = frame.data_ref().map_or(0, Bytes::len);
                if !tape.lost && tape.kept_bytes + n <= tape.bound {
                    tape.kept_bytes += n;
                    if let Some(d) = frame.data_ref() {
                        tape.kept.push(Kept::Data(d.clone()));
                    } else if let Some(t) = frame.trailers_ref() {
                        tape.kept.push(Kept::Trailers(t.clone()));
                    }
                } else if !tape.lost {
                    tape.lost = true;
                    tape.kept = Vec::new();
                }
            }
        }
        Poll::Ready(next)
    }

    pub fn is_end_stream(&self) -> bool {
        let tape = self.tape.lock().unwrap_or_else(|e| e.into_inner());
        tape.ended && self.pos == tape.taken
    }

    pub fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    type Tx = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

    fn source() -> (Tx, ProxyBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        (tx, ProxyBody::channel(rx))
    }

    async fn data(tx: &Tx, s: &'static str) {
        tx.send(Ok(Frame::data(Bytes::from_static(s.as_bytes()))))
            .await
            .unwrap();
    }

    async fn read_all(mut b: ProxyBody) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(f) = b.frame().await {
            match f {
                Ok(f) => out.extend_from_slice(f.data_ref().map_or(&[][..], |d| d)),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_retry_sends_the_whole_body_again_then_the_rest() {
        let (tx, body) = source();
        let mut r = Resend::new(body, 2, 1024);
        let mut first = r.next().unwrap();
        data(&tx, "ab").await;
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().unwrap(), "ab");
        assert!(r.again(), "2 bytes kept");
        let second = r.next().unwrap();
        // The first try is stopped: it may not read on beside the second.
        assert!(first.frame().await.unwrap().is_err());
        data(&tx, "cd").await;
        drop(tx);
        assert_eq!(read_all(second).await.unwrap(), b"abcd");
    }

    #[tokio::test]
    async fn a_failed_source_never_ends_cleanly_and_is_the_clients_fault() {
        let (tx, body) = source();
        let mut r = Resend::new(body, 3, 1024);
        let first = r.next().unwrap();
        data(&tx, "ab").await;
        tx.send(Err(Box::new(crate::body::BodyTooLarge(1))))
            .await
            .unwrap();
        drop(tx);
        assert!(read_all(first).await.is_err());
        assert_eq!(r.client_fault(), Some(ClientFault::TooLarge));
        assert!(!r.again(), "a failed body is not sent again");
        // Even a try that started anyway gets an error, never a truncated body as complete.
        let late = r.next().unwrap();
        assert!(read_all(late).await.is_err());
    }

    #[tokio::test]
    async fn a_body_past_the_buffer_is_not_sent_again() {
        let (tx, body) = source();
        let mut r = Resend::new(body, 2, 3);
        let first = r.next().unwrap();
        data(&tx, "ab").await;
        data(&tx, "cd").await;
        drop(tx);
        assert_eq!(read_all(first).await.unwrap(), b"abcd");
        assert!(!r.again());
        assert!(r.next().is_none());
    }

    #[test]
    fn only_idempotent_methods_retry_after_reaching_an_upstream() {
        let p = RetryPolicy::new(&Retries::default());
        assert!(p.retries(RetryOn::ConnectFailure, &Method::POST, false));
        assert!(p.retries(RetryOn::Reset, &Method::GET, false));
        assert!(!p.retries(RetryOn::Reset, &Method::POST, false));
        assert!(!p.retries(RetryOn::Reset, &Method::PATCH, false));
        assert!(
            p.retries(RetryOn::Reset, &Method::POST, true),
            "the route opted in"
        );
        assert!(
            !p.retries(RetryOn::Timeout, &Method::GET, false),
            "not in `on`"
        );
    }
}
