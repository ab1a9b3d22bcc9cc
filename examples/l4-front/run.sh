#!/usr/bin/env bash
# L4 in front of gateways: an L4 Weir (front.yaml: tcp on 127.0.0.1:8000, PROXY v2 sent) spreads
# connections round robin over two L7 Weir gateways (gateway-1.yaml, gateway-2.yaml: :8081 and
# :8082, PROXY v2 accepted from 127.0.0.1), each in front of a demo upstream (:8091, :8092) that
# echoes what it got. Starts all five, prints what to try, and stops them all on Ctrl-C or exit.
#
#   examples/l4-front/run.sh           # run until Ctrl-C
#   examples/l4-front/run.sh --check   # or WEIR_EXAMPLE_ONESHOT=1: make the requests, check what
#                                      # they show, stop everything, exit 0 (passed) or 1
#
# WEIR_BIN=PATH runs that weir binary. Otherwise target/release/weir, else target/debug/weir, if
# it knows this example's config; else `cargo build --release -p weir` first. Each process's
# output goes to WEIR_EXAMPLE_LOGS (default: a new temporary folder): NAME.log is weir's own
# lines (stderr), NAME.access.log its JSON access log (stdout).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

source "$here/../lib.sh"
example_args "$@"
find_weir front gateway-1 gateway-2
ports_free 8000 8081 8082 8091 8092 9910 9911 9912
start_logs l4-front

# One at a time: the three configs share the admin token file beside them, which the first one
# creates.
start app-1 "listening on" "$weir" demo-upstream --listen 127.0.0.1:8091 --name via-gateway-1
start app-2 "listening on" "$weir" demo-upstream --listen 127.0.0.1:8092 --name via-gateway-2
start gateway-1 "^weir: ready" "$weir" run "$here/gateway-1.yaml"
start gateway-2 "^weir: ready" "$weir" run "$here/gateway-2.yaml"
start front "^weir: ready" "$weir" run "$here/front.yaml"

# The client connects from 127.0.0.2 (all of 127/8 is loopback on Linux), so its address is
# not the front's (127.0.0.1) and the gateways are seen to get the client's.
from=127.0.0.2
if ! curl -s -o /dev/null --interface "$from" http://127.0.0.1:9910/healthz 2>/dev/null; then
  from=127.0.0.1
fi
# The demo upstream's x-served-by names the gateway; its JSON echoes the x-forwarded-for it got.
served_by() { tr -d '\r' | sed -n 's/^x-served-by: //Ip' | head -n1; }
xff() { sed -n 's/.*"x-forwarded-for": "\([^"]*\)".*/\1/p' | head -n1; }

if [ -z "$check" ]; then
  cat <<EOF

Logs: $logs (NAME.log: weir's lines; NAME.access.log: access logs). Try:

for i in 1 2 3 4; do curl -s --interface $from -D - -o /dev/null http://127.0.0.1:8000/ | grep -i '^x-served-by'; done   # via-gateway-1, -2, -1, -2: one connection each, round robin
curl -s --interface $from http://127.0.0.1:8000/who | grep x-forwarded-for   # "$from": the client, not the front (127.0.0.1)
tail -n 2 $logs/gateway-*.access.log   # "client":"$from:PORT": the port the client used at the front
tail -n 4 $logs/front.access.log       # a line per connection: upstream, attempts, bytes, close
curl -s http://127.0.0.1:9910/metrics | grep -E '^weir_listener_(received|sent)'   # bytes relayed by the front
curl -s http://127.0.0.1:9911/metrics | grep 'reason="proxy_protocol"'   # 0: the front's tcp probes send nothing, and are not counted
curl -s http://127.0.0.1:9910/clusters   # the gateways as the front sees them; stop one and watch it go unhealthy
kill ${pids[3]}   # stop gateway-2: its connects are retried on gateway-1, then probes take it out

Ctrl-C stops everything.
EOF
  wait_forever app-1 app-2 gateway-1 gateway-2 front
fi

# --check: the same, verified.
echo "==> 4 requests from $from, one connection each"
served=()
for i in 1 2 3 4; do
  out=$(curl -sS --interface "$from" -D - "http://127.0.0.1:8000/check/$i") || fail "request $i: curl failed"
  by=$(printf '%s\n' "$out" | served_by)
  got=$(printf '%s\n' "$out" | xff)
  echo "    GET /check/$i -> $by, x-forwarded-for: $got"
  [ "$got" = "$from" ] || fail "request $i: x-forwarded-for is '$got', not the client $from"
  served+=("$by")
done
[ "${served[0]}" != "${served[1]}" ] && [ "${served[0]}" = "${served[2]}" ] \
  && [ "${served[1]}" = "${served[3]}" ] \
  || fail "the gateways do not alternate: ${served[*]}"

echo "==> access logs"
# Lines are written by a background thread, and the front's when each connection closes.
for i in $(seq 50); do
  [ "$(grep -c '"kind":"tcp"' "$logs/front.access.log" || true)" -ge 4 ] && break
  sleep 0.1
done
clients=$(sed -n 's/.*"kind":"tcp","client":"\([^"]*\)".*/\1/p' "$logs/front.access.log")
[ "$(printf '%s\n' "$clients" | grep -c "^$from:")" -eq 4 ] \
  || fail "the front logged clients '$clients', not 4 from $from"
for c in $clients; do
  gw=
  for i in $(seq 50); do
    gw=$(grep -l "\"client\":\"$c\"" "$logs"/gateway-*.access.log || true)
    [ -n "$gw" ] && break
    sleep 0.1
  done
  [ -n "$gw" ] || fail "no gateway logged the client $c"
  echo "    front: $c -> $(basename "$gw" .access.log) logged \"client\":\"$c\""
done
grep '"kind":"tcp"' "$logs/front.access.log" | grep -qv '"close":"closed"' \
  && fail "a front connection did not close cleanly: $(cat "$logs/front.access.log")"

echo "==> gateway-2 stopped: new connections go to gateway-1 (a refused connect is retried)"
kill "${pids[3]}"
wait "${pids[3]}" 2>/dev/null || true
for i in 1 2 3; do
  out=$(curl -sS --interface "$from" -D - "http://127.0.0.1:8000/failover/$i") || fail "failover request $i: curl failed"
  by=$(printf '%s\n' "$out" | served_by)
  echo "    GET /failover/$i -> $by"
  [ "$by" = via-gateway-1 ] || fail "failover request $i answered by '$by'"
done
for i in $(seq 50); do
  grep -q '"attempts":2' "$logs/front.access.log" && break
  sleep 0.1
done
grep -q '"attempts":2.*"close":"closed"' "$logs/front.access.log" \
  || fail "no front connection was retried on gateway-1"
echo "    front access log: $(grep -m1 '"attempts":2' "$logs/front.access.log")"

received=$(curl -s http://127.0.0.1:9910/metrics | sed -n 's/^weir_listener_received_bytes_total{listener="front"} //p')
[ "${received:-0}" -gt 0 ] || fail "weir_listener_received_bytes_total{listener=\"front\"} is '${received}'"
echo "    weir_listener_received_bytes_total{listener=\"front\"} $received"
echo "==> check passed (logs: $logs)"
