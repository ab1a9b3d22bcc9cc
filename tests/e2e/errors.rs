//! End-to-end: errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::support::*;
use anyhow::{Context, Result, bail, ensure};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A config with `limits`, a `/ok` route to the `live` upstream, and the given extra routes and
/// clusters (YAML list items, each on its own line).
fn config(limits: &str, live: SocketAddr, routes: &[String], clusters: &[String]) -> String {
    let mut y = format!(
        "limits: {{ {limits} }}\n\
listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes:\n  - {{ name: ok, match: {{ path_prefix: /ok }}, cluster: live }}\n"
    );
    for r in routes {
        y.push_str(&format!("  - {r}\n"));
    }
    y.push_str(&format!(
        "clusters:\n  - {{ name: live, endpoints: [ {{ address: \"{live}\" }} ] }}\n"
    ));
    for c in clusters {
        y.push_str(&format!("  - {c}\n"));
    }
    y
}

fn cluster(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("{{ name: {name}, endpoints: [ {{ address: \"{addr}\" }} ]{extra} }}")
}

/// A response the proxy made itself: the status, its request id header, and the exact body.
fn assert_proxy_made(got: &Got, status: u16, what: &str) {
    assert_eq!(got.status.as_u16(), status, "{}", got.text());
    assert_eq!(got.upstream(), "", "answered by an upstream");
    let id = got
        .header("x-request-id")
        .expect("proxy-made response without x-request-id");
    assert_eq!(got.text(), format!("{status} {what} (request id {id})\n"));
    assert_eq!(
        got.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
}

/// After whatever a test did: a normal request is still a 200 and weir never panicked.
async fn assert_still_serving(weir: &Weir) -> Result<()> {
    let got = get(&weir.url("public", "/ok/after")).await?;
    assert_eq!(
        (got.status, got.upstream()),
        (StatusCode::OK, "live"),
        "{}",
        got.text()
    );
    let err = weir.stderr_text();
    assert!(!err.contains("panicked"), "weir panicked:\n{err}");
    Ok(())
}

/// A loopback port with nothing listening on it.
async fn refusing_addr() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    drop(l);
    Ok(addr)
}

/// A raw TCP upstream; `on_conn` gets each accepted connection.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start<F, Fut>(on_conn: F) -> Result<RawUpstream>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let acc = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((s, _)) = l.accept().await {
                acc.fetch_add(1, SeqCst);
                conns.spawn(on_conn(s));
            }
        });
        Ok(RawUpstream {
            addr,
            accepted,
            task,
        })
    }

    /// Accepts, reads everything, never answers (and never closes).
    async fn silent() -> Result<RawUpstream> {
        Self::start(|mut s| async move {
            let mut buf = [0u8; 4096];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            // Peer closed: keep our side open anyway until the task is aborted.
            std::future::pending::<()>().await;
        })
        .await
    }

    /// Reads the request head, then closes (`reset`: with an RST instead of a FIN).
    async fn hang_up(reset: bool) -> Result<RawUpstream> {
        Self::start(move |mut s| async move {
            let _ = read_head(&mut s).await;
            if reset {
                let _ = s.set_zero_linger();
            }
            drop(s);
        })
        .await
    }
}

/// Reads until the end of an HTTP head; returns everything read.
async fn read_head(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(buf)
}

/// A response read off a raw connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    /// Header lines, names lowercased: (name, value).
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (Content-Length or chunked, or to EOF) within `limit`. `Ok(None)` if the
/// connection closed (or was reset) before a response began.
async fn read_response(s: &mut TcpStream, limit: Duration) -> Result<Option<RawResponse>> {
    tokio::time::timeout(limit, read_response_inner(s))
        .await
        .context("no response in time")?
}

async fn read_response_inner(s: &mut TcpStream) -> Result<Option<RawResponse>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            Err(_) if buf.is_empty() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            bail!(
                "connection closed mid-head: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[head_end..].to_vec();
    let mut res = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = res.header("content-length") {
        let len: usize = len.parse()?;
        while body.len() < len {
            let n = s.read(&mut chunk).await?;
            ensure!(n > 0, "connection closed mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
    } else if res
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        // Good enough for the short bodies here: read to the last chunk and strip the framing.
        while !body.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut chunk).await?;
            ensure!(n > 0, "connection closed mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let i = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .context("chunk size")?;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..i])?.trim(), 16)?;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[i + 2..i + 2 + size]);
            rest = &rest[i + 2 + size + 2..];
        }
        body = out;
    } else if status >= 200 && status != 204 && status != 304 {
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    res.body = body;
    Ok(Some(res))
}

/// How a connection ended: bytes received before the end, and whether it was reset.
#[derive(Debug)]
struct Ended {
    data: Vec<u8>,
    reset: bool,
    after: Duration,
}

/// Reads until the peer closes or resets, for at most `limit` (error if still open then).
async fn wait_closed(s: &mut TcpStream, since: Instant, limit: Duration) -> Result<Ended> {
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = since + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => bail!(
                "connection still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&data)
            ),
            Ok(Ok(0)) => {
                return Ok(Ended {
                    data,
                    reset: false,
                    after: since.elapsed(),
                });
            }
            Ok(Ok(n)) => data.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => {
                return Ok(Ended {
                    data,
                    reset: true,
                    after: since.elapsed(),
                });
            }
        }
    }
}

/// Connects and performs one full GET on a fresh raw connection, which is returned open.
async fn raw_get(addr: SocketAddr, path: &str) -> Result<(TcpStream, RawResponse)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await?;
    let res = read_response(&mut s, Duration::from_secs(5))
        .await?
        .context("closed without a response")?;
    Ok((s, res))
}

#[tokio::test]
async fn refused_upstream_is_a_quick_502() -> Result<()> {
    let live = Upstream::start("live").await;
    let dead = refusing_addr().await?;
    let weir = Weir::start(&config(
        "",
        live.addr,
        &["{ name: dead, match: { path_prefix: /dead }, cluster: dead }".into()],
        &[cluster("dead", dead, ", timeouts: { connect: 5s }")],
    ))?;
    for _ in 0..3 {
        let start = Instant::now();
        let got = get(&weir.url("public", "/dead/x")).await?;
        let took = start.elapsed();
        assert_proxy_made(&got, 502, "upstream unavailable");
        assert!(
            took < Duration::from_secs(1),
            "a refused connect took {took:?} (connect timeout is 5s)"
        );
    }
    // A client-supplied request id is kept and echoed.
    let got = get_with(
        &weir.url("public", "/dead/x"),
        &[("x-request-id", "abc-123")],
    )
    .await?;
    assert_proxy_made(&got, 502, "upstream unavailable");
    assert_eq!(got.header("x-request-id"), Some("abc-123"));
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn silent_upstream_is_a_504_after_the_request_timeout() -> Result<()> {
    let live = Upstream::start("live").await;
    let silent = RawUpstream::silent().await?;
    let weir = Weir::start(&config(
        "",
        live.addr,
        &["{ name: hang, match: { path_prefix: /hang }, cluster: hang }".into()],
        &[cluster(
            "hang",
            silent.addr,
            ", timeouts: { request: 300ms }",
        )],
    ))?;
    let start = Instant::now();
    let got = get(&weir.url("public", "/hang")).await?;
    let took = start.elapsed();
    assert_proxy_made(&got, 504, "upstream timed out");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        "504 after {took:?}, timeout 300ms"
    );
    assert!(
        silent.accepted.load(SeqCst) >= 1,
        "the request never reached the silent upstream"
    );
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn route_timeout_overrides_the_clusters() -> Result<()> {
    let live = Upstream::start("live").await;
    let silent = RawUpstream::silent().await?;
    let slow = Upstream::start("slow").await;
    let weir = Weir::start(&config(
        "",
        live.addr,
        &[
            "{ name: hang-short, match: { path_prefix: /hang/short }, cluster: hang }".into(),
            "{ name: hang-long, match: { path_prefix: /hang/long }, cluster: hang, timeout: 1200ms }".into(),
            "{ name: slow-cut, match: { path_prefix: /slow/cut }, cluster: slow }".into(),
            "{ name: slow-ok, match: { path_prefix: /slow/ok }, cluster: slow, timeout: 3s }".into(),
            "{ name: quick, match: { path_prefix: /quick }, cluster: slow-default, timeout: 300ms }".into(),
        ],
        &[
            cluster("hang", silent.addr, ", timeouts: { request: 300ms }"),
            cluster("slow", slow.addr, ", timeouts: { request: 300ms }"),
            cluster("slow-default", slow.addr, ""),
        ],
    ))?;
    let timed = |path: &'static str, delay: &'static str| {
        let url = weir.url("public", path);
        async move {
            let start = Instant::now();
            let got = get_with(&url, &[("x-delay-ms", delay)]).await?;
            Ok::<_, anyhow::Error>((got, start.elapsed()))
        }
    };
    // All at once, to keep the test short.
    let (short, long, cut, ok, quick) = tokio::try_join!(
        timed("/hang/short", "0"),
        timed("/hang/long", "0"),
        timed("/slow/cut", "700"),
        timed("/slow/ok", "700"),
        timed("/quick", "700"),
    )?;
    let ms = |d: Duration| d.as_millis();
    assert_proxy_made(&short.0, 504, "upstream timed out");
    assert!(
        (290..1100).contains(&ms(short.1)),
        "cluster timeout 300ms: 504 after {:?}",
        short.1
    );
    assert_proxy_made(&long.0, 504, "upstream timed out");
    assert!(
        (1190..3000).contains(&ms(long.1)),
        "route timeout 1200ms: 504 after {:?}",
        long.1
    );
    assert_proxy_made(&cut.0, 504, "upstream timed out");
    assert!(
        (290..1100).contains(&ms(cut.1)),
        "cluster timeout 300ms on a 700ms upstream: 504 after {:?}",
        cut.1
    );
    assert_eq!(
        (ok.0.status, ok.0.upstream()),
        (StatusCode::OK, "slow"),
        "route timeout 3s on a 700ms upstream: {}",
        ok.0.text()
    );
    assert!(ms(ok.1) >= 690, "{:?}", ok.1);
    // A route timeout shorter than the cluster's (default 15s) default wins too.
    assert_proxy_made(&quick.0, 504, "upstream timed out");
    assert!(
        (290..1100).contains(&ms(quick.1)),
        "route timeout 300ms: 504 after {:?}",
        quick.1
    );
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn upstream_hanging_up_or_talking_nonsense_is_a_502() -> Result<()> {
    let live = Upstream::start("live").await;
    let fin = RawUpstream::hang_up(false).await?;
    let rst = RawUpstream::hang_up(true).await?;
    let garbage = RawUpstream::start(|mut s| async move {
        let _ = read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 abc\r\n\r\n").await;
    })
    .await?;
    let weir = Weir::start(&config(
        "",
        live.addr,
        &[
            "{ name: fin, match: { path_prefix: /fin }, cluster: fin }".into(),
            "{ name: rst, match: { path_prefix: /rst }, cluster: rst }".into(),
            "{ name: garbage, match: { path_prefix: /garbage }, cluster: garbage }".into(),
        ],
        &[
            cluster("fin", fin.addr, ""),
            cluster("rst", rst.addr, ""),
            cluster("garbage", garbage.addr, ""),
        ],
    ))?;
    for path in ["/fin", "/rst", "/garbage", "/fin", "/rst", "/garbage"] {
        let start = Instant::now();
        let got = get(&weir.url("public", path)).await?;
        assert_proxy_made(&got, 502, "upstream unavailable");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{path}: took {:?}",
            start.elapsed()
        );
    }
    // Also for a POST with a body (the upstream hangs up before reading it), and over h2c.
    let got = send(
        &h1_client(),
        Request::post(weir.url("public", "/fin")).body(full(vec![b'x'; 100_000]))?,
    )
    .await?;
    assert_proxy_made(&got, 502, "upstream unavailable");
    let got = send(
        &h2c_client(),
        Request::get(weir.url("public", "/rst")).body(full(""))?,
    )
    .await?;
    assert_proxy_made(&got, 502, "upstream unavailable");
    let accepted = (
        fin.accepted.load(SeqCst),
        rst.accepted.load(SeqCst),
        garbage.accepted.load(SeqCst),
    );
    assert!(
        accepted.0 >= 3 && accepted.1 >= 3 && accepted.2 >= 2,
        "upstream connections: {accepted:?}"
    );
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn upstream_dying_mid_response_body_aborts_the_response() -> Result<()> {
    let live = Upstream::start("live").await;
    // Promises 100 bytes, sends 5, closes.
    let sized = RawUpstream::start(|mut s| async move {
        let _ = read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
            .await;
    })
    .await?;
    // One chunk, then closes without the last chunk.
    let chunked = RawUpstream::start(|mut s| async move {
        let _ = read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
    })
    .await?;
    let weir = Weir::start(&config(
        "",
        live.addr,
        &[
            "{ name: sized, match: { path_prefix: /sized }, cluster: sized }".into(),
            "{ name: chunked, match: { path_prefix: /chunked }, cluster: chunked }".into(),
        ],
        &[
            cluster("sized", sized.addr, ""),
            cluster("chunked", chunked.addr, ""),
        ],
    ))?;
    // Clients must see an error, never a complete (truncated) response.
    for path in ["/sized", "/chunked"] {
        for (proto, client) in [("h1", h1_client()), ("h2c", h2c_client())] {
            let got = send(
                &client,
                Request::get(weir.url("public", path)).body(full(""))?,
            )
            .await;
            assert!(
                got.is_err(),
                "{proto} {path}: a cut-off body arrived as a complete response: {got:?}"
            );
        }
    }
    // On the wire: the head went out, then the body stops short and the connection closes.
    for (path, framing, body) in [
        ("/sized", "content-length: 100", &b"hello"[..]),
        ("/chunked", "transfer-encoding: chunked", b"5\r\nhello\r\n"),
    ] {
        let mut s = TcpStream::connect(weir.addr("public")).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await?;
        let ended = wait_closed(&mut s, Instant::now(), Duration::from_secs(3)).await?;
        let text = String::from_utf8_lossy(&ended.data).into_owned();
        let (head, rest) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("{path}: no head in {text:?}"))?;
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains(framing),
            "{path}: {head}"
        );
        assert_eq!(rest.as_bytes(), body, "{path}: body on the wire");
    }
    assert_still_serving(&weir).await
}

/// A listener whose accept queue is full, so that new connects hang (SYNs are dropped).
async fn backlogged() -> Result<(TcpListener, Vec<TcpStream>)> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind("127.0.0.1:0".parse()?)?;
    let l = sock.listen(0)?;
    let addr = l.local_addr()?;
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => bail!("filling the accept queue: {e}"),
            Err(_) => return Ok((l, fillers)),
        }
    }
    bail!("the accept queue never filled up")
}

#[tokio::test]
async fn connect_timeout_is_a_504_and_counts_as_a_connect_failure() -> Result<()> {
    let live = Upstream::start("live").await;
    let (full_listener, _fillers) = backlogged().await?;
    let addr = full_listener.local_addr()?;
    let weir = Weir::start(&config(
        "",
        live.addr,
        &["{ name: stuck, match: { path_prefix: /stuck }, cluster: stuck }".into()],
        &[cluster(
            "stuck",
            addr,
            ", timeouts: { connect: 300ms, request: 5s }, health: { max_failures: 5 }",
        )],
    ))?;
    let start = Instant::now();
    let got = get(&weir.url("public", "/stuck")).await?;
    let took = start.elapsed();
    assert_proxy_made(&got, 504, "upstream timed out");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "504 after {took:?} with a 300ms connect timeout"
    );
    let (status, body) = weir.admin_get("/clusters").await?;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let ep = v
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "stuck"))
        .map(|c| c["endpoints"][0].clone())
        .context("no stuck cluster")?;
    assert_eq!(
        (ep["connect_failures"].clone(), ep["healthy"].clone()),
        (serde_json::json!(1), serde_json::json!(true)),
        "{ep}"
    );
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn oversized_request_heads_are_431() -> Result<()> {
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config(
        "max_request_header_bytes: 16KiB, max_request_headers: 20",
        live.addr,
        &[],
        &[],
    ))?;
    let url = weir.url("public", "/ok/big");
    let code = |extra: Vec<String>| {
        let url = url.clone();
        async move {
            let mut args: Vec<String> = vec![
                "-o".into(),
                "/dev/null".into(),
                "-w".into(),
                "%{http_code}".into(),
            ];
            for h in extra {
                args.push("-H".into());
                args.push(h);
            }
            args.push(url);
            curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
        }
    };
    // One 20KiB header against a 16KiB limit; 12KiB passes.
    assert_eq!(
        code(vec![format!("x-big: {}", "a".repeat(20 * 1024))]).await?,
        "431"
    );
    assert_eq!(
        code(vec![format!("x-big: {}", "a".repeat(12 * 1024))]).await?,
        "200"
    );
    assert_eq!(live.count(), 1);

    // Header count: exactly 20 passes, 21 does not.
    let raw = |n: usize| {
        let mut r = String::from("GET /ok/many HTTP/1.1\r\nHost: test\r\n");
        for i in 1..n {
            r.push_str(&format!("x-h{i}: v\r\n"));
        }
        r.push_str("\r\n");
        r
    };
    let addr = weir.addr("public");
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(raw(20).as_bytes()).await?;
    let res = read_response(&mut s, Duration::from_secs(5))
        .await?
        .context("no response to 20 headers")?;
    assert_eq!(res.status, 200);
    assert_eq!(live.count(), 2);

    let mut s = TcpStream::connect(addr).await?;
    s.write_all(raw(21).as_bytes()).await?;
    let res = read_response(&mut s, Duration::from_secs(5))
        .await?
        .context("no response to 21 headers")?;
    assert_eq!(res.status, 431, "{res:?}");
    assert_eq!(
        (
            res.header("connection"),
            res.header("content-length"),
            res.body.as_slice()
        ),
        (Some("close"), Some("0"), &b""[..])
    );
    // The connection is not usable afterwards: the proxy closes it.
    let ended = wait_closed(&mut s, Instant::now(), Duration::from_secs(3)).await?;
    assert_eq!(ended.data, b"");

    // The same raw 20KiB header: 431, and nothing reached the upstream.
    let mut s = TcpStream::connect(addr).await?;
    let big = format!(
        "GET /ok/big HTTP/1.1\r\nHost: test\r\nx-big: {}\r\n\r\n",
        "b".repeat(20 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let res = read_response(&mut s, Duration::from_secs(5))
        .await?
        .context("no response to a 20KiB header")?;
    assert_eq!(res.status, 431, "{res:?}");
    assert_eq!(live.count(), 2);
    assert_still_serving(&weir).await
}

/// An upstream that counts request body bytes as they arrive and answers only once the body is
/// complete, with the byte count.
struct Sink {
    up: Upstream,
    received: Arc<AtomicUsize>,
    completed: Arc<AtomicBool>,
    broken: Arc<AtomicBool>,
}

async fn sink() -> Sink {
    let (received, completed, broken) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (r, c, b) = (received.clone(), completed.clone(), broken.clone());
    let up = Upstream::with("sink", move |req, _| {
        let (r, c, b) = (r.clone(), c.clone(), b.clone());
        async move {
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            r.fetch_add(d.len(), SeqCst);
                        }
                    }
                    Err(_) => {
                        b.store(true, SeqCst);
                        return Response::new(full("broken"));
                    }
                }
            }
            c.store(true, SeqCst);
            Response::new(full(r.load(SeqCst).to_string()))
        }
    })
    .await;
    Sink {
        up,
        received,
        completed,
        broken,
    }
}

/// Polls `f` every 10ms until it holds, for at most `limit`.
async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn request_body_with_content_length_over_the_limit_is_413() -> Result<()> {
    let live = Upstream::start("live").await;
    let sink = sink().await;
    let weir = Weir::start(&config(
        "max_request_body_bytes: 1KiB",
        live.addr,
        &["{ name: up, match: { path_prefix: /up }, cluster: sink }".into()],
        &[cluster("sink", sink.up.addr, "")],
    ))?;
    let url = weir.url("public", "/up");
    let got = send(
        &h1_client(),
        Request::post(&url).body(full(vec![b'x'; 2048]))?,
    )
    .await?;
    assert_proxy_made(&got, 413, "request body too large");
    assert_eq!(
        sink.up.count(),
        0,
        "the upstream saw a request over the body limit"
    );
    // Over HTTP/2 as well.
    let got = send(
        &h2c_client(),
        Request::post(&url)
            .header("content-length", "2048")
            .body(full(vec![b'x'; 2048]))?,
    )
    .await?;
    assert_proxy_made(&got, 413, "request body too large");
    assert_eq!(
        sink.up.count(),
        0,
        "the upstream saw a request over the body limit"
    );
    // Exactly the limit passes, whole.
    let got = send(
        &h1_client(),
        Request::post(&url).body(full(vec![b'x'; 1024]))?,
    )
    .await?;
    assert_eq!(
        (got.status, got.upstream(), got.text().as_str()),
        (StatusCode::OK, "sink", "1024")
    );
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn chunked_request_body_growing_past_the_limit_is_stopped() -> Result<()> {
    let live = Upstream::start("live").await;
    let sink = sink().await;
    let weir = Weir::start(&config(
        "max_request_body_bytes: 1KiB",
        live.addr,
        &["{ name: up, match: { path_prefix: /up }, cluster: sink }".into()],
        &[cluster("sink", sink.up.addr, "")],
    ))?;
    let mut s = TcpStream::connect(weir.addr("public")).await?;
    s.write_all(b"POST /up HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    let chunk = format!("190\r\n{}\r\n", "c".repeat(400));
    // Two chunks of 400 go through as they come.
    for total in [400, 800] {
        s.write_all(chunk.as_bytes()).await?;
        wait_for(
            &format!("the upstream to receive {total} bytes"),
            Duration::from_secs(3),
            || sink.received.load(SeqCst) == total,
        )
        .await?;
    }
    // The third takes the body to 1200 > 1024. Either a 413 or an aborted connection would be
    // acceptable; this proxy answers 413 (it has read everything the client sent, so the answer
    // is not lost to a reset), and the test pins that down.
    s.write_all(chunk.as_bytes()).await?;
    let res = read_response(&mut s, Duration::from_secs(3))
        .await?
        .context("connection aborted instead of a 413")?;
    assert_eq!(res.status, 413, "{res:?}");
    let id = res
        .header("x-request-id")
        .context("413 without x-request-id")?
        .to_string();
    assert_eq!(
        String::from_utf8_lossy(&res.body),
        format!("413 request body too large (request id {id})\n")
    );
    // The upstream's request is aborted: it never sees a complete body, nor more than the limit.
    wait_for(
        "the upstream request to be aborted",
        Duration::from_secs(3),
        || sink.broken.load(SeqCst),
    )
    .await?;
    assert!(
        !sink.completed.load(SeqCst),
        "the upstream took a cut-off body for a complete one"
    );
    let got = sink.received.load(SeqCst);
    assert!(
        (800..=1024).contains(&got),
        "the upstream received {got} bytes with a 1024 byte limit"
    );
    assert_eq!(sink.up.count(), 1);
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn malformed_requests_are_400_and_the_proxy_keeps_serving() -> Result<()> {
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config("", live.addr, &[], &[]))?;
    let addr = weir.addr("public");
    let cases: &[&[u8]] = &[
        b"GET /ok\x01 HTTP/1.1\r\nHost: test\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: test\r\nno colon here\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: test\r\nContent-Length: abc\r\n\r\n",
        b"GET /ok HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
        b"GET /ok HTTP/7.1\r\nHost: test\r\n\r\n",
        b"G\xc3\xa9T /ok HTTP/1.1\r\nHost: test\r\n\r\n",
    ];
    let mut wrong = Vec::new();
    for case in cases {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(case).await?;
        match read_response(&mut s, Duration::from_secs(3)).await {
            Ok(Some(res)) if res.status == 400 => {
                if (
                    res.header("connection"),
                    res.header("content-length"),
                    res.body.as_slice(),
                ) != (Some("close"), Some("0"), b"")
                {
                    wrong.push(format!(
                        "{:?}: 400 but {res:?}",
                        String::from_utf8_lossy(case)
                    ));
                }
                // hyper answers these before any request exists, then closes.
                if let Err(e) = wait_closed(&mut s, Instant::now(), Duration::from_secs(3)).await {
                    wrong.push(format!("{:?}: 400 but {e}", String::from_utf8_lossy(case)));
                }
            }
            other => wrong.push(format!("{:?}: {other:?}", String::from_utf8_lossy(case))),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(live.count(), 0, "a malformed request reached the upstream");

    // A well-formed request whose path climbs out of the root: a 400 made by the proxy.
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /ok/../../etc/passwd HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let res = read_response(&mut s, Duration::from_secs(3))
        .await?
        .context("no response")?;
    assert_eq!(res.status, 400);
    let id = res
        .header("x-request-id")
        .context("proxy-made 400 without x-request-id")?
        .to_string();
    assert_eq!(
        String::from_utf8_lossy(&res.body),
        format!("400 invalid request path (request id {id})\n")
    );
    // That connection is still good for another request.
    s.write_all(b"GET /ok/again HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let res = read_response(&mut s, Duration::from_secs(3))
        .await?
        .context("no response")?;
    assert_eq!((res.status, res.header("x-upstream")), (200, Some("live")));
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn slowloris_partial_head_is_cut_off_while_others_are_served() -> Result<()> {
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config("request_head_timeout: 300ms", live.addr, &[], &[]))?;
    let addr = weir.addr("public");
    // A partial head, then nothing.
    let mut stalled = TcpStream::connect(addr).await?;
    let since = Instant::now();
    stalled
        .write_all(b"GET /ok/slow HTTP/1.1\r\nHost: test\r\nX-Partial: ")
        .await?;
    // A head trickled a byte every 50ms: the timeout covers the whole head, not each read.
    let trickle = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await?;
        let since = Instant::now();
        let head = b"GET /ok/trickle HTTP/1.1\r\nHost: test\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for b in head {
            tick.tick().await;
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
        }
        wait_closed(&mut s, since, Duration::from_secs(3)).await
    });
    // Meanwhile a normal request is served.
    let got = get(&weir.url("public", "/ok/normal")).await?;
    assert_eq!((got.status, got.upstream()), (StatusCode::OK, "live"));

    let ended = wait_closed(&mut stalled, since, Duration::from_secs(3)).await?;
    assert!(
        ended.data.is_empty() || ended.data.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&ended.data)
    );
    assert!(
        ended.after >= Duration::from_millis(250),
        "closed after only {:?}",
        ended.after
    );
    let trickled = trickle.await??;
    assert!(
        trickled.data.is_empty() || trickled.data.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&trickled.data)
    );
    assert!(
        trickled.after < Duration::from_millis(2500),
        "trickling client kept for {:?}",
        trickled.after
    );
    assert_eq!(
        live.count(),
        1,
        "only the normal request reached the upstream"
    );
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> Result<()> {
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config("idle_timeout: 300ms", live.addr, &[], &[]))?;
    let (mut s, res) = raw_get(weir.addr("public"), "/ok/1").await?;
    let since = Instant::now();
    assert_eq!((res.status, res.header("x-upstream")), (200, Some("live")));
    let ended = wait_closed(&mut s, since, Duration::from_secs(3)).await?;
    assert_eq!(
        (ended.data.as_slice(), ended.reset),
        (&b""[..], false),
        "an idle connection should see a clean close"
    );
    assert!(
        ended.after >= Duration::from_millis(250),
        "closed after only {:?}",
        ended.after
    );

    // The same for an idle HTTP/2 connection (GOAWAY, then close).
    let tcp = TcpStream::connect(weir.addr("public")).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    let res = sender
        .send_request(Request::get(weir.url("public", "/ok/h2")).body(full(""))?)
        .await?;
    let since = Instant::now();
    assert_eq!(res.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .context("idle h2 connection still open after 3s")???;
    assert!(
        since.elapsed() >= Duration::from_millis(250),
        "h2 connection closed after only {:?}",
        since.elapsed()
    );

    // A request that takes longer than the idle timeout is not cut: the connection is busy.
    let mut s = TcpStream::connect(weir.addr("public")).await?;
    s.write_all(b"GET /ok/slow HTTP/1.1\r\nHost: test\r\nx-delay-ms: 900\r\n\r\n")
        .await?;
    let res = read_response(&mut s, Duration::from_secs(3))
        .await?
        .context("a slow request was cut by the idle timeout")?;
    assert_eq!((res.status, res.header("x-upstream")), (200, Some("live")));
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn max_connections_holds_back_extra_connections_until_one_closes() -> Result<()> {
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config("max_connections: 2", live.addr, &[], &[]))?;
    let addr = weir.addr("public");
    let (first, res1) = raw_get(addr, "/ok/1").await?;
    let (_second, res2) = raw_get(addr, "/ok/2").await?;
    assert_eq!((res1.status, res2.status), (200, 200));

    // The third connection is made by the kernel, but its request is not served.
    let mut third = TcpStream::connect(addr).await?;
    third
        .write_all(b"GET /ok/3 HTTP/1.1\r\nHost: test\r\n\r\n")
        .await?;
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(700), third.peek(&mut byte)).await;
    assert!(
        early.is_err(),
        "a third connection was answered with max_connections 2: {early:?}"
    );
    assert_eq!(live.count(), 2);

    // Closing one of the first two lets it in.
    drop(first);
    let res3 = read_response(&mut third, Duration::from_secs(3))
        .await?
        .context("third connection closed unanswered")?;
    assert_eq!(
        (res3.status, res3.header("x-upstream")),
        (200, Some("live"))
    );
    drop(third);
    drop(_second);
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn h2_max_concurrent_streams_limits_streams_per_connection() -> Result<()> {
    let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n2, m2) = (now.clone(), max.clone());
    let live = Upstream::with("live", move |req, seen| {
        let (now, max) = (n2.clone(), m2.clone());
        async move {
            let n = now.fetch_add(1, SeqCst) + 1;
            max.fetch_max(n, SeqCst);
            let res = default_handler(req, seen).await;
            now.fetch_sub(1, SeqCst);
            res
        }
    })
    .await;
    let weir = Weir::start(&config("h2_max_concurrent_streams: 2", live.addr, &[], &[]))?;
    let addr = weir.addr("public");
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let uri = format!("http://{addr}/ok/h2");
    // One request first, so the server's SETTINGS (with the stream limit) have arrived.
    let res = sender
        .send_request(Request::get(&uri).body(full(""))?)
        .await?;
    assert_eq!(res.status(), StatusCode::OK);
    max.store(0, SeqCst);

    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut sender = sender.clone();
        let req = Request::get(&uri)
            .header("x-delay-ms", "300")
            .body(full(""))?;
        tasks.push(tokio::spawn(async move {
            let res = sender.send_request(req).await?;
            let status = res.status();
            let upstream = res.headers().get("x-upstream").cloned();
            res.into_body().collect().await?;
            Ok::<_, anyhow::Error>((status, upstream))
        }));
    }
    for t in tasks {
        let (status, upstream) = t.await??;
        assert_eq!(
            (status, upstream.as_ref().and_then(|v| v.to_str().ok())),
            (StatusCode::OK, Some("live"))
        );
    }
    let took = start.elapsed();
    assert_eq!(
        max.load(SeqCst),
        2,
        "most requests in flight at the upstream from one h2 connection limited to 2 streams"
    );
    assert!(
        took >= Duration::from_millis(880),
        "6 requests of 300ms, 2 at a time, took only {took:?}"
    );
    assert_eq!(live.count(), 7);
    assert_still_serving(&weir).await
}

#[tokio::test]
async fn slowloris_stalled_http2_preface_is_cut_off_by_the_head_timeout() -> Result<()> {
    let live = Upstream::start("live").await;
    // idle_timeout stays at its 60s default: only the head timeout can close these.
    let weir = Weir::start(&config("request_head_timeout: 300ms", live.addr, &[], &[]))?;
    let addr = weir.addr("public");
    // Control: the HTTP/1.1 form of a stalled head is cut off.
    let mut h1 = TcpStream::connect(addr).await?;
    let since = Instant::now();
    h1.write_all(b"GET /ok HTTP/1.1\r\nHost: te").await?;
    let ended = wait_closed(&mut h1, since, Duration::from_secs(3)).await?;
    assert!(
        ended.data.is_empty() || ended.data.starts_with(b"HTTP/1.1 408"),
        "{ended:?}"
    );
    // The HTTP/2 connection preface, cut short: an incomplete request head just the same.
    let mut h2 = TcpStream::connect(addr).await?;
    let since = Instant::now();
    h2.write_all(b"PRI * HTTP/2.0\r\n").await?;
    let ended = wait_closed(&mut h2, since, Duration::from_secs(3)).await;
    assert!(
        ended.is_ok(),
        "a stalled partial HTTP/2 preface outlived request_head_timeout (300ms): {ended:?}"
    );
    assert_still_serving(&weir).await
}
