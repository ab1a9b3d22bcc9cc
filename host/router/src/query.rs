//! Allocation-free query string helpers.

/// Raw (still encoded) values of every occurrence of `name` in `query`, in
/// order; a key matches when it decodes to `name` (`%61=1` is `a=1`). A
/// parameter without `=` has the empty value.
pub(crate) fn values<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = &'q str> {
    query.split('&').filter_map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name || decode(key).eq(name.bytes())).then_some(value)
    })
}

/// The bytes of `raw` after form-urlencoded decoding: `+` is a space and
/// `%XX` is one byte; a `%` not followed by two hex digits stays literal.
pub(crate) fn decode(raw: &str) -> Decode<'_> {
    Decode {
        bytes: raw.as_bytes(),
    }
}

/// Iterator returned by [`decode`].
pub(crate) struct Decode<'a> {
    bytes: &'a [u8],
}

impl Iterator for Decode<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        let (byte, rest) = match first {
            b'+' => (b' ', rest),
            b'%' => match rest {
                [hi, lo, tail @ ..] => match (hex(*hi), hex(*lo)) {
                    (Some(hi), Some(lo)) => (hi << 4 | lo, tail),
                    _ => (b'%', rest),
                },
                _ => (b'%', rest),
            },
            other => (other, rest),
        };
        self.bytes = rest;
        Some(byte)
    }
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|d| d as u8)
}

/// Largest raw value decoded on the stack; longer ones are decoded into a Vec.
const STACK_DECODE: usize = 256;

/// Calls `f` with the decoded bytes of `raw`, borrowing `raw` itself when it
/// needs no decoding and using a stack buffer when it is short.
pub(crate) fn with_decoded<R>(raw: &str, f: impl FnOnce(&[u8]) -> R) -> R {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return f(raw.as_bytes());
    }
    if raw.len() > STACK_DECODE {
        return f(&decode(raw).collect::<Vec<u8>>());
    }
    let mut buf = [0u8; STACK_DECODE];
    let mut len = 0;
    // Decoding never lengthens the input, so the buffer always has room.
    for (slot, byte) in buf.iter_mut().zip(decode(raw)) {
        *slot = byte;
        len += 1;
    }
    f(&buf[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &str) -> Vec<u8> {
        with_decoded(raw, <[u8]>::to_vec)
    }

    #[test]
    fn decoding() {
        assert_eq!(decoded("a+b"), b"a b");
        assert_eq!(decoded("a%20b"), b"a b");
        assert_eq!(decoded("%41%6a"), b"Aj");
        assert_eq!(decoded("%zz%4"), b"%zz%4");
        assert_eq!(decoded("%"), b"%");
        assert_eq!(decoded("%ff"), [0xff]);
        assert_eq!(decoded("plain"), b"plain");
        let long = "%41".repeat(200);
        assert_eq!(decoded(&long), vec![b'A'; 200]);
        assert!(decode("a%2Bb").eq(*b"a+b"));
    }

    #[test]
    fn splitting() {
        let q = "a=1&b&a=&&c=x=y&a=3";
        assert_eq!(values(q, "a").collect::<Vec<_>>(), ["1", "", "3"]);
        assert_eq!(values(q, "b").collect::<Vec<_>>(), [""]);
        assert_eq!(values(q, "c").collect::<Vec<_>>(), ["x=y"]);
        assert_eq!(values(q, "d").count(), 0);
        // Names are compared decoded.
        assert_eq!(
            values("%61=1&a+b=2&a%20b=3", "a").collect::<Vec<_>>(),
            ["1"]
        );
        assert_eq!(
            values("%61=1&a+b=2&a%20b=3", "a b").collect::<Vec<_>>(),
            ["2", "3"]
        );
    }
}
