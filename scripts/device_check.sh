#!/usr/bin/env bash
# The checks that need a CUDA device, for a machine with one (about 5 minutes on one GPU):
# the tests marked `cuda` (each also runs on the CPU in the ordinary suite), then the GPU
# benchmark (ResNet-50 and ViT-B/16 analyses against one training step) and the memory
# benchmark on the GPU. Run from the repository root; PYTHON overrides the interpreter.
set -euo pipefail
PYTHON="${PYTHON:-.venv/bin/python}"
cd "$(dirname "$0")/.."
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests
timeout 180 "$PYTHON" -m experiments.benchmarks.bench_gpu --device cuda
timeout 60 "$PYTHON" experiments/benchmarks/bench_memory.py --device cuda
