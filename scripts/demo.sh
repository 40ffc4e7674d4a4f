#!/usr/bin/env bash
# Quick start 1: set up and run the demo (distil GSM8K, train vanilla + SDFT, compare with the seed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/sdft demo "$@"
