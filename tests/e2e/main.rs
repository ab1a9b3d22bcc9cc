//! Weir's end-to-end tests: the real `weir` binary, real upstream servers and real clients on
//! loopback. One test binary (one link of wasmtime, one build of the harness) with a module per
//! area: `cargo test -p weir --test e2e resilience::` runs one area.

mod h2raw;
mod support;

mod auth_filters;
mod balancing;
mod errors;
mod filters;
mod hostile;
mod kafka;
mod l4;
mod languages;
mod ops;
mod protocols;
mod reliability;
mod reload;
mod resilience;
mod routing;
mod state;
mod traffic_filters;
