"""Shared test fixtures. Data fixtures are written by the tests, in the real on-disk formats."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tiny SynthDrive generation shared (read-only) by the data tests; copy it before mutating.
SYNTHDRIVE_TINY_COUNTS = {"det": {"train": 6, "val": 3}, "seg": {"train": 4, "val": 2}}
SYNTHDRIVE_TINY_SIZE = (64, 112)


@pytest.fixture
def one_torch_thread():
    """torch on one CPU thread for the test (restored after): the tiny models here are memory-bound, and
    a second thread on busy shared cores only adds spin-waits. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthdrive_tiny_args() -> dict:
    """The ``generate_synthdrive`` arguments of ``synthdrive_tiny`` (copy before changing)."""
    return dict(domain="clear_day", seed=0, image_size=SYNTHDRIVE_TINY_SIZE, counts=SYNTHDRIVE_TINY_COUNTS,
                overlap=0.5, progress=False)


@pytest.fixture(scope="session")
def synthdrive_tiny(tmp_path_factory, synthdrive_tiny_args) -> Path:
    """A SynthDrive root of 64x112 images: per split 6/3 det images, 4/2 seg images, overlap 0.5
    (2 train and 1 val seg images also in the det set)."""
    from mtwork.data.synthdrive import generate_synthdrive

    root = tmp_path_factory.mktemp("synthdrive") / "clear_day"
    generate_synthdrive(root, **synthdrive_tiny_args)
    return root


def _save_jpg(path: Path, height: int, width: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path, quality=90)


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def bdd_mini_root(tmp_path) -> Path:
    """A hand-built BDD100K-style train split (32x48 images unless noted):

    images/100k/train: a, b, c, big (720x1280, the real size), e (no label at all)
    images/10k/train:  c (same bytes as the 100k copy), d
    det_train.json: a [car (4,6)-(13,15), "other vehicle", traffic light (20,2)-(23,9)],
                    b without a "labels" key, c [pedestrian (30,10)-(35,25)],
                    big [truck (100,200)-(499,399)], ghost.jpg [car] (no such image)
    drivable (on-disk ids 0 direct, 1 alternative, 2 background):
        a: rows 20..31 cols 0..23 direct (288 px), cols 24..47 alternative (288 px), rest background
        c: all background (1536 px)
    semseg: c: rows 0..9 sky (480 px), rows 10..31 road (1056 px)
            d: a 4x4 car block at rows 0..3 cols 0..3 (16 px), the rest 255 (1520 px)
    """
    root = tmp_path / "bdd"
    for name, value in (("a", 60), ("b", 90), ("c", 120), ("e", 30)):
        _save_jpg(root / "images/100k/train" / f"{name}.jpg", 32, 48, value)
    _save_jpg(root / "images/100k/train/big.jpg", 720, 1280, 150)
    (root / "images/10k/train").mkdir(parents=True)
    (root / "images/10k/train/c.jpg").write_bytes((root / "images/100k/train/c.jpg").read_bytes())
    _save_jpg(root / "images/10k/train/d.jpg", 32, 48, 200)

    def box(x1, y1, x2, y2):
        return {"x1": x1, "y1": y1, "x2": x2, "y2": y2}

    attrs = {"occluded": False, "truncated": False, "trafficLightColor": "NA"}
    frames = [
        {"name": "a.jpg", "attributes": {"weather": "clear", "timeofday": "daytime", "scene": "city street"},
         "timestamp": 10000, "labels": [
             {"id": "0", "category": "car", "attributes": attrs, "box2d": box(4, 6, 13, 15)},
             {"id": "1", "category": "other vehicle", "attributes": attrs, "box2d": box(0, 0, 5, 5)},
             {"id": "2", "category": "traffic light", "attributes": dict(attrs, trafficLightColor="G"),
              "box2d": box(20, 2, 23, 9)},
         ]},
        {"name": "b.jpg", "attributes": {}, "timestamp": 10000},
        {"name": "c.jpg", "labels": [{"id": "3", "category": "pedestrian", "attributes": attrs,
                                      "box2d": box(30, 10, 35, 25)}]},
        {"name": "big.jpg", "labels": [{"id": "4", "category": "truck", "box2d": box(100, 200, 499, 399)}]},
        {"name": "ghost.jpg", "labels": [{"id": "5", "category": "car", "box2d": box(1, 1, 5, 5)}]},
    ]
    (root / "labels/det_20").mkdir(parents=True)
    (root / "labels/det_20/det_train.json").write_text(json.dumps(frames))

    drivable_a = np.full((32, 48), 2, np.uint8)
    drivable_a[20:, :24] = 0
    drivable_a[20:, 24:] = 1
    _save_png(root / "labels/drivable/masks/train/a.png", drivable_a)
    _save_png(root / "labels/drivable/masks/train/c.png", np.full((32, 48), 2, np.uint8))
    semseg_c = np.zeros((32, 48), np.uint8)
    semseg_c[:10] = 10
    _save_png(root / "labels/sem_seg/masks/train/c.png", semseg_c)
    semseg_d = np.full((32, 48), 255, np.uint8)
    semseg_d[:4, :4] = 13
    _save_png(root / "labels/sem_seg/masks/train/d.png", semseg_d)
    return root
