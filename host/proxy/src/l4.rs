//! The L4 half: `tcp` listeners relay each connection to an endpoint of their cluster;
//! `tls_passthrough` listeners first read the ClientHello's server name to pick the cluster,
//! then relay the bytes untouched. The same clusters, balancers, health and limits as L7.
//!
//! A connection's path: [`serve`] → (read the hello: [`sni`]) → [`connect`] (retried on
//! another endpoint before any byte is relayed) → [`relay`] (splice or copy, supervised by
//! the idle timeout and drain) → one log line and the listener's counters.

mod relay;
pub(crate) mod sni;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use weir_config::{ListenerConfig, ProxyVersion};
use weir_observe::{ConnectionRecord, ListenerStats, Refusal};

use crate::Shared;
use crate::snapshot::Cluster;
use crate::tunnel::{Activity, Ended};

/// A `tcp` or `tls_passthrough` listener's routing, from the current snapshot: a reload
/// changes where new connections go; established ones keep their endpoint.
pub(crate) struct L4Route {
    target: Target,
    /// `proxy_protocol.send`.
    send: Option<ProxyVersion>,
    idle: Duration,
    splice: bool,
}

enum Target {
    Tcp(Arc<Cluster>),
    Sni(SniTable),
}

impl std::fmt::Debug for L4Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Tcp(c) => format!("tcp -> {}", c.name),
            Target::Sni(t) => format!(
                "sni: {} exact, {} wildcard, default {:?}",
                t.exact.len(),
                t.wildcard.len(),
                t.default.as_ref().map(|c| &c.name)
            ),
        };
        f.debug_struct("L4Route")
            .field("target", &target)
            .field("send", &self.send)
            .field("idle", &self.idle)
            .field("splice", &self.splice)
            .finish()
    }
}

/// Server name → cluster: exact names, then `*.suffix` wildcards (longest suffix first),
/// then `*`.
struct SniTable {
    exact: HashMap<String, Arc<Cluster>>,
    /// (".suffix", cluster), longest first.
    wildcard: Vec<(String, Arc<Cluster>)>,
    default: Option<Arc<Cluster>>,
}

impl SniTable {
    fn pick(&self, name: Option<&str>) -> Option<&Arc<Cluster>> {
        let Some(name) = name else {
            return self.default.as_ref();
        };
        self.exact
            .get(name)
            .or_else(|| {
                self.wildcard
                    .iter()
                    .find(|(suffix, _)| {
                        name.len() > suffix.len() && name.ends_with(suffix.as_str())
                    })
                    .map(|(_, c)| c)
            })
            .or(self.default.as_ref())
    }
}

impl L4Route {
    /// The routing of listener `l` (`None` for HTTP listeners). Validation has checked that
    /// every cluster named exists.
    pub fn new(l: &ListenerConfig, clusters: &HashMap<&str, &Arc<Cluster>>) -> Option<L4Route> {
        let cluster = |name: &str| Arc::clone(clusters[name]);
        let target = match l.protocol {
            weir_config::ListenerProtocol::Tcp => Target::Tcp(cluster(l.cluster.as_deref()?)),
            weir_config::ListenerProtocol::TlsPassthrough => {
                let mut t = SniTable {
                    exact: HashMap::new(),
                    wildcard: Vec::new(),
                    default: None,
                };
                for r in &l.sni {
                    for n in &r.server_names {
                        let n = n.to_ascii_lowercase();
                        if n == "*" {
                            t.default = Some(cluster(&r.cluster));
                        } else if let Some(suffix) = n.strip_prefix('*') {
                            t.wildcard.push((suffix.to_string(), cluster(&r.cluster)));
                        } else {
                            t.exact.insert(n, cluster(&r.cluster));
                        }
                    }
                }
                t.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
                Target::Sni(t)
            }
            _ => return None,
        };
        Some(L4Route {
            target,
            send: l.proxy_protocol.send,
            idle: l.idle_timeout.unwrap_or(Duration::from_secs(600)),
            splice: l.splice,
        })
    }
}

/// A connection accepted on an L4 listener.
pub(crate) struct Accepted {
    pub stream: TcpStream,
    /// Bytes already read from it (after a PROXY header).
    pub pre: BytesMut,
    /// The client: the peer, or the source a trusted PROXY header named.
    pub client: SocketAddr,
    /// Where the client connected to, from a PROXY header (else this socket's address, read
    /// when a PROXY header is sent on).
    pub destination: Option<SocketAddr>,
    pub listener: Arc<str>,
    pub protocol: weir_config::ListenerProtocol,
    pub stats: Arc<ListenerStats>,
}

/// The largest first flight buffered while looking for the ClientHello's end.
const MAX_FIRST_FLIGHT: usize = 64 * 1024;

/// What a connection did, for its log line (formatted only when there is an access log).
#[derive(Default)]
struct ConnRecord {
    sni: Option<String>,
    cluster: Option<Arc<Cluster>>,
    /// The endpoint connected to (or last tried).
    endpoint: Option<usize>,
    connected: bool,
    attempts: u32,
    bytes_received: u64,
    bytes_sent: u64,
}

/// Serves one L4 connection to its end, then logs it.
pub(crate) async fn serve(a: Accepted, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    let (began, at) = (Instant::now(), SystemTime::now());
    let snap = shared.snapshot.load_full();
    let (client, listener, protocol) = (a.client, a.listener.clone(), a.protocol);
    let mut out = ConnRecord::default();
    let close = run(a, &snap, shutdown, &mut out).await;
    let Some(sink) = &snap.access_log else {
        return;
    };
    let upstream = match (&out.cluster, out.endpoint) {
        (Some(c), Some(i)) if out.connected => c.endpoints[i].address.clone(),
        _ => String::new(),
    };
    sink.write(&ConnectionRecord {
        time: weir_observe::rfc3339(at),
        kind: match protocol {
            weir_config::ListenerProtocol::TlsPassthrough => "tls_passthrough",
            _ => "tcp",
        },
        client: client.to_string(),
        listener: listener.to_string(),
        sni: out.sni.unwrap_or_default(),
        cluster: out.cluster.map(|c| c.name.to_string()).unwrap_or_default(),
        upstream,
        attempts: out.attempts,
        bytes_received: out.bytes_received,
        bytes_sent: out.bytes_sent,
        duration_ms: began.elapsed().as_secs_f64() * 1000.0,
        close,
    });
}

/// The connection's path; returns why it closed.
async fn run(
    a: Accepted,
    snap: &crate::Snapshot,
    shutdown: watch::Receiver<bool>,
    out: &mut ConnRecord,
) -> &'static str {
    let Accepted {
        mut stream,
        mut pre,
        client,
        destination,
        listener,
        stats,
        ..
    } = a;
    let Some(route) = snap.policy(&listener).l4.as_ref() else {
        // A reload turned this listener into another kind; it serves what it was bound as.
        tracing::warn!(%listener, "no L4 route for this listener since a reload: connection closed");
        return "no_route";
    };
    let cluster = match &route.target {
        Target::Tcp(c) => c,
        Target::Sni(table) => {
            let head_timeout = snap.limits.request_head_timeout;
            let hello = match read_hello(&mut stream, &mut pre, head_timeout).await {
                Ok(h) => h,
                Err(why) => {
                    stats.refused(why);
                    tracing::debug!(%client, %listener, "first flight refused: {}", why.as_str());
                    return why.as_str();
                }
            };
            let picked = table.pick(hello.server_name.as_deref());
            out.sni = hello.server_name;
            match picked {
                Some(c) => c,
                None => {
                    stats.refused(Refusal::NoRoute);
                    return Refusal::NoRoute.as_str();
                }
            }
        }
    };
    out.cluster = Some(cluster.clone());

    let mut first = Vec::new();
    if let Some(v) = route.send {
        let destination = destination
            .or_else(|| stream.local_addr().ok())
            .unwrap_or(client);
        crate::proxy_protocol::write(v, client, destination, &mut first);
    }
    first.extend_from_slice(&pre);
    let from_client = pre.len() as u64;
    drop(pre);
    let Some(up) = connect(cluster, client, &first, snap.timeouts, out).await else {
        stats.connect_failures.fetch_add(1, Relaxed);
        return "connect_failed";
    };
    let Upstream {
        stream: upstream,
        index,
        _in_flight,
        _reserved,
    } = up;
    let ep = &cluster.endpoints[index];
    ep.stats.connections.open();
    let counts = relay::Counts::default();
    let activity = Activity::new();
    let drain = snap.drain_timeout;
    let relay = relay::relay(&stream, &upstream, route.splice, &counts, &stats, &activity);
    let ended = crate::tunnel::supervise(relay, &activity, route.idle, drain, shutdown).await;
    ep.stats.connections.close();
    out.bytes_received = counts.received.load(Relaxed) + from_client;
    out.bytes_sent = counts.sent.load(Relaxed);
    stats.bytes_received.fetch_add(from_client, Relaxed);
    match ended {
        Ended::Done(end) => end.as_str(),
        Ended::Idle(_) => {
            snap.timeouts.fired(weir_observe::TimeoutKind::TcpIdle);
            "idle_timeout"
        }
        Ended::Drain => "drain",
    }
}

/// Reads until `pre` holds a whole ClientHello (or is refused), within `timeout`.
async fn read_hello(
    stream: &mut TcpStream,
    pre: &mut BytesMut,
    timeout: Duration,
) -> Result<sni::Hello, Refusal> {
    let mut parser = sni::Parser::default();
    let read = async {
        loop {
            match parser.parse(pre) {
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(sni::Bad::NotTls) => return Err(Refusal::NotTls),
                Err(sni::Bad::Malformed(why)) => {
                    tracing::debug!("ClientHello refused: {why}");
                    return Err(Refusal::ClientHello);
                }
            }
            if pre.len() >= MAX_FIRST_FLIGHT {
                return Err(Refusal::ClientHello);
            }
            pre.reserve(4096);
            match stream.read_buf(pre).await {
                Ok(0) | Err(_) => return Err(Refusal::ClientHello),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(Refusal::Timeout))
}

/// A connected upstream and what it holds while open.
struct Upstream {
    stream: TcpStream,
    index: usize,
    /// The balancer's in-flight count (least-request balances connections).
    _in_flight: weir_balance::InFlight,
    /// A place under the cluster's `limits.max_connections`.
    _reserved: Option<crate::connector::Reserved>,
}

/// Connects to an endpoint of `cluster` and writes `first` (a PROXY header and the bytes
/// read so far); a failed connect is tried again on an endpoint not tried yet, as the
/// cluster's `retries.attempts` allow — nothing has been relayed then.
async fn connect(
    cluster: &Arc<Cluster>,
    client: SocketAddr,
    first: &[u8],
    timeouts: &'static weir_observe::TimeoutStats,
    out: &mut ConnRecord,
) -> Option<Upstream> {
    let hash = cluster
        .hash_on
        .as_ref()
        .map(|_| crate::head::client_hash(client));
    let attempts = cluster
        .retry
        .attempts
        .min(cluster.endpoints.len() as u32)
        .max(1);
    let mut tried = crate::retry::Tried::default();
    for _ in 0..attempts {
        let i = crate::proxy::pick_untried(cluster, hash, tried.as_slice());
        tried.push(i);
        out.attempts += 1;
        out.endpoint = Some(i);
        let ep = &cluster.endpoints[i];
        let reserved = match &cluster.conn_limit {
            Some(limit) => match limit.acquire().await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::debug!(cluster = %cluster.name, "{e}");
                    return None;
                }
            },
            None => None,
        };
        let in_flight = cluster.balancer.begin(i);
        let connected = tokio::time::timeout(cluster.connect_timeout, async {
            let mut s = TcpStream::connect(ep.address.as_str()).await?;
            s.set_nodelay(true)?;
            if !first.is_empty() {
                s.write_all(first).await?;
            }
            Ok::<_, std::io::Error>(s)
        })
        .await;
        match connected {
            Ok(Ok(stream)) => {
                cluster.answered(i, http::StatusCode::OK);
                out.connected = true;
                return Some(Upstream {
                    stream,
                    index: i,
                    _in_flight: in_flight,
                    _reserved: reserved,
                });
            }
            Ok(Err(e)) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, "connect failed: {e}");
            }
            Err(_) => {
                timeouts.fired(weir_observe::TimeoutKind::UpstreamConnect);
                tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, "connect timed out");
            }
        }
        ep.stats.connect_failures.fetch_add(1, Relaxed);
        cluster.try_failed(i);
    }
    None
}
