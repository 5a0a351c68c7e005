#!/usr/bin/env bash
# One command, fresh Debian machine: install, build, start a server with two
# cpu workers on the default catalog, run an activation scan of stories260K
# through the `sinkscope` client, print it, stop the server.
# SINKSCOPE_DEMO_SERVE=1 keeps the server running afterwards (for
# examples/sinkscope-tour.ipynb: SINKSCOPE_SERVER=<the address printed>)
# until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
bash scripts/build.sh
run=$(mktemp -d /tmp/sinkscope-demo.XXXXXX)
sock="unix:$run/server.sock"
./build/server/sinkscope-server --config deploy/server.json --listen "$sock" \
  --database "$run/jobs.db" --worker-binary ./build/worker/sinkscope-worker \
  --runtime-dir "$run" >"$run/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$run"' EXIT
for _ in $(seq 1 100); do [ -S "$run/server.sock" ] && break; sleep 0.1; done
./build/client/sinkscope --server "$sock" models
# BOS followed by the first tokens stories260K generates (shared/README.md).
./build/client/sinkscope --server "$sock" scan --model stories260K \
  --ids 1,461,461,401,401,401,461,378,455,473,456,435,299,362,409,283,264,283,452,288,13 "$@"
if [ "${SINKSCOPE_DEMO_SERVE:-0}" = 1 ]; then
  echo "serving on $sock (export SINKSCOPE_SERVER=$sock; Ctrl-C stops)"
  wait $server
fi
