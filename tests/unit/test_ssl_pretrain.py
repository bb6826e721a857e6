"""Embedded self-supervised pretraining: every registered method writes its upstream layout, which the
converter of the same name imports; plus hand-checked pieces of each method (EMA targets, DINO's centre,
NT-Xent, DenseCL's dense matching and queues). Tiny runs: 8 noise JPEGs, crop 32, batch 4, 1 epoch."""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a stray pretrained=True fails fast instead of retrying

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

# A helper beside this file (tests/ has no __init__.py, so pytest puts this directory on sys.path).
import upstream_layouts as layouts
from mtwork.checkpoints.formats import CHECKPOINT_FORMATS
from mtwork.checkpoints.importer import import_checkpoint
from mtwork.models.backbones import create_backbone
from mtwork.pretrain import PRETRAINERS
from mtwork.pretrain.byol import BYOL, regression_loss
from mtwork.pretrain.common import LoopSettings, build_optimizer, train_step
from mtwork.pretrain.densecl import dense_correspondence
from mtwork.pretrain.dino import DINO, DINOLoss
from mtwork.pretrain.simclr import nt_xent_loss

COMMON = dict(arch="resnet18", epochs=1, batch_size=4, crop=32, num_threads=1, progress=False)
# Small queues and heads per method; a newly registered method fails here until it gets an entry.
TINY = {
    "moco": dict(queue_size=16, bn_splits=2),
    "simclr": dict(dim=32),
    "byol": dict(hid_channels=64, dim=32),
    "dino": dict(out_dim=64, hidden_dim=64, bottleneck_dim=16, local_crops_number=2),  # multi-crop path too
    "densecl": dict(queue_size=16, bn_splits=2, hid_channels=64, dim=32),
}
# Where each layout keeps the encoder the converter must import: (top-level entry, key prefix).
KEPT_ENCODER = {
    "moco": ("state_dict", "module.encoder_q."),
    "simclr": ("state_dict", ""),
    "byol": ("state_dict", "backbone."),
    "dino": ("teacher", "module.backbone."),  # DINO releases the teacher
    "densecl": ("state_dict", "backbone."),
}
# the ResNet pretrainers; SimMIM (a Swin-V2 encoder) has its own tests in test_simmim.py
RESNET_PRETRAINERS_EXCLUDED = ("simmim",)
METHODS = [m for m in PRETRAINERS.names() if m not in RESNET_PRETRAINERS_EXCLUDED]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_noise_jpegs(folder: Path, count: int, size=(48, 80), seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"frame_{i:03d}.jpg")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ssl_images")
    write_noise_jpegs(root / "train", 8)
    return root


@pytest.fixture(scope="module")
def runs(images, tmp_path_factory):
    """name -> (checkpoint path, result) of the tiny run, made on first use."""
    folder = tmp_path_factory.mktemp("ssl_runs")
    cache = {}

    def get(name: str):
        if name not in cache:
            out = folder / f"{name}.pth"
            cache[name] = out, PRETRAINERS.get(name)([images], out, seed=0, **COMMON, **TINY[name])
        return cache[name]

    return get


def load(path: Path) -> dict:
    # DINO stores its argparse.Namespace, which the importer allows too.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def tensors(obj, prefix: str = "") -> dict:
    """Every tensor in a nested checkpoint, by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found = {}
    for key, value in items:
        found.update(tensors(value, f"{prefix}/{key}"))
    return found


def trunk_keys() -> set:
    return {k for k in timm.create_model("resnet18", num_classes=0).state_dict()}


def expected_layout(name: str):
    """(top-level keys, key names of the weights dict) of the upstream file, from the reference builders
    in ``upstream_layouts.py`` (ResNet-50 head names, which do not depend on the head sizes)."""
    if name == "moco":
        encoder = trunk_keys() | {f"fc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
        keys = {f"module.{e}.{k}" for e in ("encoder_q", "encoder_k") for k in encoder}
        return {"epoch", "arch", "state_dict", "optimizer"}, keys | {"module.queue", "module.queue_ptr"}
    if name == "simclr":  # tonylins' layout with the projection head in place of the supervised fc
        head = {f"fc.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}
        head |= {f"fc.1.{p}" for p in ("running_mean", "running_var", "num_batches_tracked")}
        return {"state_dict"}, trunk_keys() | head
    upstream = {"byol": layouts.build_byol, "dino": layouts.build_dino, "densecl": layouts.build_densecl}[name]()
    return set(upstream.obj), set(upstream.weights)


# --------------------------------------------------------------------------- every registered method


def test_every_pretrainer_writes_a_registered_checkpoint_format():
    assert set(PRETRAINERS.names()) <= set(CHECKPOINT_FORMATS.names())
    assert set(METHODS) == set(TINY) == set(KEPT_ENCODER)
    assert set(METHODS) | set(RESNET_PRETRAINERS_EXCLUDED) == set(PRETRAINERS.names())


@pytest.mark.parametrize("name", METHODS)
def test_checkpoint_has_the_upstream_layout(runs, name):
    out, _ = runs(name)
    ckpt = load(out)
    top, keys = expected_layout(name)
    assert set(ckpt) == top
    weights = ckpt[KEPT_ENCODER[name][0]]
    assert set(weights) == keys


@pytest.mark.parametrize("name", METHODS)
def test_tiny_run_imports_through_its_converter(runs, name, tmp_path):
    out, _ = runs(name)
    report = import_checkpoint(name, out, tmp_path / f"{name}.pt", "resnet18")
    assert report.ok and len(report.kept) == 120 and not report.filled
    wrapper, prefix = KEPT_ENCODER[name]
    source = load(out)[wrapper]
    for key, value in create_backbone("resnet18", tmp_path / f"{name}.pt").state_dict().items():
        assert torch.equal(value, source[prefix + key]), key


@pytest.mark.parametrize("name", METHODS)
def test_deep_stem_resnet_trains_and_imports(images, name, tmp_path):
    """timm's resnet10t (the embedded default's backbone: a deep 3-conv stem ``conv1.{0,1,3,4,6}``,
    average-pool shortcuts ``downsample.1``) trains under each method, and the method's converter
    imports every one of its trunk weights unchanged."""
    out = tmp_path / f"{name}.pth"
    PRETRAINERS.get(name)([images], out, seed=0, **{**COMMON, "arch": "resnet10t"}, **TINY[name])
    report = import_checkpoint(name, out, tmp_path / f"{name}.pt", "resnet10t")
    trunk = timm.create_model("resnet10t", num_classes=0).state_dict()
    assert {"conv1.6.weight", "layer2.0.downsample.1.weight"} <= set(trunk)
    assert report.ok and len(report.kept) == len(trunk) and not report.filled
    wrapper, prefix = KEPT_ENCODER[name]
    source = load(out)[wrapper]
    loaded = create_backbone("resnet10t", tmp_path / f"{name}.pt").state_dict()
    assert set(loaded) == set(trunk)
    for key, value in loaded.items():
        assert torch.equal(value, source[prefix + key]), key


@pytest.mark.parametrize("name", METHODS)
def test_losses_finite_and_log_written(runs, name):
    out, result = runs(name)
    assert len(result["losses"]) == 1 and math.isfinite(result["losses"][0])
    assert result["images_seen"] == 8 and result["iterations"] == 2 and result["num_images"] == 8
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["losses"] == result["losses"] and log["config"]["batch_size"] == 4
    assert log["config"]["arch"] == "resnet18" and len(log["epoch_seconds"]) == 1


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_checkpoint(images, runs, name, tmp_path):
    out, result = runs(name)
    again = PRETRAINERS.get(name)([images], tmp_path / "again.pth", seed=0, **COMMON, **TINY[name])
    assert again["losses"] == result["losses"]
    a, b = tensors(load(out)), tensors(load(tmp_path / "again.pth"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", METHODS)
def test_too_few_images_refused_before_training(images, name, tmp_path):
    change = dict(batch_size=16, **({"queue_size": 32} if "queue_size" in TINY[name] else {}))
    with pytest.raises(ValueError, match="at least batch_size=16 images"):
        PRETRAINERS.get(name)([images], tmp_path / "x.pth", **{**COMMON, **TINY[name], **change})
    assert not (tmp_path / "x.pth").exists()


# --------------------------------------------------------------------------- EMA targets


def _views(count: int = 2, batch: int = 4, crop: int = 32):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, crop, crop, generator=gen) for _ in range(count)]


def _one_step(model, views):
    settings = LoopSettings(epochs=1, batch_size=4, crop=32, lr=0.5, weight_decay=1e-4)
    train_step("test", model, build_optimizer(model, settings), views, epoch=0, step=0, total_steps=2)


def _params(module) -> list:
    return [p.detach().clone() for p in module.parameters()]


def _assert_ema(target_after, target_before, online_after, m):
    changed = False
    for t1, t0, o1 in zip(target_after, target_before, online_after):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * o1, rtol=1e-6, atol=1e-7)
        changed |= not torch.equal(o1, t0)
    assert changed  # the online network did train, so the check is not trivial


def test_byol_target_is_the_ema_of_the_updated_online_network():
    """After the first step (k=0, cosine schedule at its start: tau = base):
    target = tau * target0 + (1 - tau) * online1, where target0 = online0 (a copy)."""
    torch.manual_seed(0)
    model = BYOL("resnet18", hid_channels=64, dim=32, momentum=0.9)
    model.train()
    target0 = _params(model.target_net.module)
    _one_step(model, _views())
    online1 = _params(torch.nn.Sequential(model.backbone, model.neck))
    _assert_ema(_params(model.target_net.module), target0, online1, 0.9)
    assert int(model.target_net.steps) == 1
    assert model.momentum_at(2, 2) == 1.0  # the schedule ends at 1


def test_dino_teacher_is_the_ema_of_the_student_and_the_centre_moves():
    torch.manual_seed(0)
    model = DINO("resnet18", out_dim=64, hidden_dim=64, bottleneck_dim=16, momentum_teacher=0.9)
    model.train()
    views = _views()
    teacher0 = _params(model.teacher)
    last_layer0 = model.student.head.last_layer.weight_v.detach().clone()
    with torch.no_grad():  # train-mode BN: the output depends on the weights only; a copy keeps buffers intact
        teacher_output = copy.deepcopy(model.teacher)(views)
    _one_step(model, views)
    _assert_ema(_params(model.teacher), teacher0, _params(model.student), 0.9)
    # freeze_last_layer=1: the last layer does not train in the first epoch.
    assert torch.equal(model.student.head.last_layer.weight_v, last_layer0)
    # centre: 0.9 * 0 + 0.1 * batch mean of the teacher's (uncentred) outputs.
    torch.testing.assert_close(model.dino_loss.center, 0.1 * teacher_output.mean(dim=0, keepdim=True))


def test_dino_loss_centres_the_teacher():
    """A teacher output equal to the centre is uniform after centring, whatever its values: the loss is
    then the mean cross-entropy of the student against the uniform distribution."""
    torch.manual_seed(0)
    k, batch = 7, 3
    loss_fn = DINOLoss(k, student_temp=0.1, center_momentum=0.9)
    center = torch.randn(1, k) * 5
    loss_fn.center.copy_(center)
    student = torch.randn(2 * batch, k)
    loss = loss_fn(student, center.expand(2 * batch, k), teacher_temp=0.04, ncrops=2)
    uniform = -(F.log_softmax(student / 0.1, dim=-1)).mean(dim=-1).mean()
    torch.testing.assert_close(loss, uniform)
    torch.testing.assert_close(loss_fn.center, center)  # 0.9 c + 0.1 c
    # Without centring, the same teacher would be sharply peaked (far from uniform).
    assert F.softmax(center / 0.04, dim=-1).max() > 0.5


# --------------------------------------------------------------------------- losses and DenseCL


def test_nt_xent_matches_its_definition():
    torch.manual_seed(0)
    z1, z2, t = torch.randn(3, 5), torch.randn(3, 5), 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z)
    terms = []
    for i in range(n):
        partner = (i + n // 2) % n
        others = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(n) if j != i)
        terms.append(-math.log(math.exp(float(z[i] @ z[partner]) / t) / others))
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(sum(terms) / n, rel=1e-5)


def test_byol_regression_loss_is_two_minus_two_cosine():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    b = torch.tensor([[0.0, 5.0], [0.5, 0.0], [-1.0, 0.0]])
    torch.testing.assert_close(regression_loss(a, b), torch.tensor([2.0, 0.0, 4.0]))


def test_densecl_matches_each_query_cell_to_its_most_similar_key_cell():
    torch.manual_seed(0)
    q_b = F.normalize(torch.randn(2, 16, 9), dim=1)
    perm = torch.randperm(9)
    k_b = q_b[:, :, perm]  # key cell j is query cell perm[j]
    assert torch.equal(dense_correspondence(q_b, k_b), torch.argsort(perm).expand(2, 9))


def test_densecl_advances_both_queues(runs):
    out, result = runs("densecl")
    state = load(out)["state_dict"]
    # 8 images / batch 4 = 2 steps of 4 keys each, in the global and in the dense queue.
    assert result["queue_ptr"] == result["queue2_ptr"] == 8
    assert int(state["queue_ptr"]) == int(state["queue2_ptr"]) == 8
    assert state["queue2"].shape == (32, 16)
    assert torch.allclose(state["queue2"].norm(dim=0), torch.ones(16), atol=1e-5)
    assert len(result["loss_dense"]) == 1 and math.isfinite(result["loss_dense"][0])
