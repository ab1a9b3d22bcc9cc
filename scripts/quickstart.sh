#!/usr/bin/env bash
# Builds everything the quickstart needs and runs it: the weir binary (release), demo upstreams,
# and the proxy with examples/quickstart.yaml (proxy on 127.0.0.1:8080, admin on 127.0.0.1:9901).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_rust
cargo build --release --locked -p weir
exec target/release/weir quickstart --config examples/quickstart.yaml
