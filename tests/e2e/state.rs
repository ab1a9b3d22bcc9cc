//! End-to-end: filters' shared state in Redis (`state.backend: redis`), against a real
//! `redis-server` on a loopback port: the KV contract on both backends, two gateway processes
//! sharing one rate limit, Redis killed, paused and restarted under traffic, `on_unavailable`,
//! the admin view and live backend switches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weir_config::StateConfig;
use weir_filters::{KvError, KvLimits, Redis, State, StateError};
use weir_observe::StateStats;

use crate::support::*;

/// The embedded store, or one backed by `redis` once a connection is up.
async fn store(redis: Option<&RedisServer>) -> Result<(State, Arc<StateStats>)> {
    let stats = Arc::new(StateStats::default());
    let state = State::new(KvLimits::default(), stats.clone());
    if let Some(r) = redis {
        let config: StateConfig = serde_json::from_value(serde_json::json!({
            "backend": "redis", "url": r.url(), "pool": { "size": 4, "timeout": "2s" }
        }))?;
        let backend = Arc::new(Redis::new(&config, None, stats.clone())?);
        state.use_backend(Some(backend.clone()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while backend.connections() < 4 {
            ensure!(Instant::now() < deadline, "no connection to redis");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok((state, stats))
}

const W: Duration = Duration::from_secs(2);

/// The WIT `kv` contract, run the same way on both backends.
async fn kv_contract(s: &State, what: &str) -> Result<()> {
    // Compare-and-swap follows versions; 0 means "absent".
    let v1 = s.compare_and_swap("n", "k", 0, b"a".to_vec(), 0, W).await?;
    let v1 = v1.context("a CAS from 0 on a new key wins")?;
    assert_eq!(
        s.compare_and_swap("n", "k", 0, b"b".to_vec(), 0, W).await?,
        None,
        "{what}"
    );
    assert_eq!(
        s.compare_and_swap("n", "k", v1 + 1000, b"b".to_vec(), 0, W)
            .await?,
        None
    );
    let v2 = s
        .compare_and_swap("n", "k", v1, b"b".to_vec(), 0, W)
        .await?;
    let v2 = v2.context("a CAS from the current version wins")?;
    assert!(v2 > v1, "{what}: {v2} after {v1}");
    assert_eq!(
        s.get("n", "k", W).await?,
        Some((b"b".to_vec(), v2)),
        "{what}"
    );
    assert_eq!(
        s.get("other", "k", W).await?,
        None,
        "{what}: namespaces are separate"
    );
    // Binary values round trip.
    let bin: Vec<u8> = (0..=255).collect();
    let v = s.set("n", "bin", bin.clone(), 0, W).await?;
    assert_eq!(s.get("n", "bin", W).await?, Some((bin, v)), "{what}");

    // TTLs: an expired key is absent, and absent for CAS.
    s.set("n", "t", b"x".to_vec(), 50, W).await?;
    assert!(s.get("n", "t", W).await?.is_some(), "{what}");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(s.get("n", "t", W).await?, None, "{what}: expired");
    assert!(
        s.compare_and_swap("n", "t", 0, b"y".to_vec(), 0, W)
            .await?
            .is_some()
    );
    // A set without TTL makes a key with one permanent again.
    s.set("n", "p", b"x".to_vec(), 50, W).await?;
    s.set("n", "p", b"y".to_vec(), 0, W).await?;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        s.get("n", "p", W).await?.is_some(),
        "{what}: ttl 0 is no expiry"
    );

    // A version is never handed out twice for a key, even across a delete.
    let stale = s.set("n", "d", b"a".to_vec(), 0, W).await?;
    s.delete("n", "d", W).await?;
    assert_eq!(s.get("n", "d", W).await?, None);
    let again = s.set("n", "d", b"b".to_vec(), 0, W).await?;
    assert_ne!(again, stale, "{what}");
    assert_eq!(
        s.compare_and_swap("n", "d", stale, b"c".to_vec(), 0, W)
            .await?,
        None
    );

    // Counters add, go negative, and restart after their window.
    assert_eq!(s.increment("n", "c", 2, 0, W).await?, 2, "{what}");
    assert_eq!(s.increment("n", "c", -5, 0, W).await?, -3, "{what}");
    assert_eq!(s.increment("n", "w", 1, 50, W).await?, 1);
    assert_eq!(s.increment("n", "w", 1, 50, W).await?, 2);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        s.increment("n", "w", 1, 50, W).await?,
        1,
        "{what}: window restarted"
    );

    // Token buckets: the burst, then a refusal saying when to retry, then the refill.
    for i in 0..3 {
        let t = s.take_tokens("n", "b", 10, 1000, 3, 1, W).await?;
        assert!(t.allowed && t.remaining == 2 - i, "{what}: take {i}: {t:?}");
    }
    let t = s.take_tokens("n", "b", 10, 1000, 3, 1, W).await?;
    assert!(!t.allowed && t.remaining == 0, "{what}: {t:?}");
    assert!((1..=100).contains(&t.retry_after_ms), "{what}: {t:?}");
    assert!((200..=300).contains(&t.reset_ms), "{what}: {t:?}");
    tokio::time::sleep(Duration::from_millis(t.retry_after_ms + 20)).await;
    assert!(
        s.take_tokens("n", "b", 10, 1000, 3, 1, W).await?.allowed,
        "{what}: refilled"
    );
    // A cost above the burst never passes; huge TTLs and rates do not break anything.
    let t = s.take_tokens("n", "big", 1, 1000, 3, 4, W).await?;
    assert!(!t.allowed, "{what}: {t:?}");
    s.set("n", "forever", b"v".to_vec(), u64::MAX, W).await?;
    assert!(s.get("n", "forever", W).await?.is_some(), "{what}");
    assert_eq!(s.increment("n", "cf", 1, u64::MAX, W).await?, 1);
    assert!(
        s.take_tokens("n", "fast", u64::MAX / 2, 1, u64::MAX / 2, 1, W)
            .await?
            .allowed
    );
    // A rate of 0 never refills: the burst, then "never" (u64::MAX) on both backends.
    for _ in 0..2 {
        assert!(s.take_tokens("n", "zero", 0, 1000, 2, 1, W).await?.allowed);
    }
    let t = s.take_tokens("n", "zero", 0, 1000, 2, 1, W).await?;
    assert!(!t.allowed && t.retry_after_ms == u64::MAX, "{what}: {t:?}");

    // Bounds apply on both backends, before anything is stored.
    let long = "k".repeat(1025);
    for res in [
        s.set("n", &long, b"v".to_vec(), 0, W).await.map(|_| ()),
        s.compare_and_swap("n", &long, 0, b"v".to_vec(), 0, W)
            .await
            .map(|_| ()),
        s.increment("n", &long, 1, 0, W).await.map(|_| ()),
        s.take_tokens("n", &long, 1, 1000, 1, 1, W)
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(res, Err(StateError::Refused(KvError::KeyTooLong { .. }))),
            "{what}: {res:?}"
        );
    }
    assert_eq!(s.get("n", &long, W).await?, None, "{what}");
    let big = vec![0u8; (64 << 10) + 1];
    assert!(matches!(
        s.set("n", "big", big, 0, W).await,
        Err(StateError::Refused(KvError::ValueTooLarge { .. }))
    ));
    Ok(())
}

/// Many tasks at once: buckets and compare-and-swap stay exact.
async fn kv_contract_under_concurrency(s: Arc<State>, what: &str) -> Result<()> {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut allowed = 0;
            for _ in 0..25 {
                // One token per hour: only the burst passes.
                if s.take_tokens("c", "bucket", 1, 3_600_000, 100, 1, W)
                    .await?
                    .allowed
                {
                    allowed += 1;
                }
            }
            // Read-modify-CAS loop: a counter kept as text.
            for _ in 0..10 {
                loop {
                    let (n, ver) = match s.get("c", "cas", W).await? {
                        Some((v, ver)) => (String::from_utf8(v)?.parse::<u64>()?, ver),
                        None => (0, 0),
                    };
                    let next = (n + 1).to_string().into_bytes();
                    if s.compare_and_swap("c", "cas", ver, next, 0, W)
                        .await?
                        .is_some()
                    {
                        break;
                    }
                }
            }
            anyhow::Ok(allowed)
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += t.await??;
    }
    assert_eq!(allowed, 100, "{what}: 400 takes from a burst of 100");
    let (v, _) = s.get("c", "cas", W).await?.context("counter")?;
    assert_eq!(String::from_utf8(v)?, "160", "{what}: no lost CAS update");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_backends_keep_the_kv_contract() -> Result<()> {
    let (embedded, _) = store(None).await?;
    kv_contract(&embedded, "embedded").await?;
    kv_contract_under_concurrency(Arc::new(embedded), "embedded").await?;

    let Some(redis) = RedisServer::start()? else {
        return Ok(());
    };
    let (remote, stats) = store(Some(&redis)).await?;
    kv_contract(&remote, "redis").await?;
    kv_contract_under_concurrency(Arc::new(remote), "redis").await?;
    assert_eq!(stats.fallbacks(), 0, "everything was answered by redis");
    // It really was Redis: the keys are there, under the prefix.
    assert_eq!(redis.command("EXISTS weir:n:kv:k")?, ":1");
    assert_eq!(redis.command("EXISTS weir:c:kv:cas")?, ":1");
    // A full bucket is no bucket: it expires instead of staying forever.
    let ttl: i64 = redis
        .command("PTTL weir:c:tb:bucket")?
        .trim_start_matches(':')
        .parse()?;
    assert!(ttl > 0, "bucket ttl {ttl}");
    Ok(())
}

/// A config with one route through the rate-limit filter, sharing state in `redis`.
fn gateway(up: &Upstream, state: &str, limit: &str) -> String {
    format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
filter_cache: \"{{dir}}/cache\"\n\
state: {state}\n\
clusters: [ {{ name: backend, endpoints: [ {{ address: \"{}\" }} ] }} ]\n\
filters:\n  - {{ name: limit, module: \"{}\", config: {limit}, grants: {{ kv: [ ratelimit ] }} }}\n\
routes: [ {{ name: api, match: {{ path_prefix: / }}, cluster: backend, filters: [ limit ] }} ]\n",
        up.addr,
        filter_wasm("rate-limit").display()
    )
}

fn redis_state(redis: &RedisServer, extra: &str) -> String {
    format!("{{ backend: redis, url: \"{}\"{extra} }}", redis.url())
}

/// Sends `n` requests, `conc` at a time, round robin over `urls`; the statuses.
async fn burst(urls: &[String], n: usize, conc: usize) -> Result<Vec<u16>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (urls, next) = (urls.to_vec(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(out);
                }
                out.push(get(&urls[i % urls.len()]).await?.status.as_u16());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// 1000 requests over `urls` against `rate: 100, per: 60s`: (admitted, seconds taken, how many
/// more the bucket refilled meanwhile). Every answer is a 200 or a 429.
async fn thousand_against_100_a_minute(urls: &[String]) -> Result<(usize, f64, usize)> {
    let t0 = Instant::now();
    let statuses = burst(urls, 1000, 16).await?;
    let secs = t0.elapsed().as_secs_f64();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted + limited, 1000, "only 200s and 429s: {statuses:?}");
    Ok((admitted, secs, (secs * 100.0 / 60.0).ceil() as usize))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_enforce_one_global_limit_through_redis() -> Result<()> {
    let Some(redis) = RedisServer::start()? else {
        return Ok(());
    };
    let up = Upstream::start("up").await;
    let limit = "{ rate: 100, per: 60s, burst: 100 }";
    let a = Weir::start(&gateway(&up, &redis_state(&redis, ""), limit))?;
    let b = Weir::start(&gateway(&up, &redis_state(&redis, ""), limit))?;
    let urls = [a.url("public", "/x"), b.url("public", "/x")];
    let (admitted, secs, refill) = thousand_against_100_a_minute(&urls).await?;
    println!(
        "1000 requests over two gateways in {secs:.2}s: {admitted} admitted (refill allowance {refill})"
    );
    assert!(
        (100..=100 + refill).contains(&admitted),
        "{admitted} admitted: one global limit of 100 (+{refill} refilled), not 100 per gateway"
    );
    assert_eq!(
        up.count(),
        admitted,
        "the limited ones never reached the upstream"
    );
    // Both gateways took part, and asked Redis every time.
    for g in [&a, &b] {
        let ok = g
            .sample("weir_state_ops_total{op=\"take_tokens\",outcome=\"ok\"}")
            .await?;
        assert!(ok >= 400.0, "each gateway served about half: {ok}");
        assert_eq!(g.sample("weir_state_up").await?, 1.0);
        assert_eq!(
            g.sample("weir_state_backend{backend=\"redis\"}").await?,
            1.0
        );
    }
    // The contrast that makes the test mean something: the embedded store limits per process.
    let c = Weir::start(&gateway(&up, "{ backend: embedded }", limit))?;
    let d = Weir::start(&gateway(&up, "{ backend: embedded }", limit))?;
    let local = burst(&[c.url("public", "/y"), d.url("public", "/y")], 1000, 16).await?;
    let local_admitted = local.iter().filter(|s| **s == 200).count();
    assert!(
        local_admitted >= 200,
        "embedded: {local_admitted}, 100 per gateway"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_leases_save_round_trips_and_never_admit_more() -> Result<()> {
    let Some(redis) = RedisServer::start()? else {
        return Ok(());
    };
    let up = Upstream::start("up").await;
    let limit = "{ rate: 100, per: 60s, burst: 100 }";
    // Each Redis call also takes 10 tokens ahead (0.1 x burst), usable for 5s.
    let state = redis_state(&redis, ", lease: { share: 0.1, max_age: 5s }");
    let a = Weir::start(&gateway(&up, &state, limit))?;
    let b = Weir::start(&gateway(&up, &state, limit))?;
    let urls = [a.url("public", "/x"), b.url("public", "/x")];
    let (admitted, _, refill) = thousand_against_100_a_minute(&urls).await?;
    // Never more than the limit; fewer by at most what two leases can hold unused.
    assert!(
        (100 - 2 * 10..=100 + refill).contains(&admitted),
        "{admitted} admitted against a global 100 (+{refill} refilled, -20 leased)"
    );
    assert_eq!(up.count(), admitted);
    let (mut trips, mut leased) = (0.0, 0.0);
    for g in [&a, &b] {
        trips += g
            .sample("weir_state_ops_total{op=\"take_tokens\",outcome=\"ok\"}")
            .await?;
        leased += g.sample("weir_state_leased_takes_total").await?;
        assert_eq!(
            g.sample("weir_state_fallbacks_total{op=\"take_tokens\"}")
                .await?,
            0.0
        );
        assert!(g.sample("weir_state_leases").await? >= 1.0);
    }
    println!(
        "1000 requests, {admitted} admitted: {trips} Redis round trips ({:.3} per request), {leased} answered from leases",
        trips / 1000.0
    );
    // Every take was answered from a lease or by Redis; Redis also saw the background top-ups.
    assert!(trips + leased >= 1000.0, "{trips} + {leased}");
    assert!(leased >= 800.0, "{leased} answered from leases");
    assert!(trips < 200.0, "{trips} round trips for 1000 requests");
    // A remembered refusal ends when the bucket can have refilled: one token per 600 ms.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let after: Vec<u16> = burst(&urls, 2, 1).await?;
    assert!(
        after.contains(&200),
        "a refilled token is used again: {after:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_traffic_falls_back_then_recovers() -> Result<()> {
    let Some(mut redis) = RedisServer::start()? else {
        return Ok(());
    };
    let up = Upstream::start("up").await;
    // A limit that never limits: this is about availability, not counting.
    let limit = "{ rate: 1000000, per: 1s, burst: 1000000 }";
    let state = redis_state(&redis, ", on_unavailable: local");
    let weir = Weir::start(&gateway(&up, &state, limit))?;
    let url = weir.url("public", "/k");

    // Traffic from 8 clients the whole time; every request must end, quickly.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut n, mut slowest) = (0u64, Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let got = tokio::time::timeout(Duration::from_secs(5), get(&url))
                    .await
                    .context("a request hung")??;
                anyhow::ensure!(got.status == 200, "{} {}", got.status, got.text());
                slowest = slowest.max(t.elapsed());
                n += 1;
            }
            anyhow::Ok((n, slowest))
        }));
    }
    let ok = "weir_state_ops_total{op=\"take_tokens\",outcome=\"ok\"}";
    weir.eventually("traffic through redis", async || {
        weir.sample(ok).await.unwrap_or(0.0) >= 50.0
    })
    .await?;
    redis.kill();
    weir.eventually("the fallback used", async || {
        weir.sample("weir_state_fallbacks_total{op=\"take_tokens\"}")
            .await
            .unwrap_or(0.0)
            >= 50.0
    })
    .await?;
    assert_eq!(weir.sample("weir_state_up").await?, 0.0);
    let (_, state_json) = weir.admin_get("/state").await?;
    let v: serde_json::Value = serde_json::from_str(&state_json)?;
    assert_eq!(v["backend"], "redis");
    assert_eq!(v["healthy"], false, "{v}");
    assert!(
        weir.stderr_text().contains("is unavailable"),
        "{}",
        weir.stderr_text()
    );

    redis.restart()?;
    let before = weir.sample(ok).await?;
    weir.eventually("redis used again", async || {
        weir.sample(ok).await.unwrap_or(0.0) >= before + 50.0
    })
    .await?;
    assert_eq!(weir.sample("weir_state_up").await?, 1.0);
    let keys: u64 = redis.command("DBSIZE")?.trim_start_matches(':').parse()?;
    assert!(keys >= 1, "the restarted redis holds the bucket again");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (n, slowest) = c.await??;
        total += n;
        assert!(
            slowest < Duration::from_secs(1),
            "a request took {slowest:?}"
        );
    }
    println!("{total} requests through a Redis kill and restart, none failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_unavailable_fail_lets_the_filter_decide_and_a_paused_redis_never_hangs() -> Result<()> {
    let Some(redis) = RedisServer::start()? else {
        return Ok(());
    };
    let up = Upstream::start("up").await;
    let state = redis_state(&redis, ", on_unavailable: fail, pool: { timeout: 50ms }");
    let deny = Weir::start(&gateway(
        &up,
        &state,
        "{ rate: 1000, per: 1s, burst: 1000, on_backend_error: deny }",
    ))?;
    let allow = Weir::start(&gateway(
        &up,
        &state,
        "{ rate: 1000, per: 1s, burst: 1000 }",
    ))?;
    assert_eq!(get(&deny.url("public", "/")).await?.status, 200);

    // A server that accepts and never answers: every call ends at the pool timeout.
    redis.pause(true);
    for _ in 0..5 {
        let t = Instant::now();
        let got = get(&deny.url("public", "/")).await?;
        assert_eq!(got.status, 503, "{}", got.text());
        assert_eq!(got.text(), r#"{"error":"rate limiter unavailable"}"#);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        let got = get(&allow.url("public", "/")).await?;
        assert_eq!(got.status, 200, "fail open: {}", got.text());
    }
    assert_eq!(
        deny.sample("weir_state_fallbacks_total{op=\"take_tokens\"}")
            .await?,
        0.0
    );
    assert!(
        deny.sample("weir_state_ops_total{op=\"take_tokens\",outcome=\"unavailable\"}")
            .await?
            >= 5.0
    );
    redis.pause(false);
    deny.eventually("redis answers again", async || {
        get(&deny.url("public", "/"))
            .await
            .is_ok_and(|g| g.status == 200)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backend_switches_live_and_never_shows_its_password() -> Result<()> {
    let Some(redis) = RedisServer::start()? else {
        return Ok(());
    };
    ensure!(redis.command("CONFIG SET requirepass hunter2-s3cret")? == "+OK");
    let up = Upstream::start("up").await;
    let limit = "{ rate: 1, per: 60s, burst: 2 }";
    let weir = Weir::start(&gateway(&up, "{ backend: embedded }", limit))?;
    let url = weir.url("public", "/");
    let (_, s) = weir.admin_get("/state").await?;
    assert!(s.contains("\"embedded\""), "{s}");
    assert_eq!(
        weir.sample("weir_state_backend{backend=\"embedded\"}")
            .await?,
        1.0
    );
    assert_eq!(get(&url).await?.status, 200);

    // To Redis, with a password, by editing the file and reloading.
    let url_with_password = format!("redis://:hunter2-s3cret@127.0.0.1:{}/0", redis.port);
    let text = std::fs::read_to_string(&weir.config)?.replace(
        "state: { backend: embedded }",
        &format!("state: {{ backend: redis, url: \"{url_with_password}\" }}"),
    );
    std::fs::write(&weir.config, &text)?;
    let (status, body) = weir.admin("POST", "/reload", "").await?;
    assert_eq!(status, 200, "{body}");
    weir.eventually("connected to redis", async || {
        weir.sample("weir_state_up").await.unwrap_or(0.0) == 1.0
    })
    .await?;
    // A fresh bucket in Redis: two pass, the third is limited.
    assert_eq!(get(&url).await?.status, 200);
    assert_eq!(get(&url).await?.status, 200);
    assert_eq!(get(&url).await?.status, 429);
    let (_, s) = weir.admin_get("/state").await?;
    let v: serde_json::Value = serde_json::from_str(&s)?;
    assert_eq!(v["backend"], "redis");
    assert_eq!(v["healthy"], true);
    assert_eq!(v["address"], format!("127.0.0.1:{}/0", redis.port));
    for path in ["/state", "/config", "/config?format=yaml", "/metrics"] {
        let (_, body) = weir.admin("GET", path, "").await?;
        assert!(
            !body.contains("s3cret"),
            "{path} shows the password: {body}"
        );
    }

    // A bad state config is refused with its field named; the running backend stays.
    std::fs::write(
        &weir.config,
        text.replace(
            &format!("url: \"{url_with_password}\""),
            "url: \"http://x\"",
        ),
    )?;
    let (status, body) = weir.admin("POST", "/reload", "").await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("state.url"), "{body}");
    assert!(!body.contains("s3cret"), "{body}");
    assert_eq!(get(&url).await?.status, 429, "still the Redis bucket");
    assert_eq!(weir.sample("weir_state_up").await?, 1.0);

    // Back to the embedded store: its own, fresh bucket.
    std::fs::write(
        &weir.config,
        text.replace(
            &format!("state: {{ backend: redis, url: \"{url_with_password}\" }}"),
            "state: { backend: embedded }",
        ),
    )?;
    let (status, body) = weir.admin("POST", "/reload", "").await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        weir.sample("weir_state_backend{backend=\"embedded\"}")
            .await?,
        1.0
    );
    Ok(())
}

/// Rewrites the `state:` line of a `gateway` config and reloads: the admin API's answer.
async fn reload_with_state(weir: &Weir, state: &str) -> Result<(u16, String)> {
    let text = std::fs::read_to_string(&weir.config)?;
    let (head, _) = text.split_once("state: ").context("state line")?;
    let (_, tail) = text.split_once("\nclusters:").context("clusters line")?;
    std::fs::write(
        &weir.config,
        format!("{head}state: {state}\nclusters:{tail}"),
    )?;
    let (status, body) = weir.admin("POST", "/reload", "").await?;
    Ok((status.into(), body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_to_redis_verifies_the_server_and_presents_a_client_certificate() -> Result<()> {
    let Some((redis, files)) = RedisServer::start_tls(true)? else {
        return Ok(());
    };
    let up = Upstream::start("up").await;
    let limit = "{ rate: 1, per: 60s, burst: 2 }";
    let tls = |ca: &std::path::Path, client: Option<(&std::path::Path, &std::path::Path)>| {
        let client = client.map_or(String::new(), |(c, k)| {
            format!(", cert: \"{}\", key: \"{}\"", c.display(), k.display())
        });
        format!(
            "{{ backend: redis, url: \"{}\", tls: {{ ca: \"{}\"{client} }} }}",
            redis.tls_url(),
            ca.display()
        )
    };
    let mine = Some((files.client_cert.as_path(), files.client_key.as_path()));
    let good = tls(&files.ca, mine);

    // Verified both ways: the bucket lives in Redis, reached over TLS only.
    let weir = Weir::start(&gateway(&up, &good, limit))?;
    let url = weir.url("public", "/");
    weir.eventually("connected over TLS", async || {
        weir.sample("weir_state_up").await.unwrap_or(0.0) == 1.0
    })
    .await?;
    let got: Vec<u16> = [
        get(&url).await?.status,
        get(&url).await?.status,
        get(&url).await?.status,
    ]
    .iter()
    .map(|s| s.as_u16())
    .collect();
    assert_eq!(got, [200, 200, 429]);
    assert_eq!(
        redis.command("DBSIZE")?,
        ":1",
        "the bucket and nothing else"
    );
    let (_, s) = weir.admin_get("/state").await?;
    let v: serde_json::Value = serde_json::from_str(&s)?;
    assert_eq!(
        (v["tls"].clone(), v["healthy"].clone()),
        (true.into(), true.into()),
        "{v}"
    );

    // Every way the handshake can be wrong: never connected, said so, requests still answered.
    let other = test_ca(&weir.dir.0, "other");
    let theirs = Some((other.client_cert.as_path(), other.client_key.as_path()));
    for (what, state, why) in [
        (
            "a server certificate we do not trust",
            tls(&other.ca, mine),
            "UnknownIssuer",
        ),
        (
            "no client certificate",
            tls(&files.ca, None),
            "CertificateRequired",
        ),
        (
            "a client certificate the server does not trust",
            tls(&files.ca, theirs),
            "UnknownCA",
        ),
    ] {
        let (status, body) = reload_with_state(&weir, &state).await?;
        assert_eq!(status, 200, "{what}: {body}");
        let failed = "weir_state_connects_total{outcome=\"failed\"}";
        let before = weir.sample(failed).await?;
        weir.eventually(what, async || {
            weir.sample(failed).await.unwrap_or(0.0) > before
        })
        .await?;
        assert_eq!(weir.sample("weir_state_up").await?, 0.0, "{what}");
        let fallbacks = "weir_state_fallbacks_total{op=\"take_tokens\"}";
        let before = weir.sample(fallbacks).await?;
        let t = Instant::now();
        let status = get(&url).await?.status.as_u16();
        assert!(matches!(status, 200 | 429), "{what}: {status}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{what}: {:?}",
            t.elapsed()
        );
        assert_eq!(weir.sample(fallbacks).await?, before + 1.0, "{what}");
        // Logged once, with the handshake's reason.
        let log = weir.stderr_text();
        assert!(
            log.lines()
                .any(|l| l.contains("is unavailable (") && l.contains(why)),
            "{what}: {log}"
        );
    }
    assert_eq!(
        redis.command("DBSIZE")?,
        ":1",
        "nothing written by an unverified peer"
    );
    // Files that are not what they should be: the reload is refused, naming the field and the
    // file, never what is in it.
    let secret = weir.dir.write("secret.txt", "hunter2-s3cret\n");
    let missing = weir.dir.path("absent.key");
    for (state, field) in [
        (tls(&secret, mine), "state.tls.ca"),
        (
            tls(&files.ca, Some((&secret, &files.client_key))),
            "state.tls.cert",
        ),
        (
            tls(&files.ca, Some((&files.client_cert, &secret))),
            "state.tls.key",
        ),
        (
            tls(&files.ca, Some((&files.client_cert, &missing))),
            "state.tls.key",
        ),
    ] {
        let (status, body) = reload_with_state(&weir, &state).await?;
        assert_eq!(status, 400, "{state}: {body}");
        assert!(body.contains(field), "{field} in {body}");
        assert!(!body.contains("hunter2"), "{body}");
    }
    let (status, body) = reload_with_state(&weir, &good).await?;
    assert_eq!(status, 200, "{body}");
    weir.eventually("back on the verified server", async || {
        weir.sample("weir_state_up").await.unwrap_or(0.0) == 1.0
    })
    .await?;
    assert_eq!(get(&url).await?.status, 429, "the shared bucket again");
    Ok(())
}
