//! Observability for Weir: lock-free metrics rendered as Prometheus text, and the JSON access log.
//!
//! Stats objects are looked up by name when a config snapshot is built (so counters survive
//! reloads) and then reached through `Arc`s on the hot path: a request touches only atomics.

#![deny(missing_docs)]

mod access_log;
mod kafka;
mod lines;
mod metrics;
mod queues;
mod state;
mod timeouts;
mod traces;

pub use access_log::{AccessLog, AccessRecord, ConnectionRecord, LogKeys, rfc3339};
pub use kafka::{KafkaSink, KafkaStats};
pub use metrics::{
    BUFFER_POOL_BYTES, ClusterStats, ConnGauge, EndpointStats, FilterSeries, FilterStats,
    Histogram, ListenerStats, Refusal, Registry, RouteStats, escape,
};
pub use queues::{QueueStats, Waiting};
pub use state::{StateOp, StateOutcome, StateStats};
pub use timeouts::{TimeoutKind, TimeoutStats};
pub use traces::TraceStats;
