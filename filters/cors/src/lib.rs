//! Weir's CORS filter: answers preflights and adds CORS headers to responses for allowed
//! origins.
//!
//! * A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by
//!   the filter: `204` with the `Access-Control-Allow-*` headers when the origin, the method and
//!   every requested header are allowed, `403` otherwise. It never reaches the upstream.
//! * Any other request with an allowed `Origin` goes on; its response gets
//!   `Access-Control-Allow-Origin` (the origin echoed, or `*` for `allow_origins: ["*"]`
//!   without credentials), `Access-Control-Allow-Credentials` and
//!   `Access-Control-Expose-Headers` as configured. A disallowed origin passes through without
//!   CORS headers (the browser then refuses the response to the page).
//! * When the answer depends on the origin, every response gets `Vary: Origin`, so a cache
//!   never serves one origin's answer to another.
//! * With `allow_credentials`, `*` is never sent: the origin is echoed (browsers reject `*`
//!   with credentials), and the `null` origin is not echoed unless listed explicitly.
//!
//! The configuration reference is the crate's README.

use serde::Deserialize;
use weir_filter::{
    Action, Filter, LocalResponse, Phases, Request, Response, export_filter, log, metrics,
};

/// The filter's config, as the proxy passes it (the route's override merged over the
/// filter's default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Allowed origins: `https://app.example.com` (exact), `*.example.com` (any subdomain, http
    /// or https, any port), `https://*.example.com` (any subdomain, that scheme and port), or
    /// `*` (any origin). Required.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for; `*` allows any. Default: `GET`, `HEAD`, `POST`.
    #[serde(default = "default_methods")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (besides `accept`, `accept-language`,
    /// `content-language` and `content-type`, always allowed); `*` allows any. Default: none.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the page may read (`Access-Control-Expose-Headers`). Default: none.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether the page may send and read credentials (cookies, `Authorization`).
    /// Default: false.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer, in seconds
    /// (`Access-Control-Max-Age`). Default: not sent (browsers use 5 s).
    #[serde(default)]
    pub max_age_s: Option<u64>,
}

fn default_methods() -> Vec<String> {
    vec!["GET".to_owned(), "HEAD".to_owned(), "POST".to_owned()]
}

/// Request headers a browser may send cross-origin without asking for them (by name).
const SAFELISTED: [&str; 4] = [
    "accept",
    "accept-language",
    "content-language",
    "content-type",
];

/// One entry of `allow_origins`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// `*`.
    Any,
    /// A whole origin, lowercase (`https://app.example.com`, `http://localhost:3000`, `null`).
    Exact(String),
    /// `[scheme://]*.suffix[:port]`: `suffix` starts with a dot. Without a scheme, http and
    /// https on any port; with one, that scheme and exactly that port (or none).
    Subdomains {
        scheme: Option<String>,
        suffix: String,
        port: Option<String>,
    },
}

/// An origin split into (scheme, host, port), lowercase; `None` if it is not
/// `scheme://host[:port]`.
fn split_origin(origin: &str) -> Option<(String, String, Option<String>)> {
    let (scheme, rest) = origin.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        || rest.is_empty()
        || rest.contains(['/', '?', '#', '@', ' '])
    {
        return None;
    }
    let (host, port) = if rest.starts_with('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        let end = rest.find(']')?;
        let (host, after) = rest.split_at(end + 1);
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty()
        || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some((
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase(),
        port.map(str::to_owned),
    ))
}

impl OriginRule {
    fn parse(at: &str, entry: &str) -> Result<Self, String> {
        let e = entry.trim();
        if e == "*" {
            return Ok(Self::Any);
        }
        if e.eq_ignore_ascii_case("null") {
            return Ok(Self::Exact("null".to_owned()));
        }
        let not_origin = || {
            format!(
                "{at}: {entry:?} is not an origin: write scheme://host[:port] with no path or \
                 trailing slash (\"https://app.example.com\"), \"*.example.com\" or \"*\""
            )
        };
        let (scheme, hostport) = match e.split_once("://") {
            Some((s, rest)) => (Some(s), rest),
            None => (None, e),
        };
        if let Some(rest) = hostport.strip_prefix("*.") {
            let (suffix, port) = match rest.rsplit_once(':') {
                Some((s, p)) if scheme.is_some() => (s, Some(p)),
                Some(_) => {
                    return Err(format!(
                        "{at}: {entry:?}: a port needs a scheme (\"https://*.example.com:8443\")"
                    ));
                }
                None => (rest, None),
            };
            let valid_suffix = !suffix.is_empty()
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !suffix.starts_with('.')
                && !suffix.ends_with('.');
            let valid_port =
                port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            let valid_scheme = scheme.is_none_or(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            });
            if !valid_suffix || !valid_port || !valid_scheme {
                return Err(not_origin());
            }
            return Ok(Self::Subdomains {
                scheme: scheme.map(str::to_ascii_lowercase),
                suffix: format!(".{}", suffix.to_ascii_lowercase()),
                port: port.map(str::to_owned),
            });
        }
        if e.contains('*') {
            return Err(format!(
                "{at}: {entry:?}: a wildcard may only stand for subdomains, at the start of the \
                 host (\"*.example.com\"), or alone (\"*\")"
            ));
        }
        if scheme.is_none() {
            return Err(format!(
                "{at}: {entry:?} needs a scheme (\"https://{e}\"), or a wildcard for every \
                 subdomain (\"*.{e}\")"
            ));
        }
        let (scheme, host, port) = split_origin(e).ok_or_else(not_origin)?;
        Ok(Self::Exact(match port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        }))
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(o) => o.eq_ignore_ascii_case(origin),
            Self::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                let Some((s, host, p)) = split_origin(origin) else {
                    return false;
                };
                let scheme_ok = match scheme {
                    Some(want) => *want == s && *port == p,
                    None => s == "http" || s == "https",
                };
                scheme_ok && host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

/// Whether `s` is an HTTP token (a valid header name or method).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The CORS filter, configured.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<OriginRule>,
    /// `*` in `allow_methods`: a preflight may ask for any method.
    any_method: bool,
    /// Uppercase.
    methods: Vec<String>,
    /// `*` in `allow_headers`: a preflight may ask for any header.
    any_header: bool,
    /// Lowercase.
    headers: Vec<String>,
    /// `Access-Control-Allow-Methods` as sent.
    allow_methods_value: String,
    /// `Access-Control-Expose-Headers` as sent, if any.
    expose_value: Option<String>,
    credentials: bool,
    max_age: Option<String>,
    /// `Access-Control-Allow-Origin: *` (any origin, no credentials): the same answer for all.
    star: bool,
}

/// What the request phase decided for the response.
#[derive(Debug, Default)]
pub struct Context {
    /// The `Access-Control-Allow-Origin` value, for an allowed origin.
    allow_origin: Option<String>,
}

/// Counts a preflight decision (best effort: counting never changes it).
fn count(name: &str, result: &str) {
    metrics::count(name, &[("result", result)]);
}

impl Cors {
    /// The `Access-Control-Allow-Origin` value for this origin, or `None` if it is not allowed.
    pub fn allow_origin(&self, origin: &str) -> Option<String> {
        if origin.is_empty() {
            return None;
        }
        let null = origin.eq_ignore_ascii_case("null");
        let allowed = self.origins.iter().any(|rule| match rule {
            // `null` (sandboxed frames, file: pages) is only echoed with credentials when listed.
            OriginRule::Any if null && self.credentials => false,
            rule => rule.matches(origin),
        });
        if !allowed {
            return None;
        }
        Some(if self.star {
            "*".to_owned()
        } else {
            origin.to_owned()
        })
    }

    fn vary_value(&self) -> Option<&'static str> {
        (!self.star).then_some("Origin")
    }

    fn preflight(&self, req: &Request, origin: &str, method: &str) -> Action {
        let deny = |why: String| -> Action {
            count("cors_preflights_total", "denied");
            log::debug(&format!("cors: preflight from {origin:?} refused: {why}"));
            let body = serde_json::json!({ "error": format!("cors: {why}") });
            let mut r = LocalResponse::json(403, &body);
            if let Some(v) = self.vary_value() {
                r = r.header("vary", v);
            }
            r.into()
        };
        let Some(allow_origin) = self.allow_origin(origin) else {
            return deny("origin not allowed".to_owned());
        };
        let method = method.trim();
        if !self.any_method && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
            return deny(format!("method {method} not allowed"));
        }
        let requested: Vec<String> = req
            .header_all("access-control-request-headers")
            .iter()
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if !self.any_header {
            let refused = requested.iter().find(|h| {
                !SAFELISTED.contains(&h.as_str()) && !self.headers.iter().any(|a| a == *h)
            });
            if let Some(h) = refused {
                return deny(format!("header {h} not allowed"));
            }
        }
        if requested.iter().any(|h| !is_token(h)) {
            return deny("malformed access-control-request-headers".to_owned());
        }
        count("cors_preflights_total", "allowed");
        let methods = if self.any_method {
            method.to_owned()
        } else {
            self.allow_methods_value.clone()
        };
        let mut r = LocalResponse::new(204)
            .header("access-control-allow-origin", allow_origin)
            .header("access-control-allow-methods", methods);
        // Every requested header was checked above: naming exactly those is always accepted.
        if !requested.is_empty() {
            r = r.header("access-control-allow-headers", requested.join(", "));
        }
        if self.credentials {
            r = r.header("access-control-allow-credentials", "true");
        }
        if let Some(age) = &self.max_age {
            r = r.header("access-control-max-age", age.clone());
        }
        r.header(
            "vary",
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        )
        .into()
    }
}

impl Filter for Cors {
    type Config = Config;
    type Context = Context;
    const PHASES: Phases = Phases::REQUEST_HEADERS.union(Phases::RESPONSE_HEADERS);

    fn new(config: Config) -> Result<Self, String> {
        if config.allow_origins.is_empty() {
            return Err(
                "allow_origins: list at least one origin (\"https://app.example.com\", \
                        \"*.example.com\" or \"*\")"
                    .to_owned(),
            );
        }
        let origins = config
            .allow_origins
            .iter()
            .enumerate()
            .map(|(i, o)| OriginRule::parse(&format!("allow_origins[{i}]"), o))
            .collect::<Result<Vec<_>, _>>()?;
        let mut methods = Vec::new();
        let mut any_method = false;
        for (i, m) in config.allow_methods.iter().enumerate() {
            match m.trim() {
                "*" => any_method = true,
                m if is_token(m) => methods.push(m.to_ascii_uppercase()),
                _ => return Err(format!("allow_methods[{i}]: {m:?} is not a method")),
            }
        }
        if methods.is_empty() && !any_method {
            return Err("allow_methods: list at least one method (or \"*\")".to_owned());
        }
        let mut headers = Vec::new();
        let mut any_header = false;
        for (i, h) in config.allow_headers.iter().enumerate() {
            match h.trim() {
                "*" => any_header = true,
                h if is_token(h) => headers.push(h.to_ascii_lowercase()),
                _ => return Err(format!("allow_headers[{i}]: {h:?} is not a header name")),
            }
        }
        let mut expose = Vec::new();
        for (i, h) in config.expose_headers.iter().enumerate() {
            let h = h.trim();
            if h == "*" && config.allow_credentials {
                return Err(format!(
                    "expose_headers[{i}]: \"*\" does not work with allow_credentials (browsers \
                     read it as a header named *): list the headers"
                ));
            }
            if h != "*" && !is_token(h) {
                return Err(format!("expose_headers[{i}]: {h:?} is not a header name"));
            }
            expose.push(h.to_ascii_lowercase());
        }
        let star = !config.allow_credentials && origins.contains(&OriginRule::Any);
        Ok(Self {
            origins,
            any_method,
            allow_methods_value: methods.join(", "),
            methods,
            any_header,
            headers,
            expose_value: (!expose.is_empty()).then(|| expose.join(", ")),
            credentials: config.allow_credentials,
            max_age: config.max_age_s.map(|s| s.to_string()),
            star,
        })
    }

    fn on_request_headers(&self, req: &mut Request, ctx: &mut Context) -> Action {
        let Some(origin) = req.header("origin") else {
            return Action::Continue;
        };
        if req.method() == "OPTIONS"
            && let Some(method) = req.header("access-control-request-method")
        {
            return self.preflight(req, &origin, &method);
        }
        ctx.allow_origin = self.allow_origin(&origin);
        count(
            "cors_requests_total",
            if ctx.allow_origin.is_some() {
                "allowed"
            } else {
                "denied"
            },
        );
        Action::Continue
    }

    fn on_response_headers(&self, res: &mut Response, ctx: &mut Context) -> Action {
        let mut set = Ok(());
        if let Some(origin) = &ctx.allow_origin {
            set = res.set_header("access-control-allow-origin", origin);
            if self.credentials {
                set = set.and_then(|()| res.set_header("access-control-allow-credentials", "true"));
            }
            if let Some(expose) = &self.expose_value {
                set = set.and_then(|()| res.set_header("access-control-expose-headers", expose));
            }
        }
        if let Some(vary) = self.vary_value() {
            let present = res
                .header_all("vary")
                .iter()
                .flat_map(|v| v.split(','))
                .any(|t| {
                    let t = t.trim();
                    t == "*" || t.eq_ignore_ascii_case(vary)
                });
            if !present {
                set = set.and_then(|()| res.append_header("vary", vary));
            }
        }
        if let Err(e) = set {
            log::warn(&format!("cors: response headers: {e}"));
        }
        Action::Continue
    }
}

export_filter!(Cors);

#[cfg(test)]
mod tests;
