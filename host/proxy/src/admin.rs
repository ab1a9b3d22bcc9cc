//! The admin API: health, readiness, Prometheus metrics, the effective config, clusters, and
//! the write API (filters, routes, clusters, reload), on TCP and optionally a Unix socket.
//!
//! Who may do what: `/healthz` and `/ready` are open; with `admin.token` set everything else
//! needs it; without, reads stay open on loopback and writes need the token generated into
//! `admin.token_file` (see `admin_token.rs`). On TCP the `Host` must name this listener, so a web
//! page cannot reach the API through DNS rebinding. Connections, request heads and bodies are
//! bounded like the data path's.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use subtle::ConstantTimeEq as _;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::{Shared, control};

/// Open admin connections, TCP and Unix together; more wait in the kernel's backlog. The admin
/// API is for operators and scripts, not traffic: a client that opens many cannot starve it
/// of file descriptors or memory.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// Bodies of `PUT /routes/..` and `PUT /clusters/..` (JSON).
pub(crate) const MAX_JSON_BODY: usize = 1 << 20;
/// Bodies of `PUT /filters/..` (a compiled module: a Go component is several MiB).
pub(crate) const MAX_UPLOAD_BODY: usize = 64 << 20;
/// Largest admin request head.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Where an admin request came in.
#[derive(Clone, Copy)]
enum Via {
    /// The TCP listener bound to this address (the `Host` must name it).
    Tcp(SocketAddr),
    /// The Unix socket (its file mode admits only this user).
    Unix,
}

/// A bound admin socket.
pub(crate) enum AdminSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Serves one admin socket until shutdown. `permits` is shared by every admin socket.
pub(crate) async fn admin_loop(
    socket: AdminSocket,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
) {
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            r = accept(&socket) => r,
            _ = shutdown.changed() => break,
        };
        let conn = (shared.clone(), shutdown.clone(), drain.clone(), permit);
        match accepted {
            Ok(Accepted::Tcp(stream, local)) => {
                tokio::spawn(serve(stream, Via::Tcp(local), conn));
            }
            Ok(Accepted::Unix(stream)) => {
                tokio::spawn(serve(stream, Via::Unix, conn));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning (as the data listeners do).
                tracing::warn!("admin: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(socket: &AdminSocket) -> std::io::Result<Accepted> {
    match socket {
        AdminSocket::Tcp(l) => {
            let (s, _) = l.accept().await?;
            let local = s.local_addr()?;
            Ok(Accepted::Tcp(s, local))
        }
        AdminSocket::Unix(l) => Ok(Accepted::Unix(l.accept().await?.0)),
    }
}

type Conn = (
    Arc<Shared>,
    watch::Receiver<bool>,
    mpsc::Sender<()>,
    OwnedSemaphorePermit,
);

/// One admin connection: HTTP/1.1, its head within `limits.request_head_timeout` (hyper's timer
/// also closes a keep-alive connection that sends no next request for that long), closed
/// gracefully at shutdown so an idle keep-alive connection never holds up the drain.
async fn serve<I>(io: I, via: Via, (shared, mut shutdown, _drain, _permit): Conn)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head = shared.snapshot.load().limits.request_head_timeout;
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(route(&shared, via, req).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(100);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    if !*shutdown.borrow_and_update() {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.changed() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    // A request in flight finishes (its body is bounded by the body timeout); an idle
    // connection closes at once.
    let _ = conn.await;
}

/// Binds the admin Unix socket with mode 0600. It is bound inside a private folder and then
/// moved into place, so it is never reachable with looser permissions. A stale socket (nothing
/// answers on it) is replaced; a live one, or a file that is not a socket, is an error.
pub(crate) fn bind_unix(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::{Context as _, bail};
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("admin.unix: {shown} is in use (is another weir running?)");
            }
            std::fs::remove_file(path)
                .with_context(|| format!("admin.unix: cannot remove the stale socket {shown}"))?;
        }
        Ok(_) => {
            bail!("admin.unix: {shown} exists and is not a socket; remove it or pick another path")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("admin.unix: {shown}: {e}"),
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = parent.join(format!(".weir-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("admin.unix: cannot create a folder in {}", parent.display()))?;
    let inner = private.join("s");
    let bound = (|| -> std::io::Result<std::os::unix::net::UnixListener> {
        let l = std::os::unix::net::UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let l = bound.with_context(|| format!("admin.unix: cannot listen on {shown}"))?;
    Ok(UnixListener::from_std(l)?)
}

async fn route(shared: &Shared, via: Via, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Via::Tcp(local) = via
        && let Err(r) = check_host(shared, local, &req)
    {
        return r;
    }
    if let Err(r) = authorize(shared, &req) {
        return r;
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, _) => read(shared, &path, req.uri().query()).await,
        (&Method::PUT, ["filters", name]) => match body(shared, req, MAX_UPLOAD_BODY).await {
            Ok(bytes) => reply(control::upload(shared, name, bytes.to_vec()).await.map(|(hash, compiled)| {
                serde_json::json!({ "filter": name, "version": hash, "compiled": compiled })
            })),
            Err(r) => r,
        },
        (&Method::POST, ["filters", name, "rollback"]) => {
            reply(control::rollback(shared, name).await.map(|hash| serde_json::json!({ "filter": name, "version": hash })))
        }
        (&Method::DELETE, ["filters", name]) => {
            reply(control::delete_filter(shared, name).await.map(|()| serde_json::json!({ "deleted": name })))
        }
        (&Method::PUT, [kind @ ("routes" | "clusters"), name]) => {
            let bytes = match body(shared, req, MAX_JSON_BODY).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let (kind, name) = (kind.to_string(), name.to_string());
            let result = if kind == "routes" {
                put_named(shared, &bytes, &name, |c: &mut weir_config::Config| &mut c.routes, |r: &mut weir_config::RouteConfig| &mut r.name)
                    .await
            } else {
                put_named(shared, &bytes, &name, |c: &mut weir_config::Config| &mut c.clusters, |r: &mut weir_config::ClusterConfig| &mut r.name)
                    .await
            };
            reply(result.map(|()| serde_json::json!({ kind: name })))
        }
        (&Method::DELETE, [kind @ ("routes" | "clusters"), name]) => {
            let n = name.to_string();
            let routes = *kind == "routes";
            reply(
                control::edit(shared, move |c| {
                    let removed = if routes {
                        let before = c.routes.len();
                        c.routes.retain(|r| r.name != n);
                        before != c.routes.len()
                    } else {
                        let before = c.clusters.len();
                        c.clusters.retain(|r| r.name != n);
                        before != c.clusters.len()
                    };
                    if removed { Ok(()) } else { Err(control::AdminError::not_found(format!("nothing named {n:?}"))) }
                })
                .await
                .map(|()| serde_json::json!({ "deleted": name })),
            )
        }
        (&Method::POST, ["routes", name, op @ ("enable" | "disable")]) => {
            reply(switch_routes(shared, Routes::Named(name.to_string()), *op == "enable").await)
        }
        (&Method::POST, ["routes", op @ ("enable" | "disable")]) => {
            let tag = req.uri().query().and_then(|q| {
                q.split('&').find_map(|kv| kv.strip_prefix("tag=")).map(str::to_string)
            });
            match tag {
                Some(t) if weir_config::is_tag(&t) => reply(switch_routes(shared, Routes::Tagged(t), *op == "enable").await),
                Some(t) => error(StatusCode::BAD_REQUEST, &format!("{t:?} is not a tag: 1 to 64 letters, digits, '_', '-', '.' or ':'")),
                None => error(StatusCode::BAD_REQUEST, &format!("name the routes: POST /routes/{{name}}/{op} or POST /routes/{op}?tag=<tag>")),
            }
        }
        (&Method::POST, ["reload"]) => {
            let file = shared.control.lock().await.loaded.file.clone();
            let result = match weir_config::LoadedConfig::from_file(&file) {
                Ok(l) => control::reload_file(shared, l).await.map_err(|e| control::AdminError::bad(e.to_string())),
                Err(e) => Err(control::AdminError::bad(e.to_string())),
            };
            reply(result.map(|()| serde_json::json!({ "reloaded": file })))
        }
        _ => text(StatusCode::NOT_FOUND, "not found: see the admin API in README.md\n"),
    }
}

/// The `Host` (and an absolute-form target's authority) must name this listener: its own IP,
/// a loopback IP or `localhost` (any IP when it listens on every address), or one of
/// `admin.hosts`, with its port. A DNS-rebinding page sends its own name and is refused.
#[expect(
    clippy::result_large_err,
    reason = "the refusal is the response itself; admin requests are rare"
)]
fn check_host(
    shared: &Shared,
    local: SocketAddr,
    req: &Request<Incoming>,
) -> Result<(), Response<Full<Bytes>>> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "admin: more than one Host header\n",
        ));
    }
    let mut named = Vec::with_capacity(2);
    if let Some(a) = req.uri().authority() {
        named.push(a.as_str().to_string());
    }
    if let Some(h) = host {
        match h.to_str() {
            Ok(h) => named.push(h.to_string()),
            Err(_) => return Err(misdirected(local)),
        }
    }
    if named.is_empty() {
        // HTTP/1.0 has no Host; HTTP/1.1 requires one (RFC 9112 §3.2).
        return if req.version() <= http::Version::HTTP_10 {
            Ok(())
        } else {
            Err(text(
                StatusCode::BAD_REQUEST,
                "admin: a Host header is required\n",
            ))
        };
    }
    let extra = &shared.snapshot.load().loaded.config.admin.hosts;
    if named.iter().all(|h| host_names_listener(h, local, extra)) {
        Ok(())
    } else {
        Err(misdirected(local))
    }
}

fn host_names_listener(host: &str, local: SocketAddr, extra: &[String]) -> bool {
    let Ok(a) = host.parse::<http::uri::Authority>() else {
        return false;
    };
    let name = a.host().trim_end_matches('.');
    if extra.iter().any(|e| e.eq_ignore_ascii_case(name)) {
        return true;
    }
    if a.port_u16().unwrap_or(80) != local.port() {
        return false;
    }
    let ip = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name)
        .parse::<IpAddr>();
    match ip {
        Ok(ip) => ip == local.ip() || ip.is_loopback() || local.ip().is_unspecified(),
        Err(_) => name.eq_ignore_ascii_case("localhost"),
    }
}

fn misdirected(local: SocketAddr) -> Response<Full<Bytes>> {
    let port = local.port();
    respond(
        StatusCode::MISDIRECTED_REQUEST,
        "text/plain; charset=utf-8",
        format!(
            "admin: the Host header does not name this admin listener; use {local}, \
             localhost:{port} or 127.0.0.1:{port} (other names: admin.hosts)\n"
        ),
    )
}

/// `/healthz` and `/ready` are open. With `admin.token` every other request needs it; without,
/// reads are open (the listener is on loopback: config refuses anything else without a token)
/// and writes need the generated token.
#[expect(
    clippy::result_large_err,
    reason = "the refusal is the response itself; admin requests are rare"
)]
fn authorize(shared: &Shared, req: &Request<Incoming>) -> Result<(), Response<Full<Bytes>>> {
    if matches!(req.uri().path(), "/healthz" | "/ready") {
        return Ok(());
    }
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let configured = shared.snapshot.load().loaded.config.admin.token.clone();
    let (token, hint) = match (&configured, shared.admin_token.get()) {
        (Some(t), _) => (Some(t.as_str()), "admin.token".to_string()),
        (None, _) if read => return Ok(()),
        (None, Some(g)) => (
            Some(g.token.as_str()),
            format!("the token in {}", g.file.display()),
        ),
        (None, None) => (None, "admin.token".to_string()),
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let (Some(t), Some(p)) = (token, presented)
        && bool::from(p.as_bytes().ct_eq(t.as_bytes()))
    {
        return Ok(());
    }
    let what = if configured.is_some() {
        "admin"
    } else {
        "admin write"
    };
    let mut r = respond(
        StatusCode::UNAUTHORIZED,
        "text/plain; charset=utf-8",
        format!("{what} token required: Authorization: Bearer <{hint}>\n"),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"weir-admin\""),
    );
    Err(r)
}

/// Which routes a switch applies to.
enum Routes {
    Named(String),
    Tagged(String),
}

/// `POST /routes/{name}/enable|disable` and `POST /routes/enable|disable?tag=..`: switches
/// routes on or off live. It is a config edit like any other (validated, built off the hot
/// path, swapped in; requests in flight finish on the snapshot they started with, clusters
/// keep their connections, health and counters, and filter pools their instances); the next
/// file reload sets what the file says.
async fn switch_routes(
    shared: &Shared,
    which: Routes,
    on: bool,
) -> Result<serde_json::Value, control::AdminError> {
    let mut switched = Vec::new();
    let names = &mut switched;
    control::edit(shared, move |c| {
        for r in &mut c.routes {
            let hit = match &which {
                Routes::Named(n) => r.name == *n,
                Routes::Tagged(t) => r.tags.contains(t),
            };
            if hit {
                r.enabled = on;
                names.push(r.name.clone());
            }
        }
        if names.is_empty() {
            return Err(control::AdminError::not_found(match &which {
                Routes::Named(n) => format!("no route named {n:?}"),
                Routes::Tagged(t) => format!("no route has the tag {t:?}"),
            }));
        }
        Ok(())
    })
    .await?;
    tracing::info!(
        routes = ?switched,
        "routes {} through the admin API",
        if on { "enabled" } else { "disabled" }
    );
    Ok(serde_json::json!({ "enabled": on, "routes": switched }))
}

/// `PUT /routes/{name}` and `PUT /clusters/{name}`: replace the item with that name or add it.
async fn put_named<T: serde::de::DeserializeOwned + Send + 'static>(
    shared: &Shared,
    bytes: &[u8],
    name: &str,
    list: fn(&mut weir_config::Config) -> &mut Vec<T>,
    name_of: fn(&mut T) -> &mut String,
) -> Result<(), control::AdminError> {
    // The name comes from the path; a body may repeat it, but not contradict it.
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| control::AdminError::bad(format!("invalid JSON body: {e}")))?;
    match value.as_object_mut() {
        Some(obj) => match obj.get("name") {
            None => {
                obj.insert("name".into(), serde_json::Value::String(name.to_string()));
            }
            Some(n) if n.as_str() == Some(name) => {}
            Some(n) => {
                return Err(control::AdminError::bad(format!(
                    "the body names {n} but the path names {name:?}"
                )));
            }
        },
        None => return Err(control::AdminError::bad("the body must be a JSON object")),
    }
    // Files are named by whoever writes the config file, never through the API: a filter's
    // config error could otherwise echo any file the proxy can read.
    if crate::snapshot::names_a_file(&value) {
        return Err(control::AdminError::bad(
            "$json_file and $text_file are only read from the config file, not from admin API edits",
        ));
    }
    let item: T = serde_json::from_value(value)
        .map_err(|e| control::AdminError::bad(format!("invalid JSON body: {e}")))?;
    let name = name.to_string();
    control::edit(shared, move |c| {
        let items = list(c);
        match items.iter_mut().position(|x| *name_of(x) == name) {
            Some(i) => items[i] = item,
            None => items.push(item),
        }
        Ok(())
    })
    .await
}

/// Reads a request body of at most `cap` bytes (413 beyond), each piece arriving within
/// `limits.request_body_timeout` (408).
async fn body(
    shared: &Shared,
    req: Request<Incoming>,
    cap: usize,
) -> Result<Bytes, Response<Full<Bytes>>> {
    let too_large = || {
        let mut r = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than {} bytes", cap),
        );
        r.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        r
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(too_large());
    }
    let wait = shared.snapshot.load().limits.request_body_timeout;
    let mut body = req.into_body();
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => {
                return Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!("no request body bytes for {wait:?}"),
                ));
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the request body: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > cap {
                        return Err(too_large());
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

fn reply(result: Result<serde_json::Value, control::AdminError>) -> Response<Full<Bytes>> {
    match result {
        Ok(v) => json(&v),
        Err(r) => error(r.status, &r.message),
    }
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = json(&serde_json::json!({ "error": msg }));
    *r.status_mut() = status;
    r
}

async fn read(shared: &Shared, path: &str, query: Option<&str>) -> Response<Full<Bytes>> {
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/ready" => {
            if shared.draining.load(Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/metrics" => {
            let mut body = shared.registry.render(env!("CARGO_PKG_VERSION"));
            shared.snapshot.load().render_routes_enabled(&mut body);
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            )
        }
        "/config" => {
            // Secrets stay out: the token and every filter config (they hold keys and hashes).
            let config = shared.snapshot.load().loaded.config.redacted();
            if query.is_some_and(|q| q.split('&').any(|kv| kv == "format=yaml")) {
                let yaml = weir_config::to_yaml(&config).unwrap_or_default();
                respond(StatusCode::OK, "application/yaml", yaml)
            } else {
                json(&serde_json::to_value(&config).unwrap_or_default())
            }
        }
        "/clusters" => json(&shared.snapshot.load().clusters_json()),
        "/routes" => json(&shared.snapshot.load().routes_json()),
        "/filters" => json(&shared.snapshot.load().filters_json()),
        "/state" => json(&state_json(shared)),
        "/" => text(
            StatusCode::OK,
            "weir admin: see the admin API in README.md\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: see the admin API in README.md\n",
        ),
    }
}

/// `GET /state`: the shared-state backend and its health. Never the URL's credentials.
fn state_json(shared: &Shared) -> serde_json::Value {
    let stats = shared.registry.state();
    let snap = shared.snapshot.load();
    let Some(redis) = &snap.state else {
        return serde_json::json!({ "backend": "embedded", "healthy": true });
    };
    let c = redis.config();
    serde_json::json!({
        "backend": "redis",
        "address": redis.addr(),
        "tls": redis.uses_tls(),
        "healthy": redis.connections() > 0,
        "connections": redis.connections(),
        "pool": { "size": c.pool.size, "timeout_ms": c.pool.timeout.as_millis() as u64 },
        "on_unavailable": match c.on_unavailable {
            weir_config::OnUnavailable::Local => "local",
            weir_config::OnUnavailable::Fail => "fail",
        },
        "key_prefix": c.key_prefix,
        "fallbacks": stats.fallbacks(),
    })
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string_pretty(v).unwrap_or_default();
    body.push('\n');
    respond(StatusCode::OK, "application/json", body)
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.to_string())
}

fn respond(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}
