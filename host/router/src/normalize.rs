//! Request path normalization, applied before routing; the normalized path is also what goes
//! upstream, so the route that matched and the resource the upstream serves are the same.

use std::borrow::Cow;

/// Why a request path is refused (the proxy answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (this includes the empty path).
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// A `..` segment climbs above the root.
    #[error("path climbs above the root")]
    AboveRoot,
    /// `%2F` or `%5C` under [`EscapedSlashes::Reject`].
    #[error("path contains an escaped slash or backslash")]
    EscapedSlash,
    /// A `%` not followed by two hex digits.
    #[error("path contains an invalid percent escape")]
    BadEscape,
    /// `%25` followed by two hex digits: a second decoding would change the path.
    #[error("path is percent-encoded twice")]
    DoubleEncoded,
    /// A raw or encoded NUL or control byte, a raw backslash, space or non-ASCII byte.
    #[error("path contains a forbidden character")]
    Forbidden,
    /// Percent-encoded bytes above 0x7F that are not valid UTF-8 (overlong forms included).
    #[error("path contains an escape that is not valid UTF-8")]
    BadUtf8,
    /// `;` under [`PathParameters::Reject`].
    #[error("path contains ';' (path parameters are refused)")]
    Parameters,
}

/// What a listener does with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Refuse the request (400). The default: upstreams disagree on whether `%2F` separates
    /// segments, so no route can be sure what it protects.
    #[default]
    Reject,
    /// Keep them encoded (`%2F`, `%5C`); they are not segment separators for routing. Only
    /// safe when every upstream also treats them as data.
    Keep,
    /// Decode both to `/` before dot segments are resolved (like IIS and some frameworks do).
    Decode,
}

/// What a listener does with `;` (path parameters, as in `/a;jsessionid=1/b`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PathParameters {
    /// Refuse the request (400). The default: Java servers drop `;...` from each segment
    /// (so `/admin;x` is `/admin` and `/..;/` is `/../`), others do not.
    #[default]
    Reject,
    /// Remove `;...` from every segment before dot segments are resolved, and forward the
    /// result.
    Strip,
    /// Treat `;` as an ordinary character. Only safe when no upstream gives it a meaning.
    Keep,
}

/// A listener's path policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// `%2F` / `%5C` handling.
    pub escaped_slashes: EscapedSlashes,
    /// `;` handling.
    pub parameters: PathParameters,
}

/// Normalizes a request path before routing, in the spirit of Envoy's `normalize_path` +
/// `merge_slashes` + `path_with_escaped_slashes_action`:
///
/// 1. The path must start with `/`. Raw control bytes, space, backslash and non-ASCII bytes
///    are refused, and so are `%00` and every encoded control byte.
/// 2. Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
///    escape is kept, with its hex digits uppercased. A `%` without two hex digits, `%25`
///    followed by two hex digits (double encoding) and encoded bytes that are not valid UTF-8
///    (overlong forms included) are refused.
/// 3. `%2F` / `%5C` and `;` are handled as `options` say.
/// 4. Repeated slashes are merged and `.` / `..` segments resolved (RFC 3986
///    `remove_dot_segments`, except that `..` above the root is refused). A trailing slash is
///    kept.
///
/// Returns [`Cow::Borrowed`] when the path is already normal, which is the common case and does
/// not allocate. The output is a fixed point: normalizing it again returns it unchanged.
///
/// # Errors
///
/// A [`PathError`] naming the first reason the path is refused.
pub fn normalize_path(path: &str, options: PathOptions) -> Result<Cow<'_, str>, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    if is_normal(rest) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, options)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)?))
}

/// Bytes that need no look in a normal path: unreserved, sub-delims but `;`, `:`, `@`, `/`.
/// Everything else (`%`, `;`, `\`, controls, non-ASCII, the "unsafe" printable characters)
/// takes the slow path, which decides.
const fn plain(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'-' | b'.' | b'_' | b'~'
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'='
        | b':' | b'@' | b'/')
}

/// [`plain`] by table: every request's path is scanned byte by byte.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = plain(i as u8);
        i += 1;
    }
    t
};

/// Whether the path (after its leading '/') needs no change: only plain bytes, no empty
/// segment except a final one (a trailing slash), and no dot segment. One pass over the bytes.
fn is_normal(rest: &str) -> bool {
    let bytes = rest.as_bytes();
    let dots = |segment: &[u8]| segment == b"." || segment == b"..";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !PLAIN[usize::from(b)] {
            return false;
        }
        if b == b'/' {
            let segment = &bytes[start..i];
            if segment.is_empty() || dots(segment) {
                return false;
            }
            start = i + 1;
        }
    }
    !dots(&bytes[start..])
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Printable ASCII that may appear raw in a path: RFC 3986 `pchar` plus the characters
/// browsers and clients send unencoded (`"`, `<`, `>`, `^`, `` ` ``, `{`, `|`, `}`), which are
/// forwarded as they are. Not `\`, `%`, `;`, `?`, `#`, space or controls.
fn allowed_raw(b: u8) -> bool {
    plain(b)
        || matches!(
            b,
            b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}' | b'[' | b']'
        )
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Step 1–3: one pass that decodes what may be decoded, canonicalizes the rest and applies the
/// listener's options.
fn decode(path: &str, options: PathOptions) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    // Encoded bytes >= 0x80 of the current run, checked as UTF-8 when the run ends.
    let mut high: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            check_utf8_run(&mut high)?;
            match b {
                b';' => match options.parameters {
                    PathParameters::Reject => return Err(PathError::Parameters),
                    PathParameters::Keep => out.push(';'),
                    // Drop the parameter up to the end of this segment.
                    PathParameters::Strip => {
                        while i < bytes.len() && bytes[i] != b'/' {
                            i += 1;
                        }
                        continue;
                    }
                },
                b if allowed_raw(b) => out.push(char::from(b)),
                _ => return Err(PathError::Forbidden),
            }
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let c = hi << 4 | lo;
        i += 3;
        if c >= 0x80 {
            high.push(c);
            push_escape(&mut out, c);
            continue;
        }
        check_utf8_run(&mut high)?;
        match c {
            b'/' | b'\\' => match options.escaped_slashes {
                EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                EscapedSlashes::Keep => push_escape(&mut out, c),
                EscapedSlashes::Decode => out.push('/'),
            },
            0..=0x1f | 0x7f => return Err(PathError::Forbidden),
            b'%' if bytes.get(i).copied().and_then(hex).is_some()
                && bytes.get(i + 1).copied().and_then(hex).is_some() =>
            {
                return Err(PathError::DoubleEncoded);
            }
            c if unreserved(c) => out.push(char::from(c)),
            c => push_escape(&mut out, c),
        }
    }
    check_utf8_run(&mut high)?;
    // `%25` is kept, and unreserved characters around it are decoded, so the double encoding
    // may only show now: `%25%32%65` became `%252e`.
    if out
        .as_bytes()
        .windows(5)
        .any(|w| w[..3] == *b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some())
    {
        return Err(PathError::DoubleEncoded);
    }
    Ok(out)
}

fn push_escape(out: &mut String, c: u8) {
    out.push('%');
    out.push(char::from(HEX_UPPER[usize::from(c >> 4)]));
    out.push(char::from(HEX_UPPER[usize::from(c & 0xf)]));
}

fn check_utf8_run(high: &mut Vec<u8>) -> Result<(), PathError> {
    if high.is_empty() {
        return Ok(());
    }
    let ok = std::str::from_utf8(high).is_ok();
    high.clear();
    if ok { Ok(()) } else { Err(PathError::BadUtf8) }
}

/// Step 4 on a decoded path (which starts with '/').
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    // Invariant: `out` is "" (the root) or "/seg/seg" with no trailing slash; whether the
    // result ends in '/' is decided by the last segment.
    let mut out = String::with_capacity(path.len());
    let mut trailing_slash = false;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" | "." => trailing_slash = last,
            ".." => {
                let parent = out.rfind('/').ok_or(PathError::AboveRoot)?;
                out.truncate(parent);
                trailing_slash = last;
            }
            name => {
                out.push('/');
                out.push_str(name);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path's test by its definition: every byte plain, and split at '/', no dot
    /// segment and no empty one but the last.
    fn is_normal_by_segments(rest: &str) -> bool {
        if !rest.bytes().all(plain) {
            return false;
        }
        let mut segments = rest.split('/').peekable();
        while let Some(segment) = segments.next() {
            match segment {
                "." | ".." => return false,
                "" if segments.peek().is_some() => return false,
                _ => {}
            }
        }
        true
    }

    #[test]
    fn the_one_pass_normal_check_agrees_with_the_definition_on_every_short_path() {
        // Every string of up to 7 bytes over an alphabet that makes each case: plain bytes,
        // dots, slashes, and bytes that are not plain.
        let alphabet = [b'a', b'.', b'/', b'%', b';'];
        let mut checked = 0;
        for len in 0..=7u32 {
            for mut n in 0..alphabet.len().pow(len) {
                let mut s = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    s.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                let s = std::str::from_utf8(&s).unwrap();
                assert_eq!(is_normal(s), is_normal_by_segments(s), "{s:?}");
                checked += 1;
            }
        }
        assert!(checked > 90_000);
        for b in 0..=255u8 {
            assert_eq!(PLAIN[usize::from(b)], plain(b), "{b}");
        }
    }

    fn defaults(path: &str) -> Result<String, PathError> {
        normalize_path(path, PathOptions::default()).map(Cow::into_owned)
    }

    #[test]
    fn table() {
        use PathError::*;
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/plain/path", Ok("/plain/path")),
            ("/plain/path/", Ok("/plain/path/")),
            ("/a/./b", Ok("/a/b")),
            ("/a/../b", Ok("/b")),
            ("//a///b", Ok("/a/b")),
            ("/a/%2e%2e/b", Ok("/b")),
            ("/a/%2E%2e/b", Ok("/b")),
            ("/a/.%2E/b", Ok("/b")),
            ("/a/%2e/b", Ok("/a/b")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/b//", Ok("/a/b/")),
            ("/a/..", Ok("/")),
            ("/.", Ok("/")),
            ("//", Ok("/")),
            ("/a/.../b", Ok("/a/.../b")),
            ("/a/.b/..c", Ok("/a/.b/..c")),
            ("/a/%2e%2e%2e", Ok("/a/...")),
            // Unreserved characters are decoded, other escapes canonicalized.
            ("/%61dmin", Ok("/admin")),
            ("/%41%7e%5f%2d", Ok("/A~_-")),
            ("/a%3fb", Ok("/a%3Fb")),
            ("/a%20b", Ok("/a%20b")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/a%25", Ok("/a%25")),
            ("/100%25off", Ok("/100%25off")),
            ("/q?x", Err(Forbidden)),
            // Refused by default.
            ("/a/%2f/b", Err(EscapedSlash)),
            ("/public/%2E%2e%2fadmin", Err(EscapedSlash)),
            ("/public/..%2fadmin", Err(EscapedSlash)),
            ("/a%5cb", Err(EscapedSlash)),
            ("/public/%252e%252e/admin", Err(DoubleEncoded)),
            ("/a%2541", Err(DoubleEncoded)),
            ("/public/%25%32%65%25%32%65/admin", Err(DoubleEncoded)),
            ("/public\\..\\admin", Err(Forbidden)),
            ("/admin;x", Err(Parameters)),
            ("/a%00b", Err(Forbidden)),
            ("/a%0d%0ab", Err(Forbidden)),
            ("/a%7f", Err(Forbidden)),
            ("/a b", Err(Forbidden)),
            ("/a\tb", Err(Forbidden)),
            ("/é", Err(Forbidden)),
            ("/a%zz", Err(BadEscape)),
            ("/a%4", Err(BadEscape)),
            ("/a%", Err(BadEscape)),
            ("/%c0%ae%c0%ae/admin", Err(BadUtf8)),
            ("/%ff", Err(BadUtf8)),
            ("/%c3", Err(BadUtf8)),
            ("/%c3/%a9", Err(BadUtf8)),
            ("/..", Err(AboveRoot)),
            ("/../a", Err(AboveRoot)),
            ("/a/../..", Err(AboveRoot)),
            ("/a/%2e%2e/%2E%2E/b", Err(AboveRoot)),
            ("a", Err(NotAbsolute)),
            ("", Err(NotAbsolute)),
            ("./a", Err(NotAbsolute)),
        ];
        for (input, want) in cases {
            assert_eq!(
                defaults(input).as_deref(),
                want.as_deref(),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn options() {
        let keep = PathOptions {
            escaped_slashes: EscapedSlashes::Keep,
            parameters: PathParameters::Keep,
        };
        let decode = PathOptions {
            escaped_slashes: EscapedSlashes::Decode,
            parameters: PathParameters::Strip,
        };
        let cases: &[(PathOptions, &str, Result<&str, PathError>)] = &[
            (keep, "/public/..%2fadmin", Ok("/public/..%2Fadmin")),
            (keep, "/a%5cb", Ok("/a%5Cb")),
            (keep, "/admin;x", Ok("/admin;x")),
            (keep, "/a;b/../c", Ok("/c")),
            (decode, "/public/..%2fadmin", Ok("/admin")),
            (decode, "/public/%2e%2e%5cadmin", Ok("/admin")),
            (decode, "/admin;x=1", Ok("/admin")),
            (decode, "/public/..;/admin", Ok("/admin")),
            (decode, "/a;x/b;y/", Ok("/a/b/")),
            (decode, "/a;x/..", Ok("/")),
            (decode, "/;x/..", Err(PathError::AboveRoot)),
            (decode, "/%2f%2f", Ok("/")),
            (decode, "/..%2f", Err(PathError::AboveRoot)),
        ];
        for (options, input, want) in cases {
            let got = normalize_path(input, *options).map(Cow::into_owned);
            assert_eq!(got.as_deref(), want.as_deref(), "{options:?} {input:?}");
        }
    }

    #[test]
    fn borrows_when_unchanged() {
        for path in [
            "/plain/path",
            "/",
            "/a/b/",
            "/a.b/c..d/...",
            "/a:b@c!$&'()*+,=",
        ] {
            assert!(
                matches!(normalize_path(path, PathOptions::default()), Ok(Cow::Borrowed(p)) if p == path),
                "{path:?}"
            );
        }
        assert!(matches!(
            normalize_path("/a//b", PathOptions::default()),
            Ok(Cow::Owned(_))
        ));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            PathError::NotAbsolute.to_string(),
            "path does not start with '/'"
        );
        assert_eq!(
            PathError::AboveRoot.to_string(),
            "path climbs above the root"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn all_options() -> impl Strategy<Value = PathOptions> {
            (0..3u8, 0..3u8).prop_map(|(s, p)| PathOptions {
                escaped_slashes: [
                    EscapedSlashes::Reject,
                    EscapedSlashes::Keep,
                    EscapedSlashes::Decode,
                ][usize::from(s)],
                parameters: [
                    PathParameters::Reject,
                    PathParameters::Strip,
                    PathParameters::Keep,
                ][usize::from(p)],
            })
        }

        /// Whether a segment of a normalized path could change meaning in an upstream that
        /// decodes it again, however often: becoming a separator or a dot segment.
        fn ambiguous(segment: &str) -> bool {
            let mut s = segment.to_string();
            for _ in 0..4 {
                let d: Vec<u8> = crate::query::decode(&s.replace('+', "%2B")).collect();
                s = String::from_utf8_lossy(&d).into_owned();
                if s.contains(['/', '\\']) || s == "." || s == ".." {
                    return true;
                }
            }
            false
        }

        proptest! {
            #[test]
            fn output_is_normal_and_idempotent(
                path in "/[a./%2eEfF5cC;\\\\]{0,20}",
                options in all_options(),
            ) {
                if let Ok(out) = normalize_path(&path, options) {
                    prop_assert!(out.starts_with('/'));
                    prop_assert!(!out.contains("//"), "{out:?}");
                    // Already-normal output comes back unchanged.
                    let again = normalize_path(&out, options).map(Cow::into_owned);
                    prop_assert_eq!(again.as_deref(), Ok(out.as_ref()));
                }
            }

            /// Under the default options, no decoding an upstream might do changes the
            /// normalized path's structure: what was routed is what is served.
            #[test]
            fn default_output_has_one_meaning(path in "/[aA/.%25fFcC2e3;\\\\0-9]{0,24}") {
                if let Ok(out) = normalize_path(&path, PathOptions::default()) {
                    for segment in out.split('/') {
                        prop_assert!(!ambiguous(segment), "{:?} -> {:?}", path, out);
                    }
                }
            }

            #[test]
            fn never_panics(path in any::<String>(), options in all_options()) {
                let _ = normalize_path(&path, options);
            }
        }
    }
}
