//! The export glue shared by the component and the native harness: config parsing, the filter
//! instance, per-request contexts and phase dispatch.

use std::collections::BTreeMap;

use crate::http::{Body, BodyKind, LogView, Request, Response};
use crate::{Action, ConfigError, Filter, Phases};

/// A configured filter and the contexts of its live requests.
pub(crate) struct Runtime<F: Filter> {
    filter: F,
    phases: Phases,
    contexts: BTreeMap<u32, F::Context>,
}

impl<F: Filter> Runtime<F> {
    /// WIT `configure`: parses the config JSON, builds the filter, asks for its phases.
    ///
    /// An empty (or all-blank) config reads as `{}`, so filters whose config fields all have
    /// defaults work without one.
    pub(crate) fn configure(config: &str) -> Result<Self, ConfigError> {
        let json = if config.trim().is_empty() {
            "{}"
        } else {
            config
        };
        let config: F::Config =
            serde_json::from_str(json).map_err(|e| ConfigError::new(format!("config: {e}")))?;
        let filter = F::new(config).map_err(ConfigError::new)?;
        let mut phases = filter.phases();
        // A context type that holds nothing needs no per-request storage and no `context-done`.
        if size_of::<F::Context>() == 0 && !std::mem::needs_drop::<F::Context>() {
            phases |= Phases::STATELESS;
        }
        Ok(Self {
            filter,
            phases,
            contexts: BTreeMap::new(),
        })
    }

    pub(crate) fn phases(&self) -> Phases {
        self.phases
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn filter(&self) -> &F {
        &self.filter
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn live_contexts(&self) -> usize {
        self.contexts.len()
    }

    /// Runs `f` with the filter and the context of `id`: the stored one (created on first use),
    /// or a fresh one for a stateless filter, which keeps none.
    fn with<R>(&mut self, id: u32, f: impl FnOnce(&F, &mut F::Context) -> R) -> R {
        if self.phases.contains(Phases::STATELESS) {
            return f(&self.filter, &mut F::Context::default());
        }
        f(&self.filter, self.contexts.entry(id).or_default())
    }

    pub(crate) fn on_request_headers(&mut self, id: u32) -> Action {
        self.with(id, |filter, ctx| {
            filter.on_request_headers(&mut Request::current(), ctx)
        })
    }

    pub(crate) fn on_request_body(&mut self, id: u32, end: bool) -> Action {
        self.with(id, |filter, ctx| {
            filter.on_request_body(&mut Body::current(BodyKind::Request), end, ctx)
        })
    }

    pub(crate) fn on_response_headers(&mut self, id: u32) -> Action {
        self.with(id, |filter, ctx| {
            filter.on_response_headers(&mut Response::current(), ctx)
        })
    }

    pub(crate) fn on_response_body(&mut self, id: u32, end: bool) -> Action {
        self.with(id, |filter, ctx| {
            filter.on_response_body(&mut Body::current(BodyKind::Response), end, ctx)
        })
    }

    pub(crate) fn on_log(&mut self, id: u32) {
        self.with(id, |filter, ctx| filter.on_log(&LogView::current(), ctx));
    }

    /// WIT `context-done`: drops the request's context (if a phase ever created it).
    pub(crate) fn context_done(&mut self, id: u32) {
        self.contexts.remove(&id);
    }
}
