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
//! Token leases (`state.lease.share` > 0): a take that goes to Redis also takes up to
//! `share × burst` more tokens for this process, and later takes on the same bucket are served
//! from them until they run out or `max_age` passes (below half a lease, one call tops it up in
//! the background, so a busy bucket's lease does not run dry under concurrent calls); a refusal is remembered the same way until
//! the bucket can have refilled (at most `max_age`). The script grants leases only from tokens the
//! bucket has, so the global limit holds; what a lease leaves unused is lost (fewer admitted,
//! never more).
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
use redis::{
    AsyncConnectionConfig, FromRedisValue, IntoConnectionInfo, RedisError, RetryMethod, Script,
};
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
pub(crate) enum RemoteError {
    /// Not reachable in time: down, slow, restarting, or no connection up yet.
    Unavailable(String),
    /// It answered with an error (not an outage; no fallback).
    Failed(String),
}

enum Slot {
    /// Not started, or stopped.
    Idle,
    /// A connection attempt is under way (or waiting out its backoff).
    Connecting,
    Up(MultiplexedConnection),
}

struct Scripts {
    write: Script,
    increment: Script,
    take: Script,
}

/// The PEM contents of `state.tls`, read by the caller (it resolves the config's paths).
#[derive(Clone, Default, PartialEq)]
pub struct RedisTls {
    /// CA certificates to trust instead of the system's roots.
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

/// A Redis server as the state backend. Cheap to share (`Arc`).
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: StateConfig,
    tls: Option<RedisTls>,
    /// Token leases by bucket key (`state.lease`), at most [`MAX_LEASES`].
    leases: dashmap::DashMap<String, Lease>,
    /// When a full lease map may be swept next.
    next_sweep: Mutex<Instant>,
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
    /// A backend for this config (`tls`: for a `rediss://` URL, what `state.tls` names). Nothing
    /// connects until `start`; a URL that does not parse is an error (which never
    /// quotes the URL: it may hold a password).
    pub fn new(
        config: &StateConfig,
        tls: Option<RedisTls>,
        stats: Arc<StateStats>,
    ) -> anyhow::Result<Redis> {
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("backend: redis needs a url"))?;
        let bad_url = |e: RedisError| anyhow::anyhow!("not a usable Redis URL ({:?})", e.kind());
        let client = if url.starts_with("rediss://") {
            let info = url.into_connection_info().map_err(bad_url)?;
            let t = tls.clone().unwrap_or_default();
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: t
                        .client
                        .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }),
                    root_cert: t.ca,
                },
            )
            // These messages name what did not parse, never the contents.
            .map_err(|e| anyhow::anyhow!("TLS to Redis: {e}"))?
        } else {
            anyhow::ensure!(tls.is_none(), "TLS settings need a rediss:// url");
            redis::Client::open(url).map_err(bad_url)?
        };
        let info = client.get_connection_info();
        let addr = format!("{}/{}", info.addr(), info.redis_settings().db());
        Ok(Redis {
            inner: Arc::new(Inner {
                client,
                config: config.clone(),
                tls,
                leases: dashmap::DashMap::new(),
                next_sweep: Mutex::new(Instant::now()),
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
                    write: Script::new(WRITE),
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

    /// The TLS material it was made with (for a reload to tell whether anything changed).
    pub fn tls(&self) -> Option<&RedisTls> {
        self.inner.tls.as_ref()
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.inner
            .config
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("rediss://"))
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
        // Leases belong to this backend: their tokens are not carried to the next one.
        let held = self.inner.leases.len();
        self.inner.leases.clear();
        self.inner.stats.leases_held(-(held as i64));
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
    ) -> Result<Option<(Vec<u8>, u64)>, RemoteError> {
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
    ) -> Result<u64, RemoteError> {
        self.write(StateOp::Set, ns, key, None, value, ttl_ms, wait)
            .await?
            .ok_or_else(|| RemoteError::Failed("an unconditional set was refused".into()))
    }

    pub(crate) async fn compare_and_swap(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        value: &[u8],
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<Option<u64>, RemoteError> {
        self.write(
            StateOp::CompareAndSwap,
            ns,
            key,
            Some(expected),
            value,
            ttl_ms,
            wait,
        )
        .await
    }

    /// The write script: if the version is `expected` (`None`: whatever it is).
    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        op: StateOp,
        ns: &str,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: u64,
        wait: Duration,
    ) -> Result<Option<u64>, RemoteError> {
        let mut s = self.inner.scripts.write.prepare_invoke();
        s.key(self.key(ns, "kv", key)).key(self.version_key());
        match expected {
            Some(v) => s.arg(v),
            None => s.arg("*"),
        };
        s.arg(value).arg(ttl_ms.min(MAX_TTL_MS));
        self.run(op, wait, Call::Script(s)).await
    }

    pub(crate) async fn delete(
        &self,
        ns: &str,
        key: &str,
        wait: Duration,
    ) -> Result<(), RemoteError> {
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
    ) -> Result<i64, RemoteError> {
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
    ) -> Result<Take, RemoteError> {
        let inner = &self.inner;
        let k = self.key(ns, "tb", key);
        let bucket = (rate, period_ms, burst);
        let lease = inner.lease_size(burst);
        let extra = if lease > 0 {
            match inner.ahead(&k, bucket, cost, lease, wait) {
                Ahead::Answer(t, 0) => return Ok(t),
                Ahead::Answer(t, refill) => {
                    // Running low: top the lease up in the background, before it runs dry and
                    // every concurrent call has to ask Redis itself.
                    let me = Redis {
                        inner: inner.clone(),
                    };
                    let wait = inner.config.pool.timeout;
                    tokio::spawn(async move {
                        if let Ok((t, granted)) = me.take_remote(&k, bucket, 0, refill, wait).await
                        {
                            me.inner.keep_lease(&k, 0, refill, granted, &t);
                        }
                    });
                    return Ok(t);
                }
                Ahead::Ask(n) => n,
            }
        } else {
            0
        };
        let (t, granted) = self.take_remote(&k, bucket, cost, extra, wait).await?;
        if lease > 0 {
            inner.keep_lease(&k, cost, extra, granted, &t);
        }
        Ok(t)
    }

    /// One token-bucket script call: takes `cost` (and up to `extra` more ahead) from bucket
    /// `k`. Returns the answer (ahead tokens counted in `remaining`) and the tokens granted ahead.
    async fn take_remote(
        &self,
        k: &str,
        (rate, period_ms, burst): (u64, u64, u64),
        cost: u64,
        extra: u64,
        wait: Duration,
    ) -> Result<(Take, u64), RemoteError> {
        let mut s = self.inner.scripts.take.prepare_invoke();
        s.key(k)
            .arg(rate)
            .arg(period_ms.max(1))
            .arg(burst.max(1))
            .arg(cost)
            .arg(extra);
        type Answer = (i64, String, String, String, String);
        let (allowed, remaining, retry_after_ms, reset_ms, granted): Answer =
            self.run(StateOp::TakeTokens, wait, Call::Script(s)).await?;
        // `as` saturates, and `inf` parses: the embedded store's answers for the same numbers.
        let num = |s: String| s.parse::<f64>().map_or(u64::MAX, |f| f.max(0.0) as u64);
        let granted = num(granted);
        Ok((
            Take {
                allowed: allowed == 1,
                remaining: num(remaining).saturating_add(granted),
                retry_after_ms: num(retry_after_ms),
                reset_ms: num(reset_ms),
            },
            granted,
        ))
    }

    /// Runs one command or script on a connection that is up, within `wait`.
    async fn run<T: FromRedisValue>(
        &self,
        op: StateOp,
        wait: Duration,
        call: Call<'_>,
    ) -> Result<T, RemoteError> {
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
            return Err(RemoteError::Unavailable(
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
                Err(RemoteError::Failed(format!(
                    "the shared state backend failed: {e}"
                )))
            }
            Ok(Err(e)) => {
                inner.stats.op(op, StateOutcome::Unavailable, took);
                inner.lost(slot, &e.to_string());
                Err(RemoteError::Unavailable(
                    "the shared state backend is unavailable".into(),
                ))
            }
            Err(_) => {
                inner.stats.op(op, StateOutcome::Unavailable, took);
                inner.lost(slot, &format!("no answer in {wait:?}"));
                Err(RemoteError::Unavailable(format!(
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

/// What this process knows ahead about one shared bucket (`state.lease`): tokens it took ahead,
/// and a refusal that stands until the bucket can have refilled.
struct Lease {
    /// (rate, period ms, burst): a call with other parameters starts it over.
    bucket: (u64, u64, u64),
    tokens: u64,
    /// Tokens are usable until then.
    until: Instant,
    /// Redis refused this cost: any take of at least it is refused here until then.
    refused: Option<(u64, Instant)>,
    /// A call asking for more tokens is under way (until then at most): others do not ask too,
    /// so one process never holds more than one lease's worth.
    fetching: Option<Instant>,
    /// The bucket's state at the last answer: what a call served from here reports.
    shared_left: u64,
    reset_ms: u64,
}

/// Leases held at once, at most: one per busy key (a client, for a per-client limit).
const MAX_LEASES: usize = 16_384;
/// A full lease map is swept of expired leases at most this often.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// What the lease on a bucket says about a take.
enum Ahead {
    /// Answered here, without Redis; then, when not 0, top the lease up with that many tokens
    /// in the background.
    Answer(Take, u64),
    /// Ask Redis, taking this many tokens ahead too.
    Ask(u64),
}

impl Inner {
    /// Tokens to take ahead from a bucket of this burst (0: leases are off).
    fn lease_size(&self, burst: u64) -> u64 {
        let share = self.config.lease.share;
        if share > 0.0 {
            (burst.max(1) as f64 * share).floor() as u64
        } else {
            0
        }
    }

    /// Answers a take from what this process holds on `key` (tokens leased, or a refusal that
    /// still stands), or says how many tokens to ask for ahead: up to `lease`, and only if no
    /// other call is asking already.
    fn ahead(
        &self,
        key: &str,
        bucket: (u64, u64, u64),
        cost: u64,
        lease: u64,
        wait: Duration,
    ) -> Ahead {
        let now = Instant::now();
        // The common case, a bucket this process knows: no allocation.
        let mut l = match self.leases.get_mut(key) {
            Some(l) => l,
            None => {
                if self.leases.len() >= MAX_LEASES && !self.sweep(now) {
                    return Ahead::Ask(0); // full of live leases: no new one
                }
                match self.leases.entry(key.to_string()) {
                    dashmap::mapref::entry::Entry::Occupied(o) => o.into_ref(), // another call just added it
                    dashmap::mapref::entry::Entry::Vacant(v) => {
                        self.stats.leases_held(1);
                        v.insert(Lease {
                            bucket,
                            tokens: 0,
                            until: now,
                            refused: None,
                            fetching: None,
                            shared_left: 0,
                            reset_ms: 0,
                        })
                    }
                }
            }
        };
        if l.bucket != bucket {
            (l.bucket, l.tokens, l.refused) = (bucket, 0, None);
        }
        if l.until > now && l.tokens >= cost {
            l.tokens -= cost;
            self.stats.leased_take();
            // Below half a lease, and nobody asking yet: this call starts a top-up.
            let refill =
                if l.tokens.saturating_mul(2) < lease && l.fetching.is_none_or(|f| f <= now) {
                    l.fetching = Some(now + self.config.pool.timeout);
                    lease - l.tokens
                } else {
                    0
                };
            let t = Take {
                allowed: true,
                remaining: l.shared_left.saturating_add(l.tokens),
                retry_after_ms: 0,
                reset_ms: l.reset_ms,
            };
            return Ahead::Answer(t, refill);
        }
        if let Some((refused, until)) = l.refused
            && cost >= refused
            && now < until
        {
            self.stats.leased_take();
            let t = Take {
                allowed: false,
                remaining: 0,
                retry_after_ms: (until - now).as_millis().max(1) as u64,
                reset_ms: l.reset_ms,
            };
            return Ahead::Answer(t, 0);
        }
        if l.fetching.is_some_and(|f| f > now) {
            return Ahead::Ask(0);
        }
        l.fetching = Some(now + wait);
        let left = if l.until > now { l.tokens } else { 0 };
        Ahead::Ask(lease.saturating_sub(left))
    }

    /// Drops expired leases, at most once per [`SWEEP_EVERY`] (a scan of a full map on every
    /// new key would let many clients make every call slow); whether there is room now.
    fn sweep(&self, now: Instant) -> bool {
        if let Ok(mut next) = self.next_sweep.try_lock()
            && now >= *next
        {
            *next = now + SWEEP_EVERY;
            let before = self.leases.len();
            self.leases.retain(|_, l| {
                l.until > now
                    || l.refused.is_some_and(|(_, u)| u > now)
                    || l.fetching.is_some_and(|f| f > now)
            });
            self.stats
                .leases_held(self.leases.len() as i64 - before as i64);
        }
        self.leases.len() < MAX_LEASES
    }

    /// Remembers Redis's answer `t` to a take of `cost` on `key` that asked for `asked` tokens
    /// ahead and was granted `granted` (already counted in `t.remaining`).
    fn keep_lease(&self, key: &str, cost: u64, asked: u64, granted: u64, t: &Take) {
        let Some(mut l) = self.leases.get_mut(key) else {
            return; // swept meanwhile: granted tokens go unused
        };
        let now = Instant::now();
        let max_age = self.config.lease.max_age;
        if asked > 0 {
            l.fetching = None;
        }
        if granted > 0 {
            l.tokens = if l.until > now {
                l.tokens + granted
            } else {
                granted
            };
            l.until = now + max_age;
        }
        // A refusal stands until enough tokens can be back, and never past `max_age`.
        l.refused = (!t.allowed).then(|| {
            (
                cost,
                now + Duration::from_millis(t.retry_after_ms).min(max_age),
            )
        });
        l.shared_left = t.remaining - granted;
        l.reset_ms = t.reset_ms;
    }

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

/// Set and compare-and-swap. KEYS: entry, version sequence. ARGV: expected version (0: absent;
/// `*`: any, an unconditional set), value, ttl ms (0: none). Returns the new version, or nil when
/// the current one is not the expected one.
const WRITE: &str = r"
if ARGV[1] ~= '*' then
  local cur = redis.call('HGET', KEYS[1], 'ver')
  if not cur then cur = '0' end
  if cur ~= ARGV[1] then return false end
end
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
local extra = tonumber(ARGV[5])
local allowed = 0
local granted = 0
if tokens >= cost then
  granted = math.max(0, math.min(extra, math.floor(tokens - cost)))
  tokens = tokens - cost - granted
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
return {allowed, num(math.floor(tokens)), num(retry), num(reset), num(granted)}
";
