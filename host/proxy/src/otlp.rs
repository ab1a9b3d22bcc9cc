//! Span export over OTLP/HTTP (protobuf): a sampled request hands its finished spans to
//! [`Exporter::export`], which never blocks; a task of the exporter's own batches them and
//! POSTs them to `<endpoint>/v1/traces`.
//!
//! The task runs on the proxy's own runtime, as Envoy's OpenTelemetry tracer flushes from its
//! workers' event loops: no request waits for it, a span is built, queued, encoded and freed on
//! the thread that made it (no cache lines or allocator arenas shared with another core), and
//! a one-worker proxy stays one thread. A second thread is not free: once a process has one,
//! glibc takes its multi-threaded paths in every syscall wrapper and `malloc` — about 440
//! instructions per plain request, more than the trace context itself costs.
//!
//! Memory is bounded by `max_queue_spans`: past it, a request's spans are dropped and counted,
//! and a batch whose export fails or times out is dropped and counted too, never retried into
//! a backlog behind a receiver that is down. The data path's cost is building the spans of
//! sampled requests and one channel send.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use weir_config::{OtlpConfig, OtlpProtocol};
use weir_observe::TraceStats;

mod wire;

/// One finished span, as the data path records it (converted to protobuf off the data path).
#[derive(Debug, Clone)]
pub(crate) struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start: Instant,
    pub end: Instant,
    pub attrs: Vec<(&'static str, Attr)>,
    /// Attributes filters set (keys checked by the filter runtime, values capped).
    pub filter_attrs: Vec<(String, String)>,
    /// Events filters added.
    pub events: Vec<weir_filters::SpanEvent>,
    /// Set when the span's operation failed: the status message.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Server,
    Client,
    Internal,
}

#[derive(Debug, Clone)]
pub(crate) enum Attr {
    Str(String),
    /// A string every span shares (a method's or protocol's name): no copy per span.
    Static(&'static str),
    /// A route's or cluster's name, shared with the config: no copy per span (capped when
    /// written, like any string).
    Shared(Arc<str>),
    Int(i64),
}

impl Attr {
    /// A request method: standard methods by their static names, others copied (and capped).
    pub fn method(m: &http::Method) -> Attr {
        const STANDARD: [&str; 9] = [
            "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
        ];
        match STANDARD.iter().find(|name| **name == m.as_str()) {
            Some(name) => Attr::Static(name),
            None => Attr::from(m.as_str()),
        }
    }
}

/// Longest string attribute or span name kept, in bytes. Paths, hosts and methods come from
/// clients (who also choose whether their request is sampled): capped, a queue full of spans
/// stays a bounded amount of memory (`max_queue_spans` × a few KiB).
pub(crate) const MAX_ATTR_BYTES: usize = 512;

/// `s` cut to at most [`MAX_ATTR_BYTES`], at a character boundary.
pub(crate) fn capped(s: &str) -> &str {
    if s.len() <= MAX_ATTR_BYTES {
        return s;
    }
    let mut end = MAX_ATTR_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl From<&str> for Attr {
    fn from(s: &str) -> Attr {
        Attr::Str(capped(s).to_string())
    }
}

impl From<String> for Attr {
    fn from(mut s: String) -> Attr {
        let keep = capped(&s).len();
        s.truncate(keep);
        Attr::Str(s)
    }
}

impl From<i64> for Attr {
    fn from(n: i64) -> Attr {
        Attr::Int(n)
    }
}

/// A running exporter; dropping it lets its task send what is queued and end.
pub(crate) struct Exporter {
    queue: Arc<Queue>,
    stats: Arc<TraceStats>,
    max_queue: usize,
    max_batch: usize,
    spans: wire::Spans,
    /// What it was started from: a new config with the same settings keeps this exporter.
    pub settings: (OtlpConfig, String),
}

/// Spans waiting for the export task. The task is woken only when a batch is full, a flush is
/// asked for or the exporter closes, and otherwise once per flush interval: a request queueing
/// its spans costs a short uncontended lock, never a wake-up.
struct Queue {
    state: Mutex<Waiting>,
    wake: tokio::sync::Notify,
    /// `Waiting::spans`, written under the lock: read without it, to drop before encoding.
    spans: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Waiting {
    /// Batches ready to go.
    full: VecDeque<Batch>,
    /// The batch being filled.
    open: Batch,
    /// Spans in `full` and `open`, at most `max_queue_spans`.
    spans: usize,
    /// Flushes asked for: answered once everything queued before them is sent.
    flushes: Vec<tokio::sync::oneshot::Sender<()>>,
    closed: bool,
}

/// Encoded spans (`ScopeSpans.spans` fields), at most `max_batch_spans` of them, or one
/// request's if it has more: a request's spans are never split between exports.
#[derive(Default)]
struct Batch {
    spans: usize,
    bytes: Vec<u8>,
}

thread_local! {
    /// Where a worker encodes a request's spans before it takes the queue's lock: the lock is
    /// held for a copy, not an encoding. Kept, at the size of the largest request's spans.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Exporter {
    /// Starts the export task for `config` on the current runtime, spans carrying
    /// `service.name` `service`.
    pub fn start(
        config: &OtlpConfig,
        service: &str,
        stats: Arc<TraceStats>,
    ) -> std::io::Result<Exporter> {
        let url = weir_config::otlp_traces_url(&config.endpoint, config.protocol)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let queue = Arc::new(Queue {
            state: Mutex::new(Waiting::default()),
            wake: tokio::sync::Notify::new(),
            spans: Default::default(),
        });
        let task = Batcher {
            queue: queue.clone(),
            url,
            grpc: config.protocol == OtlpProtocol::Grpc,
            stats: stats.clone(),
            interval: config.flush_interval,
            timeout: config.timeout,
            service: service.to_string(),
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("no runtime to export from: {e}")))?;
        runtime.spawn(task.run());
        Ok(Exporter {
            queue,
            stats,
            max_queue: config.max_queue_spans,
            max_batch: config.max_batch_spans,
            spans: wire::Spans {
                epoch: Epoch::now(),
            },
            settings: (config.clone(), service.to_string()),
        })
    }

    /// Encodes one request's spans onto the batch being filled, or drops and counts them
    /// when the queue is full. Their records can be freed as soon as this returns.
    pub fn export(&self, spans: &[SpanRecord]) {
        let n = spans.len();
        if n == 0 {
            return;
        }
        // A full queue (a receiver that is down) drops before encoding, not after. Read
        // without the lock, the count may be a batch behind: the check under it is exact.
        if self.queue.spans.load(Relaxed) + n > self.max_queue {
            self.stats.dropped_queue_full.fetch_add(n as u64, Relaxed);
            return;
        }
        SCRATCH.with_borrow_mut(|encoded| {
            encoded.clear();
            self.spans.append(encoded, spans);
            let mut q = self.queue.lock();
            if q.spans + n > self.max_queue {
                drop(q);
                self.stats.dropped_queue_full.fetch_add(n as u64, Relaxed);
                return;
            }
            if q.open.spans > 0 && q.open.spans + n > self.max_batch {
                let full = std::mem::take(&mut q.open);
                q.full.push_back(full);
            }
            q.open.bytes.extend_from_slice(encoded);
            q.open.spans += n;
            q.spans += n;
            let filled = q.open.spans >= self.max_batch;
            if filled {
                let full = std::mem::take(&mut q.open);
                q.full.push_back(full);
            }
            self.queue.spans.store(q.spans, Relaxed);
            self.stats.queued.store(q.spans as u64, Relaxed);
            drop(q);
            if filled {
                self.queue.wake.notify_one();
            }
        });
    }

    /// Exports every span queued so far, waiting at most `limit` (shutdown: the last
    /// interval's spans are not lost with the process).
    pub async fn flush(&self, limit: Duration) -> bool {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.queue.lock().flushes.push(ack);
        self.queue.wake.notify_one();
        matches!(tokio::time::timeout(limit, done).await, Ok(Ok(())))
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.wake.notify_one();
    }
}

/// An instant and the clock's UNIX time then, in nanoseconds, taken once per exporter: a span's
/// instants become UNIX times against it, so spans of one exporter are consistent with each
/// other, and each costs one subtraction of instants (not a clock read, nor a `SystemTime`
/// sum and a second subtraction).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch {
    at: Instant,
    unix_nanos: u64,
}

impl Epoch {
    pub fn now() -> Epoch {
        Epoch::new(Instant::now(), SystemTime::now())
    }

    fn new(at: Instant, clock: SystemTime) -> Epoch {
        let unix_nanos = clock
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Epoch { at, unix_nanos }
    }

    /// `t` as a UNIX time in nanoseconds.
    pub fn unix_nanos(self, t: Instant) -> u64 {
        match t.checked_duration_since(self.at) {
            Some(after) => self.unix_nanos.saturating_add(after.as_nanos() as u64),
            None => self
                .unix_nanos
                .saturating_sub(self.at.duration_since(t).as_nanos() as u64),
        }
    }
}

/// The export task's state.
struct Batcher {
    queue: Arc<Queue>,
    url: http::Uri,
    /// OTLP/gRPC: HTTP/2, length-prefixed messages, `grpc-status` in the trailers.
    grpc: bool,
    stats: Arc<TraceStats>,
    interval: Duration,
    timeout: Duration,
    /// `service.name`, the one resource attribute.
    service: String,
}

impl Batcher {
    async fn run(self) {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.timeout));
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(self.grpc)
            .build(http);
        loop {
            // Sleep for the interval unless a batch fills, a flush is asked for, or the
            // exporter closes; then send batches until the queue is empty. A wake-up that
            // comes between the check and the wait is kept by `Notify` as a permit.
            let ready = {
                let q = self.queue.lock();
                !q.full.is_empty() || !q.flushes.is_empty() || q.closed
            };
            if !ready {
                let _ = tokio::time::timeout(self.interval, self.queue.wake.notified()).await;
            }
            let (flushes, closed) = {
                let mut q = self.queue.lock();
                (std::mem::take(&mut q.flushes), q.closed)
            };
            // Every full batch, then the one being filled, once: what was queued before this
            // wake-up (and before any flush it answers) is sent.
            let mut took_open = false;
            loop {
                let batch = {
                    let mut q = self.queue.lock();
                    let batch = match q.full.pop_front() {
                        Some(b) => b,
                        None if !took_open => {
                            took_open = true;
                            std::mem::take(&mut q.open)
                        }
                        None => break,
                    };
                    q.spans -= batch.spans;
                    self.queue.spans.store(q.spans, Relaxed);
                    self.stats.queued.store(q.spans as u64, Relaxed);
                    batch
                };
                if batch.spans == 0 {
                    continue;
                }
                let n = batch.spans as u64;
                let body = self.frame(&batch.bytes);
                drop(batch);
                match self.post(&client, body).await {
                    Ok(()) => self.stats.exported.fetch_add(n, Relaxed),
                    Err(e) => {
                        tracing::warn!(url = %self.url, spans = n, "span export failed: {e}");
                        self.stats.dropped_export_failed.fetch_add(n, Relaxed)
                    }
                };
            }
            for ack in flushes {
                let _ = ack.send(());
            }
            if closed {
                return;
            }
        }
    }

    async fn post(
        &self,
        client: &Client<HttpConnector, Full<Bytes>>,
        body: Bytes,
    ) -> Result<(), String> {
        let mut req = http::Request::post(self.url.clone());
        let body = if self.grpc {
            // One uncompressed message: flag 0, then its length (big-endian u32).
            let mut framed = Vec::with_capacity(body.len() + 5);
            framed.push(0);
            framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
            framed.extend_from_slice(&body);
            req = req
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, "trailers");
            Bytes::from(framed)
        } else {
            req = req.header(http::header::CONTENT_TYPE, "application/x-protobuf");
            body
        };
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let exchange = async {
            let res = client.request(req).await.map_err(|e| format!("{e}"))?;
            let (parts, body) = res.into_parts();
            // Read the (small) answer: it carries gRPC's status, and frees the connection.
            let answer = http_body_util::Limited::new(body, 64 << 10)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            if !parts.status.is_success() {
                return Err(format!("the receiver answered {}", parts.status));
            }
            if self.grpc {
                // A trailers-only answer has grpc-status in its head.
                let status = (parts.headers.get("grpc-status"))
                    .or_else(|| answer.trailers().and_then(|t| t.get("grpc-status")));
                match status.map(|v| v.as_bytes()) {
                    Some(b"0") => {}
                    Some(code) => {
                        return Err(format!("gRPC status {}", String::from_utf8_lossy(code)));
                    }
                    None => return Err("no gRPC status".to_owned()),
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }

    fn frame(&self, spans: &[u8]) -> Bytes {
        let frame = wire::Frame {
            service: &self.service,
            version: env!("CARGO_PKG_VERSION"),
        };
        Bytes::from(frame.around(spans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, max_queue_spans: usize) -> OtlpConfig {
        OtlpConfig {
            endpoint: endpoint.into(),
            protocol: OtlpProtocol::HttpProtobuf,
            max_queue_spans,
            max_batch_spans: 8,
            flush_interval: Duration::from_millis(20),
            timeout: Duration::from_millis(200),
        }
    }

    fn record(n: u8) -> SpanRecord {
        let now = Instant::now();
        SpanRecord {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent: None,
            name: format!("span {n}"),
            kind: SpanKind::Internal,
            start: now,
            end: now,
            attrs: vec![("n", Attr::Int(i64::from(n)))],
            filter_attrs: Vec::new(),
            events: Vec::new(),
            error: None,
        }
    }

    /// A receiver that takes connections and never answers: the queue stays within its
    /// bound, what does not fit is dropped and counted at once, and batches that time out are
    /// counted as failed, not kept. Every span is accounted for.
    // The export task on a worker of its own, so it takes batches while the test queues.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stalled_receiver_costs_a_bounded_queue_and_counted_drops() {
        let stalled = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let endpoint = format!("http://{}", stalled.local_addr().expect("addr"));
        let stats = Arc::new(TraceStats::default());
        let mut c = config(&endpoint, 10);
        c.timeout = Duration::from_millis(500);
        let exporter = Exporter::start(&c, "t", stats.clone()).expect("starts");
        for i in 0..1000u32 {
            exporter.export(&[record(i as u8), record(1)]);
            assert!(stats.queued.load(Relaxed) <= 10);
        }
        // The task holds one batch (8: requests of two spans) in its stalled export; the
        // queue holds 10.
        let dropped = stats.dropped_queue_full.load(Relaxed);
        assert!(dropped >= 2000 - 10 - 10, "{dropped}");
        drop(exporter);
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.dropped_export_failed.load(Relaxed) + dropped < 2000 {
            assert!(Instant::now() < deadline, "{stats:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.exported.load(Relaxed), 0);
        assert_eq!(stats.queued.load(Relaxed), 0);
        drop(stalled);
    }

    /// A receiver that answers every POST 200 and keeps, per POST, the trace ids of the spans
    /// it carried.
    async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<Vec<u8>>>>>) {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let got = posts.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let got = got.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            let mut chunk = [0u8; 8192];
                            match c.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = (head.lines())
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + 4 + len {
                            let mut chunk = [0u8; 8192];
                            match c.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> = buf.drain(..end + 4 + len).skip(end + 4).collect();
                        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                        let ids = (req.resource_spans.iter())
                            .flat_map(|r| &r.scope_spans)
                            .flat_map(|s| &s.spans)
                            .map(|s| s.trace_id.clone())
                            .collect();
                        got.lock().unwrap().push(ids);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if c.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, posts)
    }

    /// Requests of 3 spans into batches of at most 8: two requests per POST (a third would
    /// split one), every span exported once, and each request's spans in one POST. A request
    /// with more spans than a batch holds goes alone, whole.
    #[tokio::test]
    async fn batches_hold_whole_requests_up_to_the_batch_size() {
        let (addr, posts) = receiver().await;
        let stats = Arc::new(TraceStats::default());
        let mut c = config(&format!("http://{addr}"), 1000);
        c.flush_interval = Duration::from_secs(60);
        let exporter = Exporter::start(&c, "t", stats.clone()).expect("starts");
        for i in 0..20u8 {
            exporter.export(&[record(i), record(i), record(i)]);
        }
        exporter.export(&(0..11).map(|_| record(100)).collect::<Vec<_>>());
        assert!(exporter.flush(Duration::from_secs(10)).await, "{stats:?}");
        let posts = posts.lock().unwrap().clone();
        assert_eq!(stats.exported.load(Relaxed), 71);
        assert_eq!(posts.iter().map(Vec::len).sum::<usize>(), 71);
        for (i, post) in posts.iter().enumerate() {
            if post.len() > 8 {
                assert_eq!(post.len(), 11, "only the big request goes past 8");
            } else if i + 1 < posts.len() {
                assert_eq!(post.len(), 6, "full batches carry two whole requests");
            }
        }
        for id in 0..=100u8 {
            let holding = posts.iter().filter(|p| p.contains(&vec![id; 16])).count();
            assert!(holding <= 1, "request {id}'s spans are in {holding} posts");
        }
    }

    #[test]
    fn standard_methods_are_static_names_others_are_copied_and_capped() {
        for m in [
            "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
        ] {
            let method = http::Method::from_bytes(m.as_bytes()).unwrap();
            assert!(
                matches!(Attr::method(&method), Attr::Static(s) if s == m),
                "{m}"
            );
        }
        let long = "X".repeat(2 * MAX_ATTR_BYTES);
        for m in ["PURGE", "get", long.as_str()] {
            let method = http::Method::from_bytes(m.as_bytes()).unwrap();
            match Attr::method(&method) {
                Attr::Str(s) => assert_eq!(s, capped(m)),
                _ => panic!("{m}: not a standard method"),
            }
        }
    }

    #[test]
    fn client_chosen_strings_are_capped_at_a_character_boundary() {
        let long = "é".repeat(MAX_ATTR_BYTES);
        let Attr::Str(a) = Attr::from(long.as_str()) else {
            panic!("a string");
        };
        assert!(
            a.len() <= MAX_ATTR_BYTES && a.len() >= MAX_ATTR_BYTES - 1,
            "{}",
            a.len()
        );
        assert!(a.chars().all(|c| c == 'é'));
        let Attr::Str(b) = Attr::from("x".repeat(70_000)) else {
            panic!("a string");
        };
        assert_eq!(b.len(), MAX_ATTR_BYTES);
        assert_eq!(capped("short"), "short");
    }

    #[test]
    fn instants_become_unix_times_on_both_sides_of_the_epoch() {
        let (at, clock) = (Instant::now(), SystemTime::now());
        let epoch = Epoch::new(at, clock);
        let now = clock
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64;
        let later = epoch.unix_nanos(at + Duration::from_secs(1));
        let earlier = epoch.unix_nanos(at - Duration::from_millis(5));
        assert_eq!(later, now + 1_000_000_000);
        assert_eq!(earlier, now - 5_000_000);
    }
}
