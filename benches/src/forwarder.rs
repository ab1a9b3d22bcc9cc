//! The floor for Weir's plain-proxy benchmark: a bare hyper forwarder with no routing, no
//! filters, no metrics — one upstream, pooled keep-alive connections, one worker thread.
//!
//! Usage: bare-forwarder LISTEN UPSTREAM   (e.g. 127.0.0.1:18080 127.0.0.1:18081)

use std::convert::Infallible;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18080".into());
    let upstream: http::uri::Authority = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18081".into())
        .parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(http);
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move {
                        let mut parts = http::uri::Parts::default();
                        parts.scheme = Some(http::uri::Scheme::HTTP);
                        parts.authority = Some(upstream);
                        parts.path_and_query = req.uri().path_and_query().cloned();
                        *req.uri_mut() = http::Uri::from_parts(parts).expect("uri");
                        // The upstream side is HTTP/1.1 whatever the client spoke (h2c too).
                        *req.version_mut() = http::Version::HTTP_11;
                        let res = match client.request(req).await {
                            Ok(res) => res.map(http_body_util::Either::Left),
                            Err(_) => {
                                let mut r = Response::new(http_body_util::Either::Right(
                                    http_body_util::Empty::new(),
                                ));
                                *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
