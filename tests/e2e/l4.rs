//! End-to-end: the L4 half. `tcp` listeners balancing over clusters (splice and copy), TLS
//! passthrough routed by SNI with the client verifying the upstream's own certificate, PROXY
//! protocol from an L4 Weir into an L7 Weir, hostile first flights, half-close, idle timeout,
//! reload and drain with connections open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// A TCP upstream: greets each connection with `name\n`, echoes what it reads, and on the
/// client's end of file writes `<eof>` and closes.
struct Echo {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    async fn start(name: &str) -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Echo::on(name, l)
    }

    fn on(name: &str, l: TcpListener) -> Echo {
        let addr = l.local_addr().unwrap();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.write_all(b"<eof>").await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Echo { addr, task }
    }
}

/// Reads the greeting line.
async fn greeting(s: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .context("greeting timed out")??;
        if n == 0 {
            bail!(
                "closed before the greeting ({:?})",
                String::from_utf8_lossy(&line)
            );
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8(line)?);
        }
        line.push(b[0]);
    }
}

/// Connects to `addr` from `from` (a loopback address of the test's choosing).
async fn connect_from(from: &str, addr: SocketAddr) -> Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{from}:0").parse()?)?;
    Ok(sock.connect(addr).await?)
}

/// Reads until the peer closes (or resets), within `WAIT`.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    out
}

fn tcp_config(eps: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = eps
        .iter()
        .map(|a| format!("{{ address: \"{a}\" }}"))
        .collect();
    format!(
        "access_log: {{ path: \"{{dir}}/access.log\" }}\n\
listeners:\n\
  - {{ name: db, listen: 127.0.0.1:0, protocol: tcp, cluster: echo }}\n\
  - {{ name: copied, listen: 127.0.0.1:0, protocol: tcp, cluster: echo, splice: false }}\n\
clusters:\n\
  - {{ name: echo, endpoints: [ {} ]{extra} }}\n",
        list.join(", ")
    )
}

async fn access_lines(weir: &Weir, n: usize) -> Result<Vec<serde_json::Value>> {
    weir.access_log(&format!("{n} access log lines"), |l| l.len() >= n)
        .await
}

#[tokio::test]
async fn tcp_listeners_balance_and_relay_bytes_exactly_with_splice_and_with_copy() -> Result<()> {
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    let weir = Weir::start(&tcp_config(&[a.addr, b.addr], ""))?;
    // 1 MiB of bytes that are not all alike, both ways, through each relay.
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    for listener in ["db", "copied"] {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(weir.addr(listener)).await?;
            seen.insert(greeting(&mut s).await?);
            let (mut r, mut w) = s.into_split();
            let p = payload.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&p).await?;
                w.shutdown().await?;
                anyhow::Ok(())
            });
            let mut back = Vec::new();
            tokio::time::timeout(WAIT, r.read_to_end(&mut back)).await??;
            writer.await??;
            assert_eq!(
                back.len(),
                payload.len() + 5,
                "{listener}: bytes lost or added"
            );
            assert!(
                back[..payload.len()] == payload[..],
                "{listener}: bytes changed"
            );
            assert_eq!(
                &back[payload.len()..],
                b"<eof>",
                "{listener}: half-close relayed"
            );
        }
        assert_eq!(
            seen.len(),
            2,
            "{listener}: round robin reaches both: {seen:?}"
        );
    }
    let received = weir
        .sample("weir_listener_received_bytes_total{listener=\"db\"}")
        .await?;
    assert_eq!(received, (4u64 << 20) as f64);
    let lines = access_lines(&weir, 8).await?;
    assert_eq!(lines.len(), 8, "one line per connection: {lines:?}");
    let l = &lines[0];
    assert_eq!(l["kind"], "tcp");
    assert_eq!(l["cluster"], "echo");
    assert_eq!(l["bytes_received"], 1 << 20);
    assert_eq!(
        l["bytes_sent"],
        (1 << 20) + 7,
        "greeting + echo + <eof>: {l}"
    );
    assert_eq!(l["close"], "closed");
    Ok(())
}

#[tokio::test]
async fn a_refused_connect_is_retried_on_another_endpoint_before_any_byte_moves() -> Result<()> {
    let live = Echo::start("live").await;
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        l.local_addr()?
    };
    let weir = Weir::start(&tcp_config(
        &[dead, live.addr],
        ", health: { max_failures: 100 }",
    ))?;
    for i in 0..10 {
        let mut s = TcpStream::connect(weir.addr("db")).await?;
        assert_eq!(greeting(&mut s).await?, "live", "connection {i}");
        s.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        tokio::time::timeout(WAIT, s.read_exact(&mut b)).await??;
        assert_eq!(&b, b"ping");
    }
    let lines = access_lines(&weir, 10).await?;
    assert!(
        lines.iter().any(|l| l["attempts"] == 2),
        "some connections tried the dead endpoint first: {lines:?}"
    );
    assert!(lines.iter().all(|l| l["upstream"] == live.addr.to_string()));
    // With every endpoint dead, the client's connection is closed and counted.
    drop(live);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut s = TcpStream::connect(weir.addr("db")).await?;
    assert!(read_to_close(&mut s).await.is_empty());
    weir.eventually("a connect failure counted", async || {
        weir.sample("weir_listener_connect_failures_total{listener=\"db\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn hashing_balancers_keep_a_client_address_on_one_endpoint() -> Result<()> {
    let (a, b, c) = (
        Echo::start("a").await,
        Echo::start("b").await,
        Echo::start("c").await,
    );
    let weir = Weir::start(&tcp_config(&[a.addr, b.addr, c.addr], ", lb: maglev"))?;
    let mut by_client = std::collections::BTreeMap::new();
    for client in [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
        "127.0.0.6",
    ] {
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let mut s = connect_from(client, weir.addr("db")).await?;
            names.insert(greeting(&mut s).await?);
        }
        assert_eq!(names.len(), 1, "{client} stays on one endpoint: {names:?}");
        by_client.insert(client, names.into_iter().next().unwrap());
    }
    let spread: std::collections::BTreeSet<_> = by_client.values().collect();
    assert!(
        spread.len() >= 2,
        "clients spread over endpoints: {by_client:?}"
    );
    Ok(())
}

/// A TLS upstream that tells who it is: after the handshake it writes `name\n` and the ALPN
/// protocol it agreed, then closes.
async fn tls_upstream(
    name: &str,
    dir: &std::path::Path,
    names: &[&str],
) -> (SocketAddr, Vec<u8>, tokio::task::JoinHandle<()>) {
    let (_cert, key, der) = self_signed(dir, name, names);
    let key = PrivateKeyDer::from_pem_file(&key).expect("key");
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![CertificateDer::from(der.clone())], key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let name = name.to_string();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, name) = (acceptor.clone(), name.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let alpn = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default();
                let _ = tls.write_all(format!("{name} {alpn}\n").as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, der, task)
}

/// A client that trusts only `der` and asks for h2.
fn client_trusting(der: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der.to_vec())).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// A TLS handshake through `addr` for `name`, verified against `der`; returns what the
/// upstream wrote.
async fn tls_hello(addr: SocketAddr, name: &str, der: &[u8]) -> Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let server = ServerName::try_from(name.to_string())?;
    let mut tls = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(client_trusting(der)).connect(server, tcp),
    )
    .await
    .context("handshake timed out")??;
    let mut out = String::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_string(&mut out)).await?;
    Ok(out.trim_end().to_string())
}

fn passthrough_config(api: SocketAddr, other: SocketAddr, default: bool) -> String {
    let default = if default {
        r#"{ server_names: [ "*" ], cluster: other }"#
    } else {
        ""
    };
    format!(
        r#"access_log: {{ path: "{{dir}}/access.log" }}
limits: {{ request_head_timeout: 500ms }}
listeners:
  - name: edge
    listen: 127.0.0.1:0
    protocol: tls_passthrough
    sni: [ {{ server_names: [ api.example.com, "*.api.example.com" ], cluster: api }}, {default} ]
clusters:
  - {{ name: api, endpoints: [ {{ address: "{api}" }} ] }}
  - {{ name: other, endpoints: [ {{ address: "{other}" }} ] }}
"#
    )
}

#[tokio::test]
async fn tls_passthrough_routes_by_sni_and_the_client_verifies_the_upstreams_own_certificate()
-> Result<()> {
    let dir = TempDir::new();
    let (api, api_der, _t1) =
        tls_upstream("api", &dir.0, &["api.example.com", "v1.api.example.com"]).await;
    let (other, other_der, _t2) =
        tls_upstream("other", &dir.0, &["www.example.com", "other.example.com"]).await;
    let weir = Weir::start(&passthrough_config(api, other, true))?;
    let edge = weir.addr("edge");
    // The hello is relayed untouched: the handshake (and ALPN) is the upstream's own, checked
    // against the upstream's certificate alone.
    assert_eq!(
        tls_hello(edge, "api.example.com", &api_der).await?,
        "api h2"
    );
    assert_eq!(
        tls_hello(edge, "v1.api.example.com", &api_der).await?,
        "api h2"
    );
    assert_eq!(
        tls_hello(edge, "www.example.com", &other_der).await?,
        "other h2"
    );
    // Case does not matter; the wildcard needs a label before the suffix.
    assert_eq!(
        tls_hello(edge, "API.EXAMPLE.COM", &api_der).await?,
        "api h2"
    );
    assert_eq!(
        tls_hello(edge, "other.example.com", &other_der).await?,
        "other h2"
    );
    // The wrong certificate for the name fails the handshake at the client, as it should.
    assert!(tls_hello(edge, "www.example.com", &api_der).await.is_err());
    let lines = access_lines(&weir, 5).await?;
    let l = lines
        .iter()
        .find(|l| l["sni"] == "v1.api.example.com")
        .context("a line")?;
    assert_eq!(l["kind"], "tls_passthrough");
    assert_eq!(l["cluster"], "api");
    assert_eq!(l["upstream"], api.to_string());
    Ok(())
}

/// Writes a ClientHello for `name` cut into records of `record` bytes, each record in its own
/// TCP segment some milliseconds apart, then finishes the handshake with rustls on the same
/// socket; returns what the upstream wrote.
fn trickled_hello(addr: SocketAddr, name: &str, der: &[u8], record: usize) -> Result<String> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(WAIT))?;
    let server = ServerName::try_from(name.to_string())?;
    let mut conn = rustls::ClientConnection::new(client_trusting(der), server)?;
    let mut flight = Vec::new();
    conn.write_tls(&mut flight)?;
    assert_eq!(flight[0], 22, "a handshake record");
    let msg = &flight[5..];
    for chunk in msg.chunks(record) {
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        rec.extend_from_slice(chunk);
        // Each record itself in two segments.
        let (x, y) = rec.split_at(rec.len() / 2);
        sock.write_all(x)?;
        std::thread::sleep(Duration::from_millis(5));
        sock.write_all(y)?;
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out);
    Ok(out.trim_end().to_string())
}

#[tokio::test]
async fn a_client_hello_over_many_segments_and_records_is_routed() -> Result<()> {
    let dir = TempDir::new();
    let (api, api_der, _t1) = tls_upstream("api", &dir.0, &["api.example.com"]).await;
    let (other, _, _t2) = tls_upstream("other", &dir.0, &["other.example.com"]).await;
    let weir = Weir::start(&passthrough_config(api, other, true))?;
    let edge = weir.addr("edge");
    for record in [40, 200] {
        let der = api_der.clone();
        let got = tokio::task::spawn_blocking(move || {
            trickled_hello(edge, "api.example.com", &der, record)
        })
        .await??;
        assert_eq!(got, "api h2", "records of {record} bytes");
    }
    Ok(())
}

#[tokio::test]
async fn first_flights_that_are_not_a_routable_client_hello_are_closed_and_counted() -> Result<()> {
    let dir = TempDir::new();
    let (api, api_der, _t1) = tls_upstream("api", &dir.0, &["api.example.com"]).await;
    let (other, _, _t2) = tls_upstream("other", &dir.0, &["other.example.com"]).await;
    // No `*`: a name nobody serves has no route.
    let weir = Weir::start(&passthrough_config(api, other, false))?;
    let edge = weir.addr("edge");
    let cases: &[(&[u8], &str)] = &[
        (
            b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            "not_tls",
        ),
        (b"\x16\x03\x01\xff\xff", "client_hello"),
        (b"\x16\x03\x01\x00\x00", "client_hello"),
        (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", "client_hello"),
        (b"\x80\x2e\x01\x03\x01", "not_tls"),
        (b"", "timeout"),
        (b"\x16\x03\x01\x00", "timeout"),
    ];
    for (flight, reason) in cases {
        let series =
            format!("weir_listener_refused_total{{listener=\"edge\",reason=\"{reason}\"}}");
        let before = weir.sample(&series).await?;
        let mut s = TcpStream::connect(edge).await?;
        s.write_all(flight).await?;
        let back = read_to_close(&mut s).await;
        assert!(back.is_empty(), "{reason}: nothing comes back: {back:?}");
        assert_eq!(
            weir.sample(&series).await?,
            before + 1.0,
            "{reason}: {flight:?}"
        );
    }
    // A peer that closes halfway through its hello.
    let mut s = TcpStream::connect(edge).await?;
    s.write_all(b"\x16\x03\x01\x02\x00\x01").await?;
    drop(s);
    // A name nobody serves.
    let series = "weir_listener_refused_total{listener=\"edge\",reason=\"no_route\"}";
    assert!(
        tls_hello(edge, "nobody.example.com", &api_der)
            .await
            .is_err()
    );
    weir.eventually("no_route counted", async || {
        weir.sample(series).await.unwrap_or(0.0) == 1.0
    })
    .await?;
    // The listener still serves.
    assert_eq!(
        tls_hello(edge, "api.example.com", &api_der).await?,
        "api h2"
    );
    assert!(!weir.stderr_text().contains("panicked"));
    Ok(())
}

/// An HTTP upstream that answers with the `X-Forwarded-For` it got.
async fn xff_upstream() -> Upstream {
    Upstream::with("app", |req, _seen| async move {
        let xff = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        http::Response::new(full(xff))
    })
    .await
}

#[tokio::test]
async fn proxy_protocol_carries_the_client_address_from_an_l4_weir_into_an_l7_weir() -> Result<()> {
    let app = xff_upstream().await;
    for version in ["v1", "v2"] {
        let gateway = Weir::start(&format!(
            "access_log: {{ path: \"{{dir}}/access.log\" }}\n\
limits: {{ request_head_timeout: 500ms }}\n\
listeners:\n\
  - {{ name: in, listen: 127.0.0.1:0, proxy_protocol: {{ accept: {version} }}, trusted_proxies: [ 127.0.0.1 ] }}\n\
routes: [ {{ name: r, cluster: app }} ]\n\
clusters: [ {{ name: app, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
            app.addr
        ))?;
        let front = Weir::start(&format!(
            "listeners:\n\
  - {{ name: front, listen: 127.0.0.1:0, protocol: tcp, cluster: gateways, proxy_protocol: {{ send: {version} }} }}\n\
clusters: [ {{ name: gateways, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
            gateway.addr("in")
        ))?;
        // The client connects from 127.0.0.2; the gateway's peer is the front (127.0.0.1).
        for _ in 0..3 {
            let mut s = connect_from("127.0.0.2", front.addr("front")).await?;
            s.write_all(b"GET /who HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
                .await?;
            let text = String::from_utf8(read_to_close(&mut s).await)?;
            assert!(text.starts_with("HTTP/1.1 200"), "{version}: {text}");
            assert!(
                text.ends_with("\r\n\r\n127.0.0.2"),
                "{version}: XFF names the client: {text}"
            );
        }
        let lines = access_lines(&gateway, 3).await?;
        assert!(
            lines[0]["client"]
                .as_str()
                .unwrap_or("")
                .starts_with("127.0.0.2:"),
            "{version}: the gateway logs the client: {lines:?}"
        );

        // A trusted peer that connects and closes without a byte (a TCP health check) is not
        // counted; one that sends no header is refused; an untrusted one cannot send one.
        drop(TcpStream::connect(gateway.addr("in")).await?);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut s = TcpStream::connect(gateway.addr("in")).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await?;
        assert!(read_to_close(&mut s).await.is_empty(), "{version}");
        assert_eq!(
            gateway
                .sample("weir_listener_refused_total{listener=\"in\",reason=\"proxy_protocol\"}")
                .await?,
            1.0
        );
        let mut s = connect_from("127.0.0.3", gateway.addr("in")).await?;
        s.write_all(b"PROXY TCP4 10.9.9.9 10.0.0.1 1 2\r\nGET / HTTP/1.1\r\nHost: app\r\n\r\n")
            .await?;
        let text = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{version}: an untrusted PROXY line is not HTTP: {text}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn idle_connections_are_closed_and_counted() -> Result<()> {
    let echo = Echo::start("e").await;
    let weir = Weir::start(&format!(
        "listeners:\n\
  - {{ name: db, listen: 127.0.0.1:0, protocol: tcp, cluster: echo, idle_timeout: 300ms }}\n\
clusters: [ {{ name: echo, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        echo.addr
    ))?;
    let mut s = TcpStream::connect(weir.addr("db")).await?;
    assert_eq!(greeting(&mut s).await?, "e");
    // Traffic keeps it open past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
    }
    let started = std::time::Instant::now();
    assert!(read_to_close(&mut s).await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert_eq!(
        weir.sample("weir_timeouts_total{kind=\"tcp_idle\"}")
            .await?,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn a_reload_moves_new_connections_and_leaves_open_ones_alone_and_drain_closes_them()
-> Result<()> {
    let (a, b) = (Echo::start("a").await, Echo::start("b").await);
    let yaml = |cluster: &str| {
        format!(
            "drain_timeout: 1s\n\
listeners:\n\
  - {{ name: db, listen: 127.0.0.1:0, protocol: tcp, cluster: {cluster} }}\n\
clusters:\n\
  - {{ name: a, endpoints: [ {{ address: \"{}\" }} ] }}\n\
  - {{ name: b, endpoints: [ {{ address: \"{}\" }} ] }}\n",
            a.addr, b.addr
        )
    };
    let mut weir = Weir::start(&yaml("a"))?;
    let addr = weir.addr("db");
    let mut open = TcpStream::connect(addr).await?;
    assert_eq!(greeting(&mut open).await?, "a");
    // The listener keeps its address; its cluster changes.
    let text = std::fs::read_to_string(&weir.config)?.replace("cluster: a }", "cluster: b }");
    std::fs::write(&weir.config, text)?;
    let (status, body) = weir.admin("POST", "/reload", "").await?;
    assert_eq!(status, 200, "{body}");
    let mut new = TcpStream::connect(addr).await?;
    assert_eq!(greeting(&mut new).await?, "b");
    // The connection opened before still reaches a.
    open.write_all(b"still here").await?;
    let mut back = [0u8; 10];
    tokio::time::timeout(WAIT, open.read_exact(&mut back)).await??;
    assert_eq!(&back, b"still here");

    // SIGTERM: open connections get until drain_timeout, then are closed; weir exits.
    let started = std::time::Instant::now();
    weir.signal(15);
    assert!(read_to_close(&mut open).await.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed at the deadline, not at once: {:?}",
        started.elapsed()
    );
    weir.wait_exit(Duration::from_secs(5))?;
    Ok(())
}

#[tokio::test]
async fn l4_config_mistakes_name_the_field() -> Result<()> {
    let cases = [
        (
            "listeners: [ { name: x, listen: 127.0.0.1:0, protocol: tcp } ]\nclusters: [ { name: c, endpoints: [ { address: \"127.0.0.1:1\" } ] } ]\n",
            "listeners[0].cluster",
        ),
        (
            "listeners: [ { name: x, listen: 127.0.0.1:0, protocol: tls_passthrough } ]\n",
            "listeners[0].sni",
        ),
        (
            "listeners: [ { name: x, listen: 127.0.0.1:0, protocol: tls_passthrough, sni: [ { server_names: [ \"a..b\" ], cluster: c } ] } ]\nclusters: [ { name: c, endpoints: [ { address: \"127.0.0.1:1\" } ] } ]\n",
            "listeners[0].sni[0].server_names[0]",
        ),
        (
            "listeners: [ { name: x, listen: 127.0.0.1:0, proxy_protocol: { accept: v2 } } ]\n",
            "listeners[0].proxy_protocol.accept",
        ),
        (
            "listeners: [ { name: x, listen: 127.0.0.1:0, protocol: tcp, cluster: cc } ]\nclusters: [ { name: c, endpoints: [ { address: \"127.0.0.1:1\" } ] } ]\n",
            "did you mean",
        ),
    ];
    for (yaml, want) in cases {
        let dir = TempDir::new();
        let path = dir.write("weir.yaml", yaml);
        let out = std::process::Command::new(weir_bin())
            .arg("validate")
            .arg(&path)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml}");
        assert!(err.contains(want), "{want} in {err}");
        assert!(err.contains("weir.yaml:1"), "file and line in {err}");
    }
    Ok(())
}

#[tokio::test]
async fn active_tcp_checks_take_a_dead_endpoint_out_before_connections_try_it() -> Result<()> {
    let live = Echo::start("live").await;
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        l.local_addr()?
    };
    let weir = Weir::start(&tcp_config(
        &[dead, live.addr],
        ", health: { active: { tcp: true, interval: 100ms, timeout: 200ms, unhealthy: 1 } }",
    ))?;
    weir.eventually("the probe takes the dead endpoint out", async || {
        let (_, body) = weir.admin_get("/clusters").await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v[0]["endpoints"][0]["probes"] == "failing"
    })
    .await?;
    for _ in 0..6 {
        let mut s = TcpStream::connect(weir.addr("db")).await?;
        assert_eq!(greeting(&mut s).await?, "live");
    }
    let lines = access_lines(&weir, 6).await?;
    assert!(
        lines.iter().all(|l| l["attempts"] == 1),
        "no connection tried the endpoint the probes took out: {lines:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_l4_listener_accepts_proxy_protocol_and_passes_the_client_on() -> Result<()> {
    // client (127.0.0.2) → outer tcp (sends v2) → inner tcp (accepts v2, sends v1) → gateway
    // (accepts v1) → app: the app sees the first client.
    let app = xff_upstream().await;
    let gateway = Weir::start(&format!(
        "listeners:\n\
  - {{ name: in, listen: 127.0.0.1:0, proxy_protocol: {{ accept: v1 }}, trusted_proxies: [ 127.0.0.1 ] }}\n\
routes: [ {{ name: r, cluster: app }} ]\n\
clusters: [ {{ name: app, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        app.addr
    ))?;
    let inner = Weir::start(&format!(
        "listeners:\n\
  - {{ name: inner, listen: 127.0.0.1:0, protocol: tcp, cluster: gw, trusted_proxies: [ 127.0.0.1 ], proxy_protocol: {{ accept: v2, send: v1 }} }}\n\
clusters: [ {{ name: gw, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        gateway.addr("in")
    ))?;
    let outer = Weir::start(&format!(
        "listeners:\n\
  - {{ name: outer, listen: 127.0.0.1:0, protocol: tcp, cluster: inner, proxy_protocol: {{ send: v2 }} }}\n\
clusters: [ {{ name: inner, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        inner.addr("inner")
    ))?;
    let mut s = connect_from("127.0.0.2", outer.addr("outer")).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await?;
    let text = String::from_utf8(read_to_close(&mut s).await)?;
    assert!(text.ends_with("\r\n\r\n127.0.0.2"), "{text}");
    Ok(())
}
