//! End-to-end: ops.

mod support;

#[allow(unused_imports)]
use support::*;
