"""SYNTHIA-RAND-CITYSCAPES reader on a fixture in the release layout: 16-bit label PNGs with the class in
the first channel (written by an independent encoder), depth in centimetres, splits, broken files."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import dense_layouts as dl
from mtwork.data.check import check_dataset
from mtwork.data.registry import create_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return dl.write_synthia(tmp_path_factory.mktemp("sy") / "synthia")


def test_class_ids_from_the_first_channel(root):
    seg = create_dataset("synthia", root, "train")[0]["semseg"]
    # synthia16 (road 0 .. sky 9, person 10, car 12): Car 8 -> 12, sky 1 -> 9, Lanemarking 22 -> ignore,
    # Terrain 16 -> ignore (not in the 16), Pedestrian 10 -> person 10, void 0 -> ignore; Road 3 -> 0
    assert seg[0].tolist() == [12, 9, 255, 255, 10, 255]
    assert (seg[1:] == 0).all()
    seg19 = create_dataset("synthia", root, "train", label_space="cityscapes19")[0]["semseg"]
    assert seg19[0].tolist() == [13, 10, 255, 9, 11, 255]


def test_depth_in_centimetres(root):
    depth = create_dataset("synthia", root, "train")[0]["depth"]
    assert depth[0, :2].tolist() == [0.0, 0.0]  # 0 and the saturated 65535 are invalid
    np.testing.assert_allclose(depth.ravel()[2:], 12.34, rtol=1e-6)


def test_splits_and_flat_depth_folder(root, tmp_path):
    assert create_dataset("synthia", root, "train").names == ["0000000", "0000001"]
    assert create_dataset("synthia", root, "val").names == ["0009001"]
    assert len(create_dataset("synthia", root, "all")) == 3
    flat = tmp_path / "flat"
    shutil.copytree(root, flat)
    (flat / "Depth" / "Depth").rename(flat / "DepthTmp")
    shutil.rmtree(flat / "Depth")
    (flat / "DepthTmp").rename(flat / "Depth")
    np.testing.assert_allclose(create_dataset("synthia", flat, "val")[0]["depth"][1], 12.34, rtol=1e-6)


def test_normals_need_the_callers_intrinsics(root):
    with pytest.raises(ValueError, match="normals label needs intrinsics"):
        create_dataset("synthia", root, "train", tasks=("normals",))
    ds = create_dataset("synthia", root, "train", tasks=("depth", "normals"), intrinsics=(532.74, 532.74, 2.5, 1.5))
    sample = ds[0]
    np.testing.assert_allclose(sample["camera"], [532.74, 532.74, 2.5, 1.5])
    np.testing.assert_allclose(sample["normals"][2, 1:5], np.broadcast_to([0.0, 0.0, -1.0], (4, 3)), atol=1e-6)


def test_broken_files_are_named(root, tmp_path):
    broken = tmp_path / "synthia"
    shutil.copytree(root, broken)
    labels = dl.synthia_labels()
    labels[2, 2, 0] = 23
    unknown = dl.png_rgb16(broken / "GT/LABELS/0000001.png", labels)
    eight_bit = broken / "Depth/Depth/0009001.png"
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(eight_bit)
    gone = broken / "GT/LABELS/0000000.png"
    gone.unlink()
    report = check_dataset("synthia", broken, progress=False)
    assert {(p.kind, p.path) for p in report.problems} == {
        ("unknown_id", str(unknown)), ("corrupt_mask", str(eight_bit)), ("missing", str(gone))}
    assert "23 (1 px)" in report.to_text()
