//! End-to-end: auth_filters.

mod support;

#[allow(unused_imports)]
use support::*;
