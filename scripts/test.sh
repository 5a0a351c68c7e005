#!/usr/bin/env bash
# One command, fresh Debian machine: install packages, set up the Python
# environment (torch 2.x wheel, reference packages), build, run every test.
# Under CI=true a missing dependency (shared/ data, prometheus, a Python
# package) fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
export SINKSCOPE_SHARED_DIR=${SINKSCOPE_SHARED_DIR:-$(cd .. && pwd)/shared}
bash scripts/setup-debian.sh
bash scripts/setup-python.sh
if [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; then
  for f in models/stories260K/stories260K.bin models/aidreams260K/aidreams260K.bin \
           models/aidreams260K/tok512.bin tokenizers/llama2/tokenizer.model corpora/tinyshakespeare.txt; do
    [ -f "$SINKSCOPE_SHARED_DIR/$f" ] || { echo "test: CI=true and $SINKSCOPE_SHARED_DIR/$f is missing" >&2; exit 1; }
  done
  command -v prometheus >/dev/null || { echo "test: CI=true and prometheus is missing" >&2; exit 1; }
  build/venv/bin/python -c 'import torch, transformers, safetensors, tokenizers, transformer_lens, nnsight, pytest' \
    || { echo "test: CI=true and a Python package is missing" >&2; exit 1; }
fi
bash scripts/build.sh
ctest --test-dir build --output-on-failure --timeout 900 -j "${CTEST_JOBS:-2}"
