"""Warm start (mtwork/warmstart.py): pipeline jobs run their command in a forked child of a process
that imported torch/torchvision/timm once. These tests run real `mtwork` console processes with
MTWORK_WARM_START=1 and check that a warm command is the cold one: same output, exit status, working
directory, environment; that signals reach it (SIGTERM forwarded; SIGKILL of the job kills the
command, which then resumes bitwise exactly); and that training warm gives bitwise the weights of
training in a process of its own."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mtwork import warmstart
from mtwork.engine.loop import STEP_DELAY_ENV

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"
RUN = "random__pretrain_adapt_finetune__semseg-drivable-det__s0"
SETTINGS = ["train.epochs=2", "train.adapt_epochs=1", "train.batch_size=2", "train.input_size=[64, 96]",
            "train.threads=1", "train.device=cpu", "train.workers=0"]


@pytest.fixture
def warm_env(tmp_path, wt):
    """The environment of a warm job, with servers of its own (private runtime directory) that exit
    3 s after their last job; every server it started is stopped afterwards."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**wt.tool_env(), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", warmstart.ENV_SWITCH: "1",
           "XDG_RUNTIME_DIR": str(runtime), "MTWORK_WARM_IDLE": "3"}
    env.pop("SLURM_JOB_ID", None)
    yield env
    for pid in _server_pids(runtime):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _server_pids(runtime: Path):
    """Pids of the servers started under ``runtime`` (from their logs' 'listening' lines)."""
    pids = []
    for log in runtime.glob("mtwork-warm-*/*.log"):
        pids += [int(p) for p in re.findall(r"warm-start server (\d+) listening", log.read_text())]
    return pids


def _children(pid: int):
    """Pids of the live processes whose parent is ``pid``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _mtwork(wt, *args, env, cwd, **kwargs):
    return subprocess.run([*wt.mtwork_command(), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_a_warm_command_behaves_like_the_cold_one(warm_env, tmp_path, wt):
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(PARAMS.read_text())
    cold_env = {**warm_env, warmstart.ENV_SWITCH: "0"}
    args = ["params", "--params", "params.yaml", "--set", "train.epochs=30"]  # a path relative to the job's cwd
    cold = _mtwork(wt, *args, env=cold_env, cwd=work)
    first = _mtwork(wt, *args, env=warm_env, cwd=work)
    second = _mtwork(wt, *args, env=warm_env, cwd=work)
    assert cold.returncode == first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout == cold.stdout and "epochs: 30" in cold.stdout
    servers = _server_pids(Path(warm_env["XDG_RUNTIME_DIR"]))
    assert len(servers) == 1  # the second command found the first one's server

    # an expected error: the same one line and exit status 2
    bad = ["params", "--params", "params.yaml", "--set", "train.epochs=0"]
    cold_bad, warm_bad = _mtwork(wt, *bad, env=cold_env, cwd=work), _mtwork(wt, *bad, env=warm_env, cwd=work)
    assert cold_bad.returncode == warm_bad.returncode != 0
    assert cold_bad.stderr.strip().splitlines()[-1] == warm_bad.stderr.strip().splitlines()[-1]
    # the job's environment reaches the command (MTWORK_DEBUG=1 prints the traceback), through a
    # server of its own (the environment is part of the server's key)
    debug = _mtwork(wt, "train", "--params", "params.yaml", "--run", "not-a-run-id", "--data", ".", "--checkpoint", ".",
                    "--out", "x", env={**warm_env, "MTWORK_DEBUG": "1"}, cwd=work)
    assert debug.returncode == 2 and "Traceback" in debug.stderr, debug.stderr
    assert len(_server_pids(Path(warm_env["XDG_RUNTIME_DIR"]))) == 2
    # usage errors exit like argparse's
    assert _mtwork(wt, "no-such-verb", env=warm_env, cwd=work).returncode == 2


def test_warm_start_is_off_inside_slurm_jobs_and_when_switched_off(tmp_path):
    assert warmstart.enabled({warmstart.ENV_SWITCH: "1"})
    assert not warmstart.enabled({warmstart.ENV_SWITCH: "1", "SLURM_JOB_ID": "7"})
    assert not warmstart.enabled({warmstart.ENV_SWITCH: "0"}) and not warmstart.enabled({})
    assert warmstart.server_key({"A": "1"}) != warmstart.server_key({"A": "2"})
    assert warmstart.server_key({"A": "1", "PWD": "/x"}) == warmstart.server_key({"A": "1", "PWD": "/y"})
    # a server that would import another mtwork than its client's refuses to serve (the client then
    # runs the command itself)
    with pytest.raises(SystemExit, match="the client runs"):
        warmstart.serve(tmp_path / "x.sock", tmp_path)
    assert not (tmp_path / "x.sock").exists()


def _train_cmd(wt, out: Path, data: Path, checkpoint: Path):
    return [*wt.mtwork_command(), "train", "--params", str(PARAMS), *[a for s in SETTINGS for a in ("--set", s)],
            "--run", RUN, "--data", str(data), "--checkpoint", str(checkpoint), "--out", str(out)]


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_signals_reach_a_warm_training_and_a_killed_one_resumes_bitwise_exactly(
        warm_env, synthdrive_tiny, pretrained, tmp_path, wt):
    from mtwork.config import load_params
    from mtwork.train import train_run

    train_run(load_params(PARAMS, SETTINGS), RUN, synthdrive_tiny, pretrained, tmp_path / "reference")
    reference = torch.load(tmp_path / "reference" / "final.pt", weights_only=False)["state_dict"]
    runtime = Path(warm_env["XDG_RUNTIME_DIR"])
    slow = {**warm_env, STEP_DELAY_ENV: "0.6"}

    def start(out):
        return subprocess.Popen(_train_cmd(wt, out, synthdrive_tiny, pretrained), env=slow, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def commands_running():
        return [c for pid in _server_pids(runtime) for c in _children(pid)]

    # SIGTERM of the job is forwarded: the command stops, the job fails, nothing final is written
    proc = start(tmp_path / "terminated")
    try:
        _wait_for(lambda: (tmp_path / "terminated" / "epoch_001.pt").exists() or proc.poll() is not None, 240,
                  "no epoch file after 240 s")
        assert proc.poll() is None, proc.stdout.read()
        assert commands_running(), "the command does not run in a child of the warm server"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    _wait_for(lambda: not commands_running(), 30, "the terminated command is still running")
    assert not (tmp_path / "terminated" / "final.pt").exists()

    # SIGKILL of the job (nothing of it can forward anything): its command dies with it
    out = tmp_path / "killed"
    proc = start(out)
    try:
        _wait_for(lambda: (out / "epoch_001.pt").exists() or proc.poll() is not None, 240, "no epoch file after 240 s")
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    _wait_for(lambda: not commands_running(), 30, "the killed job's command is still running")
    assert not (out / "final.pt").exists() and not (out / "epoch_002.pt").exists()

    # the same command again, warm: it resumes after epoch 1 and ends bitwise where the cold run did
    again = subprocess.run(_train_cmd(wt, out, synthdrive_tiny, pretrained), env=warm_env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming after epoch 1 from epoch_001.pt" in again.stdout
    got = torch.load(out / "final.pt", weights_only=False)["state_dict"]
    assert set(got) == set(reference)
    differ = [k for k in reference if not torch.equal(got[k], reference[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:5]}"
