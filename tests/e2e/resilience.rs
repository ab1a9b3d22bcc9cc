//! End-to-end: upstream resilience — a fault-injecting upstream beside a healthy one, and what
//! the client gets for each fault, method by method: retries only where they are safe, never a
//! duplicated non-idempotent request, never a request without an answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::support::*;
use anyhow::Result;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the faulty endpoint does with a request.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Nothing listens: the connection is refused.
    Refuse,
    /// Reads the request, then resets the connection (RST).
    Reset,
    /// Reads the request, then closes without a word (FIN).
    Close,
    /// Reads the request and never answers.
    Hang,
    /// Answers, but only after 3 s.
    SlowHead,
    /// Sends a head and half the body, then stalls.
    SlowBody,
    /// Answers with bytes that are not HTTP.
    Garbage,
    /// Answers 503.
    Status503,
    /// Answers 500.
    Status500,
    /// Accepts nothing: connections sit in the backlog, the request is never read.
    BlackHole,
}

/// A raw TCP endpoint misbehaving as `fault` (until `cured` is set: then it answers 200);
/// counts the requests it read.
struct Faulty {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    cured: Arc<std::sync::atomic::AtomicBool>,
    _task: Option<tokio::task::JoinHandle<()>>,
    _listener: Option<std::net::TcpListener>,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        if let Some(t) = &self._task {
            t.abort();
        }
    }
}

async fn faulty(fault: Fault) -> Faulty {
    let seen = Arc::new(AtomicUsize::new(0));
    let cured = Arc::new(std::sync::atomic::AtomicBool::new(false));
    match fault {
        Fault::Refuse => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            drop(l);
            return Faulty {
                addr,
                seen,
                cured,
                _task: None,
                _listener: None,
            };
        }
        Fault::BlackHole => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            return Faulty {
                addr,
                seen,
                cured,
                _task: None,
                _listener: Some(l),
            };
        }
        _ => {}
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = seen.clone();
    let cure = cured.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (counter, cure) = (counter.clone(), cure.clone());
            tokio::spawn(async move {
                // One request per connection: the head, and a body by its Content-Length.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                counter.fetch_add(1, Relaxed);
                if cure.load(Relaxed) {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\ncured")
                        .await;
                    return;
                }
                match fault {
                    Fault::Reset => {
                        reset(s);
                    }
                    Fault::Close => drop(s),
                    Fault::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                    Fault::SlowHead => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
                            .await;
                    }
                    Fault::SlowBody => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.")
                            .await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Fault::Garbage => {
                        let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
                    }
                    Fault::Status503 => {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy",
                            )
                            .await;
                    }
                    Fault::Status500 => {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops",
                            )
                            .await;
                    }
                    Fault::Refuse | Fault::BlackHole => unreachable!(),
                }
            });
        }
    });
    Faulty {
        addr,
        seen,
        cured,
        _task: Some(task),
        _listener: None,
    }
}

/// Closes with RST instead of FIN (SO_LINGER 0).
#[expect(
    deprecated,
    reason = "a zero linger never blocks: close sends RST at once"
)]
fn reset(s: TcpStream) {
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}

/// A proxy over one cluster of [bad, good] (round robin: the first request goes to `bad`).
fn pair_config(bad: SocketAddr, good: SocketAddr, retries: &str) -> String {
    format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c, timeout: 2s }} ]\n\
clusters:\n  - {{ name: c, endpoints: [ {{ address: \"{bad}\" }}, {{ address: \"{good}\" }} ], \
timeouts: {{ connect: 500ms, body: 1s }}, health: {{ max_failures: 0 }}{retries} }}\n"
    )
}

/// The status and body of one request; a body cut short reads as `<cut>`.
async fn send_one(weir: &Weir, method: &str) -> Result<(u16, String)> {
    use http_body_util::BodyExt as _;
    let req = Request::builder()
        .method(method)
        .uri(weir.url("public", "/x"))
        .body(full("payload"))?;
    let res = tokio::time::timeout(Duration::from_secs(20), h1_client().request(req)).await??;
    let status = res.status().as_u16();
    let text = match res.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => "<cut>".into(),
    };
    Ok((status, text))
}

/// The status of a GET without a body. (`send_one`'s GET carries a body, which the test
/// upstream does not read: whether it then keeps the connection depends on whether the body
/// arrived with the head, so connection counts after it are a race.)
async fn get_status(weir: &Weir) -> Result<u16> {
    let req = Request::get(weir.url("public", "/x")).body(full(""))?;
    let res = tokio::time::timeout(Duration::from_secs(20), h1_client().request(req)).await??;
    let status = res.status().as_u16();
    http_body_util::BodyExt::collect(res.into_body()).await?;
    Ok(status)
}

/// The table: each fault × {GET, POST} on a [bad, good] cluster with the default retry policy
/// (`attempts: 2, on: [connect-failure, reset]`). GETs are answered by the good endpoint
/// whenever the fault is one the policy retries; a POST is retried only when it never reached
/// the bad endpoint; nothing is ever sent to an endpoint twice, and every request is answered.
#[tokio::test]
async fn each_fault_gets_the_answer_a_careful_proxy_gives() -> Result<()> {
    use Fault::*;
    // (fault, GET status, GET retried, POST status, POST retried)
    let table = [
        (Refuse, 200, true, 200, true),
        (BlackHole, 504, false, 504, false),
        (Reset, 200, true, 502, false),
        (Close, 200, true, 502, false),
        (Garbage, 200, true, 502, false),
        (Hang, 504, false, 504, false),
        (SlowHead, 504, false, 504, false),
        (SlowBody, 200, false, 200, false),
        (Status503, 503, false, 503, false),
    ];
    let mut report = String::from("fault       method status ms    bad good\n");
    for (fault, get_status, get_retried, post_status, post_retried) in table {
        for (method, want, retried) in [
            ("GET", get_status, get_retried),
            ("POST", post_status, post_retried),
        ] {
            let bad = faulty(fault).await;
            let good = Upstream::start("good").await;
            let weir = Weir::start(&pair_config(bad.addr, good.addr, ""))?;
            let t = Instant::now();
            let (status, body) = send_one(&weir, method).await?;
            let ms = t.elapsed().as_millis();
            let good_seen = good.seen.lock().unwrap().len();
            let bad_seen = bad.seen.load(Relaxed);
            report.push_str(&format!(
                "{:<11} {method:<6} {status}    {ms:<5} {bad_seen}   {good_seen}\n",
                format!("{fault:?}")
            ));
            assert_eq!(status, want, "{fault:?} {method}: {body}");
            // Nothing reached an endpoint twice; a POST that reached the bad one is not resent.
            assert!(bad_seen <= 1, "{fault:?} {method}: bad saw {bad_seen}");
            if method == "POST" && bad_seen == 1 {
                assert_eq!(
                    good_seen, 0,
                    "{fault:?}: a POST that reached an upstream was resent"
                );
            }
            assert_eq!(
                good_seen,
                usize::from(retried),
                "{fault:?} {method}: good saw {good_seen}"
            );
            if fault == SlowBody {
                // The head came from the bad endpoint; its body is cut after `timeouts.body`.
                assert_eq!(body, "<cut>", "{fault:?} {method}");
            }
            // Bounded: by the route's 2 s deadline plus the body timeout.
            assert!(ms < 4_000, "{fault:?} {method}: {ms} ms");
        }
    }
    eprintln!("{report}");
    Ok(())
}

/// With `per_try_timeout` and `timeout` in `on`, a GET to an endpoint that hangs moves on to
/// the good one within the route's deadline; a POST does not (it reached the upstream).
/// `gateway-error` retries a 503 for GETs only. The access log shows the tries.
#[tokio::test]
async fn timeouts_and_gateway_errors_are_retried_when_asked_for() -> Result<()> {
    for (fault, get_status) in [(Fault::Hang, 200), (Fault::Status503, 200)] {
        let bad = faulty(fault).await;
        let good = Upstream::start("good").await;
        let dir = TempDir::new();
        let log = dir.path("access.log");
        let config = format!(
            "access_log: {{ path: \"{}\" }}\n{}",
            log.display(),
            pair_config(
                bad.addr,
                good.addr,
                ", retries: { attempts: 3, on: [ connect-failure, reset, timeout, gateway-error ], per_try_timeout: 300ms }"
            )
        );
        let weir = Weir::start_in(dir, &config)?;
        let t = Instant::now();
        let (status, _) = send_one(&weir, "GET").await?;
        assert_eq!(status, get_status, "{fault:?} GET");
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{fault:?}: {:?}",
            t.elapsed()
        );
        assert_eq!(good.seen.lock().unwrap().len(), 1);
        // Two POSTs: round robin sends one to each endpoint.
        let mut statuses = vec![
            send_one(&weir, "POST").await?.0,
            send_one(&weir, "POST").await?.0,
        ];
        statuses.sort();
        let want = if fault == Fault::Hang { 504 } else { 503 };
        assert_eq!(
            statuses,
            vec![200, want],
            "{fault:?}: the POST is not retried"
        );
        assert_eq!(bad.seen.load(Relaxed), 2, "{fault:?}");
        assert_eq!(
            good.seen.lock().unwrap().len(),
            2,
            "{fault:?}: the POST was not resent"
        );

        let metrics = get(&format!("http://{}/metrics", weir.admin)).await?.text();
        assert!(
            metrics.contains("weir_upstream_retries_total{cluster=\"c\"} 1"),
            "{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lines = std::fs::read_to_string(&log)?;
        let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap())?;
        assert_eq!(first["attempts"], 2, "{lines}");
        assert_eq!(first["upstream"], good.addr.to_string(), "{lines}");
    }
    Ok(())
}

/// A request body is kept (up to `retries.buffer`) so a retried PUT sends it whole; a larger
/// body that already went out is not resent, and its failure is answered.
#[tokio::test]
async fn retried_bodies_arrive_whole_and_large_sent_bodies_are_not_resent() -> Result<()> {
    let bad = faulty(Fault::Reset).await;
    let good = Upstream::start("good").await;
    let weir = Weir::start(&pair_config(
        bad.addr,
        good.addr,
        ", retries: { buffer: 1KiB }",
    ))?;
    let small = "s".repeat(1000);
    let req = Request::builder()
        .method("PUT")
        .uri(weir.url("public", "/x"))
        .body(full(small.clone()))?;
    let got = send(&h1_client(), req).await?;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), small, "the retry sent the body whole");

    // Round robin: a GET to the bad endpoint (retried), then the large body to the bad one.
    assert_eq!(send_one(&weir, "GET").await?.0, 200);
    let big = "b".repeat(100_000);
    let req = Request::builder()
        .method("PUT")
        .uri(weir.url("public", "/x"))
        .body(full(big))?;
    let got = send(&h1_client(), req).await?;
    assert_eq!(got.status, 502, "{}", got.text());
    assert_eq!(bad.seen.load(Relaxed), 3);
    assert_eq!(
        good.seen.lock().unwrap().len(),
        2,
        "the large body was not resent"
    );
    Ok(())
}

/// The retry budget: with every endpoint failing, retries in flight stay within the budget's
/// share (at least 10), the rest are answered at once and counted.
#[tokio::test]
async fn a_failing_cluster_cannot_cause_a_retry_storm() -> Result<()> {
    let a = faulty(Fault::Hang).await;
    let b = faulty(Fault::Hang).await;
    let weir = Weir::start(&pair_config(
        a.addr,
        b.addr,
        ", retries: { attempts: 2, on: [ timeout ], per_try_timeout: 300ms, budget: 0% }",
    ))?;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let url = weir.url("public", "/x");
        tasks.push(tokio::spawn(async move {
            get(&url).await.map(|g| g.status.as_u16())
        }));
    }
    for t in tasks {
        let status = t.await??;
        assert_eq!(status, 504);
    }
    let first_tries = 40;
    let total = a.seen.load(Relaxed) + b.seen.load(Relaxed);
    assert!(
        (first_tries..=first_tries + 10).contains(&total),
        "budget 0% allows 10 retries in flight at most; the upstreams saw {total} requests"
    );
    let metrics = get(&format!("http://{}/metrics", weir.admin)).await?.text();
    assert!(
        metrics.contains("weir_upstream_retries_over_budget_total{cluster=\"c\"}")
            && !metrics.contains("weir_upstream_retries_over_budget_total{cluster=\"c\"} 0"),
        "{metrics}"
    );
    Ok(())
}

/// The endpoints of cluster `c` from `GET /clusters`, by address.
async fn endpoints_of(
    weir: &Weir,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>> {
    let (_, body) = weir.admin_get("/clusters").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let c = v
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "c"))
        .cloned()
        .unwrap_or_default();
    Ok(c["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e["address"].as_str().unwrap_or_default().to_string(), e))
        .collect())
}

/// A reload that leaves a cluster as it was keeps its pool (no new upstream connection) and its
/// health (an endpoint out stays out); a change to the cluster rebuilds both.
#[tokio::test]
async fn pools_and_health_survive_a_reload_that_leaves_the_cluster_alone() -> Result<()> {
    let dead = faulty(Fault::Refuse).await;
    let live = Upstream::start("live").await;
    let config = pair_config(
        dead.addr,
        live.addr,
        ", health: { max_failures: 1, cooldown: 60s }",
    )
    .replace("health: { max_failures: 0 }, ", "");
    let weir = Weir::start(&config)?;
    assert_eq!(
        get_status(&weir).await?,
        200,
        "retried on the live endpoint"
    );
    assert_eq!(
        endpoints_of(&weir).await?[&dead.addr.to_string()]["healthy"],
        false
    );
    assert_eq!(live.connections.load(Relaxed), 1);

    // A route added: the cluster is untouched.
    let (status, body) = weir
        .admin(
            "PUT",
            "/routes/other",
            r#"{"match": {"path_prefix": "/other"}, "cluster": "c"}"#,
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    for _ in 0..3 {
        assert_eq!(get_status(&weir).await?, 200);
    }
    assert_eq!(
        live.connections.load(Relaxed),
        1,
        "the pooled connection was kept across the reload"
    );
    assert_eq!(
        endpoints_of(&weir).await?[&dead.addr.to_string()]["healthy"],
        false,
        "health was kept across the reload"
    );

    // The cluster itself changed: a new pool and fresh health.
    let cluster = format!(
        r#"{{"endpoints": [{{"address": "{}"}}, {{"address": "{}"}}], "max_idle_per_endpoint": 8}}"#,
        dead.addr, live.addr
    );
    let (status, body) = weir.admin("PUT", "/clusters/c", cluster).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        endpoints_of(&weir).await?[&dead.addr.to_string()]["healthy"],
        true
    );
    assert_eq!(get_status(&weir).await?, 200);
    assert_eq!(
        live.connections.load(Relaxed),
        2,
        "a rebuilt cluster connects anew"
    );
    Ok(())
}

/// A TCP relay to `to` that can be frozen: while frozen it forwards nothing either way (a black
/// hole: no reset, no close). Counts the client connections it saw closed.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(to: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let (f, c) = (frozen.clone(), closed.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((down, _)) = listener.accept().await else {
                return;
            };
            let Ok(up) = TcpStream::connect(to).await else {
                continue;
            };
            let (f, c) = (f.clone(), c.clone());
            tokio::spawn(async move {
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                let f2 = f.clone();
                let upward = tokio::spawn(async move {
                    let mut buf = [0u8; 16384];
                    loop {
                        match dr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) if !f2.load(Relaxed) => {
                                if uw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {} // frozen: swallowed
                        }
                    }
                });
                let downward = tokio::spawn(async move {
                    let mut buf = [0u8; 16384];
                    loop {
                        match ur.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) if !f.load(Relaxed) => {
                                if dw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
                // The proxy's side closing is what this relay reports.
                let _ = upward.await;
                c.fetch_add(1, Relaxed);
                downward.abort();
            });
        }
    });
    Relay {
        addr,
        frozen,
        closed,
        task,
    }
}

/// An HTTP/2 upstream connection that goes silent (no reset, no close) is found by PINGs and
/// closed within `ping_interval + ping_timeout`; the next request connects anew.
#[tokio::test]
async fn a_black_holed_h2_connection_is_found_by_pings() -> Result<()> {
    let up = Upstream::start("h2").await;
    let relay = relay(up.addr).await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c, timeout: 2s }} ]\n\
clusters:\n  - {{ name: c, protocol: h2, endpoints: [ {{ address: \"{}\" }} ], \
timeouts: {{ ping_interval: 200ms, ping_timeout: 300ms }} }}\n",
        relay.addr
    ))?;
    assert_eq!(get(&weir.url("public", "/")).await?.status, 200);
    assert_eq!(up.connections.load(Relaxed), 1);
    relay.frozen.store(true, Relaxed);
    let t = Instant::now();
    while relay.closed.load(Relaxed) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the silent connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let found = t.elapsed();
    assert!(found < Duration::from_millis(1500), "found after {found:?}");
    relay.frozen.store(false, Relaxed);
    assert_eq!(get(&weir.url("public", "/")).await?.status, 200);
    assert_eq!(
        up.connections.load(Relaxed),
        2,
        "a new connection after the dead one"
    );
    eprintln!("black-holed h2 connection closed after {found:?}");
    Ok(())
}

/// Circuit breaking: past `limits.max_requests` (or `max_connections`) a request is answered 503
/// at once with a body that says which limit, counted in `weir_cluster_overflow_total`; once the
/// load is gone the cluster serves again.
#[tokio::test]
async fn cluster_limits_answer_503_past_the_cap_and_recover() -> Result<()> {
    for (limits, what, label) in [
        (
            "max_requests: 2",
            "limit of 2 requests in flight",
            "requests",
        ),
        (
            "max_connections: 2, max_pending: 0",
            "limit of 2 connections",
            "connections",
        ),
    ] {
        let up = Upstream::start("up").await;
        let weir = Weir::start(&format!(
            "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }} ], limits: {{ {limits} }} }} ]\n",
            up.addr
        ))?;
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let url = weir.url("public", "/");
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let got = get_with(&url, &[("x-delay-ms", "600")]).await?;
                anyhow::Ok((got.status.as_u16(), got.text(), t.elapsed()))
            }));
        }
        let mut ok = 0;
        for t in tasks {
            let (status, body, took) = t.await??;
            match status {
                200 => ok += 1,
                503 => {
                    assert!(body.contains(what), "{label}: {body}");
                    assert!(
                        took < Duration::from_millis(400),
                        "{label}: refused after {took:?}"
                    );
                }
                other => panic!("{label}: {other} {body}"),
            }
        }
        assert_eq!(ok, 2, "{label}: two fit under the cap");
        let metrics = get(&format!("http://{}/metrics", weir.admin)).await?.text();
        let line = format!("weir_cluster_overflow_total{{cluster=\"c\",limit=\"{label}\"}} 4");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
        assert_eq!(
            get(&weir.url("public", "/")).await?.status,
            200,
            "{label}: recovered"
        );
    }
    Ok(())
}

/// An upstream whose `/healthz` answers 200 or 503 as `sick` says; other paths as usual.
async fn probed(name: &str, sick: Arc<std::sync::atomic::AtomicBool>) -> Upstream {
    Upstream::with(name, move |req, seen| {
        let sick = sick.clone();
        async move {
            if req.uri().path() == "/healthz" {
                let mut res = http::Response::new(full(""));
                if sick.load(Relaxed) {
                    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                return res;
            }
            default_handler(req, seen).await
        }
    })
    .await
}

/// Waits until endpoint `addr` of cluster `c` shows `healthy` (up to 3 s).
async fn wait_health(weir: &Weir, addr: SocketAddr, healthy: bool) -> Result<Duration> {
    let t = Instant::now();
    loop {
        if endpoints_of(weir).await?[&addr.to_string()]["healthy"] == healthy {
            return Ok(t.elapsed());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(3),
            "{addr} never became healthy={healthy}: {:?}",
            endpoints_of(weir).await?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Active health checks: an endpoint whose probe fails `unhealthy` times in a row leaves
/// rotation (shown in `/clusters` and `weir_endpoint_healthy`) and every request goes to the
/// other; once probes pass `healthy` times it is back. With every endpoint failing, traffic
/// still flows to all of them (panic mode) instead of nowhere.
#[tokio::test]
async fn active_health_checks_take_endpoints_out_and_bring_them_back() -> Result<()> {
    let sick_a = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sick_b = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a = probed("a", sick_a.clone()).await;
    let b = probed("b", sick_b.clone()).await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }}, {{ address: \"{}\" }} ], \
health: {{ active: {{ path: /healthz, interval: 100ms, timeout: 500ms, healthy: 2, unhealthy: 2 }} }} }} ]\n",
        a.addr, b.addr
    ))?;
    // Probes arrive on their own connections, with the probe's user agent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let probes = a.seen().iter().filter(|s| s.path == "/healthz").count();
    assert!(probes >= 1, "a was probed");
    assert_eq!(
        a.last().headers["user-agent"],
        "weir-health-check",
        "{:?}",
        a.last().headers
    );

    sick_a.store(true, Relaxed);
    let took = wait_health(&weir, a.addr, false).await?;
    assert_eq!(
        endpoints_of(&weir).await?[&a.addr.to_string()]["probes"],
        "failing"
    );
    let metrics = get(&format!("http://{}/metrics", weir.admin)).await?.text();
    assert!(
        metrics.contains(&format!(
            "weir_endpoint_healthy{{cluster=\"c\",endpoint=\"{}\"}} 0",
            a.addr
        )),
        "{metrics}"
    );
    for _ in 0..10 {
        assert_eq!(get(&weir.url("public", "/")).await?.upstream(), "b");
    }
    eprintln!("out of rotation {took:?} after its probes began to fail");

    // Both failing: panic mode spreads traffic over both rather than refusing it.
    sick_b.store(true, Relaxed);
    wait_health(&weir, b.addr, false).await?;
    let mut answered_by = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let got = get(&weir.url("public", "/")).await?;
        assert_eq!(got.status, 200);
        answered_by.insert(got.upstream().to_string());
    }
    assert_eq!(answered_by.len(), 2, "panic mode uses every endpoint");

    sick_a.store(false, Relaxed);
    sick_b.store(false, Relaxed);
    wait_health(&weir, a.addr, true).await?;
    wait_health(&weir, b.addr, true).await?;
    assert_eq!(
        endpoints_of(&weir).await?[&a.addr.to_string()]["probes"],
        "passing"
    );
    Ok(())
}

/// `slow_start`: an endpoint whose probes pass again comes back with a small share of traffic
/// (shown as `warming` in `/clusters`) that grows to a full one over the window.
#[tokio::test]
async fn a_returning_endpoint_warms_up_under_slow_start() -> Result<()> {
    let sick_a = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a = probed("a", sick_a.clone()).await;
    let b = probed("b", Arc::default()).await;
    let window = Duration::from_secs(5);
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters: [ {{ name: c, slow_start: 5s, endpoints: [ {{ address: \"{}\" }}, {{ address: \"{}\" }} ], \
health: {{ active: {{ path: /healthz, interval: 100ms, timeout: 500ms, healthy: 1, unhealthy: 1 }} }} }} ]\n",
        a.addr, b.addr
    ))?;
    let share_of_a = || async {
        let mut to_a = 0;
        for _ in 0..100 {
            if get(&weir.url("public", "/")).await?.upstream() == "a" {
                to_a += 1;
            }
        }
        anyhow::Ok(to_a)
    };
    assert_eq!(share_of_a().await?, 50, "endpoints start warm: round robin");

    sick_a.store(true, Relaxed);
    wait_health(&weir, a.addr, false).await?;
    sick_a.store(false, Relaxed);
    wait_health(&weir, a.addr, true).await?;
    let back = Instant::now();
    assert_eq!(
        endpoints_of(&weir).await?[&a.addr.to_string()]["warming"],
        true
    );
    let early = share_of_a().await?;
    eprintln!(
        "a's share in the {:?} after it came back: {early}%",
        back.elapsed()
    );
    assert!(
        early <= 30,
        "a warming endpoint got {early} of 100 requests"
    );

    tokio::time::sleep(window.saturating_sub(back.elapsed()) + Duration::from_millis(100)).await;
    let warm = share_of_a().await?;
    assert!((45..=55).contains(&warm), "after the window a got {warm}");
    assert_eq!(
        endpoints_of(&weir).await?[&a.addr.to_string()]["warming"],
        false
    );
    Ok(())
}

/// `tcp: true` probes only connect: an endpoint that refuses connections leaves rotation before
/// any request meets it.
#[tokio::test]
async fn tcp_probes_find_a_refusing_endpoint_before_traffic_does() -> Result<()> {
    let dead = faulty(Fault::Refuse).await;
    let live = Upstream::start("live").await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }}, {{ address: \"{}\" }} ], \
retries: {{ attempts: 1 }}, health: {{ active: {{ tcp: true, interval: 100ms, timeout: 200ms, unhealthy: 1 }} }} }} ]\n",
        dead.addr, live.addr
    ))?;
    wait_health(&weir, dead.addr, false).await?;
    for _ in 0..10 {
        assert_eq!(
            get(&weir.url("public", "/")).await?.status,
            200,
            "no retry needed"
        );
    }
    assert_eq!(
        endpoints_of(&weir).await?[&dead.addr.to_string()]["connect_failures"],
        0,
        "no request was sent to it"
    );
    Ok(())
}

/// Outlier ejection doubles: an endpoint ejected again after it comes back stays out twice as
/// long.
#[tokio::test]
async fn repeated_ejections_last_longer() -> Result<()> {
    let dead = faulty(Fault::Refuse).await;
    let live = Upstream::start("live").await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters: [ {{ name: c, lb: round_robin, endpoints: [ {{ address: \"{}\" }}, {{ address: \"{}\" }} ], \
health: {{ max_failures: 1, cooldown: 400ms }} }} ]\n",
        dead.addr, live.addr
    ))?;
    let mut outs = Vec::new();
    for _ in 0..2 {
        // Until a request meets the dead endpoint (it is retried on the live one).
        let t = Instant::now();
        while endpoints_of(&weir).await?[&dead.addr.to_string()]["healthy"] == true {
            assert_eq!(get(&weir.url("public", "/")).await?.status, 200);
            anyhow::ensure!(t.elapsed() < Duration::from_secs(3), "never ejected");
        }
        outs.push(wait_health(&weir, dead.addr, true).await?);
    }
    eprintln!("ejections lasted {outs:?}");
    assert!(outs[0] < Duration::from_millis(1000), "{outs:?}");
    assert!(
        outs[1] >= Duration::from_millis(700),
        "the second ejection lasts twice the first: {outs:?}"
    );
    Ok(())
}

/// At `max_connections`, up to `max_pending` requests wait for a pooled connection to come free
/// (and are answered by it); more are refused at once.
#[tokio::test]
async fn requests_wait_at_max_connections_up_to_max_pending() -> Result<()> {
    let up = Upstream::start("up").await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }} ], limits: {{ max_connections: 2, max_pending: 2 }} }} ]\n",
        up.addr
    ))?;
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        let url = weir.url("public", "/");
        tasks.push(tokio::spawn(async move {
            // Started in order, so the first two hold the connections.
            tokio::time::sleep(Duration::from_millis(30 * i)).await;
            let got = get_with(&url, &[("x-delay-ms", "500")]).await?;
            anyhow::Ok(got.status.as_u16())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await??);
    }
    statuses.sort();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 200, 503, 503],
        "2 served, 2 waited, 2 refused"
    );
    assert_eq!(
        up.connections.load(Relaxed),
        2,
        "the waiting requests reused the two"
    );
    Ok(())
}

/// Under load (20 clients), an endpoint that resets every request is ejected after its first
/// failures (some of which the retry budget may leave unretried), and from then on not one
/// GET fails; cured, it comes back after its cooldown and takes its share, again without a
/// failure.
#[tokio::test]
async fn ejection_and_recovery_under_load_fail_no_request() -> Result<()> {
    let bad = faulty(Fault::Reset).await;
    let good = Upstream::start("good").await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }}, {{ address: \"{}\" }} ], \
health: {{ max_failures: 2, cooldown: 1500ms, max_cooldown: 1500ms }} }} ]\n",
        bad.addr, good.addr
    ))?;
    let url = weir.url("public", "/");
    let load = |n: usize| {
        let url = url.clone();
        async move {
            let mut tasks = Vec::new();
            for _ in 0..20 {
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    let client = h1_client();
                    let mut failed = 0;
                    for _ in 0..n {
                        let req = Request::get(&url).body(full(""))?;
                        if send(&client, req).await?.status != 200 {
                            failed += 1;
                        }
                    }
                    anyhow::Ok(failed)
                }));
            }
            let mut failed = 0;
            for t in tasks {
                failed += t.await??;
            }
            anyhow::Ok(failed)
        }
    };
    let before = load(2).await?;
    assert_eq!(
        endpoints_of(&weir).await?[&bad.addr.to_string()]["ejected"],
        true,
        "ejected after its first failures"
    );
    let sick_seen = bad.seen.load(Relaxed);
    assert_eq!(load(20).await?, 0, "400 GETs once it is ejected");
    assert_eq!(
        bad.seen.load(Relaxed),
        sick_seen,
        "no request reached it while ejected"
    );

    bad.cured.store(true, Relaxed);
    wait_health(&weir, bad.addr, true).await?;
    assert_eq!(load(20).await?, 0, "400 GETs once it is back");
    assert!(
        bad.seen.load(Relaxed) > sick_seen + 50,
        "cured, it takes its share again: {} then {}",
        sick_seen,
        bad.seen.load(Relaxed)
    );
    eprintln!("{before} of the first 40 GETs failed before the ejection (retry budget)");
    Ok(())
}

/// A route may opt in to retrying its POSTs after they reached an upstream
/// (`retry_non_idempotent`): the POST is resent to the other endpoint and answered 200.
#[tokio::test]
async fn a_route_may_opt_in_to_retrying_posts() -> Result<()> {
    let bad = faulty(Fault::Reset).await;
    let good = Upstream::start("good").await;
    let config = pair_config(bad.addr, good.addr, "")
        .replace("timeout: 2s }", "timeout: 2s, retry_non_idempotent: true }");
    assert!(config.contains("retry_non_idempotent: true"));
    let weir = Weir::start(&config)?;
    let (status, body) = send_one(&weir, "POST").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "payload", "the body was sent again whole");
    assert_eq!(bad.seen.load(Relaxed), 1);
    assert_eq!(good.count(), 1);
    Ok(())
}

/// Responses eject too: an endpoint answering 503s (passed on, not retried) is out after
/// `max_failures` of them in a row, one answering 500s after `max_5xx`; from then on every
/// request goes to the healthy endpoint.
#[tokio::test]
async fn endpoints_answering_errors_are_ejected() -> Result<()> {
    for (fault, health) in [
        (Fault::Status503, "max_failures: 3"),
        (Fault::Status500, "max_5xx: 2"),
    ] {
        let bad = faulty(fault).await;
        let good = Upstream::start("good").await;
        let config = pair_config(bad.addr, good.addr, "").replace(
            "health: { max_failures: 0 }",
            &format!("health: {{ {health}, cooldown: 60s }}"),
        );
        let weir = Weir::start(&config)?;
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(send_one(&weir, "GET").await?.0);
        }
        let errors = statuses.iter().filter(|s| **s >= 500).count();
        let want = if fault == Fault::Status503 { 3 } else { 2 };
        assert_eq!(errors, want, "{fault:?}: {statuses:?}");
        assert!(
            statuses[statuses.len() - 10..].iter().all(|s| *s == 200),
            "{fault:?}: {statuses:?}"
        );
        assert_eq!(
            endpoints_of(&weir).await?[&bad.addr.to_string()]["ejected"],
            true
        );
    }
    Ok(())
}

/// `health.active.statuses` decides which answers pass: a `/healthz` answering 200 fails a
/// probe that wants 204.
#[tokio::test]
async fn probe_statuses_are_configurable() -> Result<()> {
    let a = probed("a", Arc::new(std::sync::atomic::AtomicBool::new(false))).await;
    let b = probed("b", Arc::new(std::sync::atomic::AtomicBool::new(false))).await;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters: [ {{ name: c, endpoints: [ {{ address: \"{}\" }}, {{ address: \"{}\" }} ], \
health: {{ max_ejected: 100%, active: {{ statuses: [ 204 ], interval: 100ms, unhealthy: 1 }} }} }} ]\n",
        a.addr, b.addr
    ))?;
    wait_health(&weir, a.addr, false).await?;
    wait_health(&weir, b.addr, false).await?;
    Ok(())
}
