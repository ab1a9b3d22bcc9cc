//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): read from trusted
//! peers in front of Weir, written to upstreams behind an L4 listener, so the first proxy's
//! client address survives the hop.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use weir_config::{ProxyAccept, ProxyVersion};

/// The binary form's first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The text form's longest line, CRLF included.
const V1_MAX: usize = 107;
/// The longest binary header read (16 fixed bytes and the addresses with TLVs): TLVs past
/// this are refused rather than buffered.
const V2_MAX: usize = 16 + 512;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// A relayed connection from `source` to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The sender's own connection (a health check) or an address family not carried
    /// (`UNKNOWN`, `AF_UNIX`): the peer's address stands.
    Local,
}

/// A header that cannot be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Not a PROXY header of an accepted version.
    Missing,
    /// The header is malformed (what is wrong).
    Malformed(&'static str),
    /// The peer closed before the header was complete.
    Closed,
    /// The peer closed without sending a byte (a TCP health check): not an error.
    Silent,
    /// The header did not complete in time.
    Timeout,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Missing => f.write_str("no PROXY header"),
            Bad::Malformed(why) => write!(f, "malformed PROXY header: {why}"),
            Bad::Closed => f.write_str("closed before the PROXY header was complete"),
            Bad::Silent => f.write_str("closed without sending anything"),
            Bad::Timeout => f.write_str("PROXY header timed out"),
        }
    }
}

/// Parses a header at the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// header and its length.
pub(crate) fn parse(buf: &[u8], accept: ProxyAccept) -> Result<Option<(Header, usize)>, Bad> {
    let v1 = matches!(accept, ProxyAccept::V1 | ProxyAccept::Any);
    let v2 = matches!(accept, ProxyAccept::V2 | ProxyAccept::Any);
    let n = buf.len().min(V2_SIGNATURE.len());
    if v2 && buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if v1 && buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(Bad::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, Bad> {
    let Some(end) = memchr::memmem::find(&buf[..buf.len().min(V1_MAX)], b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Bad::Malformed("no CRLF within 107 bytes"))
        } else if buf.contains(&b'\n') {
            Err(Bad::Malformed("a line feed without carriage return"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| Bad::Malformed("not ASCII text"))?;
    let mut parts = line.split(' ');
    let family = parts.next().unwrap_or_default();
    let header = match family {
        "UNKNOWN" => Header::Local,
        "TCP4" | "TCP6" => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(Bad::Malformed("TCP4/TCP6 needs four fields"));
            };
            let ip = |s: &str| -> Result<IpAddr, Bad> {
                let ip: IpAddr = s.parse().map_err(|_| Bad::Malformed("bad address"))?;
                if ip.is_ipv4() != (family == "TCP4") {
                    return Err(Bad::Malformed("address of the other family"));
                }
                Ok(ip)
            };
            let port = |s: &str| -> Result<u16, Bad> {
                // Decimal without sign or leading zeros, as the specification writes them.
                if s.is_empty() || (s.len() > 1 && s.starts_with('0')) {
                    return Err(Bad::Malformed("bad port"));
                }
                s.parse::<u16>().map_err(|_| Bad::Malformed("bad port"))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(Bad::Malformed("unknown protocol family")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, Bad> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(Bad::Malformed("version is not 2"));
    }
    if 16 + len > V2_MAX {
        return Err(Bad::Malformed("longer than 528 bytes"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let header = match ver_cmd & 0x0f {
        0 => Header::Local,
        1 => match family {
            // TCP (or UDP) over IPv4.
            0x11 | 0x12 => {
                let a = body
                    .get(..12)
                    .ok_or(Bad::Malformed("IPv4 addresses cut short"))?;
                let ip = |o: usize| IpAddr::from([a[o], a[o + 1], a[o + 2], a[o + 3]]);
                let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0), port(8)),
                    destination: SocketAddr::new(ip(4), port(10)),
                }
            }
            0x21 | 0x22 => {
                let a = body
                    .get(..36)
                    .ok_or(Bad::Malformed("IPv6 addresses cut short"))?;
                let ip = |o: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&a[o..o + 16]);
                    IpAddr::from(b)
                };
                let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
                Header::Proxied {
                    source: SocketAddr::new(ip(0), port(32)),
                    destination: SocketAddr::new(ip(16), port(34)),
                }
            }
            // UNSPEC, AF_UNIX: nothing an IP peer can use.
            0x00 | 0x31 | 0x32 => Header::Local,
            _ => return Err(Bad::Malformed("unknown address family")),
        },
        _ => return Err(Bad::Malformed("unknown command")),
    };
    Ok(Some((header, 16 + len)))
}

/// Reads a header from `io` within `timeout`; returns it and the bytes read past it (the
/// protocol's first bytes, to be served before the rest of the connection).
pub(crate) async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    accept: ProxyAccept,
    timeout: Duration,
) -> Result<(Header, BytesMut), Bad> {
    let mut buf = BytesMut::with_capacity(256);
    let read = async {
        loop {
            if let Some((h, n)) = parse(&buf, accept)? {
                let _ = buf.split_to(n);
                return Ok(h);
            }
            buf.reserve(256);
            match io.read_buf(&mut buf).await {
                Ok(0) if buf.is_empty() => return Err(Bad::Silent),
                Ok(0) | Err(_) => return Err(Bad::Closed),
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(h)) => Ok((h, buf)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Bad::Timeout),
    }
}

/// Appends a header saying a connection came from `source` to `destination`. Families that
/// differ are both written as IPv6 (IPv4-mapped).
pub(crate) fn write(
    version: ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
    out: &mut Vec<u8>,
) {
    let (src, dst) = match (source.ip(), destination.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
            (source.ip(), destination.ip())
        }
        (s, d) => (IpAddr::V6(to_v6(s)), IpAddr::V6(to_v6(d))),
    };
    match version {
        ProxyVersion::V1 => {
            use std::io::Write as _;
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let _ = write!(
                out,
                "PROXY {family} {src} {dst} {} {}\r\n",
                source.port(),
                destination.port()
            );
        }
        ProxyVersion::V2 => {
            out.extend_from_slice(V2_SIGNATURE);
            out.push(0x21); // version 2, PROXY
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x11);
                    out.extend_from_slice(&12u16.to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.push(0x21);
                    out.extend_from_slice(&36u16.to_be_bytes());
                    out.extend_from_slice(&to_v6(s).octets());
                    out.extend_from_slice(&to_v6(d).octets());
                }
            }
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
        }
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (what a dual-stack peer means).
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_versions_round_trip_every_family_pair() {
        let pairs = [
            ("192.0.2.1:5678", "198.51.100.2:443"),
            ("[2001:db8::1]:5678", "[2001:db8::2]:443"),
            ("192.0.2.1:1", "[2001:db8::2]:65535"),
        ];
        for v in [ProxyVersion::V1, ProxyVersion::V2] {
            for (s, d) in pairs {
                let mut out = Vec::new();
                write(v, addr(s), addr(d), &mut out);
                out.extend_from_slice(b"GET /");
                let (h, n) = parse(&out, ProxyAccept::Any).unwrap().unwrap();
                assert_eq!(&out[n..], b"GET /", "{v:?} {s} {d}");
                let Header::Proxied {
                    source,
                    destination,
                } = h
                else {
                    panic!("{h:?}")
                };
                assert_eq!(canonical(source), addr(s), "{v:?}");
                assert_eq!(canonical(destination), addr(d), "{v:?}");
                // Every prefix asks for more; none is taken for a header.
                for cut in 0..n {
                    assert_eq!(
                        parse(&out[..cut], ProxyAccept::Any),
                        Ok(None),
                        "{v:?} {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_listener_takes_only_the_versions_it_accepts() {
        let mut v1 = Vec::new();
        write(
            ProxyVersion::V1,
            addr("1.2.3.4:1"),
            addr("5.6.7.8:2"),
            &mut v1,
        );
        let mut v2 = Vec::new();
        write(
            ProxyVersion::V2,
            addr("1.2.3.4:1"),
            addr("5.6.7.8:2"),
            &mut v2,
        );
        assert_eq!(parse(&v1, ProxyAccept::V2), Err(Bad::Missing));
        assert_eq!(parse(&v2, ProxyAccept::V1), Err(Bad::Missing));
        assert!(parse(&v1, ProxyAccept::V1).unwrap().is_some());
        assert!(parse(&v2, ProxyAccept::V2).unwrap().is_some());
    }

    #[test]
    fn hostile_headers_are_refused() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n",
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ];
        for b in bad {
            assert!(
                parse(b, ProxyAccept::Any).is_err(),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        // No CRLF within the longest line.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert!(parse(&long, ProxyAccept::Any).is_err());

        let mut v2 = Vec::new();
        write(
            ProxyVersion::V2,
            addr("1.2.3.4:1"),
            addr("5.6.7.8:2"),
            &mut v2,
        );
        let mut wrong_version = v2.clone();
        wrong_version[12] = 0x11;
        let mut wrong_command = v2.clone();
        wrong_command[12] = 0x2f;
        let mut wrong_family = v2.clone();
        wrong_family[13] = 0x41;
        let mut short = v2.clone();
        short[15] = 4; // says 4 bytes of addresses: too few for IPv4
        let mut huge = v2.clone();
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        for b in [wrong_version, wrong_command, wrong_family, short, huge] {
            assert!(
                matches!(parse(&b, ProxyAccept::Any), Err(Bad::Malformed(_))),
                "{b:?}"
            );
        }
    }

    #[test]
    fn local_and_unknown_keep_the_peer() {
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", ProxyAccept::Any),
            Ok(Some((Header::Local, 15)))
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local, ProxyAccept::Any),
            Ok(Some((Header::Local, 16)))
        );
        // TLVs after the addresses are skipped.
        let mut v2 = Vec::new();
        write(
            ProxyVersion::V2,
            addr("1.2.3.4:1"),
            addr("5.6.7.8:2"),
            &mut v2,
        );
        v2[14..16].copy_from_slice(&(12u16 + 5).to_be_bytes());
        v2.extend_from_slice(&[0x04, 0, 2, 0xab, 0xcd, b'x']);
        let (_, n) = parse(&v2, ProxyAccept::V2).unwrap().unwrap();
        assert_eq!(&v2[n..], b"x");
    }
}
