//! Just enough of a TLS ClientHello to route on (RFC 8446 §4.1.2, RFC 6066 §3, RFC 7301):
//! the server name and the ALPN protocols. The hello may come over several TCP segments and
//! several handshake records; nothing else of TLS is read, and the bytes go on untouched.

/// A ClientHello longer than this is refused (post-quantum key shares make hellos of 2 KB;
/// 16 KiB is one record's worth).
pub(crate) const MAX_HELLO: usize = 16 * 1024;

/// What routing needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Hello {
    /// The `server_name` extension's host name, lowercased, without a trailing dot.
    pub server_name: Option<String>,
    /// The `application_layer_protocol_negotiation` extension's protocols.
    pub alpn: Vec<Vec<u8>>,
}

/// A first flight that is not a ClientHello we can route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// The first byte is not a TLS handshake record.
    NotTls,
    /// A malformed record or hello (what is wrong).
    Malformed(&'static str),
}

/// Parses the ClientHello at the start of `buf`: `Ok(None)` when more bytes are needed.
#[cfg(test)]
pub(crate) fn parse(buf: &[u8]) -> Result<Option<Hello>, Bad> {
    Parser::default().parse(buf)
}

/// A ClientHello read as it arrives: each call looks only at the records not seen yet, so a
/// hello trickled in a byte at a time costs linear work.
#[derive(Default)]
pub(crate) struct Parser {
    /// Where the next record starts in the buffer.
    at: usize,
    /// The handshake bytes of the records seen.
    hello: Vec<u8>,
}

impl Parser {
    /// `buf` is everything read so far (it only grows): `Ok(None)` when more is needed.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<Hello>, Bad> {
        loop {
            let at = self.at;
            // Each record: type 22 (handshake), version 3.x, a length, the fragment.
            let Some(rec) = buf.get(at..at + 5) else {
                return check_first(buf, at);
            };
            if rec[0] != 22 {
                return Err(if at == 0 {
                    Bad::NotTls
                } else {
                    Bad::Malformed("a record other than handshake within the ClientHello")
                });
            }
            if rec[1] != 3 {
                return Err(if at == 0 {
                    Bad::NotTls
                } else {
                    Bad::Malformed("record version")
                });
            }
            let len = usize::from(u16::from_be_bytes([rec[3], rec[4]]));
            if len == 0 {
                return Err(Bad::Malformed("an empty handshake record"));
            }
            if len > 16384 {
                return Err(Bad::Malformed("a record longer than 16 KiB"));
            }
            let Some(fragment) = buf.get(at + 5..at + 5 + len) else {
                return Ok(None);
            };
            self.hello.extend_from_slice(fragment);
            self.at = at + 5 + len;
            let hello = &self.hello;
            if hello.len() >= 4 {
                if hello[0] != 1 {
                    return Err(Bad::Malformed(
                        "the first handshake message is not a ClientHello",
                    ));
                }
                let body = (usize::from(hello[1]) << 16)
                    | (usize::from(hello[2]) << 8)
                    | usize::from(hello[3]);
                if body > MAX_HELLO {
                    return Err(Bad::Malformed("a ClientHello longer than 16 KiB"));
                }
                if hello.len() >= 4 + body {
                    return parse_hello(&hello[4..4 + body]).map(Some);
                }
            }
        }
    }
}

/// Fewer than 5 bytes of a record: refuse early what cannot become a handshake record.
fn check_first(buf: &[u8], at: usize) -> Result<Option<Hello>, Bad> {
    let rest = &buf[at..];
    if at == 0 && (rest.first().is_some_and(|&b| b != 22) || rest.get(1).is_some_and(|&b| b != 3)) {
        return Err(Bad::NotTls);
    }
    Ok(None)
}

/// A cursor over a hello's fields; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Bad> {
        if self.0.len() < n {
            return Err(Bad::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<usize, Bad> {
        Ok(usize::from(self.take(1, what)?[0]))
    }
    fn u16(&mut self, what: &'static str) -> Result<usize, Bad> {
        let b = self.take(2, what)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    /// A vector with a one- or two-byte length.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], Bad> {
        let n = self.u8(what)?;
        self.take(n, what)
    }
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], Bad> {
        let n = self.u16(what)?;
        self.take(n, what)
    }
}

fn parse_hello(body: &[u8]) -> Result<Hello, Bad> {
    let mut r = Reader(body);
    r.take(2 + 32, "version and random")?;
    let session = r.vec8("session id")?;
    if session.len() > 32 {
        return Err(Bad::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Bad::Malformed("cipher suites"));
    }
    if r.vec8("compression methods")?.is_empty() {
        return Err(Bad::Malformed("compression methods"));
    }
    let mut hello = Hello::default();
    if r.0.is_empty() {
        // A hello without extensions (old clients): nothing to route on but the default.
        return Ok(hello);
    }
    let mut exts = Reader(r.vec16("extensions")?);
    if !r.0.is_empty() {
        return Err(Bad::Malformed("bytes after the extensions"));
    }
    let mut seen = Vec::new();
    while !exts.0.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension length")?;
        if seen.contains(&kind) {
            return Err(Bad::Malformed("an extension sent twice"));
        }
        seen.push(kind);
        match kind {
            0 => hello.server_name = server_name(data)?,
            16 => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    Ok(hello)
}

/// RFC 6066 §3: a list of (type, name); type 0 is a DNS host name, the only one defined.
fn server_name(data: &[u8]) -> Result<Option<String>, Bad> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16("server name list")?);
    if !r.0.is_empty() || list.0.is_empty() {
        return Err(Bad::Malformed("server name list"));
    }
    let mut found = None;
    while !list.0.is_empty() {
        let kind = list.u8("server name type")?;
        let name = list.vec16("server name")?;
        if kind != 0 {
            continue;
        }
        if found.is_some() {
            return Err(Bad::Malformed("two host names"));
        }
        found = Some(host_name(name)?);
    }
    Ok(found)
}

/// A DNS name of letters, digits, `-` and `_` (as sent: ASCII, no IP literal needed), lowercased.
fn host_name(name: &[u8]) -> Result<String, Bad> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    let label_ok = |l: &[u8]| {
        !l.is_empty()
            && l.len() <= 63
            && l.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split(|&b| b == b'.').all(label_ok) {
        return Err(Bad::Malformed("server name is not a DNS name"));
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// RFC 7301 §3.1: a list of non-empty protocol names.
fn alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, Bad> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16("ALPN list")?);
    if !r.0.is_empty() || list.0.is_empty() {
        return Err(Bad::Malformed("ALPN list"));
    }
    let mut out = Vec::new();
    while !list.0.is_empty() {
        let p = list.vec8("ALPN protocol")?;
        if p.is_empty() {
            return Err(Bad::Malformed("an empty ALPN protocol"));
        }
        out.push(p.to_vec());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello: what rustls's client sends first for `name`.
    fn client_hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.roots.clear();
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let server = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    /// The same hello with its handshake message cut into records of `size` bytes.
    fn in_records(flight: &[u8], size: usize) -> Vec<u8> {
        let msg = &flight[5..];
        let mut out = Vec::new();
        for chunk in msg.chunks(size) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn a_real_hello_gives_its_name_and_alpn_however_it_is_cut() {
        let flight = client_hello("API.Example.com", &[b"h2", b"http/1.1"]);
        let want = Hello {
            server_name: Some("api.example.com".into()),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        assert_eq!(parse(&flight), Ok(Some(want.clone())));
        for size in [1, 2, 3, 7, 100] {
            let split = in_records(&flight, size);
            assert_eq!(parse(&split), Ok(Some(want.clone())), "records of {size}");
            // Every prefix (a TCP segment boundary anywhere) asks for more.
            for cut in 0..split.len() {
                assert_eq!(
                    parse(&split[..cut]),
                    Ok(None),
                    "records of {size}, cut {cut}"
                );
            }
        }
    }

    #[test]
    fn other_first_flights_are_refused() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Bad::NotTls));
        assert_eq!(parse(b"\x16\x02"), Err(Bad::NotTls));
        assert_eq!(parse(b"\x15\x03\x03\x00\x02\x02\x28"), Err(Bad::NotTls));
        assert_eq!(
            parse(b"\x16\x03\x01\x00\x00"),
            Err(Bad::Malformed("an empty handshake record"))
        );
        assert_eq!(
            parse(b"\x16\x03\x01\xff\xff"),
            Err(Bad::Malformed("a record longer than 16 KiB"))
        );
        // A ServerHello (type 2) where a ClientHello belongs.
        assert!(parse(b"\x16\x03\x03\x00\x04\x02\x00\x00\x00").is_err());
        // A hello that says it is 1 MiB long.
        assert!(parse(b"\x16\x03\x03\x00\x04\x01\x10\x00\x00").is_err());
    }

    #[test]
    fn every_corrupted_byte_and_length_is_an_error_or_a_hello_never_a_panic() {
        let flight = client_hello("a.example", &[b"h2"]);
        for i in 0..flight.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut b = flight.clone();
                b[i] = v;
                let _ = parse(&b);
                let _ = parse(&b[..i]);
            }
        }
    }

    #[test]
    fn names_that_are_not_dns_names_are_refused() {
        for bad in [
            &b""[..],
            b".",
            b"a..b",
            b"a b",
            b"a\0b",
            b"caf\xc3\xa9.example",
            &[b'a'; 64],
        ] {
            assert!(
                host_name(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(host_name(b"Foo.Example.").unwrap(), "foo.example");
    }
}
