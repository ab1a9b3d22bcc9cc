#!/usr/bin/env bash
# Runs the whole test suite exactly as CI does: formatting, lints, unit, property and end-to-end
# tests (which start the real weir binary against real upstreams and clients on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_rust
need_wasm_target
# redis-server: the state tests share filter state through a real one (on a loopback port).
need_debs curl redis-server
export WEIR_REQUIRE_REDIS=1
# Kafka: a real broker (tansu) and a reader (librdkafka) for the access log's Kafka sink.
step "kafka broker" need_kafka
export WEIR_REQUIRE_KAFKA=1
need_go
need_node
# The Go SDK, the Go testbed and the Go examples: vet (natively and for wasip1), native tests
# against the SDK's host emulator.
go_checks() {
  local d unformatted
  unformatted=$("$(go env GOROOT)/bin/gofmt" -l sdk/go tests/filters/testbed-go examples/go)
  [ -z "$unformatted" ] || { echo "gofmt: not formatted: $unformatted" >&2; return 1; }
  for d in sdk/go tests/filters/testbed-go examples/go/*/; do
    (cd "$d" && go vet ./... && GOOS=wasip1 GOARCH=wasm go vet ./... && go test ./...)
  done
}
step "go" go_checks
# The AssemblyScript SDK, testbed and examples: built, then tested in Node's host emulator.
step "assemblyscript" npm test --silent
step "format" cargo fmt --all -- --check
step "lint" cargo clippy --locked --workspace --all-targets -- -D warnings
step "build" cargo build --locked --workspace --all-targets
step "test" cargo test --locked --workspace --no-fail-fast
# The L4-in-front-of-gateways example, as a user runs it (fixed ports 8000-8092, 9910-9912).
step "l4 example" env WEIR_BIN=target/debug/weir bash examples/l4-front/run.sh --check
# Scale-out: two gateways sharing one rate limit through a real redis-server, behind an L4 front
# (fixed ports 6390, 8100-8192, 9920-9922).
step "scale-out example" env WEIR_BIN=target/debug/weir bash examples/scale-out/run.sh --check
step "doc tests and docs" env RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps
