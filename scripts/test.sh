#!/usr/bin/env bash
# Quick start 2: set up (including the llama.cpp judge server the judge tests start) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_judge_server.sh .venv
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
