#!/usr/bin/env bash
# Everything the test suite needs besides the Rust toolchain, on a fresh
# Debian machine: the official Twilio helper libraries for Python and Node
# (pinned versions, installed inside the tree), Debian's chromium (the
# incidents page's browser test) and prometheus (its promtool checks and
# unit-tests deploy/prometheus/alerts.yaml), each installed if missing
# (about 20 s together on a fresh machine), a throwaway PostgreSQL
# cluster on 127.0.0.1 (Debian's postgresql package is installed if the
# machine has no server), and kubectl's path if it has one (never
# installed: CI has it; it renders deploy/kubernetes offline).
#
# Prints the environment the tests need as `export` lines on stdout (all
# other output goes to stderr), so that
#
#   eval "$(bash scripts/test-setup.sh)"
#   bash scripts/test-run.sh            # or any `cargo test ...`
#
# sets up once for many runs. The cluster keeps running after this script
# exits; stop and remove it with
#
#   "$TRP_TEST_PG_CTL" stop -m immediate; rm -rf "$TRP_TEST_PG_DIR"
#
# `bash scripts/test.sh` does both steps and the clean-up.
set -euo pipefail
cd "$(dirname "$0")/.."
# The env lines go to fd 3 (the caller's stdout); everything else to stderr.
exec 3>&1 1>&2
env_line() { printf 'export %s=%q\n' "$1" "$2" >&3; }

PY_TWILIO=9.13.0
NODE_TWILIO=6.2.0

# Python helper library, in a venv inside the tree.
if [ ! -x tests/sdk/.venv/bin/python ] || ! tests/sdk/.venv/bin/python -c "import twilio, sys; sys.exit(twilio.__version__ != '$PY_TWILIO')" 2>/dev/null; then
  python3 -m venv tests/sdk/.venv
  tests/sdk/.venv/bin/pip install --quiet --disable-pip-version-check "twilio==$PY_TWILIO"
fi
env_line TRP_TEST_PYTHON "$PWD/tests/sdk/.venv/bin/python"

# Node helper library, pinned (twilio@$NODE_TWILIO) by tests/sdk/node/package.json.
if [ -f tests/sdk/node/package.json ]; then
  if [ ! -d tests/sdk/node/node_modules/twilio ]; then
    (cd tests/sdk/node && npm install --no-audit --no-fund --loglevel=error)
  fi
  env_line TRP_TEST_NODE_DIR "$PWD/tests/sdk/node"
fi

# Debian packages the tests run: headless Chromium and promtool.
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  $SUDO apt-get update -qq
  # The prometheus package's service is never started here (no init system
  # runs in CI); only its promtool binary is used.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
env_line TRP_TEST_CHROMIUM "$(command -v chromium)"
env_line TRP_TEST_PROMTOOL "$(command -v promtool)"

# kubectl renders deploy/kubernetes offline (`kubectl kustomize`, no
# cluster) for tests/it/kustomize.rs. It is not a Debian package: CI
# machines come with it; without it those tests fail saying so.
if command -v kubectl >/dev/null 2>&1; then
  env_line TRP_TEST_KUBECTL "$(command -v kubectl)"
else
  echo "test-setup: kubectl not found: tests/it/kustomize.rs will fail (install kubectl or set TRP_TEST_KUBECTL)" >&2
fi

# PostgreSQL: a throwaway cluster on 127.0.0.1 in a temporary directory,
# for the shared-store (fleet) tests.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
PG_BIN="$(pg_bin)"
PG_DIR="$(mktemp -d /tmp/trp-pg.XXXXXX)"
# A failure from here on removes the half-made cluster.
trap '"$PG_DIR/ctl.sh" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$PG_DIR"' ERR
PG_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
if [ "$(id -u)" = 0 ]; then
  chown postgres "$PG_DIR"
  AS_PG="runuser -u postgres --"
else
  AS_PG=""
fi
cat > "$PG_DIR/ctl.sh" <<CTL
#!/usr/bin/env bash
# Stop or start the test cluster (the fleet tests stop it on purpose).
exec $AS_PG "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off" "\$@"
CTL
chmod +x "$PG_DIR/ctl.sh"
$AS_PG "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres >/dev/null
# No fd of ours (fd 3 is the caller's stdout) stays open in the server, so
# `eval "$(bash scripts/test-setup.sh)"` returns.
"$PG_DIR/ctl.sh" start >/dev/null 2>&1 </dev/null 3>&-
trap - ERR
env_line TRP_TEST_PG_URL "postgres://postgres@127.0.0.1:$PG_PORT/postgres"
env_line TRP_TEST_PG_CTL "$PG_DIR/ctl.sh"
env_line TRP_TEST_PG_DIR "$PG_DIR"
