#!/usr/bin/env bash
# Run by Snakemake once, inside the new conda env of envs/mtwork.yaml (--use-conda), from the
# workflow's working directory: the repository root, where pyproject.toml is.
set -euo pipefail
python -m pip install --no-cache-dir -e .
