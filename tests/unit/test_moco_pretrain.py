"""Embedded MoCo v2 pretraining: a tiny run on noise JPEGs writes an upstream-layout checkpoint."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a stray pretrained=True fails fast instead of retrying

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mtwork.checkpoints.importer import import_checkpoint
from mtwork.models.backbones import create_backbone
from mtwork.pretrain.augment import moco_v2_transform
from mtwork.pretrain.images import find_images
from mtwork.pretrain.moco import pretrain_moco_v2

TINY = dict(arch="resnet18", epochs=1, batch_size=4, crop=32, queue_size=16, dim=128, bn_splits=2,
            num_threads=1, progress=False)  # 1 thread: tiny ops, and robust on busy shared cores


def write_noise_jpegs(folder: Path, count: int, size=(48, 80), seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"frame_{i:03d}.jpg", quality=90)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_noise_jpegs(root / "train", 8)
    return root


@pytest.fixture(scope="module")
def tiny_run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("moco") / "moco_v2.pth.tar"
    result = pretrain_moco_v2([images], out, seed=0, **TINY)
    return out, result


def _upstream_keys(prefix: str) -> set:
    """The encoder keys facebookresearch/moco saves: timm ResNet keys with fc -> fc.0 / fc.2 (MLP)."""
    backbone = [k for k in timm.create_model("resnet18", num_classes=128).state_dict() if not k.startswith("fc.")]
    return {f"{prefix}{k}" for k in backbone} | {f"{prefix}fc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


def test_checkpoint_has_the_upstream_moco_layout(tiny_run):
    out, _ = tiny_run
    ckpt = torch.load(out, map_location="cpu", weights_only=True)  # only dicts/tensors/ints/strings
    assert set(ckpt) == {"epoch", "arch", "state_dict", "optimizer"}
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "resnet18"
    state = ckpt["state_dict"]
    want = (_upstream_keys("module.encoder_q.") | _upstream_keys("module.encoder_k.")
            | {"module.queue", "module.queue_ptr"})
    assert set(state) == want
    assert state["module.queue"].shape == (128, 16)
    assert torch.allclose(state["module.queue"].norm(dim=0), torch.ones(16), atol=1e-5)
    # 8 images / batch 4 = 2 steps of 4 keys each: the pointer moved 8 columns.
    assert int(state["module.queue_ptr"]) == 8
    assert {"state", "param_groups"} <= set(ckpt["optimizer"])
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == 1e-4


def _params(path: Path, encoder: str) -> dict:
    state = torch.load(path, weights_only=True)["state_dict"]
    prefix = f"module.{encoder}."
    # Parameters only: BN running statistics of encoder_k come from its own forward passes.
    names = [n for n, _ in timm.create_model("resnet18", num_classes=128).named_parameters() if not n.startswith("fc.")]
    return {n: state[prefix + n] for n in names}


def test_key_encoder_follows_the_momentum_update(images, tiny_run, tmp_path):
    """Two steps with m=0.99: k = m*k1 + (1-m)*q1 where k1 = q0 (k starts as a copy and the first
    update averages two equal encoders). Runs with m=1 (k stays q0) and m=0 (k becomes q1) share
    q0 and q1 (the first step does not depend on m), so k(0.99) = 0.99*k(1) + 0.01*k(0) exactly."""
    out, _ = tiny_run
    k_m = _params(out, "encoder_k")
    q = _params(out, "encoder_q")
    pretrain_moco_v2([images], tmp_path / "m1.pth.tar", seed=0, **{**TINY, "momentum": 1.0})
    pretrain_moco_v2([images], tmp_path / "m0.pth.tar", seed=0, **{**TINY, "momentum": 0.0})
    q0, q1 = _params(tmp_path / "m1.pth.tar", "encoder_k"), _params(tmp_path / "m0.pth.tar", "encoder_k")
    for name in k_m:
        assert not torch.equal(k_m[name], q[name]), name  # the key encoder is not a copy of the query one
        assert torch.allclose(k_m[name], 0.99 * q0[name] + 0.01 * q1[name], atol=1e-6), name
    assert not torch.equal(q0["conv1.weight"], q1["conv1.weight"])  # the query encoder did train


def test_loss_finite_and_log_written(tiny_run):
    out, result = tiny_run
    assert len(result["losses"]) == 1 and math.isfinite(result["losses"][0])
    # InfoNCE over 1 positive + 16 negatives starts near log(17); noise images stay near chance.
    assert 0.5 < result["losses"][0] < 10
    assert result["images_seen"] == 8 and result["iterations"] == 2 and result["queue_ptr"] == 8
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["losses"] == result["losses"] and log["config"]["queue_size"] == 16


def test_pretrained_checkpoint_imports_through_the_moco_converter(tiny_run, tmp_path):
    out, _ = tiny_run
    report = import_checkpoint("moco", out, tmp_path / "moco_v2.pt", "resnet18")
    assert report.ok and len(report.kept) == 120
    assert {"module.queue", "module.queue_ptr", "optimizer", "module.encoder_q.fc.0.weight"} <= set(report.dropped)
    state = torch.load(out, weights_only=True)["state_dict"]
    loaded = create_backbone("resnet18", tmp_path / "moco_v2.pt").state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[f"module.encoder_q.{key}"]), key


def test_same_seed_same_checkpoint(images, tiny_run, tmp_path):
    out, result = tiny_run
    again = pretrain_moco_v2([images], tmp_path / "again.pth.tar", seed=0, **TINY)
    assert again["losses"] == result["losses"]
    a = torch.load(out, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "again.pth.tar", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_find_images_sorted_and_deduplicated_by_name(tmp_path):
    write_noise_jpegs(tmp_path / "b", 2)
    write_noise_jpegs(tmp_path / "a" / "deep", 3)  # frame_000..002: 000 and 001 also exist under b
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    files = find_images([tmp_path / "b", tmp_path / "a"])
    assert [p.relative_to(tmp_path).as_posix() for p in files] == [
        "a/deep/frame_000.jpg", "a/deep/frame_001.jpg", "a/deep/frame_002.jpg"]
    with pytest.raises(FileNotFoundError, match="missing"):
        find_images([tmp_path / "missing"])


def test_moco_v2_views_are_normalised_crops():
    torch.manual_seed(0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8))
    transform = moco_v2_transform(32)
    a, b = transform(image), transform(image)
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # two independent random views
    assert a.min() < 0 < a.max()  # ImageNet-normalised, not [0, 1]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(queue_size=18), "multiple of batch_size"),
        (dict(bn_splits=4), "chunks of at least 2"),
        (dict(batch_size=16, queue_size=32, bn_splits=2), "at least batch_size=16 images"),
    ],
)
def test_bad_sizes_are_refused_before_training(images, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        pretrain_moco_v2([images], tmp_path / "x.pth.tar", **{**TINY, **change})
    assert not (tmp_path / "x.pth.tar").exists()
