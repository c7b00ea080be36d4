#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain.
# Installs what the tests need (the official Twilio helper libraries for
# Python and Node, at pinned versions) into the tree, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

PY_TWILIO=9.13.0
NODE_TWILIO=6.2.0

# Python helper library, in a venv inside the tree.
if [ ! -x tests/sdk/.venv/bin/python ] || ! tests/sdk/.venv/bin/python -c "import twilio, sys; sys.exit(twilio.__version__ != '$PY_TWILIO')" 2>/dev/null; then
  python3 -m venv tests/sdk/.venv
  tests/sdk/.venv/bin/pip install --quiet --disable-pip-version-check "twilio==$PY_TWILIO"
fi
export TRP_TEST_PYTHON="$PWD/tests/sdk/.venv/bin/python"

# Node helper library, pinned by tests/sdk/node/package.json.
if [ -f tests/sdk/node/package.json ]; then
  if [ ! -d tests/sdk/node/node_modules/twilio ]; then
    (cd tests/sdk/node && npm install --no-audit --no-fund --loglevel=error)
  fi
  export TRP_TEST_NODE_DIR="$PWD/tests/sdk/node"
fi

# PostgreSQL: a throwaway cluster on 127.0.0.1 in a temporary directory,
# for the shared-store (fleet) tests. Debian's postgresql package is
# installed if the machine has no server.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
PG_BIN="$(pg_bin)"
PG_DIR="$(mktemp -d /tmp/trp-pg.XXXXXX)"
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
"$PG_DIR/ctl.sh" start >/dev/null
trap '"$PG_DIR/ctl.sh" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$PG_DIR"' EXIT
export TRP_TEST_PG_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export TRP_TEST_PG_CTL="$PG_DIR/ctl.sh"

# Every test talks to 127.0.0.1 only: never through an egress proxy the
# machine may set for the package registries.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

cargo build --locked --workspace --all-targets
cargo test --locked --workspace --all-targets --no-fail-fast -- --test-threads 4
