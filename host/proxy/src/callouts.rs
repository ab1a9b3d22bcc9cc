//! Filter callouts: to a cluster of the current config (balanced, pooled) or a granted host:port.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use weir_filters::CalloutError;

use crate::body::ProxyBody;

/// Callout responses are read whole; this caps them.
const MAX_CALLOUT_BODY: usize = 4 << 20;

pub(crate) struct ProxyCallouts {
    /// The proxy's current config (set once the proxy is built: the filter runtime, which
    /// needs these callouts, is made before the first snapshot). Weak: the snapshot holds the
    /// filters that hold these callouts, and a cycle would keep its pools open after shutdown.
    snapshot: OnceLock<Weak<arc_swap::ArcSwap<crate::Snapshot>>>,
    direct: Client<HttpConnector, ProxyBody>,
}

impl ProxyCallouts {
    pub fn new() -> Arc<ProxyCallouts> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(1)));
        Arc::new(ProxyCallouts {
            snapshot: OnceLock::new(),
            direct: Client::builder(TokioExecutor::new()).build(http),
        })
    }

    pub fn attach(&self, snapshot: &Arc<arc_swap::ArcSwap<crate::Snapshot>>) {
        let _ = self.snapshot.set(Arc::downgrade(snapshot));
    }

    async fn send_inner(
        &self,
        target: &str,
        req: Request<Bytes>,
        timeout: Duration,
    ) -> Result<Response<Bytes>, CalloutError> {
        let snap = self
            .snapshot
            .get()
            .and_then(Weak::upgrade)
            .ok_or(CalloutError::ShuttingDown)?
            .load_full();
        let invalid = |e: http::Error| CalloutError::Target {
            target: target.to_string(),
            source: e.into(),
        };
        let (parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut up = Request::from_parts(parts, ProxyBody::full(body));
        let fut = match snap.clusters().iter().find(|c| &*c.name == target) {
            Some(cluster) => {
                let i = cluster.balancer.pick(None);
                let ep = &cluster.endpoints[i];
                *up.uri_mut() = Uri::builder()
                    .scheme(cluster.scheme.clone())
                    .authority(ep.authority.clone())
                    .path_and_query(pq)
                    .build()
                    .map_err(invalid)?;
                if !up.headers().contains_key(header::HOST) {
                    let host =
                        http::HeaderValue::from_str(&ep.address).map_err(|e| invalid(e.into()))?;
                    up.headers_mut().insert(header::HOST, host);
                }
                let client = ep.h2_client.as_ref().unwrap_or(&cluster.client).clone();
                client.request(up)
            }
            None => {
                *up.uri_mut() = Uri::builder()
                    .scheme("http")
                    .authority(target)
                    .path_and_query(pq)
                    .build()
                    .map_err(invalid)?;
                self.direct.request(up)
            }
        };
        let timed_out = || CalloutError::Timeout {
            target: target.to_string(),
            after: timeout,
        };
        let res = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| CalloutError::Failed {
                target: target.to_string(),
                source: e.into(),
            })?;
        let (parts, body) = res.into_parts();
        let body = tokio::time::timeout(
            timeout,
            http_body_util::Limited::new(body, MAX_CALLOUT_BODY).collect(),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| CalloutError::Body {
            target: target.to_string(),
            source: e,
        })?
        .to_bytes();
        Ok(Response::from_parts(parts, body))
    }
}

impl weir_filters::Callouts for ProxyCallouts {
    fn send(
        &self,
        target: &str,
        req: Request<Bytes>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, CalloutError>> + Send + '_>> {
        let target = target.to_string();
        Box::pin(async move { self.send_inner(&target, req, timeout).await })
    }
}
