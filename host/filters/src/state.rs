//! Filters' shared state on the configured backend: the embedded store ([`Kv`], the default),
//! or Redis ([`Redis`]), shared by every gateway instance that points at the same server.
//!
//! The embedded store is always there: it is the backend when none is configured, and the
//! fallback while Redis cannot be reached under `on_unavailable: local`. Key and value sizes are
//! checked against [`crate::KvLimits`] on both backends before anything is sent; the per-namespace
//! key and byte bounds are the embedded store's (Redis is bounded by its own `maxmemory`, and
//! every key Weir writes there either has a TTL or was given none by the filter).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use weir_config::OnUnavailable;
use weir_observe::{StateOp, StateStats};

use crate::kv::{Kv, KvError, KvLimits, Take};

mod redis;

use self::redis::RemoteError;
pub use self::redis::{Redis, RedisTls};

/// Why a state call failed, as the host turns it into a WIT `host-error`.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A bound of the store (key or value size, a full namespace).
    #[error(transparent)]
    Refused(KvError),
    /// The backend failed or could not be reached (under `on_unavailable: fail`).
    #[error("{0}")]
    Failed(String),
}

impl From<KvError> for StateError {
    fn from(e: KvError) -> Self {
        StateError::Refused(e)
    }
}

/// The shared state of one process.
pub struct State {
    local: Kv,
    remote: ArcSwapOption<Redis>,
    stats: Arc<StateStats>,
}

impl State {
    /// A store with these bounds, counted in `stats`; the embedded backend until
    /// [`use_backend`](Self::use_backend) says otherwise.
    pub fn new(limits: KvLimits, stats: Arc<StateStats>) -> State {
        State {
            local: Kv::new(limits),
            remote: ArcSwapOption::empty(),
            stats,
        }
    }

    /// The embedded store (the backend, or the fallback).
    pub fn local(&self) -> &Kv {
        &self.local
    }

    /// The Redis backend in use, if any.
    pub fn remote(&self) -> Option<Arc<Redis>> {
        self.remote.load_full()
    }

    /// Uses `backend` from now on (`None`: the embedded store). A backend that is already in use
    /// is kept as it is (its connections too); one that is replaced is shut down.
    pub fn use_backend(&self, backend: Option<Arc<Redis>>) {
        let current = self.remote.load_full();
        let same = match (&current, &backend) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        self.stats.set_backend(if backend.is_some() {
            "redis"
        } else {
            "embedded"
        });
        if let Some(b) = &backend {
            b.start();
        }
        self.remote.store(backend);
        if let Some(old) = current {
            old.stop();
        }
    }

    /// Whether calls may wait on the network (the caller then pauses the filter's CPU budget).
    pub fn is_remote(&self) -> bool {
        self.remote.load().is_some()
    }

    /// A backend failure: served by the local store (`on_unavailable: local`) or failed.
    fn fall_back<T>(
        &self,
        op: StateOp,
        redis: &Redis,
        e: RemoteError,
        local: impl FnOnce(&Kv) -> Result<T, KvError>,
    ) -> Result<T, StateError> {
        match e {
            RemoteError::Unavailable(_) if redis.on_unavailable() == OnUnavailable::Local => {
                self.stats.fallback(op);
                local(&self.local).map_err(StateError::Refused)
            }
            RemoteError::Unavailable(m) | RemoteError::Failed(m) => Err(StateError::Failed(m)),
        }
    }

    /// Reads a live entry: (value, version).
    pub async fn get(
        &self,
        ns: &str,
        key: &str,
        wait: Duration,
    ) -> Result<Option<(Vec<u8>, u64)>, StateError> {
        let Some(r) = self.remote() else {
            return Ok(self.local.get(ns, key));
        };
        if self.local.check_key(key).is_err() {
            return Ok(None); // never written: every write refuses such a key
        }
        match r.get(ns, key, wait).await {
            Ok(v) => Ok(v),
            Err(e) => self.fall_back(StateOp::Get, &r, e, |kv| Ok(kv.get(ns, key))),
        }
    }

    /// Writes unconditionally; returns the new version.
    pub async fn set(
        &self,
        ns: &str,
        key: &str,
        value: Vec<u8>,
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<u64, StateError> {
        let Some(r) = self.remote() else {
            return Ok(self.local.set(ns, key, value, ttl_ms)?);
        };
        self.local.check_key(key)?;
        self.local.check_value(&value)?;
        match r.set(ns, key, &value, ttl_ms, wait).await {
            Ok(v) => Ok(v),
            Err(e) => self.fall_back(StateOp::Set, &r, e, |kv| kv.set(ns, key, value, ttl_ms)),
        }
    }

    /// Writes if the current version is `expected` (0: absent); `None` when it is not.
    pub async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<Option<u64>, StateError> {
        let Some(r) = self.remote() else {
            return Ok(self
                .local
                .compare_and_swap(ns, key, expected, value, ttl_ms)?);
        };
        self.local.check_key(key)?;
        self.local.check_value(&value)?;
        match r
            .compare_and_swap(ns, key, expected, &value, ttl_ms, wait)
            .await
        {
            Ok(v) => Ok(v),
            Err(e) => self.fall_back(StateOp::CompareAndSwap, &r, e, |kv| {
                kv.compare_and_swap(ns, key, expected, value, ttl_ms)
            }),
        }
    }

    /// Deletes a key.
    pub async fn delete(&self, ns: &str, key: &str, wait: Duration) -> Result<(), StateError> {
        let Some(r) = self.remote() else {
            self.local.delete(ns, key);
            return Ok(());
        };
        if self.local.check_key(key).is_err() {
            return Ok(());
        }
        match r.delete(ns, key, wait).await {
            Ok(()) => Ok(()),
            Err(e) => self.fall_back(StateOp::Delete, &r, e, |kv| {
                kv.delete(ns, key);
                Ok(())
            }),
        }
    }

    /// Adds to a counter (a fixed window when `ttl_ms` > 0); returns the new value.
    pub async fn increment(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<i64, StateError> {
        let Some(r) = self.remote() else {
            return Ok(self.local.increment(ns, key, delta, ttl_ms)?);
        };
        self.local.check_key(key)?;
        match r.increment(ns, key, delta, ttl_ms, wait).await {
            Ok(v) => Ok(v),
            Err(e) => self.fall_back(StateOp::Increment, &r, e, |kv| {
                kv.increment(ns, key, delta, ttl_ms)
            }),
        }
    }

    /// Takes `cost` tokens from a bucket (capacity `burst`, `rate` per `period_ms`).
    #[allow(clippy::too_many_arguments)]
    pub async fn take_tokens(
        &self,
        ns: &str,
        key: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: u64,
        wait: Duration,
    ) -> Result<Take, StateError> {
        let Some(r) = self.remote() else {
            return Ok(self
                .local
                .take_tokens(ns, key, rate, period_ms, burst, cost)?);
        };
        self.local.check_key(key)?;
        match r
            .take_tokens(ns, key, rate, period_ms, burst, cost, wait)
            .await
        {
            Ok(t) => Ok(t),
            Err(e) => self.fall_back(StateOp::TakeTokens, &r, e, |kv| {
                kv.take_tokens(ns, key, rate, period_ms, burst, cost)
            }),
        }
    }
}
