#!/usr/bin/env bash
# Configures and builds sinkscope into ./build (Release with debug info, Ninja)
# against the torch 2.x wheel of build/venv (scripts/setup-python.sh).
# Extra arguments go to cmake's configure step, e.g. -DSINKSCOPE_ENGINE_ONLY=ON.
# SINKSCOPE_SHARED_DIR, when set, becomes the tests' default shared/ folder.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
bash scripts/setup-python.sh
args=(-DSINKSCOPE_PYTHON="$PWD/build/venv/bin/python")
if [ -n "${SINKSCOPE_SHARED_DIR:-}" ]; then args+=(-DSINKSCOPE_SHARED_DIR="$SINKSCOPE_SHARED_DIR"); fi
# ccache hits across checkouts of the tree (paths relative to the checkout).
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
cmake -S . -B build -G Ninja "${args[@]}" "$@" >/dev/null
cmake --build build -j "$JOBS"
