#!/usr/bin/env bash
# Runs the whole test suite exactly as CI does: formatting, lints, unit, property and end-to-end
# tests (which start the real weir binary against real upstreams and clients on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_rust
need_wasm_target
need_debs curl
step "format" cargo fmt --all -- --check
step "lint" cargo clippy --locked --workspace --all-targets -- -D warnings
step "build" cargo build --locked --workspace --all-targets
step "test" cargo test --locked --workspace --no-fail-fast
step "doc tests and docs" env RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps
