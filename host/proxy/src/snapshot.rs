//! A compiled, immutable config: router, routes, clusters with their pools. Built off the hot
//! path; requests reach it with one atomic load and never see it change under them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http::Uri;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use weir_balance::{Balancer, Policy};
use weir_config::{
    ClusterConfig, ConfigError, HashOn, LbPolicy, LoadedConfig, PassiveHealth, ValueRule,
};
use weir_observe::{AccessLog, EndpointStats, Registry, RouteStats};
use weir_router::{
    EscapedSlashes, PathMatch, PathOptions, PathParameters, RouteSpec, Router, ValueMatch,
};

use crate::body::ProxyBody;
use crate::connector::{Connector, TlsClient};

/// Everything a request needs, compiled from one config.
pub struct Snapshot {
    /// The config it was built from (served by `GET /config`).
    pub loaded: LoadedConfig,
    pub(crate) router: Router,
    pub(crate) routes: Vec<Route>,
    pub(crate) clusters: Vec<Arc<Cluster>>,
    pub(crate) access_log: Option<AccessLog>,
    /// How new traces are sampled, when tracing is on.
    pub(crate) sampler: Option<crate::trace::Sampler>,
    /// Where sampled requests' spans go (`tracing.otlp`); kept across configs that do not
    /// change its settings, so a reload neither restarts it nor loses what it has queued.
    pub(crate) exporter: Option<Arc<crate::otlp::Exporter>>,
    pub(crate) max_body: Option<u64>,
    /// `limits.request_body_timeout`.
    pub(crate) request_body_timeout: Duration,
    /// The edge limits; connections take them when they open, so a reload changes them for
    /// every connection opened after it.
    pub(crate) limits: Arc<weir_config::Limits>,
    /// `drain_timeout`: how long tunnels outlive a drain.
    pub(crate) drain_timeout: Duration,
    /// Where deadlines that fire are counted.
    pub(crate) timeouts: &'static weir_observe::TimeoutStats,
    /// Each listener's request policy, by listener name.
    pub(crate) listeners: Vec<(Arc<str>, RequestPolicy)>,
    /// Every configured filter's loaded module, in config order.
    pub(crate) filters: Vec<LoadedFilter>,
    /// The Redis state backend (`state.backend: redis`); `None` for the embedded store. Made
    /// the runtime's backend when the snapshot is published.
    pub(crate) state: Option<Arc<weir_filters::Redis>>,
}

/// A filter's module as loaded into a snapshot.
pub(crate) struct LoadedFilter {
    pub name: String,
    pub module: Arc<weir_filters::Module>,
    /// `file` or `api` (uploaded through the admin API).
    pub source: &'static str,
}

/// Filter modules uploaded through the admin API, by filter name (they replace the file).
pub type Uploads = HashMap<String, Arc<Vec<u8>>>;

pub(crate) struct Route {
    pub name: Arc<str>,
    /// The route's wasm filters; `None` keeps the request entirely native.
    pub chain: Option<Arc<weir_filters::Chain>>,
    pub cluster: Arc<Cluster>,
    /// (matched prefix, replacement).
    pub prefix_rewrite: Option<(String, String)>,
    pub host_rewrite: Option<HeaderValue>,
    pub timeout: Duration,
    /// `retry_non_idempotent`.
    pub retry_any_method: bool,
    pub stats: Arc<RouteStats>,
    /// Set when the route is switched off (`enabled: false`): what it answers instead.
    pub disabled: Option<Disabled>,
}

/// A disabled route's answer.
pub(crate) struct Disabled {
    pub status: http::StatusCode,
    pub body: bytes::Bytes,
}

impl Disabled {
    fn of(r: &weir_config::RouteConfig) -> Option<Disabled> {
        if r.enabled {
            return None;
        }
        let d = r.disabled_response.clone().unwrap_or_default();
        // Validation keeps the status within 400..=599.
        let status = http::StatusCode::from_u16(d.status).unwrap_or(http::StatusCode::NOT_FOUND);
        let body = match d.body {
            Some(b) => b,
            None => serde_json::json!({
                "error": status.canonical_reason().unwrap_or("error").to_ascii_lowercase()
            }),
        };
        Some(Disabled {
            status,
            body: serde_json::to_vec(&body).unwrap_or_default().into(),
        })
    }
}

pub(crate) struct Cluster {
    pub name: Arc<str>,
    pub balancer: Arc<Balancer>,
    pub endpoints: Vec<Endpoint>,
    pub client: Client<Connector, ProxyBody>,
    /// The native HTTP/1.1 client (`client: native`, HTTP/1.1 clusters): used for every request
    /// but protocol upgrades, which go through `client`.
    pub native: Option<crate::h1::Client>,
    pub scheme: Scheme,
    pub h2: bool,
    pub hash_on: Option<HashOn>,
    pub health: PassiveHealth,
    /// `timeouts.body`: longest wait between two pieces of a response body.
    pub body_timeout: Duration,
    pub retry: crate::retry::RetryPolicy,
    pub stats: Arc<weir_observe::ClusterStats>,
    /// `limits.max_requests`.
    pub max_requests: Option<usize>,
    /// Upstream TLS (active health checks connect with it too).
    pub tls: Option<TlsClient>,
    /// `limits.max_connections` (shared with the connector).
    pub conn_limit: Option<Arc<crate::connector::ConnLimit>>,
    /// `timeouts.connect`.
    pub connect_timeout: Duration,
    /// What the cluster was built from: a new snapshot whose cluster has the same fingerprint
    /// takes this one over whole — pool, health, counters. `None` (a file could not be read):
    /// never taken over.
    fingerprint: Option<Fingerprint>,
}

/// A cluster's config and the bytes of the files it reads (the CA), so a reload that rotates
/// the CA file rebuilds the cluster even though its config text is the same.
#[derive(PartialEq)]
struct Fingerprint {
    config: ClusterConfig,
    ca: Option<Vec<u8>>,
}

impl Fingerprint {
    /// `None` when a file cannot be read (building the cluster then reports why).
    fn of(loaded: &LoadedConfig, cc: &ClusterConfig) -> Option<Fingerprint> {
        let ca = match cc.tls.as_ref().and_then(|t| t.ca.as_ref()) {
            Some(p) => Some(std::fs::read(loaded.resolve(p)).ok()?),
            None => None,
        };
        Some(Fingerprint {
            config: cc.clone(),
            ca,
        })
    }
}

pub(crate) struct Endpoint {
    /// HTTP/2 clusters: this endpoint's own client (see `Connector::fixed`).
    pub h2_client: Option<Client<Connector, ProxyBody>>,
    pub address: String,
    pub authority: Authority,
    pub weight: u32,
    pub stats: Arc<EndpointStats>,
    failures: AtomicU32,
    /// Other 5xx answers in a row (`max_5xx`).
    errors: AtomicU32,
    /// Ejections in a row without a success between (each lasts twice the one before).
    ejections: AtomicU32,
    /// Milliseconds since `epoch()` until which the endpoint stays out.
    down_until: AtomicU64,
    /// The active health checks' verdict (true without active checks).
    pub probe_ok: std::sync::atomic::AtomicBool,
}

fn epoch() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Cluster {
    /// The HTTP version requests go upstream in.
    pub fn version(&self) -> http::Version {
        if self.h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        }
    }

    /// A try on endpoint `i` failed (no connection, a reset before the head, or a 502/503/504):
    /// after `max_failures` in a row it is taken out of rotation for `cooldown` (passive health
    /// checking, like nginx's max_fails and Envoy's consecutive gateway failures).
    ///
    /// At most `max_ejected` of the endpoints are ejected at once (one always may be); an
    /// ejection that follows another without a success between lasts twice as long, up to
    /// `max_cooldown`.
    pub fn try_failed(&self, i: usize) {
        let max = self.health.max_failures;
        let ep = &self.endpoints[i];
        if max != 0 && ep.failures.fetch_add(1, Relaxed) + 1 >= max {
            self.eject(i, format_args!("failed {max} tries in a row"));
        }
    }

    /// Endpoint `i` answered with `status`: a 502/503/504 is a failed try; any other 5xx counts
    /// toward `max_5xx`; anything else is a success that starts every count over.
    pub fn answered(&self, i: usize, status: http::StatusCode) {
        let ep = &self.endpoints[i];
        match status.as_u16() {
            502..=504 => self.try_failed(i),
            500..=599 => {
                let max = self.health.max_5xx;
                if max != 0 && ep.errors.fetch_add(1, Relaxed) + 1 >= max {
                    self.eject(i, format_args!("answered {max} 5xx in a row"));
                }
            }
            _ => {
                // Only write when needed: the common case stays a read of a shared cache line.
                for count in [&ep.failures, &ep.errors, &ep.ejections] {
                    if count.load(Relaxed) != 0 {
                        count.store(0, Relaxed);
                    }
                }
            }
        }
    }

    /// Takes endpoint `i` out of rotation (unless it is out already, or `max_ejected` of the
    /// cluster is).
    fn eject(&self, i: usize, why: std::fmt::Arguments<'_>) {
        let ep = &self.endpoints[i];
        if ep.down_until.load(Relaxed) > now_ms() {
            return;
        }
        let n = self.endpoints.len();
        let ejected = (0..n)
            .filter(|&j| self.endpoints[j].down_until.load(Relaxed) > now_ms())
            .count();
        if ejected > 0 && (ejected + 1) * 100 > usize::from(self.health.max_ejected.0) * n {
            tracing::debug!(cluster = %self.name, endpoint = %ep.address, "not ejected: {ejected} of {n} endpoints already are");
            return;
        }
        let k = ep.ejections.fetch_add(1, Relaxed).min(16);
        let out = self
            .health
            .cooldown
            .saturating_mul(1 << k)
            .min(self.health.max_cooldown);
        ep.down_until
            .store(now_ms() + out.as_millis() as u64, Relaxed);
        tracing::warn!(cluster = %self.name, endpoint = %ep.address, "endpoint {why}; ejected for {out:?}");
        self.refresh(i);
    }

    /// Sets endpoint `i` in or out of rotation from its two verdicts: ejected (passive) and
    /// probes (active).
    pub fn refresh(&self, i: usize) {
        let ep = &self.endpoints[i];
        let up = ep.probe_ok.load(Relaxed) && ep.down_until.load(Relaxed) <= now_ms();
        self.balancer.set_healthy(i, up);
        ep.stats.healthy.store(up, Relaxed);
    }

    /// Requests in flight on the cluster (what the retry budget is a share of). Only read when
    /// a try failed, so the hot path pays nothing for it.
    pub fn in_flight(&self) -> usize {
        (0..self.endpoints.len())
            .map(|i| self.balancer.in_flight(i))
            .sum()
    }

    /// Whether the cluster has `limits.max_connections` open (a try may have waited for one).
    pub fn at_connection_cap(&self) -> bool {
        self.conn_limit
            .as_ref()
            .is_some_and(|l| l.open.load(Relaxed) >= l.max)
    }

    /// Ends ejections whose time is up and sets every endpoint in or out of rotation again from
    /// its verdicts (called by a ticker): a verdict raced by another lands right within a tick.
    pub fn revive(&self) {
        let now = now_ms();
        for (i, ep) in self.endpoints.iter().enumerate() {
            let until = ep.down_until.load(Relaxed);
            // Only the ejection read here ends: one made meanwhile stands.
            if until != 0
                && until <= now
                && ep
                    .down_until
                    .compare_exchange(until, 0, Relaxed, Relaxed)
                    .is_ok()
            {
                ep.failures.store(0, Relaxed);
                ep.errors.store(0, Relaxed);
            }
            self.refresh(i);
        }
    }

    pub fn endpoints_json(&self) -> serde_json::Value {
        let eps: Vec<serde_json::Value> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                serde_json::json!({
                    "address": e.address,
                    "weight": e.weight,
                    "healthy": self.balancer.is_healthy(i),
                    "ejected": e.down_until.load(Relaxed) > now_ms(),
                    "warming": self.balancer.is_warming(i),
                    "probes": match self.health.active {
                        None => "off",
                        Some(_) if e.probe_ok.load(Relaxed) => "passing",
                        Some(_) => "failing",
                    },
                    "in_flight": self.balancer.in_flight(i),
                    "connections": e.stats.connections.active(),
                    "connect_failures": e.stats.connect_failures.load(Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "name": &*self.name,
            "lb": format!("{:?}", self.balancer.policy()),
            "protocol": if self.h2 { "h2" } else { "http1" },
            "tls": self.scheme == Scheme::HTTPS,
            "endpoints": eps,
        })
    }
}

/// What a listener accepts and trusts in a request (`listeners[].paths`, `trusted_proxies`).
#[derive(Debug)]
pub(crate) struct RequestPolicy {
    pub paths: PathOptions,
    pub trusted_proxies: Vec<weir_config::Cidr>,
    /// `proxy_protocol.accept`: trusted peers open connections with a PROXY header.
    pub proxy_accept: Option<weir_config::ProxyAccept>,
    /// `tcp` and `tls_passthrough` listeners: where connections go.
    pub l4: Option<crate::l4::L4Route>,
}

/// The defaults, for a listener a reload removed while its connections still serve.
static DEFAULT_POLICY: RequestPolicy = RequestPolicy {
    paths: PathOptions {
        escaped_slashes: EscapedSlashes::Reject,
        parameters: PathParameters::Reject,
    },
    trusted_proxies: Vec::new(),
    proxy_accept: None,
    l4: None,
};

impl RequestPolicy {
    fn new(
        l: &weir_config::ListenerConfig,
        clusters: &HashMap<&str, &Arc<Cluster>>,
    ) -> RequestPolicy {
        use weir_config::{EscapedSlashesAction as E, PathParametersAction as P};
        RequestPolicy {
            paths: PathOptions {
                escaped_slashes: match l.paths.escaped_slashes {
                    E::Reject => EscapedSlashes::Reject,
                    E::Keep => EscapedSlashes::Keep,
                    E::Decode => EscapedSlashes::Decode,
                },
                parameters: match l.paths.parameters {
                    P::Reject => PathParameters::Reject,
                    P::Strip => PathParameters::Strip,
                    P::Keep => PathParameters::Keep,
                },
            },
            // Validation parsed each one already.
            trusted_proxies: l
                .trusted_proxies
                .iter()
                .filter_map(|t| weir_config::Cidr::parse(t).ok())
                .collect(),
            proxy_accept: l.proxy_protocol.accept,
            l4: crate::l4::L4Route::new(l, clusters),
        }
    }

    /// Whether forwarding headers from `peer` are believed.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        !self.trusted_proxies.is_empty() && self.trusted_proxies.iter().any(|c| c.contains(peer))
    }
}

/// A route's exact path or prefix must be in the form requests are normalized to, or it could
/// never match (`/caf%c3%a9` never sees a request: they arrive as `/caf%C3%A9`).
fn check_route_path(
    loaded: &LoadedConfig,
    route: usize,
    field: &str,
    path: &str,
) -> Result<(), ConfigError> {
    let lenient = PathOptions {
        escaped_slashes: EscapedSlashes::Keep,
        parameters: PathParameters::Keep,
    };
    let at = format!("routes[{route}].match.{field}");
    match weir_router::normalize_path(path, lenient) {
        Ok(n) if n == path => Ok(()),
        Ok(n) => Err(loaded.error_at(
            at,
            format!("{path:?} never matches: requests are normalized first; write {n:?}"),
        )),
        Err(_) if !path.starts_with('/') => Ok(()), // the router reports this one
        Err(e) => Err(loaded.error_at(at, format!("{path:?} never matches: {e}"))),
    }
}

impl Snapshot {
    /// The request policy of the listener named `name` (defaults if a reload removed it).
    pub(crate) fn policy(&self, name: &str) -> &RequestPolicy {
        self.listeners
            .iter()
            .find(|(n, _)| &**n == name)
            .map_or(&DEFAULT_POLICY, |(_, p)| p)
    }

    /// Compiles a validated config. Fails (with file:line) on what only shows when loading:
    /// certificates, CA files, routes the router rejects.
    ///
    /// A cluster of `previous` whose config (and CA file) did not change is taken over as it
    /// is: its connection pool, health and counters survive the reload.
    pub async fn build(
        loaded: LoadedConfig,
        registry: &Registry,
        runtime: Option<&weir_filters::Runtime>,
        uploads: &Uploads,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigError> {
        let (chains, filters) = build_chains(&loaded, registry, runtime, uploads, previous).await?;
        let state = build_state(&loaded, registry, previous)?;
        let c = &loaded.config;
        let mut clusters = Vec::with_capacity(c.clusters.len());
        for (i, cc) in c.clusters.iter().enumerate() {
            let fingerprint = Fingerprint::of(&loaded, cc);
            let kept = previous.and_then(|p| {
                p.clusters
                    .iter()
                    .find(|old| *old.name == cc.name && old.fingerprint.is_some())
                    .filter(|old| old.fingerprint == fingerprint)
            });
            clusters.push(match kept {
                Some(old) => old.clone(),
                None => {
                    let cluster = Arc::new(build_cluster(&loaded, i, cc, registry)?);
                    crate::health::spawn(&cluster);
                    cluster
                }
            });
        }
        let by_name: HashMap<&str, &Arc<Cluster>> =
            clusters.iter().map(|cl| (&*cl.name, cl)).collect();

        let mut specs = Vec::with_capacity(c.routes.len());
        let mut routes = Vec::with_capacity(c.routes.len());
        for r in &c.routes {
            let m = &r.matches;
            let path = match (&m.path, &m.path_prefix, &m.path_regex) {
                (Some(p), _, _) => PathMatch::Exact(p.clone()),
                (_, Some(p), _) => PathMatch::Prefix(p.clone()),
                (_, _, Some(p)) => PathMatch::Regex(p.clone()),
                _ => PathMatch::Any,
            };
            let rule = |v: &ValueRule| match v {
                ValueRule::Exact(s) => ValueMatch::Exact(s.clone()),
                ValueRule::Regex(s) => ValueMatch::Regex(s.clone()),
                ValueRule::Present(_) => ValueMatch::Present,
            };
            if let Some((field, p)) = [("path", &m.path), ("path_prefix", &m.path_prefix)]
                .into_iter()
                .find_map(|(f, p)| Some((f, p.as_deref()?)))
            {
                check_route_path(&loaded, routes.len(), field, p)?;
            }
            specs.push(RouteSpec {
                host: m.host.clone(),
                path,
                path_ignore_case: !m.case_sensitive,
                // Validation has checked names and methods; unparsable ones cannot reach here.
                methods: m
                    .methods
                    .iter()
                    .filter_map(|s| http::Method::from_bytes(s.as_bytes()).ok())
                    .collect(),
                headers: m
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((http::HeaderName::from_bytes(k.as_bytes()).ok()?, rule(v)))
                    })
                    .collect(),
                query: m.query.iter().map(|(k, v)| (k.clone(), rule(v))).collect(),
            });
            let cluster = Arc::clone(by_name[r.cluster.as_str()]);
            let rw = r.rewrite.as_ref();
            routes.push(Route {
                chain: chains[routes.len()].clone(),
                name: r.name.as_str().into(),
                prefix_rewrite: rw
                    .and_then(|w| w.path_prefix.clone())
                    .and_then(|to| Some((m.path_prefix.clone()?, to))),
                host_rewrite: rw
                    .and_then(|w| w.host.as_deref())
                    .and_then(|h| HeaderValue::from_str(h).ok()),
                retry_any_method: r.retry_non_idempotent,
                timeout: r.timeout.unwrap_or(
                    c.clusters
                        .iter()
                        .find(|x| x.name == r.cluster)
                        .map_or(Duration::from_secs(15), |x| x.timeouts.request),
                ),
                stats: registry.route(&r.name, &r.cluster),
                disabled: Disabled::of(r),
                cluster,
            });
        }
        let listeners = c
            .listeners
            .iter()
            .map(|l| (l.name.as_str().into(), RequestPolicy::new(l, &by_name)))
            .collect();
        let router = Router::new(specs)
            .map_err(|e| loaded.error_at(format!("routes[{}].match", e.route()), e.to_string()))?;

        let access_log = match &c.access_log {
            Some(a) => {
                // A sink whose settings did not change is kept, with its queue and connections.
                let kafka = match &a.kafka {
                    None => None,
                    Some(k) => {
                        let kept = (previous.and_then(|p| p.access_log.as_ref()))
                            .and_then(AccessLog::kafka)
                            .filter(|s| s.settings == *k);
                        match kept {
                            Some(s) => Some(s.clone()),
                            None => Some(Arc::new(
                                weir_observe::KafkaSink::start(k, registry.kafka()).map_err(
                                    |e| {
                                        loaded.error_at(
                                            "access_log.kafka",
                                            format!("cannot start: {e}"),
                                        )
                                    },
                                )?,
                            )),
                        }
                    }
                };
                Some(
                    AccessLog::new(a.path.as_deref(), kafka, registry.access_log_dropped())
                        .map_err(|e| {
                            loaded.error_at(
                                "access_log.path",
                                format!("cannot open {:?}: {e}", a.path.as_deref().unwrap_or("")),
                            )
                        })?,
                )
            }
            None => None,
        };
        let exporter = match c.tracing.as_ref().and_then(|t| Some((t.otlp.as_ref()?, t))) {
            None => None,
            Some((otlp, t)) => {
                let kept = previous
                    .and_then(|p| p.exporter.as_ref())
                    .filter(|e| e.settings.0 == *otlp && e.settings.1 == t.service_name);
                match kept {
                    Some(e) => Some(e.clone()),
                    None => Some(Arc::new(
                        crate::otlp::Exporter::start(otlp, &t.service_name, registry.traces())
                            .map_err(|e| {
                                loaded.error_at("tracing.otlp", format!("cannot start: {e}"))
                            })?,
                    )),
                }
            }
        };
        let max_body = c.limits.max_request_body_bytes.map(|b| b.bytes());
        Ok(Snapshot {
            listeners,
            filters,
            router,
            routes,
            clusters,
            access_log,
            sampler: (c.tracing.as_ref())
                .map(|t| crate::trace::Sampler::new(t.sample_ratio).with_parent(t.parent_based)),
            exporter,
            max_body,
            request_body_timeout: c.limits.request_body_timeout,
            limits: Arc::new(c.limits.clone()),
            drain_timeout: c.drain_timeout,
            timeouts: registry.timeouts(),
            state,
            loaded,
        })
    }

    pub(crate) fn filters_json(&self) -> serde_json::Value {
        let c = &self.loaded.config;
        let list = self
            .filters
            .iter()
            .map(|f| {
                let routes: Vec<&str> = c
                    .routes
                    .iter()
                    .filter(|r| r.filters.iter().any(|x| x.name == f.name))
                    .map(|r| r.name.as_str())
                    .collect();
                let loaded_at = f
                    .module
                    .loaded_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                // One pool per distinct config of this filter.
                let mut pools: Vec<&Arc<weir_filters::InstancePool>> = Vec::new();
                for pool in self
                    .routes
                    .iter()
                    .filter_map(|r| r.chain.as_ref())
                    .flat_map(|c| c.pools())
                {
                    if *pool.spec().filter == *f.name.as_str()
                        && !pools.iter().any(|p| Arc::ptr_eq(p, pool))
                    {
                        pools.push(pool);
                    }
                }
                let pools: Vec<serde_json::Value> = pools
                    .into_iter()
                    .map(|p| {
                        serde_json::json!({
                            "phases": p.phases().names(),
                            "instances": p.instances(),
                            "guest_calls": p.guest_calls(),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": f.name,
                    "version": f.module.hash,
                    "source": f.source,
                    "loaded_at": weir_observe::rfc3339(f.module.loaded_at),
                    "loaded_at_unix_ms": loaded_at.as_millis() as u64,
                    "routes": routes,
                    "pools": pools,
                })
            })
            .collect();
        serde_json::Value::Array(list)
    }

    /// `GET /routes`: every route in force, on or off, with its tags.
    pub(crate) fn routes_json(&self) -> serde_json::Value {
        self.loaded
            .config
            .routes
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "cluster": r.cluster,
                    "enabled": r.enabled,
                    "tags": r.tags,
                })
            })
            .collect()
    }

    /// `weir_route_enabled`: 1 for each route in force that serves, 0 for each switched off.
    pub(crate) fn render_routes_enabled(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP weir_route_enabled Whether each route in force serves (1) or is switched off (0).\n# TYPE weir_route_enabled gauge\n");
        for r in &self.routes {
            let _ = writeln!(
                out,
                "weir_route_enabled{{route=\"{}\"}} {}",
                weir_observe::escape(&r.name),
                u8::from(r.disabled.is_none())
            );
        }
    }

    pub(crate) fn clusters_json(&self) -> serde_json::Value {
        serde_json::Value::Array(self.clusters.iter().map(|c| c.endpoints_json()).collect())
    }

    pub(crate) fn clusters(&self) -> &[Arc<Cluster>] {
        &self.clusters
    }
}

fn build_cluster(
    loaded: &LoadedConfig,
    i: usize,
    cc: &ClusterConfig,
    registry: &Registry,
) -> Result<Cluster, ConfigError> {
    let at = |field: &str| format!("clusters[{i}].{field}");
    let policy = match cc.lb {
        LbPolicy::RoundRobin => Policy::RoundRobin,
        LbPolicy::WeightedRoundRobin => Policy::WeightedRoundRobin,
        LbPolicy::LeastRequest => Policy::LeastRequest,
        LbPolicy::Random => Policy::Random,
        LbPolicy::RingHash => Policy::RingHash,
        LbPolicy::Maglev => Policy::Maglev,
    };
    let weights: Vec<u32> = cc.endpoints.iter().map(|e| e.weight).collect();
    let keys: Vec<&str> = cc.endpoints.iter().map(|e| e.address.as_str()).collect();
    // Placing endpoints by address keeps hash assignments stable when the list is edited.
    let balancer = Balancer::with_keys(policy, &weights, &keys)
        .map_err(|e| loaded.error_at(at("endpoints"), e.to_string()))?
        .with_slow_start(cc.slow_start.unwrap_or_default());

    let mut endpoints = Vec::with_capacity(cc.endpoints.len());
    let mut stats = HashMap::new();
    for (j, e) in cc.endpoints.iter().enumerate() {
        let authority: Authority = e.address.parse().map_err(|err| {
            loaded.error_at(
                at(&format!("endpoints[{j}].address")),
                format!("invalid address: {err}"),
            )
        })?;
        let s = registry.endpoint(&cc.name, &e.address);
        // A new cluster starts with every endpoint in rotation.
        s.healthy.store(true, Relaxed);
        stats.insert(authority.as_str().to_string(), s.clone());
        endpoints.push(Endpoint {
            h2_client: None,
            address: e.address.clone(),
            authority,
            weight: e.weight,
            stats: s,
            failures: AtomicU32::new(0),
            errors: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            probe_ok: std::sync::atomic::AtomicBool::new(true),
        });
    }

    let h2 = cc.protocol == weir_config::UpstreamProtocol::H2;
    let tls = match &cc.tls {
        Some(t) => {
            let ca = t.ca.as_ref().map(|p| loaded.resolve(p));
            let config = crate::tls::client_config(ca.as_deref(), t.insecure_skip_verify, h2)
                .map_err(|e| loaded.error_at(at("tls.ca"), e))?;
            let sni = match &t.sni {
                Some(s) => Some(rustls_pki_types::ServerName::try_from(s.clone()).map_err(
                    |e| loaded.error_at(at("tls.sni"), format!("invalid server name: {e}")),
                )?),
                None => None,
            };
            Some(TlsClient { config, sni })
        }
        None => None,
    };
    let scheme = if tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let connector_tls = tls.clone();
    let conn_limit = cc.limits.max_connections.map(|max| {
        Arc::new(crate::connector::ConnLimit::new(
            max,
            cc.limits.max_pending.unwrap_or(1024),
            cc.timeouts.request,
            registry.cluster(&cc.name),
        ))
    });
    let connector = Connector {
        timeout: cc.timeouts.connect,
        tls,
        stats: Arc::new(stats),
        fixed: None,
        limit: conn_limit.clone(),
    };
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(cc.timeouts.idle)
        .pool_max_idle_per_host(cc.max_idle_per_endpoint)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // We set Host ourselves (the client's own would name the endpoint, not the site).
        .set_host(false)
        .http2_only(h2);
    if h2 {
        // A black-holed HTTP/2 connection answers nothing, not even a reset: PINGs find it.
        builder
            .http2_keep_alive_interval(cc.timeouts.ping_interval)
            .http2_keep_alive_timeout(cc.timeouts.ping_timeout)
            .http2_keep_alive_while_idle(true);
    }
    if h2 {
        for ep in &mut endpoints {
            let fixed = Connector {
                fixed: Some(ep.authority.clone()),
                ..connector.clone()
            };
            ep.h2_client = Some(builder.build(fixed));
        }
    }
    let native = (!h2 && cc.client == weir_config::Http1Client::Native).then(|| {
        let uris = endpoints.iter().map(|ep| {
            Uri::builder()
                .scheme(scheme.clone())
                .authority(ep.authority.clone())
                .path_and_query("/")
                .build()
                .expect("scheme and authority are valid")
        });
        crate::h1::Client::new(
            connector.clone(),
            uris,
            cc.max_idle_per_endpoint,
            cc.timeouts.idle,
        )
    });
    let client = builder.build(connector);
    Ok(Cluster {
        name: cc.name.as_str().into(),
        balancer: Arc::new(balancer),
        endpoints,
        client,
        native,
        scheme,
        h2,
        hash_on: cc
            .hash_on
            .clone()
            .or(cc.lb.is_hash().then_some(HashOn::ClientIp)),
        health: cc.health.clone(),
        body_timeout: cc.timeouts.body,
        connect_timeout: cc.timeouts.connect,
        retry: crate::retry::RetryPolicy::new(&cc.retries),
        stats: registry.cluster(&cc.name),
        max_requests: cc.limits.max_requests,
        tls: connector_tls,
        conn_limit,
        fingerprint: Fingerprint::of(loaded, cc),
    })
}

/// Loads every filter module once and builds each route's chain; routes that use a filter with
/// the same effective config share one pool of instances. A pool of `previous` with the same
/// module and spec is taken over, so a change elsewhere in the config (a route switched off, a
/// cluster edited) leaves running filters' instances alone.
async fn build_chains(
    loaded: &LoadedConfig,
    registry: &Registry,
    runtime: Option<&weir_filters::Runtime>,
    uploads: &Uploads,
    previous: Option<&Snapshot>,
) -> Result<(Vec<Option<Arc<weir_filters::Chain>>>, Vec<LoadedFilter>), ConfigError> {
    let c = &loaded.config;
    if c.filters.is_empty() {
        return Ok((vec![None; c.routes.len()], Vec::new()));
    }
    let Some(rt) = runtime else {
        return Err(loaded.error_at("filters", "the filter runtime is not available"));
    };
    let mut modules = HashMap::new();
    let mut infos = Vec::with_capacity(c.filters.len());
    for (i, f) in c.filters.iter().enumerate() {
        let (m, source) = match uploads.get(&f.name) {
            Some(bytes) => (
                rt.load(&f.name, bytes).map_err(|e| {
                    loaded.error_at(
                        format!("filters[{i}].module"),
                        format!("uploaded module: {e:#}"),
                    )
                })?,
                "api",
            ),
            None => {
                let path = loaded.resolve(&f.module);
                let m = rt.load_file(&f.name, &path).map_err(|e| {
                    loaded.error_at(
                        format!("filters[{i}].module"),
                        format!("{}: {e:#}", path.display()),
                    )
                })?;
                (m, "file")
            }
        };
        infos.push(LoadedFilter {
            name: f.name.clone(),
            module: m.clone(),
            source,
        });
        modules.insert(f.name.as_str(), (m, f));
    }
    let mut pools: HashMap<(String, String), Arc<weir_filters::InstancePool>> = HashMap::new();
    let mut chains = Vec::with_capacity(c.routes.len());
    for (i, r) in c.routes.iter().enumerate() {
        if r.filters.is_empty() {
            chains.push(None);
            continue;
        }
        let mut links = Vec::with_capacity(r.filters.len());
        for (j, fref) in r.filters.iter().enumerate() {
            let (module, f) = &modules[fref.name.as_str()];
            let mut effective = match &fref.config {
                Some(over) => weir_config::merge_json(&f.config, over),
                None => f.config.clone(),
            };
            // Filters cannot read files; the host inlines the ones their config names.
            inline_files(&mut effective, loaded)
                .map_err(|e| loaded.error_at(format!("routes[{i}].filters[{j}]"), e))?;
            let json = effective.to_string();
            let key = (f.name.clone(), json.clone());
            let pool = match pools.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let spec = weir_filters::FilterSpec {
                        filter: f.name.as_str().into(),
                        config: json,
                        memory: f.limits.memory.bytes() as usize,
                        time_per_phase: f.limits.time_per_phase,
                        max_body: f.limits.max_body.bytes() as usize,
                        max_instances: f.limits.max_instances,
                        on_error: f.on_error,
                        grants: f.grants.clone(),
                    };
                    let kept = previous.and_then(|s| {
                        s.routes
                            .iter()
                            .filter_map(|r| r.chain.as_deref())
                            .flat_map(|c| c.pools())
                            .find(|p| p.serves(module, &spec))
                            .cloned()
                    });
                    let p = match kept {
                        Some(p) => p,
                        None => weir_filters::InstancePool::new(rt, module.clone(), spec)
                            .await
                            .map_err(|e| {
                                loaded.error_at(
                                    format!("routes[{i}].filters[{j}]"),
                                    scrub(&e, &effective),
                                )
                            })?,
                    };
                    pools.insert(key, p.clone());
                    p
                }
            };
            links.push((pool, registry.filter(&f.name, &r.name)));
        }
        chains.push(Some(Arc::new(weir_filters::Chain::new(links))));
    }
    Ok((chains, infos))
}

/// Replaces every `{ "$json_file": PATH }` in a filter's config with the parsed contents of PATH
/// (relative to the config file) — a JWKS document, a key list — and every
/// `{ "$text_file": PATH }` with the file's text (a PEM key).
fn inline_files(v: &mut serde_json::Value, loaded: &LoadedConfig) -> Result<(), String> {
    match v {
        serde_json::Value::Object(map)
            if map.len() == 1
                && (map.contains_key("$json_file") || map.contains_key("$text_file")) =>
        {
            let (kind, path) = map
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap_or_default();
            let Some(path) = path.as_str() else {
                return Err(format!("{kind} takes a file path"));
            };
            let full =
                confined(loaded, Path::new(path)).map_err(|e| format!("{kind} {path:?}: {e}"))?;
            let text = std::fs::read_to_string(&full)
                .map_err(|e| format!("{kind} {}: {e}", full.display()))?;
            *v = if kind == "$json_file" {
                serde_json::from_str(&text)
                    .map_err(|e| format!("{kind} {}: invalid JSON: {e}", full.display()))?
            } else {
                serde_json::Value::String(text)
            };
            Ok(())
        }
        serde_json::Value::Object(map) => {
            map.values_mut().try_for_each(|x| inline_files(x, loaded))
        }
        serde_json::Value::Array(items) => {
            items.iter_mut().try_for_each(|x| inline_files(x, loaded))
        }
        _ => Ok(()),
    }
}

/// A `$json_file` / `$text_file` path, resolved against the config file's folder, which it must
/// not leave (after symlinks): the config names files beside it, not anywhere on the host.
fn confined(loaded: &LoadedConfig, path: &Path) -> Result<std::path::PathBuf, String> {
    let dir = loaded
        .file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("the config's folder: {e}"))?;
    let full = loaded
        .resolve(path)
        .canonicalize()
        .map_err(|e| e.to_string())?;
    if !full.starts_with(&dir) {
        return Err(format!(
            "must name a file in the config file's folder ({})",
            dir.display()
        ));
    }
    Ok(full)
}

/// Strings of a filter's config at least this long are masked in its messages.
const SCRUB_MIN_CHARS: usize = 12;

/// A filter's message about its config with that config's secrets masked: filters (and the
/// serde errors of their SDKs) quote what they refuse, and the message reaches `weir validate`,
/// logs and the admin API. Every string of the config (values at any depth, object keys, each
/// line of a multi-line value such as an inlined PEM) of at least [`SCRUB_MIN_CHARS`]
/// characters becomes `<redacted>` (keys that read like field names excepted), also when quoted with Rust or JSON escapes. Shorter strings
/// stay, so `alg: unknown algorithm "PS256"` still says what is wrong.
pub(crate) fn scrub(message: &str, config: &serde_json::Value) -> String {
    fn add(s: &str, out: &mut Vec<String>) {
        for part in std::iter::once(s).chain(s.lines().map(str::trim)) {
            if part.chars().count() >= SCRUB_MIN_CHARS {
                out.push(part.to_string());
                // As `{:?}` and JSON would quote it (without the quotes).
                for quoted in [
                    format!("{part:?}"),
                    serde_json::Value::from(part).to_string(),
                ] {
                    out.push(quoted[1..quoted.len() - 1].to_string());
                }
            }
        }
    }
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => add(s, out),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    // A key may be a secret (`keys: { <api key>: alice }`); one that reads like
                    // a field name (`password_hash`) stays, so a path in a message still names
                    // the field.
                    if !is_field_name(k) {
                        add(k, out);
                    }
                    collect(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    let mut secrets = Vec::new();
    collect(config, &mut secrets);
    // Longest first: a secret that contains another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let mut out = message.to_string();
    for s in &secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), weir_config::REDACTED);
        }
    }
    out
}

/// Lower-case letters with `_` or `-` between, at most 32: how a config's field names look, and
/// how generated keys and secrets (digits, upper case, length) do not.
fn is_field_name(k: &str) -> bool {
    k.len() <= 32
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-')
}

/// Whether a JSON value holds a `$json_file` or `$text_file` reference anywhere.
pub(crate) fn names_a_file(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(map) => {
            map.contains_key("$json_file")
                || map.contains_key("$text_file")
                || map.values().any(names_a_file)
        }
        serde_json::Value::Array(items) => items.iter().any(names_a_file),
        _ => false,
    }
}

/// Loads every certificate of an https listener, reporting failures at the config line.
pub fn listener_tls(
    loaded: &LoadedConfig,
    i: usize,
) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    let l = &loaded.config.listeners[i];
    let Some(tls) = &l.tls else { return Ok(None) };
    let mut keys = Vec::with_capacity(tls.certificates.len());
    for (j, c) in tls.certificates.iter().enumerate() {
        let ck = crate::tls::load_certified_key(&loaded.resolve(&c.cert), &loaded.resolve(&c.key))
            .map_err(|e| loaded.error_at(format!("listeners[{i}].tls.certificates[{j}]"), e))?;
        keys.push(ck);
    }
    crate::tls::server_config(keys)
        .map(Some)
        .map_err(|e| loaded.error_at(format!("listeners[{i}].tls"), e))
}

/// Checks everything `weir run` would load — certificates, filter modules, each filter's
/// `configure` with its effective config — without binding or serving anything.
pub async fn check(loaded: &LoadedConfig) -> Result<(), ConfigError> {
    for i in 0..loaded.config.listeners.len() {
        listener_tls(loaded, i)?;
    }
    let registry = Registry::new();
    let mut no_log = loaded.clone();
    // Opening the access log would create the file; validation must not have side effects.
    if let Some(path) = no_log.config.access_log.take().and_then(|a| a.path)
        && !matches!(path.as_str(), "stdout" | "stderr")
    {
        let p = Path::new(&path);
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(loaded.error_at(
                "access_log.path",
                format!("folder {} does not exist", dir.display()),
            ));
        }
    }
    let runtime = filter_runtime(loaded, None, registry.clone())
        .map_err(|e| loaded.error_at("filters", format!("{e:#}")))?;
    Snapshot::build(no_log, &registry, runtime.as_ref(), &Uploads::new(), None)
        .await
        .map(|_| ())
}

/// The Redis state backend a config asks for. The previous snapshot's is kept (connections and
/// all) when `state` did not change; a new one connects only once it is published.
fn build_state(
    loaded: &LoadedConfig,
    registry: &Registry,
    previous: Option<&Snapshot>,
) -> Result<Option<Arc<weir_filters::Redis>>, ConfigError> {
    let c = &loaded.config.state;
    if c.backend == weir_config::StateBackend::Embedded {
        return Ok(None);
    }
    let tls = c.tls.as_ref().map(|t| state_tls(loaded, t)).transpose()?;
    // Unchanged config and unchanged files: keep the connections.
    let kept = previous
        .and_then(|p| p.state.clone())
        .filter(|r| r.config() == c && r.tls() == tls.as_ref());
    if kept.is_some() {
        return Ok(kept);
    }
    let field = if tls.is_some() {
        "state.tls"
    } else {
        "state.url"
    };
    let redis = weir_filters::Redis::new(c, tls, registry.state())
        .map_err(|e| loaded.error_at(field, format!("{e:#}")))?;
    Ok(Some(Arc::new(redis)))
}

/// Reads and checks the PEM files `state.tls` names. Errors name the field and the file, never
/// what is in it.
fn state_tls(
    loaded: &LoadedConfig,
    t: &weir_config::StateTls,
) -> Result<weir_filters::RedisTls, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |field: &str, path: &std::path::Path| {
        let path = loaded.resolve(path);
        std::fs::read(&path).map_err(|e| {
            loaded.error_at(
                format!("state.tls.{field}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let certs = |field: &str, path: &std::path::Path| {
        let pem = read(field, path)?;
        let n = CertificateDer::pem_slice_iter(&pem)
            .map(|c| c.map(|_| ()))
            .collect::<Result<Vec<()>, _>>()
            .map_or(0, |v| v.len());
        if n == 0 {
            return Err(loaded.error_at(
                format!("state.tls.{field}"),
                format!("{}: no PEM certificate in it", path.display()),
            ));
        }
        Ok(pem)
    };
    let ca = t.ca.as_deref().map(|p| certs("ca", p)).transpose()?;
    let client = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let chain = certs("cert", cert)?;
            let pem = read("key", key)?;
            if PrivateKeyDer::from_pem_slice(&pem).is_err() {
                return Err(loaded.error_at(
                    "state.tls.key",
                    format!("{}: no PEM private key in it", key.display()),
                ));
            }
            Some((chain, pem))
        }
        _ => None,
    };
    Ok(weir_filters::RedisTls { ca, client })
}

/// A filter runtime for a config that uses filters (`None` when no route has any).
pub fn filter_runtime(
    loaded: &LoadedConfig,
    callouts: Option<Arc<dyn weir_filters::Callouts>>,
    registry: Registry,
) -> anyhow::Result<Option<weir_filters::Runtime>> {
    if loaded.config.filters.is_empty() {
        return Ok(None);
    }
    let cache_dir = match &loaded.config.filter_cache {
        Some(p) => Some(loaded.resolve(p)),
        None => weir_filters::Runtime::default_cache_dir(),
    };
    let rt = weir_filters::Runtime::new(weir_filters::RuntimeOptions {
        cache_dir,
        callouts,
        registry,
        max_instances: loaded.config.filter_instances.unwrap_or(1000),
        ..Default::default()
    })?;
    Ok(Some(rt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_configs_inline_named_files() {
        let dir = std::env::temp_dir().join(format!("weir-inline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("jwks.json"), r#"{"keys":[{"kid":"a"}]}"#).unwrap();
        std::fs::write(dir.join("key.pem"), "PEM").unwrap();
        let loaded = LoadedConfig::from_str(&dir.join("weir.yaml"), "{}").unwrap();
        let mut v = serde_json::json!({
            "jwks": { "$json_file": "jwks.json" },
            "keys": [ { "public_key_pem": { "$text_file": "key.pem" } } ],
            "other": { "$json_file": "x", "more": 1 }
        });
        inline_files(&mut v, &loaded).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "jwks": { "keys": [ { "kid": "a" } ] },
                "keys": [ { "public_key_pem": "PEM" } ],
                "other": { "$json_file": "x", "more": 1 }
            })
        );
        let mut bad = serde_json::json!({ "jwks": { "$json_file": "missing.json" } });
        assert!(
            inline_files(&mut bad, &loaded)
                .unwrap_err()
                .contains("missing.json")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn inlined_files_stay_in_the_config_folder() {
        let root = std::env::temp_dir().join(format!("weir-confine-{}", std::process::id()));
        let dir = root.join("conf");
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        std::fs::write(root.join("secret.txt"), "TOP-SECRET").unwrap();
        std::fs::write(dir.join("keys/key.pem"), "PEM").unwrap();
        let loaded = LoadedConfig::from_str(&dir.join("weir.yaml"), "{}").unwrap();
        let mut ok = serde_json::json!({ "k": { "$text_file": "keys/key.pem" } });
        inline_files(&mut ok, &loaded).unwrap();
        assert_eq!(ok, serde_json::json!({ "k": "PEM" }));
        let outside = root.join("secret.txt").display().to_string();
        for path in ["../secret.txt", "keys/../../secret.txt", outside.as_str()] {
            let mut v = serde_json::json!({ "k": { "$text_file": path } });
            let err = inline_files(&mut v, &loaded).unwrap_err();
            assert!(
                err.contains("must name a file in the config file's folder"),
                "{path}: {err}"
            );
            assert!(!err.contains("TOP-SECRET"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn filter_messages_never_quote_a_secret_of_their_config() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
        let config = serde_json::json!({
            "alg": "PS256",
            "users": [ { "password_hash": "sha256:x" } ],
            "keys": { "api-key-0123456789": "alice" },
            "secret": "hmac-secret-with \"quotes\" and \\ backslash",
            "nested": [ { "pem": pem } ],
        });
        let cases = [
            (
                "keys[0].alg: unknown algorithm \"PS256\"",
                "keys[0].alg: unknown algorithm \"PS256\"",
            ),
            (
                "users[0].password_hash: unknown format",
                "users[0].password_hash: unknown format",
            ),
            (
                "unknown consumer for api-key-0123456789",
                "unknown consumer for <redacted>",
            ),
            (
                "secret: invalid: \"hmac-secret-with \\\"quotes\\\" and \\\\ backslash\"",
                "secret: invalid: \"<redacted>\"",
            ),
            (
                "invalid type: string \"hmac-secret-with \\\"quotes\\\" and \\\\ backslash\", expected u16",
                "invalid type: string \"<redacted>\", expected u16",
            ),
            (
                "bad key line MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
                "bad key line <redacted>",
            ),
            (&format!("pem: {pem:?}"), "pem: \"<redacted>\""),
        ];
        for (message, want) in cases {
            assert_eq!(scrub(message, &config), want, "{message}");
        }
    }

    #[test]
    fn file_references_are_found_at_any_depth() {
        assert!(names_a_file(
            &serde_json::json!({ "a": [ { "b": { "$text_file": "x" } } ] })
        ));
        assert!(names_a_file(&serde_json::json!({ "$json_file": "x" })));
        assert!(!names_a_file(
            &serde_json::json!({ "a": [ "$text_file" ], "b": { "c": 1 } })
        ));
    }
}
