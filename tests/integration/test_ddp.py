"""Data parallelism: `mtwork train --nproc 2` (two CPU processes, gloo) against one process at the same
global batch, for a source-1 run and a source-2 run.

Both see the same samples with the same augmentations in every step (mtwork.engine.sampler) and every
loss is normalised by the global batch's counts (mtwork.engine.distributed), so with the backbone's
statistics frozen (LoRA locks every BatchNorm; the Swin has LayerNorms only) the two runs compute the
same function; they differ only in the order of floating-point sums (each process sums its half, then
gloo adds the halves). Tolerances: a loss is a mean over ~10^4 pixels, where a changed summation order
moves float32 results by a few ulp (~1e-7 relative); after a few AdamW steps those differences reach
the weights amplified by Adam's normalisation (an update is ~lr * g / |g|, so a gradient entry near 0
can flip between runs): rtol 2e-5 on the per-step losses (measured: 6e-7), and for the weights atol 2e-5 (1 % of one
update of lr 2e-3; measured max 7e-5) over all but a vanishing fraction of entries (measured: 21 of
9.4 M), with no entry off by more than 2 lr (one flipped Adam update).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from mtwork.config import load_params

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
COMMON = ["train.threads=1", "train.device=cpu", "train.log_steps=true", "train.workers=0"]
RUNS = {
    # 8 train images, global batch 4: 2 optimizer steps per epoch, 2 epochs
    "source1": ("random__lora__semseg-drivable-det__s0",
                ["train.epochs=2", "train.adapt_epochs=1", "train.batch_size=4", "train.input_size=[64, 96]",
                 "train.lr=0.002", "model.lora.target=all"]),
    "source2": ("swin_simmim__vtagml__semseg-depth-normals-edges__s0",
                ["vit.epochs=2", "vit.batch_size=4", "vit.input_size=[64, 96]", "vit.troa.every=1", "vit.lr=0.002"]),
}
LR = 0.002


def _steps(log):
    return [step for epoch in log["epochs"] for step in epoch["steps"]]


@pytest.mark.parametrize("line", ["source1", "source2"])
def test_two_processes_reach_the_weights_of_one_at_the_same_global_batch(line, synthdrive_tiny, pretrained,
                                                                           swin_checkpoint, tmp_path, wt):
    from mtwork.train import train_run
    from mtwork.train_vit import train_vit_run

    run, overrides = RUNS[line]
    checkpoint = pretrained if line == "source1" else swin_checkpoint
    train = train_run if line == "source1" else train_vit_run
    one = train(load_params(PARAMS, [*overrides, *COMMON]), run, synthdrive_tiny, checkpoint, tmp_path / "one")

    out = tmp_path / "two"
    cmd = [*wt.mtwork_command(), "train", "--nproc", "2", "--params", str(PARAMS),
           *[a for o in [*overrides, *COMMON] for a in ("--set", o)],
           "--run", run, "--data", str(synthdrive_tiny), "--checkpoint", str(checkpoint), "--out", str(out)]
    env = {**wt.tool_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    two = json.loads((out / "log.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert proc.stdout.count("[mtwork train] " + run + " epoch 1/2") == 1  # only rank 0 reports and writes

    steps_one, steps_two = _steps(one), _steps(two)
    assert len(steps_one) == len(steps_two) == 4
    for a, b in zip(steps_one, steps_two):
        assert a.keys() == b.keys()
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=2e-5, abs=1e-6), (name, steps_one, steps_two)

    w_one = torch.load(tmp_path / "one" / "final.pt", weights_only=False)["state_dict"]
    w_two = torch.load(out / "final.pt", weights_only=False)["state_dict"]
    assert set(w_one) == set(w_two)
    total = far = 0
    for key, a in w_one.items():
        b = w_two[key]
        if not torch.is_floating_point(a):
            assert torch.equal(a, b), key
            continue
        diff = (a - b).abs()
        # Adam divides by the gradient's own scale: where a gradient is ~0, a rounding difference can flip
        # its sign, and each step then moves that weight by up to lr in opposite directions (2 lr apart);
        # the count below keeps such weights rare
        assert float(diff.max()) <= 2 * LR * len(steps_one), (key, float(diff.max()))
        total += a.numel()
        far += int((diff > 2e-5).sum())
    assert far <= max(3, total // 10_000), f"{far} of {total} weights differ by more than 2e-5"
    if line == "source2":  # TROA decided the same from the all-reduced per-task gradients
        assert two["balancer_state"]["weights"] == pytest.approx(one["balancer_state"]["weights"], rel=1e-4)


def test_a_non_finite_loss_stops_every_process_at_the_same_step(synthdrive_tiny, pretrained, tmp_path, wt):
    """A failing data-parallel run: the guard checks the all-reduced losses, so the processes stop at
    the same step; each that gets to report prints its one line naming it, the launcher adds one
    summary line, the exit status is 2 and nothing final is written."""
    run = "random__pretrain_adapt_finetune__semseg-drivable-det__s0"
    sets = ["train.epochs=2", "train.adapt_epochs=1", "train.batch_size=2", "train.input_size=[64, 96]",
            "train.lr=1.0e+30", "train.threads=1", "train.device=cpu"]
    cmd = [*wt.mtwork_command(), "train", "--nproc", "2", "--params", str(PARAMS), *[a for o in sets for a in ("--set", o)],
           "--run", run, "--data", str(synthdrive_tiny), "--checkpoint", str(pretrained), "--out", str(tmp_path / run)]
    env = {**wt.tool_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    # (a progress bar may have left its clearing spaces or carriage return before the line)
    lines = [line.split("\r")[-1].strip() for line in proc.stderr.splitlines() if "non-finite loss" in line]
    # the launcher stops the other process once one has exited: it may not get to print its line
    assert 1 <= len(lines) <= 2 and all(line.startswith("mtwork train: error (rank ") for line in lines)
    assert len({line.split(" in '")[1] for line in lines}) == 1  # the same task, epoch and step
    assert "Traceback" not in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("mtwork train: error: training process")
    assert not (tmp_path / run / "final.pt").exists()
