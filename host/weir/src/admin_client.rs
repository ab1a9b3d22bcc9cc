//! CLI helpers that talk to a running proxy's admin API.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Sends one admin request and returns the response body; non-2xx is an error carrying the
/// proxy's message.
pub fn call(
    admin: &str,
    token: Option<&str>,
    method: http::Method,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let url = format!("{}{path}", admin.trim_end_matches('/'));
        let mut req = http::Request::builder().method(method).uri(&url);
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        let res = client
            .request(req)
            .await
            .with_context(|| format!("cannot reach the admin API at {url}"))?;
        let status = res.status();
        let text =
            String::from_utf8_lossy(&res.into_body().collect().await?.to_bytes()).into_owned();
        if !status.is_success() {
            let msg = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(text);
            bail!("{status}: {}", msg.trim_end());
        }
        Ok(text)
    })
}
