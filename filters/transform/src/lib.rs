//! Weir's transform filter: header edits both ways, path rewrites, and body find/replace.
//!
//! * `request` / `response`: `remove` header names, then `set` (replace every value), then
//!   `add` (append a value, keeping existing ones). Values are templates: `$client_ip`,
//!   `$request_id` and `$route` (or `${client_ip}`...) are substituted; `$$` is a literal `$`.
//! * `rewrite_path`: `{ prefix: { from, to } }` replaces a leading `from`, or
//!   `{ regex: { pattern, replacement } }` replaces every match in the path (the query is kept
//!   as it is; `$1` and `${name}` refer to groups).
//! * `body`: `request` / `response` lists of `{ find, replace }`, applied in order to the whole
//!   body: the filter holds the body until its end (so bodies are bounded by the filter's
//!   `limits.max_body`, 1 MiB by default), then replaces every occurrence.
//!
//! The declared phases come from the config: a transform without body rules never sees a
//! body, one without response edits never sees the response.
//!
//! The configuration reference is the crate's README.

use std::collections::BTreeMap;

use memchr::memmem::Finder;
use regex::Regex;
use serde::Deserialize;
use weir_filter::{
    Action, Body, Filter, HostError, LocalResponse, Phases, Request, Response, export_filter, log,
    metrics,
};

/// The filter's config, as the proxy passes it (the route's override merged over the
/// filter's default). Every part is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Edits to the request headers, before the request goes upstream.
    #[serde(default)]
    pub request: HeaderOps,
    /// Edits to the response headers, before the response goes downstream.
    #[serde(default)]
    pub response: HeaderOps,
    /// A rewrite of the path sent upstream.
    #[serde(default)]
    pub rewrite_path: Option<RewritePath>,
    /// Find/replace rules for bodies.
    #[serde(default)]
    pub body: BodyRules,
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Header → value (or list of values) appended, keeping existing values.
    #[serde(default)]
    pub add: BTreeMap<String, serde_json::Value>,
    /// Header → value (or list of values) replacing every existing value.
    #[serde(default)]
    pub set: BTreeMap<String, serde_json::Value>,
    /// Headers removed (every value).
    #[serde(default)]
    pub remove: Vec<String>,
}

/// How the path is rewritten.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RewritePath {
    /// A path starting with `from` gets `to` instead of that prefix.
    Prefix {
        /// The prefix to replace (starts with `/`).
        from: String,
        /// Its replacement (starts with `/`).
        to: String,
    },
    /// Every match of `pattern` in the path (not the query) is replaced.
    Regex {
        /// A regex (Rust `regex` syntax).
        pattern: String,
        /// The replacement; `$1`, `${name}` name groups, `$$` is a literal `$`.
        replacement: String,
    },
}

/// Body find/replace rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyRules {
    /// Rules for the request body, in order.
    #[serde(default)]
    pub request: Vec<Replace>,
    /// Rules for the response body, in order.
    #[serde(default)]
    pub response: Vec<Replace>,
}

/// One find/replace rule: every occurrence of `find` becomes `replace`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replace {
    /// The text to find (not empty).
    pub find: String,
    /// What it becomes (may be empty).
    #[serde(default)]
    pub replace: String,
}

/// A piece of a header value template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    ClientIp,
    RequestId,
    Route,
}

/// A header value with `$variables`, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

const VARIABLES: &str = "$client_ip, $request_id, $route";

impl Template {
    /// Parses a value: `$name` / `${name}` for the known variables, `$$` for `$`; a `$` not
    /// followed by a name is literal.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            lit.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(r) = after.strip_prefix('$') {
                lit.push('$');
                rest = r;
                continue;
            }
            let (name, r) = if let Some(inner) = after.strip_prefix('{') {
                let Some(end) = inner.find('}') else {
                    return Err(format!("unclosed ${{ in {text:?}"));
                };
                (&inner[..end], &inner[end + 1..])
            } else {
                let len = after
                    .bytes()
                    .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                    .count();
                (&after[..len], &after[len..])
            };
            if name.is_empty() {
                lit.push('$');
                rest = after;
                continue;
            }
            let piece = match name {
                "client_ip" => Piece::ClientIp,
                "request_id" => Piece::RequestId,
                "route" => Piece::Route,
                _ => {
                    return Err(format!(
                        "unknown variable ${name} in {text:?} (known: {VARIABLES}; write $$ for a literal $)"
                    ));
                }
            };
            if !lit.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut lit)));
            }
            pieces.push(piece);
            rest = r;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        for p in &pieces {
            if let Piece::Text(t) = p
                && t.chars().any(|c| c.is_control() && c != '\t')
            {
                return Err(format!(
                    "{text:?} has a control character (a header value cannot carry it)"
                ));
            }
        }
        Ok(Self(pieces))
    }

    /// The value for this request.
    pub fn render(&self, vars: &Vars) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::ClientIp => out.push_str(&vars.client_ip),
                Piece::RequestId => out.push_str(&vars.request_id),
                Piece::Route => out.push_str(&vars.route),
            }
        }
        out
    }

    fn has_variables(&self) -> bool {
        self.0.iter().any(|p| !matches!(p, Piece::Text(_)))
    }
}

/// The values of the template variables for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    /// `$client_ip`: the client's IP (without the port).
    pub client_ip: String,
    /// `$request_id`: the request id (`x-request-id`).
    pub request_id: String,
    /// `$route`: the matched route's name.
    pub route: String,
}

impl Vars {
    /// The variables of the current request.
    pub fn of(req: &Request) -> Self {
        Self {
            client_ip: ip_of(&req.client_address()),
            request_id: req.request_id(),
            route: req.route_name(),
        }
    }
}

/// The IP part of `ip:port` (`[v6]:port` too).
fn ip_of(address: &str) -> String {
    if let Ok(sa) = address.parse::<std::net::SocketAddr>() {
        return sa.ip().to_string();
    }
    match address.rsplit_once(':') {
        Some((ip, _)) => ip.trim_start_matches('[').trim_end_matches(']').to_owned(),
        None => address.to_owned(),
    }
}

/// A header name from the config: a token, not one the proxy owns. Lowercased.
fn header_name(at: &str, name: &str) -> Result<String, String> {
    weir_filter::validate::check_header_name(at, name)?;
    Ok(name.to_ascii_lowercase())
}

/// Compiled header edits.
#[derive(Debug, Default)]
struct Ops {
    remove: Vec<String>,
    set: Vec<(String, Vec<Template>)>,
    add: Vec<(String, Vec<Template>)>,
    /// Whether any value needs the request's variables (three host calls otherwise saved).
    uses_vars: bool,
}

impl Ops {
    fn compile(at: &str, ops: HeaderOps) -> Result<Self, String> {
        let values = |kind: &str, map: BTreeMap<String, serde_json::Value>| {
            map.into_iter()
                .map(|(name, value)| {
                    let list = format!("{at}.{kind}");
                    let at = format!("{list}.{name}");
                    let name = header_name(&list, &name)?;
                    let scalars = match value {
                        serde_json::Value::Array(items) => items,
                        v => vec![v],
                    };
                    let templates = scalars
                        .into_iter()
                        .map(|v| {
                            let text = match v {
                                serde_json::Value::String(s) => s,
                                serde_json::Value::Number(n) => n.to_string(),
                                serde_json::Value::Bool(b) => b.to_string(),
                                _ => {
                                    return Err(format!(
                                        "{at}: a value must be a string (or a list of strings)"
                                    ));
                                }
                            };
                            Template::parse(&text).map_err(|e| format!("{at}: {e}"))
                        })
                        .collect::<Result<Vec<_>, String>>()?;
                    if templates.is_empty() {
                        return Err(format!("{at}: give at least one value"));
                    }
                    Ok((name, templates))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let remove = ops
            .remove
            .iter()
            .map(|n| header_name(&format!("{at}.remove"), n))
            .collect::<Result<_, _>>()?;
        let set = values("set", ops.set)?;
        let add = values("add", ops.add)?;
        let uses_vars = set
            .iter()
            .chain(&add)
            .any(|(_, ts)| ts.iter().any(Template::has_variables));
        Ok(Self {
            remove,
            set,
            add,
            uses_vars,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// Header calls shared by the request and the response.
trait Headers {
    fn remove(&mut self, name: &str) -> Result<(), HostError>;
    fn set(&mut self, name: &str, value: &str) -> Result<(), HostError>;
    fn append(&mut self, name: &str, value: &str) -> Result<(), HostError>;
}

impl Headers for Request {
    fn remove(&mut self, name: &str) -> Result<(), HostError> {
        self.remove_header(name)
    }
    fn set(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.set_header(name, value)
    }
    fn append(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.append_header(name, value)
    }
}

impl Headers for Response {
    fn remove(&mut self, name: &str) -> Result<(), HostError> {
        self.remove_header(name)
    }
    fn set(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.set_header(name, value)
    }
    fn append(&mut self, name: &str, value: &str) -> Result<(), HostError> {
        self.append_header(name, value)
    }
}

impl Ops {
    /// Applies the edits, rendering values with `vars`.
    fn apply(&self, headers: &mut impl Headers, vars: &Vars) -> Result<(), HostError> {
        for name in &self.remove {
            headers.remove(name)?;
        }
        for (name, templates) in &self.set {
            for (i, t) in templates.iter().enumerate() {
                if i == 0 {
                    headers.set(name, &t.render(vars))?;
                } else {
                    headers.append(name, &t.render(vars))?;
                }
            }
        }
        for (name, templates) in &self.add {
            for t in templates {
                headers.append(name, &t.render(vars))?;
            }
        }
        Ok(())
    }
}

/// A compiled path rewrite.
#[derive(Debug)]
enum Rewrite {
    Prefix { from: String, to: String },
    Regex { re: Regex, replacement: String },
}

impl Rewrite {
    fn compile(r: RewritePath) -> Result<Self, String> {
        match r {
            RewritePath::Prefix { from, to } => {
                if !from.starts_with('/') {
                    return Err(format!(
                        "rewrite_path.prefix.from: {from:?} must start with /"
                    ));
                }
                if !to.starts_with('/') {
                    return Err(format!("rewrite_path.prefix.to: {to:?} must start with /"));
                }
                Ok(Self::Prefix { from, to })
            }
            RewritePath::Regex {
                pattern,
                replacement,
            } => {
                let re =
                    Regex::new(&pattern).map_err(|e| format!("rewrite_path.regex.pattern: {e}"))?;
                Ok(Self::Regex { re, replacement })
            }
        }
    }

    /// The new path (with query), or `None` if the rule does not apply.
    pub fn apply(&self, path_and_query: &str) -> Option<String> {
        match self {
            Self::Prefix { from, to } => path_and_query
                .strip_prefix(from.as_str())
                .map(|rest| format!("{to}{rest}")),
            Self::Regex { re, replacement } => {
                let (path, query) = match path_and_query.find('?') {
                    Some(at) => path_and_query.split_at(at),
                    None => (path_and_query, ""),
                };
                if !re.is_match(path) {
                    return None;
                }
                Some(format!(
                    "{}{query}",
                    re.replace_all(path, replacement.as_str())
                ))
            }
        }
    }
}

/// A compiled find/replace rule.
#[derive(Debug)]
struct Replacement {
    find: Finder<'static>,
    replace: Vec<u8>,
}

fn compile_rules(at: &str, rules: Vec<Replace>) -> Result<Vec<Replacement>, String> {
    rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            if r.find.is_empty() {
                return Err(format!("{at}[{i}].find: must not be empty"));
            }
            Ok(Replacement {
                find: Finder::new(r.find.as_bytes()).into_owned(),
                replace: r.replace.into_bytes(),
            })
        })
        .collect()
}

/// Applies the rules in order; returns the new bytes (if anything matched) and how many
/// replacements were made.
fn replace_all(bytes: &[u8], rules: &[Replacement]) -> (Option<Vec<u8>>, u64) {
    let mut current: Option<Vec<u8>> = None;
    let mut total = 0;
    for rule in rules {
        let input = current.as_deref().unwrap_or(bytes);
        let mut out = Vec::new();
        let mut last = 0;
        let mut n = 0u64;
        let len = rule.find.needle().len();
        // Non-overlapping matches, left to right (`aa` in `aaa` matches once).
        for at in rule.find.find_iter(input) {
            out.extend_from_slice(&input[last..at]);
            out.extend_from_slice(&rule.replace);
            last = at + len;
            n += 1;
        }
        if n > 0 {
            out.extend_from_slice(&input[last..]);
            current = Some(out);
            total += n;
        }
    }
    (current, total)
}

/// Whether a `content-encoding` value means the bytes are not the plain body.
fn encoded(content_encoding: Option<String>) -> bool {
    content_encoding.is_some_and(|v| {
        v.split(',')
            .map(str::trim)
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
    })
}

/// Adds to a counter; a metrics failure must never affect traffic.
fn count(name: &str, labels: &[(&str, &str)], n: u64) {
    let _ = metrics::counter_add(name, labels, n);
}

/// A transform step failed: the request is answered 500 rather than sent on half-edited.
fn failed(phase: &str, what: &str) -> Action {
    log::error(&format!("transform: {phase}: {what}"));
    count("transform_errors_total", &[("phase", phase)], 1);
    LocalResponse::json(500, &serde_json::json!({ "error": "transform failed" })).into()
}

/// The transform filter, configured.
#[derive(Debug)]
pub struct Transform {
    request: Ops,
    response: Ops,
    rewrite: Option<Rewrite>,
    request_body: Vec<Replacement>,
    response_body: Vec<Replacement>,
}

impl Transform {
    fn body(&self, body: &mut Body, end: bool, rules: &[Replacement], which: &str) -> Action {
        let encoding = match body.response() {
            Some(res) => res.header("content-encoding"),
            None => body.request().header("content-encoding"),
        };
        if encoded(encoding) {
            // Replacing inside compressed bytes would corrupt them: pass them through.
            if end {
                count("transform_body_skipped_total", &[("body", which)], 1);
            }
            return Action::Continue;
        }
        if !end {
            return Action::Buffer;
        }
        let bytes = match body.bytes() {
            Ok(b) => b,
            Err(e) => return failed(which, &format!("reading the body: {e}")),
        };
        let (changed, n) = replace_all(&bytes, rules);
        let Some(changed) = changed else {
            return Action::Continue;
        };
        if let Err(e) = body.set(changed) {
            return failed(which, &format!("replacing the body: {e}"));
        }
        count("transform_body_replacements_total", &[("body", which)], n);
        Action::Continue
    }
}

impl Filter for Transform {
    type Config = Config;
    type Context = ();
    /// The most it declares; [`phases`](Filter::phases) keeps only what the config uses.
    const PHASES: Phases = Phases::REQUEST_HEADERS
        .union(Phases::REQUEST_BODY)
        .union(Phases::RESPONSE_HEADERS)
        .union(Phases::RESPONSE_BODY);

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self {
            request: Ops::compile("request", config.request)?,
            response: Ops::compile("response", config.response)?,
            rewrite: config.rewrite_path.map(Rewrite::compile).transpose()?,
            request_body: compile_rules("body.request", config.body.request)?,
            response_body: compile_rules("body.response", config.body.response)?,
        })
    }

    fn phases(&self) -> Phases {
        let mut p = Phases::NONE;
        // Response body rules need the request phase too: it asks for an uncompressed body.
        if !self.request.is_empty() || self.rewrite.is_some() || !self.response_body.is_empty() {
            p |= Phases::REQUEST_HEADERS;
        }
        if !self.request_body.is_empty() {
            p |= Phases::REQUEST_BODY;
        }
        if !self.response.is_empty() {
            p |= Phases::RESPONSE_HEADERS;
        }
        if !self.response_body.is_empty() {
            p |= Phases::RESPONSE_BODY;
        }
        p
    }

    fn on_request_headers(&self, req: &mut Request, _: &mut ()) -> Action {
        if !self.response_body.is_empty()
            && let Err(e) = req.remove_header("accept-encoding")
        {
            return failed("request", &format!("removing accept-encoding: {e}"));
        }
        if let Some(rewrite) = &self.rewrite {
            let path = req.path();
            if let Some(new) = rewrite.apply(&path) {
                if !new.starts_with('/') {
                    return failed(
                        "request",
                        &format!(
                            "rewrite_path turned {path:?} into {new:?}, which does not start with /"
                        ),
                    );
                }
                if let Err(e) = req.set_path(&new) {
                    return failed("request", &format!("rewrite_path to {new:?}: {e}"));
                }
                count("transform_path_rewrites_total", &[], 1);
            }
        }
        let vars = if self.request.uses_vars {
            Vars::of(req)
        } else {
            Vars::default()
        };
        match self.request.apply(req, &vars) {
            Ok(()) => Action::Continue,
            Err(e) => failed("request", &format!("request headers: {e}")),
        }
    }

    fn on_request_body(&self, body: &mut Body, end: bool, _: &mut ()) -> Action {
        self.body(body, end, &self.request_body, "request")
    }

    fn on_response_headers(&self, res: &mut Response, _: &mut ()) -> Action {
        let vars = if self.response.uses_vars {
            Vars::of(res.request())
        } else {
            Vars::default()
        };
        match self.response.apply(res, &vars) {
            Ok(()) => Action::Continue,
            Err(e) => failed("response", &format!("response headers: {e}")),
        }
    }

    fn on_response_body(&self, body: &mut Body, end: bool, _: &mut ()) -> Action {
        self.body(body, end, &self.response_body, "response")
    }
}

export_filter!(Transform);

#[cfg(test)]
mod tests;
