#!/usr/bin/env bash
# One command, fresh Debian machine: install packages, build, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
bash scripts/build.sh
export SINKSCOPE_SHARED_DIR=${SINKSCOPE_SHARED_DIR:-$(cd .. && pwd)/shared}
ctest --test-dir build --output-on-failure --timeout 900 -j "${CTEST_JOBS:-2}"
