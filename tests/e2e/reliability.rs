//! End-to-end reliability: peers that stall, stop reading or go away, tunnels, and filter
//! lifecycles under failure. Every wait the proxy makes has a deadline; each test shows one
//! firing (and counted in `weir_timeouts_total`), the proxy alive, and other routes unaffected.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use crate::h2raw::*;
use crate::support::*;
use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn timeouts(weir: &Weir, kind: &str) -> Result<f64> {
    let (_, m) = weir.admin_get("/metrics").await?;
    Ok(sample(
        &m,
        &format!("weir_timeouts_total{{kind=\"{kind}\"}}"),
    ))
}

/// A config: `limits`, listener `public`, clusters `live` (answers) and `slow` (the test's
/// upstream under scrutiny) with `slow_timeouts`, routes `/ok` → live and `/` → slow.
fn config(limits: &str, live: &Upstream, slow: &Upstream, slow_timeouts: &str) -> String {
    format!(
        "limits: {{ {limits} }}\n\
listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes:\n\
  - {{ name: ok, match: {{ path_prefix: /ok }}, cluster: live }}\n\
  - {{ name: slow, match: {{ path_prefix: / }}, cluster: slow }}\n\
clusters:\n\
  - {{ name: live, endpoints: [ {{ address: \"{}\" }} ] }}\n\
  - {{ name: slow, endpoints: [ {{ address: \"{}\" }} ], timeouts: {{ {slow_timeouts} }} }}\n",
        live.addr, slow.addr
    )
}

/// Reads until EOF or reset; how long it took from `since`, and what arrived.
async fn read_to_close(s: &mut TcpStream, since: Instant, limit: Duration) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = (since + limit).saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => bail!(
                "connection still open after {limit:?} ({} bytes read)",
                data.len()
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(data),
            Ok(Ok(n)) => data.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn other_routes_answer(weir: &Weir) -> Result<()> {
    let got = get(&weir.url("public", "/ok")).await?;
    ensure!(got.status == StatusCode::OK, "other route: {}", got.status);
    ensure!(got.upstream() == "live");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Deadlines after the response head
// ---------------------------------------------------------------------------------------------

/// An upstream that sends its head and part of a body, then nothing: the response is cut after
/// the cluster's `timeouts.body`, and the upstream's connection is let go.
#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_after_the_body_timeout() -> Result<()> {
    let released = Arc::new(AtomicUsize::new(0));
    let r = released.clone();
    let slow = Upstream::with("slow", move |_req, _seen| {
        let r = r.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first part;")).await;
                // Stall: hold the sender until the proxy lets go of the response.
                tx.closed().await;
                r.fetch_add(1, SeqCst);
            });
            Response::builder()
                .header("content-length", "1000")
                .body(body)
                .unwrap()
        }
    })
    .await;
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config("", &live, &slow, "body: 400ms"))?;

    let mut c = TcpStream::connect(weir.addr("public")).await?;
    c.write_all(b"GET /stall HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let since = Instant::now();
    let got = read_to_close(&mut c, since, Duration::from_secs(5)).await?;
    let took = since.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("first part;"), "{text}");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "cut after {took:?}, body timeout 400ms"
    );
    weir.eventually("the stalled upstream is let go", async || {
        released.load(SeqCst) == 1
    })
    .await?;
    assert_eq!(timeouts(&weir, "upstream_body").await?, 1.0);
    other_routes_answer(&weir).await?;
    Ok(())
}

/// A client that sends part of a request body and stops gets 408 after
/// `limits.request_body_timeout`, and the upstream is not left waiting.
#[tokio::test]
async fn a_request_body_that_stalls_gets_408() -> Result<()> {
    let slow = Upstream::with("slow", |req: Request<Incoming>, _seen| async move {
        // Reads the whole body before answering, like most upstreams.
        let n = match req.into_body().collect().await {
            Ok(b) => b.to_bytes().len(),
            Err(_) => 0,
        };
        Response::new(full(format!("{n}")))
    })
    .await;
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config(
        "request_body_timeout: 400ms",
        &live,
        &slow,
        "request: 10s",
    ))?;

    let mut c = TcpStream::connect(weir.addr("public")).await?;
    c.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nonly ten b")
        .await?;
    let since = Instant::now();
    let got = read_to_close(&mut c, since, Duration::from_secs(5)).await?;
    let took = since.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "408 after {took:?}, request body timeout 400ms"
    );
    assert_eq!(timeouts(&weir, "request_body").await?, 1.0);
    other_routes_answer(&weir).await?;
    Ok(())
}

/// A client that asks for a large response and never reads it: the connection is closed after
/// `limits.send_timeout`, the upstream's response is abandoned, the slot is freed.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() -> Result<()> {
    let released = Arc::new(AtomicUsize::new(0));
    let r = released.clone();
    let slow = Upstream::with("slow", move |_req, _seen| {
        let r = r.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                // Endless: 64 KiB chunks as fast as the proxy takes them.
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                while tx.send(chunk.clone()).await.is_ok() {}
                r.fetch_add(1, SeqCst);
            });
            Response::new(body)
        }
    })
    .await;
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config(
        "send_timeout: 500ms, max_connections: 2",
        &live,
        &slow,
        "",
    ))?;

    let mut c = TcpStream::connect(weir.addr("public")).await?;
    c.write_all(b"GET /flood HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    // Never read. The socket buffers fill, the proxy's writes block, and the deadline runs.
    weir.eventually("the send timeout fires", async || {
        timeouts(&weir, "send").await.unwrap_or(0.0) == 1.0
    })
    .await?;
    weir.eventually("the upstream's response is abandoned", async || {
        released.load(SeqCst) == 1
    })
    .await?;
    weir.eventually("the connection is gone", async || {
        let (_, m) = weir.admin_get("/metrics").await.unwrap_or_default();
        sample(&m, "weir_downstream_connections{listener=\"public\"}") == 0.0
    })
    .await?;
    // Reading now finds the connection closed (after what the buffers held).
    read_to_close(&mut c, Instant::now(), Duration::from_secs(5)).await?;
    other_routes_answer(&weir).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Upgrades
// ---------------------------------------------------------------------------------------------

async fn websocket_echo(mut req: Request<Incoming>, _seen: Seen) -> Response<TestBody> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .cloned()
        .unwrap_or_else(|| http::HeaderValue::from_static("x"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let protocol = req.headers().get("upgrade").cloned();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut res = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("sec-websocket-accept", accept);
    if let Some(p) = protocol {
        res = res.header("upgrade", p);
    }
    res.body(full("")).unwrap()
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn open_ws(weir: &Weir) -> Result<Ws> {
    let addr = weir.addr("public");
    let tcp = TcpStream::connect(addr).await?;
    let (ws, res) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(format!("ws://{addr}/chat"), tcp),
    )
    .await
    .context("handshake timed out")??;
    ensure!(res.status() == StatusCode::SWITCHING_PROTOCOLS);
    Ok(ws)
}

async fn echo(ws: &mut Ws, text: &str) -> Result<()> {
    ws.send(Message::text(text)).await?;
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .context("no echo")?
        .context("tunnel ended")??;
    ensure!(got == Message::text(text), "{got:?}");
    Ok(())
}

/// A tunnel that moves no bytes is closed after `limits.tunnel_idle_timeout`; one that keeps
/// talking is not.
#[tokio::test]
async fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() -> Result<()> {
    let ws_up = Upstream::with("ws", websocket_echo).await;
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config("tunnel_idle_timeout: 600ms", &live, &ws_up, ""))?;

    let mut busy = open_ws(&weir).await?;
    let mut idle = open_ws(&weir).await?;
    echo(&mut idle, "once").await?;
    let since = Instant::now();
    // `busy` talks every 150ms for 1.5s: longer than the idle timeout, never idle that long.
    for i in 0..10 {
        echo(&mut busy, &format!("ping {i}")).await?;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // `idle` was closed by the proxy meanwhile.
    let end = tokio::time::timeout(Duration::from_secs(3), idle.next())
        .await
        .context("the idle tunnel is still open")?;
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "idle tunnel got {end:?}"
    );
    assert!(since.elapsed() >= Duration::from_millis(550));
    echo(&mut busy, "still here").await?;
    assert_eq!(timeouts(&weir, "tunnel_idle").await?, 1.0);
    Ok(())
}

/// A tunnel keeps its connection's place under `max_connections`: with one allowed, a second
/// client waits until the tunnel ends. (Tunnels used to run detached, outside every limit.)
#[tokio::test]
async fn a_tunnel_holds_its_connection_slot() -> Result<()> {
    let ws_up = Upstream::with("ws", websocket_echo).await;
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config("max_connections: 1", &live, &ws_up, ""))?;

    let mut ws = open_ws(&weir).await?;
    echo(&mut ws, "hello").await?;
    let url = weir.url("public", "/ok");
    let waiting = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was served while the tunnel held the only slot"
    );
    ws.close(None).await?;
    drop(ws);
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .context("the waiting client was never served")???;
    assert_eq!(got.status, StatusCode::OK);
    Ok(())
}

/// SIGTERM: a tunnel keeps working while the proxy drains, and is closed at drain's deadline
/// (the process then exits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_tunnels_until_its_deadline() -> Result<()> {
    let ws_up = Upstream::with("ws", websocket_echo).await;
    let live = Upstream::start("live").await;
    let yaml = format!("drain_timeout: 1s\n{}", config("", &live, &ws_up, ""));
    let mut weir = Weir::start(&yaml)?;
    let mut ws = open_ws(&weir).await?;
    echo(&mut ws, "before").await?;
    let since = Instant::now();
    weir.signal(15);
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo(&mut ws, "while draining").await?;
    let code = tokio::task::block_in_place(|| weir.wait_exit(Duration::from_secs(5)))?;
    let took = since.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before drain's deadline, with a tunnel open"
    );
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(3), "exited after {took:?}");
    Ok(())
}

/// Only the configured upgrade protocols pass; another is forwarded as plain HTTP.
#[tokio::test]
async fn upgrade_protocols_are_configurable() -> Result<()> {
    let ws_up = Upstream::with("ws", websocket_echo).await;
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config(
        "upgrade_protocols: [ websocket, x-custom ]",
        &live,
        &ws_up,
        "",
    ))?;
    for (proto, passes) in [("x-custom", true), ("X-Custom", true), ("x-other", false)] {
        let mut c = TcpStream::connect(weir.addr("public")).await?;
        c.write_all(
            format!(
                "GET /t HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: {proto}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        let mut head = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut head)).await??;
        let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
        let seen = ws_up.last();
        if passes {
            assert!(head.starts_with("http/1.1 101"), "{proto}: {head}");
            assert_eq!(
                seen.headers.get("upgrade").map(|v| v.as_bytes()),
                Some(proto.as_bytes())
            );
        } else {
            // Forwarded as plain HTTP; the upstream's unasked-for 101 cannot be relayed.
            assert!(head.starts_with("http/1.1 502"), "{proto}: {head}");
            assert!(
                seen.headers.get("upgrade").is_none(),
                "{proto} reached the upstream"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Limits on reload
// ---------------------------------------------------------------------------------------------

/// `limits.max_connections` changes on reload, for the connections that come after.
#[tokio::test]
async fn max_connections_changes_on_reload() -> Result<()> {
    let live = Upstream::start("live").await;
    let other = Upstream::start("other").await;
    let weir = Weir::start(&config("max_connections: 1", &live, &other, ""))?;

    // One connection holds the only slot (its head is in; keep-alive keeps it).
    let mut held = TcpStream::connect(weir.addr("public")).await?;
    held.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf)).await??;
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let url = weir.url("public", "/ok");
    let waiting = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !waiting.is_finished(),
        "max_connections: 1 served a second connection"
    );

    let text =
        std::fs::read_to_string(&weir.config)?.replace("max_connections: 1", "max_connections: 4");
    std::fs::write(&weir.config, text)?;
    let (status, body) = weir.admin("POST", "/reload", "").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The reload lets the waiting connection in.
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .context("still waiting after max_connections went up")???;
    assert_eq!(got.status, StatusCode::OK);
    drop(held);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Filter lifecycles under failure
// ---------------------------------------------------------------------------------------------

/// Every request that entered a stateful filter gets exactly one `on-log` and one
/// `context-done`, also when the upstream times out (504) or the client goes away: 1000 of
/// each leave no live context behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_abandoned_requests_end_their_filter_contexts() -> Result<()> {
    const EACH: usize = 1000;
    let hang = Upstream::with("hang", |_req, _seen| async move {
        std::future::pending::<()>().await;
        Response::new(full(""))
    })
    .await;
    let wasm = filter_wasm("weir-testbed");
    let yaml = format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
clusters: [ {{ name: hang, endpoints: [ {{ address: \"{}\" }} ] }} ]\n\
filters: [ {{ name: life, module: \"{}\", config: {{ mode: lifecycle }} }} ]\n\
routes:\n\
  - {{ name: timeout, match: {{ path_prefix: /timeout }}, cluster: hang, timeout: 30ms, filters: [ life ] }}\n\
  - {{ name: abort, match: {{ path_prefix: /abort }}, cluster: hang, timeout: 60s, filters: [ life ] }}\n",
        hang.addr,
        wasm.display()
    );
    let weir = Weir::start(&yaml)?;
    let addr = weir.addr("public");

    let client = h1_client();
    let statuses = futures_util::stream::iter(0..EACH)
        .map(|i| {
            let client = client.clone();
            async move {
                let req = Request::get(format!("http://{addr}/timeout/{i}")).body(full(""))?;
                Ok::<_, anyhow::Error>(send(&client, req).await?.status)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for s in statuses {
        assert_eq!(s?, StatusCode::GATEWAY_TIMEOUT);
    }

    // Aborts: the request reaches the upstream (so it went through the filter), then the
    // client hangs up.
    let before = hang.count();
    futures_util::stream::iter(0..EACH)
        .map(|i| async move {
            let mut c = TcpStream::connect(addr).await?;
            c.write_all(format!("GET /abort/{i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await?;
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok::<_, anyhow::Error>(())
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    weir.eventually("every aborted request reached the upstream", async || {
        hang.count() - before == EACH
    })
    .await?;

    let want = (2 * EACH) as f64;
    let mut last = String::new();
    let done = weir
        .eventually("every context is done and logged", async || {
            let (_, m) = weir.admin_get("/metrics").await.unwrap_or_default();
            let got = [
                "weir_filter_testbed_contexts_opened",
                "weir_filter_testbed_contexts_done",
                "weir_filter_testbed_logs",
            ]
            .map(|n| sample(&m, &format!("{n}{{filter=\"life\"}}")));
            last = format!("{got:?}");
            got == [want; 3]
        })
        .await;
    done.with_context(|| format!("(opened, done, logs) = {last}, want {want} each"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Body pumps
// ---------------------------------------------------------------------------------------------

/// A response body filtered chunk by chunk: when the client goes away mid-body, the pump stops
/// reading the upstream (within a second), rather than filtering the rest to nobody.
#[tokio::test]
async fn a_body_pump_stops_when_its_reader_goes() -> Result<()> {
    let released = Arc::new(AtomicUsize::new(0));
    let r = released.clone();
    let endless = Upstream::with("endless", move |_req, _seen| {
        let r = r.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'a'; 1024]);
                while tx.send(chunk.clone()).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r.fetch_add(1, SeqCst);
            });
            Response::new(body)
        }
    })
    .await;
    let wasm = filter_wasm("weir-testbed");
    let yaml = format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
clusters: [ {{ name: endless, endpoints: [ {{ address: \"{}\" }} ] }} ]\n\
filters: [ {{ name: upper, module: \"{}\", config: {{ mode: body-upper }} }} ]\n\
routes: [ {{ name: r, match: {{ path_prefix: / }}, cluster: endless, filters: [ upper ] }} ]\n",
        endless.addr,
        wasm.display()
    );
    let weir = Weir::start(&yaml)?;

    let mut c = TcpStream::connect(weir.addr("public")).await?;
    c.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await??;
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(released.load(SeqCst), 0, "the stream ended on its own");
    drop(c);
    let since = Instant::now();
    weir.eventually("the upstream stream is let go", async || {
        released.load(SeqCst) == 1
    })
    .await?;
    assert!(
        since.elapsed() < Duration::from_secs(1),
        "the pump kept reading for {:?} after the client left",
        since.elapsed()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Filters under the request's deadline
// ---------------------------------------------------------------------------------------------

/// A config with the testbed filter `f` (`filter_config`, `extra` YAML after it) on route
/// `/` to `up` with `timeout`.
fn filter_config(up: &Upstream, filter_config: &str, extra: &str, timeout: &str) -> String {
    format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
clusters: [ {{ name: up, endpoints: [ {{ address: \"{}\" }} ] }} ]\n\
filters: [ {{ name: f, module: \"{}\", config: {filter_config}{extra} }} ]\n\
routes: [ {{ name: r, match: {{ path_prefix: / }}, cluster: up, timeout: {timeout}, filters: [ f ] }} ]\n",
        up.addr,
        filter_wasm("weir-testbed").display()
    )
}

/// Callouts hold their instance while they wait. A callout target that takes 5 s, two
/// instances and a 1 s route timeout: 20 concurrent requests are all answered in about a second
/// (the callouts are cut at the deadline, the requests queued for an instance give up at it),
/// and none of them is sent to the upstream once its deadline has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callouts_and_instance_waits_end_at_the_request_deadline() -> Result<()> {
    let sleeper = Upstream::with("sleeper", |_req, _seen| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(full("late"))
    })
    .await;
    let up = Upstream::start("up").await;
    let target = sleeper.addr.to_string();
    let weir = Weir::start(&filter_config(
        &up,
        &format!("{{ mode: callout, target: \"{target}\", timeout_ms: 30000 }}"),
        &format!(", grants: {{ callouts: [ \"{target}\" ] }}, limits: {{ max_instances: 2 }}"),
        "1s",
    ))?;
    let url = weir.url("public", "/x");
    let since = Instant::now();
    let answers = futures_util::future::join_all((0..20).map(|_| {
        let url = url.clone();
        async move {
            let got = get(&url).await?;
            Ok::<_, anyhow::Error>((got.status, since.elapsed()))
        }
    }))
    .await;
    let mut statuses = Vec::new();
    for a in answers {
        let (status, after) = a?;
        assert!(
            after < Duration::from_millis(2500),
            "answered after {after:?} with a 1s route timeout"
        );
        statuses.push(status.as_u16());
    }
    // The seated requests' callouts are cut at the deadline, which leaves the upstream no time
    // (504); a request still queued for an instance at the deadline gives up (a deadline
    // failure of a fail-closed filter: 503).
    assert!(
        statuses.iter().all(|s| *s == 503 || *s == 504),
        "{statuses:?}"
    );
    // Past its deadline a request is not sent on: the upstream never sees one.
    assert_eq!(
        up.count(),
        0,
        "requests reached the upstream after their deadline"
    );
    let (_, m) = weir.admin_get("/metrics").await?;
    assert!(
        sample(&m, "weir_filter_queue_wait_seconds_count{filter=\"f\"}") >= 18.0,
        "{m}"
    );
    assert_eq!(sample(&m, "weir_filter_queue_waiting{filter=\"f\"}"), 0.0);
    Ok(())
}

/// One request's trap discards the instance it ran in; requests seated in that instance beside
/// it are run again on a fresh one instead of failing with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_does_not_fail_the_requests_beside_it() -> Result<()> {
    let up = Upstream::start("up").await;
    let weir = Weir::start(&filter_config(
        &up,
        "{ mode: panic-if, name: x-panic }",
        ", limits: { max_instances: 1 }",
        "5s",
    ))?;
    let url = weir.url("public", "/x");
    let answers = futures_util::future::join_all((0..60).map(|i| {
        let url = url.clone();
        async move {
            let panics = i % 6 == 0;
            let headers: &[(&str, &str)] = if panics { &[("x-panic", "1")] } else { &[] };
            let got = get_with(&url, headers).await?;
            Ok::<_, anyhow::Error>((panics, got.status))
        }
    }))
    .await;
    for a in answers {
        let (panics, status) = a?;
        if panics {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        } else {
            assert_eq!(
                status,
                StatusCode::OK,
                "a neighbour of a trap failed with it"
            );
        }
    }
    let (_, m) = weir.admin_get("/metrics").await?;
    assert_eq!(
        sample(
            &m,
            "weir_filter_failures_total{filter=\"f\",route=\"r\",kind=\"panic\"}"
        ),
        10.0,
        "{m}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Floods: the proxy stays up, bounded, and serves everyone else
// ---------------------------------------------------------------------------------------------

/// What a flood did.
#[derive(Debug)]
struct Flood {
    /// Units written before the proxy closed the connection (all of them if it did not).
    sent: usize,
    /// The proxy closed (or reset) the flooding connection.
    closed: bool,
    /// Resident memory growth of the proxy, KiB.
    rss_growth_kib: i64,
    /// Slowest answer a well-behaved client got during the flood.
    slowest: Duration,
}

/// Writes `opening` then `unit(i)` for i in 0..count on one h2c connection (reading and
/// discarding whatever comes back), while another client keeps asking `/ok`. Fails if that
/// client is ever refused or the proxy dies.
async fn flood(
    weir: &Weir,
    opening: Vec<u8>,
    count: usize,
    unit: impl Fn(usize) -> Vec<u8>,
) -> Result<Flood> {
    let before = weir.rss_kib() as i64;
    let stop = Arc::new(AtomicUsize::new(0));
    let probe = {
        let (url, stop) = (weir.url("public", "/ok"), stop.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while stop.load(SeqCst) == 0 {
                let t = Instant::now();
                let got = get(&url).await?;
                ensure!(
                    got.status == StatusCode::OK,
                    "a bystander got {}",
                    got.status
                );
                slowest = slowest.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, anyhow::Error>(slowest)
        })
    };
    let s = TcpStream::connect(weir.addr("public")).await?;
    let (mut rd, mut wr) = s.into_split();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    wr.write_all(&opening).await?;
    let (mut sent, mut closed) = (0, false);
    let mut batch = Vec::with_capacity(64 * 1024);
    while sent < count {
        batch.clear();
        let first = sent;
        while batch.len() < 32 * 1024 && sent < count {
            batch.extend(unit(sent));
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(10), wr.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                closed = true;
                sent = first;
                break;
            }
            Err(_) => bail!("the proxy stopped reading a flood without closing it"),
        }
    }
    if !closed {
        // Did the proxy give up on the connection? (It has its reasons a second later.)
        closed = tokio::time::timeout(Duration::from_secs(3), reader)
            .await
            .is_ok();
    }
    stop.store(1, SeqCst);
    let slowest = probe.await??;
    let after = weir.rss_kib() as i64;
    // Alive and answering.
    let got = get(&weir.url("public", "/ok")).await?;
    ensure!(got.status == StatusCode::OK);
    Ok(Flood {
        sent,
        closed,
        rss_growth_kib: after - before,
        slowest,
    })
}

async fn flood_target() -> Result<(Upstream, Weir)> {
    let up = Upstream::start("live").await;
    let weir = Weir::start(&format!(
        "limits: {{ send_timeout: 2s }}\n\
listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: all, match: {{ path_prefix: / }}, cluster: live }} ]\n\
clusters: [ {{ name: live, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        up.addr
    ))?;
    Ok((up, weir))
}

fn check_flood(what: &str, f: &Flood) {
    eprintln!("{what}: {f:?}");
    assert!(
        f.rss_growth_kib < 64 * 1024,
        "{what}: the proxy grew by {} KiB",
        f.rss_growth_kib
    );
    assert!(
        f.slowest < Duration::from_secs(2),
        "{what}: a bystander waited {:?}",
        f.slowest
    );
}

/// HEADERS then RST_STREAM, again and again (CVE-2023-44487): the proxy ends the connection,
/// and the upstream sees a bounded share of the streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_is_bounded() -> Result<()> {
    let (up, weir) = flood_target().await?;
    let block = get_block("x", "/flood");
    let f = flood(&weir, opening(), 100_000, |i| {
        let id = 1 + 2 * i as u32;
        let mut u = frame(HEADERS, END_STREAM | END_HEADERS, id, &block);
        u.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        u
    })
    .await?;
    check_flood("rapid reset", &f);
    assert!(
        f.closed,
        "100,000 reset streams and the connection is still open"
    );
    let forwarded = up.seen().iter().filter(|s| s.path == "/flood").count();
    assert!(
        forwarded < 10_000,
        "{forwarded} reset streams reached the upstream"
    );
    Ok(())
}

/// A header block that never ends: CONTINUATION after CONTINUATION (the 2024 CONTINUATION
/// flood). The proxy stops at the header list limit and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood_is_cut_off() -> Result<()> {
    const CONTINUATION: u8 = 9;
    let (_up, weir) = flood_target().await?;
    let mut first = opening();
    first.extend(frame(HEADERS, END_STREAM, 1, &get_block("x", "/")));
    let filler = hpack(&[("x-filler", &"a".repeat(8000))]);
    let f = flood(&weir, first, 20_000, |_| frame(CONTINUATION, 0, 1, &filler)).await?;
    check_flood("continuation", &f);
    assert!(f.closed, "an endless header block was read to its (no) end");
    assert!(
        f.sent < 2_000,
        "{} CONTINUATION frames (8 KB each) were taken",
        f.sent
    );
    Ok(())
}

/// One large header in the HPACK dynamic table, then blocks that name it thousands of times
/// with one byte each: 4 KB on the wire decode to many MB. The proxy refuses at its header
/// list limit, without decoding (or allocating) the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_hpack_bomb_is_refused() -> Result<()> {
    let (up, weir) = flood_target().await?;
    let mut block = Vec::new();
    // Literal with incremental indexing, new name: enters the dynamic table at index 62.
    block.push(0x40);
    hpack_int(&mut block, 0, 7, "x-bomb".len());
    block.extend(b"x-bomb");
    let value = "b".repeat(4000);
    hpack_int(&mut block, 0, 7, value.len());
    block.extend(value.as_bytes());
    let mut first = opening();
    first.extend(frame(HEADERS, END_HEADERS, 1, &block));
    let f = flood(&weir, first, 1_000, |i| {
        let id = 3 + 2 * i as u32;
        let mut b = get_block("x", "/bomb");
        // Indexed field 62, 4000 times: 16 MB decoded per block.
        b.extend(std::iter::repeat_n(0x80 | 62, 4000));
        frame(HEADERS, END_STREAM | END_HEADERS, id, &b)
    })
    .await?;
    check_flood("hpack bomb", &f);
    let reached = up.seen().iter().filter(|s| s.path == "/bomb").count();
    assert_eq!(reached, 0, "a bombed header block reached the upstream");
    Ok(())
}

/// PING and SETTINGS floods: each asks for an answer. The proxy answers what it can without
/// queueing without bound, and everyone else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_ping_and_settings_floods_are_bounded() -> Result<()> {
    let (_up, weir) = flood_target().await?;
    let f = flood(&weir, opening(), 200_000, |i| {
        frame(PING, 0, 0, &(i as u64).to_be_bytes())
    })
    .await?;
    check_flood("ping", &f);
    let f = flood(&weir, opening(), 200_000, |i| {
        // SETTINGS_INITIAL_WINDOW_SIZE, changing every time.
        let mut p = vec![0, 4];
        p.extend((65_535 + (i as u32 % 1000)).to_be_bytes());
        frame(SETTINGS, 0, 0, &p)
    })
    .await?;
    check_flood("settings", &f);
    Ok(())
}

/// 10,000 connections that connect and say nothing: memory stays bounded (reported per
/// connection), the proxy keeps serving, and the head timeout clears them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_bounded_and_cleared() -> Result<()> {
    const N: usize = 10_000;
    let up = Upstream::start("live").await;
    let weir = Weir::start(&format!(
        "limits: {{ max_connections: 20000, request_head_timeout: 15s }}\n\
listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: all, match: {{ path_prefix: / }}, cluster: live }} ]\n\
clusters: [ {{ name: live, endpoints: [ {{ address: \"{}\" }} ] }} ]\n",
        up.addr
    ))?;
    let addr = weir.addr("public");
    let before = weir.rss_kib();
    let since = Instant::now();
    // Opened in waves no larger than the accept queue, each waiting until the proxy has accepted
    // it: a connect the kernel answers from a full queue is only accepted after SYN-ACK
    // retransmits (up to a minute later), and on a loaded 2-core machine the proxy can fall
    // behind. The point is that they all fit, not how fast they arrive.
    let accepted = async || {
        let (_, m) = weir.admin_get("/metrics").await.unwrap_or_default();
        // Accepted, not open now: on a slow run the first ones may already have met the head
        // timeout.
        sample(&m, "weir_downstream_connections_total{listener=\"public\"}") as usize
    };
    let mut idle = Vec::with_capacity(N);
    while idle.len() < N {
        let wave = futures_util::stream::iter(0..1000.min(N - idle.len()))
            .map(|_| TcpStream::connect(addr))
            .buffer_unordered(128)
            .collect::<Vec<_>>()
            .await;
        for c in wave {
            idle.push(c?);
        }
        let opened = idle.len();
        weir.eventually_within(
            Duration::from_secs(30),
            &format!("the proxy to accept {opened} idle connections"),
            async || accepted().await >= opened,
        )
        .await?;
    }
    eprintln!(
        "{N} connections opened and accepted in {:?}",
        since.elapsed()
    );
    let grown = weir.rss_kib().saturating_sub(before);
    eprintln!(
        "{N} idle connections: +{grown} KiB resident, {:.1} KiB each",
        grown as f64 / N as f64
    );
    assert!(
        grown < 20 * N as u64,
        "{N} idle connections cost {grown} KiB (over 20 KiB each)"
    );
    let got = get(&weir.url("public", "/ok")).await?;
    assert_eq!(got.status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, m) = weir.admin_get("/metrics").await?;
        let open = sample(&m, "weir_downstream_connections{listener=\"public\"}");
        if open == 0.0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{open} idle connections outlived the head timeout"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(timeouts(&weir, "request_head").await? >= N as f64);
    drop(idle);
    Ok(())
}

/// 300 WebSocket tunnels at once against `max_connections: 100`: a hundred run, the rest wait
/// their turn; idle ones are closed; nothing is left afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_flood_stays_within_max_connections() -> Result<()> {
    let ws_up = Upstream::with("ws", websocket_echo).await;
    let live = Upstream::start("live").await;
    let weir = Weir::start(&config(
        "max_connections: 100, tunnel_idle_timeout: 500ms",
        &live,
        &ws_up,
        "",
    ))?;
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (admin, peak) = (weir.admin, peak.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(got) = get(&format!("http://{admin}/metrics")).await {
                    let open = sample(
                        &got.text(),
                        "weir_downstream_connections{listener=\"public\"}",
                    );
                    peak.fetch_max(open as usize, SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let opened = futures_util::future::join_all((0..300).map(|_| async {
        let mut ws = open_ws(&weir).await?;
        echo(&mut ws, "hi").await?;
        // Left idle: the proxy closes it.
        let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        ensure!(end.is_ok(), "an idle tunnel was never closed");
        Ok::<_, anyhow::Error>(())
    }))
    .await;
    sampler.abort();
    for o in opened {
        o?;
    }
    let peak = peak.load(SeqCst);
    assert!(
        (50..=100).contains(&peak),
        "{peak} connections open at once"
    );
    let (_, m) = weir.admin_get("/metrics").await?;
    assert_eq!(timeouts(&weir, "tunnel_idle").await?, 300.0);
    assert_eq!(
        sample(&m, "weir_downstream_connections{listener=\"public\"}"),
        0.0
    );
    Ok(())
}

/// A filter that traps in the middle of a body: the request in flight fails (503 when its
/// request body trapped; cut when its response body did), the next one through the same filter
/// is served by a fresh instance, and other routes never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_mid_body_fails_only_its_own_request() -> Result<()> {
    let up = Upstream::with("up", |req: Request<Incoming>, _seen| async move {
        let path = req.uri().path().to_string();
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        if path == "/echo" {
            return Response::new(full(body.unwrap_or_default()));
        }
        // Two chunks: the second carries the marker.
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx.send(Bytes::from_static(b"first chunk, ")).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(Bytes::from_static(b"then a panic")).await;
        });
        Response::new(body)
    })
    .await;
    let weir = Weir::start(&filter_config(&up, "{ mode: body-panic }", "", "5s"))?;
    let addr = weir.addr("public");

    // Request body: the trap answers 503.
    let (tx, body) = channel_body();
    let req = Request::post(format!("http://{addr}/echo")).body(body)?;
    let sending = tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(b"harmless, ")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tx.send(Bytes::from_static(b"now panic")).await;
    });
    let got = send(&h1_client(), req).await?;
    sending.await?;
    assert_eq!(
        got.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        got.text()
    );

    // Response body: the head is out already, so the response is cut short.
    let mut c = TcpStream::connect(addr).await?;
    c.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let text = String::from_utf8_lossy(
        &read_to_close(&mut c, Instant::now(), Duration::from_secs(5)).await?,
    )
    .into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains("then a panic"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut response looked complete: {text}"
    );

    // The same filter, a fresh instance: fine.
    let got = send(
        &h1_client(),
        Request::post(format!("http://{addr}/echo")).body(full("all good"))?,
    )
    .await?;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "all good");
    let (_, m) = weir.admin_get("/metrics").await?;
    assert_eq!(
        sample(
            &m,
            "weir_filter_failures_total{filter=\"f\",route=\"r\",kind=\"panic\"}"
        ),
        2.0
    );
    Ok(())
}

/// A filter that mints a new metric series per request (an unbounded label) and one with a huge
/// label value: the host refuses past its bounds with an error the filter sees, `/metrics`
/// stays bounded, requests are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_flooding_metric_labels_is_bounded() -> Result<()> {
    let up = Upstream::start("up").await;
    let weir = Weir::start(&filter_config(
        &up,
        "{ mode: label-flood, count: 400 }",
        "",
        "5s",
    ))?;
    let mut outcomes = Vec::new();
    for i in 0..4 {
        let got = get(&weir.url("public", &format!("/r{i}"))).await?;
        assert_eq!(got.status, StatusCode::OK, "{}", got.text());
        outcomes.push(flood_outcome(&up));
    }
    // 400 new series each: the first two requests fit in 1,000, the third crosses it.
    assert_eq!(outcomes[..2], ["ok", "ok"], "{outcomes:?}");
    assert!(outcomes[2].starts_with("invalid"), "{outcomes:?}");
    assert!(outcomes[3].starts_with("invalid"), "{outcomes:?}");
    let (_, m) = weir.admin_get("/metrics").await?;
    let series = m
        .lines()
        .filter(|l| l.starts_with("weir_filter_testbed_flood{"))
        .count();
    assert_eq!(series, 1000, "series of the flooded metric");
    assert!(
        sample(
            &m,
            "weir_filter_limit_rejections_total{filter=\"f\",limit=\"metric_series\"}"
        ) >= 2.0,
        "{m}"
    );

    // A 1 MB label value is refused too, and never reaches /metrics.
    let weir = Weir::start(&filter_config(
        &up,
        "{ mode: label-flood, count: 0, label_bytes: 1000000 }",
        "",
        "5s",
    ))?;
    let got = get(&weir.url("public", "/big")).await?;
    assert_eq!(got.status, StatusCode::OK);
    let outcome = flood_outcome(&up);
    assert!(outcome.starts_with("invalid"), "{outcome}");
    let (_, m) = weir.admin_get("/metrics").await?;
    assert!(m.len() < 1_000_000, "/metrics grew to {} bytes", m.len());
    Ok(())
}

/// The `x-flood` header the filter set on the last request the upstream saw.
fn flood_outcome(up: &Upstream) -> String {
    up.last()
        .headers
        .get("x-flood")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}
