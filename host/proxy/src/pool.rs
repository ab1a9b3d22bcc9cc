//! The HTTP/1.1 connection pool of one upstream endpoint.
//!
//! Why not hyper-util's pooled client: per request it boxes a large future, hashes the pool key
//! (SipHash) under a shared lock, and spawns a task that waits for the connection to become
//! idle before it returns to the pool. Here a pool belongs to one endpoint, so there is no key;
//! a connection goes back when the response body it carried is dropped (the body holds its
//! [`Lease`]), at once if its connection task has finished the exchange, else from a small task
//! that waits for that; only connections that say they are ready are taken out again.
//!
//! A pooled connection the upstream closed while it sat idle fails before the request is
//! written; the request then comes back and is sent on another connection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tower_service::Service;

use crate::body::ProxyBody;
use crate::connector::{ConnectError, Connector};

/// Why a request got no response. The cause is the error's `source`, where `classify` in
/// `proxy.rs` looks for connect failures and oversized bodies.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made.
    #[error("{0}")]
    Connect(#[from] ConnectError),
    /// The exchange failed (connection reset, malformed response, request body error...).
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

struct Idle {
    tx: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// Idle keep-alive connections to one endpoint.
pub struct H1Pool {
    connector: Connector,
    /// Where to connect (scheme and authority of the endpoint).
    target: Uri,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// A connection on loan to one exchange; dropping it returns the connection to its pool.
pub struct Lease {
    tx: Option<http1::SendRequest<ProxyBody>>,
    pool: Arc<H1Pool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.pool.release(tx);
        }
    }
}

impl H1Pool {
    pub(crate) fn new(
        connector: Connector,
        target: Uri,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<H1Pool> {
        let pool = Arc::new(H1Pool {
            connector,
            target,
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        });
        // Closes connections idle for longer than `idle_timeout` even when no request comes to
        // take them out; ends with the pool.
        let weak = Arc::downgrade(&pool);
        let every = (idle_timeout / 2).max(Duration::from_millis(50));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(pool) => pool.sweep(),
                    None => return,
                }
            }
        });
        pool
    }

    /// Drops closed and expired idle connections.
    fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|e| !e.tx.is_closed() && e.since.elapsed() < self.idle_timeout);
    }

    /// Sends `req` (origin-form URI, Host set) on an idle connection, or a new one. The lease
    /// must live as long as the response body: the connection is reused once both are done.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let (mut tx, pooled) = match self.checkout() {
                Some(tx) => (tx, true),
                None => (self.connect().await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(res) => {
                    let lease = Lease {
                        tx: Some(tx),
                        pool: self.clone(),
                    };
                    return Ok((res, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: an idle connection the upstream had closed. Try again
                    // (a new connection cannot fail this way, so this ends).
                    Some(back) if pooled => req = back,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The most recently used ready connection; closed and expired ones are dropped.
    fn checkout(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(e) = idle.pop() {
            if e.tx.is_closed() || e.since.elapsed() >= self.idle_timeout {
                continue;
            }
            if e.tx.is_ready() {
                found = Some(e.tx);
                break;
            }
            // Not ready after all (the upstream is closing it, say): keep it for the sweeper.
            busy.push(e);
        }
        idle.extend(busy.into_iter().rev());
        found
    }

    fn release(self: &Arc<Self>, mut tx: http1::SendRequest<ProxyBody>) {
        if tx.is_closed() || self.max_idle == 0 {
            return;
        }
        if !tx.is_ready() {
            // The connection task has not finished the exchange yet (it runs after the body's
            // last frame, or the request body is still going up): pool it once it is ready.
            let pool = self.clone();
            tokio::spawn(async move {
                if tx.ready().await.is_ok() {
                    pool.push(tx);
                }
            });
            return;
        }
        self.push(tx);
    }

    fn push(&self, tx: http1::SendRequest<ProxyBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            // Full: the oldest goes (dropping it closes the connection).
            idle.remove(0);
        }
        idle.push(Idle {
            tx,
            since: Instant::now(),
        });
    }

    async fn connect(&self) -> Result<http1::SendRequest<ProxyBody>, SendError> {
        let io = self.connector.clone().call(self.target.clone()).await?;
        let (tx, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(tx)
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn idle_len(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream that answers every request on a connection with `ok`, counting accepts;
    /// with `close_after_one`, it closes each connection after its first response.
    async fn upstream(close_after_one: bool) -> (Uri, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                count.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                            if close_after_one {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}").parse().unwrap(), accepted)
    }

    fn pool(target: &Uri, max_idle: usize) -> Arc<H1Pool> {
        pool_with_timeout(target, max_idle, Duration::from_secs(60))
    }

    fn pool_with_timeout(target: &Uri, max_idle: usize, idle_timeout: Duration) -> Arc<H1Pool> {
        let connector = Connector {
            timeout: Duration::from_secs(2),
            tls: None,
            stats: Arc::new(HashMap::new()),
            fixed: None,
        };
        H1Pool::new(connector, target.clone(), max_idle, idle_timeout)
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout_without_traffic() {
        let (target, accepted) = upstream(false).await;
        let p = pool_with_timeout(&target, 8, Duration::from_millis(100));
        exchange(&p, &target).await.unwrap();
        assert_eq!(p.idle_len(), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(p.idle_len(), 0, "swept without a checkout");
        exchange(&p, &target).await.unwrap();
        assert_eq!(accepted.load(SeqCst), 2, "a fresh connection after expiry");
    }

    fn get(target: &Uri) -> Request<ProxyBody> {
        Request::builder()
            .uri("/")
            .header("host", target.authority().unwrap().as_str())
            .body(ProxyBody::empty())
            .unwrap()
    }

    /// Sends one request and reads its whole body, then drops the lease.
    async fn exchange(p: &Arc<H1Pool>, target: &Uri) -> Result<String, SendError> {
        let (res, lease) = p.send(get(target)).await?;
        let body = res.into_body().collect().await?.to_bytes();
        drop(lease);
        settle().await;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn one_connection_serves_requests_in_turn() {
        let (target, accepted) = upstream(false).await;
        let p = pool(&target, 8);
        for _ in 0..5 {
            assert_eq!(exchange(&p, &target).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(SeqCst), 1, "the connection is reused");
        assert_eq!(p.idle_len(), 1);
    }

    #[tokio::test]
    async fn a_connection_still_in_use_is_not_lent_twice() {
        let (target, accepted) = upstream(false).await;
        let p = pool(&target, 8);
        let (a, lease_a) = p.send(get(&target)).await.unwrap();
        // `a`'s body is not read yet: a second exchange needs a second connection.
        let (b, lease_b) = p.send(get(&target)).await.unwrap();
        assert_eq!(accepted.load(SeqCst), 2);
        for (res, lease) in [(a, lease_a), (b, lease_b)] {
            res.into_body().collect().await.unwrap();
            drop(lease);
        }
        settle().await;
        assert_eq!(p.idle_len(), 2);
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_replaced_without_an_error() {
        let (target, accepted) = upstream(true).await;
        let p = pool(&target, 8);
        for _ in 0..3 {
            assert_eq!(exchange(&p, &target).await.unwrap(), "ok");
            // Let the connection task see the upstream's close.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn max_idle_bounds_the_pool_and_zero_disables_it() {
        let (target, accepted) = upstream(false).await;
        let p = pool(&target, 1);
        let held: Vec<_> = futures_join(&p, &target, 3).await;
        assert_eq!(accepted.load(SeqCst), 3);
        drop(held);
        settle().await;
        assert_eq!(p.idle_len(), 1);

        let none = pool(&target, 0);
        exchange(&none, &target).await.unwrap();
        assert_eq!(none.idle_len(), 0);
    }

    /// Lets a connection that was not ready at release reach the pool.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    /// `n` exchanges in flight at once (bodies read, leases held).
    async fn futures_join(p: &Arc<H1Pool>, target: &Uri, n: usize) -> Vec<Lease> {
        let mut leases = Vec::new();
        for _ in 0..n {
            let (res, lease) = p.send(get(target)).await.unwrap();
            res.into_body().collect().await.unwrap();
            leases.push(lease);
        }
        leases
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target: Uri = format!("http://{}", l.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(l);
        let p = pool(&target, 8);
        assert!(matches!(
            p.send(get(&target)).await,
            Err(SendError::Connect(_))
        ));
    }
}
