//! The Redis state backend: every WIT `kv` operation as one command or one server-side Lua
//! script, so compare-and-swap, counters and token buckets are atomic across every gateway
//! instance sharing the server, and token buckets run on the server's clock (instances whose
//! clocks disagree still share one bucket correctly).
//!
//! Connections: `pool.size` multiplexed connections (each pipelines the commands of every
//! request that picks it), opened in the background and reopened with backoff when one fails.
//! A request never waits for a reconnect: with no connection up, an operation is unavailable at
//! once. The one exception is a backend just started (at start-up or a reload that switched to
//! it): until its first connection attempt has ended, an operation waits for it (within its
//! time), so the first requests are not counted locally only because they came first. An operation waits at most `pool.timeout` (or the request's remaining time); past it,
//! or on a broken connection, it is unavailable and the caller applies `on_unavailable`.
//!
//! Keys: `<prefix><namespace>:kv:<key>` (a hash of value `v` and version `ver`),
//! `<prefix><namespace>:n:<key>` (a counter), `<prefix><namespace>:tb:<key>` (a token bucket:
//! tokens `t` and last refill `l`, in ms), and `<prefix>version`, the one version sequence (so a
//! version is never repeated for a key, even after it expired or was deleted). Namespace names
//! cannot hold `:` (config validation), so no two of them share a key.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError, RetryMethod, Script};
use weir_config::{OnUnavailable, StateConfig};
use weir_observe::{StateOp, StateOutcome, StateStats};

use crate::kv::Take;

/// Longest wait for one connection attempt (in the background: requests never wait for it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Backoff between failed connection attempts: from the first to the last value, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// TTLs past this (about 35,000 years) are sent as this: Redis refuses expiry times that do not
/// fit its clock, and the embedded store treats them as "never" anyway.
const MAX_TTL_MS: u64 = 1 << 50;

/// Why an operation did not succeed.
#[derive(Debug)]
pub(crate) enum Fail {
    /// Not reachable in time: down, slow, restarting, or no connection up yet.
    Unavailable(String),
    /// It answered with an error (not an outage; no fallback).
    Error(String),
}

enum Slot {
    /// Not started, or stopped.
    Idle,
    /// A connection attempt is under way (or waiting out its backoff).
    Connecting,
    Up(MultiplexedConnection),
}

struct Scripts {
    set: Script,
    cas: Script,
    increment: Script,
    take: Script,
}

/// A Redis server as the state backend. Cheap to share (`Arc`).
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: StateConfig,
    /// `host:port/db`, for logs and the admin API (never the password).
    addr: String,
    slots: Box<[Mutex<Slot>]>,
    next: AtomicUsize,
    up: AtomicUsize,
    /// Whether the last transition logged was "unavailable" (so each outage is logged once).
    logged_down: AtomicBool,
    stopped: AtomicBool,
    /// Becomes true when the first connection attempt of any slot has ended, either way.
    settled: tokio::sync::watch::Sender<bool>,
    stats: Arc<StateStats>,
    scripts: Scripts,
}

impl Redis {
    /// A backend for this config. Nothing connects until [`start`](Self::start); a URL that does
    /// not parse is an error (which never quotes the URL: it may hold a password).
    pub fn new(config: &StateConfig, stats: Arc<StateStats>) -> anyhow::Result<Redis> {
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("backend: redis needs a url"))?;
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("not a usable Redis URL ({:?})", e.kind()))?;
        let info = client.get_connection_info();
        let addr = format!("{}/{}", info.addr(), info.redis_settings().db());
        Ok(Redis {
            inner: Arc::new(Inner {
                client,
                config: config.clone(),
                addr,
                slots: (0..config.pool.size.max(1))
                    .map(|_| Mutex::new(Slot::Idle))
                    .collect(),
                next: AtomicUsize::new(0),
                up: AtomicUsize::new(0),
                logged_down: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                settled: tokio::sync::watch::Sender::new(false),
                stats,
                scripts: Scripts {
                    set: Script::new(SET),
                    cas: Script::new(CAS),
                    increment: Script::new(INCREMENT),
                    take: Script::new(TAKE),
                },
            }),
        })
    }

    /// The config it was made from.
    pub fn config(&self) -> &StateConfig {
        &self.inner.config
    }

    /// `host:port/db`.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.inner.up.load(Relaxed)
    }

    pub(crate) fn on_unavailable(&self) -> OnUnavailable {
        self.inner.config.on_unavailable
    }

    /// Opens every connection in the background. Needs a Tokio runtime.
    pub(crate) fn start(&self) {
        for i in 0..self.inner.slots.len() {
            self.inner.reconnect(i);
        }
    }

    /// Closes every connection; connection attempts under way give up.
    pub(crate) fn stop(&self) {
        self.inner.stopped.store(true, Relaxed);
        for slot in self.inner.slots.iter() {
            let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(*s, Slot::Up(_)) {
                self.inner.up.fetch_sub(1, Relaxed);
                self.inner.stats.disconnect();
            }
            *s = Slot::Idle;
        }
    }

    fn key(&self, ns: &str, kind: &str, key: &str) -> String {
        let p = &self.inner.config.key_prefix;
        let mut k = String::with_capacity(p.len() + ns.len() + kind.len() + key.len() + 2);
        for part in [p, ns, ":", kind, ":", key] {
            k.push_str(part);
        }
        k
    }

    fn version_key(&self) -> String {
        format!("{}version", self.inner.config.key_prefix)
    }

    pub(crate) async fn get(
        &self,
        ns: &str,
        key: &str,
        wait: Duration,
    ) -> Result<Option<(Vec<u8>, u64)>, Fail> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key(ns, "kv", key)).arg("v").arg("ver");
        let (v, ver): (Option<Vec<u8>>, Option<u64>) =
            self.run(StateOp::Get, wait, Call::Cmd(cmd)).await?;
        Ok(v.zip(ver))
    }

    pub(crate) async fn set(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<u64, Fail> {
        let mut s = self.inner.scripts.set.prepare_invoke();
        s.key(self.key(ns, "kv", key))
            .key(self.version_key())
            .arg(value)
            .arg(ttl_ms.min(MAX_TTL_MS));
        self.run(StateOp::Set, wait, Call::Script(s)).await
    }

    pub(crate) async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        value: &[u8],
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<Option<u64>, Fail> {
        let mut s = self.inner.scripts.cas.prepare_invoke();
        s.key(self.key(ns, "kv", key))
            .key(self.version_key())
            .arg(expected)
            .arg(value)
            .arg(ttl_ms.min(MAX_TTL_MS));
        self.run(StateOp::CompareAndSwap, wait, Call::Script(s))
            .await
    }

    pub(crate) async fn delete(&self, ns: &str, key: &str, wait: Duration) -> Result<(), Fail> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(ns, "kv", key));
        let _: i64 = self.run(StateOp::Delete, wait, Call::Cmd(cmd)).await?;
        Ok(())
    }

    pub(crate) async fn increment(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<i64, Fail> {
        let mut s = self.inner.scripts.increment.prepare_invoke();
        s.key(self.key(ns, "n", key))
            .arg(delta)
            .arg(ttl_ms.min(MAX_TTL_MS));
        self.run(StateOp::Increment, wait, Call::Script(s)).await
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn take_tokens(
        &self,
        ns: &str,
        key: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: u64,
        wait: Duration,
    ) -> Result<Take, Fail> {
        let mut s = self.inner.scripts.take.prepare_invoke();
        s.key(self.key(ns, "tb", key))
            .arg(rate)
            .arg(period_ms.max(1))
            .arg(burst.max(1))
            .arg(cost);
        let (allowed, remaining, retry_after_ms, reset_ms): (i64, String, String, String) =
            self.run(StateOp::TakeTokens, wait, Call::Script(s)).await?;
        // `as` saturates, and `inf` parses: the embedded store's answers for the same numbers.
        let ms = |s: String| s.parse::<f64>().map_or(u64::MAX, |f| f.max(0.0) as u64);
        Ok(Take {
            allowed: allowed == 1,
            remaining: ms(remaining),
            retry_after_ms: ms(retry_after_ms),
            reset_ms: ms(reset_ms),
        })
    }

    /// Runs one command or script on a connection that is up, within `wait`.
    async fn run<T: FromRedisValue>(
        &self,
        op: StateOp,
        wait: Duration,
        call: Call<'_>,
    ) -> Result<T, Fail> {
        let inner = &self.inner;
        let t0 = Instant::now();
        let mut picked = inner.pick();
        if picked.is_none() && !*inner.settled.borrow() {
            let mut settled = inner.settled.subscribe();
            let _ = tokio::time::timeout(wait, settled.wait_for(|s| *s)).await;
            picked = inner.pick();
        }
        let wait = wait.saturating_sub(t0.elapsed());
        let Some((slot, mut con)) = picked else {
            inner.stats.op(op, StateOutcome::Unavailable, t0.elapsed());
            return Err(Fail::Unavailable(
                "the shared state backend is unavailable".into(),
            ));
        };
        let res = tokio::time::timeout(wait, async {
            match call {
                Call::Cmd(c) => c.query_async(&mut con).await,
                Call::Script(s) => s.invoke_async(&mut con).await,
            }
        })
        .await;
        let took = t0.elapsed();
        match res {
            Ok(Ok(v)) => {
                inner.stats.op(op, StateOutcome::Ok, took);
                Ok(v)
            }
            Ok(Err(e)) if !is_outage(&e) => {
                inner.stats.op(op, StateOutcome::Error, took);
                tracing::warn!(op = op.as_str(), "state: redis at {}: {e}", inner.addr);
                Err(Fail::Error(format!("the shared state backend failed: {e}")))
            }
            Ok(Err(e)) => {
                inner.stats.op(op, StateOutcome::Unavailable, took);
                inner.lost(slot, &e.to_string());
                Err(Fail::Unavailable(
                    "the shared state backend is unavailable".into(),
                ))
            }
            Err(_) => {
                inner.stats.op(op, StateOutcome::Unavailable, took);
                inner.lost(slot, &format!("no answer in {wait:?}"));
                Err(Fail::Unavailable(format!(
                    "the shared state backend did not answer in {wait:?}"
                )))
            }
        }
    }
}

enum Call<'a> {
    Cmd(redis::Cmd),
    Script(redis::ScriptInvocation<'a>),
}

/// Whether an error means the server cannot be used now (as opposed to an answer that is an
/// error, like a type mismatch).
fn is_outage(e: &RedisError) -> bool {
    match e.kind() {
        // LOADING, MASTERDOWN, TRYAGAIN and the like: the server is there but cannot serve.
        redis::ErrorKind::Server(_) => !matches!(e.retry_method(), RetryMethod::NoRetry),
        // An answer that does not convert, or a request refused before it was sent: the
        // connection is fine.
        redis::ErrorKind::Parse
        | redis::ErrorKind::UnexpectedReturnType
        | redis::ErrorKind::Client
        | redis::ErrorKind::InvalidClientConfig
        | redis::ErrorKind::Extension => false,
        _ => true,
    }
}

impl Inner {
    /// A connection that is up, round robin.
    fn pick(&self) -> Option<(usize, MultiplexedConnection)> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Relaxed);
        (0..n).find_map(|k| {
            let i = (start + k) % n;
            match &*self.slots[i].lock().unwrap_or_else(|e| e.into_inner()) {
                Slot::Up(c) => Some((i, c.clone())),
                _ => None,
            }
        })
    }

    /// The connection in `slot` failed: drops it and reconnects in the background.
    fn lost(self: &Arc<Self>, slot: usize, why: &str) {
        {
            let mut s = self.slots[slot].lock().unwrap_or_else(|e| e.into_inner());
            if !matches!(*s, Slot::Up(_)) {
                return; // another request already noticed
            }
            *s = Slot::Idle;
        }
        self.stats.disconnect();
        if self.up.fetch_sub(1, Relaxed) == 1 {
            self.note_down(why);
        }
        self.reconnect(slot);
    }

    /// Starts the connection loop of an idle slot (at most one per slot).
    fn reconnect(self: &Arc<Self>, slot: usize) {
        if self.stopped.load(Relaxed) {
            return;
        }
        {
            let mut s = self.slots[slot].lock().unwrap_or_else(|e| e.into_inner());
            if !matches!(*s, Slot::Idle) {
                return;
            }
            *s = Slot::Connecting;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(connect_loop(weak, slot));
    }

    fn note_down(&self, why: &str) {
        if !self.logged_down.swap(true, Relaxed) {
            let then = match self.config.on_unavailable {
                OnUnavailable::Local => "filters use this process's own store until it is back",
                OnUnavailable::Fail => "filters' state calls fail until it is back",
            };
            tracing::warn!(
                "state: redis at {} is unavailable ({why}): {then}",
                self.addr
            );
        }
    }

    fn note_up(&self) {
        if self.up.fetch_add(1, Relaxed) == 0 {
            if self.logged_down.swap(false, Relaxed) {
                tracing::info!("state: redis at {} is back", self.addr);
            } else {
                tracing::info!("state: connected to redis at {}", self.addr);
            }
        }
    }
}

/// Connects `slot` until it is up, or the backend is stopped or dropped.
async fn connect_loop(inner: Weak<Inner>, slot: usize) {
    let mut backoff = BACKOFF.0;
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.stopped.load(Relaxed) {
            return;
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            me.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        // Whatever happens next, the first attempt has ended: requests stop waiting for it.
        // (On success the slot is filled before waiters are woken, below.)
        let settle = |me: &Inner| {
            me.settled.send_if_modified(|s| !std::mem::replace(s, true));
        };
        match attempt {
            Ok(Ok(con)) => {
                let mut s = me.slots[slot].lock().unwrap_or_else(|e| e.into_inner());
                if me.stopped.load(Relaxed) {
                    return;
                }
                *s = Slot::Up(con);
                drop(s);
                me.stats.connect(true);
                me.note_up();
                settle(&me);
                return;
            }
            Ok(Err(e)) => {
                me.stats.connect(false);
                if me.up.load(Relaxed) == 0 {
                    me.note_down(&e.to_string());
                }
                settle(&me);
            }
            Err(_) => {
                me.stats.connect(false);
                if me.up.load(Relaxed) == 0 {
                    me.note_down("connect timed out");
                }
                settle(&me);
            }
        }
        drop(me);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// KEYS: entry, version sequence. ARGV: value, ttl ms (0: none). Returns the new version.
const SET: &str = r"
local ver = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'ver', string.format('%d', ver))
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('PERSIST', KEYS[1])
end
return ver
";

/// KEYS: entry, version sequence. ARGV: expected version (0: absent), value, ttl ms. Returns the
/// new version, or nil when the current one is not the expected one.
const CAS: &str = r"
local cur = redis.call('HGET', KEYS[1], 'ver')
if not cur then cur = '0' end
if cur ~= ARGV[1] then return false end
local ver = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'ver', string.format('%d', ver))
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('PERSIST', KEYS[1])
end
return ver
";

/// KEYS: counter. ARGV: delta, ttl ms. A counter with a TTL expires that long after it was
/// created (a fixed window), like the embedded one.
const INCREMENT: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n
";

/// KEYS: bucket. ARGV: rate, period ms, burst, cost. On the server's clock. Returns {allowed
/// (1/0), whole tokens left, retry-after ms, reset ms}. A bucket that is full again equals no
/// bucket, so it expires then.
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local per_ms = tonumber(ARGV[1]) / tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 't', 'l')
local tokens = tonumber(b[1])
local last = tonumber(b[2])
if tokens == nil or last == nil then
  tokens = burst
  last = now
end
local elapsed = now - last
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * per_ms)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
local function ms_for(n)
  if n <= 0 then return 0 end
  return math.ceil(n / per_ms)
end
local reset = ms_for(burst - tokens)
local retry = 0
if allowed == 0 then retry = ms_for(cost - tokens) end
if reset > 0 then
  redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'l', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.min(reset, 1125899906842624)))
else
  redis.call('DEL', KEYS[1])
end
-- As text: Lua numbers past 2^63 do not convert to Redis integers (a huge rate or burst), and
-- a rate of 0 makes the waits infinite ('inf'); the host reads them as the embedded store does.
local function num(n) return string.format('%.0f', n) end
return {allowed, num(math.floor(tokens)), num(retry), num(reset)}
";
