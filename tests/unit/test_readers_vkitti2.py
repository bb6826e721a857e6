"""Virtual KITTI 2 reader on a fixture in the release layout: colours -> classes through colors.txt,
depth in centimetres with the far plane invalid, per-frame intrinsics, scene splits, broken files."""
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
    return dl.write_vkitti2(tmp_path_factory.mktemp("vk") / "vkitti2")


def test_colours_map_to_classes(root):
    seg = create_dataset("vkitti2", root, "train")[0]["semseg"]
    # row 0: Car, Van, Sky, GuardRail, Terrain, Undefined -> cityscapes19 car 13, car 13, sky 10, ignore,
    # terrain 9, ignore; the rest Road -> 0
    assert seg[0].tolist() == [13, 13, 10, 255, 9, 255]
    assert (seg[1:] == 0).all()
    seg8 = create_dataset("vkitti2", root, "train", label_space="synthetic8")[0]["semseg"]
    assert seg8[0].tolist() == [7, 7, 6, 255, 255, 255]  # terrain is not one of the 8 shared classes


def test_depth_camera_normals(root):
    sample = create_dataset("vkitti2", root, "train")[0]
    depth = sample["depth"]
    assert depth[0, 2] == 0.0  # 65535: the far plane (sky) is invalid, not 655.35 m
    np.testing.assert_allclose(np.delete(depth.ravel(), 2), 12.34, rtol=1e-6)  # 1234 cm
    np.testing.assert_allclose(sample["camera"], [725.0087, 725.0087, 620.5, 187.0])
    # constant depth: a fronto-parallel plane; pixels next to the sky pixel have no normal
    np.testing.assert_allclose(sample["normals"][2, 1:5], np.broadcast_to([0.0, 0.0, -1.0], (4, 3)), atol=1e-6)
    assert (sample["normals"][1, 2] == 0).all()


def test_splits_variations_cameras(root):
    train = create_dataset("vkitti2", root, "train")
    assert train.names == ["Scene01/clone/Camera_0/00000", "Scene01/clone/Camera_0/00001", "Scene01/fog/Camera_0/00000"]
    assert create_dataset("vkitti2", root, "val").names == ["Scene02/clone/Camera_0/00000"]
    assert len(create_dataset("vkitti2", root, "all")) == 4
    assert len(create_dataset("vkitti2", root, "train", variations=("fog",))) == 1
    with pytest.raises(ValueError, match="unknown variations"):
        create_dataset("vkitti2", root, "train", variations=("snow",))
    with pytest.raises(Exception, match="no images"):
        create_dataset("vkitti2", root, "train", cameras=("Camera_1",))


def test_lowercase_segmentation_folder(tmp_path):
    root = dl.write_vkitti2(tmp_path / "vk", folder="classsegmentation")
    assert create_dataset("vkitti2", root, "val")[0]["semseg"][0].tolist() == [13, 13, 10, 255, 9, 255]


def test_broken_files_are_named(root, tmp_path):
    broken = tmp_path / "vkitti2"
    shutil.copytree(root, broken)
    base = broken / "Scene01" / "clone"
    odd = base / "frames/classSegmentation/Camera_0/classgt_00001.png"
    rgb = dl.vkitti2_classgt()
    rgb[3, 5] = (1, 2, 3)
    Image.fromarray(rgb).save(odd)
    intrinsic = broken / "Scene01/fog/intrinsic.txt"
    intrinsic.write_text("frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]\n7 0 725 725 620.5 187\n")
    colors = broken / "Scene02/clone/colors.txt"
    colors.write_text(dl.VKITTI2_COLORS.replace("Van 0 139 139", "Bus 0 139 139"))
    gone = base / "frames/depth/Camera_0/depth_00000.png"
    gone.unlink()
    # the right camera is checked too, although the reader reads Camera_0 by default
    dl.save_image(base / "frames/rgb/Camera_1/rgb_00000.jpg", dl.gradient_rgb(4, 6, 0))
    dl.save_image(base / "frames/depth/Camera_1/depth_00000.png", dl.vkitti2_depth())
    truncated = dl.save_image(base / "frames/classSegmentation/Camera_1/classgt_00000.png", dl.vkitti2_classgt())
    truncated.write_bytes(truncated.read_bytes()[:50])
    report = check_dataset("vkitti2", broken, progress=False)
    found = {(p.kind, p.path) for p in report.problems}
    assert found == {("unknown_colour", str(odd)), ("bad_camera", str(intrinsic)), ("bad_table", str(colors)),
                     ("missing", str(gone)), ("corrupt_mask", str(truncated))}
    text = report.to_text()
    assert "(1, 2, 3) 1 px" in text and "no row for frame 0 camera 0" in text and "unknown category 'Bus'" in text
