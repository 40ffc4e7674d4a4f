#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` (continuous batching, the peer of the generation benchmark) from the llama.cpp
# source vendored in the pinned llama-cpp-python sdist, with the flags scripts/install_judge_server.sh compiles it with
# (AMX off: llama.cpp's AMX kernel segfaults on our CPUs), AVX-512 only where the CPU has it. Output: $SDFT_CACHE_DIR/bin/llama-server (~/.cache/sdft).
# Usage: benchmarks/build_llama_server.sh [PYTHON]   (default .venv/bin/python; skips when already built)
set -euo pipefail

PY="${1:-.venv/bin/python}"
VERSION="0.3.36"
CACHE="${SDFT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sdft}"
OUT="$CACHE/bin/llama-server"
if [ -x "$OUT" ]; then
  echo "$OUT already built"
  exit 0
fi
WORK="$CACHE/build/llama-cpp-python-$VERSION"
mkdir -p "$WORK" "$CACHE/bin"
if [ ! -d "$WORK/src" ]; then
  "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK"
  mkdir -p "$WORK/src"
  tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK/src" --strip-components=1
fi
# AVX-512 parts only where this CPU has them (an AVX2-only EPYC dies on them with SIGILL); AMX always off.
has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
# shellcheck disable=SC2086
cmake -S "$WORK/src/vendor/llama.cpp" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF $FLAGS
cmake --build "$WORK/build" --target llama-server -j "$(nproc)"
cp "$WORK/build/bin/llama-server" "$OUT"
echo "built $OUT"
