//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): with `tracing:` configured, each
//! request continues the trace its `traceparent` names, or starts one, and the upstream gets a
//! `traceparent` whose parent is this proxy's span.
//!
//! What comes from the client is untrusted text: a header that is not exactly a valid
//! `traceparent` (wrong length or version, upper-case or non-hex digits, an all-zero id, two
//! headers) starts a new trace and drops `tracestate`, as the specification requires, so a
//! client cannot make the proxy forward garbage under a trace header's name.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::otlp::{Attr, Exporter, SpanKind, SpanRecord};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// This request's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span, when the request continued a trace.
    pub parent_id: Option<[u8; 8]>,
    /// This proxy's span for the request.
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// What of the client's trace headers must not reach the upstream: its `traceparent`s
    /// (the proxy sends its own) and, for a new trace, its `tracestate`.
    strip: Strip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Strip {
    traceparent: bool,
    tracestate: bool,
}

/// A `traceparent` value: `00-<trace id>-<span id>-<flags>`, made without allocating; the
/// native HTTP/1.1 client writes it straight into the request head.
#[derive(Clone, Copy)]
pub(crate) struct Traceparent([u8; 55]);

impl Traceparent {
    pub fn as_bytes(&self) -> &[u8; 55] {
        &self.0
    }

    pub fn value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.0).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

impl TraceContext {
    /// Continues the trace of a valid `traceparent` in `h` (keeping its sampling decision), or
    /// starts a new one that `sampler` decides.
    pub fn begin(h: &HeaderMap, sampler: Sampler) -> TraceContext {
        let span_id = nonzero_id(|| fastrand::u64(..).to_be_bytes());
        // One pass over the names (most requests carry neither header) instead of a hashed
        // lookup for each.
        let mut strip = Strip::default();
        for name in h.keys() {
            if *name == TRACEPARENT {
                strip.traceparent = true;
            } else if *name == TRACESTATE {
                strip.tracestate = true;
            }
        }
        let parsed = if strip.traceparent {
            let mut all = h.get_all(&TRACEPARENT).iter();
            match (all.next(), all.next()) {
                (Some(v), None) => parse(v.as_bytes()),
                _ => None,
            }
        } else {
            None
        };
        match parsed {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
                sampled: if sampler.parent_based {
                    flags & 1 == 1
                } else {
                    sampler.samples(&trace_id)
                },
                strip: Strip {
                    tracestate: false,
                    ..strip
                },
            },
            None => {
                let trace_id = nonzero_id(|| fastrand::u128(..).to_be_bytes());
                TraceContext {
                    trace_id,
                    parent_id: None,
                    span_id,
                    sampled: sampler.samples(&trace_id),
                    strip,
                }
            }
        }
    }

    /// Takes the client's trace headers off the upstream request where they must not go on: its
    /// `traceparent` (each try gets the proxy's, see [`Self::traceparent_of`]) and, for a new
    /// trace, its `tracestate` (it belonged to a trace the proxy could not read).
    pub fn strip_client_headers(&self, h: &mut HeaderMap) {
        if self.strip.traceparent {
            h.remove(&TRACEPARENT);
        }
        if self.strip.tracestate {
            h.remove(&TRACESTATE);
        }
    }

    /// `00-<trace id>-<span id>-<flags>`, naming this request's span.
    pub fn traceparent(&self) -> Traceparent {
        self.traceparent_of(self.span_id)
    }

    /// The `traceparent` naming `span` (this request's span or a child of it) as the parent.
    pub fn traceparent_of(&self, span: [u8; 8]) -> Traceparent {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        put_hex(&mut out, 3, &self.trace_id);
        put_hex(&mut out, 36, &span);
        if self.sampled {
            out[54] = b'1';
        }
        Traceparent(out)
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

/// A sampled request's spans (with `tracing.otlp`): its server span, a client span per
/// upstream try and an internal span per filter phase, handed to the exporter together when
/// the response ends.
pub(crate) struct RequestSpans {
    exporter: Arc<Exporter>,
    ctx: TraceContext,
    server: SpanRecord,
    children: Vec<SpanRecord>,
}

/// How an upstream try ended, for its span.
pub(crate) enum TryOutcome<'a> {
    Status(u16),
    Failed(&'a dyn std::fmt::Display),
    TimedOut,
}

impl RequestSpans {
    pub fn begin(
        exporter: &Arc<Exporter>,
        ctx: TraceContext,
        start: Instant,
        req: &http::Request<crate::body::Source>,
        client: &str,
        request_id: &HeaderValue,
    ) -> Box<RequestSpans> {
        // Room for what `responded` and `end` add: a sampled request is rare enough to run
        // cold, so it should not also grow its vectors.
        let mut attrs = Vec::with_capacity(12);
        attrs.extend([
            ("http.request.method", Attr::method(req.method())),
            ("url.path", Attr::from(req.uri().path())),
            ("client.address", Attr::from(client)),
            (
                "network.protocol.version",
                Attr::Static(match req.version() {
                    http::Version::HTTP_2 => "2",
                    http::Version::HTTP_10 => "1.0",
                    _ => "1.1",
                }),
            ),
            ("weir.request_id", text(request_id)),
        ]);
        Box::new(RequestSpans {
            exporter: exporter.clone(),
            ctx,
            server: SpanRecord {
                trace_id: ctx.trace_id,
                span_id: ctx.span_id,
                parent: ctx.parent_id,
                name: crate::otlp::capped(req.method().as_str()).to_string(),
                kind: SpanKind::Server,
                start,
                end: start,
                attrs,
                filter_attrs: Vec::new(),
                events: Vec::new(),
                error: None,
            },
            children: Vec::new(),
        })
    }

    /// The site routing found for the request (`host[:port]`, checked): the server span's
    /// `server.address`.
    pub fn server_address(&mut self, site: &HeaderValue) {
        self.server.attrs.push(("server.address", text(site)));
    }

    /// A new span id for an upstream try, and the `traceparent` that names it.
    pub fn try_begins(&self) -> ([u8; 8], Traceparent) {
        let id = nonzero_id(|| fastrand::u64(..).to_be_bytes());
        (id, self.ctx.traceparent_of(id))
    }

    /// Try `attempt` (from 1) of `span` to `endpoint` of `cluster` ran from `start` to now.
    #[allow(clippy::too_many_arguments)]
    pub fn try_ended(
        &mut self,
        span: [u8; 8],
        start: Instant,
        method: &http::Method,
        cluster: &Arc<str>,
        endpoint: &str,
        attempt: u32,
        outcome: TryOutcome<'_>,
    ) {
        let mut attrs = Vec::with_capacity(5);
        attrs.extend([
            ("http.request.method", Attr::method(method)),
            ("server.address", Attr::from(endpoint)),
            ("weir.cluster", Attr::Shared(cluster.clone())),
        ]);
        if attempt > 1 {
            attrs.push((
                "http.request.resend_count",
                Attr::from(i64::from(attempt - 1)),
            ));
        }
        let error = match outcome {
            TryOutcome::Status(s) => {
                attrs.push(("http.response.status_code", Attr::from(i64::from(s))));
                (s >= 500).then(|| s.to_string())
            }
            TryOutcome::Failed(e) => Some(e.to_string()),
            TryOutcome::TimedOut => Some("timeout".to_string()),
        };
        if let Some(e) = &error {
            attrs.push(("error.type", Attr::from(e.as_str())));
        }
        self.children.push(SpanRecord {
            trace_id: self.ctx.trace_id,
            span_id: span,
            parent: Some(self.ctx.span_id),
            name: format!("{method} {cluster}"),
            kind: SpanKind::Client,
            start,
            end: Instant::now(),
            attrs,
            filter_attrs: Vec::new(),
            events: Vec::new(),
            error,
        });
    }

    /// The route and the answer: the server span is named `<method> <route>`.
    pub fn responded(
        &mut self,
        status: u16,
        route: Option<(&Arc<str>, &Arc<str>)>,
        reason: &'static str,
    ) {
        let s = &mut self.server;
        if let Some((route, cluster)) = route {
            s.name = format!("{} {route}", s.name);
            s.attrs.push(("weir.route", Attr::Shared(route.clone())));
            s.attrs
                .push(("weir.cluster", Attr::Shared(cluster.clone())));
        }
        s.attrs
            .push(("http.response.status_code", Attr::from(i64::from(status))));
        if !reason.is_empty() {
            s.attrs.push(("weir.reason", Attr::Static(reason)));
        }
        if status >= 500 {
            s.error = Some(if reason.is_empty() {
                status.to_string()
            } else {
                reason.to_string()
            });
        }
    }

    /// The response has ended (or was abandoned): the spans go to the exporter.
    pub fn end(mut self: Box<Self>, bytes: u64, notes: weir_filters::SpanNotes) {
        self.server.end = Instant::now();
        self.server
            .attrs
            .push(("http.response.body.size", Attr::Int(bytes as i64)));
        let RequestSpans {
            exporter,
            ctx,
            mut server,
            mut children,
        } = *self;
        server.filter_attrs = notes.attributes;
        server.events = notes.events;
        for p in notes.phase_runs {
            let error = p.outcome.starts_with("failed").then(|| p.outcome.clone());
            children.push(SpanRecord {
                trace_id: ctx.trace_id,
                span_id: nonzero_id(|| fastrand::u64(..).to_be_bytes()),
                parent: Some(ctx.span_id),
                name: format!("filter {} {}", p.filter, p.phase),
                kind: SpanKind::Internal,
                start: p.start,
                end: p.end,
                attrs: vec![
                    ("weir.filter", Attr::from(&*p.filter)),
                    ("weir.filter.phase", Attr::from(p.phase)),
                    ("weir.filter.outcome", Attr::from(p.outcome)),
                ],
                filter_attrs: Vec::new(),
                events: Vec::new(),
                error,
            });
        }
        children.push(server);
        exporter.export(&children);
    }
}

/// Lower-case hex of `bytes` into `out` at `at`. Every proxied request writes 24 bytes of it
/// with `tracing:` on: one table look-up per byte, fixed sizes so no bounds are checked.
fn put_hex<const N: usize>(out: &mut [u8; 55], at: usize, bytes: &[u8; N]) {
    for (i, b) in bytes.iter().enumerate() {
        out[at + 2 * i..at + 2 * i + 2].copy_from_slice(&crate::head::HEX_PAIRS[usize::from(*b)]);
    }
}

/// A header value as a string attribute: as it is when it is visible ASCII (a checked site,
/// a request id: the common case, without a pass over invalid UTF-8), else lossily.
fn text(v: &HeaderValue) -> Attr {
    match v.to_str() {
        Ok(s) => Attr::from(s),
        Err(_) => Attr::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
    }
}

/// Which new traces are sampled: a trace id is when its low 8 bytes, as a number, fall below
/// the ratio's share of their range (the OpenTelemetry `TraceIdRatioBased` rule, so other hops
/// using it agree). The threshold is worked out once per config, not per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sampler {
    /// Sampled when the low 63 bits of the id are below this; `u64::MAX` samples every id.
    threshold: u64,
    /// Whether a continued trace keeps its caller's decision (else the ratio decides it too).
    parent_based: bool,
}

impl Sampler {
    /// With `parent_based: false` the caller's sampled flag is not trusted: a continued trace is
    /// sampled by the same ratio rule on its id (an edge's clients cannot make it trace, and
    /// export, every request they send).
    pub fn with_parent(self, parent_based: bool) -> Sampler {
        Sampler {
            parent_based,
            ..self
        }
    }

    pub fn new(ratio: f64) -> Sampler {
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else if ratio > 0.0 {
            (ratio * (1u64 << 63) as f64) as u64
        } else {
            0
        };
        Sampler {
            threshold,
            parent_based: true,
        }
    }

    fn samples(self, trace_id: &[u8; 16]) -> bool {
        let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or_default()) >> 1;
        low < self.threshold
    }
}

fn nonzero_id<const N: usize>(mut random: impl FnMut() -> [u8; N]) -> [u8; N] {
    loop {
        let id = random();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

/// `version-traceid-parentid-flags`, strictly: lower-case hex, version not `ff`, exactly 55
/// bytes for version 00 (a later version may append `-...`), no all-zero id.
fn parse(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    match version {
        0xff => return None,
        0 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent = [0u8; 8];
    for (i, b) in parent.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Header values a client chose (a request id, a Host) become attributes: visible ASCII as
    /// it is, other bytes replaced rather than passed on, and every one capped.
    #[test]
    fn header_values_become_capped_valid_text() {
        let as_str = |a: Attr| match a {
            Attr::Str(s) => s,
            _ => panic!("a string attribute"),
        };
        let v = |b: &[u8]| HeaderValue::from_bytes(b).expect("a header value");
        assert_eq!(
            as_str(text(&v(b"api.example.com:8443"))),
            "api.example.com:8443"
        );
        assert_eq!(
            as_str(text(&v(b"caf\xe9\xff id"))),
            "caf\u{fffd}\u{fffd} id"
        );
        let long = text(&v(&vec![b'a'; 70_000]));
        assert_eq!(as_str(long).len(), crate::otlp::MAX_ATTR_BYTES);
        let long_invalid = as_str(text(&v(&[0xe9; 4096])));
        assert!(long_invalid.len() <= crate::otlp::MAX_ATTR_BYTES);
        assert!(long_invalid.chars().all(|c| c == '\u{fffd}'));
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_its_sampling_decision() {
        let t = TraceContext::begin(&headers(&[VALID]), Sampler::new(0.0));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7u64.to_be_bytes()));
        assert!(
            t.sampled,
            "the caller sampled it; ratio 0 does not overrule"
        );
        assert_ne!(t.span_id, t.parent_id.unwrap(), "a span of its own");
        let unsampled = VALID.replace("-01", "-00");
        assert!(!TraceContext::begin(&headers(&[&unsampled]), Sampler::new(1.0)).sampled);
        // Not parent-based: the trace continues, the ratio decides.
        let own = Sampler::new(0.0).with_parent(false);
        let t2 = TraceContext::begin(&headers(&[VALID]), own);
        assert_eq!((t2.trace_id, t2.parent_id), (t.trace_id, t.parent_id));
        assert!(!t2.sampled, "ratio 0 overrules the caller");
        let all = Sampler::new(1.0).with_parent(false);
        assert!(TraceContext::begin(&headers(&[&unsampled]), all).sampled);
        let out = t.traceparent();
        let out = std::str::from_utf8(out.as_bytes()).unwrap();
        assert_eq!(t.traceparent().value(), out);
        assert_eq!(out.len(), 55);
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_eq!(&out[36..52], t.span_id_hex());
        assert_eq!(
            &out[3..35],
            hex::encode(t.trace_id),
            "the same hex as the hex crate"
        );
        // A later version with more fields is read by its version-00 prefix.
        let future =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert!(
            TraceContext::begin(&headers(&[future]), Sampler::new(0.0))
                .parent_id
                .is_some()
        );
    }

    #[test]
    fn anything_but_one_valid_traceparent_starts_a_new_trace() {
        let hostile = [
            "",
            "00",
            &VALID[..54],
            &format!("{VALID}0"),
            &format!("{VALID}-x"),
            &VALID.to_uppercase(),
            &VALID.replace("00-4b", "ff-4b"),
            &VALID.replace("-01", "-0g"),
            &VALID.replacen('-', "_", 1),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for v in hostile {
            let t = TraceContext::begin(&headers(&[v]), Sampler::new(1.0));
            assert_eq!(t.parent_id, None, "{v:?} must not be continued");
            assert_ne!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        }
        let two = TraceContext::begin(&headers(&[VALID, VALID]), Sampler::new(1.0));
        assert_eq!(two.parent_id, None, "two traceparent headers are invalid");
        let mut non_utf8 = HeaderMap::new();
        non_utf8.insert(&TRACEPARENT, HeaderValue::from_bytes(&[0xff; 55]).unwrap());
        assert_eq!(
            TraceContext::begin(&non_utf8, Sampler::new(1.0)).parent_id,
            None
        );
    }

    #[test]
    fn the_clients_traceparent_never_goes_on_and_a_new_trace_drops_its_tracestate() {
        let other = HeaderValue::from_static("keep");
        // A broken traceparent: both go.
        let mut h = headers(&["garbage"]);
        h.insert(&TRACESTATE, HeaderValue::from_static("vendor=x"));
        h.insert("x-other", other.clone());
        TraceContext::begin(&h, Sampler::new(1.0)).strip_client_headers(&mut h);
        assert!(h.get(&TRACESTATE).is_none());
        assert!(h.get(&TRACEPARENT).is_none(), "the proxy's is sent per try");
        // Two valid ones are as broken as one bad one.
        let mut h = headers(&[VALID, VALID]);
        h.insert(&TRACESTATE, HeaderValue::from_static("vendor=x"));
        TraceContext::begin(&h, Sampler::new(1.0)).strip_client_headers(&mut h);
        assert!(h.get(&TRACESTATE).is_none() && h.get(&TRACEPARENT).is_none());
        // A continued trace keeps its tracestate, every value of it.
        let mut h = headers(&[VALID]);
        h.append(&TRACESTATE, HeaderValue::from_static("vendor=x"));
        h.append(&TRACESTATE, HeaderValue::from_static("other=y"));
        let t = TraceContext::begin(&h, Sampler::new(1.0));
        t.strip_client_headers(&mut h);
        assert_eq!(h.get_all(&TRACESTATE).iter().count(), 2);
        assert!(h.get(&TRACEPARENT).is_none());
        assert!(t.traceparent().as_bytes().starts_with(b"00-4bf92f35"));
        // A tracestate alone (no traceparent) belongs to no trace the proxy can read.
        let mut h = HeaderMap::new();
        h.insert(&TRACESTATE, HeaderValue::from_static("vendor=x"));
        h.insert("x-other", other.clone());
        TraceContext::begin(&h, Sampler::new(1.0)).strip_client_headers(&mut h);
        assert!(h.get(&TRACESTATE).is_none());
        assert_eq!(h.len(), 1, "nothing else is touched");
        assert_eq!(h["x-other"], other);
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio() {
        let h = HeaderMap::new();
        let n = 20_000;
        for (ratio, lo, hi) in [(0.0, 0, 0), (1.0, n, n), (0.1, 1_600, 2_400)] {
            let sampled = (0..n)
                .filter(|_| TraceContext::begin(&h, Sampler::new(ratio)).sampled)
                .count();
            assert!(
                (lo..=hi).contains(&sampled),
                "ratio {ratio}: {sampled} of {n}"
            );
        }
        // The decision is a function of the trace id: the same id, the same answer.
        let mut id = [0u8; 16];
        id[8] = 0x10; // low half ~ 0.06 of the range
        assert!(Sampler::new(0.1).samples(&id));
        assert!(!Sampler::new(0.05).samples(&id));
    }
}
