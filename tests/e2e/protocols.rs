//! End-to-end: protocols.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A one-listener, one-route, one-cluster config; `cluster_extra` is spliced into the cluster.
fn simple_config(upstream: &Upstream, cluster_extra: &str) -> String {
    format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }} ]{cluster_extra} }} ]\n",
        upstream.addr
    )
}

fn names(h: &http::HeaderMap) -> Vec<String> {
    let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_string()).collect();
    v.sort();
    v
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// FNV-1a, 64 bit: a content hash that needs no extra crate.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Deterministic pseudo-random bytes (xorshift), so reordering or loss changes the hash.
fn payload(len: usize) -> Bytes {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Runs curl and returns (stdout, stderr); fails if curl fails.
async fn curl_verbose(args: &[&str]) -> Result<(String, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .context("run curl")?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

// ---------------------------------------------------------------------------------------------
// 1. HTTP/2 downstream with prior knowledge
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn h2c_prior_knowledge_downstream_reaches_an_http1_upstream() -> Result<()> {
    let up = Upstream::with("h1-up", |_req, _seen| async {
        Response::builder()
            .header("x-answer", "42")
            .body(full("hello over h2"))
            .unwrap()
    })
    .await;
    let weir = Weir::start(&simple_config(&up, ""))?;
    let addr = weir.addr("public");

    let got = send(
        &h2c_client(),
        Request::get(format!("http://{addr}/h2/path?q=1"))
            .header("x-client", "h2c")
            .body(full(""))?,
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(got.text(), "hello over h2");
    assert_eq!(got.header("x-answer"), Some("42"));
    assert_eq!(got.upstream(), "h1-up");
    assert_eq!(got.header("via"), Some("1.1 weir"));

    let seen = up.last();
    assert_eq!(
        seen.version,
        Version::HTTP_11,
        "the default upstream protocol is HTTP/1.1"
    );
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.path, "/h2/path?q=1");
    assert_eq!(header(&seen.headers, "x-client"), Some("h2c"));
    let authority = addr.to_string();
    assert_eq!(
        header(&seen.headers, "host"),
        Some(authority.as_str()),
        "the :authority becomes Host for HTTP/1.1"
    );
    assert_eq!(
        header(&seen.headers, "x-forwarded-host"),
        Some(authority.as_str())
    );
    assert_eq!(header(&seen.headers, "via"), Some("2 weir"));
    assert_eq!(header(&seen.headers, "x-forwarded-proto"), Some("http"));

    // The same through curl's HTTP/2 with prior knowledge.
    let out = curl(&[
        "--http2-prior-knowledge",
        "-i",
        "-H",
        "x-client: curl",
        &weir.url("public", "/curl"),
    ])
    .await?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .context("curl -i output has a head")?;
    let mut lines = head.lines();
    assert_eq!(lines.next().map(str::trim_end), Some("HTTP/2 200"), "{out}");
    let heads: Vec<&str> = lines.collect();
    assert!(heads.contains(&"x-answer: 42"), "{out}");
    assert!(heads.contains(&"x-upstream: h1-up"), "{out}");
    assert_eq!(body, "hello over h2");
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.path, "/curl");
    assert_eq!(header(&seen.headers, "x-client"), Some("curl"));
    assert_eq!(header(&seen.headers, "via"), Some("2 weir"));
    assert_eq!(up.count(), 2);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. HTTPS listener: SNI, ALPN, TLS versions
// ---------------------------------------------------------------------------------------------

/// Accepts any server certificate (signatures still checked); for looking at what is presented.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_tls(
    trust: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for der in trust {
        roots.add(CertificateDer::from(der.to_vec()))?;
    }
    let mut cfg = ClientConfig::builder_with_provider(ring())
        .with_protocol_versions(versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

fn client_tls_any() -> Result<Arc<ClientConfig>> {
    let mut cfg = ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(ring())))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    name: &str,
    cfg: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string())?;
    let tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .context("TLS handshake timed out")??;
    Ok(tls)
}

fn peer_cert(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default()
}

/// One HTTP/1.1 GET over an established stream.
async fn h1_get_over<S>(io: S, host: &str, path: &str) -> Result<Got>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, TestBody>(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = Request::get(path).header("host", host).body(full(""))?;
    let res = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .context("request timed out")??;
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Got {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

struct TlsSite {
    weir: Weir,
    up: Upstream,
    a_pem: std::path::PathBuf,
    a_der: Vec<u8>,
    b_der: Vec<u8>,
}

async fn tls_site() -> Result<TlsSite> {
    let up = Upstream::start("site").await;
    let dir = TempDir::new();
    let (a_pem, a_key, a_der) = self_signed(&dir.0, "a", &["a.test"]);
    let (b_pem, b_key, b_der) = self_signed(&dir.0, "b", &["b.test"]);
    let yaml = format!(
        "listeners:\n\
  - {{ name: secure, listen: 127.0.0.1:0, protocol: https, tls: {{ certificates: [ {{ cert: \"{}\", key: \"{}\" }}, {{ cert: \"{}\", key: \"{}\" }} ] }} }}\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        a_pem.display(),
        a_key.display(),
        b_pem.display(),
        b_key.display(),
        up.addr
    );
    let weir = Weir::start_in(dir, &yaml)?;
    Ok(TlsSite {
        weir,
        up,
        a_pem,
        a_der,
        b_der,
    })
}

#[tokio::test]
async fn https_listener_picks_the_certificate_by_sni_and_falls_back_to_the_first() -> Result<()> {
    let site = tls_site().await?;
    let addr = site.weir.addr("secure");
    assert_ne!(site.a_der, site.b_der);
    let trusting_both = client_tls(
        &[&site.a_der, &site.b_der],
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &[b"http/1.1"],
    )?;

    for (sni, want) in [("a.test", &site.a_der), ("b.test", &site.b_der)] {
        let tls = tls_connect(addr, sni, trusting_both.clone())
            .await
            .with_context(|| format!("handshake with SNI {sni}"))?;
        assert!(
            peer_cert(&tls) == *want,
            "SNI {sni} got the wrong certificate"
        );
        let got = h1_get_over(tls, sni, &format!("/sni/{sni}")).await?;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.upstream(), "site");
        let seen = site.up.last();
        assert_eq!(seen.path, format!("/sni/{sni}"));
        assert_eq!(header(&seen.headers, "x-forwarded-proto"), Some("https"));
        assert_eq!(header(&seen.headers, "host"), Some(sni));
    }

    // An SNI no certificate covers, and no SNI at all (an IP address), get the first certificate.
    for name in ["c.test", "127.0.0.1"] {
        let tls = tls_connect(addr, name, client_tls_any()?).await?;
        assert!(
            peer_cert(&tls) == site.a_der,
            "server name {name} should get the first certificate"
        );
        assert!(peer_cert(&tls) != site.b_der);
    }
    assert_eq!(site.up.count(), 2);
    Ok(())
}

#[tokio::test]
async fn https_listener_negotiates_h2_by_alpn_and_speaks_tls12_and_tls13() -> Result<()> {
    let site = tls_site().await?;
    let addr = site.weir.addr("secure");
    let port = addr.port().to_string();
    let resolve = format!("a.test:{port}:127.0.0.1");
    let url = format!("https://a.test:{port}/alpn");
    let cacert = site.a_pem.display().to_string();

    // curl with ALPN h2.
    let version = curl(&[
        "--http2",
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &url,
    ])
    .await?;
    assert_eq!(version, "2");
    let seen = site.up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(header(&seen.headers, "x-forwarded-proto"), Some("https"));
    assert_eq!(header(&seen.headers, "via"), Some("2 weir"));
    assert_eq!(
        header(&seen.headers, "host"),
        Some(format!("a.test:{port}").as_str())
    );

    // curl forced to HTTP/1.1 over TLS.
    let version = curl(&[
        "--http1.1",
        "--cacert",
        &cacert,
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        &url,
    ])
    .await?;
    assert_eq!(version, "1.1");

    // TLS 1.2 at most, and TLS 1.3 at least; curl -v names the version it negotiated.
    for (args, want) in [
        (["--tls-max", "1.2"], "SSL connection using TLSv1.2"),
        (["--tlsv1.3", "--http2"], "SSL connection using TLSv1.3"),
    ] {
        let mut all = vec![
            "-v",
            "--cacert",
            &cacert,
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ];
        all.extend_from_slice(&args);
        all.push(&url);
        let (out, err) = curl_verbose(&all).await?;
        assert_eq!(out, "200 2", "{args:?}");
        assert!(err.contains(want), "{args:?}: curl -v said:\n{err}");
    }

    // The same with rustls: each version alone, with ALPN h2 preferred.
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let cfg = client_tls(&[&site.a_der], &[version], &[b"h2", b"http/1.1"])?;
        let tls = tls_connect(addr, "a.test", cfg).await?;
        assert_eq!(tls.get_ref().1.protocol_version(), Some(want));
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert!(peer_cert(&tls) == site.a_der);
    }
    assert_eq!(site.up.count(), 4);
    assert!(
        site.up
            .seen()
            .iter()
            .all(|s| header(&s.headers, "x-forwarded-proto") == Some("https"))
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Upstream HTTP/2 and TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn h2c_upstream_cluster_gets_http2_with_the_original_host() -> Result<()> {
    let up = Upstream::start("h2-up").await;
    let weir = Weir::start(&simple_config(&up, ", protocol: h2"))?;

    let got = get_with(
        &weir.url("public", "/over/h2?x=1"),
        &[("host", "shop.example:8080"), ("x-client", "h1")],
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.version,
        Version::HTTP_11,
        "the client spoke HTTP/1.1 and is answered in it"
    );
    assert_eq!(got.upstream(), "h2-up");
    assert_eq!(
        got.header("via"),
        Some("2 weir"),
        "the response came over HTTP/2 from the upstream"
    );

    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.path, "/over/h2?x=1");
    assert_eq!(header(&seen.headers, "host"), Some("shop.example:8080"));
    assert_eq!(header(&seen.headers, "x-client"), Some("h1"));
    assert_eq!(header(&seen.headers, "via"), Some("1.1 weir"));

    // h2 in, h2 out.
    let got = send(
        &h2c_client(),
        Request::get(weir.url("public", "/both")).body(full(""))?,
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.version, Version::HTTP_2);
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(seen.path, "/both");
    let authority = weir.addr("public").to_string();
    assert_eq!(header(&seen.headers, "host"), Some(authority.as_str()));
    Ok(())
}

/// Over HTTP/2 the host travels as `:authority` (RFC 9113 §8.3.1: a Host header that differs
/// from it makes the request malformed). The config promises `rewrite.host` replaces ":authority
/// (HTTP/2)". So an h2 upstream must see the original (or rewritten) host as its authority, not the
/// endpoint's address.
#[tokio::test]
async fn h2_upstream_authority_is_the_original_or_rewritten_host() -> Result<()> {
    let up = Upstream::with("h2-authority", |req, _seen| async move {
        let authority = req
            .uri()
            .authority()
            .map_or_else(String::new, |a| a.to_string());
        Response::builder()
            .header("x-seen-authority", authority)
            .body(full(""))
            .unwrap()
    })
    .await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes:\n\
  - {{ name: rw, match: {{ path_prefix: /rw/ }}, cluster: c, rewrite: {{ host: internal.svc }} }}\n\
  - {{ name: plain, cluster: c }}\n\
clusters: [ {{ name: c, protocol: h2, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        up.addr
    ))?;
    let mut wrong = Vec::new();
    for (path, want) in [("/plain", "shop.example:8080"), ("/rw/x", "internal.svc")] {
        let got = get_with(&weir.url("public", path), &[("host", "shop.example:8080")]).await?;
        assert_eq!(got.status, StatusCode::OK, "{path}");
        let seen = up.last();
        assert_eq!(seen.version, Version::HTTP_2);
        let authority = got
            .header("x-seen-authority")
            .unwrap_or_default()
            .to_string();
        let host = header(&seen.headers, "host").map(str::to_string);
        if authority != want || host.as_deref().is_some_and(|h| h != want) {
            wrong.push(format!(
                "{path}: want :authority {want:?}, got :authority {authority:?} and host {host:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// gRPC-style: HTTP/2 end to end with `TE: trailers` and response trailers after the data.
#[tokio::test]
async fn h2_trailers_pass_through_end_to_end() -> Result<()> {
    let up = Upstream::with("trailers", |_req, _seen| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        trailers.insert("grpc-message", http::HeaderValue::from_static("fine"));
        let frames = vec![
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                b"payload",
            ))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        let body = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )));
        Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap()
    })
    .await;
    let weir = Weir::start(&simple_config(&up, ", protocol: h2"))?;
    let req = Request::post(weir.url("public", "/pkg.Service/Method"))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(full("request"))?;
    let res = tokio::time::timeout(WAIT, h2c_client().request(req))
        .await
        .context("no response")??;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), Version::HTTP_2);
    let collected = tokio::time::timeout(WAIT, res.into_body().collect())
        .await
        .context("body")??;
    let trailers = collected
        .trailers()
        .cloned()
        .context("no trailers reached the client")?;
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));
    assert_eq!(names(&trailers), ["grpc-message", "grpc-status"]);
    assert_eq!(header(&trailers, "grpc-status"), Some("0"));
    assert_eq!(header(&trailers, "grpc-message"), Some("fine"));
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_2);
    assert_eq!(header(&seen.headers, "te"), Some("trailers"));
    Ok(())
}

/// A TLS upstream for `up.test` and the PEM of its certificate (to use as CA).
fn upstream_tls_config(
    dir: &std::path::Path,
) -> Result<(Arc<rustls::ServerConfig>, std::path::PathBuf)> {
    let (pem, key, der) = self_signed(dir, "up", &["up.test"]);
    let key = PrivateKeyDer::from_pem_file(&key)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(der)], key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), pem))
}

#[tokio::test]
async fn tls_upstream_clusters_speak_http1_and_h2_and_untrusted_certificates_are_a_502()
-> Result<()> {
    let dir = TempDir::new();
    let (server_cfg, ca) = upstream_tls_config(&dir.0)?;
    // Same names, another key: a CA that did not sign the upstream's certificate.
    let (wrong_ca, _, _) = self_signed(&dir.0, "wrong", &["up.test"]);
    let up = Upstream::tls("tls-up", server_cfg).await;
    let yaml = format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes:\n\
  - {{ name: h1, match: {{ host: h1.test }}, cluster: tls-h1 }}\n\
  - {{ name: h2, match: {{ host: h2.test }}, cluster: tls-h2 }}\n\
  - {{ name: bad, match: {{ host: bad.test }}, cluster: tls-bad }}\n\
clusters:\n\
  - {{ name: tls-h1, protocol: http1, tls: {{ ca: \"{ca}\", sni: up.test }}, endpoints: [ {{ address: \"{addr}\" }} ] }}\n\
  - {{ name: tls-h2, protocol: h2, tls: {{ ca: \"{ca}\", sni: up.test }}, endpoints: [ {{ address: \"{addr}\" }} ] }}\n\
  - {{ name: tls-bad, tls: {{ ca: \"{wrong}\", sni: up.test }}, endpoints: [ {{ address: \"{addr}\" }} ] }}\n",
        ca = ca.display(),
        wrong = wrong_ca.display(),
        addr = up.addr
    );
    let weir = Weir::start_in(dir, &yaml)?;

    for (host, want) in [("h1.test", Version::HTTP_11), ("h2.test", Version::HTTP_2)] {
        let got = get_with(&weir.url("public", &format!("/{host}")), &[("host", host)]).await?;
        assert_eq!(got.status, StatusCode::OK, "{host}: {}", got.text());
        assert_eq!(got.upstream(), "tls-up");
        let seen = up.last();
        assert_eq!(seen.version, want, "{host}");
        assert_eq!(seen.path, format!("/{host}"));
        assert_eq!(header(&seen.headers, "host"), Some(host));
        assert_eq!(
            header(&seen.headers, "x-forwarded-proto"),
            Some("http"),
            "the downstream was plain text"
        );
    }
    // POST bodies make it through TLS both ways too.
    for host in ["h1.test", "h2.test"] {
        let req = Request::post(weir.url("public", "/echo"))
            .header("host", host)
            .body(full("ping over tls"))?;
        let got = send(&h1_client(), req).await?;
        assert_eq!(
            (got.status, got.text()),
            (StatusCode::OK, "ping over tls".to_string()),
            "{host}"
        );
    }
    assert_eq!(up.count(), 4);

    let got = get_with(&weir.url("public", "/bad"), &[("host", "bad.test")]).await?;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text());
    assert_eq!(got.upstream(), "");
    assert_eq!(
        up.count(),
        4,
        "no request reached the upstream over an unverified connection"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. WebSocket
// ---------------------------------------------------------------------------------------------

async fn websocket_echo(mut req: Request<Incoming>, _seen: Seen) -> Response<TestBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder()
            .status(400)
            .body(full("not a websocket handshake"))
            .unwrap();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .unwrap()
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through_and_echoes() -> Result<()> {
    let up = Upstream::with("ws", websocket_echo).await;
    let weir = Weir::start(&simple_config(&up, ""))?;
    let addr = weir.addr("public");

    let tcp = TcpStream::connect(addr).await?;
    let (mut ws, res) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("ws://{addr}/chat"), tcp),
    )
    .await
    .context("handshake timed out")??;
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(header(res.headers(), "upgrade"), Some("websocket"));
    assert_eq!(header(res.headers(), "x-upstream"), Some("ws"));
    let request_id = header(res.headers(), "x-request-id")
        .context("101 carries x-request-id")?
        .to_string();
    assert!(is_uuid(&request_id), "{request_id}");

    let seen = up.last();
    assert_eq!(seen.path, "/chat");
    assert_eq!(header(&seen.headers, "upgrade"), Some("websocket"));
    assert_eq!(header(&seen.headers, "connection"), Some("upgrade"));
    assert_eq!(header(&seen.headers, "sec-websocket-version"), Some("13"));
    assert!(seen.headers.contains_key("sec-websocket-key"));
    assert_eq!(
        header(&seen.headers, "x-request-id"),
        Some(request_id.as_str())
    );

    let messages = [
        Message::text("hello through weir"),
        Message::binary(Bytes::from_static(&[0, 1, 2, 253, 254, 255])),
        Message::text("x".repeat(100_000)),
        Message::binary(payload(300_000)),
    ];
    for m in messages {
        ws.send(m.clone()).await?;
        let echo = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no echo")?
            .context("stream ended")??;
        assert!(echo == m, "echo differs for a {} byte message", m.len());
    }

    ws.close(None).await?;
    let mut after_close = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .context("close handshake timed out")?
        {
            None => break,
            Some(Ok(m)) => after_close.push(m),
            Some(Err(e)) => bail!("websocket error after close: {e}"),
        }
    }
    assert_eq!(after_close.len(), 1, "{after_close:?}");
    assert!(
        matches!(after_close[0], Message::Close(_)),
        "{after_close:?}"
    );
    assert_eq!(up.count(), 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Streaming
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn large_upload_streams_through_and_echoes_intact() -> Result<()> {
    const SIZE: usize = 8 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let up = Upstream::start("echo").await;
    let weir = Weir::start(&simple_config(&up, ""))?;
    let data = payload(SIZE);
    let want = fnv(&data);

    for (label, client) in [("h1", h1_client()), ("h2c", h2c_client())] {
        let (tx, body) = channel_body();
        let feed = data.clone();
        let feeder = tokio::spawn(async move {
            for off in (0..feed.len()).step_by(CHUNK) {
                if tx
                    .send(feed.slice(off..(off + CHUNK).min(feed.len())))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let got = send(
            &client,
            Request::post(weir.url("public", "/upload")).body(body)?,
        )
        .await?;
        feeder.await?;
        assert_eq!(got.status, StatusCode::OK, "{label}");
        assert_eq!(got.upstream(), "echo");
        assert_eq!(got.body.len(), SIZE, "{label}");
        assert_eq!(fnv(&got.body), want, "{label}: echoed content differs");
    }
    assert_eq!(up.count(), 2);
    Ok(())
}

#[tokio::test]
async fn response_chunks_are_forwarded_before_the_body_ends() -> Result<()> {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let up = Upstream::with("slow-body", move |_req, _seen| {
        let release = r.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first chunk;")).await;
                release.notified().await;
                let _ = tx.send(Bytes::from_static(b"the rest")).await;
            });
            Response::new(body)
        }
    })
    .await;
    let weir = Weir::start(&simple_config(&up, ""))?;

    for (label, client) in [("h1", h1_client()), ("h2c", h2c_client())] {
        let res = tokio::time::timeout(
            WAIT,
            client.request(Request::get(weir.url("public", "/stream")).body(full(""))?),
        )
        .await
        .context("no response head")??;
        assert_eq!(res.status(), StatusCode::OK, "{label}");
        let mut body = res.into_body();
        let mut first = Vec::new();
        while first.len() < b"first chunk;".len() {
            let frame = tokio::time::timeout(WAIT, body.frame())
                .await
                .with_context(|| format!("{label}: the first chunk was not forwarded while the upstream body was still open"))?
                .context("body ended early")??;
            if let Ok(d) = frame.into_data() {
                first.extend_from_slice(&d);
            }
        }
        assert_eq!(first, b"first chunk;", "{label}");
        // Only now may the upstream finish.
        release.notify_one();
        let rest = tokio::time::timeout(WAIT, body.collect())
            .await
            .context("rest of body")??
            .to_bytes();
        assert_eq!(rest, Bytes::from_static(b"the rest"), "{label}");
    }
    assert_eq!(up.count(), 2);
    Ok(())
}

#[tokio::test]
async fn request_chunks_reach_the_upstream_before_the_client_finishes() -> Result<()> {
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let up = Upstream::with("slow-upload", move |req: Request<Incoming>, _seen| {
        let chunks_tx = chunks_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut all = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(d) = frame.into_data() {
                    all.extend_from_slice(&d);
                    let _ = chunks_tx.send(d);
                }
            }
            Response::new(full(all))
        }
    })
    .await;
    let weir = Weir::start(&simple_config(&up, ""))?;
    let first = Bytes::from_static(b"part one;");
    let rest = Bytes::from_static(b"part two");

    for (label, client) in [("h1", h1_client()), ("h2c", h2c_client())] {
        let (tx, body) = channel_body();
        let req = Request::post(weir.url("public", "/upload")).body(body)?;
        let pending = tokio::spawn(async move { send(&client, req).await });
        tx.send(first.clone()).await?;
        let mut at_upstream = Vec::new();
        while at_upstream.len() < first.len() {
            let c = tokio::time::timeout(WAIT, chunks.recv())
                .await
                .with_context(|| format!("{label}: the upstream did not see the first chunk while the request body was still open"))?
                .context("upstream channel closed")?;
            at_upstream.extend_from_slice(&c);
        }
        assert_eq!(at_upstream, first.to_vec(), "{label}");
        tx.send(rest.clone()).await?;
        drop(tx);
        let got = pending.await??;
        assert_eq!(got.status, StatusCode::OK, "{label}");
        assert_eq!(got.text(), "part one;part two", "{label}");
        while let Ok(c) = chunks.try_recv() {
            at_upstream.extend_from_slice(&c);
        }
        assert_eq!(at_upstream, b"part one;part two", "{label}");
    }
    assert_eq!(up.count(), 2);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Headers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() -> Result<()> {
    let up = Upstream::with("hop", |_req, _seen| async {
        Response::builder()
            .header("connection", "x-resp-drop")
            .header("x-resp-drop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-resp-keep", "1")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let weir = Weir::start(&simple_config(&up, ""))?;

    let got = get_with(
        &weir.url("public", "/hop"),
        &[
            ("host", "hop.test"),
            ("connection", "x-drop, keep-alive"),
            ("x-drop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "x"),
            ("te", "gzip"),
            ("x-keep", "1"),
        ],
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "ok");

    let seen = up.last();
    assert_eq!(
        names(&seen.headers),
        [
            "host",
            "via",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-keep",
            "x-request-id"
        ],
        "upstream request headers: {:?}",
        seen.headers
    );
    assert_eq!(header(&seen.headers, "x-keep"), Some("1"));

    assert_eq!(
        names(&got.headers),
        [
            "content-length",
            "date",
            "via",
            "x-request-id",
            "x-resp-keep",
            "x-upstream"
        ],
        "response headers at the client: {:?}",
        got.headers
    );
    assert_eq!(got.header("x-resp-keep"), Some("1"));

    // Connection may come as several lines; every one of them names headers to drop.
    let got = get_with(
        &weir.url("public", "/hop2"),
        &[
            ("host", "hop.test"),
            ("connection", "x-drop-a"),
            ("connection", "x-drop-b"),
            ("x-drop-a", "1"),
            ("x-drop-b", "1"),
            ("x-keep", "2"),
        ],
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.path, "/hop2");
    assert_eq!(
        names(&seen.headers),
        [
            "host",
            "via",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-keep",
            "x-request-id"
        ],
        "upstream request headers: {:?}",
        seen.headers
    );

    // The same check on the raw bytes the client receives (hyper clients could hide things).
    let out = curl(&["-i", "-H", "host: hop.test", &weir.url("public", "/hop")]).await?;
    let head = out
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    for line in head.lines().skip(1) {
        let name = line.split(':').next().unwrap_or_default();
        assert!(
            !["connection", "x-resp-drop", "keep-alive"].contains(&name),
            "{name} reached the client:\n{head}"
        );
    }
    assert!(head.lines().any(|l| l == "x-resp-keep: 1"), "{head}");
    Ok(())
}

/// `trusted` is a listener behind a trusted load balancer (the test client, 127.0.0.1);
/// `public` trusts nobody.
fn trusting_config(up: &Upstream) -> String {
    simple_config(up, "").replace(
        "listeners: [ { name: public, listen: 127.0.0.1:0 } ]",
        "listeners: [ { name: public, listen: 127.0.0.1:0 }, { name: trusted, listen: 127.0.0.1:0, trusted_proxies: [ 10.0.0.0/8, 127.0.0.0/8 ] } ]",
    )
}

#[tokio::test]
async fn forwarding_headers_are_set_and_appended_only_for_trusted_peers() -> Result<()> {
    let up = Upstream::start("fwd").await;
    let weir = Weir::start(&trusting_config(&up))?;
    let forged = [
        ("host", "www.example.test"),
        ("x-forwarded-for", "1.2.3.4"),
        ("x-forwarded-host", "evil.test"),
        ("x-forwarded-port", "443"),
        ("forwarded", "for=1.2.3.4;host=evil.test"),
        ("x-real-ip", "1.2.3.4"),
        ("x-original-url", "/admin"),
    ];

    // From an untrusted peer, every forwarding header is the proxy's own.
    let got = get_with(&weir.url("public", "/fwd"), &forged).await?;
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(header(&seen.headers, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        header(&seen.headers, "x-forwarded-host"),
        Some("www.example.test")
    );
    for name in [
        "x-forwarded-port",
        "forwarded",
        "x-real-ip",
        "x-original-url",
    ] {
        assert_eq!(header(&seen.headers, name), None, "{name} was forwarded");
    }

    // From a trusted peer, its values stand and the peer is appended.
    let got = get_with(&weir.url("trusted", "/fwd"), &forged).await?;
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(header(&seen.headers, "x-forwarded-host"), Some("evil.test"));
    assert_eq!(header(&seen.headers, "x-real-ip"), Some("1.2.3.4"));

    let got = get_with(
        &weir.url("trusted", "/fwd"),
        &[("host", "www.example.test"), ("x-forwarded-for", "1.2.3.4")],
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(
        header(&seen.headers, "x-forwarded-for"),
        Some("1.2.3.4, 127.0.0.1")
    );
    assert_eq!(header(&seen.headers, "x-forwarded-proto"), Some("http"));
    assert_eq!(
        header(&seen.headers, "x-forwarded-host"),
        Some("www.example.test")
    );
    assert_eq!(header(&seen.headers, "host"), Some("www.example.test"));
    assert_eq!(header(&seen.headers, "via"), Some("1.1 weir"));
    assert_eq!(got.header("via"), Some("1.1 weir"));

    // Without an incoming X-Forwarded-For, the client's address alone; an untrusted client's
    // own X-Forwarded-Proto is overwritten.
    let got = get_with(
        &weir.url("public", "/fwd2"),
        &[("host", "www.example.test"), ("x-forwarded-proto", "https")],
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(header(&seen.headers, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        seen.headers
            .get_all("x-forwarded-proto")
            .iter()
            .collect::<Vec<_>>(),
        ["http"]
    );
    Ok(())
}

/// Several header lines of one name are one comma-separated list (RFC 9110 §5.3); appending to
/// X-Forwarded-For or Via must keep every incoming line, not just the first.
#[tokio::test]
async fn forwarded_for_and_via_keep_every_incoming_line() -> Result<()> {
    let up = Upstream::with("lines", |_req, _seen| async {
        Response::builder()
            .header("via", "1.1 origin-a")
            .header("via", "1.1 origin-b")
            .body(full(""))
            .unwrap()
    })
    .await;
    let weir = Weir::start(&trusting_config(&up))?;
    let got = get_with(
        &weir.url("trusted", "/lines"),
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("via", "1.0 edge-a"),
            ("via", "1.1 edge-b"),
        ],
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    let seen = up.last();
    let joined = |h: &http::HeaderMap, name: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let checks = [
        (
            "upstream x-forwarded-for",
            joined(&seen.headers, "x-forwarded-for"),
            "1.2.3.4, 5.6.7.8, 127.0.0.1",
        ),
        (
            "upstream via",
            joined(&seen.headers, "via"),
            "1.0 edge-a, 1.1 edge-b, 1.1 weir",
        ),
        (
            "response via",
            joined(&got.headers, "via"),
            "1.1 origin-a, 1.1 origin-b, 1.1 weir",
        ),
    ];
    let wrong: Vec<String> = checks
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: want {want:?}, got {got:?}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

#[tokio::test]
async fn request_ids_are_generated_or_kept_and_match_on_both_sides() -> Result<()> {
    let up = Upstream::start("rid").await;
    let weir = Weir::start(&simple_config(&up, ""))?;

    // Generated when absent.
    let got = get(&weir.url("public", "/one")).await?;
    assert_eq!(got.status, StatusCode::OK);
    let id = got
        .header("x-request-id")
        .context("response has x-request-id")?
        .to_string();
    assert!(is_uuid(&id), "{id:?} is not UUID-shaped");
    assert_eq!(
        header(&up.last().headers, "x-request-id"),
        Some(id.as_str())
    );

    // Fresh for every request.
    let again = get(&weir.url("public", "/two")).await?;
    let id2 = again
        .header("x-request-id")
        .context("second x-request-id")?
        .to_string();
    assert!(is_uuid(&id2), "{id2:?}");
    assert_ne!(id, id2);
    assert_eq!(
        header(&up.last().headers, "x-request-id"),
        Some(id2.as_str())
    );

    // Kept when the client sends one.
    let got = get_with(
        &weir.url("public", "/three"),
        &[("x-request-id", "client-chosen-id-123")],
    )
    .await?;
    assert_eq!(got.header("x-request-id"), Some("client-chosen-id-123"));
    assert_eq!(
        header(&up.last().headers, "x-request-id"),
        Some("client-chosen-id-123")
    );
    assert_eq!(up.last().headers.get_all("x-request-id").iter().count(), 1);

    // Over HTTP/2 as well.
    let got = send(
        &h2c_client(),
        Request::get(weir.url("public", "/four")).body(full(""))?,
    )
    .await?;
    let id4 = got
        .header("x-request-id")
        .context("h2 x-request-id")?
        .to_string();
    assert!(is_uuid(&id4), "{id4:?}");
    assert_eq!(
        header(&up.last().headers, "x-request-id"),
        Some(id4.as_str())
    );
    assert_eq!(up.count(), 4);
    Ok(())
}

/// Reads from `s` until the peer closes (or `WAIT` passes): everything it sent.
async fn read_to_close(s: &mut TcpStream) -> Result<String> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .context("the connection was not closed")??;
    Ok(String::from_utf8_lossy(&all).into_owned())
}

/// What HTTP/1.1 clients do on one connection, through the native server and through hyper's:
/// pipelined requests (with bodies, by length and chunked) answered in order, HTTP/1.0 with and
/// without keep-alive, and a connection that switches to HTTP/2 or WebSocket after requests it
/// already made (the native server hands it to hyper with what it read).
#[tokio::test]
async fn one_connection_carries_pipelined_http10_and_switched_requests_on_both_servers()
-> Result<()> {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("up").await;
    for server in ["native", "hyper"] {
        let config = simple_config(&up, "").replace(
            "listen: 127.0.0.1:0 }",
            &format!("listen: 127.0.0.1:0, server: {server} }}"),
        );
        let weir = Weir::start(&config)?;
        let addr = weir.addr("public");

        // Three requests in one write; the last closes.
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nfirst\
              POST /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nsec\r\n3\r\nond\r\n0\r\n\r\n\
              GET /c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await?;
        let all = read_to_close(&mut s).await?;
        let statuses: Vec<_> = all.match_indices("HTTP/1.1 200 OK\r\n").collect();
        assert_eq!(statuses.len(), 3, "{server}: three answers in {all:?}");
        // The second body went upstream chunked and may come back in other chunks.
        let at = |s: &str| all.find(s);
        let (first, sec, ond) = (at("first"), at("sec"), at("ond"));
        assert!(
            first.is_some() && first < sec && sec < ond,
            "{server}: bodies echoed in order: {all:?}"
        );
        let last = &all[statuses[2].0..];
        assert!(
            last.to_ascii_lowercase().contains("connection: close"),
            "{server}: the last answer says it closes: {last:?}"
        );

        // HTTP/1.0: closed after the answer unless the client asks to keep it.
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /d HTTP/1.0\r\nHost: t\r\n\r\n").await?;
        // (hyper answers in HTTP/1.0, the native server in 1.1 as nginx does: both valid.)
        let all = read_to_close(&mut s).await?;
        assert!(
            all.starts_with("HTTP/1.") && all.contains(" 200 OK\r\n"),
            "{server}: {all:?}"
        );
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /e HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\nGET /f HTTP/1.0\r\nHost: t\r\n\r\n")
            .await?;
        let all = read_to_close(&mut s).await?;
        let lower = all.to_ascii_lowercase();
        // hyper's server closes after the first (the proxied response carries no keep-alive
        // of its own); the native server keeps the connection, as nginx does.
        let want = if server == "native" { 2 } else { 1 };
        assert_eq!(
            lower.matches(" 200 ok\r\n").count(),
            want,
            "{server}: HTTP/1.0 requests answered on one connection: {all:?}"
        );
        if server == "native" {
            assert!(
                lower.contains("connection: keep-alive"),
                "{server}: keep-alive confirmed to the HTTP/1.0 client: {all:?}"
            );
        }

        // A request, then the HTTP/2 preface on the same connection is not HTTP/2 (only a
        // connection's first bytes may be): refused or closed, the first answer stands.
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /g HTTP/1.1\r\nHost: t\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await?;
        let all = read_to_close(&mut s).await?;
        assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{server}: {all:?}");
        assert_eq!(
            all.matches("HTTP/").count() - all.matches("HTTP/1.1 400 Bad Request\r\n").count(),
            1,
            "{server}: the late preface is not served: {all:?}"
        );

        // h2c with prior knowledge is served whole (hyper, on the native listener too).
        let got = send(
            &h2c_client(),
            Request::get(weir.url("public", "/h")).body(full(""))?,
        )
        .await?;
        assert_eq!((got.status, got.version), (StatusCode::OK, Version::HTTP_2));

        // A request, then an `Expect: 100-continue` upload on the same connection.
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /i HTTP/1.1\r\nHost: t\r\n\r\n").await?;
        let mut head = vec![0u8; 4096];
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(WAIT, s.read(&mut head)).await??;
        assert!(head[..n].starts_with(b"HTTP/1.1 200 OK\r\n"), "{server}");
        s.write_all(b"POST /j HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
            .await?;
        let n = tokio::time::timeout(WAIT, s.read(&mut head)).await??;
        let interim = String::from_utf8_lossy(&head[..n]).into_owned();
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue\r\n"),
            "{server}: {interim:?}"
        );
        s.write_all(b"upload").await?;
        // The echo's head may come with the 100 (it streams the body back as it arrives).
        let all = interim + &read_to_close(&mut s).await?;
        assert!(
            all.contains("200 OK") && all.ends_with("upload"),
            "{server}: {all:?}"
        );

        if server == "native" {
            // A keep-alive connection that waits gives its buffers back to the (bounded) pool,
            // and the gauge shows them.
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n").await?;
            let n = tokio::time::timeout(WAIT, s.read(&mut head)).await??;
            assert!(head[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (_, metrics) = weir.admin_get("/metrics").await?;
            let pooled = metrics
                .lines()
                .find_map(|l| l.strip_prefix("weir_buffer_pool_bytes "))
                .context("no weir_buffer_pool_bytes")?
                .trim()
                .parse::<f64>()?;
            assert!(
                pooled > 0.0 && pooled <= (4 * 256 * 16 * 1024) as f64,
                "pooled bytes: {pooled}"
            );
            drop(s);
        }
    }
    Ok(())
}
