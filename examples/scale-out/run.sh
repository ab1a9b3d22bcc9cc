#!/usr/bin/env bash
# Scale-out: one rate limit across two gateways. A real redis-server (:6390; Debian's package,
# installed if missing) holds the token buckets; two L7 Weir gateways (gateway-1.yaml,
# gateway-2.yaml: :8181 and :8182) run the rate-limit filter with `state.backend: redis`; an L4
# Weir (front.yaml: :8100) spreads connections over them with PROXY v2, so the limit, keyed by
# client_ip, sees the real client. Each gateway forwards to its own demo upstream (:8191, :8192)
# so answers show which gateway passed them on.
#
#   examples/scale-out/run.sh           # run until Ctrl-C, printing what to try
#   examples/scale-out/run.sh --check   # or WEIR_EXAMPLE_ONESHOT=1: verify one global limit, Redis
#                                       # killed (each gateway limits alone) and back; exit 0 or 1
#
# WEIR_BIN=PATH runs that weir binary (else target/release/weir or target/debug/weir, else a
# release build). The filter is built into target/filters/rate_limit.wasm if it is not there.
# Logs go to WEIR_EXAMPLE_LOGS (default: a new temporary folder).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

source "$here/../lib.sh"
example_args "$@"
(cd "$root" && source scripts/lib.sh && need_debs curl redis-server)
# The gateways' configs name the filter, so they are checked once it is built.
find_weir front
wasm=$root/target/filters/rate_limit.wasm
if [ ! -f "$wasm" ]; then
  echo "==> building the rate-limit filter into $wasm"
  (cd "$root" && source scripts/lib.sh && need_wasm_target && mkdir -p target/filters \
    && "$weir" filter build filters/rate-limit -o "$wasm")
fi
check_configs gateway-1 gateway-2
ports_free 6390 8100 8181 8182 8191 8192 9920 9921 9922
start_logs scale-out

# Redis logs to stdout; start() waits on stderr.
start_redis() {
  start redis "Ready to accept connections" sh -c 'exec redis-server "$@" >&2' redis-server \
    --bind 127.0.0.1 --port 6390 --save "" --appendonly no --dir "$logs"
}

start_redis
start app-1 "listening on" "$weir" demo-upstream --listen 127.0.0.1:8191 --name via-gateway-1
start app-2 "listening on" "$weir" demo-upstream --listen 127.0.0.1:8192 --name via-gateway-2
start gateway-1 "^weir: ready" "$weir" run "$here/gateway-1.yaml"
start gateway-2 "^weir: ready" "$weir" run "$here/gateway-2.yaml"
start front "^weir: ready" "$weir" run "$here/front.yaml"

# 20 requests through the front, one connection each: status and the gateway that answered.
twenty() {
  local i
  for i in $(seq 20); do
    curl -s -o /dev/null -w '%{http_code} %header{x-served-by}\n' "http://127.0.0.1:8100/$1/$i"
  done
}
sample() { curl -s "http://127.0.0.1:$1/metrics" | sed -n "s/^$2 //p"; }

if [ -z "$check" ]; then
  cat <<EOF

Logs: $logs. The limit is 10 requests a minute per client, shared by both gateways. Try:

for i in \$(seq 20); do curl -s -o /dev/null -w '%{http_code} %header{x-served-by}\n' http://127.0.0.1:8100/; done
    # 10 x 200 (alternating via-gateway-1 and via-gateway-2), then 429 from both: one limit, not 10 each
curl -s http://127.0.0.1:8100/ -D - -o /dev/null | grep -i ratelimit   # RateLimit-* headers, from either gateway
redis-cli -p 6390 --scan --pattern 'weir:*'                           # the bucket both gateways use
curl -s http://127.0.0.1:9921/state                                   # gateway-1's view of Redis
curl -s http://127.0.0.1:9921/metrics | grep ^weir_state_             # ops, latency, fallbacks, up
kill ${pids[0]}    # stop Redis: each gateway falls back to its own bucket (on_unavailable: local),
                   # logs it once, and counts weir_state_fallbacks_total; start it again to recover

Ctrl-C stops everything.
EOF
  wait_forever redis app-1 app-2 gateway-1 gateway-2 front
fi

echo "==> 20 requests through the front: one limit of 10 across both gateways"
out=$(twenty limit)
printf '%s\n' "$out" | sed 's/^/    /' | head -n 12
echo "    ..."
ok=$(printf '%s\n' "$out" | grep -c '^200 ' || true)
limited=$(printf '%s\n' "$out" | grep -c '^429' || true)
# The bucket refills at 10 a minute: one more may pass if the run straddles a refill.
[ "$ok" -ge 10 ] && [ "$ok" -le 11 ] && [ $((ok + limited)) -eq 20 ] \
  || fail "$ok passed and $limited were limited: expected 10 (one shared limit), not 20"
for g in via-gateway-1 via-gateway-2; do
  printf '%s\n' "$out" | grep -q "^200 $g" || fail "no request passed through $g"
done
for p in 9921 9922; do
  n=$(sample "$p" 'weir_filter_ratelimit_requests_total{filter="limit",route="app",result="limited"}')
  [ "${n:-0}" -ge 1 ] || fail "the gateway with admin :$p limited nothing ($n)"
done
keys=$(redis-cli -p 6390 --scan --pattern 'weir:ratelimit:tb:*')
[ -n "$keys" ] || fail "no bucket in Redis"
echo "    $ok passed, $limited limited by both gateways; the bucket in Redis: $keys"

echo "==> Redis killed: requests still answered, each gateway limits on its own"
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
out=$(twenty down)
ok=$(printf '%s\n' "$out" | grep -c '^200 ' || true)
[ "$ok" -ge 19 ] || fail "with Redis down, $ok of 20 passed: expected two fresh local buckets of 10"
for p in 9921 9922; do
  n=$(sample "$p" 'weir_state_fallbacks_total{op="take_tokens"}')
  [ "${n:-0}" -ge 1 ] || fail "gateway :$p counted no fallback"
  [ "$(sample "$p" weir_state_up)" = 0 ] || fail "gateway :$p says Redis is up"
done
grep -q "is unavailable" "$logs/gateway-1.log" || fail "gateway-1 did not log the outage"
echo "    $ok of 20 passed (10 per gateway); weir_state_fallbacks_total counted; the outage logged"

echo "==> Redis back: the gateways reconnect"
start_redis
for i in $(seq 60); do
  [ "$(sample 9921 weir_state_up)" = 1 ] && [ "$(sample 9922 weir_state_up)" = 1 ] && break
  sleep 0.1
done
for p in 9921 9922; do
  [ "$(sample "$p" weir_state_up)" = 1 ] || fail "gateway :$p did not reconnect"
done
out=$(twenty back)
ok=$(printf '%s\n' "$out" | grep -c '^200 ' || true)
[ "$ok" -ge 10 ] && [ "$ok" -le 11 ] || fail "after the restart $ok passed: expected one fresh shared limit of 10"
echo "    reconnected; $ok of 20 passed: one shared limit again"
echo "==> check passed (logs: $logs)"
