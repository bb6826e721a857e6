"""Exact resume and the run guards of the training engine, on real `mtwork train` processes.

A run is killed with SIGKILL in the middle of an epoch (a real subprocess: nothing gets to clean up),
the same command is run again, and the final weights must be bitwise those of an uninterrupted run:
the epoch checkpoint restores model, optimizer, schedule, loss balancer and every RNG state, and the
data order and each sample's augmentation are functions of (seed, epoch, sample index). The killed
run loads with 2 DataLoader workers and the reference with none, so the same comparison also shows
that `train.workers` does not change results. The test-only MTWORK_TEST_STEP_DELAY makes each step
last long enough to kill the process reliably inside epoch 2.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from mtwork.config import load_params
from mtwork.engine.loop import STEP_DELAY_ENV

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
# 8 train images of synthdrive_tiny, global batch 2: 4 optimizer steps per epoch
SOURCE1 = ("random__pretrain_adapt_finetune__semseg-drivable-det__s0",
           ["train.epochs=2", "train.adapt_epochs=1", "train.batch_size=2", "train.input_size=[64, 96]"])
SOURCE2 = ("swin_simmim__vtagml__semseg-depth-normals-edges__s0",
           ["vit.epochs=2", "vit.batch_size=2", "vit.input_size=[64, 96]", "vit.troa.every=1"])
COMMON = ["train.threads=1", "train.device=cpu"]
STEP_DELAY = 0.6  # seconds per step in the run that gets killed: epoch 2 lasts >= 2.4 s


def _sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def _assert_bitwise_equal(got, expected):
    assert set(got) == set(expected)
    differ = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:5]}"


@pytest.mark.parametrize("line", ["source1", "source2"])
def test_sigkill_mid_epoch_then_the_same_command_gives_bitwise_the_uninterrupted_weights(
        line, synthdrive_tiny, pretrained, swin_checkpoint, tmp_path, wt):
    from mtwork.train import train_run
    from mtwork.train_vit import train_vit_run

    run, overrides = SOURCE1 if line == "source1" else SOURCE2
    checkpoint = pretrained if line == "source1" else swin_checkpoint
    # the uninterrupted reference, in this process, loading without workers
    train = train_run if line == "source1" else train_vit_run
    train(load_params(PARAMS, [*overrides, *COMMON, "train.workers=0"]), run, synthdrive_tiny, checkpoint,
          tmp_path / "reference")

    out = tmp_path / "killed"
    cmd = [*wt.mtwork_command(), "train", "--params", str(PARAMS), *_sets([*overrides, *COMMON, "train.workers=2"]),
           "--run", run, "--data", str(synthdrive_tiny), "--checkpoint", str(checkpoint), "--out", str(out)]
    env = {**wt.tool_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env={**env, STEP_DELAY_ENV: str(STEP_DELAY)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "epoch_001.pt").exists():
            assert proc.poll() is None, f"mtwork train ended before its first epoch file:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "no epoch file after 240 s"
            time.sleep(0.05)
        time.sleep(2 * STEP_DELAY)  # inside epoch 2: its second step has started
        assert not (out / "epoch_002.pt").exists() and proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final.pt").exists() and not (out / "epoch_002.pt").exists()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming after epoch 1 from epoch_001.pt" in again.stdout
    log = json.loads((out / "log.json").read_text())
    assert log["resumed"]["from"] == "epoch_001.pt" and [e["epoch"] for e in log["epochs"]] == [1, 2]
    reference = torch.load(tmp_path / "reference" / "final.pt", weights_only=False)["state_dict"]
    _assert_bitwise_equal(torch.load(out / "final.pt", weights_only=False)["state_dict"], reference)
    if line == "source2":  # TROA's state came back too: the same weights and affinity at the end
        ref_log = json.loads((tmp_path / "reference" / "log.json").read_text())
        assert log["balancer_state"] == ref_log["balancer_state"]
    assert not list(out.glob("epoch_*.pt"))  # a finished run keeps no epoch files (keep_epoch_checkpoints false)


def test_a_non_finite_loss_stops_the_run_with_a_named_error_and_no_final_file(synthdrive_tiny, pretrained, tmp_path, capsys):
    """AdamW at lr 1e30 turns the first step's update into weights of 1e30, and the second step's
    GroupNorm statistics overflow to NaN: the run stops at epoch 1 step 2 with one clear line (exit
    status 2, no traceback) naming the run, the task and the step, and nothing final is written."""
    from mtwork.cli import main

    run, overrides = SOURCE1
    out = tmp_path / run
    code = main(["train", "--params", str(PARAMS), *_sets([*overrides, *COMMON, "train.lr=1.0e+30"]), "--run", run,
                 "--data", str(synthdrive_tiny), "--checkpoint", str(pretrained), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = [l for l in err.splitlines() if l.startswith("mtwork train: error:")]
    assert len(line) == 1, err
    assert f"run {run}: non-finite loss" in line[0] and "at epoch 1, step 2/4" in line[0]
    assert any(f"in '{task}'" in line[0] for task in ("semseg", "drivable", "det"))
    assert not (out / "final.pt").exists() and not (out / "log.json").exists() and not (out / "adapt.pt").exists()
