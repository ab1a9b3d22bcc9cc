//! End-to-end: balancing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use anyhow::{Context, Result, bail};
use http::{Request, Response, StatusCode};
use serde_json::{Value, json};

/// One listener, one catch-all route to cluster `c`, described by `cluster` (the flow-map body
/// after `name: c, `).
fn one_cluster(cluster: &str) -> String {
    format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
routes: [ {{ name: r, cluster: c }} ]\n\
clusters:\n  - {{ name: c, {cluster} }}\n"
    )
}

/// `endpoints: [ ... ]` with the given (address, weight) pairs.
fn endpoints(eps: &[(SocketAddr, u32)]) -> String {
    let list: Vec<String> = eps
        .iter()
        .map(|(a, w)| format!("{{ address: \"{a}\", weight: {w} }}"))
        .collect();
    format!("endpoints: [ {} ]", list.join(", "))
}

/// Sends `n` sequential GETs over one keep-alive client; every one must be a 200 from an
/// upstream. Returns how many each upstream answered.
async fn tally(url: &str, n: usize) -> Result<BTreeMap<String, usize>> {
    let client = h1_client();
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let got = send(&client, Request::get(url).body(full(""))?).await?;
        if got.status != StatusCode::OK || got.upstream().is_empty() {
            bail!(
                "request {i}: {} from {:?}: {}",
                got.status,
                got.upstream(),
                got.text()
            );
        }
        *counts.entry(got.upstream().to_string()).or_insert(0) += 1;
    }
    Ok(counts)
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn assert_no_panic(weir: &Weir) {
    let err = weir.stderr_text();
    assert!(!err.contains("panicked"), "weir panicked:\n{err}");
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

/// The endpoints of cluster `c` from the admin API, by address.
async fn admin_endpoints(weir: &Weir) -> Result<BTreeMap<String, Value>> {
    let (status, body) = weir.admin_get("/clusters").await?;
    anyhow::ensure!(status == StatusCode::OK, "GET /clusters: {status}: {body}");
    let v: Value =
        serde_json::from_str(&body).with_context(|| format!("/clusters is not JSON: {body}"))?;
    let cluster = v
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "c"))
        .with_context(|| format!("no cluster c in {body}"))?;
    let eps = cluster["endpoints"]
        .as_array()
        .with_context(|| format!("no endpoints in {body}"))?;
    Ok(eps
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap_or_default().to_string(),
                e.clone(),
            )
        })
        .collect())
}

#[tokio::test]
async fn round_robin_takes_each_upstream_in_turn() -> Result<()> {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let weir = Weir::start(&one_cluster(&format!(
        "lb: round_robin, {}",
        endpoints(&[(a.addr, 1), (b.addr, 1), (c.addr, 1)])
    )))?;
    let got = tally(&weir.url("public", "/"), 300).await?;
    assert_eq!(got, counts(&[("a", 100), ("b", 100), ("c", 100)]));
    // In turn, not merely in proportion: three consecutive requests hit three upstreams.
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(get(&weir.url("public", "/")).await?.upstream().to_string());
    }
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    assert_no_panic(&weir);
    Ok(())
}

#[tokio::test]
async fn weighted_round_robin_follows_weights_exactly() -> Result<()> {
    let (heavy, light) = (
        Upstream::start("heavy").await,
        Upstream::start("light").await,
    );
    let weir = Weir::start(&one_cluster(&format!(
        "lb: weighted_round_robin, {}",
        endpoints(&[(heavy.addr, 3), (light.addr, 1)])
    )))?;
    let got = tally(&weir.url("public", "/"), 400).await?;
    assert_eq!(got, counts(&[("heavy", 300), ("light", 100)]));
    // Smooth: any 4 consecutive requests are 3 + 1 as well.
    let got = tally(&weir.url("public", "/"), 4).await?;
    assert_eq!(got, counts(&[("heavy", 3), ("light", 1)]));
    assert_no_panic(&weir);
    Ok(())
}

#[tokio::test]
async fn random_follows_weights_statistically() -> Result<()> {
    let (heavy, light) = (
        Upstream::start("heavy").await,
        Upstream::start("light").await,
    );
    let weir = Weir::start(&one_cluster(&format!(
        "lb: random, {}",
        endpoints(&[(heavy.addr, 3), (light.addr, 1)])
    )))?;
    // Four clients in parallel, 500 requests each.
    let url = weir.url("public", "/");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { tally(&url, 500).await }));
    }
    let mut total = BTreeMap::<String, usize>::new();
    for t in tasks {
        for (k, v) in t.await?? {
            *total.entry(k).or_insert(0) += v;
        }
    }
    let names: Vec<&str> = total.keys().map(String::as_str).collect();
    assert_eq!(names, ["heavy", "light"]);
    assert_eq!(total.values().sum::<usize>(), 2000);
    let share = total["heavy"] as f64 / 2000.0;
    assert!(
        (0.68..=0.82).contains(&share),
        "heavy share {share} ({total:?})"
    );
    assert_eq!(
        (heavy.count(), light.count()),
        (total["heavy"], total["light"])
    );
    assert_no_panic(&weir);
    Ok(())
}

/// An upstream that holds requests carrying `x-hold` until `release` turns true.
async fn holding_upstream(name: &str, release: tokio::sync::watch::Receiver<bool>) -> Upstream {
    Upstream::with(name, move |req, _seen| {
        let mut release = release.clone();
        async move {
            if req.headers().contains_key("x-hold") {
                let _ = release.wait_for(|r| *r).await;
            }
            Response::new(full(""))
        }
    })
    .await
}

#[tokio::test]
async fn least_request_sends_new_requests_to_the_less_busy_upstream() -> Result<()> {
    let (release_a, rx_a) = tokio::sync::watch::channel(false);
    let (release_b, rx_b) = tokio::sync::watch::channel(false);
    let a = holding_upstream("a", rx_a).await;
    let b = holding_upstream("b", rx_b).await;
    let weir = Weir::start(&one_cluster(&format!(
        "lb: least_request, {}",
        endpoints(&[(a.addr, 1), (b.addr, 1)])
    )))?;
    let url = weir.url("public", "/");

    // Six held requests, started one at a time: with two endpoints, power of two choices always
    // compares both, so they must end up three and three.
    let mut held = Vec::new();
    for i in 1..=6 {
        let url = url.clone();
        held.push(tokio::spawn(async move {
            get_with(&url, &[("x-hold", "1")]).await
        }));
        wait_for(
            &format!("held request {i} to reach an upstream"),
            Duration::from_secs(5),
            || a.count() + b.count() == i,
        )
        .await?;
    }
    assert_eq!(
        (a.count(), b.count()),
        (3, 3),
        "held requests split unevenly"
    );

    // Let b finish its three: a now has 3 in flight, b none.
    release_b.send(true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let eps = admin_endpoints(&weir).await?;
        let flights = (
            eps[&a.addr.to_string()]["in_flight"].clone(),
            eps[&b.addr.to_string()]["in_flight"].clone(),
        );
        if flights == (json!(3), json!(0)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("in_flight never became a=3, b=0: {flights:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Every fast request goes to b, the one with nothing in flight.
    let got = tally(&url, 20).await?;
    assert_eq!(got, counts(&[("b", 20)]));

    release_a.send(true)?;
    let mut answered = BTreeMap::<String, usize>::new();
    for h in held {
        let got = h.await??;
        assert_eq!(got.status, StatusCode::OK);
        *answered.entry(got.upstream().to_string()).or_insert(0) += 1;
    }
    assert_eq!(answered, counts(&[("a", 3), ("b", 3)]));
    assert_no_panic(&weir);
    Ok(())
}

/// 30 keys × 20 requests each through a `policy` cluster hashing on `hash_on`; `headers(key, i)`
/// builds request `i` of `key`. Returns key → the set of upstreams that answered it.
async fn hash_placements(
    policy: &str,
    hash_on: Option<&str>,
    headers: fn(&str, usize) -> Vec<(String, String)>,
) -> Result<(BTreeMap<String, BTreeSet<String>>, Weir, Vec<Upstream>)> {
    let ups = vec![
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let eps: Vec<(SocketAddr, u32)> = ups.iter().map(|u| (u.addr, 1)).collect();
    let hash = hash_on.map_or(String::new(), |h| format!("hash_on: {h}, "));
    let weir = Weir::start(&one_cluster(&format!(
        "lb: {policy}, {hash}{}",
        endpoints(&eps)
    )))?;
    let base = weir.url("public", "");
    let mut tasks = Vec::new();
    for k in 0..30 {
        let key = format!("key-{k}");
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            // Alternate HTTP/1.1 and h2c clients so the key, not the connection, decides.
            let (h1, h2) = (h1_client(), h2c_client());
            let mut seen = BTreeSet::new();
            for i in 0..20 {
                let mut req = Request::get(format!("{base}/p{i}"));
                for (n, v) in headers(&key, i) {
                    req = req.header(n, v);
                }
                let got = send(if i % 2 == 0 { &h1 } else { &h2 }, req.body(full(""))?).await?;
                anyhow::ensure!(
                    got.status == StatusCode::OK,
                    "{key} #{i}: {} {}",
                    got.status,
                    got.text()
                );
                seen.insert(got.upstream().to_string());
            }
            Ok::<_, anyhow::Error>((key, seen))
        }));
    }
    let mut placed = BTreeMap::new();
    for t in tasks {
        let (key, seen) = t.await??;
        placed.insert(key, seen);
    }
    Ok((placed, weir, ups))
}

fn assert_sticky_and_spread(placed: &BTreeMap<String, BTreeSet<String>>) {
    let moved: Vec<_> = placed.iter().filter(|(_, s)| s.len() != 1).collect();
    assert!(
        moved.is_empty(),
        "keys answered by more than one upstream: {moved:?}"
    );
    let used: BTreeSet<&str> = placed.values().flatten().map(String::as_str).collect();
    assert_eq!(
        used,
        BTreeSet::from(["a", "b", "c"]),
        "30 keys should reach every upstream: {placed:?}"
    );
}

fn by_header(key: &str, _i: usize) -> Vec<(String, String)> {
    vec![("x-user".into(), key.into())]
}

fn by_cookie(key: &str, i: usize) -> Vec<(String, String)> {
    // Other cookies around it change from request to request; only `sid` counts.
    vec![(
        "cookie".into(),
        format!("theme=t{i}; sid={key}; n={}", i * 7),
    )]
}

fn by_client(key: &str, _i: usize) -> Vec<(String, String)> {
    // Headers and cookies that a client_ip hash must ignore.
    vec![
        ("x-user".into(), key.into()),
        ("cookie".into(), format!("sid={key}")),
    ]
}

async fn hash_header_and_cookie(policy: &str) -> Result<()> {
    for (hash_on, headers) in [
        ("{ header: x-user }", by_header as fn(&str, usize) -> _),
        ("{ cookie: sid }", by_cookie),
    ] {
        let (placed, weir, _ups) = hash_placements(policy, Some(hash_on), headers).await?;
        assert_eq!(placed.len(), 30);
        assert_sticky_and_spread(&placed);
        assert_no_panic(&weir);
    }
    Ok(())
}

/// All our requests come from 127.0.0.1, so hashing on the client IP must put every one of them
/// on the same upstream, whatever headers and cookies they carry.
async fn hash_client_ip(policy: &str) -> Result<()> {
    for hash_on in [None, Some("client_ip")] {
        let (placed, weir, ups) = hash_placements(policy, hash_on, by_client).await?;
        let used: BTreeSet<&str> = placed.values().flatten().map(String::as_str).collect();
        assert_eq!(
            used.len(),
            1,
            "hash_on {hash_on:?}: one client IP reached several upstreams: {placed:?}"
        );
        let counts: Vec<usize> = ups.iter().map(Upstream::count).collect();
        assert_eq!(counts.iter().sum::<usize>(), 600);
        assert!(counts.contains(&600), "{counts:?}");
        assert_no_panic(&weir);
    }
    Ok(())
}

#[tokio::test]
async fn ring_hash_is_sticky_per_header_and_cookie_and_spreads_keys() -> Result<()> {
    hash_header_and_cookie("ring_hash").await
}

#[tokio::test]
async fn maglev_is_sticky_per_header_and_cookie_and_spreads_keys() -> Result<()> {
    hash_header_and_cookie("maglev").await
}

#[tokio::test]
async fn ring_hash_on_client_ip_is_sticky() -> Result<()> {
    hash_client_ip("ring_hash").await
}

#[tokio::test]
async fn maglev_on_client_ip_is_sticky() -> Result<()> {
    hash_client_ip("maglev").await
}

#[tokio::test]
async fn hash_falls_back_to_client_ip_when_the_key_is_missing() -> Result<()> {
    for policy in ["ring_hash", "maglev"] {
        let (placed, weir, _ups) = hash_placements(policy, Some("{ header: x-user }"), |_, i| {
            vec![("x-other".into(), format!("{i}"))]
        })
        .await?;
        let used: BTreeSet<&str> = placed.values().flatten().map(String::as_str).collect();
        assert_eq!(
            used.len(),
            1,
            "{policy}: requests without the key should all hash on 127.0.0.1: {placed:?}"
        );
        assert_no_panic(&weir);
    }
    Ok(())
}

/// A loopback port with nothing listening on it.
async fn refusing_addr() -> Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    drop(l);
    Ok(addr)
}

#[tokio::test]
async fn passive_health_takes_a_refusing_endpoint_out() -> Result<()> {
    let live = Upstream::start("live").await;
    let dead = refusing_addr().await?;
    let weir = Weir::start(&one_cluster(&format!(
        "lb: round_robin, health: {{ max_failures: 1, cooldown: 60s }}, retries: {{ attempts: 1 }}, {}",
        endpoints(&[(dead, 1), (live.addr, 1)])
    )))?;
    let client = h1_client();
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let got = send(
            &client,
            Request::get(weir.url("public", "/")).body(full(""))?,
        )
        .await?;
        if got.status == StatusCode::BAD_GATEWAY {
            let id = got
                .header("x-request-id")
                .context("502 without x-request-id")?;
            assert_eq!(
                got.text(),
                format!("502 upstream unavailable (request id {id})\n")
            );
        }
        outcomes.push((got.status.as_u16(), got.upstream().to_string()));
    }
    // Retries off (they would answer the first request from the live endpoint: see
    // e2e resilience::). Round robin starts on the dead endpoint: one 502, then it is out and the
    // live one takes all.
    let mut want = vec![(502, String::new())];
    want.extend(std::iter::repeat_n((200, "live".to_string()), 19));
    assert_eq!(outcomes, want);
    assert_eq!(live.count(), 19);

    let eps = admin_endpoints(&weir).await?;
    assert_eq!(
        eps[&dead.to_string()],
        json!({ "address": dead.to_string(), "weight": 1, "healthy": false, "ejected": true, "probes": "off", "warming": false, "in_flight": 0, "connections": 0, "connect_failures": 1 })
    );
    let l = &eps[&live.addr.to_string()];
    assert_eq!(
        (l["healthy"].clone(), l["connect_failures"].clone()),
        (json!(true), json!(0)),
        "{l}"
    );
    assert_no_panic(&weir);
    Ok(())
}

#[tokio::test]
async fn passive_health_retries_an_endpoint_after_its_cooldown() -> Result<()> {
    let live = Upstream::start("live").await;
    let dead = refusing_addr().await?;
    let weir = Weir::start(&one_cluster(&format!(
        "lb: round_robin, health: {{ max_failures: 1, cooldown: 1s }}, retries: {{ attempts: 1 }}, {}",
        endpoints(&[(dead, 1), (live.addr, 1)])
    )))?;
    let got = get(&weir.url("public", "/")).await?;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    let failed_at = Instant::now();
    assert_eq!(
        admin_endpoints(&weir).await?[&dead.to_string()]["healthy"],
        json!(false)
    );
    // Back in rotation once the cooldown is over (the reviver ticks every 500ms).
    let deadline = Instant::now() + Duration::from_secs(4);
    while admin_endpoints(&weir).await?[&dead.to_string()]["healthy"] != json!(true) {
        if Instant::now() > deadline {
            bail!("endpoint never came back after its 1s cooldown");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        failed_at.elapsed() >= Duration::from_millis(900),
        "back after only {:?}",
        failed_at.elapsed()
    );
    // It is tried again (and fails again) within the next two requests.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(get(&weir.url("public", "/")).await?.status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    let ep = &admin_endpoints(&weir).await?[&dead.to_string()];
    assert_eq!(
        (ep["healthy"].clone(), ep["connect_failures"].clone()),
        (json!(false), json!(2)),
        "{ep}"
    );
    assert_no_panic(&weir);
    Ok(())
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() -> Result<()> {
    let up = Upstream::start("up").await;
    let weir = Weir::start(&one_cluster(&endpoints(&[(up.addr, 1)])))?;
    // A fresh downstream connection for every request: only the upstream side can reuse.
    for i in 0..50 {
        let got = get(&weir.url("public", &format!("/{i}"))).await?;
        assert_eq!((got.status, got.upstream()), (StatusCode::OK, "up"));
    }
    assert_eq!(up.count(), 50);
    let conns = up.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&conns),
        "50 sequential requests opened {conns} upstream connections"
    );
    let open = admin_endpoints(&weir).await?[&up.addr.to_string()]["connections"]
        .as_u64()
        .context("connections")?;
    assert!(
        (1..=2).contains(&open),
        "admin reports {open} open upstream connections"
    );
    assert_no_panic(&weir);
    Ok(())
}
