//! The `normalize` checks, shared by the fuzz target (fuzz/fuzz_targets/normalize.rs) and the
//! corpus replay test (host/router/tests/fuzz_corpus.rs), so both check the same properties.

use weir_router::{EscapedSlashes, PathOptions, PathParameters, normalize_path};

/// The nine listener path policies.
pub fn all_options() -> impl Iterator<Item = PathOptions> {
    [
        EscapedSlashes::Reject,
        EscapedSlashes::Keep,
        EscapedSlashes::Decode,
    ]
    .into_iter()
    .flat_map(|escaped_slashes| {
        [
            PathParameters::Reject,
            PathParameters::Strip,
            PathParameters::Keep,
        ]
        .into_iter()
        .map(move |parameters| PathOptions {
            escaped_slashes,
            parameters,
        })
    })
}

/// Normalizes `data` (when it is UTF-8) under every policy; panics on a violated property.
pub fn check(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let default = normalize_path(path, PathOptions::default()).ok();
    if let Some(out) = &default {
        check_one_meaning(path, out);
    }
    for options in all_options() {
        let result = normalize_path(path, options);
        // The options only concern `%2F`, `%5C` and `;`: a path the strictest policy accepts
        // has none of them, so every policy must give it the same result.
        if let Some(want) = &default {
            assert_eq!(
                result.as_deref(),
                Ok(want.as_ref()),
                "{options:?} disagrees with the default policy on {path:?}"
            );
        }
        if let Ok(out) = result {
            check_normal(path, &out, options);
        }
    }
}

/// `out`, the normalization of `path` under `options`, is normal and a fixed point.
fn check_normal(path: &str, out: &str, options: PathOptions) {
    let context = || format!("{path:?} -> {out:?} under {options:?}");
    assert!(out.starts_with('/'), "not absolute: {}", context());
    assert!(!out.contains("//"), "empty segment: {}", context());
    assert!(
        !out.split('/')
            .any(|segment| segment == "." || segment == ".."),
        "dot segment: {}",
        context()
    );
    let again = normalize_path(out, options);
    assert_eq!(again.as_deref(), Ok(out), "not idempotent: {}", context());
}

/// Under the default policy, no segment of `out` becomes a separator or a dot segment when an
/// upstream percent-decodes it, once or several times: what was routed is what is served.
fn check_one_meaning(path: &str, out: &str) {
    for segment in out.split('/') {
        let mut bytes = segment.as_bytes().to_vec();
        for round in 1..=4 {
            bytes = percent_decode(&bytes);
            assert!(
                !bytes.iter().any(|&b| b == b'/' || b == b'\\') && bytes != b"." && bytes != b"..",
                "segment {segment:?} of {out:?} (from {path:?}) decodes to {:?} after {round} \
                 round(s)",
                String::from_utf8_lossy(&bytes)
            );
            if !bytes.contains(&b'%') {
                break;
            }
        }
    }
}

/// Decodes every `%XX`; a `%` not followed by two hex digits stays as it is. `+` is not a space
/// in a path.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: at most 0xFF.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}
