#!/usr/bin/env bash
# Packs what bench/gpu/run.sh needs on the GPU host into build/gpu-carry
# (name it in the device tool's `carry`): the engine tests, sinkscope-run and
# the service binaries built here against PyPI torch 2.11.0 (the host has
# torch 2.11.0+cu130), stripped, plus the shared libraries they need that are
# neither torch's / CUDA's (the host's own are used) nor the C runtime.
# Fails when the result exceeds the 60 MiB budget of what travels.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
OUT=${1:-$BUILD/gpu-carry}
rm -rf "$OUT"; mkdir -p "$OUT/bin" "$OUT/lib"
bins=(worker/engine/sinkscope-run server/sinkscope-server worker/sinkscope-worker client/sinkscope)
for t in model_test scan_test sinks_test spikes_test experiments_test checkpoint_test tokenizer_test; do
  bins+=("tests/engine/$t")
done
for b in "${bins[@]}"; do
  [ -x "$BUILD/$b" ] || { echo "package: $BUILD/$b missing (build first)" >&2; exit 1; }
  strip --strip-unneeded -o "$OUT/bin/$(basename "$b")" "$BUILD/$b"
done
# Libraries the host lacks: everything ldd resolves outside torch/lib, the
# nvidia wheels and CUDA, except the C/C++ runtime (newer on the host).
skip='/(torch/lib|nvidia|cuda)[/-]|/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux-x86-64)\.so'
for b in "$OUT"/bin/*; do
  ldd "$b" | awk '/=> \// {print $3}'
done | sort -u | grep -Ev "$skip" | while read -r lib; do
  cp -L "$lib" "$OUT/lib/"
  strip --strip-unneeded "$OUT/lib/$(basename "$lib")" 2>/dev/null || true
done
# The sentencepiece library is dlopen()ed (not in ldd).
sp=$(ls /usr/lib/x86_64-linux-gnu/libsentencepiece.so.0 2>/dev/null || true)
[ -n "$sp" ] && cp -L "$sp" "$OUT/lib/"
size=$(du -sm "$OUT" | cut -f1)
echo "package: $OUT: $(ls "$OUT/bin" | wc -l) binaries, $(ls "$OUT/lib" | wc -l) libraries, ${size} MiB"
[ "$size" -le 60 ] || { echo "package: over the 60 MiB budget" >&2; exit 1; }
