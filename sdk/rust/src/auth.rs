//! Pieces every bearer-token filter needs, written once (RFC 6750): reading the token, the
//! `WWW-Authenticate` challenges, forwarding what the token says as request headers, and what
//! the request's trace span says about the decision (an `auth.refused` event with its `error`
//! and `reason`; `enduser.id` for an accepted caller).
//!
//! ```
//! use std::collections::BTreeMap;
//! use weir_filter::auth::{Bearer, ForwardHeaders, bearer_token};
//!
//! assert_eq!(bearer_token(Some("bearer abc")), Some("abc".to_owned()));
//! assert_eq!(bearer_token(Some("Basic YTpi")), None);
//!
//! let bearer = Bearer::new("api").unwrap();
//! let refused = bearer.invalid_token("the token has expired");
//! let r = refused.local_response().unwrap();
//! assert_eq!(r.status, 401);
//! assert_eq!(
//!     r.header_value("www-authenticate"),
//!     Some(r#"Bearer realm="api", error="invalid_token", error_description="the token has expired""#)
//! );
//!
//! let forward = BTreeMap::from([("sub".to_owned(), "Authorization".to_owned())]);
//! assert!(ForwardHeaders::new("claim", forward).is_err());
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::validate::{check_header_name, check_realm};
use crate::{Action, HostError, LocalResponse, Request, log, trace};

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive). `None` when
/// there is no such header, no token after the scheme, or another scheme (RFC 6750 §3: then the
/// challenge carries no error).
pub fn bearer_token(authorization: Option<&str>) -> Option<String> {
    let header = authorization?.trim();
    let (scheme, rest) = header.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// The `Bearer realm="..."` challenge of one filter, and the answers that carry it.
#[derive(Debug, Clone)]
pub struct Bearer {
    /// `Bearer realm="..."`, without error attributes.
    challenge: String,
}

impl Bearer {
    /// A challenge for `realm` (checked: printable ASCII without quotes or backslashes, so it
    /// cannot break the header's syntax).
    pub fn new(realm: &str) -> Result<Self, String> {
        check_realm(realm)?;
        Ok(Self {
            challenge: format!("Bearer realm=\"{realm}\""),
        })
    }

    /// 401 for a request without a bearer token: the bare challenge (RFC 6750 §3.1).
    pub fn missing_token(&self) -> Action {
        let description = "a bearer token is required";
        refused("missing_token", description);
        LocalResponse::unauthorized(&self.challenge, "missing_token", description).into()
    }

    /// 401 `invalid_token`: expired, revoked, malformed or foreign. `description` is the
    /// operator-facing reason; it must not quote the token.
    pub fn invalid_token(&self, description: &str) -> Action {
        refused("invalid_token", description);
        let challenge = format!(
            "{}, error=\"invalid_token\", error_description=\"{description}\"",
            self.challenge
        );
        LocalResponse::unauthorized(&challenge, "invalid_token", description).into()
    }

    /// 403 `insufficient_scope`, naming the scopes the resource needs.
    pub fn insufficient_scope(&self, scopes: &[String], description: &str) -> Action {
        refused("insufficient_scope", description);
        let challenge = format!(
            "{}, error=\"insufficient_scope\", error_description=\"{description}\", scope=\"{}\"",
            self.challenge,
            scopes.join(" ")
        );
        let body =
            serde_json::json!({ "error": "insufficient_scope", "error_description": description });
        LocalResponse::json(403, &body)
            .header("www-authenticate", &challenge)
            .into()
    }
}

/// Notes a refusal on the request's trace span: an `auth.refused` event (best effort: tracing
/// never changes the decision).
fn refused(error: &str, reason: &str) {
    let _ = trace::add_event("auth.refused", &[("error", error), ("reason", reason)]);
}

/// Notes the accepted caller on the request's trace span as `enduser.id` (OpenTelemetry's
/// attribute for the authenticated user), when the token names one. Best effort.
pub fn identified(subject: Option<&serde_json::Value>) {
    if let Some(subject) = subject
        && trace::sampled()
    {
        let _ = trace::set_attribute("enduser.id", &header_value(subject));
    }
}

/// `forward_claims`: which of the token's members travel upstream, under which header.
#[derive(Debug, Clone, Default)]
pub struct ForwardHeaders {
    /// (member, header), in config order.
    pairs: Vec<(String, String)>,
}

impl ForwardHeaders {
    /// Checks a `forward_claims` map: member names non-empty, header names valid, none of them
    /// `authorization` (the token's own header), and no header named twice (whatever its case).
    /// `noun` names a member in errors (`claim`, `member`).
    pub fn new(noun: &str, map: BTreeMap<String, String>) -> Result<Self, String> {
        let mut headers = BTreeSet::new();
        for (member, header) in &map {
            if member.is_empty() {
                return Err(format!("forward_claims: {noun} names must not be empty"));
            }
            check_header_name(&format!("forward_claims.{member}"), header)?;
            if header.eq_ignore_ascii_case("authorization") {
                return Err(format!(
                    "forward_claims.{member}: cannot forward into the authorization header"
                ));
            }
            if !headers.insert(header.to_ascii_lowercase()) {
                return Err(format!(
                    "forward_claims.{member}: header {header:?} is already set from another {noun}"
                ));
            }
        }
        Ok(Self {
            pairs: map.into_iter().collect(),
        })
    }

    /// The members forwarded.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(m, _)| m.as_str())
    }

    /// Sets each header from `value(member)`, replacing every value the client sent under that
    /// name, so what the client sent never passes for what the token says. A member that is
    /// missing, or whose value no header can carry (control characters: with a warning), has
    /// its header removed.
    pub fn apply(
        &self,
        req: &mut Request,
        mut value: impl FnMut(&str) -> Option<String>,
    ) -> Result<(), HostError> {
        for (member, header) in &self.pairs {
            // Setting replaces every value the client sent: only a member that is not set
            // needs a removal of its own (one host call per header either way).
            let Some(v) = value(member) else {
                req.remove_header(header)?;
                continue;
            };
            if let Err(e) = req.set_header(header, &v) {
                req.remove_header(header)?;
                log::warn(&format!("{member:?} not forwarded as {header}: {e}"));
            }
        }
        Ok(())
    }
}

/// A token member as a header value: a string as it is, an array of strings joined with commas
/// (`aud`, `groups`), anything else as compact JSON.
pub fn header_value(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}
