#!/usr/bin/env bash
# Builds everything the quickstart needs and runs it: the weir binary (release), the first-party
# wasm filters and the example filters in three languages (with `weir filter build`), demo upstreams, and the proxy with
# examples/quickstart.yaml (proxy on 127.0.0.1:8080, admin on 127.0.0.1:9901).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_rust
need_wasm_target
need_go
need_node
cargo build --release --locked -p weir
mkdir -p target/filters
for f in jwt-auth key-auth basic-auth oauth2-introspect rate-limit cors transform; do
  target/release/weir filter build "filters/$f" -o "target/filters/${f//-/_}.wasm"
done
# The example filters, each written in Rust, Go and AssemblyScript (examples/README.md).
mkdir -p target/filters/examples
for lang in rust go assemblyscript; do
  for f in header-auth rate-limit json-transform; do
    target/release/weir filter build "examples/$lang/$f" -o "target/filters/examples/$lang-$f.wasm"
  done
done
exec target/release/weir quickstart --config examples/quickstart.yaml
