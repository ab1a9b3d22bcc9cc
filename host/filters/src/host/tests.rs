//! Host calls with hostile arguments: every bound answers the filter with a typed error, and
//! is counted on `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use weir_config::{FailurePolicy, Grants};

use super::*;
use crate::bindings::weir::filter::metrics::Host as _;
use crate::bindings::weir::filter::{callout::Host as _, http::Host as _, kv::Host as _};
use crate::kv::KvLimits;
use crate::module::{Runtime, RuntimeOptions};
use crate::pool::FilterSpec;

fn state(kv_limits: KvLimits) -> anyhow::Result<HostState> {
    let rt = Runtime::new(RuntimeOptions {
        max_instances: 16,
        kv_limits,
        ..Default::default()
    })?;
    let shared = Arc::new(PoolShared {
        spec: FilterSpec {
            filter: "f".into(),
            config: "{}".into(),
            memory: 1 << 20,
            time_per_phase: Duration::from_millis(5),
            max_body: 1 << 10,
            max_instances: 1,
            on_error: FailurePolicy::FailClosed,
            grants: Grants {
                callouts: vec!["up".into()],
                kv: vec!["ns".into()],
            },
        },
        runtime: rt.inner.clone(),
    });
    Ok(HostState::new(shared))
}

fn hits(s: &HostState, limit: &'static str) -> u64 {
    s.shared.runtime.registry.filter_limit_hits("f", limit)
}

/// What a host call answered, in a word (`ok ..`, `invalid`, `trap: ..`).
fn kind<T: std::fmt::Debug>(r: wasmtime::Result<Result<T, HostError>>) -> String {
    match r {
        Err(trap) => format!("trap: {trap}"),
        Ok(Ok(v)) => format!("ok {v:?}"),
        Ok(Err(HostError::Denied(_))) => "denied".into(),
        Ok(Err(HostError::Unavailable(_))) => "unavailable".into(),
        Ok(Err(HostError::Invalid(_))) => "invalid".into(),
        Ok(Err(HostError::Failed(_))) => "failed".into(),
    }
}

/// A host call that must succeed.
fn must<T>(r: wasmtime::Result<Result<T, HostError>>) -> anyhow::Result<T> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => anyhow::bail!("host error: {e:?}"),
        Err(trap) => anyhow::bail!("trap: {trap}"),
    }
}

#[tokio::test]
async fn kv_bounds_reach_the_filter_as_typed_errors() -> anyhow::Result<()> {
    let mut s = state(KvLimits {
        max_key_bytes: 8,
        max_value_bytes: 8,
        max_entries: 2,
        max_bytes: 1 << 20,
    })?;
    let ns = || "ns".to_string();
    let long = || "k".repeat(9);
    let got = [
        kind(Ok(s.set(ns(), long(), vec![], 0).await)),
        kind(Ok(s.compare_and_swap(ns(), long(), 0, vec![], 0).await)),
        kind(Ok(s.increment(ns(), long(), 1, 0).await)),
        kind(Ok(s.take_tokens(ns(), long(), 1, 1, 1, 1).await)),
        kind(Ok(s.set(ns(), "k".into(), vec![0; 9], 0).await)),
        kind(Ok(s
            .compare_and_swap(ns(), "k".into(), 0, vec![0; 9], 0)
            .await)),
    ];
    assert_eq!(got, ["invalid"; 6].map(String::from));
    assert_eq!(
        (hits(&s, "kv_key_bytes"), hits(&s, "kv_value_bytes")),
        (4, 2)
    );
    // A full namespace fails (it may work again once keys expire), every kind of write alike.
    must(Ok(s.set(ns(), "a".into(), vec![], 0).await))?;
    must(Ok(s.increment(ns(), "b".into(), 1, 0).await))?;
    let got = [
        kind(Ok(s.set(ns(), "c".into(), vec![], 0).await)),
        kind(Ok(s.compare_and_swap(ns(), "c".into(), 0, vec![], 0).await)),
        kind(Ok(s.increment(ns(), "c".into(), 1, 0).await)),
        kind(Ok(s.take_tokens(ns(), "c".into(), 1, 1, 1, 1).await)),
    ];
    assert_eq!(got, ["failed"; 4].map(String::from));
    assert_eq!(hits(&s, "kv_entries"), 4);
    // Not granted stays `denied`, whatever the size.
    assert_eq!(
        kind(Ok(s.set("other".into(), long(), vec![], 0).await)),
        "denied"
    );
    Ok(())
}

#[test]
fn metric_names_labels_and_series_are_bounded() -> anyhow::Result<()> {
    let mut s = state(KvLimits::default())?;
    let l = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    for label in ["filter", "le", "quantile", "__name__", "bad-name", ""] {
        let got = [
            kind(s.counter_add("m".into(), l(label, "v"), 1)),
            kind(s.gauge_set("g".into(), l(label, "v"), 1)),
            kind(s.histogram_observe("h".into(), l(label, "v"), 1.0)),
        ];
        assert_eq!(got, ["invalid"; 3].map(String::from), "label {label:?}");
    }
    let long = "v".repeat(crate::series::MAX_LABEL_VALUE_BYTES + 1);
    assert_eq!(kind(s.counter_add("m".into(), l("k", &long), 1)), "invalid");
    assert_eq!(
        kind(s.counter_add("calls_total".into(), vec![], 1)),
        "invalid"
    );
    for i in 0..crate::series::MAX_SERIES_PER_METRIC {
        must(s.counter_add("m".into(), l("client", &i.to_string()), 1))?;
    }
    assert_eq!(
        kind(s.counter_add("m".into(), l("client", "one-more"), 1)),
        "invalid"
    );
    assert_eq!(hits(&s, "metric_series"), 1);
    assert_eq!(hits(&s, "metric_label_value_bytes"), 1);
    let text = s.shared.runtime.registry.render("test");
    let series = text
        .lines()
        .filter(|l| l.starts_with("weir_filter_m{"))
        .count();
    assert_eq!(series, crate::series::MAX_SERIES_PER_METRIC);
    for refused in ["one-more", "le=", "quantile=", "__name__"] {
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("weir_filter_") && l.contains(refused)),
            "{refused} rendered"
        );
    }
    assert!(
        text.contains("weir_filter_limit_rejections_total{filter=\"f\",limit=\"metric_series\"} 1")
    );
    Ok(())
}

/// An instance keeps the series it wrote resolved: repeated writes land on the same series
/// (as many as were made), and what admission refuses stays refused however often it comes
/// and whatever was resolved before: another kind under a known name, a bad label, a series
/// past the bound, and series past what the instance keeps resolved still counted right.
#[test]
fn resolved_series_count_every_write_and_refuse_what_admission_refuses() -> anyhow::Result<()> {
    let mut s = state(KvLimits::default())?;
    let l = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    for _ in 0..5 {
        must(s.counter_add("hits".into(), l("r", "a"), 2))?;
        must(s.gauge_set("depth".into(), vec![], 7))?;
        must(s.histogram_observe("wait".into(), vec![], 0.5))?;
        assert_eq!(kind(s.gauge_set("hits".into(), l("r", "a"), 1)), "invalid");
        assert_eq!(kind(s.counter_add("depth".into(), vec![], 1)), "invalid");
        assert_eq!(
            kind(s.counter_add("hits".into(), l("le", "a"), 1)),
            "invalid"
        );
    }
    must(s.counter_add("hits".into(), l("r", "b"), 1))?;
    // More series than one instance keeps resolved: every write still counts.
    for _ in 0..3 {
        for i in 0..RESOLVED_SERIES * 2 {
            must(s.counter_add("many".into(), l("i", &i.to_string()), 1))?;
        }
        must(s.counter_add("hits".into(), l("r", "a"), 1))?;
    }
    let text = s.shared.runtime.registry.render("test");
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(str::to_owned)
    };
    assert_eq!(
        value("weir_filter_hits{filter=\"f\",r=\"a\"}").as_deref(),
        Some("13")
    );
    assert_eq!(
        value("weir_filter_hits{filter=\"f\",r=\"b\"}").as_deref(),
        Some("1")
    );
    assert_eq!(
        value("weir_filter_depth{filter=\"f\"}").as_deref(),
        Some("7")
    );
    assert_eq!(
        value("weir_filter_wait_count{filter=\"f\"}").as_deref(),
        Some("5")
    );
    for i in 0..RESOLVED_SERIES * 2 {
        let series = format!("weir_filter_many{{filter=\"f\",i=\"{i}\"}}");
        assert_eq!(value(&series).as_deref(), Some("3"), "{series}");
    }
    assert!(!text.contains("le=\"a\""));
    // Long label values are written right too (looked up each time, not kept).
    let long = "v".repeat(RESOLVED_SERIES_BYTES);
    for _ in 0..4 {
        must(s.counter_add("hits".into(), l("r", &long), 1))?;
    }
    let text = s.shared.runtime.registry.render("test");
    assert!(text.contains(&format!("weir_filter_hits{{filter=\"f\",r=\"{long}\"}} 4")));
    // Past the series bound, a refusal every time (counted every time), even for a name
    // whose other series are resolved.
    for i in RESOLVED_SERIES * 2..crate::series::MAX_SERIES_PER_METRIC {
        must(s.counter_add("many".into(), l("i", &i.to_string()), 1))?;
    }
    for _ in 0..3 {
        assert_eq!(
            kind(s.counter_add("many".into(), l("i", "x"), 1)),
            "invalid"
        );
    }
    assert_eq!(hits(&s, "metric_series"), 3);
    Ok(())
}

#[test]
fn filters_cannot_grow_header_maps_without_bound() -> anyhow::Result<()> {
    for (phase, map) in [
        (Phase::RequestHeaders, types::HeaderMap::Request),
        (Phase::ResponseHeaders, types::HeaderMap::Response),
        // Before there is a response: the headers to set on it are bounded the same way.
        (Phase::RequestHeaders, types::HeaderMap::Response),
    ] {
        let mut s = state(KvLimits::default())?;
        s.phase = phase;
        for i in 0..MAX_MAP_HEADERS {
            must(s.append_header(map, format!("x-{}", i % 10), "v".into()))?;
        }
        let got = [
            kind(s.append_header(map, "x-0".into(), "v".into())),
            kind(s.set_header(map, "x-new".into(), "v".into())),
        ];
        assert_eq!(got, ["invalid"; 2].map(String::from), "{phase:?}");
        // Replacing and removing still work at the bound.
        assert_eq!(kind(s.set_header(map, "x-1".into(), "w".into())), "ok ()");
        assert_eq!(kind(s.remove_header(map, "x-2".into())), "ok ()");
        assert_eq!(
            kind(s.append_header(map, "x-2".into(), "v".into())),
            "ok ()"
        );

        let mut s = state(KvLimits::default())?;
        s.phase = phase;
        let big = "v".repeat(MAX_HEADER_BYTES / 4);
        for i in 0..3 {
            must(s.append_header(map, format!("x-{i}"), big.clone()))?;
        }
        let got = [
            kind(s.append_header(map, "x-3".into(), big.clone())),
            kind(s.set_header(map, "x-3".into(), big.clone())),
        ];
        assert_eq!(got, ["invalid"; 2].map(String::from), "{phase:?}");
        assert_eq!(kind(s.set_header(map, "x-0".into(), big.clone())), "ok ()");
        assert_eq!(hits(&s, "header_bytes"), 2);
    }
    Ok(())
}

#[tokio::test]
async fn callout_header_lists_are_bounded() -> anyhow::Result<()> {
    let mut s = state(KvLimits::default())?;
    s.phase = Phase::RequestHeaders;
    let headers = |n: usize, len: usize| -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("x-{i}"), "v".repeat(len)))
            .collect()
    };
    let mut send = async |h| {
        kind(Ok(s
            .send("up".into(), "GET".into(), "/".into(), h, vec![], 1000)
            .await))
    };
    // Within the bounds the call gets as far as the (absent) callout client.
    let got = [
        send(headers(MAX_CALL_HEADERS, 1)).await,
        send(headers(MAX_CALL_HEADERS + 1, 1)).await,
        send(headers(MAX_CALL_HEADERS * 8, 0)).await,
        send(headers(2, MAX_HEADER_BYTES / 2)).await,
    ];
    assert_eq!(got, ["unavailable", "invalid", "invalid", "invalid"]);
    Ok(())
}

/// The trace interface: names checked, the proxy's keys refused, values cut, every count
/// bounded and counted, nothing recorded for an unsampled request, nothing at all outside the
/// request phases.
#[test]
fn span_notes_are_checked_and_bounded() -> anyhow::Result<()> {
    use crate::bindings::weir::filter::trace::Host as _;
    let mut s = state(KvLimits::default())?;
    s.phase = Phase::RequestHeaders;
    // Not sampled: accepted and dropped, so a filter need not care.
    assert!(matches!(s.sampled(), Ok(false)));
    must(s.set_attribute("enduser.id".into(), "alice".into()))?;
    must(s.add_event("auth.refused".into(), vec![]))?;
    assert!(s.ex.trace.is_none());

    s.ex.trace = Some(Box::default());
    assert!(matches!(s.sampled(), Ok(true)));
    let bad_keys = [
        String::new(),
        "a b".into(),
        "k\u{0}".into(),
        "é".into(),
        "k".repeat(MAX_SPAN_NAME_BYTES + 1),
        "http.route".into(),
        "url.full".into(),
        "weir.route".into(),
        "server.address".into(),
        "client.address".into(),
        "network.peer".into(),
        "error.type".into(),
    ];
    for k in &bad_keys {
        assert_eq!(
            kind(s.set_attribute(k.clone(), "v".into())),
            "invalid",
            "{k:?}"
        );
        let attr = vec![(k.clone(), "v".into())];
        assert_eq!(kind(s.add_event("e".into(), attr)), "invalid", "{k:?}");
    }
    for name in ["", "a b", "weir\n"] {
        assert_eq!(
            kind(s.add_event(name.into(), vec![])),
            "invalid",
            "{name:?}"
        );
    }
    // A value is cut at a character boundary; a key set again keeps its place.
    must(s.set_attribute("a".into(), "é".repeat(MAX_SPAN_VALUE_BYTES)))?;
    must(s.set_attribute("b".into(), "1".into()))?;
    must(s.set_attribute("b".into(), "2".into()))?;
    let notes = s.ex.trace.as_deref().expect("notes");
    assert_eq!(notes.attributes.len(), 2);
    assert_eq!(notes.attributes[0].1.len(), MAX_SPAN_VALUE_BYTES);
    assert_eq!(notes.attributes[1], ("b".to_string(), "2".to_string()));
    for i in 2..MAX_SPAN_ATTRIBUTES {
        must(s.set_attribute(format!("k{i}"), "v".into()))?;
    }
    assert_eq!(
        kind(s.set_attribute("one.more".into(), "v".into())),
        "invalid"
    );
    assert_eq!(hits(&s, "span_attributes"), 1);
    // Replacing a kept key is not growth.
    must(s.set_attribute("b".into(), "3".into()))?;

    let many = (0..=MAX_EVENT_ATTRIBUTES)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    assert_eq!(kind(s.add_event("e".into(), many)), "invalid");
    assert_eq!(hits(&s, "span_event_attributes"), 1);
    for _ in 0..MAX_SPAN_EVENTS {
        must(s.add_event("e".into(), vec![("k".into(), "v".repeat(4096))]))?;
    }
    assert_eq!(kind(s.add_event("e".into(), vec![])), "invalid");
    assert_eq!(hits(&s, "span_events"), 1);
    let notes = s.ex.trace.as_deref().expect("notes");
    assert_eq!(notes.events.len(), MAX_SPAN_EVENTS);
    assert!(
        notes
            .events
            .iter()
            .all(|e| e.attributes[0].1.len() == MAX_SPAN_VALUE_BYTES)
    );
    assert_eq!(&*notes.events[0].filter, "f");

    // Outside the request's phases there is no span to add to.
    for phase in [Phase::Configure, Phase::Log] {
        s.phase = phase;
        assert!(matches!(s.sampled(), Ok(false)));
        assert_eq!(kind(s.set_attribute("x".into(), "v".into())), "unavailable");
        assert_eq!(kind(s.add_event("x".into(), vec![])), "unavailable");
    }
    Ok(())
}

/// The request's properties are kept as the proxy has them and made text when asked: the
/// same text as before, an IPv6 client in brackets, and an authority that is not visible
/// ASCII read as empty (never bytes a filter could mistake for a host name).
#[test]
fn properties_become_text_when_a_filter_asks() -> anyhow::Result<()> {
    let mut s = state(KvLimits::default())?;
    s.phase = Phase::RequestHeaders;
    s.ex.props = Arc::new(Props {
        authority: HeaderValue::from_static("api.example:8443"),
        scheme: "https",
        client: Some("[2001:db8::1]:40000".parse()?),
        route: "r".into(),
        cluster: "c".into(),
        request_id: HeaderValue::from_static("rid-1"),
    });
    let text = |r: wasmtime::Result<String>| r.unwrap_or_else(|e| format!("trap: {e}"));
    let got = [
        text(s.authority()),
        text(s.scheme()),
        text(s.client_address()),
        text(s.route_name()),
        text(s.cluster_name()),
        text(s.request_id()),
    ];
    assert_eq!(
        got,
        [
            "api.example:8443",
            "https",
            "[2001:db8::1]:40000",
            "r",
            "c",
            "rid-1"
        ]
    );
    s.ex.props = Arc::new(Props {
        authority: HeaderValue::from_bytes(b"caf\xe9.example")?,
        ..Props::default()
    });
    assert_eq!(
        [
            text(s.authority()),
            text(s.client_address()),
            text(s.request_id())
        ],
        ["", "", ""]
    );
    Ok(())
}
