//! Weir's native data path: listeners, TLS, routing, balancing, upstream pools, admin.
//!
//! [`Server::start`] binds everything a config names and serves it; [`Server::reload`] swaps in
//! a new config atomically; [`Server::shutdown`] drains.

mod admin;
mod admin_token;
mod body;
mod callouts;
mod conn;
mod connector;
mod control;
mod error;
mod filtering;
mod h1;
mod head;
mod health;
mod l4;
mod listener;
mod otlp;
mod proxy;
mod proxy_protocol;
mod retry;
mod shared;
mod snapshot;
mod tls;
mod trace;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use weir_config::{ConfigError, ListenerProtocol, LoadedConfig};
use weir_observe::Registry;

pub use snapshot::{Snapshot, check};

use shared::Shared;

/// A bound listener.
#[derive(Debug, Clone)]
pub struct Bound {
    /// Listener name from the config.
    pub name: String,
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub protocol: ListenerProtocol,
}

/// A running proxy.
pub struct Server {
    shared: Arc<Shared>,
    /// Bound downstream listeners, in config order.
    pub listeners: Vec<Bound>,
    /// The bound admin address.
    pub admin: SocketAddr,
    /// The admin Unix socket (`admin.unix`), when there is one.
    pub admin_unix: Option<std::path::PathBuf>,
    /// The file holding the generated admin token, when the config sets no `admin.token`.
    pub admin_token_file: Option<std::path::PathBuf>,
    shutdown: watch::Sender<bool>,
    drain_tx: Option<mpsc::Sender<()>>,
    drain_rx: mpsc::Receiver<()>,
}

impl Server {
    /// Builds the snapshot, binds the admin and every listener, and starts serving.
    pub async fn start(loaded: LoadedConfig) -> anyhow::Result<Server> {
        let registry = Registry::new();
        let mut tls = Vec::new();
        for i in 0..loaded.config.listeners.len() {
            tls.push(snapshot::listener_tls(&loaded, i)?);
        }
        let callouts = callouts::ProxyCallouts::new();
        let runtime = snapshot::filter_runtime(&loaded, Some(callouts.clone()), registry.clone())?;
        let snap = Snapshot::build(
            loaded.clone(),
            &registry,
            runtime.as_ref(),
            &snapshot::Uploads::new(),
            None,
        )
        .await?;
        let config = snap.loaded.config.clone();
        let shared = Arc::new(Shared {
            snapshot: Arc::new(ArcSwap::from_pointee(snap)),
            registry,
            draining: AtomicBool::new(false),
            runtime: std::sync::Mutex::new(runtime),
            callouts,
            control: tokio::sync::Mutex::new(control::Desired::new(loaded.clone())),
            published: tokio::sync::Notify::new(),
            admin_token: std::sync::OnceLock::new(),
        });
        let admin_token_file = match &config.admin.token {
            Some(_) => None,
            None => {
                let g =
                    admin_token::generated(&loaded).map_err(|e| anyhow::anyhow!("admin: {e}"))?;
                let file = g.file.clone();
                let _ = shared.admin_token.set(g);
                Some(file)
            }
        };
        shared.use_state(&shared.snapshot.load());
        shared.callouts.attach(&shared.snapshot);
        let (shutdown, _) = watch::channel(false);
        let (drain_tx, drain_rx) = mpsc::channel(1);

        let admin_listener = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("admin: cannot listen on {}", config.admin.listen))?;
        let admin = admin_listener.local_addr()?;
        let admin_unix = config.admin.unix.as_ref().map(|p| loaded.resolve(p));
        let unix_listener = admin_unix.as_deref().map(admin::bind_unix).transpose()?;
        let mut bound = Vec::new();
        let mut sockets = Vec::new();
        for l in &config.listeners {
            let sock = listen(l.listen, l.backlog)
                .with_context(|| format!("listener {:?}: cannot listen on {}", l.name, l.listen))?;
            bound.push(Bound {
                name: l.name.clone(),
                addr: sock.local_addr()?,
                protocol: l.protocol,
            });
            sockets.push(sock);
        }

        let permits = Arc::new(tokio::sync::Semaphore::new(admin::MAX_CONNECTIONS));
        let sockets_admin = std::iter::once(admin::AdminSocket::Tcp(admin_listener))
            .chain(unix_listener.map(admin::AdminSocket::Unix));
        for socket in sockets_admin {
            tokio::spawn(admin::admin_loop(
                socket,
                shared.clone(),
                permits.clone(),
                shutdown.subscribe(),
                drain_tx.clone(),
            ));
        }
        for ((l, sock), tls) in config.listeners.iter().zip(sockets).zip(tls) {
            let rt = Arc::new(listener::ListenerRuntime {
                name: l.name.as_str().into(),
                tls: tls.map(tokio_rustls::TlsAcceptor::from),
                stats: shared.registry.listener(&l.name),
                native: l.server == weir_config::Http1Server::Native,
                protocol: l.protocol,
            });
            tokio::spawn(listener::accept_loop(
                sock,
                rt,
                shared.clone(),
                shutdown.subscribe(),
                drain_tx.clone(),
            ));
        }
        tokio::spawn(revive_loop(Arc::downgrade(&shared)));
        Ok(Server {
            shared,
            listeners: bound,
            admin,
            admin_unix,
            admin_token_file,
            shutdown,
            drain_tx: Some(drain_tx),
            drain_rx,
        })
    }

    /// Swaps in a new config. Routes, clusters, the access log, and the limits of connections
    /// opened from now on change at once; in-flight requests finish on the old snapshot. Listener addresses and TLS
    /// certificates are bound at start and need a restart to change. On error nothing changes.
    pub async fn reload(&self, loaded: LoadedConfig) -> Result<(), ConfigError> {
        control::reload_file(&self.shared, loaded).await
    }

    /// The files the running config reads (the config itself and local filter modules), for
    /// watching.
    pub async fn watched_files(&self) -> Vec<std::path::PathBuf> {
        let d = self.shared.control.lock().await;
        let mut files = vec![d.loaded.file.clone()];
        files.extend(
            d.loaded
                .config
                .filters
                .iter()
                .map(|f| d.loaded.resolve(&f.module)),
        );
        files
    }

    /// The config currently served.
    pub fn current(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Stops accepting, lets in-flight requests finish for up to `deadline`, and returns whether
    /// everything finished in time.
    pub async fn shutdown(mut self, deadline: Duration) -> bool {
        self.shared.draining.store(true, Relaxed);
        let _ = self.shutdown.send(true);
        self.drain_tx.take();
        if let Some(p) = &self.admin_unix {
            let _ = std::fs::remove_file(p);
        }
        let drained = tokio::time::timeout(deadline, self.drain_rx.recv())
            .await
            .is_ok();
        // Spans wait up to `flush_interval` for export: send them before the process ends.
        if let Some(exporter) = &self.shared.snapshot.load().exporter {
            let limit = exporter.settings.0.timeout.min(Duration::from_secs(5));
            if !exporter.flush(limit).await {
                tracing::warn!("spans queued for export could not all be sent before exit");
            }
        }
        // Access log lines wait up to their linger (10ms for a file, `kafka.linger`): write and
        // send them too.
        if let Some(log) = self.shared.snapshot.load().access_log.clone() {
            let limit = (log.kafka())
                .map_or(Duration::from_secs(1), |k| k.settings.timeout)
                .min(Duration::from_secs(5));
            let done = tokio::task::spawn_blocking(move || log.flush(limit)).await;
            if !done.unwrap_or(false) {
                tracing::warn!("access log lines could not all be written or sent before exit");
            }
        }
        drained
    }
}

/// Puts endpoints whose passive-health cooldown has passed back into rotation.
async fn revive_loop(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for c in shared.snapshot.load().clusters() {
            c.revive();
        }
    }
}

/// A listening socket with the given accept backlog (tokio's `bind` fixes it at 1024).
fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(backlog)
}
