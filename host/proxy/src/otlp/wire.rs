//! The OTLP trace export request (`ExportTraceServiceRequest`), written as protobuf straight
//! from the data path's [`SpanRecord`]s: each request writes its spans as it ends, while what
//! they hold is still in cache, and its records are freed at once; an export frames a batch of
//! them.
//!
//! Why not build the generated `opentelemetry-proto` messages and let prost encode them: that
//! costs an allocation per id, key and value to build the messages, and prost works out each
//! nested message's length once per enclosing level. Measured with callgrind, a sampled request
//! cost as many instructions again as the whole proxied request, most of it there. Here each
//! message's length is worked out once (lengths are sums of field sizes), and nothing is
//! allocated but the output. The generated messages stay the reference: the tests decode what
//! this writes with them and compare it, byte for byte, with prost's own encoding.
//!
//! Field numbers are those of `opentelemetry/proto/{collector/trace,trace,common,resource}/v1`.
//! As in proto3, a field holding its default (an empty string, a zero time) is left out.

use super::{Attr, Epoch, SpanKind, SpanRecord};

const LEN: u8 = 2;
const VARINT: u8 = 0;
const FIXED64: u8 = 1;

/// Bytes of `v` as a varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Every field number here is below 16: its tag is one byte.
fn put_tag(out: &mut Vec<u8>, field: u8, wire: u8) {
    out.push(field << 3 | wire);
}

/// Size of a length-delimited field whose payload is `len` bytes.
fn delimited(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn put_delimited(out: &mut Vec<u8>, field: u8, len: usize) {
    put_tag(out, field, LEN);
    put_varint(out, len as u64);
}

/// A string or bytes field, left out when empty.
fn bytes_len(b: &[u8]) -> usize {
    if b.is_empty() { 0 } else { delimited(b.len()) }
}

fn put_bytes(out: &mut Vec<u8>, field: u8, b: &[u8]) {
    if !b.is_empty() {
        put_delimited(out, field, b.len());
        out.extend_from_slice(b);
    }
}

fn fixed64_len(v: u64) -> usize {
    if v == 0 { 0 } else { 9 }
}

fn put_fixed64(out: &mut Vec<u8>, field: u8, v: u64) {
    if v != 0 {
        put_tag(out, field, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// An attribute value as it is written: `AnyValue`'s `string_value` (1) or `int_value` (3).
#[derive(Clone, Copy)]
enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

impl<'a> From<&'a Attr> for Value<'a> {
    fn from(a: &'a Attr) -> Value<'a> {
        match a {
            Attr::Str(s) => Value::Str(s),
            Attr::Static(s) => Value::Str(s),
            Attr::Shared(s) => Value::Str(super::capped(s)),
            Attr::Int(n) => Value::Int(*n),
        }
    }
}

/// `AnyValue`'s payload (a oneof member is written even when it holds its default).
fn any_value_len(v: Value<'_>) -> usize {
    match v {
        Value::Str(s) => delimited(s.len()),
        Value::Int(n) => 1 + varint_len(n as u64),
    }
}

/// `KeyValue { key = 1, value = 2 }`'s payload.
fn key_value_len(key: &str, v: Value<'_>) -> usize {
    bytes_len(key.as_bytes()) + delimited(any_value_len(v))
}

fn put_key_value(out: &mut Vec<u8>, field: u8, key: &str, v: Value<'_>) {
    put_delimited(out, field, key_value_len(key, v));
    put_bytes(out, 1, key.as_bytes());
    put_delimited(out, 2, any_value_len(v));
    match v {
        Value::Str(s) => {
            put_delimited(out, 1, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::Int(n) => {
            put_tag(out, 3, VARINT);
            put_varint(out, n as u64);
        }
    }
}

/// A span's attributes in order: the proxy's, then the filters'.
fn attributes(s: &SpanRecord) -> impl Iterator<Item = (&str, Value<'_>)> {
    (s.attrs.iter().map(|(k, v)| (*k, Value::from(v))))
        .chain((s.filter_attrs.iter()).map(|(k, v)| (k.as_str(), Value::Str(v))))
}

/// An event's attributes: the filter that added it, then its own.
fn event_attributes(e: &weir_filters::SpanEvent) -> impl Iterator<Item = (&str, Value<'_>)> {
    let filter = super::capped(&e.filter);
    std::iter::once(("weir.filter", Value::Str(filter)))
        .chain((e.attributes.iter()).map(|(k, v)| (k.as_str(), Value::Str(v))))
}

fn kind_number(k: SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    }
}

/// `Status.code` ERROR.
const STATUS_ERROR: u64 = 2;

/// Writes spans as `ScopeSpans.spans` fields, each complete as the request that finished it
/// wrote it: an export batch is these fields one after another, which [`Frame`] wraps.
#[derive(Clone, Copy)]
pub(super) struct Spans {
    pub epoch: Epoch,
}

impl Spans {
    /// Appends `spans` to `out`.
    pub fn append(&self, out: &mut Vec<u8>, spans: &[SpanRecord]) {
        for s in spans {
            let len = self.span_len(s);
            out.reserve(delimited(len));
            self.put_span(out, s, len);
        }
    }

    fn event_len(&self, e: &weir_filters::SpanEvent) -> usize {
        fixed64_len(self.epoch.unix_nanos(e.at))
            + bytes_len(e.name.as_bytes())
            + event_attributes(e)
                .map(|(k, v)| delimited(key_value_len(k, v)))
                .sum::<usize>()
    }

    fn status_len(message: &str) -> usize {
        bytes_len(message.as_bytes()) + 2
    }

    fn span_len(&self, s: &SpanRecord) -> usize {
        delimited(s.trace_id.len())
            + delimited(s.span_id.len())
            + s.parent.map_or(0, |p| delimited(p.len()))
            + bytes_len(s.name.as_bytes())
            + 1
            + varint_len(kind_number(s.kind))
            + fixed64_len(self.epoch.unix_nanos(s.start))
            + fixed64_len(self.epoch.unix_nanos(s.end))
            + attributes(s)
                .map(|(k, v)| delimited(key_value_len(k, v)))
                .sum::<usize>()
            + (s.events.iter())
                .map(|e| delimited(self.event_len(e)))
                .sum::<usize>()
            + s.error
                .as_deref()
                .map_or(0, |m| delimited(Self::status_len(m)))
    }

    fn put_span(&self, out: &mut Vec<u8>, s: &SpanRecord, len: usize) {
        put_delimited(out, 2, len);
        put_bytes(out, 1, &s.trace_id);
        put_bytes(out, 2, &s.span_id);
        if let Some(p) = &s.parent {
            put_bytes(out, 4, p);
        }
        put_bytes(out, 5, s.name.as_bytes());
        put_tag(out, 6, VARINT);
        put_varint(out, kind_number(s.kind));
        put_fixed64(out, 7, self.epoch.unix_nanos(s.start));
        put_fixed64(out, 8, self.epoch.unix_nanos(s.end));
        for (k, v) in attributes(s) {
            put_key_value(out, 9, k, v);
        }
        for e in &s.events {
            put_delimited(out, 11, self.event_len(e));
            put_fixed64(out, 1, self.epoch.unix_nanos(e.at));
            put_bytes(out, 2, e.name.as_bytes());
            for (k, v) in event_attributes(e) {
                put_key_value(out, 3, k, v);
            }
        }
        if let Some(m) = &s.error {
            put_delimited(out, 15, Self::status_len(m));
            put_bytes(out, 2, m.as_bytes());
            put_tag(out, 3, VARINT);
            put_varint(out, STATUS_ERROR);
        }
    }
}

/// The export request around a batch of spans [`Spans`] wrote.
pub(super) struct Frame<'a> {
    pub service: &'a str,
    pub version: &'a str,
}

impl Frame<'_> {
    /// `ExportTraceServiceRequest { resource_spans = 1: [ ResourceSpans { resource = 1:
    /// Resource { attributes = 1: [service.name] }, scope_spans = 2: [ ScopeSpans { scope = 1:
    /// InstrumentationScope { name = 1, version = 2 }, spans = 2: [..] } ] } ] }`.
    pub fn around(&self, spans: &[u8]) -> Vec<u8> {
        let service = Value::Str(self.service);
        let resource = delimited(key_value_len("service.name", service));
        let scope = bytes_len(b"weir") + bytes_len(self.version.as_bytes());
        let scope_spans = delimited(scope) + spans.len();
        let resource_spans = delimited(resource) + delimited(scope_spans);
        let mut out = Vec::with_capacity(delimited(resource_spans));
        put_delimited(&mut out, 1, resource_spans);
        put_delimited(&mut out, 1, resource);
        put_key_value(&mut out, 1, "service.name", service);
        put_delimited(&mut out, 2, scope_spans);
        put_delimited(&mut out, 1, scope);
        put_bytes(&mut out, 1, b"weir");
        put_bytes(&mut out, 2, self.version.as_bytes());
        out.extend_from_slice(spans);
        debug_assert_eq!(out.len(), out.capacity());
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{
        ResourceSpans, ScopeSpans, Span, Status, span, status,
    };
    use prost::Message;

    use super::*;

    /// The same request built from the generated messages, the way the exporter built it
    /// before: the reference.
    fn reference(w: &Frame<'_>, epoch: Epoch, spans: &[SpanRecord]) -> ExportTraceServiceRequest {
        fn kv(key: &str, v: Value<'_>) -> KeyValue {
            let value = match v {
                Value::Str(s) => any_value::Value::StringValue(s.to_string()),
                Value::Int(n) => any_value::Value::IntValue(n),
            };
            KeyValue {
                key: key.to_string(),
                value: Some(AnyValue { value: Some(value) }),
                ..Default::default()
            }
        }
        let span = |s: &SpanRecord| Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: s.name.clone(),
            kind: match s.kind {
                SpanKind::Server => span::SpanKind::Server,
                SpanKind::Client => span::SpanKind::Client,
                SpanKind::Internal => span::SpanKind::Internal,
            } as i32,
            start_time_unix_nano: epoch.unix_nanos(s.start),
            end_time_unix_nano: epoch.unix_nanos(s.end),
            attributes: attributes(s).map(|(k, v)| kv(k, v)).collect(),
            events: (s.events.iter())
                .map(|e| span::Event {
                    time_unix_nano: epoch.unix_nanos(e.at),
                    name: e.name.clone(),
                    attributes: event_attributes(e).map(|(k, v)| kv(k, v)).collect(),
                    dropped_attributes_count: 0,
                })
                .collect(),
            status: s.error.as_ref().map(|message| Status {
                message: message.clone(),
                code: status::StatusCode::Error as i32,
            }),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::Str(w.service))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "weir".into(),
                        version: w.version.into(),
                        ..Default::default()
                    }),
                    spans: spans.iter().map(span).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn spans(epoch: Instant) -> Vec<SpanRecord> {
        let long = "é".repeat(300);
        let event = |name: &str, attrs: Vec<(String, String)>| weir_filters::SpanEvent {
            filter: Arc::from("jwt-auth"),
            name: name.to_string(),
            at: epoch + Duration::from_micros(70),
            attributes: attrs,
        };
        vec![
            SpanRecord {
                trace_id: [0xab; 16],
                span_id: [1, 2, 3, 4, 5, 6, 7, 8],
                parent: Some([9; 8]),
                name: "GET api".into(),
                kind: SpanKind::Server,
                start: epoch,
                end: epoch + Duration::from_millis(3),
                attrs: vec![
                    ("http.request.method", Attr::from("GET")),
                    ("url.path", Attr::from(long.as_str())),
                    ("http.response.status_code", Attr::Int(200)),
                    ("negative", Attr::Int(-1)),
                    ("zero", Attr::Int(0)),
                    ("empty", Attr::from("")),
                    ("network.protocol.version", Attr::Static("1.1")),
                    ("weir.route", Attr::Shared(Arc::from("r".repeat(600)))),
                ],
                filter_attrs: vec![
                    ("tenant".into(), "acme".into()),
                    (String::new(), "x".into()),
                ],
                events: vec![
                    event("verified", vec![("kid".into(), "k1".into())]),
                    event("", Vec::new()),
                ],
                error: Some("upstream timeout".into()),
            },
            // No parent, no attributes, an empty name, an error with no message, times at
            // and before the epoch.
            SpanRecord {
                trace_id: [0; 16],
                span_id: [0xff; 8],
                parent: None,
                name: String::new(),
                kind: SpanKind::Client,
                start: epoch - Duration::from_secs(1),
                end: epoch,
                attrs: Vec::new(),
                filter_attrs: Vec::new(),
                events: Vec::new(),
                error: Some(String::new()),
            },
            SpanRecord {
                trace_id: [7; 16],
                span_id: [8; 8],
                parent: Some([1; 8]),
                name: "filter rate-limit request-headers".into(),
                kind: SpanKind::Internal,
                start: epoch,
                end: epoch + Duration::from_nanos(1),
                attrs: vec![("weir.filter", Attr::from("x".repeat(200)))],
                filter_attrs: Vec::new(),
                events: Vec::new(),
                error: None,
            },
        ]
    }

    #[test]
    fn what_it_writes_is_what_prost_writes_from_the_generated_messages() {
        let at = Instant::now();
        let epoch = Epoch::new(at, SystemTime::now());
        let w = Frame {
            service: "weir-edge",
            version: "0.1.0",
        };
        // What requests append one after another, framed when their batch goes.
        let encode = |w: &Frame<'_>, batch: &[SpanRecord]| {
            let mut spans = Vec::new();
            for one in batch.chunks(2) {
                Spans { epoch }.append(&mut spans, one);
            }
            w.around(&spans)
        };
        for n in [0, 1, 2, 3] {
            let batch = &spans(at)[..n];
            let ours = encode(&w, batch);
            let expected = reference(&w, epoch, batch);
            assert_eq!(ours, expected.encode_to_vec(), "{n} spans: the same bytes");
            let decoded = ExportTraceServiceRequest::decode(ours.as_slice()).expect("decodes");
            assert_eq!(decoded, expected, "{n} spans: the same message");
            // A shared name is capped when written, like every string.
            let spans = &decoded
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .collect::<Vec<_>>();
            for span in spans {
                for kv in &span.attributes {
                    if let Some(any_value::Value::StringValue(v)) =
                        kv.value.as_ref().and_then(|v| v.value.as_ref())
                    {
                        assert!(
                            v.len() <= crate::otlp::MAX_ATTR_BYTES,
                            "{}: {} bytes",
                            kv.key,
                            v.len()
                        );
                    }
                }
            }
        }
        // An empty service name is left out, as proto3 leaves out empty strings.
        let w = Frame { service: "", ..w };
        let batch = spans(at);
        assert_eq!(
            encode(&w, &batch),
            reference(&w, epoch, &batch).encode_to_vec()
        );
    }

    #[test]
    fn varints_are_sized_as_they_are_written() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
            -1i64 as u64,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(prost::encoding::encoded_len_varint(v), out.len(), "{v}");
        }
    }
}
