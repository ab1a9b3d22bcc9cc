//! End-to-end: balancing.

mod support;

#[allow(unused_imports)]
use support::*;
