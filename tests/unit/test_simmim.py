"""SimMIM pretraining of the Swin-V2 encoder: masks aligned to mask patches at the right ratio, the loss
sees masked pixels only, and a tiny run writes the encoder in timm's keys (strict load, timm converter)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from mtwork.checkpoints.formats import convert
from mtwork.models.swin import create_swinv2
from mtwork.pretrain import PRETRAINERS
from mtwork.pretrain.simmim import SimMIM, masked_l1_loss, pixel_mask, pretrain_simmim, random_mask

ARCH = "mtwork_swinv2_tiny"
TINY = dict(arch=ARCH, epochs=1, batch_size=4, crop=32, mask_patch_size=8, num_threads=1, progress=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("simmim_images")
    rng = np.random.default_rng(0)
    (root / "train").mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(root / "train" / f"frame_{i:03d}.jpg")
    return root


@pytest.fixture(scope="module")
def run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("simmim_run") / "simmim.pth"
    result = PRETRAINERS.get("simmim")([images], out, seed=0, **TINY)
    return out, result


# --------------------------------------------------------------------------- masking


@pytest.mark.parametrize("crop,mask_patch", [(96, 16), (96, 8), (64, 16), (32, 8)])
def test_mask_ratio_and_alignment(crop, mask_patch):
    torch.manual_seed(0)
    mask = random_mask(5, crop, mask_patch, 4, 0.6)
    side, scale = crop // 4, mask_patch // 4
    assert mask.shape == (5, side, side) and set(mask.unique().tolist()) <= {0.0, 1.0}
    # every mask patch is all masked or all visible
    blocks = mask.view(5, side // scale, scale, side // scale, scale).permute(0, 1, 3, 2, 4).flatten(3)
    assert torch.all(blocks.amin(-1) == blocks.amax(-1))
    count = (crop // mask_patch) ** 2
    per_image = blocks[..., 0].flatten(1).sum(1)
    assert torch.all(per_image == math.ceil(count * 0.6))
    # the masked set differs between images (random per image, not one pattern for the batch)
    assert not all(torch.equal(mask[0], m) for m in mask[1:])


def test_mask_size_errors():
    with pytest.raises(ValueError, match="multiple of the encoder's patch size"):
        random_mask(1, 96, 6, 4)
    with pytest.raises(ValueError, match="multiple of mask_patch_size"):
        random_mask(1, 96, 20, 4)
    with pytest.raises(ValueError, match="multiple of the encoder's stride"):
        SimMIM(ARCH, 48, mask_patch_size=8)


def test_pixel_mask_expands_tokens_to_pixels():
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    pixels = pixel_mask(tokens, 4)
    assert pixels.shape == (1, 1, 8, 8)
    assert pixels[0, 0, :4, :4].eq(1).all() and pixels[0, 0, :4, 4:].eq(0).all() and pixels[0, 0, 4:, 4:].eq(1).all()


# --------------------------------------------------------------------------- loss


def test_loss_only_on_masked_pixels():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 16, 16, generator=gen)
    recon = torch.randn(2, 3, 16, 16, generator=gen)
    mask = pixel_mask(random_mask(2, 16, 8, 4, 0.5, generator=gen), 4)
    loss = masked_l1_loss(target, recon, mask)
    changed_visible = recon + 10.0 * (1 - mask)
    assert torch.equal(masked_l1_loss(target, changed_visible, mask), loss)
    changed_masked = recon + 10.0 * mask
    assert not torch.isclose(masked_l1_loss(target, changed_masked, mask), loss)
    # by hand: mean |x - x_rec| over masked pixels and the 3 channels
    expected = ((target - recon).abs() * mask).sum() / (mask.sum() * 3)
    assert torch.isclose(loss, expected)


def test_loss_value_by_hand():
    target = torch.zeros(1, 3, 4, 4)
    recon = torch.full((1, 3, 4, 4), 2.0)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1  # 8 of 16 pixels masked
    recon[..., 2:, :] = 100.0  # errors on visible pixels do not count
    assert masked_l1_loss(target, recon, mask).item() == pytest.approx(2.0)


def test_model_step_trains_encoder_mask_token_and_decoder():
    torch.manual_seed(0)
    model = SimMIM(ARCH, 32, mask_patch_size=8)
    loss, _ = model.training_step([torch.randn(2, 3, 32, 32)], epoch=0)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert model.decoder[0].weight.grad is not None
    assert model.encoder.patch_embed.proj.weight.grad is not None
    decayed, not_decayed = model.param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    assert any("logit_scale" in names[id(p)] for p in not_decayed["params"])
    assert all(p.ndim > 1 for p in decayed["params"])


# --------------------------------------------------------------------------- the run and its file


def test_registered_as_a_pretrainer():
    assert PRETRAINERS.get("simmim") is pretrain_simmim


def test_tiny_run_writes_the_encoder_in_timm_keys(run):
    out, result = run
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"state_dict", "arch", "pretrain"}
    assert ckpt["arch"] == ARCH and ckpt["pretrain"]["method"] == "simmim" and ckpt["pretrain"]["epochs"] == 1
    reference = create_swinv2(ARCH, (32, 32)).state_dict()
    assert list(ckpt["state_dict"]) == list(reference)
    assert not any("mask_token" in k or "decoder" in k for k in ckpt["state_dict"])
    # strict loads, also at another input size (Swin-V2 keys do not depend on it)
    for size in ((32, 32), (64, 112)):
        create_swinv2(ARCH, size).load_state_dict(ckpt["state_dict"], strict=True)


def test_tiny_run_converts_through_the_timm_format(run):
    out, _ = run
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    conversion = convert("timm", ckpt)
    assert set(conversion.dropped) == {"arch", "pretrain"}
    assert list(conversion.state_dict) == list(create_swinv2(ARCH, (32, 32)).state_dict())
    assert all(torch.equal(conversion.state_dict[k], v) for k, v in ckpt["state_dict"].items())


def test_tiny_run_log_and_training_changed_weights(run):
    out, result = run
    assert len(result["losses"]) == 1 and math.isfinite(result["losses"][0])
    assert result["images_seen"] == 8 and result["iterations"] == 2 and result["num_images"] == 8
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["losses"] == result["losses"] and log["config"]["optimizer"] == "adamw"
    assert log["config"]["mask_patch_size"] == 8 and log["config"]["arch"] == ARCH
    torch.manual_seed(0)
    initial = create_swinv2(ARCH, (32, 32)).state_dict()
    trained = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    assert not torch.equal(initial["patch_embed.proj.weight"], trained["patch_embed.proj.weight"])


def test_same_seed_same_file(images, run, tmp_path):
    out, result = run
    again = pretrain_simmim([images], tmp_path / "again.pth", seed=0, **TINY)
    assert again["losses"] == result["losses"]
    a = torch.load(out, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "again.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("steps,epochs,iterations", [(2, 1, 2), (3, 2, 4), (4, 2, 4)])
def test_schedule_in_steps_takes_whole_epochs(images, tmp_path, steps, epochs, iterations):
    # 8 images at batch 4: 2 steps per epoch; `steps` overrides `epochs` (TINY says 1), rounded up
    result = pretrain_simmim([images], tmp_path / "s.pth", seed=0, **{**TINY, "epochs": 7}, steps=steps)
    assert result["epochs"] == epochs and result["iterations"] == iterations and len(result["losses"]) == epochs
    saved = torch.load(tmp_path / "s.pth", weights_only=True)["pretrain"]
    assert saved["epochs"] == epochs and saved["steps"] == iterations
    with pytest.raises(ValueError, match="steps must be at least 1"):
        pretrain_simmim([images], tmp_path / "x.pth", **TINY, steps=0)


def test_too_few_images_refused(images, tmp_path):
    with pytest.raises(ValueError, match="at least batch_size=16 images"):
        pretrain_simmim([images], tmp_path / "x.pth", **{**TINY, "batch_size": 16})
    assert not (tmp_path / "x.pth").exists()


def test_family_prefixed_arch_accepted(images, tmp_path):
    out = tmp_path / "prefixed.pth"
    pretrain_simmim([images], out, seed=0, **{**TINY, "arch": "swinv2:" + ARCH})
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["arch"] == "swinv2:" + ARCH
    create_swinv2(ARCH, (32, 32)).load_state_dict(ckpt["state_dict"], strict=True)
    with pytest.raises(ValueError, match="unknown Swin-V2 arch 'resnet18'"):
        pretrain_simmim([images], tmp_path / "r.pth", seed=0, **{**TINY, "arch": "resnet18"})
