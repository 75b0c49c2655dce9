#!/usr/bin/env bash
# A venv for the side-by-side benchmark: llmcompressor 0.14 (which pins transformers
# <= 5.17) beside llmprune, sharing the system torch. Both tools run from this venv, so
# they see the same torch and transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PEER_VENV:-bench/.venv-peer}"
python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install "llmcompressor==0.14.0"
"$VENV/bin/pip" install --no-deps -e .
echo "run: $VENV/bin/python bench/oneshot.py"
