//! The shared-state backend's health and traffic: `weir_state_*`.
//!
//! One [`StateStats`] per process. The embedded store is in memory and cannot fail, so only the
//! backend info line is rendered for it; a Redis backend adds operations by outcome, their
//! latency, fallbacks to the local store, connection attempts and whether it is up.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::Histogram;
use crate::metrics::FILTER_BUCKETS_US;

/// A shared-state operation (one WIT `kv` call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateOp {
    /// `kv.get`
    Get,
    /// `kv.set`
    Set,
    /// `kv.compare-and-swap`
    CompareAndSwap,
    /// `kv.delete`
    Delete,
    /// `kv.increment`
    Increment,
    /// `kv.take-tokens`
    TakeTokens,
}

impl StateOp {
    /// Every operation, in rendering order.
    pub const ALL: [StateOp; 6] = [
        StateOp::Get,
        StateOp::Set,
        StateOp::CompareAndSwap,
        StateOp::Delete,
        StateOp::Increment,
        StateOp::TakeTokens,
    ];

    /// The `op` label.
    pub fn as_str(self) -> &'static str {
        match self {
            StateOp::Get => "get",
            StateOp::Set => "set",
            StateOp::CompareAndSwap => "compare_and_swap",
            StateOp::Delete => "delete",
            StateOp::Increment => "increment",
            StateOp::TakeTokens => "take_tokens",
        }
    }
}

/// How a backend operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateOutcome {
    /// Answered.
    Ok,
    /// The backend answered with an error (a script or type error): not an outage.
    Error,
    /// The backend could not be reached in time (down, slow, restarting).
    Unavailable,
}

impl StateOutcome {
    const ALL: [StateOutcome; 3] = [
        StateOutcome::Ok,
        StateOutcome::Error,
        StateOutcome::Unavailable,
    ];

    fn as_str(self) -> &'static str {
        match self {
            StateOutcome::Ok => "ok",
            StateOutcome::Error => "error",
            StateOutcome::Unavailable => "unavailable",
        }
    }
}

/// The process's shared-state metrics.
#[derive(Debug)]
pub struct StateStats {
    /// `embedded` or `redis`: the configured backend.
    backend: Mutex<&'static str>,
    ops: [[AtomicU64; 3]; StateOp::ALL.len()],
    fallbacks: [AtomicU64; StateOp::ALL.len()],
    latency: Histogram,
    /// Connections to the backend that are open now.
    connections: AtomicI64,
    connects_ok: AtomicU64,
    connects_failed: AtomicU64,
    /// Token-bucket takes served from this process's lease, without a round trip.
    leased: AtomicU64,
    /// Token leases held now.
    leases: AtomicI64,
}

impl Default for StateStats {
    fn default() -> Self {
        StateStats {
            backend: Mutex::new("embedded"),
            ops: Default::default(),
            fallbacks: Default::default(),
            latency: Histogram::new(FILTER_BUCKETS_US),
            connections: AtomicI64::new(0),
            connects_ok: AtomicU64::new(0),
            connects_failed: AtomicU64::new(0),
            leased: AtomicU64::new(0),
            leases: AtomicI64::new(0),
        }
    }
}

impl StateStats {
    /// The configured backend (`embedded`, `redis`).
    pub fn set_backend(&self, name: &'static str) {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = name;
    }

    /// The configured backend.
    pub fn backend(&self) -> &'static str {
        *self.backend.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A backend operation ended after `took`.
    pub fn op(&self, op: StateOp, outcome: StateOutcome, took: Duration) {
        self.ops[op as usize][outcome as usize].fetch_add(1, Relaxed);
        self.latency.observe(took);
    }

    /// Backend operations of this kind that ended this way.
    pub fn ops(&self, op: StateOp, outcome: StateOutcome) -> u64 {
        self.ops[op as usize][outcome as usize].load(Relaxed)
    }

    /// An operation used the local store because the backend was unavailable.
    pub fn fallback(&self, op: StateOp) {
        self.fallbacks[op as usize].fetch_add(1, Relaxed);
    }

    /// Operations served by the local store because the backend was unavailable.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// A token-bucket take was served from a lease.
    pub fn leased_take(&self) {
        self.leased.fetch_add(1, Relaxed);
    }

    /// Takes served from leases.
    pub fn leased_takes(&self) -> u64 {
        self.leased.load(Relaxed)
    }

    /// Token leases held now changed by `delta`.
    pub fn leases_held(&self, delta: i64) {
        self.leases.fetch_add(delta, Relaxed);
    }

    /// A connection attempt ended.
    pub fn connect(&self, ok: bool) {
        if ok {
            self.connects_ok.fetch_add(1, Relaxed);
            self.connections.fetch_add(1, Relaxed);
        } else {
            self.connects_failed.fetch_add(1, Relaxed);
        }
    }

    /// An open connection was dropped (it failed, or the backend was replaced).
    pub fn disconnect(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    /// Connections open now.
    pub fn connections(&self) -> i64 {
        self.connections.load(Relaxed)
    }

    pub(crate) fn render(&self, out: &mut String) {
        let backend = self.backend();
        out.push_str("# HELP weir_state_backend The shared-state backend filters use.\n# TYPE weir_state_backend gauge\n");
        let _ = writeln!(out, "weir_state_backend{{backend=\"{backend}\"}} 1");
        if backend == "embedded" {
            return;
        }
        out.push_str("# HELP weir_state_up Whether the shared-state backend has an open connection.\n# TYPE weir_state_up gauge\n");
        let _ = writeln!(out, "weir_state_up {}", u8::from(self.connections() > 0));
        out.push_str("# HELP weir_state_connections Open connections to the shared-state backend.\n# TYPE weir_state_connections gauge\n");
        let _ = writeln!(out, "weir_state_connections {}", self.connections());
        out.push_str("# HELP weir_state_connects_total Connection attempts to the shared-state backend, by outcome.\n# TYPE weir_state_connects_total counter\n");
        let _ = writeln!(
            out,
            "weir_state_connects_total{{outcome=\"ok\"}} {}\nweir_state_connects_total{{outcome=\"failed\"}} {}",
            self.connects_ok.load(Relaxed),
            self.connects_failed.load(Relaxed)
        );
        out.push_str("# HELP weir_state_ops_total Shared-state backend operations, by op and outcome.\n# TYPE weir_state_ops_total counter\n");
        for op in StateOp::ALL {
            for outcome in StateOutcome::ALL {
                let _ = writeln!(
                    out,
                    "weir_state_ops_total{{op=\"{}\",outcome=\"{}\"}} {}",
                    op.as_str(),
                    outcome.as_str(),
                    self.ops(op, outcome)
                );
            }
        }
        out.push_str("# HELP weir_state_fallbacks_total Operations served by the local store while the backend was unavailable, by op.\n# TYPE weir_state_fallbacks_total counter\n");
        for op in StateOp::ALL {
            let _ = writeln!(
                out,
                "weir_state_fallbacks_total{{op=\"{}\"}} {}",
                op.as_str(),
                self.fallbacks[op as usize].load(Relaxed)
            );
        }
        out.push_str("# HELP weir_state_leased_takes_total Token-bucket takes served from this process's token lease, without a round trip.\n# TYPE weir_state_leased_takes_total counter\n");
        let _ = writeln!(out, "weir_state_leased_takes_total {}", self.leased_takes());
        out.push_str("# HELP weir_state_leases Token leases this process holds now (bounded).\n# TYPE weir_state_leases gauge\n");
        let _ = writeln!(out, "weir_state_leases {}", self.leases.load(Relaxed));
        out.push_str("# HELP weir_state_op_duration_seconds Shared-state backend operation time.\n# TYPE weir_state_op_duration_seconds histogram\n");
        self.latency.render(
            out,
            "weir_state_op_duration_seconds",
            &format!("backend=\"{backend}\""),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_renders_only_the_backend() {
        let s = StateStats::default();
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("weir_state_backend{backend=\"embedded\"} 1\n"));
        assert!(!out.contains("weir_state_up"), "{out}");
    }

    #[test]
    fn redis_renders_health_ops_and_fallbacks() {
        let s = StateStats::default();
        s.set_backend("redis");
        s.connect(true);
        s.connect(false);
        s.op(
            StateOp::TakeTokens,
            StateOutcome::Ok,
            Duration::from_micros(80),
        );
        s.op(
            StateOp::Get,
            StateOutcome::Unavailable,
            Duration::from_millis(50),
        );
        s.fallback(StateOp::Get);
        s.leased_take();
        s.leases_held(1);
        let mut out = String::new();
        s.render(&mut out);
        for line in [
            "weir_state_backend{backend=\"redis\"} 1\n",
            "weir_state_up 1\n",
            "weir_state_connects_total{outcome=\"failed\"} 1\n",
            "weir_state_ops_total{op=\"take_tokens\",outcome=\"ok\"} 1\n",
            "weir_state_ops_total{op=\"get\",outcome=\"unavailable\"} 1\n",
            "weir_state_fallbacks_total{op=\"get\"} 1\n",
            "weir_state_op_duration_seconds_count{backend=\"redis\"} 2\n",
            "weir_state_leased_takes_total 1\n",
            "weir_state_leases 1\n",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
        s.disconnect();
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("weir_state_up 0\n"), "{out}");
    }
}
