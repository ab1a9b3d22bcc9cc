//! Connects to upstream endpoints: TCP (with a connect timeout and TCP_NODELAY), optionally
//! TLS with ALPN, counting every connection in the endpoint's gauge.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use weir_observe::EndpointStats;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connection within the cluster's connect timeout.
    #[error("connect to {0} timed out")]
    Timeout(String),
    /// The cluster already has `limits.max_connections` open (circuit breaking).
    #[error("the cluster is at its limit of {0} connections")]
    Overflow(usize),
    /// AdminError, unreachable, TLS failure, or no address.
    #[error("connect to {addr}: {source}")]
    Failed {
        /// The endpoint.
        addr: String,
        /// The cause.
        source: io::Error,
    },
}

/// The upstream TLS settings of a cluster.
#[derive(Clone)]
pub struct TlsClient {
    /// The client config (roots, ALPN).
    pub config: Arc<ClientConfig>,
    /// The name to send as SNI and verify; the endpoint host when `None`.
    pub sni: Option<ServerName<'static>>,
}

/// A hyper-util connector for one cluster.
#[derive(Clone)]
pub struct Connector {
    pub(crate) timeout: Duration,
    pub(crate) tls: Option<TlsClient>,
    /// Endpoint authority → its stats (connection gauge, failures).
    pub(crate) stats: Arc<HashMap<String, Arc<EndpointStats>>>,
    /// Connect here whatever the request URI names. HTTP/2 clusters use one client per endpoint
    /// so the URI (and so `:authority`) can carry the site's host instead of the endpoint's.
    pub(crate) fixed: Option<http::uri::Authority>,
    /// `limits.max_connections` (and the requests that may wait at it).
    pub(crate) limit: Option<Arc<ConnLimit>>,
}

/// A cluster's cap on upstream connections, open and opening together; at the cap up to
/// `max_pending` connects wait (at most `wait`) for a place, more fail with
/// [`ConnectError::Overflow`]. While a connect waits, hyper's pool may hand its request a
/// connection that came free: waiting here is how a request queues for one.
///
/// The counts are this cluster build's own: after a reload that rebuilds the cluster, the old
/// pool's connections (draining) no longer count against the new cap.
pub(crate) struct ConnLimit {
    pub max: usize,
    pub max_pending: usize,
    pub wait: Duration,
    pub stats: Arc<weir_observe::ClusterStats>,
    /// Connections open or opening.
    pub open: std::sync::atomic::AtomicUsize,
    /// Connects waiting for a place.
    pending: std::sync::atomic::AtomicUsize,
    freed: tokio::sync::Notify,
}

impl ConnLimit {
    pub fn new(
        max: usize,
        max_pending: usize,
        wait: Duration,
        stats: Arc<weir_observe::ClusterStats>,
    ) -> ConnLimit {
        ConnLimit {
            max,
            max_pending,
            wait,
            stats,
            open: std::sync::atomic::AtomicUsize::new(0),
            pending: std::sync::atomic::AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }

    fn try_take(self: &Arc<Self>) -> Option<Reserved> {
        self.open
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| Reserved(self.clone()))
    }

    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Reserved, ConnectError> {
        if let Some(r) = self.try_take() {
            return Ok(r);
        }
        let queued = self
            .pending
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .is_ok();
        if !queued {
            self.stats.overflow_connections.fetch_add(1, Relaxed);
            return Err(ConnectError::Overflow(self.max));
        }
        let _queued = Pending(&self.pending);
        let waited = tokio::time::timeout(self.wait, async {
            loop {
                let freed = self.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if let Some(r) = self.try_take() {
                    return r;
                }
                freed.await;
            }
        })
        .await;
        match waited {
            Ok(r) => Ok(r),
            // One last look: a place may have come free as the wait ended.
            Err(_) => self.try_take().ok_or_else(|| {
                self.stats.overflow_connections.fetch_add(1, Relaxed);
                ConnectError::Overflow(self.max)
            }),
        }
    }
}

/// A request counted as waiting at `max_connections`.
struct Pending<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamConn>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        let uri = match &this.fixed {
            Some(a) => Uri::builder()
                .scheme("http")
                .authority(a.clone())
                .path_and_query("/")
                .build()
                .unwrap_or(uri),
            None => uri,
        };
        Box::pin(async move { this.open(&uri).await.map(TokioIo::new) })
    }
}

impl Connector {
    /// A new connection to the endpoint `uri` names (or to `fixed`): a place under the
    /// cluster's connection cap, then TCP (and TLS) within the connect timeout.
    pub(crate) async fn open(&self, uri: &Uri) -> Result<UpstreamConn, ConnectError> {
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_default()
            .to_string();
        let stats = self.stats.get(&authority).cloned();
        // A place under the cap is taken before connecting (connects in progress count),
        // and given back when the connection closes or cannot be made.
        let reserved = match &self.limit {
            None => None,
            Some(limit) => Some(limit.acquire().await?),
        };
        let result = tokio::time::timeout(self.timeout, self.connect(uri, &authority)).await;
        let conn = match result {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => {
                if let Some(s) = &stats {
                    s.connect_failures.fetch_add(1, Relaxed);
                }
                return Err(ConnectError::Failed {
                    addr: authority,
                    source,
                });
            }
            Err(_) => {
                if let Some(s) = &stats {
                    s.connect_failures.fetch_add(1, Relaxed);
                }
                return Err(ConnectError::Timeout(authority));
            }
        };
        if let Some(s) = &stats {
            s.connections.open();
        }
        Ok(UpstreamConn {
            io: conn,
            stats,
            _reserved: reserved,
        })
    }

    async fn connect(&self, uri: &Uri, authority: &str) -> io::Result<Io> {
        let host = uri.host().unwrap_or_default();
        let port = uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let host_bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = match host_bare.parse::<std::net::IpAddr>() {
            Ok(ip) => TcpStream::connect((ip, port)).await?,
            Err(_) => TcpStream::connect(authority).await?,
        };
        tcp.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            return Ok(Io::Plain(tcp));
        };
        let name = match &tls.sni {
            Some(n) => n.clone(),
            None => ServerName::try_from(host_bare.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(name, tcp)
            .await?;
        Ok(Io::Tls(Box::new(stream)))
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An upstream connection; closing it (drop) updates the endpoint's gauge.
pub struct UpstreamConn {
    io: Io,
    stats: Option<Arc<EndpointStats>>,
    _reserved: Option<Reserved>,
}

/// A place under a cluster's `limits.max_connections`, given back on drop (waking a waiter).
pub(crate) struct Reserved(Arc<ConnLimit>);

impl Drop for Reserved {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.freed.notify_one();
    }
}

impl UpstreamConn {
    /// Whether an idle pooled connection can be used again: it has nothing to read. A
    /// keep-alive HTTP/1.1 connection between requests has nothing to say, so readable bytes
    /// (stray data, a TLS close_notify) or end of file (the upstream closed it) mean it is done.
    /// Looks at readiness the runtime already knows; no wait.
    pub(crate) fn is_quiet(&self) -> bool {
        let tcp = match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        };
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        tcp.poll_peek(&mut cx, &mut buf).is_pending()
    }
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        if let Some(s) = &self.stats {
            s.connections.close();
        }
    }
}

impl Connection for UpstreamConn {
    fn connected(&self) -> Connected {
        match &self.io {
            Io::Plain(_) => Connected::new(),
            Io::Tls(s) => {
                let c = Connected::new();
                if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl AsyncRead for UpstreamConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
