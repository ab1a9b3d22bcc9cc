//! JWS compact serialization (RFC 7515) and the registered claims checks (RFC 7519 §4.1).
//!
//! Every function here is total: any input, however malformed, is an `Err(Reject)`, never a
//! panic (a panic would trap the instance and hand the request to the failure policy).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a token was refused: the `error_description` of the 401 (RFC 6750 §3).
///
/// The text is fixed per reason and never echoes token content, so the challenge header
/// always holds only the characters RFC 6750 allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    UnsupportedAlg,
    Critical,
    UnknownKid,
    AlgKeyMismatch,
    NoKeyForAlg,
    BadSignature,
    Expired,
    NotYetValid,
    NoExpiry,
    BadIssuer,
    BadAudience,
    BadClaims,
}

impl Reject {
    pub fn description(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed token",
            Reject::UnsupportedAlg => "unsupported algorithm",
            Reject::Critical => "unsupported critical header",
            Reject::UnknownKid => "unknown key id",
            Reject::AlgKeyMismatch => "algorithm does not match the key",
            Reject::NoKeyForAlg => "no key for this algorithm",
            Reject::BadSignature => "invalid signature",
            Reject::Expired => "token expired",
            Reject::NotYetValid => "token not yet valid",
            Reject::NoExpiry => "token has no expiry",
            Reject::BadIssuer => "invalid issuer",
            Reject::BadAudience => "invalid audience",
            Reject::BadClaims => "invalid claims",
        }
    }
}

/// The JOSE header members the filter reads; others (`typ`, `cty`, `x5t`...) are ignored.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    /// RFC 7515 §4.1.11: extensions the verifier must understand. The filter understands
    /// none, so a token that has any is refused.
    #[serde(default)]
    pub crit: Option<Value>,
}

/// A decoded, not yet verified token.
#[derive(Debug)]
pub struct Token<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// `base64url(header) . base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS. The signature is not checked here.
pub fn parse(token: &str) -> Result<Token<'_>, Reject> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::Malformed);
    };
    // The signature covers `header . payload` exactly as sent.
    let signed_len = header.len() + 1 + payload.len();
    let header_bytes = decode(header)?;
    let header: Header = serde_json::from_slice(&header_bytes).map_err(|_| Reject::Malformed)?;
    if header.crit.is_some() {
        return Err(Reject::Critical);
    }
    let claims = match serde_json::from_slice::<Value>(&decode(payload)?) {
        Ok(Value::Object(map)) => map,
        _ => return Err(Reject::Malformed),
    };
    let signature = if signature.is_empty() {
        // `alg: none` tokens end with an empty signature; let the algorithm check name them.
        Vec::new()
    } else {
        decode(signature)?
    };
    let signing_input = token
        .as_bytes()
        .get(..signed_len)
        .ok_or(Reject::Malformed)?;
    Ok(Token {
        header,
        claims,
        signing_input,
        signature,
    })
}

fn decode(part: &str) -> Result<Vec<u8>, Reject> {
    if part.is_empty() {
        return Err(Reject::Malformed);
    }
    URL_SAFE_NO_PAD.decode(part).map_err(|_| Reject::Malformed)
}

/// What the claims must satisfy.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// `aud` must contain one of these (if non-empty).
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in milliseconds.
    pub leeway_ms: u64,
    /// Whether a token without `exp` is refused.
    pub require_exp: bool,
}

/// Checks `exp`, `nbf`, `iss` and `aud` at time `now_ms` (milliseconds since the epoch);
/// `issuer` is the required `iss` when the rules name none (the one OIDC discovery found).
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &Rules,
    issuer: Option<&str>,
    now_ms: u64,
) -> Result<(), Reject> {
    // NumericDate is seconds, possibly fractional (RFC 7519 §2); compare in milliseconds.
    let now = now_ms as f64;
    let leeway = rules.leeway_ms as f64;
    match claims.get("exp") {
        Some(exp) => {
            let exp = numeric_date(exp)?;
            // "The current time MUST be before the expiration time" (RFC 7519 §4.1.4).
            if now >= exp * 1000.0 + leeway {
                return Err(Reject::Expired);
            }
        }
        None if rules.require_exp => return Err(Reject::NoExpiry),
        None => {}
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf)?;
        if now + leeway < nbf * 1000.0 {
            return Err(Reject::NotYetValid);
        }
    }
    if let Some(issuer) = rules.issuer.as_deref().or(issuer) {
        match claims.get("iss") {
            Some(Value::String(iss)) if iss == issuer => {}
            _ => return Err(Reject::BadIssuer),
        }
    }
    if !rules.audiences.is_empty() {
        let accepted = |aud: &str| rules.audiences.iter().any(|a| a == aud);
        let ok = match claims.get("aud") {
            Some(Value::String(aud)) => accepted(aud),
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str().is_some_and(accepted)),
            _ => false,
        };
        if !ok {
            return Err(Reject::BadAudience);
        }
    }
    Ok(())
}

fn numeric_date(value: &Value) -> Result<f64, Reject> {
    value
        .as_f64()
        .filter(|v| v.is_finite())
        .ok_or(Reject::BadClaims)
}
