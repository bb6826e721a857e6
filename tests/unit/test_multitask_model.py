"""MultiTaskModel: shapes, stages (frozen backbone in adapt), parameter counts, partial-label loss."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from mtwork.models.multitask import build_multitask_model, multitask_loss
from mtwork.models.necks import FPN
from mtwork.tasks.fcos import fcos_loss

TASKS = ["semseg", "drivable", "det"]
H, W = 64, 96


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return {
        "image": torch.randn(4, 3, H, W),
        "labeled": {"semseg": torch.tensor([True, False, True, False]),
                    "drivable": torch.tensor([False, False, False, False]),
                    "det": torch.tensor([False, True, True, False])},
        "semseg": torch.randint(0, 19, (4, H, W)),
        "drivable": torch.full((4, H, W), 255),
        "det": [{"boxes": torch.tensor([[4.0, 4.0, 60.0, 40.0]]), "labels": torch.tensor([0])},
                {"boxes": torch.tensor([[10.0, 8.0, 40.0, 50.0], [50.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([2, 9])},
                {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)},
                {"boxes": torch.tensor([[0.0, 0.0, 30.0, 30.0]]), "labels": torch.tensor([1])}],
    }


def _model(method="finetune"):
    torch.manual_seed(0)
    return build_multitask_model("resnet18", TASKS, fpn_channels=32, method=method)


def test_fpn_shapes():
    fpn = FPN([8, 16, 32, 64], 24)
    feats = [torch.randn(2, c, H // s, W // s) for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32])]
    assert [tuple(o.shape) for o in fpn(feats)] == [(2, 24, H // s, W // s) for s in (4, 8, 16, 32)]


def test_forward_shapes_and_task_kwargs():
    torch.manual_seed(0)
    model = build_multitask_model("resnet18", TASKS, fpn_channels=32, task_kwargs={"det": {"num_convs": 3}})
    out = model(torch.randn(2, 3, H, W))
    assert out["semseg"].shape == (2, 19, H, W) and out["drivable"].shape == (2, 3, H, W)
    assert [tuple(m.shape) for m in out["det"]["box"]] == [(2, 4, H // s, W // s) for s in (8, 16, 32)]
    assert len(model.heads["det"].reg_tower) == 3 * 3
    assert set(model.tasks) == set(TASKS)
    with pytest.raises(KeyError, match="dett"):
        build_multitask_model("resnet18", TASKS, task_kwargs={"dett": {}})


def test_adapt_stage_freezes_backbone_and_its_statistics(batch):
    model = _model("multiscale_adapter")
    model.set_stage("adapt")
    model.train()
    assert not any(m.training for m in model.backbone.modules())  # train() keeps the frozen backbone in eval
    assert model.heads.training and model.neck.training
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    assert model.count_parameters(trainable_only=True) == model.count_parameters() - backbone_params

    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)  # all params, as a loop might
    total, _ = multitask_loss(model.tasks, model(batch["image"]), batch)
    total.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    optimizer.step()
    after = model.state_dict()

    backbone_keys = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone_keys) and any("num_batches_tracked" in k for k in backbone_keys)
    for key in backbone_keys:
        assert torch.equal(before[key], after[key]), key
    for prefix in ("adapter.", "neck.", "heads.semseg.", "heads.det."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    for i in range(4):  # the zero-initialised up-projections get a gradient at the first step
        assert not torch.equal(before[f"adapter.adapters.{i}.up.weight"], after[f"adapter.adapters.{i}.up.weight"])


def test_finetune_stage_trains_everything(batch):
    model = _model("multiscale_adapter")
    model.set_stage("adapt")
    model.set_stage("finetune")
    model.train()
    assert model.count_parameters(trainable_only=True) == model.count_parameters()
    assert model.backbone.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with torch.no_grad():
        model(batch["image"])
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(before[k], v)]
    assert any("running_mean" in k for k in changed)
    with pytest.raises(ValueError, match="adapt"):
        model.set_stage("pretrain")


def test_multitask_loss_partial_labels(batch):
    model = _model()
    outputs = model(batch["image"])
    weights = {"semseg": 0.5, "drivable": 3.0, "det": 2.0}
    total, values = multitask_loss(model.tasks, outputs, batch, weights)

    # hand combination: semseg over samples 0,2; det over samples 1,2; drivable has no labeled sample
    semseg = F.cross_entropy(outputs["semseg"][[0, 2]], batch["semseg"][[0, 2]], ignore_index=255)
    det_subset = {k: ([m[[1, 2]] for m in v] if k != "strides" else v) for k, v in outputs["det"].items()}
    det = sum(fcos_loss(det_subset, [batch["det"][1], batch["det"][2]], model.tasks["det"].size_ranges).values())
    assert set(values) == {"semseg", "det"}
    assert values["semseg"] == pytest.approx(semseg.item(), rel=1e-6)
    assert values["det"] == pytest.approx(det.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.5 * semseg.item() + 2.0 * det.item(), rel=1e-6)

    total.backward()
    assert all(p.grad is None for p in model.heads["drivable"].parameters())
    assert all(p.grad is not None for p in model.heads["semseg"].parameters())
    assert torch.isfinite(next(model.backbone.parameters()).grad).all()

    with pytest.raises(KeyError, match="det"):
        multitask_loss(model.tasks, outputs, batch, {"semseg": 1.0})


def test_multitask_loss_nothing_labeled(batch):
    model = _model()
    outputs = model(batch["image"])
    empty = {**batch, "labeled": {t: torch.zeros(4, dtype=torch.bool) for t in TASKS}}
    total, values = multitask_loss(model.tasks, outputs, empty)
    assert values == {} and total.item() == 0.0
