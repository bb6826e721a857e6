"""profiles/slurm against a real single-node Slurm on localhost (started by scripts/slurm-local).

Needs the Debian packages slurmctld, slurmd, slurm-client and munge, and root (the cluster config
lives at /etc/slurm/slurm.conf). Without them the tests skip and say why; with CI=true, as root and
with apt-get, they install the packages first. The cluster is stopped again afterwards (unless it
was already running), so later snakemake calls are not slowed by the Slurm plugin's probe of a
missing controller. Takes ~30 s per workflow: jobs go through sbatch and the squeue status checks.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SLURM_LOCAL = REPO / "scripts" / "slurm-local"
PROFILE = REPO / "profiles" / "slurm"
CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by mtwork scripts/slurm-local"
BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "scontrol")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])


def _missing_binaries():
    return [name for name in BINARIES if shutil.which(name, path=SEARCH_PATH) is None]


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _slurm_local(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["bash", str(SLURM_LOCAL), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PATH": SEARCH_PATH},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"scripts/slurm-local {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def slurm_cluster():
    missing = _missing_binaries()
    if missing:
        if os.environ.get("CI") == "true" and _is_root() and shutil.which("apt-get"):
            _slurm_local("install", timeout=900)
        else:
            pytest.skip(
                f"Slurm is not installed ({', '.join(missing)} not found); as root run `scripts/slurm-local install` "
                "(with CI=true, root and apt-get this test installs it itself)"
            )
    if not _is_root():
        pytest.skip("starting a local Slurm cluster needs root (it writes /etc/slurm/slurm.conf and starts daemons)")
    if CONF.exists() and MARKER not in CONF.read_text():
        pytest.skip(f"{CONF} belongs to another Slurm setup; not touching it")
    was_running = _slurm_local("status", check=False).returncode == 0
    if not was_running:
        _slurm_local("start")
    try:
        yield
    finally:
        if not was_running:
            _slurm_local("stop", check=False)


def _env():
    env = dict(os.environ)
    # jobs are submitted with --export=ALL: the venv's mtwork/snakemake must be on PATH inside them
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), SEARCH_PATH])
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def _snakemake_slurm(workdir: Path, *args: str) -> str:
    cmd = [
        sys.executable, "-m", "snakemake",
        "--profile", str(PROFILE),
        # test-only setting on top of the profile: check the status at once
        "--slurm-init-seconds-before-status-checks", "1",
        "--latency-wait", "5",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-8000:]}"
    return out


def _submitted(out: str, rule: str):
    """SLURM job ids Snakemake reports for a rule's jobs ("rule X:" ... "jobid: N", then
    "Job N has been submitted with SLURM jobid M")."""
    rule_of, current = {}, None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            current = m.group(1)
        elif current and (m := re.match(r"^    jobid: (\d+)$", line)):
            rule_of[m.group(1)] = current
    return [slurm_id for job, slurm_id in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out)
            if rule_of.get(job) == rule]


TINY_SNAKEFILE = """\
rule all:
    input:
        "second.txt",


rule first:
    output:
        "first.txt",
    resources:
        gpu=1,
    shell:
        "echo job=$SLURM_JOB_ID gpus=$CUDA_VISIBLE_DEVICES > {output}"


rule second:
    input:
        "first.txt",
    output:
        "second.txt",
    shell:
        "cat {input} > {output}; echo job=$SLURM_JOB_ID >> {output}"
"""


def test_profile_runs_gpu_job_and_dependant_through_slurm(slurm_cluster, tmp_path: Path):
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE)
    out = _snakemake_slurm(tmp_path, "second.txt")
    first = (tmp_path / "first.txt").read_text()
    second = (tmp_path / "second.txt").read_text().splitlines()
    m = re.match(r"job=(\d+) gpus=(\S+)", first)
    assert m, f"first.txt: {first!r} (not run inside a Slurm job with a GPU?)"
    gpu_job, gpus = m.group(1), m.group(2)
    assert gpus in {"0", "1"}  # one of the two fake GPUs, assigned by Slurm
    assert second[0] == first.strip()
    second_job = re.match(r"job=(\d+)$", second[1]).group(1)
    assert second_job != gpu_job
    assert _submitted(out, "first") == [gpu_job] and _submitted(out, "second") == [second_job]
    # profile keys in effect: squeue status checks, logs kept for successful jobs
    logs = tmp_path / ".snakemake" / "slurm_logs"
    assert (logs / "rule_first" / f"{gpu_job}.log").exists() and (logs / "rule_second" / f"{second_job}.log").exists()


def _has_synthdrive() -> bool:
    try:
        from mtwork.data.check import run_check_cli  # noqa: F401
        from mtwork.data.synthdrive import generate_synthdrive  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_synthdrive(), reason="mtwork generate / data check not implemented yet")
def test_profile_runs_the_real_data_rules_with_overrides(slurm_cluster, tmp_path: Path):
    """generate_synthdrive + check_data of the real workflow, with tiny --config overrides that the
    jobs inside Slurm (a fresh snakemake per job) must see too."""
    wf = tmp_path / "wf"
    wf.mkdir()
    for name in ("Snakefile", "rules", "envs", "params.yaml", "profiles"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, wf / name)
    out = _snakemake_slurm(
        wf, "data/checks/synthdrive.json",
        "--config",
        "data__synthdrive__counts={det: {train: 6, val: 2}, seg: {train: 4, val: 2}}",
        "data__synthdrive__image_size=[64, 112]",
    )
    assert (wf / "data" / "checks" / "synthdrive.json").exists()
    train_images = list((wf / "data" / "synthdrive" / "images" / "100k" / "train").iterdir())
    # 6 per visual preset (data.synthdrive.domains): 18 for the default three
    assert len(train_images) == 6 * 3, "the job inside Slurm did not see the --config overrides"
    assert len(_submitted(out, "generate_synthdrive")) == 1 and len(_submitted(out, "check_data")) == 1


TINY_TRAIN = [
    "checkpoints__sources=[random]",
    "data__synthdrive__counts={det: {train: 6, val: 2}, seg: {train: 4, val: 2}}",
    "data__synthdrive__image_size=[64, 112]",
    "train__paradigms=[single_task]",
    "train__epochs=1",
    "train__adapt_epochs=0",
    "train__batch_size=4",
    "train__input_size=[64, 96]",
    "train__device=cpu",
]
TINY_RUN = "random__single_task__semseg__s0"


@pytest.mark.skipif(not _has_synthdrive(), reason="mtwork generate / data check not implemented yet")
def test_profile_runs_a_two_process_training_job(slurm_cluster, tmp_path: Path):
    """A training job through the profile as on a GPU cluster: one Slurm task holding 2 (fake) GPUs,
    inside which `mtwork train --nproc 2` runs two data-parallel processes (gloo on this CPU node).
    The job's inputs are made locally first, so Slurm runs the training job alone."""
    wf = tmp_path / "wf"
    wf.mkdir()
    for name in ("Snakefile", "rules", "envs", "params.yaml"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, wf / name)
    target = f"models/runs/{TINY_RUN}/final.pt"
    local = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "data/checks/synthdrive.json", "models/pretrained/random.pt",
         "--config", *TINY_TRAIN], cwd=wf, env=_env(), capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stdout[-4000:] + local.stderr[-4000:]
    out = _snakemake_slurm(
        wf, target, "--config", *TINY_TRAIN,
        # the profile's training resources, scaled to the test node: 2 fake GPUs, and 1 CPU (the node
        # has as many CPUs as `nproc` said when slurm-local started it, 1 under OMP_NUM_THREADS=1)
        "--set-resources", "train:gpu=2", "train:nproc=2", "train:cpus_per_task=1", "train:mem_mb=3000",
    )
    assert len(_submitted(out, "train")) == 1 and not _submitted(out, "generate_synthdrive")
    log = json.loads((wf / "models" / "runs" / TINY_RUN / "log.json").read_text())
    assert log["world_size"] == 2 and log["batch_size"] == 4
    job_log = (wf / "logs" / "train" / f"{TINY_RUN}.log").read_text()
    assert job_log.count(f"[mtwork train] {TINY_RUN} epoch 1/1") == 1  # rank 0 alone reports
    assert "--nproc 2" in out
