//! Active health checks: every endpoint of a cluster with `health.active` is probed on its own
//! jittered timer — a GET of the configured path (2xx/3xx passes) or a bare connect — over a
//! connection of its own (probes never use, nor count against, the traffic pool). Thresholds
//! of passes and failures in a row move the endpoint in and out of rotation.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use weir_config::ActiveHealth;

use crate::connector::TlsClient;
use crate::snapshot::Cluster;

/// One endpoint's run of probe results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdicts {
    pub healthy: bool,
    passes: u32,
    fails: u32,
}

impl Verdicts {
    /// Endpoints start in rotation; probes only take them out.
    pub fn new() -> Verdicts {
        Verdicts {
            healthy: true,
            passes: 0,
            fails: 0,
        }
    }

    /// Records one probe; returns the new state when it changed: out after `unhealthy` fails in
    /// a row, back after `healthy` passes in a row.
    pub fn observe(&mut self, passed: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        if passed {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            if !self.healthy && self.passes >= healthy {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            if self.healthy && self.fails >= unhealthy {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

/// Starts probing every endpoint of `cluster`; each probe loop ends when the cluster is gone
/// (no snapshot holds it any more).
pub(crate) fn spawn(cluster: &Arc<Cluster>) {
    let Some(cfg) = cluster.health.active.clone() else {
        return;
    };
    let cfg = Arc::new(cfg);
    for i in 0..cluster.endpoints.len() {
        tokio::spawn(probe_loop(Arc::downgrade(cluster), i, cfg.clone()));
    }
}

async fn probe_loop(cluster: Weak<Cluster>, i: usize, cfg: Arc<ActiveHealth>) {
    let mut verdicts = Verdicts::new();
    // The first probe soon after start, spread over the first interval.
    let mut wait = jittered(cfg.interval).mul_f64(fastrand::f64());
    loop {
        tokio::time::sleep(wait).await;
        wait = jittered(cfg.interval);
        let (addr, host, tls, h2) = {
            let Some(c) = cluster.upgrade() else { return };
            let ep = &c.endpoints[i];
            let host = cfg.host.clone().unwrap_or_else(|| ep.address.clone());
            (ep.address.clone(), host, c.tls.clone(), c.h2)
        };
        let passed = tokio::time::timeout(cfg.timeout, probe(&addr, &host, &cfg, tls, h2))
            .await
            .unwrap_or(false);
        let Some(c) = cluster.upgrade() else { return };
        if let Some(up) = verdicts.observe(passed, cfg.healthy, cfg.unhealthy) {
            if up {
                tracing::info!(cluster = %c.name, endpoint = %addr, "probes pass again: back in rotation");
            } else {
                tracing::warn!(cluster = %c.name, endpoint = %addr, "failed {} probes in a row: out of rotation", cfg.unhealthy);
            }
            c.endpoints[i].probe_ok.store(up, Relaxed);
            c.refresh(i);
        }
    }
}

/// `interval` ± 10%.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// One probe: connect (and TLS), then unless `tcp`, GET the path and look at the status.
async fn probe(
    addr: &str,
    host: &str,
    cfg: &ActiveHealth,
    tls: Option<TlsClient>,
    h2: bool,
) -> bool {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    let _ = tcp.set_nodelay(true);
    match tls {
        None if cfg.tcp => true,
        None => passes(cfg, get(tcp, addr, host, &cfg.path, h2).await),
        Some(t) => {
            let bare = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let name = match t.sni.clone() {
                Some(n) => n,
                None => match rustls_pki_types::ServerName::try_from(
                    bare.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                ) {
                    Ok(n) => n,
                    Err(_) => return false,
                },
            };
            let Ok(s) = tokio_rustls::TlsConnector::from(t.config)
                .connect(name, tcp)
                .await
            else {
                return false;
            };
            if cfg.tcp {
                return true;
            }
            let h2 = h2 || s.get_ref().1.alpn_protocol() == Some(b"h2");
            passes(cfg, get(s, addr, host, &cfg.path, h2).await)
        }
    }
}

/// Whether a probe's answer passes: one of `statuses`, else any 2xx or 3xx.
fn passes(cfg: &ActiveHealth, status: Option<http::StatusCode>) -> bool {
    status.is_some_and(|s| match cfg.statuses.as_slice() {
        [] => s.is_success() || s.is_redirection(),
        list => list.contains(&s.as_u16()),
    })
}

/// The status of a GET of `path` (`None`: no answer).
async fn get<I>(io: I, addr: &str, host: &str, path: &str, h2: bool) -> Option<http::StatusCode>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "weir-health-check")
        .body(Empty::<Bytes>::new());
    let Ok(mut req) = req else { return None };
    let status = if h2 {
        let scheme_uri = format!("http://{addr}{path}");
        if let Ok(u) = scheme_uri.parse() {
            *req.uri_mut() = u;
        }
        let Ok((mut send, conn)) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await
        else {
            return None;
        };
        tokio::spawn(conn);
        send.send_request(req).await.map(|r| r.status())
    } else {
        req.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(io).await else {
            return None;
        };
        tokio::spawn(conn);
        send.send_request(req).await.map(|r| r.status())
    };
    status.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_move_an_endpoint_out_and_back() {
        let mut v = Verdicts::new();
        // Two fails of three: still in; a pass resets the run.
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(true, 2, 3), None);
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(false, 2, 3), Some(false), "third fail in a row");
        assert_eq!(v.observe(false, 2, 3), None, "already out");
        assert!(!v.healthy);
        // One pass of two, then a fail: still out; two in a row: back.
        assert_eq!(v.observe(true, 2, 3), None);
        assert_eq!(v.observe(false, 2, 3), None);
        assert_eq!(v.observe(true, 2, 3), None);
        assert_eq!(v.observe(true, 2, 3), Some(true));
        assert!(v.healthy);
        // Thresholds of one flip at once.
        assert_eq!(v.observe(false, 1, 1), Some(false));
        assert_eq!(v.observe(true, 1, 1), Some(true));
    }

    #[test]
    fn statuses_pass_as_configured() {
        let mut cfg = ActiveHealth::default();
        let s = |n| Some(http::StatusCode::from_u16(n).unwrap());
        assert!(passes(&cfg, s(200)) && passes(&cfg, s(302)));
        assert!(!passes(&cfg, s(404)) && !passes(&cfg, s(503)) && !passes(&cfg, None));
        cfg.statuses = vec![200, 418];
        assert!(passes(&cfg, s(418)) && passes(&cfg, s(200)));
        assert!(!passes(&cfg, s(204)));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
    }
}
