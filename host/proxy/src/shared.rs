//! The state every connection, request and admin call of one server shares.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use weir_config::{ConfigError, LoadedConfig};
use weir_observe::Registry;

use crate::Snapshot;

/// State shared by every connection of a server.
pub(crate) struct Shared {
    /// The config every new request sees; filter callouts hold this handle too.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub registry: Registry,
    pub draining: AtomicBool,
    /// Created with the first config that uses filters; kept for the life of the process.
    pub runtime: std::sync::Mutex<Option<weir_filters::Runtime>>,
    pub(crate) callouts: Arc<crate::callouts::ProxyCallouts>,
    /// What the operator asked for: the config (file plus admin API edits) and uploaded filter
    /// versions. The lock serializes every change; requests never take it.
    pub control: tokio::sync::Mutex<crate::control::Desired>,
    /// Notified when a new snapshot is published (accept loops re-read their limits).
    pub published: tokio::sync::Notify,
    /// The admin token writes need while the config sets no `admin.token`.
    pub admin_token: std::sync::OnceLock<crate::admin_token::Generated>,
}

impl Shared {
    /// Makes `snap` the config every new request sees.
    pub fn publish(&self, snap: Snapshot) {
        self.use_state(&snap);
        self.snapshot.store(Arc::new(snap));
        self.published.notify_waiters();
    }

    /// Makes the snapshot's state backend the one filters use.
    pub(crate) fn use_state(&self, snap: &Snapshot) {
        let rt = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = rt.as_ref() {
            rt.state().use_backend(snap.state.clone());
        }
    }

    /// The filter runtime for a config, creating it on first need.
    pub(crate) fn runtime_for(
        &self,
        loaded: &LoadedConfig,
    ) -> Result<Option<weir_filters::Runtime>, ConfigError> {
        let mut rt = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        if rt.is_none() {
            *rt = crate::snapshot::filter_runtime(
                loaded,
                Some(self.callouts.clone()),
                self.registry.clone(),
            )
            .map_err(|e| loaded.error_at("filters", format!("{e:#}")))?;
        }
        Ok(rt.clone())
    }
}
