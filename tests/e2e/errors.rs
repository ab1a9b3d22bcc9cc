//! End-to-end: errors.

mod support;

#[allow(unused_imports)]
use support::*;
