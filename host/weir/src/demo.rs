//! Demo upstreams for the quickstart: each echoes the request it got as JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use weir_config::LoadedConfig;
use weir_proxy::Server;

async fn echo(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let out = serde_json::json!({
        "server": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body.len(),
        // Small bodies are shown, so body filters can be seen at work.
        "body": (body.len() <= 4096).then(|| String::from_utf8_lossy(&body).into_owned()),
    });
    let mut res = Response::new(Full::new(Bytes::from(
        serde_json::to_string_pretty(&out).unwrap_or_default() + "\n",
    )));
    res.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        res.headers_mut().insert("x-served-by", v);
    }
    Ok(res)
}

async fn serve(listener: TcpListener, name: Arc<str>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| echo(name.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

pub async fn serve_forever(listen: SocketAddr, name: String) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).await?;
    eprintln!(
        "weir: demo upstream {name} listening on http://{}",
        l.local_addr()?
    );
    serve(l, name.into()).await;
    Ok(())
}

/// Starts one demo upstream per loopback endpoint of the config's clusters.
pub async fn start_for(loaded: &LoadedConfig) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for c in &loaded.config.clusters {
        for e in &c.endpoints {
            let Ok(addr) = e.address.parse::<SocketAddr>() else {
                continue;
            };
            if !addr.ip().is_loopback() || !seen.insert(addr) {
                continue;
            }
            let l = TcpListener::bind(addr)
                .await
                .map_err(|err| anyhow::anyhow!("demo upstream {addr}: {err}"))?;
            let name: Arc<str> = format!("{}@{}", c.name, addr).into();
            eprintln!("weir: demo upstream {name} listening on http://{addr}");
            tokio::spawn(serve(l, name));
        }
    }
    Ok(())
}

pub fn print_tour(server: &Server) {
    let Some(public) = server
        .listeners
        .iter()
        .find(|l| l.protocol == weir_config::ListenerProtocol::Http)
    else {
        return;
    };
    let p = public.addr;
    let a = server.admin;
    let lines = [
        format!(
            "curl -s http://{p}/hello                                   # host route, round robin over 2 upstreams"
        ),
        format!(
            "curl -s http://{p}/api/v1/users -H 'host: api.example.com'   # host + prefix, path rewritten to /v2/"
        ),
        format!(
            "curl -s http://{p}/api/v1/users -H 'host: api.example.com' -H 'x-env: canary'   # header match: canary"
        ),
        format!(
            "curl -s http://{p}/static/a.png -H 'host: cdn.example.com' -H 'x-user: alice'   # maglev on x-user"
        ),
        format!("curl -s --http2-prior-knowledge http://{p}/hello           # HTTP/2 (h2c)"),
        format!(
            "curl -s -o /dev/null -w '%{{http_code}}\\n' http://{p}/nope -H 'host: other.example.org'   # 404"
        ),
        format!(
            "curl -s http://{p}/orders -H \"authorization: Bearer $TOKEN\"   # jwt-auth (TOKEN: see README); without it: 401"
        ),
        format!(
            "curl -s http://{p}/catalog -H 'x-api-key: weir-demo-key-alice'   # key-auth, behind cors and rate-limit"
        ),
        format!("curl -s -u alice:wonderland http://{p}/admin                # basic-auth"),
        format!(
            "for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}} ' http://{p}/limited; done   # rate-limit: 200 200 429"
        ),
        format!(
            "curl -si http://{p}/legacy/items | grep -i x-transformed     # transform: path rewritten to /v2/items"
        ),
        format!(
            "curl -s http://{p}/ex/go/auth -H 'x-api-key: demo-key'        # header-auth in Go (also /ex/rust/, /ex/as/); no key: 401"
        ),
        format!(
            "for i in 1 2 3; do curl -s -o /dev/null -w '%{{http_code}} ' http://{p}/ex/as/limited; done   # rate-limit in AssemblyScript"
        ),
        format!(
            "curl -s http://{p}/ex/go/json -d '{{\"user\":\"jürgen\",\"password\":\"x\"}}'   # json-transform in Go: see \"body\""
        ),
        format!("curl -s http://{a}/metrics | grep weir_requests_total       # Prometheus metrics"),
        format!(
            "curl -s http://{a}/filters                                 # loaded filters and versions"
        ),
        format!(
            "curl -s http://{a}/clusters                                # endpoints, health, in-flight"
        ),
    ];
    eprintln!("\nWeir is running. Try:");
    for l in lines {
        eprintln!("  {l}");
    }
    eprintln!("Stop with Ctrl-C (in-flight requests drain first).\n");
}
