//! End-to-end: hostile requests (issue #10).
//!
//! What the proxy routes, filters and authorizes must be exactly what the upstream serves. Each
//! vector is written byte for byte on a fresh connection, and its verdict is read from what a
//! strict, raw recording upstream received, not from what the client was told. Checked for
//! every vector:
//!
//! - **no ACL bypass**: `public-up` never serves a path that, decoded as aggressively as any
//!   backend might, starts with `/admin`, nor the host `internal.test` (route `admin` stands in
//!   for an auth-protected route);
//! - **nothing smuggled**: the upstreams receive no more requests than the vector may cause;
//! - **nothing invalid forwarded**: the upstream's strict parser flags nothing;
//! - **no crash**: weir still runs and serves after the table;
//!
//! plus the vector's own expected status and what the upstream must have seen. Every failure is
//! collected and reported in one table, so one run shows them all.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::h2raw::*;
use crate::support::Weir;
use anyhow::{Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::timeout_at;

/// How long one vector may take before its client gives up waiting for an answer.
const VECTOR_LIMIT: Duration = Duration::from_secs(3);
const ADMIN_UP: &str = "admin-up";
const PUBLIC_UP: &str = "public-up";
/// What both recording upstreams answer to every complete request.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
/// A request hidden where a body should be: it must never reach an upstream as a request.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: public.test\r\n\r\n";
const HELLO_CHUNKED: &str = "5\r\nhello\r\n0\r\n\r\n";

// ------------------------------------------------------------------------------------------
// The strict recording upstreams
// ------------------------------------------------------------------------------------------

/// One complete request as a recording upstream parsed it from the bytes it received.
#[derive(Debug, Clone)]
struct Seen {
    upstream: &'static str,
    method: String,
    target: String,
    version: String,
    /// Raw (name, value) pairs in order, values without surrounding whitespace.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// What the strict parser found wrong; must stay empty.
    invalid: Vec<String>,
}

impl Seen {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "{} {} {} {} host={:?}",
            self.upstream,
            self.method,
            self.target,
            self.version,
            self.all("host")
        );
        if !self.body.is_empty() {
            let _ = write!(s, " body={}", esc(&self.body));
        }
        if !self.invalid.is_empty() {
            let _ = write!(s, " INVALID[{}]", self.invalid.join("; "));
        }
        s
    }
}

#[derive(Debug, Clone)]
enum Event {
    Request(Box<Seen>),
    /// Bytes the strict parser could not frame at all (the connection is closed after them).
    Invalid {
        upstream: &'static str,
        what: String,
    },
    /// Not a failure by itself: a request abandoned half-way (an aborted stream, a body that
    /// never came).
    Note {
        upstream: &'static str,
        what: String,
    },
}

impl Event {
    fn describe(&self) -> String {
        match self {
            Event::Request(s) => s.describe(),
            Event::Invalid { upstream, what } => format!("{upstream} UNPARSEABLE: {what}"),
            Event::Note { upstream, what } => format!("{upstream} note: {what}"),
        }
    }
}

struct UpConn {
    upstream: &'static str,
    open: bool,
    /// Bytes received that do not yet make a complete request.
    pending: Vec<u8>,
    task: Option<AbortHandle>,
}

/// Everything both upstreams received, in arrival order.
#[derive(Default)]
struct Recording {
    events: Vec<Event>,
    conns: HashMap<u64, UpConn>,
    next_conn: u64,
    /// Grows with every byte received: the upstreams are quiet when it stops growing.
    activity: u64,
}

type Log = Arc<Mutex<Recording>>;

/// A raw TCP upstream that records and strictly parses every byte it receives.
struct Recorder {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start(name: &'static str, log: Log) -> Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let id = {
                    let mut l = log.lock().unwrap();
                    l.next_conn += 1;
                    let id = l.next_conn;
                    l.conns.insert(
                        id,
                        UpConn {
                            upstream: name,
                            open: true,
                            pending: Vec::new(),
                            task: None,
                        },
                    );
                    id
                };
                let task = tokio::spawn(serve_recorded(name, id, stream, log.clone()));
                if let Some(c) = log.lock().unwrap().conns.get_mut(&id) {
                    c.task = Some(task.abort_handle());
                }
            }
        });
        Ok(Recorder { addr, task })
    }
}

async fn serve_recorded(upstream: &'static str, id: u64, mut s: TcpStream, log: Log) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut chunk).await.unwrap_or(0);
        let (answers, fatal) = {
            let mut l = log.lock().unwrap();
            l.activity += 1 + n as u64;
            if n == 0 {
                if !buf.is_empty() {
                    l.events.push(Event::Note {
                        upstream,
                        what: format!("connection closed mid-request after {}", esc(&buf)),
                    });
                }
                if let Some(c) = l.conns.get_mut(&id) {
                    c.open = false;
                    c.pending.clear();
                }
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut answers = 0;
            let mut fatal = false;
            loop {
                match parse_request(&buf, upstream) {
                    Parsed::Complete(seen, used) => {
                        buf.drain(..used);
                        l.events.push(Event::Request(seen));
                        answers += 1;
                    }
                    Parsed::Partial => break,
                    Parsed::Fatal(what) => {
                        l.events.push(Event::Invalid {
                            upstream,
                            what: format!("{what} in {}", esc(&buf)),
                        });
                        fatal = true;
                        break;
                    }
                }
            }
            if let Some(c) = l.conns.get_mut(&id) {
                c.open = !fatal;
                c.pending = if fatal { Vec::new() } else { buf.clone() };
            }
            (answers, fatal)
        };
        for _ in 0..answers {
            if s.write_all(OK).await.is_err() {
                return;
            }
        }
        if fatal {
            return;
        }
    }
}

/// Closes every upstream connection left holding part of a request, so the next vector starts
/// clean, and notes what each held.
fn cut_stalled(log: &Log) {
    let mut l = log.lock().unwrap();
    let mut notes = Vec::new();
    for c in l.conns.values_mut() {
        if c.open && !c.pending.is_empty() {
            notes.push(Event::Note {
                upstream: c.upstream,
                what: format!("left waiting mid-request after {}", esc(&c.pending)),
            });
            if let Some(t) = &c.task {
                t.abort();
            }
            c.open = false;
            c.pending.clear();
        }
    }
    l.events.extend(notes);
}

/// Waits until the upstreams have been quiet for a moment. A smuggled request travels in the
/// same bytes as the one hiding it, so a short quiet spell after the client's exchange is
/// enough to catch it.
async fn settle(log: &Log) {
    let mut last = log.lock().unwrap().activity;
    loop {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let now = log.lock().unwrap().activity;
        if now == last {
            return;
        }
        last = now;
    }
}

enum Parsed {
    Complete(Box<Seen>, usize),
    Partial,
    Fatal(String),
}

/// Parses one request from the front of `buf` the strict way (RFC 9112), flagging anything a
/// lenient server might read differently.
fn parse_request(buf: &[u8], upstream: &'static str) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if find(buf, b"\n\n").is_some() || find(buf, b"\n\r\n").is_some() {
            return Parsed::Fatal("head ends with a bare LF".into());
        }
        return Parsed::Partial;
    };
    let head = &buf[..end];
    let mut invalid = Vec::new();
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        invalid.push("bare LF in the head".to_string());
    }
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && head.get(i + 1) != Some(&b'\n'))
    {
        invalid.push("bare CR in the head".to_string());
    }
    let mut lines = split(head, b"\r\n").into_iter();
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Parsed::Fatal(format!("request line {}", esc(line)));
    };
    if method.is_empty() || !method.iter().copied().all(is_tchar) {
        invalid.push(format!("method {} is not a token", esc(method)));
    }
    if let Err(why) = origin_form(target) {
        invalid.push(format!("target {}: {why}", esc(target)));
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        invalid.push(format!("version {}", esc(version)));
    }
    let mut headers = Vec::new();
    for l in lines {
        match header_line(l) {
            Ok(h) => headers.push(h),
            Err(why) => invalid.push(why),
        }
    }
    let values = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    match values("host").len() {
        0 => invalid.push("no Host".into()),
        1 => {}
        n => invalid.push(format!("{n} Host headers")),
    }
    let (cls, tes) = (values("content-length"), values("transfer-encoding"));
    if !cls.is_empty() && !tes.is_empty() {
        invalid.push("both Transfer-Encoding and Content-Length".into());
    }
    if cls.len() > 1 {
        invalid.push(format!("Content-Length repeated: {cls:?}"));
    }
    if tes.len() > 1
        || tes
            .first()
            .is_some_and(|t| !t.eq_ignore_ascii_case("chunked"))
    {
        invalid.push(format!("Transfer-Encoding is not exactly chunked: {tes:?}"));
    }
    let start = end + 4;
    let (body, used) = if let Some(te) = tes.last() {
        if !te.to_ascii_lowercase().ends_with("chunked") {
            return Parsed::Fatal(format!("Transfer-Encoding {te:?} does not end in chunked"));
        }
        match parse_chunked(&buf[start..], &mut invalid) {
            Ok(Some((body, n))) => (body, start + n),
            Ok(None) => return Parsed::Partial,
            Err(why) => return Parsed::Fatal(why),
        }
    } else if let Some(cl) = cls.first() {
        if cls.iter().any(|c| c != cl) {
            return Parsed::Fatal(format!("Content-Length values differ: {cls:?}"));
        }
        if cl.is_empty() || !cl.bytes().all(|b| b.is_ascii_digit()) {
            return Parsed::Fatal(format!("Content-Length {cl:?}"));
        }
        let Ok(n) = cl.parse::<usize>() else {
            return Parsed::Fatal(format!("Content-Length {cl:?} overflows"));
        };
        if buf.len() < start + n {
            return Parsed::Partial;
        }
        (buf[start..start + n].to_vec(), start + n)
    } else {
        (Vec::new(), start)
    };
    Parsed::Complete(
        Box::new(Seen {
            upstream,
            method: lossy(method),
            target: lossy(target),
            version: lossy(version),
            headers,
            body,
            invalid,
        }),
        used,
    )
}

/// A header (or trailer) line: `token ":" OWS value OWS`, value without control bytes.
fn header_line(l: &[u8]) -> Result<(String, String), String> {
    if matches!(l.first(), Some(b' ' | b'\t')) {
        return Err(format!("obs-fold line {}", esc(l)));
    }
    let Some(colon) = l.iter().position(|&b| b == b':') else {
        return Err(format!("header line without a colon: {}", esc(l)));
    };
    let (name, value) = (&l[..colon], &l[colon + 1..]);
    let value = trim_ows(value);
    if name.is_empty() || !name.iter().copied().all(is_tchar) {
        return Err(format!("header name {} is not a token", esc(name)));
    }
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("control byte in the value of {}", esc(name)));
    }
    Ok((lossy(name), lossy(value)))
}

/// A chunked body; `Ok(None)` until it is complete. Returns the body and the bytes used.
fn parse_chunked(
    data: &[u8],
    invalid: &mut Vec<String>,
) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(&data[pos..], b"\r\n") else {
            if data[pos..].contains(&b'\n') {
                return Err("bare LF after a chunk size".into());
            }
            return Ok(None);
        };
        let line = &data[pos..pos + eol];
        let (size, ext) = match line.iter().position(|&b| b == b';') {
            Some(i) => (&line[..i], &line[i..]),
            None => (line, &line[..0]),
        };
        if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("chunk size line {}", esc(line)));
        }
        if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            invalid.push(format!("control byte in a chunk extension {}", esc(ext)));
        }
        let n = usize::from_str_radix(&lossy(size), 16).map_err(|e| e.to_string())?;
        pos += eol + 2;
        if n == 0 {
            loop {
                let Some(eol) = find(&data[pos..], b"\r\n") else {
                    return Ok(None);
                };
                let line = &data[pos..pos + eol];
                pos += eol + 2;
                if line.is_empty() {
                    return Ok(Some((body, pos)));
                }
                match header_line(line) {
                    Ok((name, _)) => {
                        const FORBIDDEN: [&str; 6] = [
                            "content-length",
                            "transfer-encoding",
                            "host",
                            "connection",
                            "trailer",
                            "te",
                        ];
                        if FORBIDDEN.iter().any(|f| f.eq_ignore_ascii_case(&name)) {
                            invalid.push(format!("forbidden trailer field {name}"));
                        }
                    }
                    Err(why) => invalid.push(format!("trailer: {why}")),
                }
            }
        }
        if data.len() < pos + n + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[pos..pos + n]);
        if &data[pos + n..pos + n + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos += n + 2;
    }
}

/// `origin-form`: `/`, then visible ASCII without `#` or `\`, and well-formed escapes in the
/// path.
fn origin_form(target: &[u8]) -> Result<(), &'static str> {
    if target.first() != Some(&b'/') {
        return Err("not origin-form");
    }
    if target.iter().any(|&b| !(0x21..=0x7e).contains(&b)) {
        return Err("a byte outside visible ASCII");
    }
    if target.iter().any(|&b| b == b'#' || b == b'\\') {
        return Err("'#' or '\\'");
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    for (i, &b) in path.iter().enumerate() {
        if b == b'%'
            && !(path.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && path.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err("a malformed escape");
        }
    }
    Ok(())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split<'a>(b: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = b;
    while let Some(i) = find(rest, sep) {
        out.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    out.push(rest);
    out
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Bytes as an escaped, shortened string for reports.
fn esc(b: &[u8]) -> String {
    const MAX: usize = 100;
    let shown: String = b
        .iter()
        .take(MAX)
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect();
    if b.len() > MAX {
        format!("\"{shown}\"…({} bytes)", b.len())
    } else {
        format!("\"{shown}\"")
    }
}

// ------------------------------------------------------------------------------------------
// The ACL oracle
// ------------------------------------------------------------------------------------------

/// The path as the most gullible backend could read it: percent-decoded until stable (`%25`
/// too, overlong UTF-8 `.` and `/` as well), `\` as `/`, `;params` dropped from each segment,
/// dot segments resolved, empty segments merged, lowercased.
fn aggressively_decoded(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let mut bytes = path.as_bytes().to_vec();
    for _ in 0..10 {
        let next = overlong(&percent_decoded(&bytes));
        if next == bytes {
            break;
        }
        bytes = next;
    }
    let text = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        match seg.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/")).to_lowercase()
}

fn percent_decoded(b: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn overlong(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i..] {
            [0xc0, 0xae, ..] => {
                out.push(b'.');
                i += 2;
            }
            [0xc0, 0xaf, ..] => {
                out.push(b'/');
                i += 2;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// A Host value's host: lowercased, without port or trailing dot.
fn bare_host(h: &str) -> String {
    let h = h.trim().to_ascii_lowercase();
    let h = match h.rsplit_once(':') {
        Some((host, port)) if !h.starts_with('[') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host.to_string()
        }
        _ => h,
    };
    h.trim_end_matches('.').to_string()
}

// ------------------------------------------------------------------------------------------
// Raw clients
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Ended {
    /// The responses the vector waits for arrived.
    #[default]
    Answered,
    /// The connection closed (or the HTTP/2 stream was reset) first.
    Closed,
    /// Nothing more came within the vector's time limit.
    TimedOut,
}

/// What the client got.
#[derive(Debug, Clone, Default)]
struct Got {
    interim: Vec<u16>,
    responses: Vec<Response>,
    ended: Ended,
    /// HTTP/2: the RST_STREAM or GOAWAY that ended the exchange.
    reset: Option<String>,
    write_failed: bool,
}

impl Got {
    fn status(&self) -> Option<u16> {
        self.responses.first().map(|r| r.status)
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.interim.iter().map(u16::to_string).collect();
        parts.extend(self.responses.iter().map(|r| r.status.to_string()));
        let mut s = parts.join(" → ");
        let end = match self.ended {
            Ended::Answered => None,
            Ended::Closed => Some("closed"),
            Ended::TimedOut => Some("no answer in time"),
        };
        if let Some(end) = end {
            if !s.is_empty() {
                s.push_str(", then ");
            }
            s.push_str(end);
        }
        if let Some(r) = &self.reset {
            let _ = write!(s, " ({r})");
        }
        if self.write_failed {
            s.push_str(" (write failed)");
        }
        s
    }
}

enum Step {
    Send(Vec<u8>),
    /// Like curl: wait up to a second for `100 Continue` (or an early final answer); if a final
    /// answer came, the remaining steps are skipped.
    AwaitContinue,
}

/// Takes one response off the front of `buf` (`eof`: no more bytes will come). Status 0 means
/// the bytes are not an HTTP/1 response at all.
fn take_response(buf: &mut Vec<u8>, eof: bool) -> Option<Response> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if eof && !buf.is_empty() {
            buf.clear();
            return Some(Response::default());
        }
        return None;
    };
    let mut lines = split(&buf[..end], b"\r\n").into_iter();
    let line = lines.next().unwrap_or_default();
    let status = match line.split(|&b| b == b' ').collect::<Vec<_>>()[..] {
        [v, code, ..] if v.starts_with(b"HTTP/1.") => lossy(code).parse().unwrap_or(0),
        _ => 0,
    };
    let headers: Vec<(String, String)> = lines
        .map(|l| match l.iter().position(|&b| b == b':') {
            Some(i) => (lossy(&l[..i]), lossy(trim_ows(&l[i + 1..]))),
            None => (lossy(l), String::new()),
        })
        .collect();
    let mut res = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let start = end + 4;
    let chunked = res
        .all("transfer-encoding")
        .iter()
        .any(|t| t.to_ascii_lowercase().contains("chunked"));
    let used = if (100..200).contains(&status) || status == 204 || status == 304 {
        start
    } else if chunked {
        let mut ignored = Vec::new();
        match parse_chunked(&buf[start..], &mut ignored) {
            Ok(Some((body, n))) => {
                res.body = body;
                start + n
            }
            Ok(None) if !eof => return None,
            _ => {
                res.body = buf[start..].to_vec();
                buf.len()
            }
        }
    } else if let Some(n) = res
        .all("content-length")
        .first()
        .and_then(|v| v.parse::<usize>().ok())
    {
        if buf.len() < start + n {
            if !eof {
                return None;
            }
            res.body = buf[start..].to_vec();
            buf.len()
        } else {
            res.body = buf[start..start + n].to_vec();
            start + n
        }
    } else {
        if !eof {
            return None;
        }
        res.body = buf[start..].to_vec();
        buf.len()
    };
    buf.drain(..used);
    Some(res)
}

/// Moves every complete response out of `buf` into `got`.
fn take_responses(buf: &mut Vec<u8>, eof: bool, got: &mut Got) {
    while let Some(r) = take_response(buf, eof) {
        // 101 switches protocols: a final answer, and one this proxy must never give.
        if (100..200).contains(&r.status) && r.status != 101 {
            got.interim.push(r.status);
        } else {
            got.responses.push(r);
        }
    }
}

/// Reads more bytes; false at EOF (or error) or when `until` passes.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, eof: &mut bool, until: Instant) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match timeout_at(until.into(), s.read(&mut chunk)).await {
        Ok(Ok(0) | Err(_)) => {
            *eof = true;
            false
        }
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Err(_) => false,
    }
}

/// Runs `steps` on a fresh HTTP/1 connection and reads until `responses` final answers came,
/// the connection closed, or `limit` passed.
async fn h1_exchange(addr: SocketAddr, steps: &[Step], responses: usize, limit: Duration) -> Got {
    let deadline = Instant::now() + limit;
    let mut got = Got::default();
    let Ok(Ok(mut s)) = timeout_at(deadline.into(), TcpStream::connect(addr)).await else {
        got.ended = Ended::Closed;
        got.reset = Some("connect failed".into());
        return got;
    };
    let (mut buf, mut eof) = (Vec::new(), false);
    for step in steps {
        match step {
            Step::Send(bytes) => {
                if s.write_all(bytes).await.is_err() {
                    got.write_failed = true;
                    break;
                }
            }
            Step::AwaitContinue => {
                let until = deadline.min(Instant::now() + Duration::from_secs(1));
                loop {
                    take_responses(&mut buf, eof, &mut got);
                    if !got.interim.is_empty() || !got.responses.is_empty() || eof {
                        break;
                    }
                    if !read_more(&mut s, &mut buf, &mut eof, until).await && !eof {
                        break;
                    }
                }
                if !got.responses.is_empty() || eof {
                    break;
                }
            }
        }
    }
    loop {
        take_responses(&mut buf, eof, &mut got);
        if got.responses.len() >= responses {
            got.ended = Ended::Answered;
            break;
        }
        if eof {
            got.ended = Ended::Closed;
            break;
        }
        if !read_more(&mut s, &mut buf, &mut eof, deadline).await && !eof {
            got.ended = Ended::TimedOut;
            break;
        }
    }
    got
}

/// An HPACK integer with an `n`-bit prefix: (value, bytes used).
fn read_hpack_int(b: &[u8], n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let first = usize::from(*b.first()?) & max;
    if first < max {
        return Some((first, 1));
    }
    let (mut v, mut shift) = (max, 0);
    for (i, &c) in b.iter().enumerate().skip(1) {
        v += usize::from(c & 0x7f) << shift;
        shift += 7;
        if c & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Huffman-coded digits (RFC 7541 Appendix B: `0`–`2` have 5-bit codes, `3`–`9` 6-bit ones).
fn huffman_digits(b: &[u8]) -> Option<String> {
    let bits = b.len() * 8;
    let bit = |i: usize| (b[i / 8] >> (7 - i % 8)) & 1;
    let take = |at: usize, n: usize| (at..at + n).fold(0u8, |v, i| (v << 1) | bit(i));
    let mut out = String::new();
    let mut at = 0;
    while at < bits {
        if bits - at < 8 && (at..bits).all(|i| bit(i) == 1) {
            break;
        }
        if bits - at >= 5 && take(at, 5) <= 2 {
            out.push(char::from(b'0' + take(at, 5)));
            at += 5;
        } else if bits - at >= 6 && (0b011001..=0b011111).contains(&take(at, 6)) {
            out.push(char::from(b'0' + take(at, 6) - 0b011001 + 3));
            at += 6;
        } else {
            return None;
        }
    }
    Some(out)
}

/// The `:status` of a response header block (the first field, as every encoder puts it).
fn h2_status(block: &[u8]) -> Option<u16> {
    let mut i = 0;
    while block.get(i)? & 0xe0 == 0x20 {
        i += read_hpack_int(&block[i..], 5)?.1;
    }
    let b = block[i];
    let static_status = |idx: usize| match idx {
        8 => Some(200),
        9 => Some(204),
        10 => Some(206),
        11 => Some(304),
        12 => Some(400),
        13 => Some(404),
        14 => Some(500),
        _ => None,
    };
    if b & 0x80 != 0 {
        return static_status(read_hpack_int(&block[i..], 7)?.0);
    }
    let (idx, n) = read_hpack_int(&block[i..], if b & 0x40 != 0 { 6 } else { 4 })?;
    if !(8..=14).contains(&idx) {
        return None;
    }
    i += n;
    let huffman = block.get(i)? & 0x80 != 0;
    let (len, n) = read_hpack_int(&block[i..], 7)?;
    let s = block.get(i + n..i + n + len)?;
    let text = if huffman {
        huffman_digits(s)?
    } else {
        lossy(s)
    };
    text.parse().ok()
}

/// The header block fragment of a HEADERS frame (without padding and priority).
fn header_block(payload: &[u8], flags: u8) -> &[u8] {
    let mut p = payload;
    if flags & PADDED != 0 && !p.is_empty() {
        let pad = usize::from(p[0]);
        p = p.get(1..p.len().saturating_sub(pad)).unwrap_or_default();
    }
    if flags & PRIORITY != 0 {
        p = p.get(5..).unwrap_or_default();
    }
    p
}

/// One request on stream 1 of a fresh h2c (prior knowledge) connection.
async fn h2_exchange(
    addr: SocketAddr,
    fields: &[(&str, &str)],
    data: Option<&[u8]>,
    limit: Duration,
) -> Got {
    let deadline = Instant::now() + limit;
    let mut got = Got::default();
    let Ok(Ok(mut s)) = timeout_at(deadline.into(), TcpStream::connect(addr)).await else {
        got.ended = Ended::Closed;
        got.reset = Some("connect failed".into());
        return got;
    };
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let last = if data.is_none() { END_STREAM } else { 0 };
    out.extend(frame(HEADERS, END_HEADERS | last, 1, &hpack(fields)));
    if let Some(d) = data {
        out.extend(frame(DATA, END_STREAM, 1, d));
    }
    if s.write_all(&out).await.is_err() {
        got.write_failed = true;
    }
    let mut buf: Vec<u8> = Vec::new();
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            let code = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            };
            match ty {
                SETTINGS if flags & ACK == 0 => {
                    let _ = s.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                PING if flags & ACK == 0 => {
                    let _ = s.write_all(&frame(PING, ACK, 0, &payload)).await;
                }
                HEADERS if stream == 1 => {
                    let status = h2_status(header_block(&payload, flags)).unwrap_or(0);
                    if (100..200).contains(&status) {
                        got.interim.push(status);
                    } else if got.responses.is_empty() {
                        got.responses.push(Response {
                            status,
                            ..Response::default()
                        });
                    }
                    if flags & END_STREAM != 0 {
                        got.ended = Ended::Answered;
                        return got;
                    }
                }
                DATA if stream == 1 => {
                    if let Some(r) = got.responses.last_mut() {
                        r.body.extend(&payload);
                    }
                    if flags & END_STREAM != 0 {
                        got.ended = Ended::Answered;
                        return got;
                    }
                }
                RST_STREAM if stream == 1 => {
                    got.reset = Some(format!("RST_STREAM error {}", code(0)));
                    got.ended = Ended::Closed;
                    return got;
                }
                GOAWAY => {
                    got.reset = Some(format!("GOAWAY error {}", code(4)));
                    got.ended = Ended::Closed;
                    return got;
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match timeout_at(deadline.into(), s.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => {
                got.ended = Ended::Closed;
                return got;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                got.ended = Ended::TimedOut;
                return got;
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Vectors
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Up {
    Admin,
    Public,
}

impl Up {
    fn name(self) -> &'static str {
        match self {
            Up::Admin => ADMIN_UP,
            Up::Public => PUBLIC_UP,
        }
    }
}

/// What the client must get (the first final response).
#[derive(Debug, Clone)]
enum Want {
    Status(u16),
    OneOf(&'static [u16]),
    /// A refusal (see `is_refusal`), a closed connection or a reset stream; never a hang.
    Refused,
    /// Refused (and then nothing forwarded), or 200 from the upstream.
    RefusedOr200,
    /// Any outcome: the oracles alone judge.
    Anything,
}

/// What the upstream must have seen, checked whenever something was forwarded.
#[derive(Debug, Clone)]
enum Check {
    /// Every forwarded request went to this upstream.
    To(Up),
    /// The first forwarded request's target.
    Path(&'static str),
    /// Every forwarded request's target, in order.
    Paths(&'static [&'static str]),
    /// The first forwarded request's only Host.
    Host(&'static str),
    /// The first forwarded request has exactly this one value for the header, or none.
    Header(&'static str, Option<&'static str>),
    /// No value of the header contains this text (case-insensitive).
    HeaderLacks(&'static str, &'static str),
    /// The first forwarded request's body.
    Body(&'static [u8]),
    /// The client's final statuses, in order.
    Statuses(&'static [u16]),
}

enum Proto {
    H1(Vec<Step>),
    H2 {
        fields: Vec<(&'static str, &'static str)>,
        data: Option<&'static [u8]>,
    },
}

struct Vector {
    name: &'static str,
    listener: &'static str,
    proto: Proto,
    want: Want,
    checks: Vec<Check>,
    /// Most requests the upstreams may receive for this vector.
    max_forwarded: usize,
    /// Final responses the client waits for.
    responses: usize,
    limit: Duration,
}

/// An HTTP/1 vector: these bytes, in one write.
fn v(name: &'static str, bytes: impl Into<Vec<u8>>) -> Vector {
    Vector {
        name,
        listener: "public",
        proto: Proto::H1(vec![Step::Send(bytes.into())]),
        want: Want::Status(200),
        checks: Vec::new(),
        max_forwarded: 1,
        responses: 1,
        limit: VECTOR_LIMIT,
    }
}

/// An HTTP/2 vector: one request with these header fields, in this order.
fn h2(name: &'static str, fields: &[(&'static str, &'static str)]) -> Vector {
    Vector {
        proto: Proto::H2 {
            fields: fields.to_vec(),
            data: None,
        },
        ..v(name, "")
    }
}

impl Vector {
    fn on(mut self, listener: &'static str) -> Self {
        self.listener = listener;
        self
    }
    /// Served with 200 by `up`, which saw `path`.
    fn to(mut self, up: Up, path: &'static str) -> Self {
        self.want = Want::Status(200);
        self.checks.extend([Check::To(up), Check::Path(path)]);
        self
    }
    fn status(mut self, status: u16) -> Self {
        self.want = Want::Status(status);
        if status >= 400 {
            self.max_forwarded = 0;
        }
        self
    }
    fn one_of(mut self, statuses: &'static [u16]) -> Self {
        self.want = Want::OneOf(statuses);
        if statuses.iter().all(|&s| s >= 400) {
            self.max_forwarded = 0;
        }
        self
    }
    fn refused(mut self) -> Self {
        self.want = Want::Refused;
        self.max_forwarded = 0;
        self
    }
    fn refused_or_ok(mut self) -> Self {
        self.want = Want::RefusedOr200;
        self
    }
    fn anything(mut self) -> Self {
        self.want = Want::Anything;
        self
    }
    fn check(mut self, c: Check) -> Self {
        self.checks.push(c);
        self
    }
    fn max(mut self, n: usize) -> Self {
        self.max_forwarded = n;
        self
    }
    fn responses(mut self, n: usize) -> Self {
        self.responses = n;
        self
    }
    fn limit(mut self, d: Duration) -> Self {
        self.limit = d;
        self
    }
    fn steps(mut self, steps: Vec<Step>) -> Self {
        self.proto = Proto::H1(steps);
        self
    }
    fn data(mut self, body: &'static [u8]) -> Self {
        if let Proto::H2 { data, .. } = &mut self.proto {
            *data = Some(body);
        }
        self
    }

    fn describe_want(&self) -> String {
        let mut s = match &self.want {
            Want::Status(c) => format!("{c}"),
            Want::OneOf(cs) => format!("one of {cs:?}"),
            Want::Refused => "refused (4xx, 501, 505 or closed)".into(),
            Want::RefusedOr200 => "refused, or 200".into(),
            Want::Anything => "any answer".into(),
        };
        let _ = write!(s, "; at most {} forwarded", self.max_forwarded);
        for c in &self.checks {
            match c {
                Check::Body(b) => {
                    let _ = write!(s, "; Body({})", esc(b));
                }
                c => {
                    let _ = write!(s, "; {c:?}");
                }
            }
        }
        s
    }
}

/// `line`, then each header, CRLF-terminated, then the empty line.
fn head(line: &str, headers: &[&str]) -> String {
    let mut s = format!("{line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

fn get(target: &str) -> String {
    head(&format!("GET {target} HTTP/1.1"), &["Host: public.test"])
}

fn get_with(target: &str, headers: &[&str]) -> String {
    let mut all = vec!["Host: public.test"];
    all.extend(headers);
    head(&format!("GET {target} HTTP/1.1"), &all)
}

fn host(value: &str) -> String {
    head("GET /hello HTTP/1.1", &[&format!("Host: {value}")])
}

/// `POST /echo` to public.test with these extra headers and this body.
fn post(headers: &[&str], body: &str) -> String {
    let mut all = vec!["Host: public.test"];
    all.extend(headers);
    format!("{}{body}", head("POST /echo HTTP/1.1", &all))
}

fn cl(body: &str) -> String {
    format!("Content-Length: {}", body.len())
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn h1_vectors() -> Vec<Vector> {
    use Check::{Body, Header, HeaderLacks, Host, Path, Paths, Statuses, To};
    use Up::{Admin, Public};
    let smuggle_in_chunked = format!("0\r\n\r\n{SMUGGLED}");
    let hello_then_smuggled = format!("{HELLO_CHUNKED}{SMUGGLED}");
    let big = "a".repeat(70 * 1024);
    let mut headers_99: Vec<String> = (1..=99).map(|i| format!("x-h{i}: v")).collect();
    let hundred = headers_99.iter().map(String::as_str).collect::<Vec<_>>();
    let headers_100 = get_with("/many", &hundred);
    headers_99.push("x-h100: v".into());
    let hundred_one = headers_99.iter().map(String::as_str).collect::<Vec<_>>();
    let headers_101 = get_with("/many", &hundred_one);
    let expect_head = head(
        "POST /echo HTTP/1.1",
        &[
            "Host: public.test",
            "Content-Length: 5",
            "Expect: 100-continue",
        ],
    );

    vec![
        // --- Baseline.
        v("baseline-public", get("/hello"))
            .to(Public, "/hello")
            .check(Host("public.test")),
        v("baseline-admin", get("/admin/x")).to(Admin, "/admin/x"),
        // --- Host.
        v("host-missing-http1.1", "GET /hello HTTP/1.1\r\n\r\n").status(400),
        v("host-missing-http1.0", "GET /hello HTTP/1.0\r\n\r\n").to(Public, "/hello"),
        v(
            "host-twice-same",
            head(
                "GET /hello HTTP/1.1",
                &["Host: public.test", "Host: public.test"],
            ),
        )
        .status(400),
        v(
            "host-twice-internal",
            head(
                "GET /hello HTTP/1.1",
                &["Host: public.test", "Host: internal.test"],
            ),
        )
        .status(400),
        v("host-space", host("public .test")).status(400),
        v("host-slash", host("public.test/admin")).status(400),
        v("host-at", host("user@internal.test")).status(400),
        v("host-backslash", host("public.test\\internal.test")).status(400),
        v("host-percent", host("internal%2etest")).status(400),
        v("host-comma", host("public.test,internal.test")).status(400),
        v("host-empty", "GET /hello HTTP/1.1\r\nHost:\r\n\r\n").status(400),
        v("host-port-not-numeric", host("public.test:8o")).status(400),
        v("host-port-six-digits", host("public.test:123456")).status(400),
        v("host-port-empty", host("internal.test:")).status(400),
        v("host-upper-trailing-dot", host("INTERNAL.TEST."))
            .to(Admin, "/hello")
            .check(Host("INTERNAL.TEST.")),
        v("host-with-port", host("internal.test:8080"))
            .to(Admin, "/hello")
            .check(Host("internal.test:8080")),
        v(
            "host-name-mixed-case",
            head("GET /hello HTTP/1.1", &["hOsT: internal.test"]),
        )
        .to(Admin, "/hello"),
        v(
            "absolute-authority-wins",
            head(
                "GET http://internal.test/x HTTP/1.1",
                &["Host: public.test"],
            ),
        )
        .to(Admin, "/x")
        .check(Host("internal.test")),
        v(
            "absolute-authority-public",
            head(
                "GET http://public.test/x HTTP/1.1",
                &["Host: internal.test"],
            ),
        )
        .to(Public, "/x")
        .check(Host("public.test")),
        v(
            "absolute-authority-port",
            head(
                "GET http://internal.test:8080/x HTTP/1.1",
                &["Host: public.test"],
            ),
        )
        .to(Admin, "/x")
        .check(Host("internal.test:8080")),
        v(
            "absolute-https",
            head("GET https://public.test/x HTTP/1.1", &["Host: public.test"]),
        )
        .to(Public, "/x")
        .check(Host("public.test")),
        v(
            "absolute-userinfo",
            head("GET http://u@public.test/ HTTP/1.1", &["Host: public.test"]),
        )
        .status(400),
        v(
            "absolute-userinfo-host-confusion",
            head(
                "GET http://public.test@internal.test/ HTTP/1.1",
                &["Host: public.test"],
            ),
        )
        .status(400),
        v(
            "absolute-scheme-ftp",
            head("GET ftp://public.test/ HTTP/1.1", &["Host: public.test"]),
        )
        .status(400),
        v(
            "absolute-two-hosts",
            head(
                "GET http://public.test/ HTTP/1.1",
                &["Host: public.test", "Host: internal.test"],
            ),
        )
        .status(400),
        v(
            "absolute-path-normalized",
            head(
                "GET http://public.test/%61dmin HTTP/1.1",
                &["Host: public.test"],
            ),
        )
        .to(Admin, "/admin"),
        v(
            "authority-form-get",
            head("GET public.test:80 HTTP/1.1", &["Host: public.test"]),
        )
        .refused_or_ok()
        .check(To(Public)),
        // --- Path normalization (listener `public`: reject escaped slashes and parameters).
        v("pct-unreserved-admin", get("/%61dmin")).to(Admin, "/admin"),
        v("pct-unreserved-all", get("/%41%44%4D%49%4E/x")).to(Admin, "/ADMIN/x"),
        v("pct-unreserved-marks", get("/public/%7Euser%2Dx%5Fy%2Ez"))
            .to(Public, "/public/~user-x_y.z"),
        v("pct-reserved-kept-upper", get("/a%3fb")).to(Public, "/a%3Fb"),
        v("pct-space-kept", get("/a%20b")).to(Public, "/a%20b"),
        v("pct-semicolon-kept", get("/public%3bx")).to(Public, "/public%3Bx"),
        v("pct-utf8-kept", get("/caf%c3%a9")).to(Public, "/caf%C3%A9"),
        v("dot-dot", get("/public/../admin")).to(Admin, "/admin"),
        v("dot-dot-encoded", get("/public/%2e%2e/admin")).to(Admin, "/admin"),
        v("dot-dot-encoded-upper", get("/public/%2E%2E/admin")).to(Admin, "/admin"),
        v("dot-dot-half-encoded", get("/public/.%2e/admin")).to(Admin, "/admin"),
        v("dot-single", get("/./admin")).to(Admin, "/admin"),
        v("dot-single-trailing", get("/admin/.")).to(Admin, "/admin/"),
        v("dot-dot-trailing", get("/admin/..")).to(Public, "/"),
        v("slash-double-leading", get("//admin")).to(Admin, "/admin"),
        v("slash-double-inner", get("/admin//x")).to(Admin, "/admin/x"),
        v("dot-dot-above-root", get("/../admin")).status(400),
        v("dot-dot-above-root-encoded", get("/%2e%2e/admin")).status(400),
        v("dot-dot-above-root-deep", get("/a/../../admin")).status(400),
        v("escaped-slash-lower", get("/public%2f..%2fadmin")).status(400),
        v("escaped-slash-upper", get("/admin%2Fx")).status(400),
        v("escaped-backslash-lower", get("/public%5c..%5cadmin")).status(400),
        v("escaped-backslash-upper", get("/public%5C..%5Cadmin")).status(400),
        v("dot-dot-escaped-slash", get("/public/%2e%2e%2fadmin")).status(400),
        v("raw-backslash", get("/public\\..\\admin")).status(400),
        v("pct-nul", get("/admin%00.css")).status(400),
        v("pct-ctl-01", get("/a%01b")).status(400),
        v("pct-ctl-lf", get("/a%0aHost:%20internal.test")).status(400),
        v("pct-ctl-cr", get("/a%0d")).status(400),
        v("pct-ctl-1f", get("/a%1F")).status(400),
        v("pct-del", get("/a%7f")).status(400),
        v("pct-invalid-hex", get("/a%zz")).status(400),
        v("pct-truncated", get("/a%4")).status(400),
        v("pct-trailing", get("/a%")).status(400),
        v("pct-double-dot", get("/public/%252e%252e/admin")).status(400),
        v("pct-double-letter", get("/%2561dmin")).status(400),
        v("pct-double-slash", get("/public%252f..%252fadmin")).status(400),
        v("semicolon-param", get("/admin;x=1")).status(400),
        v("semicolon-dot-dot", get("/public/..;/admin")).status(400),
        v("semicolon-empty", get("/public;")).status(400),
        v("overlong-dot", get("/public/%c0%ae%c0%ae/admin")).status(400),
        v("overlong-slash", get("/public/..%c0%afadmin")).status(400),
        v("utf8-lone-ff", get("/a%ff")).status(400),
        v("utf8-truncated", get("/a%c3")).status(400),
        v("utf8-surrogate", get("/a%ed%a0%80")).status(400),
        v(
            "raw-non-ascii",
            cat(&[b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: public.test\r\n\r\n"]),
        )
        .refused(),
        v(
            "raw-space",
            "GET /a b HTTP/1.1\r\nHost: public.test\r\n\r\n",
        )
        .refused(),
        v("raw-tab", "GET /a\tb HTTP/1.1\r\nHost: public.test\r\n\r\n").refused(),
        v(
            "raw-ctl",
            "GET /a\x01b HTTP/1.1\r\nHost: public.test\r\n\r\n",
        )
        .refused(),
        v(
            "raw-del",
            "GET /a\x7fb HTTP/1.1\r\nHost: public.test\r\n\r\n",
        )
        .refused(),
        v(
            "raw-nul",
            "GET /admin\0 HTTP/1.1\r\nHost: public.test\r\n\r\n",
        )
        .refused(),
        v("case-upper", get("/ADMIN")).to(Admin, "/ADMIN"),
        v("case-mixed", get("/Admin/x")).to(Admin, "/Admin/x"),
        v("case-escaped", get("/%41dmin")).to(Admin, "/Admin"),
        v("query-raw", get("/q?a=%2f&b=..%2F&c=%41;d")).to(Public, "/q?a=%2f&b=..%2F&c=%41;d"),
        v("query-admin-path", get("/public?/admin")).to(Public, "/public?/admin"),
        v("query-dot-dot", get("/public/x?/../../admin")).to(Public, "/public/x?/../../admin"),
        v("fragment", get("/public#/../admin"))
            .refused_or_ok()
            .check(To(Public))
            .check(Path("/public")),
        // --- Listener `lenient` (escaped slashes and parameters kept): the documented danger
        // of `keep` is exactly that a lenient backend may decode them, so the aggressive ACL
        // oracle does not apply; the exact forwarded path is asserted instead.
        v("lenient-escaped-slash", get("/public/..%2fadmin"))
            .on("lenient")
            .to(Public, "/public/..%2Fadmin"),
        v("lenient-escaped-backslash", get("/public/..%5cadmin"))
            .on("lenient")
            .to(Public, "/public/..%5Cadmin"),
        v("lenient-param-kept", get("/public;x=1"))
            .on("lenient")
            .to(Public, "/public;x=1"),
        v("lenient-dot-dot-param", get("/public/..;/admin"))
            .on("lenient")
            .to(Public, "/public/..;/admin"),
        v("lenient-dot-dot-resolved", get("/public/../admin"))
            .on("lenient")
            .to(Admin, "/admin"),
        v("lenient-nul-refused", get("/a%00"))
            .on("lenient")
            .status(400),
        v("lenient-double-encoding-refused", get("/%252f"))
            .on("lenient")
            .status(400),
        // --- Listener `decoding` (escaped slashes decoded, parameters stripped).
        v("decoding-escaped-slash", get("/public/..%2fadmin"))
            .on("decoding")
            .to(Admin, "/admin"),
        v("decoding-escaped-backslash", get("/public/..%5Cadmin"))
            .on("decoding")
            .to(Admin, "/admin"),
        v("decoding-param-stripped", get("/admin;x=1"))
            .on("decoding")
            .to(Admin, "/admin"),
        v("decoding-dot-dot-param", get("/public/..;/admin"))
            .on("decoding")
            .to(Admin, "/admin"),
        v("decoding-params-every-segment", get("/a;x/b;y=2"))
            .on("decoding")
            .to(Public, "/a/b"),
        v("decoding-above-root", get("/%2e%2e%2fadmin"))
            .on("decoding")
            .status(400),
        v("decoding-double-encoding-refused", get("/public%252fadmin"))
            .on("decoding")
            .status(400),
        // --- Framing: refused with nothing forwarded, or forwarded once with the right body.
        v(
            "cl-te-smuggle",
            post(
                &[&cl(&smuggle_in_chunked), "Transfer-Encoding: chunked"],
                &smuggle_in_chunked,
            ),
        )
        .refused_or_ok()
        .check(To(Public))
        .check(Body(b"")),
        v(
            "te-cl-hello",
            post(
                &["Transfer-Encoding: chunked", "Content-Length: 3"],
                HELLO_CHUNKED,
            ),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v(
            "cl-te-hello-then-smuggled",
            post(
                &[&cl(&hello_then_smuggled), "Transfer-Encoding: chunked"],
                &hello_then_smuggled,
            ),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v(
            "cl-twice-different",
            post(&["Content-Length: 5", "Content-Length: 6"], "hello!"),
        )
        .refused(),
        v(
            "cl-twice-same",
            post(&["Content-Length: 5", "Content-Length: 5"], "hello"),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v("cl-list", post(&["Content-Length: 5, 5"], "hello"))
            .refused_or_ok()
            .check(Body(b"hello")),
        v("cl-plus-sign", post(&["Content-Length: +5"], "hello"))
            .refused_or_ok()
            .check(Body(b"hello")),
        v("cl-leading-space", post(&["Content-Length:  5"], "hello"))
            .refused_or_ok()
            .check(Body(b"hello")),
        v("cl-hex", post(&["Content-Length: 0x5"], "hello"))
            .refused_or_ok()
            .check(Body(b"hello")),
        v("cl-negative", post(&["Content-Length: -1"], "hello")).refused(),
        v(
            "cl-overflow",
            post(&["Content-Length: 99999999999999999999999"], "hello"),
        )
        .refused(),
        v(
            "cl-on-get",
            head(
                "GET /get HTTP/1.1",
                &["Host: public.test", "Content-Length: 5"],
            ) + "hello",
        )
        .refused_or_ok()
        .check(Path("/get"))
        .check(Body(b"hello")),
        v(
            "get-body-is-a-request",
            head("GET /get HTTP/1.1", &["Host: public.test", &cl(SMUGGLED)]) + SMUGGLED,
        )
        .refused_or_ok()
        .check(Path("/get"))
        .check(Body(SMUGGLED.as_bytes())),
        v(
            "te-chunked-identity",
            post(&["Transfer-Encoding: chunked, identity"], HELLO_CHUNKED),
        )
        .refused(),
        v(
            "te-identity-chunked",
            post(&["Transfer-Encoding: identity, chunked"], HELLO_CHUNKED),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v(
            "te-xchunked",
            post(&["Transfer-Encoding: xchunked"], HELLO_CHUNKED),
        )
        .refused(),
        v(
            "te-leading-space",
            post(&["Transfer-Encoding:  chunked"], HELLO_CHUNKED),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v(
            "te-trailing-tab",
            post(&["Transfer-Encoding: chunked\t"], HELLO_CHUNKED),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v(
            "te-space-before-colon",
            post(
                &["Transfer-Encoding : chunked", &cl(HELLO_CHUNKED)],
                HELLO_CHUNKED,
            ),
        )
        .refused(),
        v(
            "te-in-http1.0",
            head(
                "POST /echo HTTP/1.0",
                &["Host: public.test", "Transfer-Encoding: chunked"],
            ) + &hello_then_smuggled,
        )
        .refused_or_ok(),
        v(
            "te-uppercase",
            post(&["Transfer-Encoding: CHUNKED"], HELLO_CHUNKED),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v(
            "te-twice",
            post(
                &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
                HELLO_CHUNKED,
            ),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v(
            "te-vertical-tab",
            post(&["Transfer-Encoding:\x0bchunked"], HELLO_CHUNKED),
        )
        .refused(),
        v(
            "te-quoted",
            post(&["Transfer-Encoding: \"chunked\""], HELLO_CHUNKED),
        )
        .refused(),
        v(
            "chunk-size-0x",
            post(&["Transfer-Encoding: chunked"], "0x5\r\nhello\r\n0\r\n\r\n"),
        )
        .refused(),
        v(
            "chunk-extension",
            post(
                &["Transfer-Encoding: chunked"],
                "5;ext=1\r\nhello\r\n0\r\n\r\n",
            ),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v(
            "chunk-size-negative",
            post(&["Transfer-Encoding: chunked"], "-5\r\nhello\r\n0\r\n\r\n"),
        )
        .refused(),
        v(
            "chunk-size-huge",
            post(
                &["Transfer-Encoding: chunked"],
                "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            ),
        )
        .refused(),
        v(
            "chunk-missing-crlf",
            post(&["Transfer-Encoding: chunked"], "5\r\nhello0\r\n\r\n"),
        )
        .refused(),
        v(
            "chunk-size-too-small",
            post(&["Transfer-Encoding: chunked"], "3\r\nhello\r\n0\r\n\r\n"),
        )
        .refused(),
        v(
            "chunk-size-trailing-space",
            post(&["Transfer-Encoding: chunked"], "5 \r\nhello\r\n0\r\n\r\n"),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v(
            "chunk-bare-lf",
            post(&["Transfer-Encoding: chunked"], "5\nhello\n0\n\n"),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        v(
            "chunk-forbidden-trailers",
            post(
                &["Transfer-Encoding: chunked"],
                "5\r\nhello\r\n0\r\nHost: internal.test\r\nContent-Length: 50\r\n\
                 Transfer-Encoding: chunked\r\n\r\n",
            ),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        // --- Line endings and header syntax.
        v(
            "bare-lf-everywhere",
            "GET /x HTTP/1.1\nHost: public.test\n\n",
        )
        .refused_or_ok()
        .check(To(Public))
        .check(Path("/x")),
        v(
            "bare-lf-one-header",
            "GET /x HTTP/1.1\r\nHost: public.test\nX-A: 1\r\n\r\n",
        )
        .refused_or_ok()
        .check(To(Public))
        .check(Path("/x")),
        v(
            "bare-cr-in-header",
            "GET /x HTTP/1.1\r\nHost: public.test\rX-Injected: 1\r\n\r\n",
        )
        .refused_or_ok()
        .check(Header("x-injected", None)),
        v(
            "bare-cr-request-line",
            "GET /x HTTP/1.1\rHost: internal.test\r\nHost: public.test\r\n\r\n",
        )
        .refused(),
        v("obs-fold", get_with("/x", &["X-A: 1", " folded"]))
            .refused_or_ok()
            .check(To(Public)),
        v(
            "obs-fold-host",
            head("GET /x HTTP/1.1", &["Host: public.test", " internal.test"]),
        )
        .refused_or_ok()
        .check(Host("public.test")),
        v("header-name-space", get_with("/x", &["X Y: 1"])).refused(),
        v("header-name-ctl", get_with("/x", &["X\x01Y: 1"])).refused(),
        v("header-name-parens", get_with("/x", &["X(Y): 1"])).refused(),
        v("header-name-empty", get_with("/x", &[": 1"])).refused(),
        v("header-line-no-colon", get_with("/x", &["JustText"])).refused(),
        v("header-value-nul", get_with("/x", &["X-A: a\0b"])).refused(),
        v("header-value-ctl", get_with("/x", &["X-A: a\x01b"])).refused(),
        v("header-value-del", get_with("/x", &["X-A: a\x7fb"])).refused(),
        v(
            "header-value-obs-text",
            cat(&[
                get_with("/x", &[]).trim_end().as_bytes(),
                b"\r\nX-A: caf\xe9\r\n\r\n",
            ]),
        )
        .refused_or_ok()
        .check(To(Public)),
        v(
            "header-too-large",
            get_with("/x", &[&format!("X-Big: {big}")]),
        )
        .status(431),
        v("request-line-too-long", get(&format!("/{big}"))).one_of(&[414, 431]),
        v("headers-100", headers_100).to(Public, "/many"),
        v("headers-101", headers_101).status(431),
        // --- Pipelining.
        v("pipeline-two", get("/one") + &get("/two"))
            .responses(2)
            .max(2)
            .check(Paths(&["/one", "/two"]))
            .check(Statuses(&[200, 200])),
        v(
            "pipeline-after-bad-framing",
            get("/one") + &post(&["Content-Length: 5", "Content-Length: 6"], "hello!") + SMUGGLED,
        )
        .responses(3)
        .check(Paths(&["/one"])),
        // --- Expect, Upgrade, Connection.
        v("expect-100-with-body", "")
            .steps(vec![
                Step::Send(expect_head.clone().into()),
                Step::AwaitContinue,
                Step::Send(b"hello".to_vec()),
            ])
            .to(Public, "/echo")
            .check(Body(b"hello")),
        v("expect-100-without-body", expect_head)
            .anything()
            .limit(Duration::from_millis(1500)),
        v("expect-unknown", get_with("/x", &["Expect: foo"]))
            .one_of(&[200, 417])
            .check(Header("expect", None)),
        v(
            "h2c-upgrade",
            get_with(
                "/x",
                &[
                    "Connection: Upgrade, HTTP2-Settings",
                    "Upgrade: h2c",
                    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
                ],
            ),
        )
        .refused_or_ok()
        .check(Header("upgrade", None))
        .check(Header("http2-settings", None)),
        v(
            "connection-nominates-custom",
            get_with("/x", &["Connection: close, x-secret", "x-secret: 1"]),
        )
        .to(Public, "/x")
        .check(Header("x-secret", None)),
        v(
            "connection-nominates-xff",
            get_with(
                "/x",
                &["Connection: x-forwarded-for", "X-Forwarded-For: 1.2.3.4"],
            ),
        )
        .to(Public, "/x")
        .check(Header("x-forwarded-for", Some("127.0.0.1"))),
        v(
            "connection-nominates-host",
            get_with("/x", &["Connection: host"]),
        )
        .refused_or_ok()
        .check(Host("public.test")),
        v(
            "connection-nominates-content-length",
            post(
                &["Connection: content-length", "Content-Length: 5"],
                "hello",
            ),
        )
        .refused_or_ok()
        .check(Body(b"hello")),
        // --- Methods and versions.
        v(
            "method-connect-internal",
            head(
                "CONNECT internal.test:443 HTTP/1.1",
                &["Host: internal.test:443"],
            ),
        )
        .refused(),
        v(
            "method-connect-public",
            head("CONNECT public.test:80 HTTP/1.1", &["Host: public.test:80"]),
        )
        .refused(),
        v(
            "method-trace",
            head("TRACE /x HTTP/1.1", &["Host: public.test"]),
        )
        .refused_or_ok()
        .check(To(Public)),
        v(
            "method-lowercase",
            head("get /x HTTP/1.1", &["Host: public.test"]),
        )
        .refused_or_ok()
        .check(To(Public)),
        v(
            "method-parens",
            head("G(T /x HTTP/1.1", &["Host: public.test"]),
        )
        .refused(),
        v(
            "method-nul",
            head("GE\0T /x HTTP/1.1", &["Host: public.test"]),
        )
        .refused(),
        v("method-empty", head(" /x HTTP/1.1", &["Host: public.test"])).refused(),
        v(
            "version-2.0",
            head("GET /x HTTP/2.0", &["Host: public.test"]),
        )
        .refused_or_ok(),
        v(
            "version-1.2",
            head("GET /x HTTP/1.2", &["Host: public.test"]),
        )
        .refused_or_ok(),
        v(
            "version-9.9",
            head("GET /x HTTP/9.9", &["Host: public.test"]),
        )
        .refused_or_ok(),
        v(
            "version-lowercase",
            head("GET /x http/1.1", &["Host: public.test"]),
        )
        .refused(),
        v("version-missing-http0.9", "GET /\r\n\r\n").refused(),
        v(
            "request-line-double-space",
            head("GET  /x HTTP/1.1", &["Host: public.test"]),
        )
        .refused_or_ok(),
        v(
            "request-line-leading-empty-line",
            "\r\n".to_string() + &get("/x"),
        )
        .refused_or_ok()
        .check(To(Public))
        .check(Path("/x")),
        // --- Forwarding headers: the peer (127.0.0.1) is not a trusted proxy.
        v(
            "xff-replaced",
            get_with("/x", &["X-Forwarded-For: 1.2.3.4"]),
        )
        .to(Public, "/x")
        .check(Header("x-forwarded-for", Some("127.0.0.1"))),
        v(
            "xff-twice",
            get_with(
                "/x",
                &["X-Forwarded-For: 1.2.3.4", "X-Forwarded-For: 5.6.7.8"],
            ),
        )
        .to(Public, "/x")
        .check(Header("x-forwarded-for", Some("127.0.0.1"))),
        v(
            "xff-name-case",
            get_with("/x", &["x-FORWARDED-for: 1.2.3.4"]),
        )
        .to(Public, "/x")
        .check(Header("x-forwarded-for", Some("127.0.0.1"))),
        v(
            "x-forwarded-host",
            get_with("/x", &["X-Forwarded-Host: internal.test"]),
        )
        .to(Public, "/x")
        .check(Header("x-forwarded-host", Some("public.test"))),
        v(
            "x-forwarded-proto",
            get_with("/x", &["X-Forwarded-Proto: https"]),
        )
        .to(Public, "/x")
        .check(Header("x-forwarded-proto", Some("http"))),
        v(
            "x-forwarded-port",
            get_with("/x", &["X-Forwarded-Port: 443"]),
        )
        .to(Public, "/x")
        .check(HeaderLacks("x-forwarded-port", "443")),
        v(
            "forwarded",
            get_with(
                "/x",
                &["Forwarded: for=1.2.3.4;host=internal.test;proto=https"],
            ),
        )
        .to(Public, "/x")
        .check(HeaderLacks("forwarded", "1.2.3.4"))
        .check(HeaderLacks("forwarded", "internal.test"))
        .check(HeaderLacks("forwarded", "https")),
        v("x-real-ip", get_with("/x", &["X-Real-IP: 1.2.3.4"]))
            .to(Public, "/x")
            .check(HeaderLacks("x-real-ip", "1.2.3.4")),
        v(
            "x-original-url",
            get_with("/public", &["X-Original-URL: /admin"]),
        )
        .to(Public, "/public")
        .check(HeaderLacks("x-original-url", "/admin")),
        v(
            "x-rewrite-url",
            get_with("/public", &["X-Rewrite-URL: /admin"]),
        )
        .to(Public, "/public")
        .check(HeaderLacks("x-rewrite-url", "/admin")),
    ]
}

fn h2_vectors() -> Vec<Vector> {
    use Check::{Header, Host};
    use Up::{Admin, Public};
    const GET: (&str, &str) = (":method", "GET");
    const POST: (&str, &str) = (":method", "POST");
    const HTTP: (&str, &str) = (":scheme", "http");
    const PUBLIC: (&str, &str) = (":authority", "public.test");
    const HELLO: (&str, &str) = (":path", "/hello");
    vec![
        h2("h2-baseline", &[GET, HTTP, PUBLIC, HELLO])
            .to(Public, "/hello")
            .check(Host("public.test")),
        h2(
            "h2-authority-over-host-public",
            &[GET, HTTP, PUBLIC, HELLO, ("host", "internal.test")],
        )
        .to(Public, "/hello")
        .check(Host("public.test")),
        h2(
            "h2-authority-over-host-internal",
            &[
                GET,
                HTTP,
                (":authority", "internal.test"),
                HELLO,
                ("host", "public.test"),
            ],
        )
        .to(Admin, "/hello")
        .check(Host("internal.test")),
        h2(
            "h2-host-without-authority",
            &[GET, HTTP, HELLO, ("host", "internal.test")],
        )
        .to(Admin, "/hello"),
        h2("h2-no-authority-no-host", &[GET, HTTP, HELLO]).status(400),
        h2(
            "h2-uppercase-name",
            &[GET, HTTP, PUBLIC, HELLO, ("X-Upper", "1")],
        )
        .refused(),
        h2(
            "h2-connection-header",
            &[GET, HTTP, PUBLIC, HELLO, ("connection", "keep-alive")],
        )
        .refused(),
        h2(
            "h2-transfer-encoding",
            &[POST, HTTP, PUBLIC, HELLO, ("transfer-encoding", "chunked")],
        )
        .data(b"5\r\nhello\r\n0\r\n\r\n")
        .refused(),
        h2("h2-te-gzip", &[GET, HTTP, PUBLIC, HELLO, ("te", "gzip")]).refused(),
        h2(
            "h2-te-trailers",
            &[GET, HTTP, PUBLIC, HELLO, ("te", "trailers")],
        )
        .to(Public, "/hello"),
        h2(
            "h2-duplicate-path",
            &[GET, HTTP, PUBLIC, HELLO, (":path", "/admin")],
        )
        .refused(),
        h2("h2-missing-path", &[GET, HTTP, PUBLIC]).refused(),
        h2(
            "h2-pseudo-after-regular",
            &[GET, HTTP, ("x-a", "1"), PUBLIC, HELLO],
        )
        .refused(),
        h2(
            "h2-path-unreserved-escape",
            &[GET, HTTP, PUBLIC, (":path", "/%61dmin")],
        )
        .to(Admin, "/admin"),
        h2(
            "h2-path-encoded-dot-dot",
            &[GET, HTTP, PUBLIC, (":path", "/public/%2e%2e/admin")],
        )
        .to(Admin, "/admin"),
        h2(
            "h2-path-escaped-slash",
            &[GET, HTTP, PUBLIC, (":path", "/public%2f..%2fadmin")],
        )
        .status(400),
        h2("h2-path-nul", &[GET, HTTP, PUBLIC, (":path", "/admin%00")]).status(400),
        h2(
            "h2-authority-userinfo",
            &[GET, HTTP, (":authority", "u@public.test"), HELLO],
        )
        .refused(),
        h2(
            "h2-xff-replaced",
            &[GET, HTTP, PUBLIC, HELLO, ("x-forwarded-for", "1.2.3.4")],
        )
        .to(Public, "/hello")
        .check(Header("x-forwarded-for", Some("127.0.0.1"))),
        h2(
            "h2-value-crlf",
            &[GET, HTTP, PUBLIC, HELLO, ("x-a", "a\r\nx-injected: 1")],
        )
        .refused(),
        h2(
            "h2-content-length-mismatch",
            &[POST, HTTP, PUBLIC, HELLO, ("content-length", "10")],
        )
        .data(b"hello")
        .refused(),
    ]
}

// ------------------------------------------------------------------------------------------
// Judging
// ------------------------------------------------------------------------------------------

struct Row {
    name: &'static str,
    listener: &'static str,
    want: String,
    got: String,
    upstream: Vec<String>,
    problems: Vec<String>,
}

fn judge(v: &Vector, got: &Got, events: &[Event]) -> Vec<String> {
    let mut problems = Vec::new();
    let reqs: Vec<&Seen> = events
        .iter()
        .filter_map(|e| match e {
            Event::Request(s) => Some(&**s),
            _ => None,
        })
        .collect();

    // No ACL bypass.
    for r in reqs.iter().filter(|r| r.upstream == PUBLIC_UP) {
        if v.listener != "lenient" && aggressively_decoded(&r.target).starts_with("/admin") {
            problems.push(format!(
                "ACL BYPASS: public-up served {:?} (decodes to {:?})",
                r.target,
                aggressively_decoded(&r.target)
            ));
        }
        for h in r.all("host") {
            if bare_host(h) == "internal.test" {
                problems.push(format!("ACL BYPASS: public-up served Host {h:?}"));
            }
        }
    }
    // Nothing smuggled.
    if reqs.len() > v.max_forwarded {
        problems.push(format!(
            "SMUGGLED: the upstreams got {} requests, at most {} allowed",
            reqs.len(),
            v.max_forwarded
        ));
    }
    // Nothing invalid forwarded.
    for e in events {
        match e {
            Event::Invalid { upstream, what } => {
                problems.push(format!("INVALID FORWARDED to {upstream}: {what}"));
            }
            Event::Request(s) if !s.invalid.is_empty() => problems.push(format!(
                "INVALID FORWARDED to {}: {}",
                s.upstream,
                s.invalid.join("; ")
            )),
            _ => {}
        }
    }

    // The vector's own expectation.
    let status = got.status();
    let refused = match status {
        Some(s) => is_refusal(s),
        None => got.ended == Ended::Closed,
    };
    let status_ok = match &v.want {
        Want::Status(s) => status == Some(*s),
        Want::OneOf(ss) => status.is_some_and(|s| ss.contains(&s)),
        Want::Refused => refused,
        Want::RefusedOr200 => refused || status == Some(200),
        Want::Anything => true,
    };
    if !status_ok {
        problems.push(match status {
            Some(s) if !is_refusal(s) && s >= 400 => {
                format!("answered {s}: blames an upstream for what the client sent")
            }
            Some(s) => format!("answered {s}"),
            None => format!("no answer ({:?})", got.ended),
        });
    }
    if matches!(v.want, Want::RefusedOr200) && refused && !reqs.is_empty() {
        problems.push("refused, yet forwarded".into());
    }
    let must_forward = matches!(v.want, Want::Status(s) if s < 400);
    if must_forward && reqs.is_empty() {
        problems.push("nothing reached the upstream".into());
    }
    for c in &v.checks {
        if let Some(p) = check(c, &reqs, got) {
            problems.push(p);
        }
    }
    problems
}

/// A status that refuses the client's request: 4xx, or 501/505 (a coding or version this proxy
/// does not speak). Not 502/503/504: those blame an upstream for what the client sent.
fn is_refusal(status: u16) -> bool {
    (400..500).contains(&status) || status == 501 || status == 505
}

/// One check; `None` if it holds (or, for upstream checks, if nothing was forwarded).
fn check(c: &Check, reqs: &[&Seen], got: &Got) -> Option<String> {
    if let Check::Statuses(want) = c {
        let statuses: Vec<u16> = got.responses.iter().map(|r| r.status).collect();
        return (statuses != *want).then(|| format!("client statuses {statuses:?}, want {want:?}"));
    }
    let first = reqs.first()?;
    match c {
        Check::To(up) => reqs
            .iter()
            .find(|r| r.upstream != up.name())
            .map(|r| format!("reached {}, want {}", r.upstream, up.name())),
        Check::Path(p) => {
            (first.target != *p).then(|| format!("path {:?}, want {p:?}", first.target))
        }
        Check::Paths(ps) => {
            let targets: Vec<&str> = reqs.iter().map(|r| r.target.as_str()).collect();
            (targets != *ps).then(|| format!("paths {targets:?}, want {ps:?}"))
        }
        Check::Host(h) => {
            let hosts = first.all("host");
            (hosts != [*h]).then(|| format!("Host {hosts:?}, want [{h:?}]"))
        }
        Check::Header(name, want) => {
            let values = first.all(name);
            let want: Vec<&str> = want.iter().copied().collect();
            (values != want).then(|| format!("{name} {values:?}, want {want:?}"))
        }
        Check::HeaderLacks(name, text) => {
            let values = first.all(name);
            values
                .iter()
                .any(|v| v.to_ascii_lowercase().contains(&text.to_ascii_lowercase()))
                .then(|| format!("{name} {values:?} still carries the client's {text:?}"))
        }
        Check::Body(b) => {
            (first.body != *b).then(|| format!("body {}, want {}", esc(&first.body), esc(b)))
        }
        Check::Statuses(_) => None,
    }
}

async fn run(weir: &Weir, log: &Log, v: &Vector) -> Row {
    let mark = log.lock().unwrap().events.len();
    let addr = weir.addr(v.listener);
    let got = match &v.proto {
        Proto::H1(steps) => h1_exchange(addr, steps, v.responses, v.limit).await,
        Proto::H2 { fields, data } => h2_exchange(addr, fields, *data, v.limit).await,
    };
    settle(log).await;
    cut_stalled(log);
    let events = log.lock().unwrap().events[mark..].to_vec();
    let problems = judge(v, &got, &events);
    Row {
        name: v.name,
        listener: v.listener,
        want: v.describe_want(),
        got: got.describe(),
        upstream: events.iter().map(Event::describe).collect(),
        problems,
    }
}

/// `path`: `native` (Weir's own HTTP/1.1 server and client) or `hyper` (hyper's for both).
fn config(admin: SocketAddr, public: SocketAddr, path: &str) -> String {
    let client = path;
    format!(
        r#"listeners:
  - {{ name: public, listen: 127.0.0.1:0, server: {path} }}
  - {{ name: lenient, listen: 127.0.0.1:0, server: {path}, paths: {{ escaped_slashes: keep, parameters: keep }} }}
  - {{ name: decoding, listen: 127.0.0.1:0, server: {path}, paths: {{ escaped_slashes: decode, parameters: strip }} }}
routes:
  - {{ name: admin, match: {{ path_prefix: /admin, case_sensitive: false }}, cluster: admin }}
  - {{ name: internal, match: {{ host: internal.test }}, cluster: admin }}
  - {{ name: public, match: {{}}, cluster: public }}
clusters:
  - {{ name: admin, client: {client}, endpoints: [ {{ address: "{admin}" }} ] }}
  - {{ name: public, client: {client}, endpoints: [ {{ address: "{public}" }} ] }}
"#
    )
}

/// The table through Weir's own HTTP/1.1 server and client (the defaults).
#[tokio::test]
async fn hostile_requests_reach_upstreams_exactly_as_routed() -> Result<()> {
    hostile_table("native").await
}

/// The same table through hyper's server and client (`server: hyper`, `client: hyper`): both
/// paths keep the same guarantees.
#[tokio::test]
async fn hostile_requests_reach_upstreams_exactly_as_routed_through_hyper() -> Result<()> {
    hostile_table("hyper").await
}

async fn hostile_table(path: &str) -> Result<()> {
    let client = path;
    let log: Log = Arc::default();
    let admin = Recorder::start(ADMIN_UP, log.clone()).await?;
    let public = Recorder::start(PUBLIC_UP, log.clone()).await?;
    let mut weir = Weir::start(&config(admin.addr, public.addr, client))?;
    let started = Instant::now();

    let (h1s, h2s) = (h1_vectors(), h2_vectors());
    let mut names = std::collections::HashSet::new();
    for vector in h1s.iter().chain(&h2s) {
        ensure!(names.insert(vector.name), "vector {} twice", vector.name);
    }
    let mut rows = Vec::new();
    for vector in h1s.iter().chain(&h2s) {
        rows.push(run(&weir, &log, vector).await);
    }

    // No crash: still running, still serving, never panicked.
    let mut after = Vec::new();
    if let Some(status) = weir.child.try_wait()? {
        after.push(format!("weir exited: {status}"));
    } else {
        let ok = v("after-the-table", get("/after")).to(Up::Public, "/after");
        let row = run(&weir, &log, &ok).await;
        after.extend(
            row.problems
                .iter()
                .map(|p| format!("a normal GET afterwards: {p} ({})", row.got)),
        );
    }
    let stderr = weir.stderr_text();
    if stderr.contains("panicked") {
        after.push(format!("weir panicked:\n{stderr}"));
    }

    let failed: Vec<&Row> = rows.iter().filter(|r| !r.problems.is_empty()).collect();
    println!(
        "hostile ({client} server and client): {} vectors (HTTP/1 {}, HTTP/2 {}) in {:.1}s, {} failed",
        rows.len(),
        h1s.len(),
        h2s.len(),
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    for r in &rows {
        let mark = if r.problems.is_empty() {
            "ok  "
        } else {
            "FAIL"
        };
        println!(
            "{mark} {:<40} {:<9} {:<28} {}",
            r.name,
            r.listener,
            r.got,
            if r.upstream.is_empty() {
                "-".to_string()
            } else {
                r.upstream.join(" | ")
            }
        );
    }
    if failed.is_empty() && after.is_empty() {
        return Ok(());
    }
    let mut report = format!(
        "{client} server and client: {} of {} hostile vectors failed:\n",
        failed.len(),
        rows.len()
    );
    for r in &failed {
        let _ = writeln!(report, "\n✗ {} [{}]", r.name, r.listener);
        let _ = writeln!(report, "    expected: {}", r.want);
        let _ = writeln!(report, "    got:      {}", r.got);
        if r.upstream.is_empty() {
            let _ = writeln!(report, "    upstream: nothing");
        }
        for u in &r.upstream {
            let _ = writeln!(report, "    upstream: {u}");
        }
        for p in &r.problems {
            let _ = writeln!(report, "    problem:  {p}");
        }
    }
    for a in &after {
        let _ = writeln!(report, "\n✗ {a}");
    }
    bail!("{report}")
}

// ------------------------------------------------------------------------------------------
// The response side: upstream framing the proxy must not pass through
// ------------------------------------------------------------------------------------------

/// Raw responses, by request path, from an upstream that frames them ambiguously.
const CANNED: [(&str, &[u8]); 10] = [
    (
        "/te-then-cl",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "/cl-then-te",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "/te-twice",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "/cl-twice-different",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 100\r\n\r\nhello",
    ),
    (
        "/cl-signed",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    ),
    (
        "/cl-list-different",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello",
    ),
    (
        "/obs-fold",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Folded: a\r\n b\r\n\r\nhello",
    ),
    (
        "/space-before-colon",
        b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    ),
    (
        "/interim-then-final",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ),
    ("/ok", OK),
];

/// An upstream answering each request (heads only, no bodies) with `CANNED[path]`.
async fn canned_upstream() -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    while let Some(end) = find(&buf, b"\r\n\r\n") {
                        let path = buf
                            .split(|&b| b == b' ')
                            .nth(1)
                            .map(lossy)
                            .unwrap_or_default();
                        buf.drain(..end + 4);
                        let answer = CANNED.iter().find(|(p, _)| *p == path).map_or(
                            &b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"[..],
                            |(_, a)| *a,
                        );
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    Ok((addr, task))
}

#[tokio::test]
async fn ambiguous_upstream_framing_is_not_passed_through() -> Result<()> {
    ambiguous_framing("native").await?;
    ambiguous_framing("hyper").await
}

async fn ambiguous_framing(client: &str) -> Result<()> {
    let (up, task) = canned_upstream().await?;
    let weir = Weir::start(&format!(
        "listeners: [ {{ name: public, listen: 127.0.0.1:0 }} ]\n\
         routes: [ {{ name: all, match: {{}}, cluster: up }} ]\n\
         clusters: [ {{ name: up, client: {client}, endpoints: [ {{ address: \"{up}\" }} ] }} ]\n"
    ))?;
    let addr = weir.addr("public");
    let mut problems = Vec::new();
    for (path, _) in CANNED.iter().filter(|(p, _)| *p != "/ok") {
        // The ambiguous answer, then a normal request on the same connection: the client must
        // get "hello" framed one way (or a 502), never a hang or a desynchronized connection.
        let mut s = TcpStream::connect(addr).await?;
        let deadline = Instant::now() + VECTOR_LIMIT;
        let req = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: public.test\r\n\r\n");
        s.write_all(req(path).as_bytes()).await?;
        let (mut buf, mut eof) = (Vec::new(), false);
        let first = loop {
            if let Some(r) = take_response(&mut buf, eof) {
                break Some(r);
            }
            if !read_more(&mut s, &mut buf, &mut eof, deadline).await && !eof {
                break None;
            }
        };
        let Some(first) = first else {
            problems.push(format!("{path}: no answer within {VECTOR_LIMIT:?}"));
            continue;
        };
        let (cls, tes) = (first.all("content-length"), first.all("transfer-encoding"));
        println!(
            "{path}: {} content-length {cls:?} transfer-encoding {tes:?} body {}",
            first.status,
            esc(&first.body)
        );
        match first.status {
            200 => {
                if first.body != b"hello" {
                    problems.push(format!("{path}: body {}, want \"hello\"", esc(&first.body)));
                }
                if !(cls.is_empty() || cls == ["5"]) || (!cls.is_empty() && !tes.is_empty()) {
                    problems.push(format!(
                        "{path}: passed framing through: content-length {cls:?}, \
                         transfer-encoding {tes:?}"
                    ));
                }
                if tes.len() > 1 {
                    problems.push(format!("{path}: transfer-encoding {tes:?}"));
                }
            }
            502 => {}
            other => problems.push(format!("{path}: status {other}, want 200 or 502")),
        }
        if !buf.is_empty() {
            problems.push(format!("{path}: bytes after the response: {}", esc(&buf)));
        }
        let closes = first
            .all("connection")
            .iter()
            .any(|c| c.eq_ignore_ascii_case("close"));
        if first.status == 502 && (closes || eof) {
            // A refused answer may end the connection; the next request gets a new one.
            s = TcpStream::connect(addr).await?;
            (buf, eof) = (Vec::new(), false);
        } else if closes || eof {
            problems.push(format!(
                "{path}: the client connection was closed after a 200"
            ));
            continue;
        }
        let deadline = Instant::now() + VECTOR_LIMIT;
        if s.write_all(req("/ok").as_bytes()).await.is_err() {
            problems.push(format!("{path}: could not send the follow-up request"));
            continue;
        }
        let second = loop {
            if let Some(r) = take_response(&mut buf, eof) {
                break Some(r);
            }
            if !read_more(&mut s, &mut buf, &mut eof, deadline).await && !eof {
                break None;
            }
        };
        match second {
            Some(r) if r.status == 200 && r.body == b"ok" => {}
            Some(r) => problems.push(format!(
                "{path}: follow-up got {} {}, want 200 \"ok\"",
                r.status,
                esc(&r.body)
            )),
            None => problems.push(format!("{path}: follow-up got no answer")),
        }
    }
    task.abort();
    let stderr = weir.stderr_text();
    if stderr.contains("panicked") {
        problems.push(format!("weir panicked:\n{stderr}"));
    }
    ensure!(
        problems.is_empty(),
        "{client} client:\n{}",
        problems.join("\n")
    );
    Ok(())
}

/// The oracles themselves: each must catch what it exists to catch, or a passing table proves
/// nothing.
#[test]
fn the_oracles_catch_what_they_should() {
    let flags = |raw: &str| match parse_request(raw.as_bytes(), PUBLIC_UP) {
        Parsed::Complete(seen, _) => seen.invalid,
        Parsed::Partial => vec!["partial".into()],
        Parsed::Fatal(why) => vec![format!("fatal: {why}")],
    };
    assert_eq!(
        flags("GET /a HTTP/1.1\r\nHost: a\r\n\r\n"),
        Vec::<String>::new()
    );
    for bad in [
        "GET /a HTTP/1.1\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nX: 1\r\n y\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHost: b\r\n\r\n",
        "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello0\r\n\r\n",
        "GET /a HTTP/1.1\nHost: a\n\n",
    ] {
        assert!(!flags(bad).is_empty(), "not flagged: {bad:?}");
    }
    // Two requests in one buffer are two requests: that is how smuggling is counted.
    let two = format!("{SMUGGLED}{SMUGGLED}");
    let Parsed::Complete(_, used) = parse_request(two.as_bytes(), PUBLIC_UP) else {
        panic!("not parsed");
    };
    assert_eq!(used, SMUGGLED.len());

    for (target, decoded) in [
        ("/%61dmin", "/admin"),
        ("/public/%252e%252e/ADMIN", "/admin"),
        ("/public/..%5cadmin", "/admin"),
        ("/public/..;/admin", "/admin"),
        ("/public/%c0%ae%c0%ae%c0%afadmin", "/admin"),
        ("//admin", "/admin"),
        ("/public?/admin", "/public"),
        ("/admin/..", "/"),
    ] {
        assert_eq!(aggressively_decoded(target), decoded, "{target}");
    }
    assert_eq!(bare_host("INTERNAL.TEST.:8080"), "internal.test");

    // HPACK: 200 and 400 indexed; 431 as a literal with a Huffman-coded value ("431" is
    // 011010 011001 00001, then seven padding ones).
    assert_eq!(h2_status(&[0x88]), Some(200));
    assert_eq!(h2_status(&[0x8c]), Some(400));
    assert_eq!(h2_status(&[0x08, 0x82, 0x69, 0x90]), None);
    assert_eq!(huffman_digits(&[0xfe]), None);
    assert_eq!(huffman_digits(&[0x69, 0x90, 0xff]), Some("431".into()));
    assert_eq!(h2_status(&[0x08, 0x83, 0x69, 0x90, 0xff]), Some(431));
    assert_eq!(h2_status(&[0x08, 0x03, b'4', b'1', b'7']), Some(417));
}
