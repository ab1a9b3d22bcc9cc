//! The admin listener: health, readiness, Prometheus metrics, the effective config, clusters.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::{Shared, control};

pub(crate) async fn admin_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => break,
        };
        let shared = shared.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let _drain = drain;
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Admin request bodies (filter modules included) are capped.
const MAX_ADMIN_BODY: usize = 64 << 20;

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let public = matches!(path.as_str(), "/healthz" | "/ready");
    if !public && let Some(token) = shared.snapshot.load().loaded.config.admin.token.clone() {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "admin token required: Authorization: Bearer <admin.token>\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"weir-admin\""),
            );
            return r;
        }
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, _) => read(shared, &path, req.uri().query()).await,
        (&Method::PUT, ["filters", name]) => match body(req).await {
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
            let bytes = match body(req).await {
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
                    if removed { Ok(()) } else { Err((404, format!("nothing named {n:?}"))) }
                })
                .await
                .map(|()| serde_json::json!({ "deleted": name })),
            )
        }
        (&Method::POST, ["reload"]) => {
            let file = shared.control.lock().await.loaded.file.clone();
            let result = match weir_config::LoadedConfig::from_file(&file) {
                Ok(l) => control::reload_file(shared, l).await.map_err(|e| (400, e.to_string())),
                Err(e) => Err((400, e.to_string())),
            };
            reply(result.map(|()| serde_json::json!({ "reloaded": file })))
        }
        _ => text(StatusCode::NOT_FOUND, "not found: see the admin API in README.md\n"),
    }
}

/// `PUT /routes/{name}` and `PUT /clusters/{name}`: replace the item with that name or add it.
async fn put_named<T: serde::de::DeserializeOwned + Send + 'static>(
    shared: &Shared,
    bytes: &[u8],
    name: &str,
    list: fn(&mut weir_config::Config) -> &mut Vec<T>,
    name_of: fn(&mut T) -> &mut String,
) -> Result<(), control::Refused> {
    // The name comes from the path; a body may repeat it, but not contradict it.
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| (400, format!("invalid JSON body: {e}")))?;
    match value.as_object_mut() {
        Some(obj) => match obj.get("name") {
            None => {
                obj.insert("name".into(), serde_json::Value::String(name.to_string()));
            }
            Some(n) if n.as_str() == Some(name) => {}
            Some(n) => {
                return Err((
                    400,
                    format!("the body names {n} but the path names {name:?}"),
                ));
            }
        },
        None => return Err((400, "the body must be a JSON object".into())),
    }
    // Files are named by whoever writes the config file, never through the API: a filter's
    // config error could otherwise echo any file the proxy can read.
    if crate::snapshot::names_a_file(&value) {
        return Err((
            400,
            "$json_file and $text_file are only read from the config file, not from admin API edits"
                .into(),
        ));
    }
    let item: T =
        serde_json::from_value(value).map_err(|e| (400, format!("invalid JSON body: {e}")))?;
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

async fn body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    match http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
        )),
    }
}

fn reply(result: Result<serde_json::Value, control::Refused>) -> Response<Full<Bytes>> {
    match result {
        Ok(v) => json(&v),
        Err((status, msg)) => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            &msg,
        ),
    }
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut r = json(&serde_json::json!({ "error": msg }));
    *r.status_mut() = status;
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
            let body = shared.registry.render(env!("CARGO_PKG_VERSION"));
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            )
        }
        "/config" => {
            let snap = shared.snapshot.load();
            let mut config = snap.loaded.config.clone();
            if config.admin.token.is_some() {
                config.admin.token = Some("<redacted>".into());
            }
            if query.is_some_and(|q| q.split('&').any(|kv| kv == "format=yaml")) {
                let yaml = serde_yaml::to_string(&config).unwrap_or_default();
                respond(StatusCode::OK, "application/yaml", yaml)
            } else {
                json(&serde_json::to_value(&config).unwrap_or_default())
            }
        }
        "/clusters" => json(&shared.snapshot.load().clusters_json()),
        "/filters" => json(&shared.snapshot.load().filters_json()),
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
