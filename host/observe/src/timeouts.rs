//! `weir_timeouts_total{kind}`: every deadline the proxy enforces, counted when it fires.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A deadline the proxy enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// A request head (or TLS handshake) did not arrive in `limits.request_head_timeout`.
    RequestHead,
    /// A request body stalled for `limits.request_body_timeout`.
    RequestBody,
    /// Connecting to an upstream took longer than the cluster's `timeouts.connect`.
    UpstreamConnect,
    /// The upstream's response head took longer than the route's timeout.
    UpstreamHead,
    /// An upstream response body stalled for the cluster's `timeouts.body`.
    UpstreamBody,
    /// A client stopped reading for `limits.send_timeout`.
    Send,
    /// An upgraded connection moved no bytes for `limits.tunnel_idle_timeout`.
    TunnelIdle,
    /// A `tcp` or `tls_passthrough` connection moved no bytes for its listener's
    /// `idle_timeout`.
    TcpIdle,
}

impl TimeoutKind {
    /// Every kind, in rendering order.
    pub const ALL: [TimeoutKind; 8] = [
        TimeoutKind::RequestHead,
        TimeoutKind::RequestBody,
        TimeoutKind::UpstreamConnect,
        TimeoutKind::UpstreamHead,
        TimeoutKind::UpstreamBody,
        TimeoutKind::Send,
        TimeoutKind::TunnelIdle,
        TimeoutKind::TcpIdle,
    ];

    /// The `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::RequestHead => "request_head",
            TimeoutKind::RequestBody => "request_body",
            TimeoutKind::UpstreamConnect => "upstream_connect",
            TimeoutKind::UpstreamHead => "upstream_head",
            TimeoutKind::UpstreamBody => "upstream_body",
            TimeoutKind::Send => "send",
            TimeoutKind::TunnelIdle => "tunnel_idle",
            TimeoutKind::TcpIdle => "tcp_idle",
        }
    }
}

/// One counter per [`TimeoutKind`].
#[derive(Debug, Default)]
pub struct TimeoutStats {
    counts: [AtomicU64; TimeoutKind::ALL.len()],
}

impl TimeoutStats {
    /// A deadline of this kind fired.
    pub fn fired(&self, kind: TimeoutKind) {
        self.counts[kind as usize].fetch_add(1, Relaxed);
    }

    /// How often a deadline of this kind has fired.
    pub fn count(&self, kind: TimeoutKind) -> u64 {
        self.counts[kind as usize].load(Relaxed)
    }

    pub(crate) fn render(&self, out: &mut String) {
        out.push_str("# HELP weir_timeouts_total Deadlines that fired, by kind.\n");
        out.push_str("# TYPE weir_timeouts_total counter\n");
        for k in TimeoutKind::ALL {
            let _ = writeln!(
                out,
                "weir_timeouts_total{{kind=\"{}\"}} {}",
                k.as_str(),
                self.count(k)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_counter_and_renders() {
        let t = TimeoutStats::default();
        for (i, k) in TimeoutKind::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                t.fired(k);
            }
        }
        let mut out = String::new();
        t.render(&mut out);
        for (i, k) in TimeoutKind::ALL.into_iter().enumerate() {
            assert_eq!(t.count(k), i as u64 + 1);
            let line = format!("weir_timeouts_total{{kind=\"{}\"}} {}\n", k.as_str(), i + 1);
            assert!(out.contains(&line), "{line} missing from\n{out}");
        }
    }
}
