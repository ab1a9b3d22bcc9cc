//! The span exporter's counters (`weir_trace_spans_*`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What became of sampled requests' spans.
#[derive(Debug, Default)]
pub struct TraceStats {
    /// Spans waiting for export now.
    pub queued: AtomicU64,
    /// Spans a receiver accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Spans dropped because their export request failed or timed out.
    pub dropped_export_failed: AtomicU64,
}

impl TraceStats {
    pub(crate) fn render(&self, out: &mut String) {
        out.push_str("# HELP weir_trace_spans_queued Spans waiting for export.\n# TYPE weir_trace_spans_queued gauge\n");
        let _ = writeln!(out, "weir_trace_spans_queued {}", self.queued.load(Relaxed));
        out.push_str("# HELP weir_trace_spans_exported_total Spans an OTLP receiver accepted.\n# TYPE weir_trace_spans_exported_total counter\n");
        let _ = writeln!(
            out,
            "weir_trace_spans_exported_total {}",
            self.exported.load(Relaxed)
        );
        out.push_str("# HELP weir_trace_spans_dropped_total Spans dropped: the export queue was full, or their export failed.\n# TYPE weir_trace_spans_dropped_total counter\n");
        for (reason, n) in [
            ("queue_full", &self.dropped_queue_full),
            ("export_failed", &self.dropped_export_failed),
        ] {
            let _ = writeln!(
                out,
                "weir_trace_spans_dropped_total{{reason=\"{reason}\"}} {}",
                n.load(Relaxed)
            );
        }
    }
}
