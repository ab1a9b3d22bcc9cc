//! Checks filters commonly need when validating their config in [`Filter::new`](crate::Filter::new).

/// Whether `name` is a valid HTTP field name (an RFC 9110 §5.6.2 token).
///
/// ```
/// assert!(weir_filter::validate::is_header_name("x-user-id"));
/// assert!(!weir_filter::validate::is_header_name("bad name"));
/// ```
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks a header name a filter's config names for the filter to set or remove: a valid field
/// name, and not one of [`FRAMING_HEADERS`] (which the host refuses at request time). `field`
/// names the config field in the message.
///
/// ```
/// use weir_filter::validate::check_header_name;
/// assert!(check_header_name("user_header", "x-user").is_ok());
/// assert_eq!(
///     check_header_name("user_header", "x user").unwrap_err(),
///     "user_header: \"x user\" is not a valid header name"
/// );
/// assert_eq!(
///     check_header_name("user_header", "Content-Length").unwrap_err(),
///     "user_header: content-length is a framing or hop-by-hop header: the proxy sets it"
/// );
/// ```
pub fn check_header_name(field: &str, name: &str) -> Result<(), String> {
    if !is_header_name(name) {
        return Err(format!("{field}: {name:?} is not a valid header name"));
    }
    if is_framing_header(name) {
        return Err(format!(
            "{field}: {} is a framing or hop-by-hop header: the proxy sets it",
            name.to_ascii_lowercase()
        ));
    }
    Ok(())
}

/// Headers that frame a message or belong to one connection (lowercase). Only the proxy sets
/// them: [`Request::set_header`](crate::Request::set_header), `append_header` and
/// `remove_header` (on either map, in every phase) answer
/// [`HostError::Invalid`](crate::HostError::Invalid) for these, and a
/// [`LocalResponse`](crate::LocalResponse) loses them, because a wrong `Content-Length` would
/// desynchronize a keep-alive connection for the requests after it.
pub const FRAMING_HEADERS: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Whether `name` is one of the [`FRAMING_HEADERS`] (case-insensitive): a header a filter
/// cannot set or remove, so a config that names one for writing should be refused.
///
/// ```
/// assert!(weir_filter::validate::is_framing_header("Content-Length"));
/// assert!(!weir_filter::validate::is_framing_header("x-user-id"));
/// ```
pub fn is_framing_header(name: &str) -> bool {
    FRAMING_HEADERS.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// Checks a realm for an authentication challenge (`WWW-Authenticate: Basic realm="..."`): it
/// goes between double quotes, so it must be non-empty printable ASCII without `"` or `\`.
///
/// ```
/// assert!(weir_filter::validate::check_realm("staff").is_ok());
/// assert!(weir_filter::validate::check_realm("a\"b").is_err());
/// ```
pub fn check_realm(realm: &str) -> Result<(), String> {
    if realm.is_empty()
        || !realm
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(format!(
            "realm: {realm:?} must be non-empty printable ASCII without quotes or backslashes"
        ));
    }
    Ok(())
}
