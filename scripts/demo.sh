#!/usr/bin/env bash
# One command, fresh Debian machine: install and build (skipped when a
# finished build is there; SINKSCOPE_DEMO_REBUILD=1 forces both), start a
# server with two cpu workers on the default catalog, run an activation scan
# of bytelm-demo (its position-0 spike on channel 251, step-up block 2)
# through the `sinkscope` client, print it, stop the server.
# SINKSCOPE_DEMO_SERVE=1 keeps the server running afterwards (for
# examples/sinkscope-tour.ipynb: SINKSCOPE_SERVER=<the address printed>)
# until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${SINKSCOPE_DEMO_REBUILD:-0}" = 1 ] || [ ! -x build/server/sinkscope-server ] ||
   [ ! -x build/worker/sinkscope-worker ] || [ ! -x build/client/sinkscope ]; then
  bash scripts/setup-debian.sh
  bash scripts/build.sh
fi
run=$(mktemp -d /tmp/sinkscope-demo.XXXXXX)
sock="unix:$run/server.sock"
./build/server/sinkscope-server --config deploy/server.json --listen "$sock" \
  --database "$run/jobs.db" --worker-binary ./build/worker/sinkscope-worker \
  --runtime-dir "$run" >"$run/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$run"' EXIT
for _ in $(seq 1 100); do [ -S "$run/server.sock" ] && break; sleep 0.1; done
./build/client/sinkscope --server "$sock" models
# The text shared/README.md publishes bytelm-demo's float64 values on; its
# spike is 74x the median |h|: massive at abs 50, rel 20 (not at 100, 1000x).
./build/client/sinkscope --server "$sock" scan --model bytelm-demo \
  --text $'First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.' \
  --abs-threshold 50 --rel-threshold 20 --top-k 1 "$@"
if [ "${SINKSCOPE_DEMO_SERVE:-0}" = 1 ]; then
  echo "serving on $sock (export SINKSCOPE_SERVER=$sock; Ctrl-C stops)"
  wait $server
fi
