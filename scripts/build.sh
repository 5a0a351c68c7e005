#!/usr/bin/env bash
# Configures and builds sinkscope into ./build (Release with debug info, Ninja).
# Extra arguments go to cmake's configure step, e.g. -DSINKSCOPE_ENGINE_ONLY=ON.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
cmake -S . -B build -G Ninja "$@" >/dev/null
cmake --build build -j "$JOBS"
