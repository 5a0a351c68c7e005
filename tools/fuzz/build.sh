#!/bin/sh
# Builds the libFuzzer targets with clang (see README.md). Usage:
#   tools/fuzz/build.sh [OUT_DIR]      (default build-fuzz/, from the repo root)
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/build-fuzz}
CXX=${CXX:-clang++}
mkdir -p "$OUT"
FLAGS="-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address -I$ROOT"
ABSL=$(pkg-config --libs absl_status absl_statusor absl_strings absl_str_format)
TORCH="-ltorch -ltorch_cpu -lc10"
# SINKSCOPE_FUZZ_ONLY=tokenizers builds only the torch-free targets below.
if [ "${SINKSCOPE_FUZZ_ONLY:-}" != tokenizers ]; then
# The parsers are compiled once, instrumented, and shared by the three targets.
for src in config checkpoint_hf checkpoint_llama2c checkpoint_validate; do
  [ "$OUT/$src.o" -nt "$ROOT/worker/engine/$src.cc" ] ||
    $CXX $FLAGS -c "$ROOT/worker/engine/$src.cc" -o "$OUT/$src.o"
done
for t in fuzz_safetensors fuzz_llama2c fuzz_config; do
  $CXX $FLAGS -fsanitize=fuzzer "$ROOT/tools/fuzz/$t.cc" "$OUT"/config.o "$OUT"/checkpoint_hf.o \
    "$OUT"/checkpoint_llama2c.o "$OUT"/checkpoint_validate.o $TORCH $ABSL -o "$OUT/$t"
done
fi
# Tokenizer and GGUF header parsers: no libtorch.
TOKLIBS="$(pkg-config --libs libpcre2-8 icu-uc) -ldl"
for src in gguf tokenizer tokenizer_bpe tokenizer_llama2c tokenizer_sentencepiece; do
  [ "$OUT/$src.o" -nt "$ROOT/worker/engine/$src.cc" ] ||
    $CXX $FLAGS -c "$ROOT/worker/engine/$src.cc" -o "$OUT/$src.o"
done
for t in fuzz_gguf fuzz_tokenizer_json; do
  $CXX $FLAGS -fsanitize=fuzzer "$ROOT/tools/fuzz/$t.cc" "$OUT"/gguf.o "$OUT"/tokenizer.o \
    "$OUT"/tokenizer_bpe.o "$OUT"/tokenizer_llama2c.o "$OUT"/tokenizer_sentencepiece.o \
    $TOKLIBS $ABSL -o "$OUT/$t"
done
echo "built: $OUT/fuzz_safetensors $OUT/fuzz_llama2c $OUT/fuzz_config $OUT/fuzz_gguf $OUT/fuzz_tokenizer_json"
