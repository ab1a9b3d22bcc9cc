//! Downstream listeners: accept (bounded by max_connections), TLS, HTTP/1.1 and HTTP/2 with edge
//! limits, idle timeouts, and graceful drain.

use std::convert::Infallible;

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use weir_config::Limits;
use weir_observe::{ListenerStats, TimeoutKind};

use crate::Shared;
use crate::conn::ConnInfo;

pub(crate) struct ListenerRuntime {
    pub name: Arc<str>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub stats: Arc<ListenerStats>,
    /// Plain HTTP/1.1 through Weir's own server (`listeners[].server: native`).
    pub native: bool,
    /// What the listener was bound as.
    pub protocol: weir_config::ListenerProtocol,
}

pub(crate) fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // The head timeout is ours (see `serve`): hyper's would also cut idle keep-alive
        // connections, and it does not cover HTTP/2 or a connection that never speaks.
        .header_read_timeout(None)
        // hyper answers 431 when the head outgrows its read buffer or the header count.
        .max_buf_size((limits.max_request_header_bytes.bytes() as usize).max(8192))
        .max_headers(limits.max_request_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_request_header_bytes.bytes().min(u32::MAX as u64) as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// The limits a new connection gets: the current snapshot's, with the hyper builder made from
/// them (rebuilt only when a reload changed them).
struct Current {
    limits: Arc<Limits>,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

impl Current {
    fn new(limits: Arc<Limits>) -> Current {
        let builder = Arc::new(http_builder(&limits));
        Current { limits, builder }
    }

    fn refresh(&mut self, shared: &Shared) {
        let limits = &shared.snapshot.load().limits;
        if !Arc::ptr_eq(&self.limits, limits) {
            if **limits == *self.limits {
                self.limits = limits.clone();
            } else {
                *self = Current::new(limits.clone());
            }
        }
    }
}

/// Open connections of one listener against `limits.max_connections`, which a reload may
/// change (a semaphore's size could only grow).
#[derive(Default)]
struct Slots {
    open: AtomicUsize,
    freed: Notify,
}

/// One open connection's place; frees it on drop.
struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.freed.notify_one();
    }
}

impl Slots {
    /// Waits until fewer than `limits.max_connections` are open (as the current config says:
    /// a reload that raises it lets waiting connections in), and takes a place.
    async fn take(self: &Arc<Self>, current: &mut Current, shared: &Shared) -> Slot {
        loop {
            // Registered before the checks, so a close or a reload in between is not missed.
            let freed = self.freed.notified();
            let published = shared.published.notified();
            tokio::pin!(freed, published);
            freed.as_mut().enable();
            published.as_mut().enable();
            current.refresh(shared);
            let max = current.limits.max_connections;
            let open = self.open.load(Relaxed);
            if open < max {
                if self
                    .open
                    .compare_exchange(open, open + 1, Relaxed, Relaxed)
                    .is_ok()
                {
                    return Slot(self.clone());
                }
                continue;
            }
            tokio::select! {
                () = freed => {}
                () = published => {}
            }
        }
    }
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    rt: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
) {
    let mut current = Current::new(shared.snapshot.load().limits.clone());
    let slots = Arc::new(Slots::default());
    loop {
        let slot = tokio::select! {
            s = slots.take(&mut current, &shared) => s,
            _ = shutdown.changed() => break,
        };
        let (stream, client) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %rt.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        // A reload while this accept waited applies to this connection too.
        current.refresh(&shared);
        let (rt, shared, shutdown, drain) =
            (rt.clone(), shared.clone(), shutdown.clone(), drain.clone());
        let (limits, builder) = (current.limits.clone(), current.builder.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _drain = drain;
            rt.stats.connections.open();
            let mut stream = stream;
            let (mut client, mut destination, mut pre) = (client, None, Bytes::new());
            let accept = {
                let snap = shared.snapshot.load();
                let policy = snap.policy(&rt.name);
                policy.proxy_accept.filter(|_| policy.trusts(client.ip()))
            };
            if let Some(accept) = accept {
                match Box::pin(proxied(&mut stream, accept, &limits, &rt)).await {
                    Some((source, dest, rest)) => {
                        client = source.unwrap_or(client);
                        destination = dest;
                        pre = rest;
                    }
                    None => {
                        rt.stats.connections.close();
                        return;
                    }
                }
            }
            if rt.protocol.is_l4() {
                let accepted = crate::l4::Accepted {
                    stream,
                    pre: bytes::BytesMut::from(&pre[..]),
                    client,
                    destination,
                    listener: rt.name.clone(),
                    protocol: rt.protocol,
                    stats: rt.stats.clone(),
                };
                Box::pin(crate::l4::serve(accepted, shared, shutdown)).await;
                rt.stats.connections.close();
                return;
            }
            let conn = Arc::new(ConnInfo::new(client, rt.name.clone(), rt.tls.is_some()));
            // A task is as large as its largest future, for its whole life: hyper's connection
            // futures are several times the native server's, so they are boxed.
            match &rt.tls {
                None if rt.native => {
                    crate::h1::server::serve(stream, pre, conn, shared, limits, builder, shutdown)
                        .await
                }
                None => {
                    Box::pin(serve(
                        stream, pre, conn, &builder, shared, &limits, shutdown,
                    ))
                    .await
                }
                Some(acceptor) => {
                    let stream = Watched {
                        io: stream,
                        pre,
                        conn: conn.clone(),
                    };
                    Box::pin(serve_tls(
                        stream, acceptor, conn, &builder, shared, &limits, shutdown,
                    ))
                    .await
                }
            }
            rt.stats.connections.close();
        });
    }
}

/// Reads the PROXY header a trusted peer opens with: the client and destination it names
/// (`None`: the peer's own connection) and the bytes read past it. `None` when there is no
/// valid header in time: the connection is closed and counted.
async fn proxied(
    stream: &mut tokio::net::TcpStream,
    accept: weir_config::ProxyAccept,
    limits: &Limits,
    rt: &ListenerRuntime,
) -> Option<(Option<SocketAddr>, Option<SocketAddr>, Bytes)> {
    use crate::proxy_protocol::{Bad, Header, canonical, read};
    match read(stream, accept, limits.request_head_timeout).await {
        Ok((
            Header::Proxied {
                source,
                destination,
            },
            rest,
        )) => Some((
            Some(canonical(source)),
            Some(canonical(destination)),
            rest.freeze(),
        )),
        Ok((Header::Local, rest)) => Some((None, None, rest.freeze())),
        Err(e) => {
            match e {
                // A peer's TCP health check: it connects and closes.
                Bad::Silent => {}
                Bad::Timeout => rt.stats.refused(weir_observe::Refusal::Timeout),
                _ => rt.stats.refused(weir_observe::Refusal::ProxyProtocol),
            }
            tracing::debug!(listener = %rt.name, "connection closed: {e}");
            None
        }
    }
}

/// A TLS handshake (bounded by the head timeout), then hyper's server.
async fn serve_tls(
    stream: Watched<tokio::net::TcpStream>,
    acceptor: &tokio_rustls::TlsAcceptor,
    conn: Arc<ConnInfo>,
    builder: &auto::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    limits: &Limits,
    shutdown: watch::Receiver<bool>,
) {
    let client = conn.client;
    match tokio::time::timeout(limits.request_head_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve(tls, Bytes::new(), conn, builder, shared, limits, shutdown).await,
        Ok(Err(e)) => tracing::debug!(%client, "tls handshake failed: {e}"),
        Err(_) => {
            shared.registry.timeouts().fired(TimeoutKind::RequestHead);
            tracing::debug!(%client, "tls handshake timed out")
        }
    }
}

/// hyper's server on `io`; `pre`: bytes already read from it (the native server hands a
/// connection over with what it read), served first.
pub(crate) async fn serve<I>(
    io: I,
    pre: bytes::Bytes,
    conn: Arc<ConnInfo>,
    builder: &auto::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = conn.clone();
    let timeouts = shared.registry.timeouts();
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| {
            let (shared, conn) = (shared.clone(), conn.clone());
            // Boxed: hyper moves the service's future whole (into the connection's state, and
            // over HTTP/2 into a task per stream), and the request's future is ~5.5 KiB.
            Box::pin(async move {
                let req = req.map(crate::body::Source::Hyper);
                Ok::<_, Infallible>(crate::proxy::handle(shared, conn, req).await)
            })
        })
    };
    let io = Watched {
        io,
        pre,
        conn: info.clone(),
    };
    let c = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(c);
    let idle = limits.idle_timeout;
    let head = limits.request_head_timeout;
    let send = limits.send_timeout;
    let mut closing = *shutdown.borrow();
    if closing {
        c.as_mut().graceful_shutdown();
    }
    loop {
        let mut wait = idle.saturating_sub(info.idle_for());
        if let Some(pending) = info.head_pending_for() {
            wait = wait.min(head.saturating_sub(pending));
        }
        if let Some(blocked) = info.write_blocked_for() {
            wait = wait.min(send.saturating_sub(blocked));
        }
        let wait = wait.max(Duration::from_millis(20));
        // A write that starts blocking re-plans the wait (it may end sooner than `idle`).
        let blocked = info.write_blocked.notified();
        tokio::select! {
            r = c.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %info.client, "connection ended: {e}");
                }
                break;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                c.as_mut().graceful_shutdown();
            }
            () = blocked => {}
            _ = tokio::time::sleep(wait) => {
                if info.head_pending_for().is_some_and(|p| p >= head) {
                    // Slowloris: a head that does not complete in time gets no graceful close.
                    timeouts.fired(TimeoutKind::RequestHead);
                    tracing::debug!(client = %info.client, "request head timeout");
                    return;
                }
                if info.write_blocked_for().is_some_and(|b| b >= send) {
                    // The client stopped reading: nothing graceful can be written to it.
                    timeouts.fired(TimeoutKind::Send);
                    tracing::debug!(client = %info.client, "send timeout");
                    return;
                }
                if !closing && info.idle_for() >= idle {
                    closing = true;
                    c.as_mut().graceful_shutdown();
                }
            }
        }
    }
    // A WebSocket (or other allowed upgrade) continues on this connection's slot.
    let tunnel = info.tunnel.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = tunnel {
        let drain = shared.snapshot.load().drain_timeout;
        crate::tunnel::run(t, limits.tunnel_idle_timeout, drain, timeouts, shutdown).await;
    }
}

/// The downstream IO, noting when bytes arrive (for the request head timeout), with bytes
/// read before hyper took it put back in front.
pub(crate) struct Watched<I> {
    io: I,
    pre: bytes::Bytes,
    conn: Arc<ConnInfo>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            let pre = self.pre.split_to(n);
            buf.put_slice(&pre);
            self.conn.bytes_read();
            return std::task::Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.bytes_read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.conn.wrote(r.is_pending());
        r
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.conn.wrote(r.is_pending());
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.conn.wrote(r.is_pending());
        r
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
