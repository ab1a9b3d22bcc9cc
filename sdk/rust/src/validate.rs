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
