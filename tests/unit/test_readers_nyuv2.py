"""NYUDv2 reader on a fixture in the NYUD_MT layout: 40 classes with 0 void, depth and normals .npy,
the NYU normal convention converted to the camera frame, gt_sets splits, broken files."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import dense_layouts as dl
from mtwork.data.check import check_dataset
from mtwork.data.nyuv2 import CROP_INTRINSICS, CROP_SIZE
from mtwork.data.registry import create_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return dl.write_nyuv2(tmp_path_factory.mktemp("nyu") / "nyuv2")


def test_segmentation_classes(root):
    seg = create_dataset("nyuv2", root, "train")[0]["semseg"]
    # row 0: void 0, chair 5, television 25, otherprop 40, floor 2, books 23 -> nyuv2_40 ids k - 1
    assert seg[0, :6].tolist() == [255, 4, 24, 39, 1, 22]
    assert (seg[1:] == 0).all()  # wall
    shared = create_dataset("nyuv2", root, "train", label_space="indoor10")[0]["semseg"]
    # indoor10: background 0 (wall, floor), books 2, chair 3, tv 7; otherprop has no shared class
    assert shared[0, :6].tolist() == [255, 3, 7, 255, 0, 2] and shared[3, 3] == 0


def test_depth_and_normals(root):
    sample = create_dataset("nyuv2", root, "train")[0]
    assert sample["depth"][0, 0] == 0.0 and np.allclose(sample["depth"].ravel()[1:], 2.5)
    n = sample["normals"]
    assert (n[0, 0] == 0).all()  # stored zero vector: unknown
    # stored (0, 0, 1) faces the viewer (z towards the viewer) -> camera frame (0, 0, -1)
    np.testing.assert_array_equal(n.reshape(-1, 3)[1:], np.broadcast_to([0.0, 0.0, -1.0], (47, 3)))
    assert "camera" not in sample


def test_splits(root):
    assert create_dataset("nyuv2", root, "train").names == ["0003", "0004"]
    assert create_dataset("nyuv2", root, "val").names == ["0001"]


def test_normal_convention_check_on_the_real_crop_size(tmp_path):
    good = dl.write_nyuv2(tmp_path / "good", size=CROP_SIZE, intrinsics=CROP_INTRINSICS)
    report = check_dataset("nyuv2", good, progress=False)
    assert report.ok and report.normals_frame["train"]["median_angle_deg"] < 0.5
    # normals stored already in the camera frame (z forward): the wrong convention for this reader
    for path in (good / "normals").glob("*.npy"):
        np.save(path, np.load(path) * np.array([1, 1, -1], np.float32))
    report = check_dataset("nyuv2", good, progress=False)
    assert {p.kind for p in report.problems} == {"normals_frame"}
    # stored (0, -0.6, -0.8) is read as (0, -0.6, 0.8): the angle to the true (0, -0.6, -0.8) is
    # arccos(0.36 - 0.64) = 106.26 degrees
    assert report.normals_frame["val"]["median_angle_deg"] == pytest.approx(106.26, abs=0.5)


def test_broken_files_are_named(root, tmp_path):
    broken = tmp_path / "nyuv2"
    shutil.copytree(root, broken)
    seg = dl.nyu_segmentation()
    seg[3, 3] = 41
    unknown = broken / "segmentation/0004.png"
    Image.fromarray(seg).save(unknown)
    wrong = broken / "depth/0001.npy"
    np.save(wrong, np.ones((5, 8), np.float32))
    gone = broken / "normals/0003.npy"
    gone.unlink()
    (broken / "gt_sets/val.txt").write_text("0001\n0099\n")
    report = check_dataset("nyuv2", broken, progress=False)
    assert {(p.kind, p.path) for p in report.problems} == {
        ("unknown_id", str(unknown)), ("size_mismatch", str(wrong)), ("missing", str(gone)),
        ("missing", str(broken / "images/0099.jpg"))}
