"""The fit loop on a toy recipe (a small conv net regressing one number per image): gradient
accumulation, fp16 with its scaler in the checkpoint, channels-last, and the non-finite guard on a
poisoned sample. Seconds each; the real lines of work are tested in tests/integration."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtwork.engine.loop import NonFiniteLossError, fit
from mtwork.engine.recipe import FitSettings, Recipe

N, SIZE = 8, 6


class _Samples:
    """N images (3, SIZE, SIZE) with a target each; ``poison``: the index whose image is NaN."""

    def __init__(self, poison=None):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(N, 3, SIZE, SIZE, generator=g)
        self.targets = torch.randn(N, generator=g)
        if poison is not None:
            self.images[poison] = math.nan

    def __len__(self):
        return N

    def labeled_counts(self):
        return {"value": N}

    def raw_sample(self, index):
        return {"image": self.images[index], "target": self.targets[index], "name": f"{index}.jpg"}


def _augment(sample, generator):
    # a per-sample draw, as TrainTransform does
    return {**sample, "image": sample["image"] + 0.01 * torch.randn(sample["image"].shape, generator=generator)}


def _collate(samples):
    return {"image": torch.stack([s["image"] for s in samples]), "target": torch.stack([s["target"] for s in samples]),
            "labeled": {"value": torch.ones(len(samples), dtype=torch.bool)}, "det": [], "names": [s["name"] for s in samples]}


class _Toy(Recipe):
    def __init__(self, settings, poison=None):
        torch.manual_seed(0)
        self.run_id, self.task_names, self.settings, self.params_hash = "toy", ["value"], settings, "h"
        self.model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                                   nn.Linear(4 * SIZE * SIZE, 1))
        self.dataset, self.transform, self.collate = _Samples(poison), _augment, _collate

    def losses(self, outputs, batch, ctx):
        loss = ((outputs[:, 0].float() - batch["target"]) ** 2).mean()  # equal counts per micro-batch
        return loss, {"value": loss.detach()}

    def finish(self, log, out_dir):
        torch.save(self.model.state_dict(), out_dir / "final.pt")


def _settings(**kw):
    base = dict(stages=(("train", 2),), batch_size=4, lr=0.01, weight_decay=0.05, warmup_epochs=0.5, seed=0,
                keep_epoch_checkpoints=True)
    return FitSettings(**{**base, **kw})


def _train(tmp_path, name, **kw):
    recipe = _Toy(_settings(**{k: v for k, v in kw.items() if k != "poison"}), kw.get("poison"))
    log = fit(recipe, tmp_path / name, torch.device("cpu"))
    return log, torch.load(tmp_path / name / "final.pt", weights_only=True)


def test_accumulating_two_micro_batches_gives_the_step_of_the_whole_batch(tmp_path):
    """Each micro-batch's loss is divided by accum_steps before backward, so two halves of 2 samples
    give the mean gradient of the 4 (equal counts here): the same weights up to summation order."""
    log1, w1 = _train(tmp_path, "one")
    log2, w2 = _train(tmp_path, "two", accum_steps=2)
    assert log1["steps_per_epoch"] == log2["steps_per_epoch"] == 2 and log2["accum_steps"] == 2
    for key in w1:
        assert torch.allclose(w1[key], w2[key], rtol=1e-5, atol=1e-6), key  # float32 sums of 2 vs 4 terms
    # and the per-sample seeds: the very same run again is bitwise the same
    _, again = _train(tmp_path, "again")
    assert all(torch.equal(w1[k], again[k]) for k in w1)


def test_fp16_keeps_its_scaler_in_the_checkpoint_and_channels_last_trains(tmp_path):
    log, _ = _train(tmp_path, "fp16", amp="fp16")
    assert log["amp"] == "fp16" and all(math.isfinite(e["loss"]) for e in log["epochs"])
    state = torch.load(tmp_path / "fp16" / "epoch_002.pt", weights_only=False)
    assert state["scaler"]["scale"] > 0 and state["step"] == 4
    plain_log, plain = _train(tmp_path, "plain")
    cl_log, cl = _train(tmp_path, "channels_last", channels_last=True)
    for key in plain:  # the same function in another memory layout: other conv kernels, same maths
        assert torch.allclose(plain[key], cl[key], rtol=1e-4, atol=1e-5), key


def test_a_poisoned_sample_stops_the_run_naming_task_epoch_and_step(tmp_path):
    from mtwork.engine.sampler import epoch_permutation

    # sample 5 holds NaN pixels; epoch 1's order (seed 0, epoch 0) puts it into this step
    step = epoch_permutation(N, 0, 0).tolist().index(5) // 4 + 1
    with pytest.raises(NonFiniteLossError) as caught:
        _train(tmp_path, "nan", poison=5)
    assert str(caught.value).startswith(f"run toy: non-finite loss (nan) in 'value' at epoch 1, step {step}/2;")
    assert "no final.pt written" in str(caught.value)
    assert not (tmp_path / "nan" / "final.pt").exists() and not (tmp_path / "nan" / "log.json").exists()
