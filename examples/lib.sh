# Shared by the examples' run.sh scripts: the weir binary, free ports, processes started in the
# background (with their logs) and stopped on exit. Source it after setting `here` (the
# example's folder) and `root` (the repository).

# example_args "$@": sets `check` from --check or WEIR_EXAMPLE_ONESHOT=1.
example_args() {
  check=${WEIR_EXAMPLE_ONESHOT:-}
  [ "$check" = 0 ] && check=
  case "${1:-}" in
    --check) check=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
  esac
}

# find_weir CONFIG...: sets `weir` to WEIR_BIN, else target/release/weir or target/debug/weir if
# it accepts every CONFIG, else builds the release binary. Then checks it accepts them all.
find_weir() {
  local b f ok
  weir=${WEIR_BIN:-}
  if [ -z "$weir" ]; then
    for b in "$root/target/release/weir" "$root/target/debug/weir"; do
      ok=1
      for f in "$@"; do
        [ -x "$b" ] && "$b" validate "$here/$f.yaml" >/dev/null 2>&1 || ok=
      done
      if [ -n "$ok" ]; then weir=$b; break; fi
    done
  fi
  if [ -z "$weir" ]; then
    echo "==> no weir binary in target/ takes this example's config: cargo build --release -p weir"
    (cd "$root" && source scripts/lib.sh && need_rust && cargo build --release --locked -p weir)
    weir=$root/target/release/weir
  fi
  check_configs "$@"
}

# check_configs CONFIG...: exits unless `weir` accepts every CONFIG.
check_configs() {
  local f
  for f in "$@"; do
    "$weir" validate "$here/$f.yaml" >/dev/null \
      || { echo "$weir refuses $f.yaml (a build older than this example?)" >&2; exit 1; }
  done
}

# ports_free PORT...: exits unless every loopback port is free.
ports_free() {
  local p
  for p in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "127.0.0.1:$p is in use; this example needs $* free" >&2
      exit 1
    fi
  done
}

# start_logs NAME: sets `logs` (WEIR_EXAMPLE_LOGS or a new temporary folder) and stops every
# started process on exit.
start_logs() {
  logs=${WEIR_EXAMPLE_LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/weir-$1.XXXXXX")}
  mkdir -p "$logs"
  pids=()
  trap stop_all EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

stop_all() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

# start NAME READY COMMAND...: runs COMMAND in the background (stdout to NAME.access.log, stderr
# to NAME.log) and waits (10s at most) until NAME.log has a line matching READY.
start() {
  local name=$1 ready=$2 pid i
  shift 2
  "$@" >"$logs/$name.access.log" 2>"$logs/$name.log" &
  pid=$!
  pids+=("$pid")
  for i in $(seq 100); do
    if grep -q "$ready" "$logs/$name.log"; then
      sed -n 's/^weir: \(.*listening on [a-z+]*:.*\)/==> '"$name"': \1/p' "$logs/$name.log" | grep -v admin || true
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name did not start:" >&2
  cat "$logs/$name.log" >&2
  exit 1
}

# wait_forever NAME...: until Ctrl-C, saying when one of the started processes (named in start
# order) exits.
wait_forever() {
  local names=("$@") gone=() i
  while :; do
    for i in "${!pids[@]}"; do
      if [ -z "${gone[$i]:-}" ] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
        gone[$i]=1
        echo "${names[$i]:-process $i} exited; see $logs/${names[$i]:-}.log" >&2
      fi
    done
    sleep 1
  done
}

# fail MESSAGE: the check failed; shows the end of every log and exits 1.
fail() {
  echo "check failed: $*" >&2
  for f in "$logs"/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done
  exit 1
}
