//! A downstream connection as its requests see it: the client, the listener, and the clocks
//! that drive its deadlines (head, idle, send), shared by the native server, hyper's and the
//! timers that watch them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What a request knows about its downstream connection.
pub(crate) struct ConnInfo {
    pub client: SocketAddr,
    /// The client's IP as a header value (`X-Forwarded-For`), formatted once per connection.
    pub client_ip: http::HeaderValue,
    pub listener: Arc<str>,
    pub tls: bool,
    in_flight: AtomicUsize,
    /// Milliseconds since `born` of the last request start or finish.
    last_active: AtomicU64,
    /// 1 + milliseconds since `born` when the bytes of a request head started arriving (or the
    /// connection opened); 0 while no head is pending. Drives `request_head_timeout`.
    head_since: AtomicU64,
    /// HTTP/2: after the first request, frames between requests are not request heads.
    h2: AtomicBool,
    /// 1 + milliseconds since `born` when a write to the client started blocking (it stopped
    /// reading); 0 while writes go through. Drives `send_timeout`.
    write_blocked_since: AtomicU64,
    /// Notified when a write starts blocking.
    pub(crate) write_blocked: Notify,
    /// An upgrade the proxy accepted: run on this connection once hyper hands it over.
    pub tunnel: std::sync::Mutex<Option<crate::tunnel::Tunnel>>,
    born: Instant,
}

impl ConnInfo {
    pub(crate) fn new(client: SocketAddr, listener: Arc<str>, tls: bool) -> ConnInfo {
        ConnInfo {
            client,
            client_ip: http::HeaderValue::from_str(&client.ip().to_string())
                .unwrap_or_else(|_| http::HeaderValue::from_static("unknown")),
            listener,
            tls,
            in_flight: AtomicUsize::new(0),
            last_active: AtomicU64::new(0),
            // The head timer runs from accept: a connection that sends nothing is cut too.
            head_since: AtomicU64::new(1),
            h2: AtomicBool::new(false),
            write_blocked_since: AtomicU64::new(0),
            write_blocked: Notify::new(),
            tunnel: std::sync::Mutex::new(None),
            born: Instant::now(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    pub fn request_started(&self, h2: bool) {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
        if h2 {
            self.h2.store(true, Relaxed);
        }
    }

    /// Bytes arrived: if the connection was idle, a new request head is starting.
    pub(crate) fn bytes_read(&self) {
        if self.head_since.load(Relaxed) == 0
            && self.in_flight.load(Relaxed) == 0
            && !self.h2.load(Relaxed)
        {
            self.head_since.store(self.now_ms() + 1, Relaxed);
        }
    }

    /// How long a pending request head has been arriving.
    pub(crate) fn head_pending_for(&self) -> Option<Duration> {
        match self.head_since.load(Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(self.now_ms().saturating_sub(t - 1))),
        }
    }

    /// A write returned `Pending` (`blocked`) or moved bytes.
    pub(crate) fn wrote(&self, blocked: bool) {
        let since = self.write_blocked_since.load(Relaxed);
        if blocked && since == 0 {
            self.write_blocked_since.store(self.now_ms() + 1, Relaxed);
            self.write_blocked.notify_one();
        } else if !blocked && since != 0 {
            self.write_blocked_since.store(0, Relaxed);
        }
    }

    /// How long writes to the client have been blocked.
    pub(crate) fn write_blocked_for(&self) -> Option<Duration> {
        match self.write_blocked_since.load(Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(self.now_ms().saturating_sub(t - 1))),
        }
    }

    pub fn request_done(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
        self.last_active
            .store(self.born.elapsed().as_millis() as u64, Relaxed);
    }

    /// How long the connection has had no request in flight (zero while one is).
    pub(crate) fn idle_for(&self) -> Duration {
        if self.in_flight.load(Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_active.load(Relaxed));
        self.born.elapsed().saturating_sub(last)
    }
}
