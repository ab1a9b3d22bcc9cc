//! The control plane: every change (file reload, admin API edit, filter upload) builds a complete
//! new snapshot off the hot path and swaps it in atomically; a change that does not build is
//! refused and the running snapshot stays.

use std::collections::HashMap;
use std::sync::Arc;

use weir_config::{Config, ConfigError, LoadedConfig};

use crate::Shared;
use crate::snapshot::{Snapshot, Uploads};

/// Uploaded versions kept per filter for rollback.
const HISTORY: usize = 16;

/// The operator's intent.
pub(crate) struct Desired {
    pub loaded: LoadedConfig,
    /// Uploaded module versions per filter, newest last.
    pub uploads: HashMap<String, Vec<Arc<Vec<u8>>>>,
}

impl Desired {
    pub fn new(loaded: LoadedConfig) -> Desired {
        Desired {
            loaded,
            uploads: HashMap::new(),
        }
    }

    fn current_uploads(&self) -> Uploads {
        self.uploads
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.last()?.clone())))
            .collect()
    }
}

/// Why an admin change was refused: the HTTP status to answer, and what to tell the operator.
#[derive(Debug)]
pub(crate) struct AdminError {
    pub status: http::StatusCode,
    pub message: String,
}

impl AdminError {
    /// 400: the change itself is wrong.
    pub fn bad(message: impl Into<String>) -> AdminError {
        AdminError::with(http::StatusCode::BAD_REQUEST, message)
    }

    /// 404: it names nothing that exists.
    pub fn not_found(message: impl Into<String>) -> AdminError {
        AdminError::with(http::StatusCode::NOT_FOUND, message)
    }

    /// 409: it conflicts with what is there.
    pub fn conflict(message: impl Into<String>) -> AdminError {
        AdminError::with(http::StatusCode::CONFLICT, message)
    }

    /// 500: the proxy failed.
    pub fn internal(message: impl Into<String>) -> AdminError {
        AdminError::with(http::StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    fn with(status: http::StatusCode, message: impl Into<String>) -> AdminError {
        AdminError {
            status,
            message: message.into(),
        }
    }
}

async fn build(
    shared: &Shared,
    loaded: LoadedConfig,
    uploads: &Uploads,
) -> Result<Snapshot, ConfigError> {
    let runtime = shared.runtime_for(&loaded)?;
    let previous = shared.snapshot.load_full();
    Snapshot::build(
        loaded,
        &shared.registry,
        runtime.as_ref(),
        uploads,
        Some(&previous),
    )
    .await
}

/// Replaces the config with a file's (SIGHUP, `POST /reload`, `--watch`). Uploaded filter
/// versions stay in force for filters the file still names.
pub(crate) async fn reload_file(shared: &Shared, loaded: LoadedConfig) -> Result<(), ConfigError> {
    let mut d = shared.control.lock().await;
    // A file that drops `admin.token` leaves writes protected by a generated one.
    if loaded.config.admin.token.is_none() && shared.admin_token.get().is_none() {
        let g = crate::admin_token::generated(&loaded).map_err(|e| loaded.error_at("admin", e))?;
        tracing::warn!(
            "admin writes now need the token in {} (Authorization: Bearer)",
            g.file.display()
        );
        let _ = shared.admin_token.set(g);
    }
    let snap = build(shared, loaded.clone(), &d.current_uploads()).await?;
    shared.publish(snap);
    d.loaded = loaded;
    Ok(())
}

/// Edits the config (admin API): validated as a whole like a file, then built and swapped.
pub(crate) async fn edit(
    shared: &Shared,
    f: impl FnOnce(&mut Config) -> Result<(), AdminError>,
) -> Result<(), AdminError> {
    let mut d = shared.control.lock().await;
    let mut config = d.loaded.config.clone();
    f(&mut config)?;
    // Re-render and re-parse: one validation path for files and API edits alike.
    let text = weir_config::to_yaml(&config).map_err(AdminError::internal)?;
    let loaded = LoadedConfig::from_str(&d.loaded.file, &text)
        .map_err(|e| AdminError::bad(strip_file(&e)))?;
    let snap = build(shared, loaded.clone(), &d.current_uploads())
        .await
        .map_err(|e| AdminError::bad(strip_file(&e)))?;
    shared.publish(snap);
    d.loaded = loaded;
    Ok(())
}

/// The message without the file and line (they point into a re-rendered config, not the
/// operator's file): `routes[2].cluster: unknown cluster "x"`.
fn strip_file(e: &ConfigError) -> String {
    e.issues()
        .into_iter()
        .map(|(_, i)| {
            if i.path.is_empty() {
                i.message
            } else {
                format!("{}: {}", i.path, i.message)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A new version of a filter's module. Returns its hash and whether it had to be compiled.
pub(crate) async fn upload(
    shared: &Shared,
    name: &str,
    bytes: Vec<u8>,
) -> Result<(String, bool), AdminError> {
    let mut d = shared.control.lock().await;
    if !d.loaded.config.filters.iter().any(|f| f.name == name) {
        return Err(AdminError::not_found(format!(
            "no filter named {name:?} in the config (add it to `filters:` first)"
        )));
    }
    let mut uploads = d.current_uploads();
    uploads.insert(name.to_string(), Arc::new(bytes));
    let snap = build(shared, d.loaded.clone(), &uploads)
        .await
        .map_err(|e| AdminError::bad(strip_file(&e)))?;
    let module = snap
        .filters
        .iter()
        .find(|f| f.name == name)
        .map(|f| (f.module.hash.clone(), f.module.compiled));
    let bytes = uploads.remove(name).unwrap_or_default();
    shared.publish(snap);
    let history = d.uploads.entry(name.to_string()).or_default();
    history.push(bytes);
    if history.len() > HISTORY {
        history.remove(0);
    }
    module.ok_or(AdminError::internal(
        "the new module is missing from the snapshot",
    ))
}

/// Back to the previous version (the previous upload, or the config's file).
pub(crate) async fn rollback(shared: &Shared, name: &str) -> Result<String, AdminError> {
    let mut d = shared.control.lock().await;
    let Some(history) = d.uploads.get(name).filter(|h| !h.is_empty()) else {
        return Err(AdminError::conflict(format!(
            "filter {name:?} has no uploaded version to roll back from"
        )));
    };
    let mut uploads = d.current_uploads();
    match history.len() {
        1 => {
            uploads.remove(name);
        }
        n => {
            uploads.insert(name.to_string(), history[n - 2].clone());
        }
    }
    let snap = build(shared, d.loaded.clone(), &uploads)
        .await
        .map_err(|e| AdminError::bad(strip_file(&e)))?;
    let hash = snap
        .filters
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.module.hash.clone())
        .unwrap_or_default();
    shared.publish(snap);
    if let Some(h) = d.uploads.get_mut(name) {
        h.pop();
    }
    Ok(hash)
}

/// Removes a filter no route uses.
pub(crate) async fn delete_filter(shared: &Shared, name: &str) -> Result<(), AdminError> {
    {
        let d = shared.control.lock().await;
        let users: Vec<&str> = d
            .loaded
            .config
            .routes
            .iter()
            .filter(|r| r.filters.iter().any(|f| f.name == name))
            .map(|r| r.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(AdminError::conflict(format!(
                "filter {name:?} is used by routes {users:?}; remove it from them first"
            )));
        }
    }
    let n = name.to_string();
    edit(shared, move |c| {
        let before = c.filters.len();
        c.filters.retain(|f| f.name != n);
        if c.filters.len() == before {
            Err(AdminError::not_found(format!("no filter named {n:?}")))
        } else {
            Ok(())
        }
    })
    .await?;
    shared.control.lock().await.uploads.remove(name);
    Ok(())
}
