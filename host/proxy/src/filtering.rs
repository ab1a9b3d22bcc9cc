//! Runs a route's wasm filters around the native request path. Only routes with filters get
//! here; the rest never touch wasmtime.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicU16, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use weir_filters::{Answer, Chain, ChainRequest, Exchange, LocalResponse, Phases, Props};

use crate::body::{BoxError, ProxyBody};

struct State {
    cr: ChainRequest,
    ex: Exchange,
    /// What a body phase decided when it could not answer directly.
    answer: Option<Answer>,
    /// `on-log` and `context-done` have run.
    finished: bool,
}

/// Most upstream response bytes read ahead while the request body is still in the filters.
const HOLD_LIMIT: usize = 1 << 20;

/// One request's run through a chain. Cheap to clone (shared with body pumps and the
/// response's completion hook).
///
/// Every request that entered the chain gets exactly one `on-log` and one `context-done`: the
/// happy paths call [`FilterRun::finish`]; every other way out (an upstream timeout, a 502, a
/// client that goes away, a pump that stops) ends in the last clone's drop, which runs them on
/// a task. Without this, stateful filters leaked a context per failed request until their memory
/// cap trapped.
#[derive(Clone)]
pub(crate) struct FilterRun {
    shared: Arc<RunShared>,
}

/// What a run's clones share: one allocation per filtered request.
struct RunShared {
    chain: Arc<Chain>,
    state: tokio::sync::Mutex<State>,
    /// The status the client got, when the proxy answered (for `on-log`); 0 when unknown.
    status: AtomicU16,
    /// Set (and `body_notify` notified) when the request body has been through the
    /// request-body phases, or was stopped by them.
    body_done: AtomicBool,
    body_notify: tokio::sync::Notify,
    /// Set (and `verdict_notify` notified) once nothing waits for a request-body phase's
    /// verdict any more: the response is decided.
    verdict_over: AtomicBool,
    verdict_notify: tokio::sync::Notify,
}

impl FilterRun {
    /// A run whose request phases (binding an instance, callouts) end by `deadline`; with
    /// `record`, each phase run is kept for the request's trace.
    pub fn new(
        chain: Arc<Chain>,
        props: Props,
        method: http::Method,
        deadline: tokio::time::Instant,
        record: bool,
    ) -> FilterRun {
        let cr = chain.start();
        // Every field written out: `..Exchange::default()` would build (and drop) a default
        // `Props`, three allocations per filtered request.
        let ex = Exchange {
            method,
            path: String::new(),
            path_changed: false,
            request_headers: http::HeaderMap::new(),
            status: 0,
            response_headers: http::HeaderMap::new(),
            body: Vec::new(),
            props: Arc::new(props),
            deadline: Some(deadline),
            trace: record.then(Box::default),
        };
        FilterRun {
            shared: Arc::new(RunShared {
                chain,
                status: AtomicU16::new(0),
                state: tokio::sync::Mutex::new(State {
                    cr,
                    ex,
                    answer: None,
                    finished: false,
                }),
                body_done: AtomicBool::new(false),
                body_notify: tokio::sync::Notify::new(),
                verdict_over: AtomicBool::new(false),
                verdict_notify: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The run's state. Uncontended unless a body pump runs beside a header phase, so the
    /// cheap try comes first.
    async fn lock(&self) -> tokio::sync::MutexGuard<'_, State> {
        let state = &self.shared.state;
        match state.try_lock() {
            Ok(g) => g,
            Err(_) => state.lock().await,
        }
    }

    /// Returns once the request body has been through the request-body phases.
    async fn request_body_done(&self) {
        loop {
            // Registered before the check, so a notification in between is not lost.
            let notified = self.shared.body_notify.notified();
            if self.shared.body_done.load(Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The response is decided: a request body whose upstream stopped reading it need not be
    /// filtered any further.
    pub fn verdict_over(&self) {
        self.shared.verdict_over.store(true, Release);
        self.shared.verdict_notify.notify_waiters();
    }

    /// Returns once [`verdict_over`](Self::verdict_over) has been called.
    async fn verdict_is_over(&self) {
        loop {
            let notified = self.shared.verdict_notify.notified();
            if self.shared.verdict_over.load(Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// An upstream may answer before the request body has been through the request-body
    /// phases (one that streams its answer as the body arrives), and such a phase may still
    /// answer locally: its answer must win. So the response head waits until the request body
    /// is through (at most `limit`), reading ahead up to [`HOLD_LIMIT`] bytes of the upstream's
    /// body meanwhile, so an upstream that needs its answer read before it reads more body
    /// cannot stall the two against each other.
    ///
    /// The upstream's body (with what was read ahead), or the answer a request-body phase gave
    /// instead.
    pub async fn settle_request_body(
        &self,
        mut body: ProxyBody,
        limit: Duration,
    ) -> Result<ProxyBody, Answer> {
        let settle = self.request_body_done();
        tokio::pin!(settle);
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let mut held = VecDeque::new();
        let mut bytes = 0;
        let mut ended = false;
        let settled = loop {
            if bytes >= HOLD_LIMIT {
                break false;
            }
            tokio::select! {
                biased;
                () = &mut settle => break true,
                () = &mut deadline => break false,
                frame = body.frame(), if !ended => match frame {
                    Some(Ok(f)) => {
                        bytes += f.data_ref().map_or(0, Bytes::len);
                        held.push_back(Ok(f));
                    }
                    Some(Err(e)) => {
                        held.push_back(Err(e));
                        ended = true;
                    }
                    None => ended = true,
                },
            }
        };
        if settled && let Some(answer) = self.take_answer().await {
            return Err(answer);
        }
        Ok(if held.is_empty() {
            body
        } else {
            ProxyBody::held(held, body)
        })
    }

    /// What the filters recorded for the request's spans so far (see [`new`](Self::new)):
    /// phase runs, attributes and events; nothing while a phase runs. Taken once: the
    /// filters' calls to the trace interface are `unavailable` from then on.
    pub fn take_span_notes(&self) -> weir_filters::SpanNotes {
        match self.shared.state.try_lock() {
            Ok(mut st) => st.ex.trace.take().map(|n| *n).unwrap_or_default(),
            Err(_) => weir_filters::SpanNotes::default(),
        }
    }

    pub fn phases(&self) -> Phases {
        self.shared.chain.phases()
    }

    /// The status the client got, for `on-log` when the proxy (not the upstream) answered.
    pub fn set_status(&self, status: StatusCode) {
        self.shared.status.store(status.as_u16(), Relaxed);
    }

    /// Request-headers phase over `headers` and `path` (changed in place).
    pub async fn request_headers(
        &self,
        headers: &mut http::HeaderMap,
        path: &mut String,
    ) -> Result<(), Answer> {
        if !self.phases().contains(Phases::REQUEST_HEADERS) {
            return Ok(());
        }
        let mut st = self.lock().await;
        let st = &mut *st;
        st.ex.request_headers = std::mem::take(headers);
        st.ex.path = std::mem::take(path);
        let v = self
            .shared
            .chain
            .request_headers(&mut st.cr, &mut st.ex)
            .await;
        *headers = std::mem::take(&mut st.ex.request_headers);
        *path = std::mem::take(&mut st.ex.path);
        v
    }

    /// Response-headers phase over the upstream's status and headers (changed in place); its
    /// callouts end by `deadline`.
    pub async fn response_headers(
        &self,
        status: &mut StatusCode,
        headers: &mut http::HeaderMap,
        deadline: tokio::time::Instant,
    ) -> Result<(), Answer> {
        let mut st = self.lock().await;
        let st = &mut *st;
        let pending = std::mem::take(&mut st.ex.response_headers);
        weir_filters::set_response_headers(headers, pending, true);
        if !self.phases().contains(Phases::RESPONSE_HEADERS) {
            return Ok(());
        }
        st.ex.deadline = Some(deadline);
        st.ex.status = status.as_u16();
        st.ex.response_headers = std::mem::take(headers);
        let v = self
            .shared
            .chain
            .response_headers(&mut st.cr, &mut st.ex)
            .await;
        *headers = std::mem::take(&mut st.ex.response_headers);
        *status = StatusCode::from_u16(st.ex.status).unwrap_or(*status);
        v
    }

    /// The headers the request phases set on the response, added to `headers` of a response
    /// the proxy or a filter made (which keeps its own; the upstream's gets them in
    /// [`response_headers`](Self::response_headers)).
    pub async fn set_response_headers(&self, headers: &mut http::HeaderMap) {
        let pending = std::mem::take(&mut self.lock().await.ex.response_headers);
        weir_filters::set_response_headers(headers, pending, false);
    }

    /// The answer a body phase gave, if it stopped the request.
    pub async fn take_answer(&self) -> Option<Answer> {
        self.lock().await.answer.take()
    }

    /// `on-log` and `context-done`, once.
    pub async fn finish(&self) {
        let mut st = self.lock().await;
        let st = &mut *st;
        if !std::mem::replace(&mut st.finished, true) {
            self.shared.note_status(&mut st.ex);
            self.shared.chain.finish(&mut st.cr, &mut st.ex).await;
        }
    }

    /// Whether the run must wait for the response body to end before `finish`.
    pub fn finishes_after_body(&self) -> bool {
        let p = self.phases();
        p.contains(Phases::RESPONSE_BODY) || p.contains(Phases::LOG)
    }

    /// Pipes a body through the chain's body phase: a task reads `source`, runs each chunk
    /// through the filters and feeds the returned body. With `finish_at_end`, the task also runs
    /// `finish` when the body is over.
    pub fn pipe_body<B>(&self, mut source: B, response: bool, finish_at_end: bool) -> ProxyBody
    where
        B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError> + Send,
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(4);
        let run = self.clone();
        tokio::spawn(async move {
            let mut ended = false;
            // A filter answered or failed, or nothing needs the rest: stop reading.
            let mut stopped = false;
            // The reader is gone but a request-body phase may still answer the request (the
            // upstream answered early without reading the body): keep filtering, discarding
            // the output, until the response is decided.
            let mut discarding = false;
            let mut gone = false;
            while !stopped {
                let frame = tokio::select! {
                    biased;
                    () = tx.closed(), if !discarding => {
                        if response || run.shared.verdict_over.load(Acquire) {
                            gone = true;
                            break;
                        }
                        discarding = true;
                        continue;
                    }
                    () = run.verdict_is_over(), if discarding => {
                        gone = true;
                        break;
                    }
                    f = source.frame() => f,
                };
                let Some(frame) = frame else { break };
                let frame = match frame {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        stopped = true;
                        continue;
                    }
                };
                stopped = match frame.into_data() {
                    Ok(data) => {
                        let end = source.is_end_stream();
                        ended |= end;
                        !run.body_chunk(&tx, data, end, response).await
                    }
                    // Trailers: the body is over; flush filters first.
                    Err(trailers) if !ended => {
                        ended = true;
                        let go_on = run.body_chunk(&tx, Bytes::new(), true, response).await;
                        let _ = tx.send(Ok(trailers)).await;
                        !go_on
                    }
                    Err(trailers) => {
                        let _ = tx.send(Ok(trailers)).await;
                        false
                    }
                };
            }
            if !ended && !stopped && !gone {
                run.body_chunk(&tx, Bytes::new(), true, response).await;
            }
            drop(tx);
            if !response {
                run.shared.body_done.store(true, Release);
                run.shared.body_notify.notify_waiters();
            }
            // When the reader went away, the last clone's drop finishes the run.
            if finish_at_end && !gone {
                run.finish().await;
            }
        });
        ProxyBody::channel(rx)
    }

    /// Runs one chunk; false when a filter answered or failed (the body stops there).
    async fn body_chunk(
        &self,
        tx: &tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, BoxError>>,
        data: Bytes,
        end: bool,
        response: bool,
    ) -> bool {
        let mut st = self.lock().await;
        let st = &mut *st;
        match self
            .shared
            .chain
            .body(&mut st.cr, response, data, end, &mut st.ex)
            .await
        {
            Ok(d) => {
                // A reader that is gone is the pump loop's business (see `pipe_body`).
                if !d.is_empty() {
                    let _ = tx.send(Ok(http_body::Frame::data(d))).await;
                }
                true
            }
            Err(answer) => {
                let why = match answer {
                    Answer::Respond(_) => "a filter answered during the body phase",
                    Answer::Fail { .. } => "a filter failed during the body phase",
                };
                st.answer = Some(answer);
                let _ = tx.send(Err(why.into())).await;
                false
            }
        }
    }
}

impl RunShared {
    /// When the proxy answered, `on-log` sees the status the client got.
    fn note_status(&self, ex: &mut Exchange) {
        let status = self.status.load(Relaxed);
        if status != 0 {
            ex.status = status;
        }
    }
}

impl Drop for RunShared {
    /// The last clone is gone without `finish`: run it on a task (the request is over; nothing
    /// waits for it).
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if st.finished {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        st.finished = true;
        let status = *self.status.get_mut();
        if status != 0 {
            st.ex.status = status;
        }
        let mut cr = std::mem::take(&mut st.cr);
        let mut ex = std::mem::take(&mut st.ex);
        let chain = self.chain.clone();
        rt.spawn(async move { chain.finish(&mut cr, &mut ex).await });
    }
}

/// A filter's local response as an HTTP response.
pub(crate) fn local_response(r: LocalResponse, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(r.body));
    *res.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // The body decides the framing; a filter's Content-Length could only be wrong.
    for (k, v) in r
        .headers
        .into_iter()
        .filter(|(k, _)| !crate::head::is_framing(k))
    {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) {
            res.headers_mut().append(k, v);
        }
    }
    res.headers_mut()
        .insert(HeaderName::from_static("x-request-id"), request_id.clone());
    if !res.headers().contains_key(header::CONTENT_TYPE) && !res.body().is_end_stream() {
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    res
}
