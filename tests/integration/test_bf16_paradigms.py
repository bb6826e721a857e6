"""Every paradigm of both lines of work trains and evaluates under bf16 autocast.

No GPU has been lent to this project, so the CUDA path (`train.amp: auto` = bf16 there) has never run.
CPU autocast applies the same bf16 op lists, so one optimizer step per stage and one evaluation of
every paradigm with `train.amp=bf16` on the CPU hits the dtype errors a GPU run would (losses on bf16
outputs, FCOS box decoding, metrics, the LV-Adapter's text path, TAA/TSN, loss balancers, checkpoint
writes), in seconds.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mtwork.config import load_params
from mtwork.plan import VIT_PARADIGMS

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
SOURCE1_PARADIGMS = ["single_task", "pretrain_finetune", "pretrain_adapt_finetune", "pretrain_adapt_finetune_lv", "lora"]
# 8 train images at a global batch of 8: one optimizer step per epoch (per stage with adapt + finetune)
COMMON = ["train.amp=bf16", "train.device=cpu", "train.threads=1", "evaluate.batch_size=8"]


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    import open_clip

    from mtwork.models.clip_backbone import MTWORK_TINY_CLIP_NAME

    path = tmp_path_factory.mktemp("clip") / "clip.pt"  # an untrained tiny CLIP: the text tower's wiring
    torch.save({"state_dict": open_clip.create_model(MTWORK_TINY_CLIP_NAME).state_dict()}, path)
    return path


def _finite_metrics(record):
    for task, metrics in record["metrics"].items():
        assert metrics, task
        for name, value in metrics.items():
            # null: undefined on this tiny set (e.g. no detection at all); never NaN in the JSON record
            assert value is None or math.isfinite(value), (task, name, value)


def _float32_weights(state):
    floats = [k for k, v in state.items() if torch.is_floating_point(v)]
    assert floats and all(state[k].dtype == torch.float32 for k in floats), \
        [k for k in floats if state[k].dtype != torch.float32][:5]


@pytest.mark.parametrize("paradigm", SOURCE1_PARADIGMS)
def test_source1_paradigm_trains_and_evaluates_under_bf16(paradigm, synthdrive_tiny, pretrained, clip_file, tmp_path):
    from mtwork.evaluate import evaluate_run
    from mtwork.train import train_run

    tasks = "semseg" if paradigm == "single_task" else "semseg-drivable-det"
    run = f"random__{paradigm}__{tasks}__s0"
    params = load_params(PARAMS, [*COMMON, "train.epochs=2", "train.adapt_epochs=1", "train.batch_size=8",
                                  "train.input_size=[64, 96]", f"train.paradigms=[single_task, {paradigm}]",
                                  f"checkpoints.catalog.clip_tiny.path={clip_file}", "model.lora.target=all"])
    log = train_run(params, run, synthdrive_tiny, pretrained, tmp_path / run)
    assert log["amp"] == "bf16" and len(log["epochs"]) == 2
    assert all(math.isfinite(e["loss"]) and e["loss"] > 0 for e in log["epochs"])
    _float32_weights(torch.load(tmp_path / run / "final.pt", weights_only=False)["state_dict"])
    record = evaluate_run(params, tmp_path / run, synthdrive_tiny, tmp_path / "m.json")
    assert set(record["metrics"]) == set(tasks.split("-"))
    _finite_metrics(record)


@pytest.mark.parametrize("paradigm", list(VIT_PARADIGMS))
def test_source2_paradigm_trains_and_evaluates_under_bf16(paradigm, synthdrive_tiny, swin_checkpoint, tmp_path):
    from mtwork.train_vit import evaluate_vit_run, train_vit_run

    tasks = "depth" if paradigm == "single_task" else "semseg-depth-normals-edges"
    run = f"swin_simmim__{paradigm}__{tasks}__s0"
    params = load_params(PARAMS, [*COMMON, "vit.epochs=1", "vit.batch_size=8", "vit.input_size=[64, 96]",
                                  "vit.troa.every=1"])
    log = train_vit_run(params, run, synthdrive_tiny, swin_checkpoint, tmp_path / run)
    assert log["amp"] == "bf16" and math.isfinite(log["epochs"][0]["loss"]) and log["epochs"][0]["loss"] > 0
    _float32_weights(torch.load(tmp_path / run / "final.pt", weights_only=True)["state_dict"])
    record = evaluate_vit_run(params, tmp_path / run, synthdrive_tiny, tmp_path / "m.json")
    assert set(record["metrics"]) == set(tasks.split("-"))
    _finite_metrics(record)
