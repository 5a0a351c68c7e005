#!/usr/bin/env bash
# Creates the project's Python environment in build/venv (never system-wide)
# from scripts/python-requirements.txt, the one place where torch (libtorch
# 2.x for the C++ build: headers, CMake config and CUDA libraries inside the
# wheel) and the reference / peer packages are pinned. Idempotent: reinstalls
# only when the requirements file changed. Prints nothing else on success.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SINKSCOPE_VENV:-$PWD/build/venv}
REQ=$PWD/scripts/python-requirements.txt
PY=${PYTHON:-python3}
stamp="$VENV/.sinkscope-requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo "setup-python: installing scripts/python-requirements.txt into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r "$REQ"
"$VENV/bin/python" -c 'import torch; print("setup-python: torch", torch.__version__, "cuda", torch.version.cuda)'
echo "$want" >"$stamp"
