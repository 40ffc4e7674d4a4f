#!/usr/bin/env bash
# Quick start 1: set up and run the demo (distil OpenFunctions rows, train vanilla + SDFT, compare with the seed on the
# task, IFEval and retention).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/sdft demo "$@"
