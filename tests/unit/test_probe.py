"""Linear probe of frozen features (mtwork.probe): pixel sampling reads exactly the resized maps, the probe
separates an informative encoder from an uninformative one on a toy segmentation set, and a Swin-V2
probe runs end to end on a generated SynthDrive root (CLI included)."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from mtwork.probe import (ALL_STAGES, ProbeSettings, feature_set, features_at, probe_encoder, sample_pixels,
                          stage_names)
from mtwork.tasks.segmentation import SegmentationEvaluator

K = 3  # toy classes
COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])  # one colour per class
SIZE = (32, 64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_features_at_reads_the_bilinearly_resized_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 7, generator=g)
    size = (16, 28)
    dense = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    targets = torch.randint(0, 4, (3, *size), generator=g)
    targets[targets == 3] = 255
    pixels = sample_pixels(targets, per_image=40, generator=g)
    got = features_at(x, pixels, size)
    want = dense[pixels[:, 0], :, pixels[:, 1], pixels[:, 2]]
    # both are 4-tap bilinear blends of unit-scale values in fp32: differences are rounding only
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    # border pixels included (edge clamping is where grid_sample and interpolate could differ)
    corners = torch.tensor([[0, 0, 0], [1, 15, 27], [2, 0, 27], [2, 15, 0]])
    assert torch.allclose(features_at(x, corners, size), dense[corners[:, 0], :, corners[:, 1], corners[:, 2]],
                          atol=1e-5, rtol=0)


def test_sample_pixels_takes_labelled_pixels_only():
    targets = torch.full((2, 4, 4), 255, dtype=torch.long)
    targets[0, :2] = 1  # 8 labelled pixels
    targets[1, 3, 3] = 0  # 1 labelled pixel
    g = torch.Generator().manual_seed(0)
    rows = sample_pixels(targets, per_image=5, generator=g)
    assert (rows[:, 0] == 0).sum() == 5 and (rows[:, 0] == 1).sum() == 1  # capped / all of them
    assert torch.all(targets[rows[:, 0], rows[:, 1], rows[:, 2]] != 255)
    assert len({tuple(r) for r in rows.tolist()}) == len(rows)  # without replacement


def test_feature_set_names_and_concatenation():
    maps = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    assert stage_names(2) == ["stage1", "stage2", ALL_STAGES]
    assert feature_set(maps, "stage2") is maps[1]
    both = feature_set(maps, ALL_STAGES)
    assert both.shape == (2, 10, 8, 8) and torch.equal(both[:, :4], maps[0])
    with pytest.raises(ValueError, match="unknown probe feature set 'stage3'"):
        feature_set(maps, "stage3")


# ---------------------------------------------------------------------------------------------- toy set
class _Task:
    """The part of a segmentation task the probe uses."""

    name = "semseg"
    num_classes = K

    def evaluator(self):
        return SegmentationEvaluator("semseg", [f"c{i}" for i in range(K)])


def _toy_set(n: int, seed: int):
    """Images whose 8x8-px cells each take one class's colour (plus noise); the mask is the class map,
    stored at the on-disk size = input size (no letterbox)."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        cells = torch.randint(0, K, (SIZE[0] // 8, SIZE[1] // 8), generator=g)
        mask = cells.repeat_interleave(8, 0).repeat_interleave(8, 1)
        image = COLOURS[mask].permute(2, 0, 1) + 0.3 * torch.randn(3, *SIZE, generator=g)
        # as a reader hands it: uint8 RGB (normalised on the way to the model), the colours kept apart
        image = ((image + 2.0) * 64.0).round().clamp(0, 255).to(torch.uint8)
        samples.append({"image": image, "name": f"toy{i}", "orig_size": SIZE, "semseg": mask.to(torch.uint8)})
    return samples


def _informative(image):
    """Stage maps that carry the colour: average pools at strides 4, 8 (the cells are 8 px)."""
    return [F.avg_pool2d(image, 4), F.avg_pool2d(image, 8)]


def _uninformative(image):
    """Maps of the same shapes that do not depend on the image."""
    g = torch.Generator().manual_seed(1)
    b = image.shape[0]
    return [torch.randn(b, 3, SIZE[0] // 4, SIZE[1] // 4, generator=g), torch.randn(b, 3, SIZE[0] // 8, SIZE[1] // 8, generator=g)]


def test_probe_separates_an_informative_from_an_uninformative_encoder():
    train, val = _toy_set(6, seed=0), _toy_set(4, seed=1)
    settings = ProbeSettings(steps=150, lr=0.05, pixels_per_image=128, batch_size=4)
    good = probe_encoder(_informative, train, val, _Task(), settings)
    bad = probe_encoder(_uninformative, train, val, _Task(), settings)
    assert set(good) == {"stage1", "stage2", ALL_STAGES}
    # the colour decides the class up to noise of std 0.3 averaged over >= 16 px: almost every pixel right
    assert good["stage2"]["pixel_acc"] > 95 and good["stage2"]["miou"] > 90
    # without information the best a linear map can do is a class prior: about 1/K of the pixels
    for name in bad:
        assert bad[name]["pixel_acc"] < 100 / K + 15
        assert bad[name]["miou"] < 30
    assert min(v["miou"] for v in good.values()) > max(v["miou"] for v in bad.values()) + 50


def test_probe_is_deterministic_for_a_seed():
    train, val = _toy_set(4, seed=0), _toy_set(2, seed=1)
    settings = ProbeSettings(steps=20, pixels_per_image=64, batch_size=4)
    a = probe_encoder(_uninformative, train, val, _Task(), settings, feature_sets=["stage1"])
    b = probe_encoder(_uninformative, train, val, _Task(), settings, feature_sets=["stage1"])
    assert a == b


def test_images_without_the_label_are_left_out():
    train, val = _toy_set(4, seed=0), _toy_set(3, seed=1)
    unlabelled = [{k: v for k, v in sample.items() if k != "semseg"} for sample in _toy_set(2, seed=5)]
    settings = ProbeSettings(steps=20, pixels_per_image=64, batch_size=3)  # batches mix both kinds
    plain = probe_encoder(_informative, train, val, _Task(), settings)
    mixed = probe_encoder(_informative, unlabelled[:1] + train + unlabelled[1:], val[:1] + unlabelled + val[1:],
                          _Task(), settings)
    for name in plain:
        assert mixed[name] == pytest.approx(plain[name], abs=1e-6)


def test_probe_settings_are_checked():
    with pytest.raises(ValueError, match="'steps' must be >= 1"):
        ProbeSettings(steps=0)
    with pytest.raises(ValueError, match="'lr' must be > 0"):
        ProbeSettings(lr=0.0)


# ---------------------------------------------------------------------------------------------- Swin-V2
@pytest.fixture(scope="module")
def synthdrive(tmp_path_factory):
    from mtwork.data.synthdrive import generate_synthdrive

    root = tmp_path_factory.mktemp("probe_synth") / "clear_day"
    generate_synthdrive(root, domain="clear_day", seed=0, image_size=(64, 112),
                        counts={"det": {"train": 0, "val": 0}, "seg": {"train": 3, "val": 2}}, overlap=0.0,
                        progress=False)
    return root


def test_probe_swin_cli_random_and_checkpoint(synthdrive, tmp_path):
    from mtwork.checkpoints.importer import import_checkpoint
    from mtwork.cli import main

    converted = tmp_path / "swin.pt"
    import_checkpoint("random", None, converted, "swin:mtwork_swinv2_tiny", seed=3)
    out = tmp_path / "probe.json"
    code = main(["probe", "--data", str(synthdrive), "--checkpoint", str(converted), "--random",
                 "--set", "vit.input_size=[32, 64]", "--steps", "5", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert [e["encoder"] for e in record["encoders"]] == [str(converted), "random (seed 0)"]
    for entry in record["encoders"]:
        assert entry["input_size"] == [32, 64] and entry["train_images"] == 3 and entry["val_images"] == 2
        assert set(entry["results"]) == set(stage_names(4))
        for metrics in entry["results"].values():
            assert 0.0 <= metrics["pixel_acc"] <= 100.0 and 0.0 <= metrics["miou"] <= 100.0
    assert main(["probe", "--data", str(synthdrive), "--out", str(out)]) == 2  # nothing to probe
