"""Taskonomy reader on a fixture in the Omnidata layout: 18 semantic labels with 0 uncertain, depth in
1/512 m with 65535 invalid, 127-centred normals converted to the camera frame, building splits, and the
data check catching a normal convention that disagrees with the depth."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import dense_layouts as dl
from mtwork.data.check import check_dataset
from mtwork.data.dense_check import check_dense
from mtwork.data.registry import create_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return dl.write_taskonomy(tmp_path_factory.mktemp("tk") / "taskonomy")


def test_semantic_labels(root):
    seg = create_dataset("taskonomy", root, "train")[0]["semseg"]
    # row 0: uncertain, chair, couch, bottle, book, vase -> taskonomy17 (background 0, bottle 1, chair 2,
    # couch 3, ..., book 14, clock 15, vase 16); uncertain is ignore
    assert seg[0, :6].tolist() == [255, 2, 3, 1, 14, 16]
    assert (seg[1:] == 0).all()
    shared = create_dataset("taskonomy", root, "train", label_space="indoor10")[0]["semseg"]
    # indoor10: background 0, bed 1, books 2, chair 3, sofa 4, ...; bottle and vase have no NYU class
    assert shared[0, :6].tolist() == [255, 3, 4, 255, 2, 255] and shared[5, 5] == 0


def test_depth_in_512ths_of_a_metre(root):
    depth = create_dataset("taskonomy", root, "train")[0]["depth"]
    assert depth[0, 2] == 0.0  # 65535: missing
    expected = dl.plane_depth(16, 16, (8.0, 8.0, 7.5, 7.5))
    keep = np.ones((16, 16), bool)
    keep[0, 2] = False
    np.testing.assert_allclose(depth[keep], expected[keep], atol=0.5 / 512 + 1e-6)  # stored rounded to 1/512 m


def test_normals_in_the_camera_frame(root):
    sample = create_dataset("taskonomy", root, "train")[0]
    n = sample["normals"]
    assert (n[0, 0] == 0).all()  # (128, 128, 128): missing mesh
    # (128, 128, 255) faces the viewer in the stored convention -> (0, 0, -1) in x right / y down / z forward
    np.testing.assert_allclose(n[0, 1], [0.0, 0.0, -1.0], atol=0.01)
    # the tilted plane: stored (0, -0.6, 0.8) as 8-bit -> camera frame (0, -0.6, -0.8) to 8-bit precision
    np.testing.assert_allclose(n[5:, :], np.broadcast_to(dl.PLANE_NORMAL, (11, 16, 3)), atol=0.01)
    np.testing.assert_allclose(sample["camera"], [8.0, 8.0, 7.5, 7.5])  # fov 90 deg, 16 px


def test_building_splits(root, tmp_path):
    assert create_dataset("taskonomy", root, "train").names == ["hanson/point_0_view_0", "hanson/point_0_view_1"]
    assert create_dataset("taskonomy", root, "val").names == ["wiconisco/point_3_view_2"]
    assert create_dataset("taskonomy", root, "test").names == ["ihlen/point_1_view_0"]
    assert len(create_dataset("taskonomy", root, "all")) == 4
    csv = tmp_path / "train_val_test_mine.csv"
    csv.write_text("id,train,val,test\nihlen,1,0,0\nhanson,0,1,0\n")
    assert create_dataset("taskonomy", root, "train", split_table=str(csv)).names == ["ihlen/point_1_view_0"]
    assert len(create_dataset("taskonomy", root, "val", buildings=["hanson", "wiconisco"])) == 3
    flat = dl.write_taskonomy(tmp_path / "flat", component="", point_info=False)
    sample = create_dataset("taskonomy", flat, "train")[0]
    assert "camera" not in sample and sample["semseg"][0, 1] == 2


def test_broken_files_and_a_flipped_axis(root, tmp_path):
    broken = tmp_path / "taskonomy"
    shutil.copytree(root, broken)
    seg = dl.taskonomy_semseg()
    seg[4, 4] = 18
    unknown = broken / "segment_semantic/taskonomy/hanson/point_0_view_1_domain_segment_semantic.png"
    Image.fromarray(seg).save(unknown)
    info = broken / "point_info/taskonomy/ihlen/point_1_view_0_domain_point_info.json"
    info.write_text(json.dumps({"field_of_view_rads": "wide"}))
    gone = broken / "normal/taskonomy/wiconisco/point_3_view_2_domain_normal.png"
    gone.unlink()
    report = check_dataset("taskonomy", broken, progress=False)
    assert {(p.kind, p.path) for p in report.problems} == {
        ("unknown_id", str(unknown)), ("bad_camera", str(info)), ("missing", str(gone))}
    assert report.normals_frame["all"]["median_angle_deg"] < 2.0

    # the same normals with y pointing up (a convention the reader does not decode): flagged
    flipped = tmp_path / "flipped"
    shutil.copytree(root, flipped)
    for path in flipped.glob("normal/taskonomy/*/*.png"):
        png = np.asarray(Image.open(path)).copy()
        png[..., 1] = 255 - png[..., 1]
        Image.fromarray(png).save(path)
    report = check_dataset("taskonomy", flipped, progress=False)
    assert [p.kind for p in report.problems] == ["normals_frame"]
    # decoded (0, 0.6, -0.8) against the plane's (0, -0.6, -0.8): arccos(-0.36 + 0.64) = 73.74 degrees
    assert report.normals_frame["all"]["median_angle_deg"] == pytest.approx(73.74, abs=0.5)
    assert "with normals_axes=(1, -1, 1) the median is 0 deg" in report.problems[0].message
    ds = create_dataset("taskonomy", flipped, "train", normals_axes=(1, -1, 1))
    np.testing.assert_allclose(ds[0]["normals"][5:, :], np.broadcast_to(dl.PLANE_NORMAL, (11, 16, 3)), atol=0.01)
    assert check_dense("taskonomy", flipped, progress=False, normals_axes=(1, -1, 1)).ok
    with pytest.raises(ValueError, match="derives them from depth"):
        create_dataset("cityscapes", flipped, "train", normals_axes=(1, -1, 1))
