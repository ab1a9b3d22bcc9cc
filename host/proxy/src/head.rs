//! Request integrity: the one host and the framing rules a request is routed, filtered, logged
//! and forwarded with. Decided once per request, here, so no later step can disagree.
//!
//! - **Host.** The URI authority (HTTP/2 `:authority`, an HTTP/1.1 absolute-form target) wins
//!   over the `Host` header and replaces it upstream (RFC 9112 §3.2.2); otherwise `Host` is the
//!   host. HTTP/1.1 without `Host`, more than one `Host`, a malformed host or port, userinfo in
//!   the authority, or a scheme other than http/https are refused with 400.
//! - **Forwarding headers** from a peer outside the listener's `trusted_proxies` are replaced,
//!   never appended to.
//! - **Framing** (`Content-Length`, `Transfer-Encoding`) is never taken from a message that also
//!   carries the other: a message with `Transfer-Encoding` loses its `Content-Length`.
//!
//! Also the head rewrites every proxied message gets: hop-by-hop headers, `Via`, the request id,
//! the upstream path, and the hash key a cluster balances on.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Version};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Why a request head is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadHead {
    MissingHost,
    DuplicateHost,
    BadHost,
    Userinfo,
    Scheme,
}

impl BadHead {
    pub fn message(self) -> &'static str {
        match self {
            BadHead::MissingHost => "missing Host header",
            BadHead::DuplicateHost => "more than one Host header",
            BadHead::BadHost => "invalid host",
            BadHead::Userinfo => "userinfo is not allowed in the request target",
            BadHead::Scheme => "the request target's scheme must be http or https",
        }
    }
}

/// The request's site: the authority it is for, as the client wrote it (`host[:port]`), valid
/// and ready to be sent as `Host`. `None` only for HTTP/1.0 without `Host`.
pub(crate) fn site<B>(req: &Request<B>) -> Result<Option<HeaderValue>, BadHead> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(BadHead::DuplicateHost);
    }
    if let Some(authority) = req.uri().authority() {
        if let Some(scheme) = req.uri().scheme_str()
            && !scheme.eq_ignore_ascii_case("http")
            && !scheme.eq_ignore_ascii_case("https")
        {
            return Err(BadHead::Scheme);
        }
        if authority.as_str().contains('@') {
            return Err(BadHead::Userinfo);
        }
        let a = authority.as_str();
        check_authority(a.as_bytes())?;
        return HeaderValue::from_str(a)
            .map(Some)
            .map_err(|_| BadHead::BadHost);
    }
    match host {
        Some(h) => {
            check_authority(h.as_bytes())?;
            Ok(Some(h.clone()))
        }
        None if req.version() == Version::HTTP_10 || req.version() == Version::HTTP_09 => Ok(None),
        None => Err(BadHead::MissingHost),
    }
}

/// The host part of a checked authority, without port and brackets (for routing).
pub(crate) fn host_of(site: &HeaderValue) -> &str {
    // Checked by `check_authority`: ASCII only.
    let s = site.to_str().unwrap_or_default();
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    s.rsplit_once(':').map_or(s, |(host, _)| host)
}

/// `host [":" port]` where host is a DNS-style name (letters, digits, `-`, `.`, `_`) or an
/// IPv4 address, or `[` IPv6 `]`; port is 1–5 digits. Anything else (spaces, `/`, `\`, `@`,
/// `%`, `,`, an empty host) is refused: it could mean something else to the upstream.
fn check_authority(a: &[u8]) -> Result<(), BadHead> {
    let (host, port) = if a.first() == Some(&b'[') {
        let close = a.iter().position(|&b| b == b']').ok_or(BadHead::BadHost)?;
        let inner = std::str::from_utf8(&a[1..close]).map_err(|_| BadHead::BadHost)?;
        inner
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| BadHead::BadHost)?;
        match &a[close + 1..] {
            [] => (&a[..0], None),
            [b':', port @ ..] => (&a[..0], Some(port)),
            _ => return Err(BadHead::BadHost),
        }
    } else {
        match a.iter().rposition(|&b| b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit))
    {
        return Err(BadHead::BadHost);
    }
    if a.first() != Some(&b'[')
        && (host.is_empty()
            || host.len() > 255
            || !host
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')))
    {
        return Err(BadHead::BadHost);
    }
    Ok(())
}

/// Forwarding headers a client could forge: from an untrusted peer, all are removed before the
/// proxy sets its own.
static FORWARDING: [HeaderName; 14] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-host"),
];
static X_FORWARDED_FOR: &HeaderName = &FORWARDING[0];
static X_FORWARDED_HOST: &HeaderName = &FORWARDING[1];
static X_FORWARDED_PROTO: &HeaderName = &FORWARDING[3];

/// Sets `X-Forwarded-For`, `-Host` and `-Proto`. From a trusted peer, its values are kept and
/// the peer (`peer_ip`, its address as a header value) is appended to `X-Forwarded-For`; from any
/// other peer, every forwarding header it sent is dropped first, so the upstream only ever sees
/// what this proxy saw.
pub(crate) fn set_forwarding(
    h: &mut HeaderMap,
    peer_ip: &HeaderValue,
    trusted: bool,
    site: Option<&HeaderValue>,
    tls: bool,
) {
    if trusted {
        let xff = match joined(h, X_FORWARDED_FOR) {
            Some(prev) => {
                let ip = peer_ip.to_str().unwrap_or_default();
                HeaderValue::from_str(&format!("{prev}, {ip}")).unwrap_or_else(|_| peer_ip.clone())
            }
            None => peer_ip.clone(),
        };
        h.insert(X_FORWARDED_FOR.clone(), xff);
    } else {
        // One pass over the (few) request headers: most requests carry none of these, and only
        // the ones present are removed.
        let mut present = 0u16;
        for k in h.keys() {
            let s = k.as_str();
            if (s.starts_with("x-") || s == "forwarded")
                && let Some(i) = FORWARDING.iter().position(|f| f == k)
            {
                present |= 1 << i;
            }
        }
        for (i, name) in FORWARDING.iter().enumerate() {
            if present & (1 << i) != 0 {
                h.remove(name);
            }
        }
        h.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
    }
    // An untrusted peer's were all removed above: no look-up needed to know they are absent.
    if let Some(site) = site
        && !(trusted && h.contains_key(X_FORWARDED_HOST))
    {
        h.insert(X_FORWARDED_HOST.clone(), site.clone());
    }
    if !(trusted && h.contains_key(X_FORWARDED_PROTO)) {
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        h.insert(X_FORWARDED_PROTO.clone(), proto);
    }
}

/// Every line of a list-valued header joined with ", " (RFC 9110 §5.3), or None if absent.
pub(crate) fn joined(h: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out = String::new();
    for v in h.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        if v.trim().is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(v);
    }
    (!out.is_empty()).then_some(out)
}

/// Headers that frame a message or belong to one hop: only the proxy sets them. Filters may
/// not (`set-header` and friends answer `invalid`), and they are dropped from local responses.
pub(crate) fn is_framing(name: &str) -> bool {
    weir_filters::FRAMING_HEADERS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
}

/// Whether every `Expect` is `100-continue` (which hyper answers itself, once the body is
/// read); any other expectation is answered 417. `Expect` is then not forwarded: this hop
/// handled it.
pub(crate) fn expectation_met(h: &HeaderMap) -> bool {
    h.get_all(header::EXPECT)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// A message that arrived with `Transfer-Encoding` was framed by it; its `Content-Length` (if
/// any) is stale and must not frame the message on the next hop (RFC 9112 §6.3).
pub(crate) fn drop_stale_length(h: &mut HeaderMap) {
    if h.contains_key(header::TRANSFER_ENCODING) {
        h.remove(header::CONTENT_LENGTH);
    }
}

pub(crate) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// An upgrade to one of `limits.upgrade_protocols` (default: WebSocket, RFC 6455), the protocol
/// switches passed through. Any other `Upgrade` (h2c above all, which would turn the upstream
/// connection into an unrouted HTTP/2 tunnel; config refuses to allow it) is dropped with the
/// other hop-by-hop headers and the request is forwarded as plain HTTP/1.1.
pub(crate) fn is_upgrade<B>(req: &Request<B>, allowed: &[String]) -> bool {
    let mut upgrade = req.headers().get_all(header::UPGRADE).iter();
    req.version() == Version::HTTP_11
        && upgrade.next().is_some_and(|u| {
            allowed
                .iter()
                .any(|a| u.as_bytes().eq_ignore_ascii_case(a.as_bytes()))
        })
        && upgrade.next().is_none()
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including every header named in Connection.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (no hashing) says so.
    let hop = |n: &HeaderName| {
        n == header::CONNECTION
            || n == header::TRANSFER_ENCODING
            || n == header::UPGRADE
            || n == header::TRAILER
            || n == header::PROXY_AUTHENTICATE
            || n == header::PROXY_AUTHORIZATION
            || n == header::TE
            || n == KEEP_ALIVE
            || n == PROXY_CONNECTION
    };
    if !h.keys().any(hop) {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        // Every Connection line counts (HeaderMap::remove would return only the first value).
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        h.remove(header::CONNECTION);
        for name in named {
            h.remove(name);
        }
    }
    for name in [&KEEP_ALIVE, &PROXY_CONNECTION] {
        h.remove(name);
    }
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::UPGRADE);
    h.remove(header::TRAILER);
    h.remove(header::PROXY_AUTHENTICATE);
    h.remove(header::PROXY_AUTHORIZATION);
    // `TE: trailers` is the one TE value meaningful end to end (gRPC needs it).
    if let Some(te) = h.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        h.remove(header::TE);
    }
}

pub(crate) fn append_via(h: &mut HeaderMap, v: Version) {
    let ours = match v {
        Version::HTTP_2 => "2 weir",
        Version::HTTP_10 => "1.0 weir",
        _ => "1.1 weir",
    };
    let value = match joined(h, &header::VIA) {
        Some(prev) => HeaderValue::from_str(&format!("{prev}, {ours}")).ok(),
        None => Some(HeaderValue::from_static(ours)),
    };
    if let Some(value) = value {
        h.insert(header::VIA, value);
    }
}

/// The path and query to send upstream when it differs from the request's: the route's
/// `prefix_rewrite` applied, or else the normalized path when normalization changed it.
pub(crate) fn rewrite_path(
    prefix_rewrite: Option<&(String, String)>,
    normalized: &str,
    raw_path: &str,
    query: Option<&str>,
) -> Option<PathAndQuery> {
    let (from, to) = match prefix_rewrite {
        Some((from, to)) => (from.as_str(), to.as_str()),
        // Normalization changed the path: send the normalized one, like nginx does.
        None if normalized != raw_path => ("", ""),
        None => return None,
    };
    // The route matched, so the path starts with `from` (ignoring case, if the route does).
    let rest = match normalized.get(..from.len()) {
        Some(head) if head.eq_ignore_ascii_case(from) => &normalized[from.len()..],
        _ => normalized,
    };
    let mut s = String::with_capacity(to.len() + rest.len() + query.map_or(0, |q| q.len() + 1));
    s.push_str(to);
    s.push_str(rest);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s).ok()
}

pub(crate) fn hash_of_parts(
    on: &weir_config::HashOn,
    headers: &HeaderMap,
    client: SocketAddr,
) -> u64 {
    use weir_config::HashOn;
    match on {
        HashOn::Header(name) => match headers.get(name.as_str()) {
            Some(v) => weir_balance::hash_key(v.as_bytes()),
            None => client_hash(client),
        },
        HashOn::Cookie(name) => {
            cookie(headers, name).map_or_else(|| client_hash(client), weir_balance::hash_key)
        }
        HashOn::ClientIp => client_hash(client),
    }
}

pub(crate) fn client_hash(client: SocketAddr) -> u64 {
    match client.ip() {
        std::net::IpAddr::V4(ip) => weir_balance::hash_key(&ip.octets()),
        std::net::IpAddr::V6(ip) => weir_balance::hash_key(&ip.octets()),
    }
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    h.get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
        .next()
}

/// Each byte's two lower-case hex digits: ids written per request take one look-up per byte.
pub(crate) static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// A random 128-bit id, formatted like a UUID v4 (one table look-up per byte, one buffer).
pub(crate) fn new_request_id() -> HeaderValue {
    let mut n = fastrand::u128(..);
    n = (n & !(0xf000 << 64)) | (0x4000 << 64); // version 4
    n = (n & !(0xc000 << 48)) | (0x8000 << 48); // variant 10xx
    let bytes = n.to_be_bytes();
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
        at += 2;
    }
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&out))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut r = Request::builder().version(version).uri(uri);
        for h in hosts {
            r = r.header(header::HOST, *h);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn the_authority_wins_and_host_is_checked() {
        let v11 = Version::HTTP_11;
        let ok = |r: Request<()>| site(&r).map(|s| s.map(|v| v.to_str().unwrap().to_owned()));
        let s = |x: &str| Ok(Some(x.to_owned()));
        assert_eq!(ok(req(v11, "/", &["a.test"])), s("a.test"));
        assert_eq!(ok(req(v11, "/", &["a.test:8080"])), s("a.test:8080"));
        assert_eq!(ok(req(v11, "/", &["[::1]:80"])), s("[::1]:80"));
        assert_eq!(
            ok(req(v11, "http://pub.test/", &["int.test"])),
            s("pub.test")
        );
        assert_eq!(
            ok(req(Version::HTTP_2, "http://pub.test/", &["int.test"])),
            s("pub.test")
        );
        assert_eq!(ok(req(Version::HTTP_10, "/", &[])), Ok(None));
        let bad = |r: Request<()>| site(&r).unwrap_err();
        assert_eq!(bad(req(v11, "/", &[])), BadHead::MissingHost);
        assert_eq!(bad(req(Version::HTTP_2, "/", &[])), BadHead::MissingHost);
        assert_eq!(bad(req(v11, "/", &["a", "b"])), BadHead::DuplicateHost);
        assert_eq!(bad(req(v11, "http://u@a.test/", &[])), BadHead::Userinfo);
        assert_eq!(bad(req(v11, "ftp://a.test/", &[])), BadHead::Scheme);
        for h in [
            "", "a b", "a/b", "a\\b", "a@b", "a%41", "a,b", "a:", "a:x", "a:123456", ":80", "[::1",
            "[zz]", "[::1]x", "é.test",
        ] {
            let mut r = req(v11, "/", &[]);
            let Ok(v) = HeaderValue::from_bytes(h.as_bytes()) else {
                continue;
            };
            r.headers_mut().insert(header::HOST, v);
            assert_eq!(site(&r), Err(BadHead::BadHost), "{h:?}");
        }
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        let h = |s: &'static str| host_of(&HeaderValue::from_static(s)).to_owned();
        assert_eq!(h("a.example.com:8080"), "a.example.com");
        assert_eq!(h("a.example.com"), "a.example.com");
        assert_eq!(h("[::1]:80"), "::1");
        assert_eq!(h("[::1]"), "::1");
    }

    #[test]
    fn forwarding_headers_are_replaced_unless_trusted() {
        let forged = || {
            let mut h = HeaderMap::new();
            for (k, v) in [
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-host", "evil.test"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "for=1.2.3.4"),
                ("x-real-ip", "1.2.3.4"),
                ("x-original-url", "/admin"),
            ] {
                h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            h
        };
        let peer = HeaderValue::from_static("10.0.0.9");
        let site = HeaderValue::from_static("pub.test");
        let mut h = forged();
        set_forwarding(&mut h, &peer, false, Some(&site), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "pub.test");
        assert_eq!(h["x-forwarded-proto"], "http");
        for k in ["forwarded", "x-real-ip", "x-original-url"] {
            assert!(!h.contains_key(k), "{k}");
        }
        let mut h = forged();
        set_forwarding(&mut h, &peer, true, Some(&site), false);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-host"], "evil.test");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["forwarded"], "for=1.2.3.4");
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("proxy-authorization", "x"),
            ("x-keep", "yes"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-keep"]);

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn via_appends() {
        let mut h = HeaderMap::new();
        append_via(&mut h, Version::HTTP_11);
        append_via(&mut h, Version::HTTP_2);
        assert_eq!(h.get(header::VIA).unwrap(), "1.1 weir, 2 weir");
    }

    #[test]
    fn request_ids_look_like_uuid_v4_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        for (i, c) in s.char_indices() {
            if matches!(i, 8 | 13 | 18 | 23) {
                assert_eq!(c, '-', "{s}");
            } else {
                assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{s}");
            }
        }
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; sid=abc ;b=2"),
        );
        assert_eq!(cookie(&h, "sid"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "zz"), None);
    }
}
