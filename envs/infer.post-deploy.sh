#!/usr/bin/env bash
# Run by Snakemake inside the new conda env ghanet-infer: add the ghanet package (its
# dependencies come from envs/infer.yaml). GHANET_REPO is the ghanet-pipeline checkout.
set -euo pipefail
: "${GHANET_REPO:?export GHANET_REPO=/path/to/ghanet-pipeline (the folder holding pyproject.toml) before snakemake --sdm conda}"
python -m pip install --no-deps --no-build-isolation -e "$GHANET_REPO"
