#!/usr/bin/env bash
# Installs the benchmark peers and load generators, and builds Weir and the bare forwarder.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_rust
need_debs nginx-light haproxy caddy wrk nghttp2-client libnginx-mod-http-lua util-linux
cargo build --release --locked -p weir -p weir-benches --bin weir --bin bare-forwarder
