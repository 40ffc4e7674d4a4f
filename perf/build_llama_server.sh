#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` (continuous batching, the peer of the generation measurement) from the llama.cpp
# source vendored in the pinned llama-cpp-python sdist, with the flags scripts/install_judge_server.sh compiles it with
# (AMX off: llama.cpp's AMX kernel segfaults on our CPUs), AVX-512 only where the CPU has it. Output: $SDFT_CACHE_DIR/bin/llama-server (~/.cache/sdft).
# Usage: perf/build_llama_server.sh [PYTHON]   (default: the repository's .venv/bin/python, from any folder; skips when
# already built)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
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
# shellcheck source=../scripts/llama_cpp_flags.sh
source "$ROOT/scripts/llama_cpp_flags.sh"
FLAGS="$(llama_cpp_cmake_flags)"
# shellcheck disable=SC2086
cmake -S "$WORK/src/vendor/llama.cpp" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF $FLAGS
cmake --build "$WORK/build" --target llama-server -j "$(nproc)"
cp "$WORK/build/bin/llama-server" "$OUT"
echo "built $OUT"
