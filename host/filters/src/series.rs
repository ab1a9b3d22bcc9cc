//! The metrics filters define (`weir_filter_<name>` on `/metrics`): names and labels are checked,
//! and how many series a filter can create is bounded, because label values often come from
//! requests (a route, a status, a client...) and every series lives until the process exits.
//!
//! Past a bound the call is refused with `invalid` (and counted in
//! `weir_filter_limit_rejections_total{filter,limit}`) rather than folded into an overflow
//! series: the filter learns at once that its labels are unbounded, and the series it already
//! has keep counting.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// Longest metric name, in bytes (before the `weir_filter_` prefix).
pub const MAX_NAME_BYTES: usize = 128;
/// Most labels on one series.
pub const MAX_LABELS: usize = 16;
/// Longest label name, in bytes.
pub const MAX_LABEL_NAME_BYTES: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Most distinct label sets (series) of one metric of one filter.
pub const MAX_SERIES_PER_METRIC: usize = 1000;
/// Most distinct metric names one filter may define.
pub const MAX_METRICS_PER_FILTER: usize = 128;

/// Label names the host adds itself (`filter` on every series, `le` on histogram buckets) or
/// that Prometheus gives a meaning (`quantile`; every name starting with `__`).
const RESERVED_LABELS: [&str; 3] = ["filter", "le", "quantile"];

/// The host's own `weir_filter_*` metrics (and the series a histogram adds): a filter metric
/// with one of these names would be rendered into the same family.
const HOST_METRICS: [&str; 8] = [
    "calls_total",
    "call_duration_seconds",
    "call_duration_seconds_bucket",
    "call_duration_seconds_sum",
    "call_duration_seconds_count",
    "failures_total",
    "budget_breaches_total",
    "limit_rejections_total",
];

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metrics call the host refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The bound that was hit (a `weir_filter_limit_rejections_total` label), or `None` for a
    /// malformed name.
    pub limit: Option<&'static str>,
    pub message: String,
}

fn malformed(message: String) -> Refused {
    Refused {
        limit: None,
        message,
    }
}

fn bound(limit: &'static str, message: String) -> Refused {
    Refused {
        limit: Some(limit),
        message,
    }
}

/// Checks a metric name and its labels, without looking at what exists.
pub(crate) fn check(name: &str, labels: &[(String, String)]) -> Result<(), Refused> {
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()));
    if !name_ok {
        return Err(malformed(format!(
            "metric name {name:?} must match [a-z_][a-z0-9_]*"
        )));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(bound(
            "metric_name_bytes",
            format!(
                "metric name of {} bytes is longer than {MAX_NAME_BYTES}",
                name.len()
            ),
        ));
    }
    if HOST_METRICS.contains(&name) {
        return Err(malformed(format!(
            "metric name {name:?} is taken by the host's weir_filter_{name}"
        )));
    }
    if labels.len() > MAX_LABELS {
        return Err(bound(
            "metric_labels",
            format!(
                "metric {name:?}: {} labels, at most {MAX_LABELS}",
                labels.len()
            ),
        ));
    }
    for (i, (k, v)) in labels.iter().enumerate() {
        let k_ok = !k.is_empty()
            && k.bytes().enumerate().all(|(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            });
        if !k_ok {
            return Err(malformed(format!(
                "metric {name:?}: label name {k:?} must match [a-zA-Z_][a-zA-Z0-9_]*"
            )));
        }
        if k.len() > MAX_LABEL_NAME_BYTES {
            return Err(bound(
                "metric_label_name_bytes",
                format!(
                    "metric {name:?}: label name of {} bytes is longer than {MAX_LABEL_NAME_BYTES}",
                    k.len()
                ),
            ));
        }
        if RESERVED_LABELS.contains(&k.as_str()) || k.starts_with("__") {
            return Err(malformed(format!(
                "metric {name:?}: label name {k:?} is reserved (filter, le, quantile and __*)"
            )));
        }
        if labels[..i].iter().any(|(earlier, _)| earlier == k) {
            return Err(malformed(format!(
                "metric {name:?}: label {k:?} is given twice"
            )));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            return Err(bound(
                "metric_label_value_bytes",
                format!(
                    "metric {name:?}: value of label {k:?} is {} bytes, at most {MAX_LABEL_VALUE_BYTES}",
                    v.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The series one metric of one filter has.
#[derive(Debug)]
struct Track {
    kind: Kind,
    /// Hashes of the label lists seen. A collision merely lets one more series in.
    series: HashSet<u64>,
}

#[derive(Debug, Default)]
struct FilterMetrics {
    metrics: DashMap<String, Track>,
    names: AtomicUsize,
}

/// The metrics and series every filter has defined, to bound them.
#[derive(Debug, Default)]
pub(crate) struct Series {
    hasher: RandomState,
    filters: DashMap<String, Arc<FilterMetrics>>,
    /// Metric name → kind, across filters: one name is one Prometheus family, of one type.
    kinds: DashMap<String, Kind>,
}

impl Series {
    /// Checks a call and admits its series, or refuses it.
    pub fn admit(
        &self,
        filter: &str,
        name: &str,
        kind: Kind,
        labels: &[(String, String)],
    ) -> Result<(), Refused> {
        check(name, labels)?;
        let fm = match self.filters.get(filter) {
            Some(f) => f.clone(),
            None => self.filters.entry(filter.to_string()).or_default().clone(),
        };
        let hash = self.hasher.hash_one(labels);
        let mut track = match fm.metrics.get_mut(name) {
            Some(t) => t,
            None => match fm.metrics.entry(name.to_string()) {
                Entry::Occupied(o) => o.into_ref(),
                Entry::Vacant(v) => {
                    if fm.names.fetch_add(1, Relaxed) >= MAX_METRICS_PER_FILTER {
                        fm.names.fetch_sub(1, Relaxed);
                        return Err(bound(
                            "metric_names",
                            format!(
                                "filter {filter:?} already has {MAX_METRICS_PER_FILTER} metrics; {name:?} is one too many"
                            ),
                        ));
                    }
                    let known = *self.kinds.entry(name.to_string()).or_insert(kind);
                    if known != kind {
                        fm.names.fetch_sub(1, Relaxed);
                        return Err(malformed(format!(
                            "metric {name:?} is a {}, not a {}",
                            known.as_str(),
                            kind.as_str()
                        )));
                    }
                    v.insert(Track {
                        kind,
                        series: HashSet::new(),
                    })
                }
            },
        };
        if track.kind != kind {
            return Err(malformed(format!(
                "metric {name:?} is a {}, not a {}",
                track.kind.as_str(),
                kind.as_str()
            )));
        }
        if !track.series.contains(&hash) {
            if track.series.len() >= MAX_SERIES_PER_METRIC {
                return Err(bound(
                    "metric_series",
                    format!(
                        "metric {name:?} already has {MAX_SERIES_PER_METRIC} label sets; keep label values to a small, fixed set"
                    ),
                ));
            }
            track.series.insert(hash);
        }
        Ok(())
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
    fn malformed_and_reserved_names_are_refused() {
        let long_label = "l".repeat(MAX_LABEL_NAME_BYTES + 1);
        let long_value = "v".repeat(MAX_LABEL_VALUE_BYTES + 1);
        let long_name = "m".repeat(MAX_NAME_BYTES + 1);
        let too_many: Vec<(String, String)> = (0..=MAX_LABELS)
            .map(|i| (format!("l{i}"), String::new()))
            .collect();
        let mut refused: Vec<(&str, Vec<(String, String)>)> = vec![
            ("", vec![]),
            ("Upper", vec![]),
            ("9lives", vec![]),
            ("a-b", vec![]),
            ("calls_total", vec![]),
            ("failures_total", vec![]),
            ("call_duration_seconds_count", vec![]),
            ("limit_rejections_total", vec![]),
            (&long_name, vec![]),
            ("m", too_many),
            ("m", labels(&[("a", "1"), ("a", "2")])),
            ("m", vec![(long_label.clone(), String::new())]),
            ("m", vec![("a".into(), long_value.clone())]),
        ];
        for bad in [
            "filter", "le", "quantile", "__name__", "__x", "", "1a", "a-b", "a b", "é", "a.b",
        ] {
            refused.push(("m", labels(&[("ok", "1"), (bad, "v")])));
        }
        let wrongly_accepted: Vec<String> = refused
            .iter()
            .filter(|(name, l)| check(name, l).is_ok())
            .map(|(name, l)| format!("{name:?} {l:?}"))
            .collect();
        assert!(wrongly_accepted.is_empty(), "{wrongly_accepted:#?}");

        for (name, l) in [
            ("requests_total", labels(&[])),
            ("_x", labels(&[("route", "api"), ("result", "ok")])),
            ("m", labels(&[("A_b9", "any \"text\"\n"), ("_x", "")])),
            ("m", vec![("a".into(), "v".repeat(MAX_LABEL_VALUE_BYTES))]),
            ("calls", labels(&[])),
        ] {
            assert_eq!(check(name, &l), Ok(()), "{name:?} {l:?}");
        }
    }

    #[test]
    fn series_per_metric_are_bounded() {
        let s = Series::default();
        let one = |i: usize| labels(&[("client", &i.to_string())]);
        for i in 0..MAX_SERIES_PER_METRIC {
            assert_eq!(s.admit("f", "hits", Kind::Counter, &one(i)), Ok(()), "{i}");
        }
        for i in MAX_SERIES_PER_METRIC..MAX_SERIES_PER_METRIC + 50 {
            let e = s.admit("f", "hits", Kind::Counter, &one(i));
            assert_eq!(e.map_err(|r| r.limit), Err(Some("metric_series")));
        }
        assert_eq!(
            s.admit("f", "hits", Kind::Counter, &one(7)),
            Ok(()),
            "existing series keep counting"
        );
        assert_eq!(s.admit("f", "other", Kind::Counter, &one(5000)), Ok(()));
        assert_eq!(s.admit("g", "hits", Kind::Counter, &one(5000)), Ok(()));
    }

    #[test]
    fn metric_names_per_filter_are_bounded() {
        let s = Series::default();
        for i in 0..MAX_METRICS_PER_FILTER {
            assert_eq!(s.admit("f", &format!("m{i}"), Kind::Gauge, &[]), Ok(()));
        }
        let e = s.admit("f", "one_more", Kind::Gauge, &[]);
        assert_eq!(e.map_err(|r| r.limit), Err(Some("metric_names")));
        assert_eq!(s.admit("f", "m0", Kind::Gauge, &[]), Ok(()));
        assert_eq!(s.admit("g", "one_more", Kind::Gauge, &[]), Ok(()));
    }

    #[test]
    fn a_name_keeps_its_kind_across_filters() {
        let s = Series::default();
        assert_eq!(s.admit("f", "m", Kind::Counter, &[]), Ok(()));
        for (filter, kind) in [
            ("f", Kind::Gauge),
            ("f", Kind::Histogram),
            ("g", Kind::Gauge),
        ] {
            assert!(
                s.admit(filter, "m", kind, &[]).is_err(),
                "{filter} {kind:?}"
            );
        }
        assert_eq!(s.admit("g", "m", Kind::Counter, &[]), Ok(()));
    }
}
