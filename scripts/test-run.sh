#!/usr/bin/env bash
# Build and run every test, with the environment `scripts/test-setup.sh`
# printed already exported (`bash scripts/test.sh` does both). Extra
# arguments go to the test binaries, e.g. `bash scripts/test-run.sh --skip fleet`.
set -euo pipefail
cd "$(dirname "$0")/.."

for var in TRP_TEST_PYTHON TRP_TEST_PG_URL TRP_TEST_PG_CTL TRP_TEST_CHROMIUM TRP_TEST_PROMTOOL; do
  if [ -z "${!var:-}" ]; then
    echo "$var is not set: run \`eval \"\$(bash scripts/test-setup.sh)\"\` first, or bash scripts/test.sh" >&2
    exit 2
  fi
done

# Every test talks to 127.0.0.1 only: never through an egress proxy the
# machine may set for the package registries.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

cargo build --locked --workspace --all-targets
cargo test --locked --workspace --all-targets --no-fail-fast -- --test-threads 4 "$@"
