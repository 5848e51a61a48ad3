#!/usr/bin/env bash
# Benchmark of the event-log commands with a release build, in one run:
# N events (default 1,000,000 OrderCancelled events; each one a row of the
# orders projection) published into an embedded log, then
#   - sluice export of them to an event-log file,
#   - sluice import of the file into a fresh embedded log and into NATS,
#   - sluice replay orders from the embedded log and from NATS into a
#     fresh SQLite edge database (peak RSS from /usr/bin/time),
#   - and, for comparison, the raw broker clients' consume rate
#     (sluice bench, same machine, same run).
#
#   scripts/bench-replay.sh            BENCH_EVENTS=200000 scripts/bench-replay.sh
#
# Needs python3, GNU time (/usr/bin/time; installed with apt-get when
# missing), and .tools/bin/nats-server (scripts/test.sh --provision-only).
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
EVENTS=${BENCH_EVENTS:-1000000}
# SLUICE_BIN: measure that binary instead of building this checkout's
# (to compare two builds in one hour of this noisy machine).
BIN=${SLUICE_BIN:-$PWD/target/release/sluice}
NATS=${SLUICE_NATS_SERVER:-$PWD/.tools/bin/nats-server}

fail() { printf 'bench-replay.sh: %s\n' "$*" >&2; exit 1; }
[ -x "$NATS" ] || fail "no nats-server at $NATS (run scripts/test.sh --provision-only)"
if [ ! -x /usr/bin/time ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time; } >/dev/null 2>&1 \
    || fail "GNU time is not installed and apt-get install time failed"
fi
[ -n "${SLUICE_BIN:-}" ] || cargo build --release --locked -p sluice-cli --bin sluice >&2
[ -x "$BIN" ] || fail "no sluice binary at $BIN"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
NATS_PID=
cleanup() {
  [ -n "$NATS_PID" ] && kill "$NATS_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export RUST_LOG=warn

PORT=$(free_port)
"$NATS" -a 127.0.0.1 -p "$PORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
NATS_URL=nats://127.0.0.1:$PORT
SOURCE=embedded:$WORK/source.db

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); $EVENTS events"
python3 - "$EVENTS" > "$WORK/events.jsonl" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print('{"orderId":"o%d","customerId":"c%d","reason":"bench"}' % (i, i % 1000))
PY
"$BIN" publish orders.order.cancelled --type shop.orders.v1.OrderCancelled \
  --file "$WORK/events.jsonl" --batch 2000 --output json --broker "$SOURCE" | tail -1 \
  | python3 -c 'import json,sys; s=json.load(sys.stdin); print("publish (JSON encode + embedded):", s["published"], "events,", s["events_per_second"], "events/s")'

# rate <label> <json>: prints the events/s field of a command's summary.
rate() { python3 -c 'import json,sys; s=json.loads(sys.argv[2]); print(sys.argv[1], s)' "$1" "$2"; }
peak() { awk -F': ' '/Maximum resident/ {printf "%.0f MiB", $2/1024}' "$1"; }

OUT=$("$BIN" export 'orders.>' -o "$WORK/orders.sluice" --output json --broker "$SOURCE")
rate "export from embedded:" "$OUT"
OUT=$("$BIN" import "$WORK/orders.sluice" --output json --broker "embedded:$WORK/copy.db")
rate "import into embedded:" "$OUT"
OUT=$("$BIN" import "$WORK/orders.sluice" --output json --broker "$NATS_URL")
rate "import into NATS:" "$OUT"
OUT=$("$BIN" export 'orders.>' -o "$WORK/nats.sluice" --output json --broker "$NATS_URL")
rate "export from NATS:" "$OUT"

for source in "$SOURCE" "$NATS_URL"; do
  db="sqlite://$WORK/edge-$RANDOM.db?mode=rwc"
  OUT=$(/usr/bin/time -v -o "$WORK/time.txt" "$BIN" replay orders --output json --broker "$source" --database "$db")
  rate "replay orders from ${source%%:*} (peak RSS $(peak "$WORK/time.txt")):" "$OUT"
done

echo "== raw broker clients, same run (sluice bench):"
"$BIN" bench --backends embedded,nats --messages 200000 --rounds 1 --nats-url "$NATS_URL" --json 2>/dev/null || true
