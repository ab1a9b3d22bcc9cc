//! Request path normalization, applied before routing.

use std::borrow::Cow;

/// Why a request path cannot be normalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (this includes the empty path).
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// A `..` segment climbs above the root.
    #[error("path climbs above the root")]
    AboveRoot,
}

/// Normalizes a request path before routing, like nginx does.
///
/// The path must start with `/`. Repeated slashes are collapsed and `.` and
/// `..` segments are resolved (RFC 3986 `remove_dot_segments`, except that a
/// `..` above the root is an error rather than being dropped). Percent-encoded
/// dots (`%2e`, `%2E`) count as dots in dot segments, so `/a/%2e%2e/b` becomes
/// `/b`; nothing else is decoded. A trailing slash is kept.
///
/// Returns [`Cow::Borrowed`] when the path is already normal, which is the
/// common case and does not allocate.
///
/// # Errors
///
/// [`PathError::NotAbsolute`] when the path does not start with `/`, and
/// [`PathError::AboveRoot`] when a `..` segment would climb above the root.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    if is_normal(rest) {
        return Ok(Cow::Borrowed(path));
    }

    // Invariant: `out` is "" (the root) or "/seg/seg" with no trailing slash;
    // whether the result ends in '/' is decided by the last segment.
    let mut out = String::with_capacity(path.len());
    let mut trailing_slash = false;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match classify(segment) {
            Segment::Empty | Segment::Dot => trailing_slash = last,
            Segment::DotDot => {
                let parent = out.rfind('/').ok_or(PathError::AboveRoot)?;
                out.truncate(parent);
                trailing_slash = last;
            }
            Segment::Name => {
                out.push('/');
                out.push_str(segment);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether the path (after its leading '/') needs no change: no empty segment
/// except a final one (a trailing slash), and no dot segment.
fn is_normal(rest: &str) -> bool {
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        match classify(segment) {
            Segment::Name => {}
            Segment::Empty if segments.peek().is_none() => {}
            Segment::Empty | Segment::Dot | Segment::DotDot => return false,
        }
    }
    true
}

enum Segment {
    Empty,
    Dot,
    DotDot,
    Name,
}

fn classify(segment: &str) -> Segment {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return Segment::Name;
        }
        dots += 1;
        if dots > 2 {
            // "..." is an ordinary name.
            return Segment::Name;
        }
    }
    match dots {
        0 => Segment::Empty,
        1 => Segment::Dot,
        _ => Segment::DotDot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
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
            ("/a/%2e%2e%2e", Ok("/a/%2e%2e%2e")),
            ("/a/%2f/b", Ok("/a/%2f/b")),
            ("/..", Err(PathError::AboveRoot)),
            ("/../a", Err(PathError::AboveRoot)),
            ("/a/../..", Err(PathError::AboveRoot)),
            ("/a/%2e%2e/%2E%2E/b", Err(PathError::AboveRoot)),
            ("a", Err(PathError::NotAbsolute)),
            ("", Err(PathError::NotAbsolute)),
            ("./a", Err(PathError::NotAbsolute)),
        ];
        for (input, want) in cases {
            let got = normalize_path(input);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "input {input:?}");
        }
    }

    #[test]
    fn borrows_when_unchanged() {
        for path in ["/plain/path", "/", "/a/b/", "/a.b/c..d/%2e%2e%2e"] {
            assert!(
                matches!(normalize_path(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path:?}"
            );
        }
        assert!(matches!(normalize_path("/a//b"), Ok(Cow::Owned(_))));
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

        proptest! {
            #[test]
            fn output_is_normal_and_idempotent(path in "/[a./%2eE]{0,16}") {
                if let Ok(out) = normalize_path(&path) {
                    prop_assert!(out.starts_with('/'));
                    prop_assert!(!out.contains("//"), "{out:?}");
                    // Already-normal output must come back borrowed and unchanged.
                    let again = normalize_path(&out);
                    prop_assert!(matches!(again, Ok(Cow::Borrowed(p)) if p == out.as_ref()));
                    // Borrowed exactly when nothing changed.
                    prop_assert_eq!(matches!(out, Cow::Borrowed(_)), out == path);
                }
            }

            #[test]
            fn never_panics(path in any::<String>()) {
                let _ = normalize_path(&path);
            }
        }
    }
}
