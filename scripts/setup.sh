#!/usr/bin/env bash
# Create .venv and install mtwork with its pinned stack (idempotent: a second call is quick).
# torch/torchvision are installed first as a matching pair: torchvision's compiled ops only load
# beside the torch build they were made for.
#
# GPU clusters: PyPI's x86_64 torch 2.14.1 wheels are CUDA 13 builds, which need an NVIDIA driver
# >= 580 (`nvidia-smi` prints the driver version). For an older driver name a CUDA 12 build from
# PyTorch's own index (CUDA 12.x builds need a driver >= 525):
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash scripts/setup.sh
# and, when that index has no torch 2.14.1, a torch/torchvision pair it has (torchvision 0.N+15 goes
# with torch 2.N; mtwork supports torch 2.4 to 2.14.1):
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 TORCH_VERSION=2.8.0 TORCHVISION_VERSION=0.23.0 \
#     bash scripts/setup.sh
# With either, the torch/CUDA pins of constraints.txt are left out (the chosen build brings its own CUDA
# libraries) and every other pin still applies. Switching builds reinstalls torch and torchvision.
#   bash scripts/setup.sh --dry-run    print the install commands without running anything
set -euo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "[setup] unknown argument '$arg' (known: --dry-run, --help)" >&2; exit 2 ;;
  esac
done
# A command, or with --dry-run its shell-quoted text.
run() {
  if [ "$DRY_RUN" = 1 ]; then printf '[dry-run]'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
TORCH_VERSION=${TORCH_VERSION:-}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-}
if { [ -n "$TORCH_VERSION" ] && [ -z "$TORCHVISION_VERSION" ]; } || { [ -z "$TORCH_VERSION" ] && [ -n "$TORCHVISION_VERSION" ]; }; then
  echo "[setup] set TORCH_VERSION and TORCHVISION_VERSION together (a matching pair: torchvision 0.N+15 goes with torch 2.N)" >&2
  exit 2
fi
if [ -n "$TORCH_VERSION" ]; then
  torch_minor=$(echo "$TORCH_VERSION" | sed -n 's/^2\.\([0-9]\{1,\}\)\..*$/\1/p')
  vision_minor=$(echo "$TORCHVISION_VERSION" | sed -n 's/^0\.\([0-9]\{1,\}\)\..*$/\1/p')
  if [ -z "$torch_minor" ] || [ -z "$vision_minor" ] || [ "$vision_minor" -ne $((torch_minor + 15)) ]; then
    echo "[setup] TORCH_VERSION=$TORCH_VERSION and TORCHVISION_VERSION=$TORCHVISION_VERSION are no pair:" \
         "torchvision 0.N+15.x goes with torch 2.N.x (e.g. torch 2.8.0 with torchvision 0.23.0)" >&2
    exit 2
  fi
fi
# Set when the user chose the torch build: it enters the up-to-date stamp, so changing it reinstalls.
CHOICE=""
if [ -n "$TORCH_INDEX_URL$TORCH_VERSION" ]; then
  CHOICE="torch index=${TORCH_INDEX_URL:-PyPI} torch=${TORCH_VERSION:-pinned} torchvision=${TORCHVISION_VERSION:-pinned}"
fi
stamp() {
  if [ -z "$CHOICE" ]; then
    sha256sum pyproject.toml constraints.txt | sha256sum
  else
    { sha256sum pyproject.toml constraints.txt; echo "$CHOICE"; } | sha256sum
  fi
}

VENV=${VENV:-.venv}
# The interpreter: $PYTHON if set; else the distribution's /usr/bin/python3 when it is 3.10-3.12 and can
# make a venv, else python3 from PATH. Distribution builds are PGO/LTO-optimised, while pyenv and
# other source builds usually are not: on the 2-core reference machine `import torch, timm` takes
# 6.2 s of CPU instead of 8.0 s, and every job of the workflow pays it once.
if [ "$DRY_RUN" = 1 ]; then
  [ -x "$VENV/bin/python" ] || echo "[dry-run] create $VENV (with ${PYTHON:-/usr/bin/python3 or python3})"
elif [ ! -x "$VENV/bin/python" ]; then
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
if [ "$DRY_RUN" = 0 ] && "$PY" -c "import mtwork, torch, torchvision, timm, snakemake, dvc, pycocotools" 2>/dev/null \
   && [ "$(cat "$VENV/.mtwork-setup" 2>/dev/null)" = "$(stamp)" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
run "$PY" -m pip install --quiet --upgrade pip
case "$(uname -m)" in
  aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
  *) TORCH="torch==2.14.1 torchvision==0.29.1" ;;
esac
CONSTRAINTS=constraints.txt
if [ -z "$CHOICE" ]; then
  echo "[setup] installing $TORCH"
  run "$PY" -m pip install --quiet $TORCH
else
  [ -z "$TORCH_VERSION" ] || TORCH="torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
  echo "[setup] installing $TORCH from ${TORCH_INDEX_URL:-PyPI}"
  # --force-reinstall: pip counts 2.14.1+cu126 as 2.14.1, so a build from another index would stay
  run "$PY" -m pip install --quiet --force-reinstall ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $TORCH
  # constraints.txt pins PyPI's default (CUDA 13) torch and its CUDA libraries: not this build's
  CONSTRAINTS=$(mktemp "${TMPDIR:-/tmp}/mtwork-constraints.XXXXXX")
  trap 'rm -f "$CONSTRAINTS"' EXIT
  grep -v -i -E '^(torch|torchvision|triton|nvidia-[a-z0-9_.-]+|cuda-[a-z0-9_.-]+)==' constraints.txt > "$CONSTRAINTS" || true
  echo "[setup] constraints without the torch/CUDA pins: $(grep -c -i -E '^(torch|torchvision|triton|nvidia-[a-z0-9_.-]+|cuda-[a-z0-9_.-]+)==' constraints.txt) lines left out"
fi
echo "[setup] installing mtwork[dev] with $CONSTRAINTS"
if [ "$(uname -m)" = "x86_64" ]; then
  run "$PY" -m pip install --quiet -c "$CONSTRAINTS" -e ".[dev]"
else
  run "$PY" -m pip install --quiet -e ".[dev]"
fi
run "$PY" -m pip check
if [ "$DRY_RUN" = 0 ]; then
  stamp > "$VENV/.mtwork-setup"
fi
echo "[setup] done: activate with '. $VENV/bin/activate'"
