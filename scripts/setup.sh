#!/usr/bin/env bash
# Create .venv and install mtwork with its pinned stack (idempotent: a second call is quick).
# torch/torchvision are installed first as a matching pair: torchvision's compiled ops only load
# beside the torch build they were made for.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if "$PY" -c "import mtwork, torch, torchvision, timm, snakemake, dvc, pycocotools" 2>/dev/null \
   && [ "$(cat "$VENV/.mtwork-setup" 2>/dev/null)" = "$(sha256sum pyproject.toml constraints.txt | sha256sum)" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
"$PY" -m pip install --quiet --upgrade pip
case "$(uname -m)" in
  aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH="torch==2.14.1 torchvision==0.29.1" ;;
esac
echo "[setup] installing $TORCH"
"$PY" -m pip install --quiet $TORCH
echo "[setup] installing mtwork[dev] with constraints.txt"
if [ "$(uname -m)" = "x86_64" ]; then
  "$PY" -m pip install --quiet -c constraints.txt -e ".[dev]"
else
  "$PY" -m pip install --quiet -e ".[dev]"
fi
"$PY" -m pip check
sha256sum pyproject.toml constraints.txt | sha256sum > "$VENV/.mtwork-setup"
echo "[setup] done: activate with '. $VENV/bin/activate'"
