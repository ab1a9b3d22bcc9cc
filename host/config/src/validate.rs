//! Checks that need the whole config: unique names, references that resolve, options that fit
//! together. Everything found is reported at once, not just the first problem.

use std::collections::HashSet;
use std::time::Duration;

use crate::{Config, Issue, ListenerProtocol, MAX_TIME_PER_PHASE, ValueRule, did_you_mean};

pub(crate) fn validate(c: &Config) -> Vec<Issue> {
    let mut out = Vec::new();
    let mut err = |path: String, msg: String| out.push(Issue::new(path, msg));

    if c.workers == Some(0) {
        err(
            "workers".into(),
            "must be at least 1 (leave it out for one per core)".into(),
        );
    }
    if let Some(n) = c.filter_instances
        && !(16..=100_000).contains(&n)
    {
        err(
            "filter_instances".into(),
            format!("must be between 16 and 100000 (got {n})"),
        );
    }
    if c.limits.max_request_headers == 0 {
        err(
            "limits.max_request_headers".into(),
            "must be at least 1".into(),
        );
    }
    if c.limits.max_request_header_bytes.bytes() < 8192 {
        err(
            "limits.max_request_header_bytes".into(),
            "must be at least 8KiB".into(),
        );
    }
    if c.limits.max_connections == 0 {
        err("limits.max_connections".into(), "must be at least 1".into());
    }
    if c.limits.h2_max_concurrent_streams == 0 {
        err(
            "limits.h2_max_concurrent_streams".into(),
            "must be at least 1".into(),
        );
    }
    for (name, d) in [
        ("request_body_timeout", c.limits.request_body_timeout),
        ("send_timeout", c.limits.send_timeout),
        ("tunnel_idle_timeout", c.limits.tunnel_idle_timeout),
        ("request_head_timeout", c.limits.request_head_timeout),
        ("idle_timeout", c.limits.idle_timeout),
    ] {
        if d.is_zero() {
            err(format!("limits.{name}"), "must be greater than 0".into());
        }
    }
    for (i, p) in c.limits.upgrade_protocols.iter().enumerate() {
        let token = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
        if !token {
            err(
                format!("limits.upgrade_protocols[{i}]"),
                format!("{p:?} is not a protocol token (RFC 9110 §7.8), like websocket"),
            );
        } else if p.eq_ignore_ascii_case("h2c") || p.to_ascii_lowercase().starts_with("h2c/") {
            err(
                format!("limits.upgrade_protocols[{i}]"),
                "h2c is refused: it would turn the upstream connection into an HTTP/2 tunnel \
                 that bypasses routing; use protocol: h2 on the cluster instead"
                    .into(),
            );
        }
    }

    if !c.admin.listen.ip().is_loopback() && c.admin.token.as_deref().is_none_or(str::is_empty) {
        err(
            "admin.listen".into(),
            format!(
                "the admin listener on {} is reachable beyond this machine: set admin.token",
                c.admin.listen
            ),
        );
    }
    // Never echo the token: messages reach logs and the admin API.
    if let Some(t) = &c.admin.token
        && (t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
    {
        err(
            "admin.token".into(),
            "must be printable ASCII without spaces (a bearer token); leave it out to have one \
             generated"
                .into(),
        );
    }
    for (field, p) in [
        ("admin.unix", &c.admin.unix),
        ("admin.token_file", &c.admin.token_file),
    ] {
        if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            err(field.into(), "must not be empty".into());
        }
    }
    unique(
        c.listeners.iter().map(|l| l.name.as_str()),
        "listeners",
        &mut err,
    );
    unique(c.routes.iter().map(|r| r.name.as_str()), "routes", &mut err);
    unique(
        c.clusters.iter().map(|r| r.name.as_str()),
        "clusters",
        &mut err,
    );

    let mut addrs = HashSet::new();
    if c.admin.listen.port() != 0 {
        addrs.insert(c.admin.listen);
    }
    for (i, l) in c.listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        if l.listen.port() != 0 && !addrs.insert(l.listen) {
            err(
                format!("{p}.listen"),
                format!(
                    "address {} is already used by another listener or the admin listener",
                    l.listen
                ),
            );
        }
        check_l4(l, &p, &c.clusters, &mut err);
        match (l.protocol, &l.tls) {
            (ListenerProtocol::Https, None) => err(
                format!("{p}.tls"),
                "an https listener needs `tls: { certificates: [ { cert: .., key: .. } ] }`".into(),
            ),
            (ListenerProtocol::Https, Some(t)) if t.certificates.is_empty() => err(
                format!("{p}.tls.certificates"),
                "give at least one certificate".into(),
            ),
            (ListenerProtocol::Http, Some(_)) => err(
                format!("{p}.tls"),
                "tls is only for `protocol: https`".into(),
            ),
            (ListenerProtocol::Tcp | ListenerProtocol::TlsPassthrough, Some(_)) => err(
                format!("{p}.tls"),
                "tls is only for `protocol: https` (a tls_passthrough listener leaves TLS to \
                 its upstreams)"
                    .into(),
            ),
            _ => {}
        }
        if !(1..=65_535).contains(&l.backlog) {
            err(
                format!("{p}.backlog"),
                format!("{} is out of range (1 to 65535)", l.backlog),
            );
        }
        for (j, t) in l.trusted_proxies.iter().enumerate() {
            if let Err(e) = crate::Cidr::parse(t) {
                err(format!("{p}.trusted_proxies[{j}]"), e);
            }
        }
    }

    unique(
        c.filters.iter().map(|f| f.name.as_str()),
        "filters",
        &mut err,
    );
    let cluster_names: Vec<&str> = c.clusters.iter().map(|c| c.name.as_str()).collect();
    let filter_names: Vec<&str> = c.filters.iter().map(|f| f.name.as_str()).collect();
    for (i, f) in c.filters.iter().enumerate() {
        let p = format!("filters[{i}]");
        if !f.config.is_object() {
            err(format!("{p}.config"), "must be a map of settings".into());
        }
        if f.limits.memory.bytes() < (1 << 20) || f.limits.memory.bytes() > (256 << 20) {
            err(
                format!("{p}.limits.memory"),
                "must be between 1MiB and 256MiB".into(),
            );
        }
        if f.limits.time_per_phase.is_zero() || f.limits.time_per_phase > MAX_TIME_PER_PHASE {
            err(
                format!("{p}.limits.time_per_phase"),
                format!(
                    "must be greater than 0 and at most {}s (a phase is a few milliseconds of CPU)",
                    MAX_TIME_PER_PHASE.as_secs()
                ),
            );
        }
        if f.limits.max_instances == 0 || f.limits.max_instances > 1024 {
            err(
                format!("{p}.limits.max_instances"),
                "must be between 1 and 1024".into(),
            );
        }
        for (j, ns) in f.grants.kv.iter().enumerate() {
            // Namespaces name Redis keys (`<prefix><namespace>:<kind>:<key>`): no separator in them.
            let ok = !ns.is_empty()
                && ns.len() <= 64
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ok {
                err(
                    format!("{p}.grants.kv[{j}]"),
                    format!(
                        "{ns:?} is not a namespace name: 1 to 64 letters, digits, '_', '-' or '.'"
                    ),
                );
            }
        }
        for (j, t) in f.grants.callouts.iter().enumerate() {
            if !cluster_names.contains(&t.as_str()) && check_address(t).is_err() {
                err(
                    format!("{p}.grants.callouts[{j}]"),
                    format!("{t:?} is neither a cluster name nor host:port"),
                );
            }
        }
    }
    check_state(&c.state, &mut err);
    if let Some(a) = &c.access_log {
        check_access_log(a, &mut err);
    }
    if let Some(t) = &c.tracing {
        check_tracing(t, &mut err);
    }
    for (i, r) in c.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if !cluster_names.contains(&r.cluster.as_str()) {
            let mut msg = format!("unknown cluster {:?}", r.cluster);
            if let Some(s) = did_you_mean(&r.cluster, cluster_names.iter().copied()) {
                msg.push_str(&format!(" (did you mean {s:?}?)"));
            }
            err(format!("{p}.cluster"), msg);
        }
        for (j, f) in r.filters.iter().enumerate() {
            if !filter_names.contains(&f.name.as_str()) {
                let mut msg = format!("unknown filter {:?}", f.name);
                if let Some(s) = did_you_mean(&f.name, filter_names.iter().copied()) {
                    msg.push_str(&format!(" (did you mean {s:?}?)"));
                }
                err(format!("{p}.filters[{j}]"), msg);
            }
            if f.config.as_ref().is_some_and(|c| !c.is_object()) {
                err(
                    format!("{p}.filters[{j}].config"),
                    "must be a map of settings".into(),
                );
            }
        }
        for (j, t) in r.tags.iter().enumerate() {
            if !is_tag(t) {
                err(
                    format!("{p}.tags[{j}]"),
                    format!("{t:?} is not a tag: 1 to 64 letters, digits, '_', '-', '.' or ':'"),
                );
            }
        }
        if let Some(d) = &r.disabled_response
            && !(400..=599).contains(&d.status)
        {
            err(
                format!("{p}.disabled_response.status"),
                format!("{} is not an error status (400 to 599)", d.status),
            );
        }
        let m = &r.matches;
        let paths = [
            ("path", &m.path),
            ("path_prefix", &m.path_prefix),
            ("path_regex", &m.path_regex),
        ];
        let given: Vec<&str> = paths
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        if given.len() > 1 {
            err(
                format!("{p}.match.{}", given[1]),
                format!(
                    "give only one of path, path_prefix, path_regex (also has {})",
                    given[0]
                ),
            );
        }
        for (k, v) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
            if let Some(v) = v
                && !v.starts_with('/')
            {
                err(
                    format!("{p}.match.{k}"),
                    format!("{v:?} must start with \"/\""),
                );
            }
        }
        if let Some(re) = &m.path_regex
            && let Err(e) = regex::Regex::new(re)
        {
            err(
                format!("{p}.match.path_regex"),
                format!("invalid regex: {}", first_line(&e.to_string())),
            );
        }
        if let Some(h) = &m.host {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty() || bare.contains(['*', '/', ' ', ':']) {
                err(
                    format!("{p}.match.host"),
                    format!(
                        "invalid host {h:?}: write an exact host or a leading \"*.\" wildcard, without port"
                    ),
                );
            }
        }
        for (j, meth) in m.methods.iter().enumerate() {
            if http::Method::from_bytes(meth.as_bytes()).is_err()
                || meth.chars().any(|c| c.is_ascii_lowercase())
            {
                err(
                    format!("{p}.match.methods[{j}]"),
                    format!("invalid method {meth:?} (methods are uppercase tokens such as GET)"),
                );
            }
        }
        for (name, rule) in &m.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                err(
                    format!("{p}.match.headers.{name}"),
                    format!("invalid header name {name:?}"),
                );
            }
            check_rule(rule, format!("{p}.match.headers.{name}"), &mut err);
        }
        for (name, rule) in &m.query {
            check_rule(rule, format!("{p}.match.query.{name}"), &mut err);
        }
        if let Some(rw) = &r.rewrite {
            if let Some(np) = &rw.path_prefix {
                if m.path_prefix.is_none() {
                    err(
                        format!("{p}.rewrite.path_prefix"),
                        "needs `match.path_prefix` (the prefix it replaces)".into(),
                    );
                }
                if !np.starts_with('/') {
                    err(
                        format!("{p}.rewrite.path_prefix"),
                        format!("{np:?} must start with \"/\""),
                    );
                }
            }
            if let Some(h) = &rw.host
                && (http::HeaderValue::from_str(h).is_err() || h.is_empty())
            {
                err(format!("{p}.rewrite.host"), format!("invalid host {h:?}"));
            }
        }
        if r.timeout == Some(std::time::Duration::ZERO) {
            err(format!("{p}.timeout"), "must be greater than 0".into());
        }
    }

    for (i, cl) in c.clusters.iter().enumerate() {
        let p = format!("clusters[{i}]");
        if cl.endpoints.is_empty() {
            err(
                format!("{p}.endpoints"),
                "give at least one endpoint".into(),
            );
        }
        for (j, e) in cl.endpoints.iter().enumerate() {
            if let Err(m) = check_address(&e.address) {
                err(format!("{p}.endpoints[{j}].address"), m);
            }
            if e.weight == 0 {
                err(
                    format!("{p}.endpoints[{j}].weight"),
                    "must be at least 1".into(),
                );
            }
        }
        if cl.hash_on.is_some() && !cl.lb.is_hash() {
            err(format!("{p}.hash_on"), "only ring_hash and maglev hash requests; set `lb: ring_hash` or `lb: maglev`, or remove hash_on".into());
        }
        for (k, d) in [
            ("connect", cl.timeouts.connect),
            ("request", cl.timeouts.request),
            ("body", cl.timeouts.body),
            ("idle", cl.timeouts.idle),
            ("ping_interval", cl.timeouts.ping_interval),
            ("ping_timeout", cl.timeouts.ping_timeout),
        ] {
            if d.is_zero() {
                err(format!("{p}.timeouts.{k}"), "must be greater than 0".into());
            }
        }
        if cl.health.cooldown.is_zero() || cl.health.max_cooldown < cl.health.cooldown {
            err(
                format!("{p}.health.max_cooldown"),
                "cooldown must be greater than 0 and max_cooldown at least cooldown".into(),
            );
        }
        if let Some(a) = &cl.health.active {
            if !a.path.starts_with('/') || a.path.bytes().any(|b| b.is_ascii_control() || b == b' ')
            {
                err(
                    format!("{p}.health.active.path"),
                    "must start with / and hold no spaces or control characters".into(),
                );
            }
            if a.interval.is_zero() || a.timeout.is_zero() {
                err(
                    format!("{p}.health.active"),
                    "interval and timeout must be greater than 0".into(),
                );
            }
            if let Some(s) = a.statuses.iter().find(|s| !(100..=599).contains(*s)) {
                err(
                    format!("{p}.health.active.statuses"),
                    format!("{s} is not an HTTP status (100 to 599)"),
                );
            }
            if a.healthy == 0 || a.unhealthy == 0 {
                err(
                    format!("{p}.health.active"),
                    "healthy and unhealthy must be at least 1".into(),
                );
            }
            if let Some(h) = &a.host
                && h.parse::<http::uri::Authority>().is_err()
            {
                err(
                    format!("{p}.health.active.host"),
                    "must be a host name, optionally with :port".into(),
                );
            }
        }
        for (k, v) in [
            ("max_requests", cl.limits.max_requests),
            ("max_connections", cl.limits.max_connections),
        ] {
            if v == Some(0) {
                err(
                    format!("{p}.limits.{k}"),
                    "must be at least 1 (leave it out for no cap)".into(),
                );
            }
        }
        if cl.limits.max_pending.is_some() && cl.limits.max_connections.is_none() {
            err(
                format!("{p}.limits.max_pending"),
                "only counts requests waiting at max_connections: set max_connections too".into(),
            );
        }
        let r = &cl.retries;
        if !(1..=10).contains(&r.attempts) {
            err(
                format!("{p}.retries.attempts"),
                format!("must be between 1 (no retries) and 10, got {}", r.attempts),
            );
        }
        if r.per_try_timeout.is_some_and(|d| d.is_zero()) {
            err(
                format!("{p}.retries.per_try_timeout"),
                "must be greater than 0".into(),
            );
        }
        if let Some(t) = &cl.tls
            && t.ca.is_none()
            && !t.insecure_skip_verify
        {
            err(format!("{p}.tls.ca"), "give a CA file to verify the upstream (or `insecure_skip_verify: true` for testing)".into());
        }
    }
    out
}

fn unique<'a>(
    names: impl Iterator<Item = &'a str>,
    list: &str,
    err: &mut impl FnMut(String, String),
) {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            err(format!("{list}[{i}].name"), "must not be empty".into());
        } else if !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            err(
                format!("{list}[{i}].name"),
                format!("{n:?}: use letters, digits, '-', '_' and '.'"),
            );
        } else if !seen.insert(n) {
            err(format!("{list}[{i}].name"), format!("duplicate name {n:?}"));
        }
    }
}

fn check_rule(rule: &ValueRule, path: String, err: &mut impl FnMut(String, String)) {
    match rule {
        ValueRule::Regex(re) => {
            if let Err(e) = regex::Regex::new(re) {
                err(
                    path,
                    format!("invalid regex: {}", first_line(&e.to_string())),
                );
            }
        }
        ValueRule::Present(false) => err(
            path,
            "`present: false` is not supported; leave the rule out".into(),
        ),
        _ => {}
    }
}

fn check_address(a: &str) -> Result<(), String> {
    let hint =
        || format!("invalid address {a:?}: write host:port, e.g. 127.0.0.1:9001 or [::1]:9001");
    if a.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = a.rsplit_once(':').ok_or_else(hint)?;
    if port.parse::<u16>().is_err() || host.is_empty() || host.contains([':', '/', ' ']) {
        return Err(hint());
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

/// The fields of `tcp` and `tls_passthrough` listeners, and PROXY protocol settings.
fn check_l4(
    l: &crate::ListenerConfig,
    p: &str,
    clusters: &[crate::ClusterConfig],
    err: &mut impl FnMut(String, String),
) {
    let known = |name: &str, at: String, err: &mut dyn FnMut(String, String)| match clusters
        .iter()
        .find(|c| c.name == name)
    {
        None => {
            let mut msg = format!("unknown cluster {name:?}");
            if let Some(s) = did_you_mean(name, clusters.iter().map(|c| c.name.as_str())) {
                msg.push_str(&format!(" (did you mean {s:?}?)"));
            }
            err(at, msg);
        }
        Some(c) if c.tls.is_some() => err(
            at,
            format!(
                "cluster {name:?} has tls: an L4 listener relays bytes as they come and does \
                 not originate TLS"
            ),
        ),
        Some(_) => {}
    };
    let proto = l.protocol;
    match (proto, &l.cluster) {
        (ListenerProtocol::Tcp, None) => err(
            format!("{p}.cluster"),
            "a tcp listener needs the cluster its connections go to".into(),
        ),
        (ListenerProtocol::Tcp, Some(c)) => known(c, format!("{p}.cluster"), err),
        (_, Some(_)) => err(
            format!("{p}.cluster"),
            "cluster is only for `protocol: tcp` (http listeners route with `routes`, \
             tls_passthrough with `sni`)"
                .into(),
        ),
        _ => {}
    }
    if proto == ListenerProtocol::TlsPassthrough && l.sni.is_empty() {
        err(
            format!("{p}.sni"),
            "a tls_passthrough listener needs `sni: [ { server_names: [..], cluster: .. } ]`"
                .into(),
        );
    }
    if proto != ListenerProtocol::TlsPassthrough && !l.sni.is_empty() {
        err(
            format!("{p}.sni"),
            "sni is only for `protocol: tls_passthrough`".into(),
        );
    }
    let mut names = HashSet::new();
    for (j, r) in l.sni.iter().enumerate() {
        known(&r.cluster, format!("{p}.sni[{j}].cluster"), err);
        if r.server_names.is_empty() {
            err(
                format!("{p}.sni[{j}].server_names"),
                "give at least one name (`*` takes every other)".into(),
            );
        }
        for (k, n) in r.server_names.iter().enumerate() {
            let at = format!("{p}.sni[{j}].server_names[{k}]");
            if let Err(e) = check_server_name(n) {
                err(at, e);
            } else if !names.insert(n.to_ascii_lowercase()) {
                err(at, format!("{n:?} is listed twice"));
            }
        }
    }
    if !proto.is_l4() {
        if l.idle_timeout.is_some() {
            err(
                format!("{p}.idle_timeout"),
                "idle_timeout is for tcp and tls_passthrough listeners (http listeners use \
                 limits.idle_timeout)"
                    .into(),
            );
        }
        if !l.splice {
            err(
                format!("{p}.splice"),
                "splice is for tcp and tls_passthrough listeners".into(),
            );
        }
        if l.proxy_protocol.send.is_some() {
            err(
                format!("{p}.proxy_protocol.send"),
                "send is for tcp and tls_passthrough listeners".into(),
            );
        }
    }
    if l.idle_timeout.is_some_and(|d| d.is_zero()) {
        err(format!("{p}.idle_timeout"), "must be greater than 0".into());
    }
    if l.proxy_protocol.accept.is_some() && l.trusted_proxies.is_empty() {
        err(
            format!("{p}.proxy_protocol.accept"),
            "list the peers that may send PROXY headers in trusted_proxies (a header from \
             anyone else would let them pick their own address)"
                .into(),
        );
    }
}

/// `api.example.com`, `*.example.com` or `*`: DNS labels of letters, digits, `-` and `_`.
fn check_server_name(n: &str) -> Result<(), String> {
    if n == "*" {
        return Ok(());
    }
    let name = n.strip_prefix("*.").unwrap_or(n);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{n:?} is not a server name: write api.example.com, *.example.com or *"
        ));
    }
    Ok(())
}

/// The shared-state backend. A URL may carry a password: no message here quotes it.
fn check_state(s: &crate::StateConfig, err: &mut impl FnMut(String, String)) {
    use crate::StateBackend;
    match (s.backend, &s.url) {
        (StateBackend::Redis, None) => err(
            "state.url".into(),
            "backend: redis needs a url, like redis://127.0.0.1:6379/0".into(),
        ),
        (StateBackend::Embedded, Some(_)) => err(
            "state.url".into(),
            "a url is only used with backend: redis".into(),
        ),
        (StateBackend::Redis, Some(url)) => {
            let scheme = url.split("://").next().unwrap_or_default();
            if !url.contains("://") || !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix")
            {
                err(
                    "state.url".into(),
                    "must start with redis://, rediss:// or redis+unix://".into(),
                );
            } else if url.contains('#') {
                // `#insecure` would ask the client to skip certificate checks.
                err(
                    "state.url".into(),
                    "must not have a #fragment (certificate checks cannot be turned off)".into(),
                );
            }
            if s.tls.is_some() && scheme != "rediss" {
                err(
                    "state.tls".into(),
                    "is only used with a rediss:// url".into(),
                );
            }
        }
        (StateBackend::Embedded, None) => {}
    }
    if let Some(t) = &s.tls
        && t.cert.is_some() != t.key.is_some()
    {
        err(
            "state.tls".into(),
            "cert and key go together: set both or neither".into(),
        );
    }
    if s.pool.size == 0 || s.pool.size > 256 {
        err("state.pool.size".into(), "must be between 1 and 256".into());
    }
    if s.pool.timeout.is_zero() || s.pool.timeout > std::time::Duration::from_secs(10) {
        err(
            "state.pool.timeout".into(),
            "must be greater than 0 and at most 10s (it bounds a request's wait)".into(),
        );
    }
    // `contains` is false for NaN too.
    if !(0.0..=0.5).contains(&s.lease.share) {
        err(
            "state.lease.share".into(),
            "must be between 0 (off) and 0.5".into(),
        );
    }
    if s.lease.max_age.is_zero() || s.lease.max_age > std::time::Duration::from_secs(60) {
        err(
            "state.lease.max_age".into(),
            "must be greater than 0 and at most 60s".into(),
        );
    }
    if s.lease.share > 0.0 && s.backend == crate::StateBackend::Embedded {
        err(
            "state.lease".into(),
            "leases are for backend: redis (the embedded store has no round trip to save)".into(),
        );
    }
    if s.key_prefix.len() > 64 || s.key_prefix.bytes().any(|b| !b.is_ascii_graphic()) {
        err(
            "state.key_prefix".into(),
            "must be at most 64 visible ASCII characters".into(),
        );
    }
}

/// Whether `t` is a route tag: 1 to 64 of `[A-Za-z0-9_.:-]`.
pub fn is_tag(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

fn check_access_log(a: &crate::AccessLogConfig, err: &mut impl FnMut(String, String)) {
    if a.path.is_none() && a.kafka.is_none() {
        err(
            "access_log".into(),
            "give a path (stdout, stderr or a file), kafka, or both".into(),
        );
    }
    if a.path.as_deref() == Some("") {
        err("access_log.path".into(), "must not be empty".into());
    }
    let Some(k) = &a.kafka else { return };
    if k.brokers.is_empty() || k.brokers.len() > 16 {
        err(
            "access_log.kafka.brokers".into(),
            "give 1 to 16 brokers, host:port".into(),
        );
    }
    for (i, b) in k.brokers.iter().enumerate() {
        if let Err(e) = check_address(b) {
            err(format!("access_log.kafka.brokers[{i}]"), e);
        }
    }
    // Kafka's own rule for topic names.
    if k.topic.is_empty()
        || k.topic.len() > 249
        || k.topic == "."
        || k.topic == ".."
        || !(k.topic.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        err(
            "access_log.kafka.topic".into(),
            format!(
                "{:?} is not a Kafka topic name: 1 to 249 of [A-Za-z0-9._-]",
                k.topic
            ),
        );
    }
    if k.client_id.is_empty()
        || k.client_id.len() > 255
        || k.client_id.chars().any(char::is_control)
    {
        err(
            "access_log.kafka.client_id".into(),
            "must be 1 to 255 characters, none of them control characters".into(),
        );
    }
    if !(1..=1_000_000).contains(&k.max_queue_lines) {
        err(
            "access_log.kafka.max_queue_lines".into(),
            format!("{} is not from 1 to 1000000", k.max_queue_lines),
        );
    }
    if !(1024..=64 << 20).contains(&k.max_batch_bytes.bytes()) {
        err(
            "access_log.kafka.max_batch_bytes".into(),
            "must be from 1KiB to 64MiB".into(),
        );
    }
    let (lo, hi) = (Duration::from_millis(1), Duration::from_secs(60));
    for (field, d) in [("linger", k.linger), ("timeout", k.timeout)] {
        if d < lo || d > hi {
            err(
                format!("access_log.kafka.{field}"),
                format!("{d:?} is not from 1ms to 60s"),
            );
        }
    }
}

fn check_tracing(t: &crate::TracingConfig, err: &mut impl FnMut(String, String)) {
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        err(
            "tracing.sample_ratio".into(),
            format!("{} is not a ratio from 0 to 1", t.sample_ratio),
        );
    }
    if t.service_name.is_empty()
        || t.service_name.len() > 255
        || t.service_name.chars().any(char::is_control)
    {
        err(
            "tracing.service_name".into(),
            "must be 1 to 255 characters, none of them control characters".into(),
        );
    }
    let Some(o) = &t.otlp else { return };
    if let Err(e) = crate::otlp_traces_url(&o.endpoint, o.protocol) {
        err("tracing.otlp.endpoint".into(), e);
    }
    if !(1..=1_000_000).contains(&o.max_queue_spans) {
        err(
            "tracing.otlp.max_queue_spans".into(),
            format!("{} is not from 1 to 1000000", o.max_queue_spans),
        );
    }
    if o.max_batch_spans == 0 || o.max_batch_spans > o.max_queue_spans.min(65_536) {
        err(
            "tracing.otlp.max_batch_spans".into(),
            format!(
                "{} is not from 1 to max_queue_spans (at most 65536)",
                o.max_batch_spans
            ),
        );
    }
    let (lo, hi) = (Duration::from_millis(10), Duration::from_secs(60));
    for (field, d) in [("flush_interval", o.flush_interval), ("timeout", o.timeout)] {
        if d < lo || d > hi {
            err(
                format!("tracing.otlp.{field}"),
                format!("{d:?} is not from 10ms to 60s"),
            );
        }
    }
}
