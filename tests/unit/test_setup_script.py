"""scripts/setup.sh's choice of the torch build, through its --dry-run mode (prints the pip commands,
runs nothing: no venv, no download). Runs on a copy of the three files it reads."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CU126 = "https://download.pytorch.org/whl/cu126"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy2(REPO / name, tmp_path / name)
    return tmp_path


def setup(checkout: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX_URL", "TORCH_VERSION", "TORCHVISION_VERSION")}
    proc = subprocess.run(["bash", "scripts/setup.sh", *args], cwd=checkout, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)
    assert not (checkout / ".venv").exists(), "a dry run must not create the venv"
    return proc


def _pip(out: str):
    """The pip argument lists the dry run prints, in order."""
    return [line.split(" -m pip ", 1)[1].split() for line in out.splitlines() if line.startswith("[dry-run] ") and " -m pip " in line]


def _pinned(path: Path):
    return {line.split("==")[0].lower() for line in path.read_text().splitlines() if "==" in line and not line.startswith("#")}


def test_default_installs_the_pinned_pair_and_every_constraint(checkout):
    proc = setup(checkout, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    pip = _pip(proc.stdout)
    assert pip[0] == ["install", "--quiet", "--upgrade", "pip"]
    if os.uname().machine == "x86_64":
        assert pip[1] == ["install", "--quiet", "torch==2.14.1", "torchvision==0.29.1"]
        assert pip[2] == ["install", "--quiet", "-c", "constraints.txt", "-e", r".\[dev\]"]
    assert pip[-1] == ["check"]
    assert "--index-url" not in proc.stdout


def test_a_named_torch_index_and_versions(checkout):
    proc = setup(checkout, "--dry-run", TORCH_INDEX_URL=CU126, TORCH_VERSION="2.8.0", TORCHVISION_VERSION="0.23.0")
    assert proc.returncode == 0, proc.stderr
    pip = _pip(proc.stdout)
    assert pip[1] == ["install", "--quiet", "--force-reinstall", "--index-url", CU126, "torch==2.8.0",
                      "torchvision==0.23.0"]
    # mtwork is installed with constraints.txt minus the pins of PyPI's CUDA 13 torch build
    assert pip[2][:3] == ["install", "--quiet", "-c"] and pip[2][3] != "constraints.txt"
    cuda_stack = [n for n in _pinned(REPO / "constraints.txt")
                  if n in ("torch", "torchvision", "triton") or n.startswith(("nvidia-", "cuda-"))]
    assert f"{len(cuda_stack)} lines left out" in proc.stdout
    # only the index, the default pair
    proc = setup(checkout, "--dry-run", TORCH_INDEX_URL=CU126)
    assert proc.returncode == 0 and "--index-url " + CU126 + " torch==2.14.1 torchvision==0.29.1" in proc.stdout


def test_the_constraints_left_out_for_another_torch_build_are_the_cuda_stack_only(checkout, tmp_path):
    """The script's filter, applied to constraints.txt: torch's own pins go, every other pin stays."""
    script = (checkout / "scripts" / "setup.sh").read_text()
    pattern = script.split("grep -v -i -E '", 1)[1].split("'", 1)[0]
    kept = tmp_path / "kept.txt"
    subprocess.run(["bash", "-c", f"grep -v -i -E '{pattern}' constraints.txt > {kept}"], cwd=checkout, check=True)
    dropped = _pinned(REPO / "constraints.txt") - _pinned(kept)
    assert {"torch", "torchvision", "triton", "cuda-toolkit", "cuda-bindings", "nvidia-cudnn-cu13"} <= dropped
    assert all(name in ("torch", "torchvision", "triton") or name.startswith(("nvidia-", "cuda-")) for name in dropped)
    assert {"timm", "open_clip_torch", "numpy", "snakemake", "dvc"} <= _pinned(kept)


@pytest.mark.parametrize("env, message", [
    ({"TORCH_VERSION": "2.8.0"}, "set TORCH_VERSION and TORCHVISION_VERSION together"),
    ({"TORCHVISION_VERSION": "0.23.0"}, "set TORCH_VERSION and TORCHVISION_VERSION together"),
    ({"TORCH_VERSION": "2.8.0", "TORCHVISION_VERSION": "0.24.0"}, "are no pair"),
    ({"TORCH_VERSION": "latest", "TORCHVISION_VERSION": "0.23.0"}, "are no pair"),
])
def test_version_choices_that_cannot_work_are_refused(checkout, env, message):
    proc = setup(checkout, "--dry-run", **env)
    assert proc.returncode == 2 and message in proc.stderr and not proc.stdout


def test_unknown_arguments_and_help(checkout):
    proc = setup(checkout, "--cuda")
    assert proc.returncode == 2 and "unknown argument '--cuda'" in proc.stderr
    proc = setup(checkout, "--help")
    assert proc.returncode == 0 and "TORCH_INDEX_URL=" in proc.stdout and "driver" in proc.stdout
