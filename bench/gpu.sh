#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md: resnet18 + supcon at batch 512, engine against a plain loop (bench/gpu.py).
# Needs a Python with CUDA torch and this project installed (pip install -e .); PYTHON picks it,
# default .venv/bin/python. Arguments go to bench/gpu.py; --tiny is a CPU dry run of the script.
# The whole run is capped at 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'no cuda')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 env PYTHONPATH=. "$PYTHON" bench/gpu.py "$@"
