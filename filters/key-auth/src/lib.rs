//! The `key-auth` filter: API keys from a request header (default `x-api-key`) or a query
//! parameter, checked against SHA-256 hashes in the config.
//!
//! The config holds `sha256(key)`, never the key itself, so a leaked config does not leak
//! credentials. A presented key is hashed and looked up; comparing hashes means the lookup's
//! timing says nothing about the key. A known key's consumer name goes upstream in a header
//! (default `x-consumer`, replacing anything the client sent under that name) and the key
//! itself does not (default). See the crate's README for the config reference.

use std::collections::HashMap;

use serde::Deserialize;
use weir_filter::crypto::{self, Hash};
use weir_filter::validate::{check_header_name, check_realm};
use weir_filter::{
    Action, Filter, HostError, LocalResponse, Phases, Request, export_filter, log, metrics,
};

mod query;

#[cfg(test)]
mod tests;

/// The filter's config (JSON from the proxy; YAML in the proxy's config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The accepted keys, one per consumer (a consumer may have several).
    pub keys: Vec<KeyEntry>,
    /// Request header carrying the key; `null` to read only `query`. Default: `x-api-key`.
    #[serde(default = "default_header")]
    pub header: Option<String>,
    /// Query parameter carrying the key (used when the header is absent). Default: none.
    #[serde(default)]
    pub query: Option<String>,
    /// Request header the consumer's name is sent upstream in. Default: `x-consumer`.
    #[serde(default = "default_consumer_header")]
    pub consumer_header: String,
    /// Whether the key (header and query parameter) is removed before the request goes
    /// upstream. Default: true.
    #[serde(default = "weir_filter::defaults::yes")]
    pub strip_key: bool,
    /// The realm in `WWW-Authenticate`. Default: `weir`.
    #[serde(default = "weir_filter::defaults::realm")]
    pub realm: String,
}

/// One accepted key: `{ consumer, sha256 }`, or `{ consumer, key }` for development.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Who the key belongs to; sent upstream in `consumer_header`.
    pub consumer: String,
    /// Lowercase or uppercase hex of SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    #[serde(default)]
    pub sha256: Option<String>,
    /// The key in clear text: for development only (a warning is logged at configure).
    #[serde(default)]
    pub key: Option<String>,
}

fn default_header() -> Option<String> {
    Some("x-api-key".to_owned())
}
fn default_consumer_header() -> String {
    "x-consumer".to_owned()
}

/// The configured filter.
pub struct KeyAuth {
    /// sha256(key) → consumer.
    consumers: HashMap<[u8; 32], String>,
    header: Option<String>,
    query: Option<String>,
    consumer_header: String,
    strip_key: bool,
    /// `ApiKey realm="..."`.
    challenge: String,
}

impl Filter for KeyAuth {
    type Config = Config;
    type Context = ();
    const PHASES: Phases = Phases::REQUEST_HEADERS;

    fn new(config: Config) -> Result<Self, String> {
        if config.keys.is_empty() {
            return Err("keys: at least one key is required".to_owned());
        }
        if let Some(h) = &config.header {
            check_header_name("header", h)?;
        }
        let header = config.header;
        if let Some(q) = &config.query
            && q.is_empty()
        {
            return Err(
                "query: must not be empty (leave it out to read only the header)".to_owned(),
            );
        }
        if header.is_none() && config.query.is_none() {
            return Err(
                "header is null and query is not set: give at least one place to read the key from"
                    .to_owned(),
            );
        }
        check_header_name("consumer_header", &config.consumer_header)?;
        if header
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(&config.consumer_header))
        {
            return Err("consumer_header: must differ from header".to_owned());
        }
        check_realm(&config.realm)?;
        let mut consumers = HashMap::new();
        let mut first_use: HashMap<[u8; 32], usize> = HashMap::new();
        for (i, entry) in config.keys.iter().enumerate() {
            let at = format!("keys[{i}]");
            if entry.consumer.is_empty() || !entry.consumer.chars().all(|c| !c.is_control()) {
                return Err(format!(
                    "{at}.consumer: {:?} must be non-empty with no control characters (it becomes a header value)",
                    entry.consumer
                ));
            }
            let hash = match (&entry.sha256, &entry.key) {
                (Some(_), Some(_)) => {
                    return Err(format!("{at}: give either sha256 or key, not both"));
                }
                (None, None) => return Err(format!("{at}: give sha256 (or key, for development)")),
                (Some(hex), None) => parse_sha256(hex).ok_or_else(|| {
                    format!("{at}.sha256: expected 64 hex digits (the SHA-256 of the key)")
                })?,
                (None, Some(key)) => {
                    if key.is_empty() {
                        return Err(format!("{at}.key: must not be empty"));
                    }
                    log::warn(&format!(
                        "key-auth: {at} (consumer {:?}) is a plain-text key: use it for development only; in production give sha256: printf %s KEY | sha256sum",
                        entry.consumer
                    ));
                    sha256(key.as_bytes())
                }
            };
            if let Some(j) = first_use.insert(hash, i) {
                return Err(format!("{at}: the same key as keys[{j}]"));
            }
            consumers.insert(hash, entry.consumer.clone());
        }
        Ok(KeyAuth {
            consumers,
            header,
            query: config.query,
            consumer_header: config.consumer_header,
            strip_key: config.strip_key,
            challenge: format!("ApiKey realm=\"{}\"", config.realm),
        })
    }

    fn on_request_headers(&self, req: &mut Request, _: &mut ()) -> Action {
        let Some(key) = self.presented_key(req) else {
            return self.deny("missing_api_key", "an api key is required");
        };
        let hash = sha256(&key);
        let Some(consumer) = self.consumers.get(&hash) else {
            return self.deny("invalid_api_key", "unknown api key");
        };
        match self.forward(req, consumer) {
            Ok(()) => {
                count("allowed");
                Action::Continue
            }
            Err(e) => {
                log::error(&format!("key-auth: {e}"));
                count("denied");
                Action::respond(500)
            }
        }
    }
}

export_filter!(KeyAuth);

impl KeyAuth {
    /// The key from the header if present, else from the query parameter.
    fn presented_key(&self, req: &Request) -> Option<Vec<u8>> {
        if let Some(header) = &self.header
            && let Some(value) = req.header(header)
        {
            let value = value.trim();
            if !value.is_empty() {
                return Some(value.as_bytes().to_vec());
            }
        }
        let name = self.query.as_deref()?;
        query::first_value(&req.path(), name).filter(|v| !v.is_empty())
    }

    /// The request as it goes upstream: the consumer header set (replacing the client's),
    /// the key removed.
    fn forward(&self, req: &mut Request, consumer: &str) -> Result<(), HostError> {
        req.set_header(&self.consumer_header, consumer)?;
        if self.strip_key {
            if let Some(header) = &self.header {
                req.remove_header(header)?;
            }
            if let Some(name) = &self.query {
                let path = req.path();
                if let Some(stripped) = query::without(&path, name) {
                    req.set_path(&stripped)?;
                }
            }
        }
        Ok(())
    }

    fn deny(&self, error: &str, description: &str) -> Action {
        count("denied");
        LocalResponse::unauthorized(&self.challenge, error, description).into()
    }
}

/// Counts a decision (best effort: counting never changes it).
fn count(result: &str) {
    metrics::count("key_auth_decisions_total", &[("result", result)]);
}

/// 64 hex digits (either case) → 32 bytes.
/// SHA-256 by the proxy's native crypto (a digest is always 32 bytes).
fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&crypto::digest(Hash::Sha256, bytes));
    out
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}
