#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with the Rust toolchain:
# installs and starts what the tests need (scripts/test-setup.sh), runs
# every test (scripts/test-run.sh), then stops and removes the throwaway
# PostgreSQL cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

ENV_FILE="$(mktemp /tmp/trp-test-env.XXXXXX)"
trap 'rm -f "$ENV_FILE"' EXIT
bash scripts/test-setup.sh > "$ENV_FILE"
# shellcheck source=/dev/null
. "$ENV_FILE"
trap '"$TRP_TEST_PG_CTL" stop -m immediate >/dev/null 2>&1 || true; rm -rf "$TRP_TEST_PG_DIR" "$ENV_FILE"' EXIT

bash scripts/test-run.sh
