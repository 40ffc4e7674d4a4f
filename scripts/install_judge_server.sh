#!/usr/bin/env bash
# Install llama-cpp-python's OpenAI-compatible server (the local AlpacaEval judge) into a venv.
# The PyPI package is an sdist compiled here (~5-10 min on 2 cores) with CMake flags for this CPU
# (scripts/llama_cpp_flags.sh: AVX-512 only where the CPU has it, AMX off). The wheel is kept per flag set under
# ~/.cache/sdft/wheels, never taken from pip's own cache: a wheel compiled on another CPU can die with SIGILL here.
# Usage: scripts/install_judge_server.sh [VENV]   (default .venv; skips when installed with this CPU's flags)
# The server's own dependencies come at the tested versions of constraints.txt; CONSTRAINTS= (empty) resolves freely.
set -euo pipefail

VENV="${1:-.venv}"
VERSION="0.3.36"
PY="$VENV/bin/python"
CONSTRAINTS=${CONSTRAINTS-$(dirname "$0")/../constraints.txt}

if [ ! -x "$PY" ]; then
  echo "error: no python at $PY (create the venv first)" >&2
  exit 1
fi

# shellcheck source=llama_cpp_flags.sh
source "$(dirname "$0")/llama_cpp_flags.sh"
export CMAKE_ARGS="$(llama_cpp_cmake_flags)"
MARKER="$VENV/.llama-cpp-python-build"
if [ "$(cat "$MARKER" 2>/dev/null)" = "$VERSION $CMAKE_ARGS" ] &&
   "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  echo "llama-cpp-python $VERSION already installed in $VENV for this CPU"
  exit 0
fi

if ! command -v cmake >/dev/null 2>&1; then
  echo "cmake not found; installing it with apt-get" >&2
  apt-get update -q && apt-get install -y -q cmake
fi

WHEELS="${SDFT_CACHE_DIR:-$HOME/.cache/sdft}/wheels/llama-cpp-python-$VERSION-$(echo "$CMAKE_ARGS" | sha256sum | cut -c1-12)"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python==$VERSION with CMAKE_ARGS=$CMAKE_ARGS"
  "$PY" -m pip wheel -q --no-cache-dir --no-deps -w "$WHEELS" "llama-cpp-python==$VERSION"
fi
"$PY" -m pip install -q --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl
"$PY" -m pip install -q ${CONSTRAINTS:+-c "$CONSTRAINTS"} "llama-cpp-python[server]==$VERSION" --find-links "$WHEELS"
echo "$VERSION $CMAKE_ARGS" > "$MARKER"
"$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')"
