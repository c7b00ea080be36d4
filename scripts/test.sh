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

cargo build --locked --all-targets
cargo test --locked --all-targets -- --test-threads 4
