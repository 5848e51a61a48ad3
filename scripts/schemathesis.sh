#!/usr/bin/env bash
# Property-based API test: schemathesis (PyPI) generates requests from the
# edge's /openapi.json against a running `sluice up` and fails on any 5xx or
# any response that breaks the description (status, content type, schema,
# headers).
#
#   scripts/schemathesis.sh [SLUICE_BINARY]
#
# SLUICE_BINARY defaults to target/debug/sluice. schemathesis is taken from
# SLUICE_TEST_SCHEMATHESIS (a pip --target folder; scripts/test.sh installs
# it in .tools/schemathesis). SCHEMATHESIS_EXAMPLES bounds the examples per
# operation (default 60). Reports go to target/schemathesis/.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
ROOT=$PWD
BIN=${1:-$ROOT/target/debug/sluice}
ST=${SLUICE_TEST_SCHEMATHESIS:-$ROOT/.tools/schemathesis}
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-60}
OUT=$ROOT/target/schemathesis

fail() { printf 'schemathesis.sh: %s\n' "$*" >&2; exit 1; }
[ -x "$BIN" ] || fail "$BIN is not built (cargo build -p sluice-cli)"
PYTHONPATH=$ST python3 -c 'import schemathesis' 2>/dev/null \
  || fail "schemathesis is not installed in $ST (scripts/test.sh --provision-only installs it)"

rm -rf "$OUT"
mkdir -p "$OUT"
DATA=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
ADMIN=sk_admin_$(python3 -c 'import secrets; print(secrets.token_hex(16))')

# Rate limits off: the generator sends hundreds of requests from one client.
SLUICE_ADMIN_KEY=$ADMIN SLUICE_EDGE_RATE_LIMIT=0 RUST_LOG=warn \
  "$BIN" up --data-dir "$DATA" --listen "127.0.0.1:$PORT" >"$OUT/sluice-up.log" 2>&1 &
UP=$!
cleanup() {
  kill "$UP" 2>/dev/null || true
  wait "$UP" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

for _ in $(seq 1 120); do
  if curl -fsS "$BASE/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$UP" 2>/dev/null || fail "sluice up exited: $(tail -n 3 "$OUT/sluice-up.log")"
  sleep 0.5
done
curl -fsS "$BASE/readyz" >/dev/null || fail "sluice up is not ready on $BASE after 60 s"

# A customer and a token, and a product, so the generated requests reach
# past authentication and find something.
post() { curl -sS -X POST "$BASE$1" -H 'content-type: application/json' "${@:3}" -d "$2"; }
post /v1/accounts '{"email":"st@example.com","password":"correct horse battery"}' >/dev/null
TOKEN=$(post /v1/auth/token '{"email":"st@example.com","password":"correct horse battery"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])') \
  || fail "no token from $BASE/v1/auth/token"
post /v1/products '{"sku":"ST-1","name":"Generated","price_cents":100,"currency":"EUR","stock":1000}' \
  -H "x-api-key: $ADMIN" >/dev/null

echo "schemathesis $(PYTHONPATH=$ST python3 -c 'import schemathesis; print(schemathesis.__version__)') against $BASE/openapi.json, $EXAMPLES examples per operation"
PYTHONPATH=$ST python3 -m schemathesis.cli run "$BASE/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples "$EXAMPLES" \
  --workers 1 \
  --seed 1 \
  -H "Authorization: Bearer $TOKEN" \
  -H "X-Api-Key: $ADMIN" \
  --report junit --report-dir "$OUT" \
  --no-color
