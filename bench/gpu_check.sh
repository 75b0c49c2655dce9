#!/usr/bin/env bash
# The CUDA check, for a machine with one NVIDIA GPU and no network (at most ~8 minutes).
# That machine has torch, transformers, peft, safetensors and accelerate; llmprune runs
# from this working tree (no install), and the few pure-Python packages it also imports
# come from bench/wheels when present (`bash bench/gpu_check.sh --prepare` fills it here,
# where the package registry is reachable). Results: $OUT/gpu_check.json, or
# bench/results/gpu_check.json without $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
NEEDED="pydantic typer rich tqdm"
if [[ "${1:-}" == "--prepare" ]]; then
    "$PYTHON" -m pip download --only-binary=:all: --dest bench/wheels $NEEDED
    exit 0
fi
for package in $NEEDED; do
    if ! "$PYTHON" -c "import $package" >/dev/null 2>&1 && [[ -d bench/wheels ]]; then
        "$PYTHON" -m pip install --no-index --find-links bench/wheels "$package" >/dev/null
    fi
done
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT_FILE="${OUT:-bench/results}/gpu_check.json"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 480 "$PYTHON" bench/gpu_check.py --device cuda --size "${SIZE:-1b}" \
    --budget "${BUDGET:-400}" --out "$OUT_FILE"
