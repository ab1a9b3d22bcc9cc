//! End-to-end: protocols.

mod support;

#[allow(unused_imports)]
use support::*;
