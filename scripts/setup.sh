#!/usr/bin/env bash
# Install llmprune and its dependencies into the current Python environment.
# An existing torch is kept; without one, the CPU build of torch 2.13.0 is installed
# first so that the plain `torch` requirement never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install "torch==2.13.0"
fi
"$PYTHON" -m pip install -e ".[dev]"
