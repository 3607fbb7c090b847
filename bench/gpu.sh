#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md: resnet18 + supcon at batch 512, engine against a plain loop (bench/gpu.py).
# Needs a Python with CUDA torch and this project installed (pip install -e .); PYTHON picks it,
# default .venv/bin/python. Arguments go to bench/gpu.py; --tiny is a CPU dry run of the script.
# `bench/gpu.sh multi [ARGS]` is the multi-GPU mode: one GPU against all of them (nccl ranks) on the
# same global batch (bench/distributed.py --device cuda --ranks <GPU count>); it needs two or more.
# The whole run is capped at 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'no cuda')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ "${1:-}" = "multi" ]; then
  shift
  gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
  [ "$gpus" -ge 2 ] || { echo "multi needs two or more GPUs; this machine has $gpus" >&2; exit 2; }
  exec timeout 480 env PYTHONPATH=. "$PYTHON" bench/distributed.py --device cuda --ranks "$gpus" "$@"
fi
exec timeout 480 env PYTHONPATH=. "$PYTHON" bench/gpu.py "$@"
