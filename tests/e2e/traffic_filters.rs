//! End-to-end: traffic_filters.

mod support;

#[allow(unused_imports)]
use support::*;
