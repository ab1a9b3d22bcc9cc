# Shared by the project's scripts: install what they need, print what they do.

step() {
  local name=$1; shift
  echo "==> $name: $*"
  local t0=$SECONDS
  "$@"
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
