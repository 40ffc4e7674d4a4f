#!/usr/bin/env bash
# Quick start 1: set up and run the demo (distil OpenFunctions rows, train vanilla + SDFT with learning curves, and
# compare their forgetting at matched task gain by the rule the preset states).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/sdft demo "$@"
