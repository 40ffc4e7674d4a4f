#!/usr/bin/env bash
# Install llama-cpp-python's OpenAI-compatible server (the local AlpacaEval judge) into a venv.
# The PyPI package is an sdist compiled here (~4.5 min on 2 cores). The default native build
# segfaults in llama.cpp's AMX kernel on our CPUs, so AMX is turned off and AVX-512 kept.
# Usage: scripts/install_judge_server.sh [VENV]   (default .venv; skips when already installed)
set -euo pipefail

VENV="${1:-.venv}"
VERSION="0.3.36"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "error: no python at $PY (create the venv first)" >&2
  exit 1
fi

if "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  echo "llama-cpp-python $VERSION already installed in $VENV"
  exit 0
fi

if ! command -v cmake >/dev/null 2>&1; then
  echo "cmake not found; installing it with apt-get" >&2
  apt-get update -q && apt-get install -y -q cmake
fi

export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
echo "building llama-cpp-python[server]==$VERSION with CMAKE_ARGS=$CMAKE_ARGS"
"$PY" -m pip install "llama-cpp-python[server]==$VERSION"
"$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'installed')"
