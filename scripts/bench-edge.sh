#!/usr/bin/env bash
# HTTP benchmark of the edge: wrk against GET /v1/orders/{id} of a running
# `sluice up` (release build, authenticated as the order's customer), of a
# second one with the order cache off, and of a bare axum handler answering
# the same body from memory (`sluice bench-http-baseline`), in the same run
# on the same machine.
#
#   scripts/bench-edge.sh
#
# Environment: BENCH_DURATION (wrk -d, default 15s), BENCH_CONNECTIONS
# (wrk -c, default 32), BENCH_THREADS (wrk -t, default 1). Needs wrk (Debian
# package wrk; installed with apt-get when missing), curl and python3.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
DURATION=${BENCH_DURATION:-15s}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-1}
BIN=$PWD/target/release/sluice

fail() { printf 'bench-edge.sh: %s\n' "$*" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } >/dev/null 2>&1 \
    || fail "wrk is not installed and apt-get install wrk failed"
fi
cargo build --release --locked -p sluice-cli --bin sluice >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
PORT=$(free_port)
BASE_PORT=$(free_port)
UNCACHED_PORT=$(free_port)
ADMIN=sk_admin_$(python3 -c 'import secrets; print(secrets.token_hex(16))')
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# start_up DIR PORT [VAR=VALUE...]: a sluice up of its own, ready. Rate
# limits off: one client makes every request.
start_up() {
  local dir=$1 port=$2
  shift 2
  env SLUICE_ADMIN_KEY="$ADMIN" SLUICE_EDGE_RATE_LIMIT=0 RUST_LOG=warn "$@" \
    "$BIN" up --data-dir "$dir" --listen "127.0.0.1:$port" >"$dir.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  fail "sluice up is not ready: $(tail -n 3 "$dir.log")"
}

json() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }

# place_order PORT: a customer, a product and a confirmed order on the
# sluice up at PORT; sets TOKEN and ORDER, writes the order to order.json.
place_order() {
  local edge=http://127.0.0.1:$1 product status
  post() { curl -fsS -X POST "$edge$1" -H 'content-type: application/json' "${@:3}" -d "$2"; }
  post /v1/accounts '{"email":"bench@example.com","password":"correct horse battery"}' >/dev/null
  TOKEN=$(post /v1/auth/token '{"email":"bench@example.com","password":"correct horse battery"}' | json '["access_token"]')
  product=$(post /v1/products '{"sku":"BENCH-1","name":"Bench","price_cents":1250,"currency":"EUR","stock":10}' \
    -H "x-api-key: $ADMIN" | json '["id"]')
  sleep 1 # the orders service prices from its catalogue projection
  ORDER=$(post /v1/orders "{\"items\":[{\"product_id\":\"$product\",\"quantity\":2}],\"payment_token\":\"tok_visa\"}" \
    -H "authorization: Bearer $TOKEN" -H "idempotency-key: bench-1" | json '["id"]')
  for _ in $(seq 1 100); do
    status=$(curl -fsS "$edge/v1/orders/$ORDER" -H "authorization: Bearer $TOKEN" | json '["status"]')
    [ "$status" = CONFIRMED ] && break
    sleep 0.1
  done
  [ "$status" = CONFIRMED ] || fail "the benchmark's order is $status, not CONFIRMED"
  curl -fsS "$edge/v1/orders/$ORDER" -H "authorization: Bearer $TOKEN" >"$WORK/order.json"
}

start_up "$WORK/cached" "$PORT"
place_order "$PORT"
CACHED_TOKEN=$TOKEN CACHED_ORDER=$ORDER
start_up "$WORK/uncached" "$UNCACHED_PORT" SLUICE_EDGE_CACHE_TTL=0
place_order "$UNCACHED_PORT"

"$BIN" bench-http-baseline --listen "127.0.0.1:$BASE_PORT" --body "$WORK/order.json" >"$WORK/baseline.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$BASE_PORT/v1/orders/x" >/dev/null 2>&1 && break
  sleep 0.1
done

# measure NAME URL TOKEN: a short warm-up, then wrk; prints a table row.
measure() {
  local out=$WORK/wrk.out rps p50 p99 errors
  wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -H "Authorization: Bearer $3" "$2" >/dev/null
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer $3" "$2" >"$out"
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out")
  p99=$(awk '$1 == "99%" {print $2}' "$out")
  errors=$(awk '/Non-2xx or 3xx responses:/ {print $5}' "$out")
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$rps" "$p50" "$p99" "${errors:-0}"
}

echo "a CONFIRMED order of $(wc -c <"$WORK/order.json") bytes; wrk -t$THREADS -c$CONNECTIONS -d$DURATION; $(nproc) cores"
echo "| target | requests/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
measure "edge GET /v1/orders/{id} (sluice up)" "http://127.0.0.1:$PORT/v1/orders/$CACHED_ORDER" "$CACHED_TOKEN"
measure "edge, order cache off (SLUICE_EDGE_CACHE_TTL=0)" "http://127.0.0.1:$UNCACHED_PORT/v1/orders/$ORDER" "$TOKEN"
measure "bare axum handler, same body" "http://127.0.0.1:$BASE_PORT/v1/orders/$ORDER" "$TOKEN"
