"""Cityscapes reader on a fixture in the official layout: trainIds by the official table, metric depth
from disparity + camera JSON (worked out by hand), normals, and the data check naming broken files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

import dense_layouts as dl
from mtwork.data.bdd100k import DatasetError
from mtwork.data.cityscapes import LABELS, NATIVE_CLASSES, disparity_to_depth
from mtwork.data.check import check_dataset
from mtwork.data.label_spaces import get_label_space
from mtwork.data.registry import create_dataset
from mtwork.tasks.dense_labels import sobel_edges

B, FX = 0.22, 2262.0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return dl.write_cityscapes(tmp_path_factory.mktemp("cs") / "cityscapes")


def test_disparity_to_depth_by_hand():
    # p = 257 -> d = (257 - 1) / 256 = 1 px -> z = 0.22 * 2262 / 1; p = 513 -> d = 2 px; p = 0, 1 invalid
    z = disparity_to_depth(np.array([257, 513, 0, 1], np.uint16), B, FX)
    np.testing.assert_allclose(z, [0.22 * 2262 / 1.0, 0.22 * 2262 / 2.0, 0.0, 0.0], rtol=1e-6)
    assert z.dtype == np.float32


def test_semseg_is_the_official_train_id(root):
    sample = create_dataset("cityscapes", root, "train")[0]
    seg = sample["semseg"]
    # road 7 -> 0, sidewalk 8 -> 1, sky 23 -> 10, car 26 -> 13
    assert seg[0].tolist() == [0, 0, 1, 1, 10, 10, 13, 13]
    assert seg[1].tolist() == [255] * 8  # ids 0..6 and parking (9) are void
    assert seg[2, :4].tolist() == [11, 12, 14, 18]  # person, rider, truck, bicycle
    assert (seg[3:] == 0).all()


def test_label_table_matches_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    reference = {l.id: (l.name, 255 if l.trainId in (-1, 255) else l.trainId) for l in labels.labels if l.id >= 0}
    ours = {l.id: (l.name, l.train_id) for l in LABELS}
    assert ours == reference
    lut = get_label_space("cityscapes19").lookup_table("cityscapes", NATIVE_CLASSES)
    assert {i: int(lut[i]) for i in reference} == {i: t for i, (_, t) in reference.items()}


def test_other_label_spaces(root):
    seg = create_dataset("cityscapes", root, "train", label_space="synthetic8")[0]["semseg"]
    # synthetic8 = road, building, pole, traffic light, traffic sign, vegetation, sky, car
    assert seg[0].tolist() == [0, 0, 255, 255, 6, 6, 7, 7]
    seg16 = create_dataset("cityscapes", root, "train", label_space="synthia16")[0]["semseg"]
    assert seg16[2, :4].tolist() == [10, 11, 255, 15]  # person, rider, truck (not in synthia16), bicycle


def test_depth_normals_camera_edges(root):
    sample = create_dataset("cityscapes", root, "train")[0]
    depth = sample["depth"]
    np.testing.assert_allclose(depth[0, :3], [0.0, 0.0, 0.22 * 2262 / 2.0], rtol=1e-6)
    np.testing.assert_allclose(depth[1:], 0.22 * 2262 / 1.0, rtol=1e-6)
    np.testing.assert_allclose(sample["camera"], [2262.0, 2265.0, 3.5, 2.5])
    # a constant depth is a plane facing the camera: normal (0, 0, -1) wherever the 4-neighbours are valid
    np.testing.assert_allclose(sample["normals"][2:5, 1:7], np.broadcast_to([0.0, 0.0, -1.0], (3, 6, 3)), atol=1e-6)
    assert (sample["normals"][0] == 0).all()  # image border
    np.testing.assert_array_equal(sample["edges"], sobel_edges(sample["image"]))
    assert sample["name"] == "aachen/aachen_000000_000019"


def test_missing_and_broken_files_are_named(root, tmp_path):
    broken = tmp_path / "cityscapes"
    shutil.copytree(root, broken)
    gone = broken / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png"
    gone.unlink()
    with pytest.raises(DatasetError, match="bochum_000000_000313_gtFine_labelIds.png"):
        create_dataset("cityscapes", broken, "train")
    relaxed = create_dataset("cityscapes", broken, "train", strict=False)
    assert relaxed.labeled_counts()["semseg"] == 1 and relaxed.labeled_counts()["depth"] == 2
    assert create_dataset("cityscapes", broken, "train", tasks=("depth",)).labeled_counts() == {"depth": 2}

    unknown = broken / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"
    ids = dl.cityscapes_label_ids()
    ids[5, 5] = 34
    Image.fromarray(ids).save(unknown)
    camera = broken / "camera/train/aachen/aachen_000000_000019_camera.json"
    data = json.loads(camera.read_text())
    del data["extrinsic"]["baseline"]
    camera.write_text(json.dumps(data))
    wrong_size = broken / "disparity/val/frankfurt/frankfurt_000000_000294_disparity.png"
    Image.fromarray(np.full((3, 8), 257, np.uint16)).save(wrong_size)
    orphan = broken / "gtFine/val/frankfurt/frankfurt_000000_000999_gtFine_labelIds.png"
    Image.fromarray(ids).save(orphan)
    # the test split is checked when the copy has it (the official packages do)
    dl.save_image(broken / "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png", dl.gradient_rgb(6, 8, 0))
    dl.save_image(broken / "gtFine/test/berlin/berlin_000000_000019_gtFine_labelIds.png", np.zeros((6, 8), np.uint8))
    dl.save_image(broken / "disparity/test/berlin/berlin_000000_000019_disparity.png", dl.cityscapes_disparity())
    no_camera = broken / "camera/test/berlin/berlin_000000_000019_camera.json"
    no_camera.parent.mkdir(parents=True)

    report = check_dataset("cityscapes", broken, progress=False)
    found = {(p.kind, p.path) for p in report.problems}
    assert found == {("missing", str(gone)), ("unknown_id", str(unknown)), ("bad_camera", str(camera)),
                     ("size_mismatch", str(wrong_size)), ("label_without_image", str(orphan)),
                     ("missing", str(no_camera))}
    assert report.images == {"train": 2, "val": 1, "test": 1}
    text = report.to_text()
    assert "34 (1 px)" in text and "extrinsic.baseline" in text and "is 3x8" in text
