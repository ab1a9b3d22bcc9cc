//! JWS compact serialization (RFC 7515) and the registered claims checks (RFC 7519 §4.1).
//!
//! Every function here is total: any input, however malformed, is an `Err(Reject)`, never a
//! panic (a panic would trap the instance and hand the request to the failure policy).

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

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
pub struct Header<'a> {
    #[serde(borrow)]
    pub alg: Cow<'a, str>,
    #[serde(default, borrow)]
    pub kid: Option<Cow<'a, str>>,
    /// RFC 7515 §4.1.11: extensions the verifier must understand. The filter understands
    /// none, so a token that has any is refused.
    #[serde(default, borrow)]
    pub crit: Option<&'a RawValue>,
}

/// A compact JWS split and base64url-decoded; its JSON is parsed on demand, borrowing from it.
#[derive(Debug)]
pub struct Decoded<'a> {
    header: Vec<u8>,
    payload: Vec<u8>,
    /// `base64url(header) . base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

/// The claims set: each member's name and its JSON text, borrowed from the decoded payload.
/// Members are read by name a handful of times per token, so a list beats a map (no
/// allocation per member, no tree); a value is parsed only when a check or a header needs it.
#[derive(Debug)]
pub struct Claims<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Claims<'a> {
    /// A member's JSON text. A name given twice is its last value (what a map would keep).
    pub fn raw(&self, name: &str) -> Option<&'a RawValue> {
        (self.members.iter().rev())
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }

    /// A member as a JSON value (parsed now).
    pub fn value(&self, name: &str) -> Option<Value> {
        serde_json::from_str(self.raw(name)?.get()).ok()
    }

    /// A member as a header value: a string as it is, otherwise what
    /// [`weir_filter::auth::header_value`] makes of it. A member whose JSON does not decode (a
    /// string with a lone surrogate escape) is an error: the token is malformed.
    pub fn header_value(&self, name: &str) -> Result<Option<String>, Reject> {
        let Some(raw) = self.raw(name).map(RawValue::get) else {
            return Ok(None);
        };
        if let Some(s) = json_str(raw) {
            return Ok(Some(s.into_owned()));
        }
        let value: Value = serde_json::from_str(raw).map_err(|_| Reject::Malformed)?;
        Ok(Some(weir_filter::auth::header_value(&value)))
    }

    fn str(&self, name: &str) -> Option<Result<Cow<'a, str>, Reject>> {
        Some(json_str(self.raw(name)?.get()).ok_or(Reject::BadClaims))
    }
}

/// A JSON string's text, borrowed when it has no escapes (serde's `Cow<str>` always copies).
fn json_str(raw: &str) -> Option<Cow<'_, str>> {
    match serde_json::from_str::<&str>(raw) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(raw).ok().map(Cow::Owned),
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Claims<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Claims<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Name(k)) = map.next_key()? {
                    members.push((k, map.next_value()?));
                }
                Ok(Claims { members })
            }
        }
        d.deserialize_map(Members)
    }
}

/// A member name, borrowed unless it has escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Splits and decodes a compact JWS. Neither its JSON nor its signature is checked here.
pub fn decode(token: &str) -> Result<Decoded<'_>, Reject> {
    let bytes = token.as_bytes();
    // Each segment is decoded up to the first byte outside the alphabet, which must be the
    // dot that ends it (the signature: the end of the token). One pass, no split.
    let segment = |from: usize, end: Option<u8>| -> Result<(Vec<u8>, usize), Reject> {
        let rest = bytes.get(from..).ok_or(Reject::Malformed)?;
        let (decoded, read) = base64url(rest)?;
        if rest.get(read).copied() != end {
            return Err(Reject::Malformed);
        }
        Ok((decoded, from + read))
    };
    let (header, h) = segment(0, Some(b'.'))?;
    let (payload, p) = segment(h + 1, Some(b'.'))?;
    // `alg: none` tokens end with an empty signature; let the algorithm check name them.
    let (signature, _) = segment(p + 1, None)?;
    if header.is_empty() || payload.is_empty() {
        return Err(Reject::Malformed);
    }
    Ok(Decoded {
        header,
        payload,
        // The signature covers `header . payload` exactly as sent.
        signing_input: &bytes[..p],
        signature,
    })
}

impl Decoded<'_> {
    /// The JOSE header; one with `crit` is refused.
    pub fn header(&self) -> Result<Header<'_>, Reject> {
        let header: Header =
            serde_json::from_str(utf8(&self.header)?).map_err(|_| Reject::Malformed)?;
        if header.crit.is_some() {
            return Err(Reject::Critical);
        }
        Ok(header)
    }

    /// The claims set, which must be a JSON object.
    pub fn claims(&self) -> Result<Claims<'_>, Reject> {
        // Validated as text once, so no string in it is validated again.
        serde_json::from_str(utf8(&self.payload)?).map_err(|_| Reject::Malformed)
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Reject> {
    std::str::from_utf8(bytes).map_err(|_| Reject::Malformed)
}

/// base64url's alphabet: a byte's 6-bit value, or [`NOT_BASE64`]. A `static`: a `const` array
/// indexed at run time may be copied to the stack at each use.
static BASE64URL: [u8; 256] = {
    let mut t = [NOT_BASE64; 256];
    let mut i = 0;
    while i < 64 {
        let c = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[i];
        t[c as usize] = i as u8;
        i += 1;
    }
    t
};
const NOT_BASE64: u8 = 0x80;

/// Decodes unpadded base64url (RFC 7515 §2) from the start of `s` up to its first byte outside
/// the alphabet (or its end): the bytes, and how many input bytes were read. A length of 1
/// mod 4, or unused bits that are not zero (a second spelling of the same bytes), is malformed,
/// as RFC 4648 §3.5 lets a decoder require; padding (`=`) is outside the alphabet.
pub(crate) fn base64url(s: &[u8]) -> Result<(Vec<u8>, usize), Reject> {
    // Written by index into a buffer sized once: in wasm, growing a vector three bytes at a
    // time costs a capacity check and a `memcpy` call each.
    let mut out = vec![0u8; s.len() / 4 * 3 + 2];
    let value = |i: usize| BASE64URL[usize::from(s[i])];
    let (mut i, mut o) = (0, 0);
    while i + 4 <= s.len() {
        let (a, b, c, d) = (value(i), value(i + 1), value(i + 2), value(i + 3));
        if (a | b | c | d) & NOT_BASE64 != 0 {
            break;
        }
        let v = u32::from(a) << 18 | u32::from(b) << 12 | u32::from(c) << 6 | u32::from(d);
        out[o] = (v >> 16) as u8;
        out[o + 1] = (v >> 8) as u8;
        out[o + 2] = v as u8;
        i += 4;
        o += 3;
    }
    // At most three more: the quartet above stopped at a byte outside the alphabet, or the end.
    let mut tail = [0u32; 3];
    let mut k = 0;
    while k < 3 && i < s.len() && value(i) & NOT_BASE64 == 0 {
        tail[k] = u32::from(value(i));
        k += 1;
        i += 1;
    }
    match k {
        0 => {}
        2 if tail[1] & 0xF == 0 => {
            out[o] = (tail[0] << 2 | tail[1] >> 4) as u8;
            o += 1;
        }
        3 if tail[2] & 0x3 == 0 => {
            let v = tail[0] << 12 | tail[1] << 6 | tail[2];
            out[o] = (v >> 10) as u8;
            out[o + 1] = (v >> 2) as u8;
            o += 2;
        }
        _ => return Err(Reject::Malformed),
    }
    out.truncate(o);
    Ok((out, i))
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
    claims: &Claims<'_>,
    rules: &Rules,
    issuer: Option<&str>,
    now_ms: u64,
) -> Result<(), Reject> {
    // NumericDate is seconds, possibly fractional (RFC 7519 §2); compare in milliseconds.
    let now = now_ms as f64;
    let leeway = rules.leeway_ms as f64;
    match claims.raw("exp") {
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
    if let Some(nbf) = claims.raw("nbf") {
        let nbf = numeric_date(nbf)?;
        if now + leeway < nbf * 1000.0 {
            return Err(Reject::NotYetValid);
        }
    }
    if let Some(issuer) = rules.issuer.as_deref().or(issuer) {
        match claims.str("iss") {
            Some(Ok(iss)) if iss == issuer => {}
            _ => return Err(Reject::BadIssuer),
        }
    }
    if !rules.audiences.is_empty() {
        let accepted = |aud: &str| rules.audiences.iter().any(|a| a == aud);
        let ok = match claims.raw("aud").map(RawValue::get) {
            Some(raw) if raw.starts_with('"') => json_str(raw).is_some_and(|aud| accepted(&aud)),
            Some(raw) if raw.starts_with('[') => serde_json::from_str::<Vec<Value>>(raw)
                .is_ok_and(|auds| auds.iter().any(|a| a.as_str().is_some_and(accepted))),
            _ => false,
        };
        if !ok {
            return Err(Reject::BadAudience);
        }
    }
    Ok(())
}

/// A NumericDate: a JSON number (a string or anything else is refused).
fn numeric_date(raw: &RawValue) -> Result<f64, Reject> {
    serde_json::from_str::<f64>(raw.get())
        .ok()
        .filter(|v| v.is_finite())
        .ok_or(Reject::BadClaims)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    /// The segment decoder against the base64 crate's strict unpadded base64url, on every
    /// string of up to 5 bytes over a hostile alphabet (all its values, padding, the standard
    /// alphabet's `+/`, the dot, space, NUL, a non-ASCII byte) and on longer pseudo-random
    /// ones: a whole segment decodes to the same bytes, or is refused by both.
    #[test]
    fn segments_decode_as_strict_base64url_does() {
        let hostile = b"AQgw-_=+/. \0\xff";
        let mut check = |s: &[u8]| {
            let ours = base64url(s).ok().filter(|(_, read)| *read == s.len());
            let theirs = URL_SAFE_NO_PAD.decode(s).ok();
            assert_eq!(
                ours.map(|(v, _)| v),
                theirs,
                "{:?}",
                String::from_utf8_lossy(s)
            );
        };
        let mut s = Vec::new();
        fn all(s: &mut Vec<u8>, len: usize, alphabet: &[u8], check: &mut impl FnMut(&[u8])) {
            check(s);
            if len == 0 {
                return;
            }
            for &c in alphabet {
                s.push(c);
                all(s, len - 1, alphabet, check);
                s.pop();
            }
        }
        all(&mut s, 5, hostile, &mut check);
        let alphabet: Vec<u8> = (0..=255u8)
            .filter(|b| BASE64URL[*b as usize] != NOT_BASE64)
            .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400 {
            let mut s: Vec<u8> = (0..len)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    alphabet[(x >> 33) as usize % 64]
                })
                .collect();
            check(&s);
            // One byte outside the alphabet somewhere: refused whole, read up to it.
            if len > 0 {
                let at = (x >> 20) as usize % len;
                s[at] = b'.';
                check(&s);
                assert!(base64url(&s).map_or(true, |(_, read)| read <= at));
            }
        }
    }

    /// A token is three segments and two dots: any other shape is malformed, and what the
    /// signature covers is the first two segments exactly as sent.
    #[test]
    fn tokens_split_into_three_segments() {
        let ok = decode("eyJ9.eyJ9.c2ln").map(|d| (d.signing_input, d.signature));
        assert_eq!(ok, Ok((&b"eyJ9.eyJ9"[..], b"sig".to_vec())));
        assert_eq!(decode("eyJ9.eyJ9.").map(|d| d.signature), Ok(vec![]));
        for bad in [
            "",
            ".",
            "..",
            "eyJ9",
            "eyJ9.eyJ9",
            ".eyJ9.c2ln",
            "eyJ9..c2ln",
            "eyJ9.eyJ9.c2ln.",
            "eyJ9.eyJ9.c2ln.c2ln",
            "eyJ9.eyJ9.c2l=",
            "eyJ9=.eyJ9.c2ln",
            "eyJ9.ey J9.c2ln",
            "eyJ9.eyJ9.c2lu+",
            "eyJ9.e.c2ln",
            "eyJ9.eyJ9.c2m",
        ] {
            assert_eq!(decode(bad).err(), Some(Reject::Malformed), "{bad:?}");
        }
    }
}
