#!/usr/bin/env bash
# The GPU path in one run (< 8 min on one GPU): end-to-end patches/s (raw gigapixel slide ->
# Zarr) for efficientnet_lite0 and resnet50_trunc (random weights, bf16 autocast), GPU
# utilisation sampled every 200 ms (nvidia-smi), peak GPU memory, the fixed cost of a features
# job (process start -> first batch), and training s/epoch for 100 patients x 10k patches.
#
#   bash benchmarks/gpu_check.sh            # on a machine with a GPU
#   bash benchmarks/gpu_check.sh --tiny     # smoke test: small sizes; without a GPU it runs the
#                                           # CPU-side setup, says so and exits 2
#
# Uses the repository's .venv when there is one, else python3 with the package on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import torch, timm, zarr, openslide" 2>/dev/null; then
    echo "gpu_check: $PY lacks torch, timm, zarr or openslide-python; install the package first" \
         "(pip install -e .)" >&2
    exit 2
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi not found: GPU utilisation will not be sampled" >&2
fi
exec "$PY" benchmarks/gpu_check.py "$@"
