//! The `jwt-auth` filter: verifies `Authorization: Bearer <jwt>` on every request.
//!
//! Algorithms HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384 and EdDSA (Ed25519),
//! verified by the proxy's native crypto (`weir_filter::crypto`), with keys from the config
//! (`keys`) and/or an inline JWKS
//! document (`jwks`); checks `exp` / `nbf` (with leeway), `iss` and `aud`; forwards chosen
//! claims upstream as request headers; answers RFC 6750 401s otherwise. See the crate's
//! README for the config reference.
//!
//! Key selection: a token whose header names a `kid` is checked with the keys of that kid
//! (whose algorithm must be the token's, or the token is refused); a `kid` no key has, or no
//! `kid` at all, is checked with every key of the token's algorithm that has no `kid` of its
//! own (with no `kid` in the token: every key of its algorithm). `alg: none` and algorithms
//! not listed above are always refused.

use std::collections::BTreeMap;

use serde::Deserialize;
use weir_filter::auth::{Bearer, ForwardHeaders, bearer_token};
use weir_filter::{Action, Filter, Phases, Request, clock, export_filter, log, metrics};

mod discovery;
mod keys;
mod token;

#[cfg(test)]
mod tests;

use discovery::Discovery;
pub use discovery::DiscoveryConfig;
pub use keys::{Alg, Jwks, KeyConfig};
use keys::{JwkOutcome, Key};
use token::{Reject, Rules};

/// The filter's config (JSON from the proxy; YAML in the proxy's config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Verification keys. Default: none (then `jwks` must have keys).
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JWKS document (`{ "keys": [ JWK, ... ] }`), inline. Default: none.
    #[serde(default)]
    pub jwks: Option<Jwks>,
    /// OpenID Connect discovery: the issuer's keys fetched (and kept fresh) through callouts.
    /// Default: none.
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
    /// Required `iss` claim. Default: not checked.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The `aud` claim must contain at least one of these. Default: empty, not checked.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds. Default: 30.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// Whether a token without `exp` is refused. Default: true.
    #[serde(default = "weir_filter::defaults::yes")]
    pub require_exp: bool,
    /// Claim name → request header set from it upstream. Default: none.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Whether the `Authorization` header is removed before the request goes upstream.
    /// Default: false.
    #[serde(default)]
    pub strip_token: bool,
    /// The realm in `WWW-Authenticate`. Default: `weir`.
    #[serde(default = "weir_filter::defaults::realm")]
    pub realm: String,
}

fn default_leeway_s() -> u64 {
    30
}

/// Longest leeway accepted: more than a day is a misconfiguration, not clock skew.
const MAX_LEEWAY_S: u64 = 86_400;

/// The configured filter.
pub struct JwtAuth {
    keys: Vec<Key>,
    /// Keys from the issuer's discovery document, when configured.
    discovery: Option<Discovery>,
    rules: Rules,
    forward: ForwardHeaders,
    strip_token: bool,
    bearer: Bearer,
}

impl Filter for JwtAuth {
    type Config = Config;
    type Context = ();
    const PHASES: Phases = Phases::REQUEST_HEADERS;

    fn new(config: Config) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, k) in config.keys.iter().enumerate() {
            keys.push(keys::from_config(&format!("keys[{i}]"), k)?);
        }
        if let Some(jwks) = &config.jwks {
            for (i, jwk) in jwks.keys.iter().enumerate() {
                match keys::from_jwk(&format!("jwks.keys[{i}]"), jwk)? {
                    JwkOutcome::Key(k) => keys.push(k),
                    JwkOutcome::Skipped(why) => log::warn(&format!("jwt-auth: {why}")),
                }
            }
        }
        if keys.is_empty() && config.discovery.is_none() {
            return Err(
                "no usable keys: give `keys`, a `jwks` with at least one supported key, or `discovery`"
                    .to_owned(),
            );
        }
        let discovery = config.discovery.map(Discovery::new).transpose()?;
        if config.issuer.as_deref() == Some("") {
            return Err("issuer: must not be empty (leave it out to accept any issuer)".to_owned());
        }
        if config.audiences.iter().any(String::is_empty) {
            return Err("audiences: entries must not be empty".to_owned());
        }
        if config.leeway_s > MAX_LEEWAY_S {
            return Err(format!("leeway_s: at most {MAX_LEEWAY_S} seconds"));
        }
        let bearer = Bearer::new(&config.realm)?;
        let forward = ForwardHeaders::new("claim", config.forward_claims)?;
        Ok(JwtAuth {
            keys,
            discovery,
            rules: Rules {
                issuer: config.issuer,
                audiences: config.audiences,
                leeway_ms: config.leeway_s * 1000,
                require_exp: config.require_exp,
            },
            forward,
            strip_token: config.strip_token,
            bearer,
        })
    }

    fn on_request_headers(&self, req: &mut Request, _: &mut ()) -> Action {
        let Some(token) = bearer_token(req.header("authorization").as_deref()) else {
            count("denied");
            return self.bearer.missing_token();
        };
        let verified = token::decode(&token).and_then(|decoded| {
            let claims = self.verify(&decoded, clock::now_ms())?;
            // A forwarded claim is decoded only here; one that does not decode refuses the
            // token (the headers already set go nowhere: the request is answered 401).
            let mut undecodable = None;
            let forwarded = (self.forward).apply(req, |claim| match claims.header_value(claim) {
                Ok(value) => value,
                Err(e) => {
                    undecodable = Some(e);
                    None
                }
            });
            if let Some(reject) = undecodable {
                return Err(reject);
            }
            if weir_filter::trace::sampled() {
                weir_filter::auth::identified(claims.value("sub").as_ref());
            }
            Ok(forwarded)
        });
        match verified {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return internal_error(&e),
            Err(reject) => {
                count("denied");
                log::debug(&format!(
                    "jwt-auth: token refused: {}",
                    reject.description()
                ));
                return self.bearer.invalid_token(reject.description());
            }
        }
        if self.strip_token
            && let Err(e) = req.remove_header("authorization")
        {
            return internal_error(&e);
        }
        count("allowed");
        Action::Continue
    }
}

export_filter!(JwtAuth);

impl JwtAuth {
    /// Verifies a decoded compact JWS at `now_ms`: algorithm, key, signature, then claims.
    fn verify<'t>(
        &self,
        token: &'t token::Decoded<'_>,
        now_ms: u64,
    ) -> Result<token::Claims<'t>, Reject> {
        let header = token.header()?;
        let claims = token.claims()?;
        let alg = Alg::parse(&header.alg).ok_or(Reject::UnsupportedAlg)?;
        let kid = header.kid.as_deref();
        if let Some(d) = &self.discovery {
            d.refresh_if_due(false);
            // A kid nobody has: the provider may have rotated its keys.
            if kid.is_some_and(|kid| !self.has_kid(kid)) {
                d.refresh_if_due(true);
            }
        }
        let fetched = self.discovery.as_ref().map(|d| d.fetched.borrow());
        let all = (self.keys.iter()).chain(fetched.iter().flat_map(|f| f.keys.iter()));
        let candidates = candidates(all, alg, kid)?;
        if !candidates
            .iter()
            .any(|k| k.verify(token.signing_input, &token.signature))
        {
            return Err(Reject::BadSignature);
        }
        let discovered_issuer = fetched
            .as_ref()
            .filter(|f| f.at_ms.is_some())
            .map(|f| f.issuer.as_str());
        token::check_claims(&claims, &self.rules, discovered_issuer, now_ms)?;
        Ok(claims)
    }

    /// Whether any key, configured or discovered, has this kid.
    fn has_kid(&self, kid: &str) -> bool {
        let named = |k: &Key| k.kid.as_deref() == Some(kid);
        self.keys.iter().any(named)
            || self
                .discovery
                .as_ref()
                .is_some_and(|d| d.fetched.borrow().keys.iter().any(named))
    }
}

/// The keys (of `all`) a token with this `alg` and `kid` may be signed with.
fn candidates<'k>(
    all: impl Iterator<Item = &'k Key> + Clone,
    alg: Alg,
    kid: Option<&str>,
) -> Result<Vec<&'k Key>, Reject> {
    if let Some(kid) = kid {
        let named: Vec<&Key> = all
            .clone()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect();
        if !named.is_empty() {
            let fitting: Vec<&Key> = named.into_iter().filter(|k| k.alg() == alg).collect();
            return if fitting.is_empty() {
                // A key's algorithm is fixed: an HS256 token naming an RSA key is the
                // classic key-confusion attack.
                Err(Reject::AlgKeyMismatch)
            } else {
                Ok(fitting)
            };
        }
        let anonymous: Vec<&Key> = all.filter(|k| k.kid.is_none() && k.alg() == alg).collect();
        return if anonymous.is_empty() {
            Err(Reject::UnknownKid)
        } else {
            Ok(anonymous)
        };
    }
    let same_alg: Vec<&Key> = all.filter(|k| k.alg() == alg).collect();
    if same_alg.is_empty() {
        Err(Reject::NoKeyForAlg)
    } else {
        Ok(same_alg)
    }
}

/// Counts a decision (best effort: counting never changes it).
fn count(result: &str) {
    metrics::count("jwt_auth_decisions_total", &[("result", result)]);
}

fn internal_error(e: &weir_filter::HostError) -> Action {
    log::error(&format!("jwt-auth: {e}"));
    count("denied");
    Action::respond(500)
}
