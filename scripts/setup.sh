#!/usr/bin/env bash
# Create .venv and install mtwork with its pinned stack (idempotent: a second call is quick).
# torch/torchvision are installed first as a matching pair: torchvision's compiled ops only load
# beside the torch build they were made for.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# The interpreter: $PYTHON if set; else the distribution's /usr/bin/python3 when it is 3.10-3.12 and can
# make a venv, else python3 from PATH. Distribution builds are PGO/LTO-optimised, while pyenv and
# other source builds usually are not: on the 2-core reference machine `import torch, timm` takes
# 6.2 s of CPU instead of 8.0 s, and every job of the workflow pays it once.
if [ ! -x "$VENV/bin/python" ]; then
  if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] \
     && /usr/bin/python3 -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null \
     && /usr/bin/python3 -m venv "$VENV" 2>/dev/null; then
    echo "[setup] created $VENV with /usr/bin/python3 (set PYTHON to choose another interpreter)"
  else
    rm -rf "$VENV"
    PYTHON=${PYTHON:-python3}
    echo "[setup] creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
  fi
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
