#!/usr/bin/env bash
# Installs the benchmark peers and load generators (Debian: nginx, nginx's Lua and stream modules, HAProxy,
# Caddy, wrk, h2load; crates.io: oha), and builds what the benchmarks run: Weir and the bare
# forwarder (release), and the wasm filters the scenarios load.
# WEIR_BENCH_NO_OHA=1 skips oha (its first build takes several minutes); without it the plain
# scenario reports wrk's closed-loop latencies only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_rust
need_wasm_target
need_debs nginx-light haproxy caddy wrk nghttp2-client libnginx-mod-http-lua libnginx-mod-stream lua-cjson openssl util-linux redis-server
# The kafka scenario's broker (tansu, into .tools/bin).
step "kafka broker" need_kafka

step build cargo build --release --locked -p weir -p weir-benches --bin weir --bin bare-forwarder --bin tcp-bench --bin verify-bench

# The filters the scenarios load: the testbed (mode noop) for chains and memory, the first-party
# jwt-auth, rate-limit and transform for the realistic chain.
mkdir -p target/bench-filters
for dir in tests/filters/testbed filters/jwt-auth filters/rate-limit filters/transform; do
  name=$(basename "$dir"); name=${name//-/_}
  step "filter $name" target/release/weir filter build "$dir" -o "target/bench-filters/$name.wasm"
done
# hot_swap.py builds its two testbed versions itself; building them here keeps cargo out of the run.
step "hot-swap filters" cargo build -q --release --target wasm32-wasip2 -p weir-testbed --target-dir target/wasm-bench
step "hot-swap filters v2" cargo build -q --release --target wasm32-wasip2 -p weir-testbed --features v2 --target-dir target/wasm-bench-v2

# oha: open-loop load at a fixed rate with latency correction (wrk2-style), into target/tools.
if [ "${WEIR_BENCH_NO_OHA:-}" != 1 ] && [ ! -x target/tools/bin/oha ]; then
  step oha cargo install oha --locked --root target/tools \
    || echo "==> oha did not build: the plain scenario will report closed-loop latencies only" >&2
fi
