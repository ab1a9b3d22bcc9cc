//! The `basic-auth` filter: HTTP Basic authentication (RFC 7617) against hashed credentials
//! in the config.
//!
//! Passwords are stored as salted SHA-256 or PBKDF2-HMAC-SHA256 hashes (see [`hash`]). A
//! PBKDF2 check costs milliseconds, and a filter phase has a time budget (5 ms by default), so
//! each instance remembers the credentials it has accepted: the cache key is a SHA-256 of the
//! presented username and password under a random per-instance salt, so the cache holds
//! neither passwords nor hashes comparable across instances. Config changes replace
//! instances, so a changed password never meets a stale cache. See the crate's README for the
//! config reference.

use std::cell::RefCell;
use std::collections::HashMap;

use serde::Deserialize;
use weir_filter::crypto::{self, Hash};
use weir_filter::validate::{check_header_name, check_realm};
use weir_filter::{
    Action, Filter, HostError, LocalResponse, Phases, Request, clock, export_filter, log, metrics,
};

pub mod hash;

#[cfg(test)]
mod tests;

use hash::PasswordHash;

/// The filter's config (JSON from the proxy; YAML in the proxy's config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The accepted users.
    pub users: Vec<UserEntry>,
    /// Request header the authenticated username is sent upstream in. Default: `x-user`.
    #[serde(default = "default_user_header")]
    pub user_header: String,
    /// Whether the `Authorization` header is removed before the request goes upstream.
    /// Default: true.
    #[serde(default = "weir_filter::defaults::yes")]
    pub strip_authorization: bool,
    /// The realm in `WWW-Authenticate`. Default: `weir`.
    #[serde(default = "weir_filter::defaults::realm")]
    pub realm: String,
    /// Accepted credentials remembered per instance; 0 turns the cache off. Default: 1024,
    /// at most 65536.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
}

/// One user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The username (no `:`, no control characters).
    pub username: String,
    /// `sha256:<salt>:<hex>` or `pbkdf2-sha256:<iterations>:<salt_b64>:<hash_b64>`.
    pub password_hash: String,
}

fn default_user_header() -> String {
    "x-user".to_owned()
}
fn default_cache_size() -> usize {
    1024
}

/// Largest `cache_size`: about 100 bytes an entry must fit the instance's memory limit.
const MAX_CACHE_SIZE: usize = 65_536;

/// The configured filter.
pub struct BasicAuth {
    users: HashMap<String, PasswordHash>,
    /// Checked for unknown usernames, so they take as long as known ones.
    decoy: PasswordHash,
    user_header: String,
    strip_authorization: bool,
    /// `Basic realm="...", charset="UTF-8"`.
    challenge: String,
    cache_size: usize,
    cache_salt: Vec<u8>,
    /// Cache key → username. Phases run one at a time per instance, so a `RefCell` is enough.
    cache: RefCell<HashMap<[u8; 32], String>>,
}

impl Filter for BasicAuth {
    type Config = Config;
    type Context = ();
    const PHASES: Phases = Phases::REQUEST_HEADERS;

    fn new(config: Config) -> Result<Self, String> {
        if config.users.is_empty() {
            return Err("users: at least one user is required".to_owned());
        }
        let mut users = HashMap::new();
        let mut decoy: Option<PasswordHash> = None;
        for (i, user) in config.users.iter().enumerate() {
            let name = &user.username;
            if name.is_empty() || name.contains(':') || name.chars().any(char::is_control) {
                return Err(format!(
                    "users[{i}].username: {name:?} must be non-empty, without ':' or control characters"
                ));
            }
            let parsed = PasswordHash::parse(&user.password_hash)
                .map_err(|e| format!("users[{i}].password_hash: {e}"))?;
            if parsed.cost() > hash::BUDGET_ITERATIONS {
                log::warn(&format!(
                    "basic-auth: users[{i}] ({name:?}) uses {} PBKDF2 iterations: a first login may exceed the default 5ms phase budget; use at most {} or raise limits.time_per_phase",
                    parsed.cost(),
                    hash::BUDGET_ITERATIONS
                ));
            }
            if decoy.as_ref().is_none_or(|d| parsed.cost() > d.cost()) {
                decoy = Some(parsed.clone());
            }
            if users.insert(name.clone(), parsed).is_some() {
                return Err(format!("users[{i}].username: {name:?} appears twice"));
            }
        }
        check_header_name("user_header", &config.user_header)?;
        if config.user_header.eq_ignore_ascii_case("authorization") {
            return Err("user_header: must not be authorization".to_owned());
        }
        check_realm(&config.realm)?;
        if config.cache_size > MAX_CACHE_SIZE {
            return Err(format!(
                "cache_size: at most {MAX_CACHE_SIZE} (entries live in the instance's memory)"
            ));
        }
        Ok(BasicAuth {
            users,
            decoy: decoy.ok_or("users: at least one user is required")?,
            user_header: config.user_header,
            strip_authorization: config.strip_authorization,
            challenge: format!("Basic realm=\"{}\", charset=\"UTF-8\"", config.realm),
            cache_size: config.cache_size,
            cache_salt: clock::random_bytes(16),
            cache: RefCell::new(HashMap::new()),
        })
    }

    fn on_request_headers(&self, req: &mut Request, _: &mut ()) -> Action {
        let Some(encoded) = basic_credentials(req.header("authorization").as_deref()) else {
            return self.deny("missing_credentials", "basic credentials are required");
        };
        let Some((username, password)) = split_credentials(&encoded) else {
            return self.deny("invalid_credentials", "malformed basic credentials");
        };
        let Some(username) = self.authenticate(&username, &password) else {
            return self.deny("invalid_credentials", "invalid username or password");
        };
        match self.forward(req, &username) {
            Ok(()) => {
                count("allowed");
                Action::Continue
            }
            Err(e) => {
                log::error(&format!("basic-auth: {e}"));
                count("denied");
                Action::respond(500)
            }
        }
    }
}

export_filter!(BasicAuth);

impl BasicAuth {
    /// The username, if the password is right: from the cache, or by checking the hash.
    fn authenticate(&self, username: &str, password: &str) -> Option<String> {
        let key = self.cache_key(username, password);
        if let Some(user) = self.cache.borrow().get(&key) {
            return Some(user.clone());
        }
        let Some(hash) = self.users.get(username) else {
            // Unknown users cost as much as known ones: timing does not reveal who exists
            // (`black_box` keeps the optimizer from dropping a result nobody reads).
            std::hint::black_box(self.decoy.verify(std::hint::black_box(password.as_bytes())));
            return None;
        };
        if !hash.verify(password.as_bytes()) {
            return None;
        }
        if self.cache_size > 0 {
            let mut cache = self.cache.borrow_mut();
            if cache.len() >= self.cache_size {
                // Simple and bounded: a full cache starts over.
                cache.clear();
            }
            cache.insert(key, username.to_owned());
        }
        Some(username.to_owned())
    }

    fn cache_key(&self, username: &str, password: &str) -> [u8; 32] {
        // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        let input = [
            self.cache_salt.as_slice(),
            &(username.len() as u64).to_be_bytes(),
            username.as_bytes(),
            password.as_bytes(),
        ]
        .concat();
        let mut out = [0u8; 32];
        out.copy_from_slice(&crypto::digest(Hash::Sha256, &input));
        out
    }

    fn forward(&self, req: &mut Request, username: &str) -> Result<(), HostError> {
        req.set_header(&self.user_header, username)?;
        if self.strip_authorization {
            req.remove_header("authorization")?;
        }
        Ok(())
    }

    fn deny(&self, error: &str, description: &str) -> Action {
        count("denied");
        LocalResponse::unauthorized(&self.challenge, error, description).into()
    }

    /// How many accepted credentials the instance remembers (for tests).
    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache.borrow().len()
    }
}

/// The base64 part of `Authorization: Basic <base64>` (scheme case-insensitive); `None` when
/// the header is absent, empty or of another scheme.
fn basic_credentials(header: Option<&str>) -> Option<String> {
    let (scheme, rest) = header?.trim().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    Some(rest.trim().to_owned())
}

/// `user:password` from the base64 of a Basic credential; `None` if it is not base64, not
/// UTF-8 (the challenge announces `charset="UTF-8"`) or has no colon.
fn split_credentials(encoded: &str) -> Option<(String, String)> {
    let decoded = String::from_utf8(hash::decode_b64(encoded)?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Counts a decision (best effort: counting never changes it).
fn count(result: &str) {
    metrics::count("basic_auth_decisions_total", &[("result", result)]);
}
