use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use dashmap::DashMap;

/// Request latency bucket upper bounds, in microseconds (Prometheus `le` is rendered in seconds).
pub const REQUEST_BUCKETS_US: &[u64] = &[
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Filter call bucket upper bounds, in microseconds: filters are expected to take microseconds.
pub const FILTER_BUCKETS_US: &[u64] = &[
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000, 25_000, 100_000, 1_000_000,
];

/// A fixed-bucket latency histogram of atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(REQUEST_BUCKETS_US)
    }
}

impl Histogram {
    /// A histogram with these bucket upper bounds (microseconds, ascending).
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        // Non-cumulative storage: one increment per observation; rendering accumulates.
        if let Some(i) = self.bounds.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut acc = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            acc += self.buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{}\"}} {acc}",
                *b as f64 / 1e6
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Per-route counters: responses by status code and latency to the response head.
#[derive(Debug)]
pub struct RouteStats {
    route: String,
    cluster: String,
    by_status: Box<[AtomicU64]>,
    latency: Histogram,
    /// Requests answered because the route was disabled.
    disabled: AtomicU64,
}

impl RouteStats {
    fn new(route: &str, cluster: &str) -> Self {
        RouteStats {
            route: route.to_string(),
            cluster: cluster.to_string(),
            by_status: (0..600).map(|_| AtomicU64::new(0)).collect(),
            latency: Histogram::default(),
            disabled: AtomicU64::new(0),
        }
    }

    /// Counts one finished request.
    pub fn record(&self, status: u16, latency: Duration) {
        if let Some(c) = self.by_status.get(status as usize) {
            c.fetch_add(1, Relaxed);
        }
        self.latency.observe(latency);
    }

    /// Counts a request answered because the route is disabled.
    pub fn count_disabled(&self) {
        self.disabled.fetch_add(1, Relaxed);
    }

    /// Requests seen with this status.
    pub fn count(&self, status: u16) -> u64 {
        self.by_status
            .get(status as usize)
            .map_or(0, |c| c.load(Relaxed))
    }
}

/// A gauge of open connections plus a counter of all ever opened.
#[derive(Debug, Default)]
pub struct ConnGauge {
    active: AtomicI64,
    total: AtomicU64,
}

impl ConnGauge {
    /// A connection opened.
    pub fn open(&self) {
        self.active.fetch_add(1, Relaxed);
        self.total.fetch_add(1, Relaxed);
    }
    /// A connection closed.
    pub fn close(&self) {
        self.active.fetch_sub(1, Relaxed);
    }
    /// Connections open now.
    pub fn active(&self) -> i64 {
        self.active.load(Relaxed)
    }
    /// Connections opened since start.
    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }
}

/// Per upstream endpoint: pooled connections and failures.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Upstream connections (pooled or busy).
    pub connections: ConnGauge,
    /// Connect attempts that failed.
    pub connect_failures: AtomicU64,
    /// In rotation: neither ejected nor failing active health checks.
    pub healthy: std::sync::atomic::AtomicBool,
}

/// Per upstream cluster: retries. Kept across reloads (by cluster name), so a reload does not
/// reset the retry budget.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Tries after the first.
    pub retries: AtomicU64,
    /// Failed tries that were not retried because the retry budget was spent.
    pub retries_over_budget: AtomicU64,
    /// Requests answered 503 because the cluster was at `limits.max_requests`.
    pub overflow_requests: AtomicU64,
    /// Requests answered 503 because the cluster was at `limits.max_connections` with
    /// `max_pending` requests already waiting.
    pub overflow_connections: AtomicU64,
    /// Requests in flight now, counted while `limits.max_requests` is set.
    pub requests: std::sync::atomic::AtomicUsize,
    /// Retries in flight now.
    pub retrying: std::sync::atomic::AtomicUsize,
}

/// Per downstream listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Downstream connections.
    pub connections: ConnGauge,
    /// L4 listeners: bytes relayed from clients to upstreams.
    pub bytes_received: AtomicU64,
    /// L4 listeners: bytes relayed from upstreams to clients.
    pub bytes_sent: AtomicU64,
    /// L4 listeners: connections for which no endpoint could be connected.
    pub connect_failures: AtomicU64,
    /// Connections closed before they were served, by [`Refusal`].
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl ListenerStats {
    /// A connection was closed before it was served, for `why`.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }
    /// Connections refused for `why` so far.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Relaxed)
    }
}

/// Why a listener closed a connection before serving it (`weir_listener_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A trusted peer's PROXY header was missing, malformed or too slow.
    ProxyProtocol,
    /// A `tls_passthrough` connection did not open with a TLS ClientHello.
    NotTls,
    /// The ClientHello was malformed or too large.
    ClientHello,
    /// No `sni` entry takes the ClientHello's server name.
    NoRoute,
    /// The first flight (PROXY header or ClientHello) did not arrive in
    /// `limits.request_head_timeout`.
    Timeout,
}

impl Refusal {
    /// Every reason, in rendering order.
    pub const ALL: [Refusal; 5] = [
        Refusal::ProxyProtocol,
        Refusal::NotTls,
        Refusal::ClientHello,
        Refusal::NoRoute,
        Refusal::Timeout,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ProxyProtocol => "proxy_protocol",
            Refusal::NotTls => "not_tls",
            Refusal::ClientHello => "client_hello",
            Refusal::NoRoute => "no_route",
            Refusal::Timeout => "timeout",
        }
    }
}

/// Per (filter, route): calls, call durations, failures by kind, budget breaches.
#[derive(Debug)]
pub struct FilterStats {
    filter: String,
    route: String,
    calls: AtomicU64,
    duration: Histogram,
    failures: DashMap<&'static str, AtomicU64>,
    breaches: AtomicU64,
}

impl FilterStats {
    /// One phase call that took `d`.
    pub fn call(&self, d: Duration) {
        self.calls.fetch_add(1, Relaxed);
        self.duration.observe(d);
    }

    /// A failed call; `budget` when it was a budget breach (deadline, memory, body).
    pub fn fail(&self, kind: &'static str, budget: bool) {
        self.failures.entry(kind).or_default().fetch_add(1, Relaxed);
        if budget {
            self.breaches.fetch_add(1, Relaxed);
        }
    }

    /// Calls so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    /// Failures of this kind so far.
    pub fn failures(&self, kind: &str) -> u64 {
        self.failures.get(kind).map_or(0, |c| c.load(Relaxed))
    }
}

#[derive(Debug)]
enum Custom {
    Counter(AtomicU64),
    Gauge(AtomicI64),
    Histogram(Histogram),
}

/// One series of a filter's own metric, resolved. Each operation applies only to its kind
/// (adding to a gauge does nothing: the host checks kinds before it resolves a series).
#[derive(Debug, Clone)]
pub struct FilterSeries(Arc<Custom>);

impl FilterSeries {
    /// Adds to a counter.
    pub fn add(&self, delta: u64) {
        if let Custom::Counter(c) = &*self.0 {
            c.fetch_add(delta, Relaxed);
        }
    }

    /// Sets a gauge.
    pub fn set(&self, value: i64) {
        if let Custom::Gauge(g) = &*self.0 {
            g.store(value, Relaxed);
        }
    }

    /// Records a histogram observation, in seconds.
    pub fn observe(&self, seconds: f64) {
        if let Custom::Histogram(h) = &*self.0 {
            h.observe(Duration::from_secs_f64(seconds.clamp(0.0, 1e6)));
        }
    }
}

/// Filter-defined metric histograms: seconds, from 100µs to 10s.
const CUSTOM_BUCKETS_US: &[u64] = &[
    100, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000, 10_000_000,
];

/// Bytes of idle connection buffers the HTTP/1.1 server keeps pooled for reuse (process-wide:
/// the pools are per worker thread, each bounded), `weir_buffer_pool_bytes`.
pub static BUFFER_POOL_BYTES: AtomicU64 = AtomicU64::new(0);

/// All metrics of the process. Cheap to clone (an `Arc` inside).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    routes: DashMap<(String, String), Arc<RouteStats>>,
    endpoints: DashMap<(String, String), Arc<EndpointStats>>,
    clusters: DashMap<String, Arc<ClusterStats>>,
    listeners: DashMap<String, Arc<ListenerStats>>,
    /// Requests that matched no route, by status.
    unrouted: DashMap<u16, AtomicU64>,
    filters: DashMap<(String, String), Arc<FilterStats>>,
    /// (filter, metric name, rendered labels) → value.
    custom: DashMap<CustomKey, Arc<Custom>>,
    /// (filter, limit) → host calls refused for going past that bound.
    filter_limits: DashMap<(String, &'static str), AtomicU64>,
    timeouts: Timeouts,
    /// Requests waiting for an instance, by filter.
    queues: DashMap<String, Arc<crate::QueueStats>>,
    /// Access log lines dropped because the writer fell behind.
    access_log_dropped: Arc<AtomicU64>,
    /// The shared-state backend.
    state: Arc<crate::StateStats>,
    /// The span exporter.
    traces: Arc<crate::TraceStats>,
    /// The access log's Kafka sink.
    kafka: Arc<crate::KafkaStats>,
}

/// The registry's timeout counters, `'static` so every body and connection can hold them for
/// free. One small allocation per registry (one per server) is never freed.
#[derive(Debug)]
struct Timeouts(&'static crate::TimeoutStats);

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts(Box::leak(Box::default()))
    }
}

impl Registry {
    /// A new, empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The shared-state backend's metrics (`weir_state_*`).
    pub fn state(&self) -> Arc<crate::StateStats> {
        self.inner.state.clone()
    }

    /// The span exporter's metrics (`weir_trace_spans_*`).
    pub fn traces(&self) -> Arc<crate::TraceStats> {
        self.inner.traces.clone()
    }

    /// The access log's Kafka sink's metrics (`weir_access_log_kafka_*`).
    pub fn kafka(&self) -> Arc<crate::KafkaStats> {
        self.inner.kafka.clone()
    }

    /// Access log lines dropped because the writer fell behind (`weir_access_log_dropped_total`).
    pub fn access_log_dropped(&self) -> Arc<AtomicU64> {
        self.inner.access_log_dropped.clone()
    }

    /// The queue in front of a filter's instances (`weir_filter_queue_*`).
    pub fn filter_queue(&self, filter: &str) -> Arc<crate::QueueStats> {
        self.inner
            .queues
            .entry(filter.to_string())
            .or_default()
            .clone()
    }

    /// Counters of deadlines that fired (`weir_timeouts_total`).
    pub fn timeouts(&self) -> &'static crate::TimeoutStats {
        self.inner.timeouts.0
    }

    /// Stats for a route (and the cluster it points at); created on first use, kept across reloads.
    pub fn route(&self, route: &str, cluster: &str) -> Arc<RouteStats> {
        let key = (route.to_string(), cluster.to_string());
        self.inner
            .routes
            .entry(key)
            .or_insert_with(|| Arc::new(RouteStats::new(route, cluster)))
            .clone()
    }

    /// Stats for one endpoint of a cluster.
    pub fn endpoint(&self, cluster: &str, address: &str) -> Arc<EndpointStats> {
        let key = (cluster.to_string(), address.to_string());
        self.inner.endpoints.entry(key).or_default().clone()
    }

    /// Stats for a cluster.
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        self.inner
            .clusters
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Stats for a listener.
    pub fn listener(&self, name: &str) -> Arc<ListenerStats> {
        self.inner
            .listeners
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Stats for a filter on a route.
    pub fn filter(&self, filter: &str, route: &str) -> Arc<FilterStats> {
        let key = (filter.to_string(), route.to_string());
        self.inner
            .filters
            .entry(key)
            .or_insert_with(|| {
                Arc::new(FilterStats {
                    filter: filter.to_string(),
                    route: route.to_string(),
                    calls: AtomicU64::new(0),
                    duration: Histogram::new(FILTER_BUCKETS_US),
                    failures: DashMap::new(),
                    breaches: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// The filter metric `(filter, name, labels)`, created by `make` on first use. Found
    /// without allocating: the key is built (and its labels rendered) only for a new series.
    fn custom(
        &self,
        filter: &str,
        name: &str,
        labels: &[(String, String)],
        make: impl FnOnce() -> Custom,
    ) -> FilterSeries {
        let view: (&str, &str, &[(String, String)]) = (filter, name, labels);
        if let Some(e) = self.inner.custom.get(&view as &dyn KeyView) {
            return FilterSeries(e.clone());
        }
        let e = self
            .inner
            .custom
            .entry(CustomKey::new(filter, name, labels))
            .or_insert_with(|| Arc::new(make()));
        FilterSeries(e.clone())
    }

    /// A filter's own counter (`weir_filter_<name>`), resolved: keep it to add to it without
    /// a look-up (series are never removed).
    pub fn filter_counter(
        &self,
        filter: &str,
        name: &str,
        labels: &[(String, String)],
    ) -> FilterSeries {
        self.custom(filter, name, labels, || Custom::Counter(AtomicU64::new(0)))
    }

    /// A filter's own gauge, resolved (see [`Registry::filter_counter`]).
    pub fn filter_gauge(
        &self,
        filter: &str,
        name: &str,
        labels: &[(String, String)],
    ) -> FilterSeries {
        self.custom(filter, name, labels, || Custom::Gauge(AtomicI64::new(0)))
    }

    /// A filter's own histogram (values in seconds), resolved (see [`Registry::filter_counter`]).
    pub fn filter_histogram(
        &self,
        filter: &str,
        name: &str,
        labels: &[(String, String)],
    ) -> FilterSeries {
        self.custom(filter, name, labels, || {
            Custom::Histogram(Histogram::new(CUSTOM_BUCKETS_US))
        })
    }

    /// Counts a host call refused because a filter went past a bound (`limit`: `kv_key_bytes`,
    /// `metric_series`, ...), as `weir_filter_limit_rejections_total{filter,limit}`.
    pub fn filter_limit_hit(&self, filter: &str, limit: &'static str) {
        self.inner
            .filter_limits
            .entry((filter.to_string(), limit))
            .or_default()
            .fetch_add(1, Relaxed);
    }

    /// Host calls of `filter` refused for going past `limit` so far.
    pub fn filter_limit_hits(&self, filter: &str, limit: &'static str) -> u64 {
        self.inner
            .filter_limits
            .get(&(filter.to_string(), limit))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Counts a request that matched no route (rare: a map lookup is fine here).
    pub fn record_unrouted(&self, status: u16) {
        self.inner
            .unrouted
            .entry(status)
            .or_default()
            .fetch_add(1, Relaxed);
    }

    /// Renders every metric in the Prometheus text exposition format (0.0.4).
    pub fn render(&self, version: &str) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str(
            "# HELP weir_build_info Weir build information.\n# TYPE weir_build_info gauge\n",
        );
        let _ = writeln!(out, "weir_build_info{{version=\"{}\"}} 1", escape(version));

        let mut routes: Vec<Arc<RouteStats>> = self
            .inner
            .routes
            .iter()
            .map(|e| e.value().clone())
            .collect();
        routes.sort_by(|a, b| (&a.route, &a.cluster).cmp(&(&b.route, &b.cluster)));
        out.push_str(
            "# HELP weir_requests_total Requests answered, by route, cluster and status.\n",
        );
        out.push_str("# TYPE weir_requests_total counter\n");
        for r in &routes {
            for (status, c) in r.by_status.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "weir_requests_total{{route=\"{}\",cluster=\"{}\",status=\"{status}\"}} {n}",
                        escape(&r.route),
                        escape(&r.cluster)
                    );
                }
            }
        }
        let mut unrouted: Vec<(u16, u64)> = self
            .inner
            .unrouted
            .iter()
            .map(|e| (*e.key(), e.value().load(Relaxed)))
            .collect();
        unrouted.sort();
        for (status, n) in unrouted {
            let _ = writeln!(
                out,
                "weir_requests_total{{route=\"\",cluster=\"\",status=\"{status}\"}} {n}"
            );
        }

        out.push_str("# HELP weir_route_disabled_requests_total Requests a disabled route answered itself.\n# TYPE weir_route_disabled_requests_total counter\n");
        for r in &routes {
            let n = r.disabled.load(Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "weir_route_disabled_requests_total{{route=\"{}\",cluster=\"{}\"}} {n}",
                    escape(&r.route),
                    escape(&r.cluster)
                );
            }
        }

        out.push_str("# HELP weir_request_duration_seconds Time from request to response head, by route and cluster.\n");
        out.push_str("# TYPE weir_request_duration_seconds histogram\n");
        for r in &routes {
            let labels = format!(
                "route=\"{}\",cluster=\"{}\"",
                escape(&r.route),
                escape(&r.cluster)
            );
            r.latency
                .render(&mut out, "weir_request_duration_seconds", &labels);
        }

        let mut eps: Vec<((String, String), Arc<EndpointStats>)> = self
            .inner
            .endpoints
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        eps.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP weir_upstream_connections Upstream connections open now (pooled idle or busy).\n");
        out.push_str("# TYPE weir_upstream_connections gauge\n");
        for ((cluster, addr), s) in &eps {
            let _ = writeln!(
                out,
                "weir_upstream_connections{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                escape(cluster),
                escape(addr),
                s.connections.active()
            );
        }
        out.push_str(
            "# HELP weir_upstream_connections_opened_total Upstream connections opened.\n",
        );
        out.push_str("# TYPE weir_upstream_connections_opened_total counter\n");
        for ((cluster, addr), s) in &eps {
            let _ = writeln!(
                out,
                "weir_upstream_connections_opened_total{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                escape(cluster),
                escape(addr),
                s.connections.total()
            );
        }
        out.push_str("# HELP weir_endpoint_healthy 1 while the endpoint takes traffic (not ejected, probes passing).\n# TYPE weir_endpoint_healthy gauge\n");
        for ((cluster, addr), s) in &eps {
            let _ = writeln!(
                out,
                "weir_endpoint_healthy{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                escape(cluster),
                escape(addr),
                u8::from(s.healthy.load(Relaxed))
            );
        }
        out.push_str(
            "# HELP weir_upstream_connect_failures_total Failed upstream connect attempts.\n",
        );
        out.push_str("# TYPE weir_upstream_connect_failures_total counter\n");
        for ((cluster, addr), s) in &eps {
            let _ = writeln!(
                out,
                "weir_upstream_connect_failures_total{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                escape(cluster),
                escape(addr),
                s.connect_failures.load(Relaxed)
            );
        }

        let mut clusters: Vec<(String, Arc<ClusterStats>)> = self
            .inner
            .clusters
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        clusters.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP weir_upstream_retries_total Upstream tries after the first.\n# TYPE weir_upstream_retries_total counter\n");
        for (cluster, s) in &clusters {
            let _ = writeln!(
                out,
                "weir_upstream_retries_total{{cluster=\"{}\"}} {}",
                escape(cluster),
                s.retries.load(Relaxed)
            );
        }
        out.push_str("# HELP weir_upstream_retries_over_budget_total Failed tries not retried because the retry budget was spent.\n# TYPE weir_upstream_retries_over_budget_total counter\n");
        for (cluster, s) in &clusters {
            let _ = writeln!(
                out,
                "weir_upstream_retries_over_budget_total{{cluster=\"{}\"}} {}",
                escape(cluster),
                s.retries_over_budget.load(Relaxed)
            );
        }

        out.push_str("# HELP weir_cluster_overflow_total Requests answered 503 because a cluster limit (circuit breaker) was reached.\n# TYPE weir_cluster_overflow_total counter\n");
        for (cluster, s) in &clusters {
            for (limit, n) in [
                ("requests", &s.overflow_requests),
                ("connections", &s.overflow_connections),
            ] {
                let _ = writeln!(
                    out,
                    "weir_cluster_overflow_total{{cluster=\"{}\",limit=\"{limit}\"}} {}",
                    escape(cluster),
                    n.load(Relaxed)
                );
            }
        }

        self.render_filters(&mut out);
        self.inner.timeouts.0.render(&mut out);
        self.render_queues(&mut out);
        self.inner.state.render(&mut out);
        self.inner.traces.render(&mut out);
        self.inner.kafka.render(&mut out);
        out.push_str("# HELP weir_access_log_dropped_total Access log lines dropped because the writer fell behind.\n# TYPE weir_access_log_dropped_total counter\n");
        let _ = writeln!(
            out,
            "weir_access_log_dropped_total {}",
            self.inner.access_log_dropped.load(Relaxed)
        );
        out.push_str("# HELP weir_buffer_pool_bytes Idle connection buffers kept for reuse (at most 2 MiB per worker thread).\n# TYPE weir_buffer_pool_bytes gauge\n");
        let _ = writeln!(
            out,
            "weir_buffer_pool_bytes {}",
            BUFFER_POOL_BYTES.load(Relaxed)
        );

        let mut ls: Vec<(String, Arc<ListenerStats>)> = self
            .inner
            .listeners
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        ls.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP weir_downstream_connections Downstream connections open now.\n");
        out.push_str("# TYPE weir_downstream_connections gauge\n");
        for (name, s) in &ls {
            let _ = writeln!(
                out,
                "weir_downstream_connections{{listener=\"{}\"}} {}",
                escape(name),
                s.connections.active()
            );
        }
        out.push_str("# HELP weir_downstream_connections_total Downstream connections accepted.\n");
        out.push_str("# TYPE weir_downstream_connections_total counter\n");
        for (name, s) in &ls {
            let _ = writeln!(
                out,
                "weir_downstream_connections_total{{listener=\"{}\"}} {}",
                escape(name),
                s.connections.total()
            );
        }
        for (metric, help, read) in [
            (
                "weir_listener_received_bytes_total",
                "Bytes relayed from clients to upstreams (tcp and tls_passthrough listeners).",
                (|s: &ListenerStats| s.bytes_received.load(Relaxed)) as fn(&ListenerStats) -> u64,
            ),
            (
                "weir_listener_sent_bytes_total",
                "Bytes relayed from upstreams to clients (tcp and tls_passthrough listeners).",
                |s| s.bytes_sent.load(Relaxed),
            ),
            (
                "weir_listener_connect_failures_total",
                "Connections no endpoint could be connected for (tcp and tls_passthrough listeners).",
                |s| s.connect_failures.load(Relaxed),
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (name, s) in &ls {
                let _ = writeln!(out, "{metric}{{listener=\"{}\"}} {}", escape(name), read(s));
            }
        }
        out.push_str("# HELP weir_listener_refused_total Connections closed before they were served, by reason.\n# TYPE weir_listener_refused_total counter\n");
        for (name, s) in &ls {
            for why in Refusal::ALL {
                let _ = writeln!(
                    out,
                    "weir_listener_refused_total{{listener=\"{}\",reason=\"{}\"}} {}",
                    escape(name),
                    why.as_str(),
                    s.refusals(why)
                );
            }
        }
        out
    }
}

impl Registry {
    fn render_queues(&self, out: &mut String) {
        let mut qs: Vec<(String, Arc<crate::QueueStats>)> = self
            .inner
            .queues
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        if qs.is_empty() {
            return;
        }
        qs.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str("# HELP weir_filter_queue_waiting Requests waiting for a free filter instance.\n# TYPE weir_filter_queue_waiting gauge\n");
        for (f, q) in &qs {
            q.render(out, f, crate::queues::Part::Waiting);
        }
        out.push_str("# HELP weir_filter_queue_wait_seconds How long requests waited for a filter instance.\n# TYPE weir_filter_queue_wait_seconds histogram\n");
        for (f, q) in &qs {
            q.render(out, f, crate::queues::Part::Wait);
        }
    }

    fn render_filters(&self, out: &mut String) {
        let mut fs: Vec<Arc<FilterStats>> = self
            .inner
            .filters
            .iter()
            .map(|e| e.value().clone())
            .collect();
        if !fs.is_empty() {
            fs.sort_by(|a, b| (&a.filter, &a.route).cmp(&(&b.filter, &b.route)));
            out.push_str("# HELP weir_filter_calls_total Filter phase calls, by filter and route.\n# TYPE weir_filter_calls_total counter\n");
            for f in &fs {
                let _ = writeln!(
                    out,
                    "weir_filter_calls_total{{filter=\"{}\",route=\"{}\"}} {}",
                    escape(&f.filter),
                    escape(&f.route),
                    f.calls()
                );
            }
            out.push_str("# HELP weir_filter_call_duration_seconds Filter phase call time.\n# TYPE weir_filter_call_duration_seconds histogram\n");
            for f in &fs {
                let labels = format!(
                    "filter=\"{}\",route=\"{}\"",
                    escape(&f.filter),
                    escape(&f.route)
                );
                f.duration
                    .render(out, "weir_filter_call_duration_seconds", &labels);
            }
            out.push_str("# HELP weir_filter_failures_total Filter traps and failures, by kind (deadline, memory, panic, trap, body_limit, instance_lost, instantiate).\n# TYPE weir_filter_failures_total counter\n");
            for f in &fs {
                let mut kinds: Vec<(&'static str, u64)> = f
                    .failures
                    .iter()
                    .map(|e| (*e.key(), e.value().load(Relaxed)))
                    .collect();
                kinds.sort();
                for (k, n) in kinds {
                    let _ = writeln!(
                        out,
                        "weir_filter_failures_total{{filter=\"{}\",route=\"{}\",kind=\"{k}\"}} {n}",
                        escape(&f.filter),
                        escape(&f.route)
                    );
                }
            }
            out.push_str("# HELP weir_filter_budget_breaches_total Calls stopped for breaking a budget (time, memory, body).\n# TYPE weir_filter_budget_breaches_total counter\n");
            for f in &fs {
                let _ = writeln!(
                    out,
                    "weir_filter_budget_breaches_total{{filter=\"{}\",route=\"{}\"}} {}",
                    escape(&f.filter),
                    escape(&f.route),
                    f.breaches.load(Relaxed)
                );
            }
        }
        let mut hits: Vec<((String, &'static str), u64)> = self
            .inner
            .filter_limits
            .iter()
            .map(|e| (e.key().clone(), e.value().load(Relaxed)))
            .collect();
        if !hits.is_empty() {
            hits.sort();
            out.push_str("# HELP weir_filter_limit_rejections_total Host calls refused because a filter went past a bound, by limit.\n# TYPE weir_filter_limit_rejections_total counter\n");
            for ((filter, limit), n) in hits {
                let _ = writeln!(
                    out,
                    "weir_filter_limit_rejections_total{{filter=\"{}\",limit=\"{limit}\"}} {n}",
                    escape(&filter)
                );
            }
        }
        let mut cs: Vec<CustomKey> = self.inner.custom.iter().map(|e| e.key().clone()).collect();
        cs.sort_by(|a, b| {
            (&a.filter, &a.name, &a.rendered).cmp(&(&b.filter, &b.name, &b.rendered))
        });
        let mut last_name = String::new();
        for key in cs {
            let Some(e) = self.inner.custom.get(&key) else {
                continue;
            };
            let name = format!("weir_filter_{}", key.name);
            let kind = match &**e {
                Custom::Counter(_) => "counter",
                Custom::Gauge(_) => "gauge",
                Custom::Histogram(_) => "histogram",
            };
            if name != last_name {
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last_name = name.clone();
            }
            match &**e {
                Custom::Counter(c) => {
                    let _ = writeln!(out, "{name}{{{}}} {}", key.rendered, c.load(Relaxed));
                }
                Custom::Gauge(g) => {
                    let _ = writeln!(out, "{name}{{{}}} {}", key.rendered, g.load(Relaxed));
                }
                Custom::Histogram(h) => h.render(out, &name, &key.rendered),
            }
        }
    }
}

/// A filter metric series: who, what, which labels, and the labels as `/metrics` prints them.
#[derive(Debug, Clone)]
struct CustomKey {
    filter: String,
    name: String,
    labels: Vec<(String, String)>,
    rendered: String,
}

impl CustomKey {
    fn new(filter: &str, name: &str, labels: &[(String, String)]) -> CustomKey {
        let mut rendered = format!("filter=\"{}\"", escape(filter));
        for (k, v) in labels {
            // Label names are sanitized to Prometheus' alphabet; values are escaped.
            let k: String = k
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let _ = write!(rendered, ",{k}=\"{}\"", escape(v));
        }
        CustomKey {
            filter: filter.to_string(),
            name: name.to_string(),
            labels: labels.to_vec(),
            rendered,
        }
    }
}

/// What identifies a series, owned ([`CustomKey`]) or borrowed from a host call: the map is
/// keyed by the one and searched by the other (hash and equality agree on these parts).
trait KeyView {
    fn parts(&self) -> (&str, &str, &[(String, String)]);
}

impl KeyView for CustomKey {
    fn parts(&self) -> (&str, &str, &[(String, String)]) {
        (&self.filter, &self.name, &self.labels)
    }
}

impl KeyView for (&str, &str, &[(String, String)]) {
    fn parts(&self) -> (&str, &str, &[(String, String)]) {
        *self
    }
}

impl std::hash::Hash for dyn KeyView + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.parts().hash(h);
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyView + '_ {}

impl std::hash::Hash for CustomKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self as &dyn KeyView).hash(h);
    }
}

impl PartialEq for CustomKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for CustomKey {}

impl<'a> std::borrow::Borrow<dyn KeyView + 'a> for CustomKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

/// Escapes a Prometheus label value.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\\', '"', '\n']) {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filter_series_are_found_by_filter_name_and_labels() {
        let reg = Registry::new();
        let a = labels(&[("route", "api"), ("result", "allowed")]);
        for _ in 0..3 {
            reg.filter_counter("limit", "requests_total", &a).add(2);
        }
        let limited = labels(&[("route", "api"), ("result", "limited")]);
        reg.filter_counter("limit", "requests_total", &limited)
            .add(1);
        reg.filter_counter("other", "requests_total", &a).add(5);
        // A series resolved once keeps counting where a look-up would.
        let depth = reg.filter_gauge("limit", "depth", &labels(&[("q", "a\"b\\c\nd")]));
        depth.set(-4);
        reg.filter_gauge("limit", "depth", &labels(&[("q", "a\"b\\c\nd")]))
            .set(9);
        // An operation of another kind does nothing.
        depth.add(100);
        depth.observe(1.0);
        reg.filter_histogram("limit", "wait_seconds", &[])
            .observe(0.002);
        let text = reg.render("1");
        for line in [
            "weir_filter_requests_total{filter=\"limit\",route=\"api\",result=\"allowed\"} 6",
            "weir_filter_requests_total{filter=\"limit\",route=\"api\",result=\"limited\"} 1",
            "weir_filter_requests_total{filter=\"other\",route=\"api\",result=\"allowed\"} 5",
            "weir_filter_depth{filter=\"limit\",q=\"a\\\"b\\\\c\\nd\"} 9",
            "weir_filter_wait_seconds_count{filter=\"limit\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(
            reg.inner.custom.len(),
            5,
            "one series per filter, name and label set"
        );
    }

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let reg = Registry::new();
        let r = reg.route("api", "backend");
        r.record(200, Duration::from_micros(700));
        r.record(200, Duration::from_millis(30));
        r.record(502, Duration::from_secs(20));
        reg.record_unrouted(404);
        let text = reg.render("1.2.3");
        for line in [
            "weir_build_info{version=\"1.2.3\"} 1",
            "weir_requests_total{route=\"api\",cluster=\"backend\",status=\"200\"} 2",
            "weir_requests_total{route=\"api\",cluster=\"backend\",status=\"502\"} 1",
            "weir_requests_total{route=\"\",cluster=\"\",status=\"404\"} 1",
            "weir_request_duration_seconds_bucket{route=\"api\",cluster=\"backend\",le=\"0.0005\"} 0",
            "weir_request_duration_seconds_bucket{route=\"api\",cluster=\"backend\",le=\"0.001\"} 1",
            "weir_request_duration_seconds_bucket{route=\"api\",cluster=\"backend\",le=\"0.05\"} 2",
            "weir_request_duration_seconds_bucket{route=\"api\",cluster=\"backend\",le=\"10\"} 2",
            "weir_request_duration_seconds_bucket{route=\"api\",cluster=\"backend\",le=\"+Inf\"} 3",
            "weir_request_duration_seconds_count{route=\"api\",cluster=\"backend\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn stats_survive_lookups_by_name() {
        let reg = Registry::new();
        reg.route("a", "c").record(200, Duration::ZERO);
        assert_eq!(reg.route("a", "c").count(200), 1);
        assert_eq!(reg.route("a", "other").count(200), 0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
