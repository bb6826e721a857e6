"""Source 2 end to end on a tiny SynthDrive: a SimMIM-pretrained Swin-V2 imported like any source,
VTAGML trained with TROA on four dense tasks, its adapter file, evaluation, and the refusal of a
mismatched backbone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtwork.checkpoints.importer import import_checkpoint
from mtwork.config import load_params
from mtwork.models.swin import create_swinv2
from mtwork.train_vit import build_vit_model, evaluate_vit_run, train_vit_run

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
TASKS = "semseg-depth-normals-edges"


@pytest.fixture(scope="module")
def vit_params():
    return load_params(PARAMS, ["vit.epochs=2", "vit.batch_size=4", "vit.input_size=[64, 96]", "vit.troa.every=1",
                                "train.threads=1", "evaluate.batch_size=4"])


@pytest.mark.parametrize("paradigm", ["vtagml", "vtagml_uncertainty", "full_finetune"])
def test_vit_run_trains_saves_only_what_it_trained_and_evaluates(paradigm, vit_params, swin_checkpoint, synthdrive_tiny, tmp_path):
    run = f"swin_simmim__{paradigm}__{TASKS}__s0"
    log = train_vit_run(vit_params, run, synthdrive_tiny, swin_checkpoint, tmp_path / run)
    assert [e["epoch"] for e in log["epochs"]] == [1, 2] and all(e["loss"] > 0 for e in log["epochs"])
    weights = log["epochs"][-1]["task_weights"]
    assert len(weights) == 4
    if paradigm == "vtagml":  # TROA: on the simplex, moved away from uniform, affinity logged per epoch
        assert sum(weights) == pytest.approx(1.0) and min(weights) > 0 and max(weights) - min(weights) > 1e-4
        assert all(len(e["affinity"]) == 4 and e["balancer_updates"] > 0 for e in log["epochs"])
        # per-target weight vectors: every column of the affinity (rows source, columns target) sums to 1
        affinity = torch.tensor(log["balancer_state"]["affinity"])
        assert torch.allclose(affinity.sum(dim=0), torch.ones(4), atol=1e-5)
        assert log["parameter_budget"]["frozen"] == log["trainable_params"]["train"] < log["parameter_budget"]["full"]
    saved = torch.load(tmp_path / run / "final.pt", weights_only=True)
    frozen = not paradigm.startswith("full")
    assert any(k.startswith("encoder.") for k in saved["state_dict"]) == (not frozen)
    assert saved["backbone"]["arch"] == "swin:mtwork_swinv2_tiny" and len(saved["backbone"]["sha256"]) == 64
    assert log["trainable_params"]["train"] < log["total_params"] or not frozen
    record = evaluate_vit_run(vit_params, tmp_path / run, synthdrive_tiny, tmp_path / "m.json")
    assert set(record["metrics"]) == {"semseg", "depth", "normals", "edges"}
    assert 0 <= record["metrics"]["semseg"]["miou"] <= 100 and record["metrics"]["depth"]["rmse"] > 0
    assert json.loads((tmp_path / "m.json").read_text())["run"] == run
    assert {"delta1", "delta2", "delta3"} <= set(record["metrics"]["depth"])
    assert record["train"]["adapted_block_training"] == ("frozen" if paradigm.startswith("vtagml") else None)


def test_vit_run_with_fully_trained_adapted_blocks(vit_params, swin_checkpoint, synthdrive_tiny, tmp_path):
    params = load_params(PARAMS, ["vit.epochs=1", "vit.batch_size=4", "vit.input_size=[64, 96]", "train.threads=1",
                                  "evaluate.batch_size=4", "vit.adapted_block_training=full"])
    run = "swin_simmim__vtagml__semseg-depth__s0"
    log = train_vit_run(params, run, synthdrive_tiny, swin_checkpoint, tmp_path / run)
    assert log["model_config"]["kwargs"]["adapted_block_training"] == "full"
    assert log["trainable_params"]["train"] == log["parameter_budget"]["full"] > log["parameter_budget"]["frozen"]
    saved = torch.load(tmp_path / run / "final.pt", weights_only=True)["state_dict"]
    assert "encoder.patch_embed.proj.weight" in saved and "encoder.layers.3.blocks.1.mlp.fc1.weight" in saved
    record = evaluate_vit_run(params, tmp_path / run, synthdrive_tiny, tmp_path / "m.json")
    assert record["train"]["adapted_block_training"] == "full"
    assert record["train"]["parameter_budget"] == log["parameter_budget"]


def test_adapter_refuses_another_backbone(vit_params, swin_checkpoint, synthdrive_tiny, tmp_path):
    run = f"swin_simmim__vtagml__semseg-depth__s0"
    train_vit_run(load_params(PARAMS, ["vit.epochs=1", "vit.batch_size=4", "vit.input_size=[64, 96]", "train.threads=1"]),
                  run, synthdrive_tiny, swin_checkpoint, tmp_path / run)
    log = json.loads((tmp_path / run / "log.json").read_text())
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save({"state_dict": create_swinv2("mtwork_swinv2_tiny", (64, 96)).state_dict()}, tmp_path / "other.pth")
    import_checkpoint("timm", tmp_path / "other.pth", other, arch="swin:mtwork_swinv2_tiny")
    model = build_vit_model(log["model_config"], other)
    from mtwork.train_vit import backbone_info

    with pytest.raises(ValueError, match="sha256"):
        model.load_adapter(tmp_path / run / "final.pt", backbone_info(log["model_config"], other, "other"))
