//! OpenID Connect discovery: the issuer's keys fetched through callouts — its
//! `/.well-known/openid-configuration`, then the JWKS its `jwks_uri` names — kept in the
//! instance, re-fetched when they are `refresh_s` old, and at once (but at most every
//! `min_refresh_interval_s`) when a token names a `kid` they do not have: a provider that rotates
//! its keys is followed without a reload, and a flood of made-up `kid`s cannot turn into a flood
//! of fetches.

use std::cell::RefCell;
use std::time::Duration;

use serde::Deserialize;
use weir_filter::{callout, clock, log, metrics};

use crate::keys::{self, JwkOutcome, Key};

/// Where the issuer's configuration is fetched from, and how often.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The identity provider: a cluster name or `host:port`, granted in `grants.callouts`.
    pub server: String,
    /// Path of the discovery document. Default: `/.well-known/openid-configuration`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Where the JWKS is fetched from (the path of `jwks_uri` on this target). Default: `server`.
    #[serde(default)]
    pub jwks_server: Option<String>,
    /// The `Host` the provider is asked under. Default: the endpoint's address.
    #[serde(default)]
    pub host: Option<String>,
    /// Keys older than this are fetched again. Default: 3600.
    #[serde(default = "default_refresh_s")]
    pub refresh_s: u64,
    /// Fetches (on an unknown `kid`, or after a failure) at most this often. Default: 30.
    #[serde(default = "default_min_refresh_interval_s")]
    pub min_refresh_interval_s: u64,
    /// One fetch at most, in milliseconds. Default: 1000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_path() -> String {
    "/.well-known/openid-configuration".to_owned()
}
fn default_refresh_s() -> u64 {
    3600
}
fn default_min_refresh_interval_s() -> u64 {
    30
}
fn default_timeout_ms() -> u64 {
    1000
}

/// A discovery document or JWKS larger than this is refused.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// The provider's keys as last fetched.
#[derive(Default)]
pub struct Fetched {
    pub keys: Vec<Key>,
    /// The document's `issuer`.
    pub issuer: String,
    /// When they were fetched (ms); `None` before the first success.
    pub at_ms: Option<u64>,
}

/// Discovery's state in one instance.
pub struct Discovery {
    config: DiscoveryConfig,
    pub fetched: RefCell<Fetched>,
    /// When a fetch was last tried (ms), success or not.
    last_try_ms: RefCell<Option<u64>>,
}

impl Discovery {
    pub fn new(config: DiscoveryConfig) -> Result<Discovery, String> {
        if config.server.is_empty() {
            return Err("discovery.server: must name a cluster or host:port".to_owned());
        }
        if !config.path.starts_with('/') || config.path.chars().any(|c| c.is_ascii_control()) {
            return Err(format!(
                "discovery.path: {:?} must start with / and hold no control characters",
                config.path
            ));
        }
        if config.refresh_s == 0 || config.refresh_s > 86_400 {
            return Err("discovery.refresh_s: must be from 1 to 86400".to_owned());
        }
        if config.min_refresh_interval_s > config.refresh_s {
            return Err(
                "discovery.min_refresh_interval_s: must not be more than refresh_s".to_owned(),
            );
        }
        if !(1..=60_000).contains(&config.timeout_ms) {
            return Err("discovery.timeout_ms: must be from 1 to 60000".to_owned());
        }
        Ok(Discovery {
            config,
            fetched: RefCell::new(Fetched::default()),
            last_try_ms: RefCell::new(None),
        })
    }

    /// Fetches the keys when there are none yet, when they are `refresh_s` old, or when
    /// `unknown_kid` (a token named a kid no key has) — each no more often than
    /// `min_refresh_interval_s`. A failed fetch keeps the keys already there.
    pub fn refresh_if_due(&self, unknown_kid: bool) {
        let now = clock::now_ms();
        let age_due = match self.fetched.borrow().at_ms {
            None => true,
            Some(at) => now.saturating_sub(at) >= self.config.refresh_s * 1000,
        };
        if !age_due && !unknown_kid {
            return;
        }
        let allowed = self
            .last_try_ms
            .borrow()
            .is_none_or(|t| now.saturating_sub(t) >= self.config.min_refresh_interval_s * 1000);
        if !allowed {
            return;
        }
        *self.last_try_ms.borrow_mut() = Some(now);
        match self.fetch() {
            Ok((issuer, keys)) => {
                metrics::count("jwt_auth_discovery_fetches_total", &[("result", "ok")]);
                log::info(&format!(
                    "jwt-auth: {} keys from {} (issuer {issuer})",
                    keys.len(),
                    self.config.server
                ));
                *self.fetched.borrow_mut() = Fetched {
                    keys,
                    issuer,
                    at_ms: Some(now),
                };
            }
            Err(e) => {
                metrics::count("jwt_auth_discovery_fetches_total", &[("result", "failed")]);
                log::warn(&format!(
                    "jwt-auth: discovery from {} failed (keeping the keys there are): {e}",
                    self.config.server
                ));
            }
        }
    }

    fn fetch(&self) -> Result<(String, Vec<Key>), String> {
        #[derive(Deserialize)]
        struct Document {
            issuer: String,
            jwks_uri: String,
        }
        let doc: Document =
            serde_json::from_slice(&self.get(&self.config.server, &self.config.path)?)
                .map_err(|e| format!("the discovery document: {e}"))?;
        if doc.issuer.is_empty() {
            return Err("the discovery document's issuer is empty".to_owned());
        }
        let path = uri_path(&doc.jwks_uri)
            .ok_or_else(|| format!("jwks_uri {:?} is not an http(s) URL", doc.jwks_uri))?;
        let server = self
            .config
            .jwks_server
            .as_deref()
            .unwrap_or(&self.config.server);
        let jwks: keys::Jwks = serde_json::from_slice(&self.get(server, path)?)
            .map_err(|e| format!("the JWKS: {e}"))?;
        let mut out = Vec::new();
        for (i, jwk) in jwks.keys.iter().enumerate() {
            // One malformed key does not cost the others.
            match keys::from_jwk(&format!("jwks_uri keys[{i}]"), jwk) {
                Ok(JwkOutcome::Key(k)) => out.push(k),
                Ok(JwkOutcome::Skipped(why)) => log::debug(&format!("jwt-auth: {why}")),
                Err(e) => log::warn(&format!("jwt-auth: {e}")),
            }
        }
        if out.is_empty() {
            return Err("the JWKS has no usable key (supported: HS256..512, RS256..512, PS256..512, ES256, ES384, EdDSA)".to_owned());
        }
        Ok((doc.issuer, out))
    }

    fn get(&self, target: &str, path: &str) -> Result<Vec<u8>, String> {
        let mut headers = vec![("accept", "application/json")];
        if let Some(h) = &self.config.host {
            headers.push(("host", h.as_str()));
        }
        let res = callout::send(
            target,
            "GET",
            path,
            &headers,
            b"",
            Duration::from_millis(self.config.timeout_ms),
        )
        .map_err(|e| format!("GET {path}: {e}"))?;
        if res.status != 200 {
            return Err(format!("GET {path}: answered {}", res.status));
        }
        if res.body.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("GET {path}: over {MAX_DOCUMENT_BYTES} bytes"));
        }
        Ok(res.body)
    }
}

/// The path (and query) of an `http://` or `https://` URL.
fn uri_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let path = &rest[rest.find('/')?..];
    (!path
        .chars()
        .any(|c| c.is_ascii_control() || c == ' ' || c == '#'))
    .then_some(path)
}
