"""BDD100K reader: class lists, det_20 JSON, COCO conversion and the partial-label dataset."""
from __future__ import annotations

import contextlib
import io
import json
from collections import Counter

import numpy as np
import pytest
import torch

from mtwork.data.batch import collate
from mtwork.data.bdd100k import (
    DET_CATEGORIES,
    DET_TO_SEMSEG,
    DRIVABLE_CLASSES,
    SEMSEG_CLASSES,
    BDD100KDataset,
    IGNORED_MAPPING,
    DatasetError,
    DetBox,
    decode_drivable,
    depth_to_metres,
    det_frames_to_coco,
    encode_drivable,
    load_det_frames,
    metres_to_depth,
)
from mtwork.data.transforms import EvalTransform


def test_class_lists_follow_the_official_order():
    assert DET_CATEGORIES[0] == "pedestrian" and DET_CATEGORIES[2] == "car" and DET_CATEGORIES[9] == "traffic sign"
    assert len(DET_CATEGORIES) == 10 and len(SEMSEG_CLASSES) == 19 and SEMSEG_CLASSES[13] == "car"
    assert DRIVABLE_CLASSES == ("background", "direct", "alternative")
    # pedestrian -> person (11), rider -> rider (12), traffic light -> 6
    assert DET_TO_SEMSEG[0] == 11 and DET_TO_SEMSEG[1] == 12 and DET_TO_SEMSEG[8] == 6


def test_drivable_disk_ids_map_to_training_ids_and_back():
    disk = np.array([0, 1, 2, 7], np.uint8)  # direct, alternative, background, junk
    assert decode_drivable(disk).tolist() == [1, 2, 0, 255]
    assert encode_drivable(np.array([0, 1, 2], np.uint8)).tolist() == [2, 0, 1]


def test_depth_unit_is_one_256th_metre():
    stored = metres_to_depth(np.array([1.5, 0.0, -1.0, np.inf, 300.0], np.float32))
    assert stored.dtype == np.uint16
    assert stored.tolist() == [384, 0, 0, 0, 65535]
    assert depth_to_metres(np.array([384], np.uint16)).tolist() == [1.5]


def test_load_det_frames_keeps_empty_frames_and_ignore_regions_on_request(bdd_mini_root):
    skipped, ignored = Counter(), Counter()
    frames = load_det_frames(bdd_mini_root / "labels/det_20/det_train.json", skipped, ignored=ignored)
    assert sorted(frames) == ["a.jpg", "b.jpg", "big.jpg", "c.jpg", "ghost.jpg"]
    # Scalabel's inclusive x2/y2 become pixel edges (+1); objects only by default.
    assert frames["a.jpg"] == [(2, 4.0, 6.0, 14.0, 16.0, False), (8, 20.0, 2.0, 24.0, 10.0, False)]
    assert frames["b.jpg"] == []  # no "labels" key: labelled, no objects
    assert skipped == {} and ignored == {"other vehicle": 1}
    with_ignore = load_det_frames(bdd_mini_root / "labels/det_20/det_train.json", ignore_regions=True)
    # "other vehicle" (0,0)-(5,5) is an ignore region of car (index 2)
    assert with_ignore["a.jpg"][1] == DetBox(2, 0.0, 0.0, 6.0, 6.0, ignore=True)


def test_official_category_mapping_and_crowd(tmp_path):
    """bdd100k configs/det.toml: name_mapping renames, ignored_mapping and crowd make ignore regions."""
    box = {"x1": 0, "y1": 0, "x2": 9, "y2": 9}
    labels = [
        {"category": "van", "box2d": box},  # -> car
        {"category": "bike", "box2d": box},  # -> bicycle
        {"category": "person", "box2d": box},  # -> pedestrian
        {"category": "other person", "box2d": box},  # ignore region of pedestrian
        {"category": "trailer", "box2d": box},  # ignore region of truck
        {"category": "bus", "attributes": {"crowd": True}, "box2d": box},  # crowd: ignore region of bus
        {"category": "lane", "poly2d": []},  # not a detection category: skipped
    ]
    path = tmp_path / "det_val.json"
    path.write_text(json.dumps([{"name": "x.jpg", "labels": labels}]))
    skipped, ignored = Counter(), Counter()
    boxes = load_det_frames(path, skipped, ignore_regions=True, ignored=ignored)["x.jpg"]
    index = {name: i for i, name in enumerate(DET_CATEGORIES)}
    assert [(b.label, b.ignore) for b in boxes] == [
        (index["car"], False), (index["bicycle"], False), (index["pedestrian"], False),
        (index["pedestrian"], True), (index["truck"], True), (index["bus"], True)]
    assert skipped == {"lane": 1} and ignored == {"other person": 1, "trailer": 1, "crowd bus": 1}
    assert IGNORED_MAPPING == {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}
    gt = det_frames_to_coco({"x.jpg": boxes}, {"x.jpg": (720, 1280)})
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 0, 1, 1, 1]
    assert gt["annotations"][0]["bbox"] == [0.0, 0.0, 10.0, 10.0]  # the toolkit's x2 - x1 + 1


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        ('{"name": "a.jpg"}', "expected a JSON list"),
        ('[{"labels": []}]', "missing key 'name'"),
        ('[{"name": "a.jpg", "labels": [{"box2d": {}}]}]', "missing key 'category'"),
        ('[{"name": "a.jpg", "labels": [{"category": "car"}]}]', "missing key 'box2d'"),
        ('[{"name": "a.jpg", "labels": [{"category": "car", "box2d": {"x1": 1, "y1": 2, "x2": "x"}}]}]',
         "numeric x1, y1, x2, y2"),
    ],
)
def test_load_det_frames_errors_name_the_file(tmp_path, content, fragment):
    path = tmp_path / "det_train.json"
    path.write_text(content)
    with pytest.raises(DatasetError) as err:
        load_det_frames(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_det_frames_to_coco_loads_in_pycocotools_and_scores_itself_perfectly():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    frames = {"x.jpg": [(2, 10.0, 20.0, 30.0, 40.0), (0, 0.0, 0.0, 5.0, 12.0)], "y.jpg": []}
    gt = det_frames_to_coco(frames, {"x.jpg": (64, 112), "y.jpg": (64, 112)})
    assert [c["id"] for c in gt["categories"]] == list(range(1, 11))
    car = gt["annotations"][0]
    assert car["category_id"] == 3 and car["bbox"] == [10.0, 20.0, 20.0, 20.0] and car["area"] == 400.0
    assert gt["annotations"][1]["bbox"] == [0.0, 0.0, 5.0, 12.0] and gt["annotations"][1]["iscrowd"] == 0
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        dets = coco.loadRes([{**a, "score": 1.0} for a in gt["annotations"]])
        ev = COCOeval(coco, dets, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert len(coco.getImgIds()) == 2 and len(coco.getAnnIds()) == 2
    assert ev.stats[0] == pytest.approx(1.0)
    with pytest.raises(KeyError, match="y.jpg"):
        det_frames_to_coco(frames, {"x.jpg": (64, 112)})


def test_dataset_merges_image_sets_and_labels(bdd_mini_root):
    ds = BDD100KDataset(bdd_mini_root, "train")
    # e.jpg has no label of any requested task; ghost.jpg has no image.
    assert ds.names == ["a.jpg", "b.jpg", "big.jpg", "c.jpg", "d.jpg"]
    assert ds.labeled_counts() == {"semseg": 2, "drivable": 2, "det": 4}
    assert ds.skipped_categories == {} and ds.ignore_regions == {"other vehicle": 1}

    a = ds[0]
    assert a["image"].shape == (32, 48, 3) and a["image"].dtype == np.uint8 and a["orig_size"] == (32, 48)
    assert "semseg" not in a
    np.testing.assert_array_equal(a["det"]["boxes"], [[4, 6, 14, 16], [20, 2, 24, 10]])
    assert a["det"]["labels"].tolist() == [2, 8]
    # the "other vehicle" is no training positive: an ignore region of car beside the boxes
    np.testing.assert_array_equal(a["det"]["ignore_boxes"], [[0, 0, 6, 6]])
    assert a["det"]["ignore_labels"].tolist() == [2]
    # on disk: direct 0 / alternative 1 / background 2 -> training ids 1 / 2 / 0
    assert np.bincount(a["drivable"].ravel(), minlength=3).tolist() == [960, 288, 288]
    assert a["drivable"][25, 5] == 1 and a["drivable"][25, 40] == 2 and a["drivable"][0, 0] == 0

    b = ds[1]
    assert b["det"]["boxes"].shape == (0, 4) and b["det"]["labels"].shape == (0,)
    big = ds[2]  # the real BDD100K image size goes through the same path
    assert big["orig_size"] == (720, 1280) and big["det"]["boxes"].tolist() == [[100, 200, 500, 400]]
    c = ds[3]  # in both image sets: carries det, drivable and semseg
    assert set(c) >= {"det", "drivable", "semseg"}
    assert np.bincount(c["semseg"].ravel(), minlength=11)[[0, 10]].tolist() == [1056, 480]
    d = ds[4]
    assert set(d) == {"image", "name", "orig_size", "semseg"}
    assert ds.tasks_of(4) == ("semseg",) and ds.image_size(2) == (720, 1280)


def test_dataset_loads_only_requested_tasks(bdd_mini_root):
    ds = BDD100KDataset(bdd_mini_root, "train", tasks=("semseg",))
    assert ds.names == ["c.jpg", "d.jpg"]
    assert "det" not in ds[0] and "drivable" not in ds[0]
    ds = BDD100KDataset(bdd_mini_root, "train", tasks=("det",))
    assert ds.names == ["a.jpg", "b.jpg", "big.jpg", "c.jpg"]
    gt = ds.coco_ground_truth()
    assert [im["file_name"] for im in gt["images"]] == ds.names and len(gt["annotations"]) == 5
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 1  # the "other vehicle"
    with pytest.raises(ValueError, match="lanes"):
        BDD100KDataset(bdd_mini_root, "train", tasks=("lanes",))


def test_dataset_errors_name_the_file(bdd_mini_root):
    (bdd_mini_root / "images/100k/train/a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    ds = BDD100KDataset(bdd_mini_root, "train")
    with pytest.raises(DatasetError, match="a.jpg"):
        ds[0]
    mask = bdd_mini_root / "labels/sem_seg/masks/train/d.png"
    np.zeros((4, 4), np.uint8).tofile(mask)  # not a PNG any more
    with pytest.raises(DatasetError, match="d.png"):
        ds[4]
    with pytest.raises(DatasetError, match="val"):
        BDD100KDataset(bdd_mini_root, "val")


def test_dataset_rejects_mask_of_wrong_size_or_unknown_ids(bdd_mini_root):
    from PIL import Image

    Image.fromarray(np.zeros((16, 48), np.uint8)).save(bdd_mini_root / "labels/drivable/masks/train/c.png")
    semseg = np.zeros((32, 48), np.uint8)
    semseg[0, 0] = 77
    Image.fromarray(semseg).save(bdd_mini_root / "labels/sem_seg/masks/train/d.png")
    ds = BDD100KDataset(bdd_mini_root, "train")
    with pytest.raises(DatasetError, match=r"c\.png.*16x48.*32x48"):
        ds[3]
    with pytest.raises(DatasetError, match=r"d\.png.*\[77\]"):
        ds[4]


def test_dataset_reports_missing_label_directory(bdd_mini_root):
    import shutil

    shutil.rmtree(bdd_mini_root / "labels/drivable")
    with pytest.raises(DatasetError, match="drivable"):
        BDD100KDataset(bdd_mini_root, "train")
    assert len(BDD100KDataset(bdd_mini_root, "train", tasks=("det", "semseg"))) == 5


def test_dataset_reads_synthdrive(synthdrive_tiny):
    meta = json.loads((synthdrive_tiny / "synthdrive.json").read_text())
    ds = BDD100KDataset(synthdrive_tiny, "train", tasks=("semseg", "drivable", "det", "depth"))
    # 6 det-set + 4 seg-set images, 2 of them shared
    assert len(ds) == 8 and meta["shared_images"]["train"] == 2
    assert ds.labeled_counts() == {"semseg": 4, "drivable": 6, "det": 6, "depth": 8}
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape == (64, 112, 3)
        if "drivable" in sample:
            assert set(np.unique(sample["drivable"])) <= {0, 1, 2}
        if "semseg" in sample:
            assert set(np.unique(sample["semseg"])) <= set(range(19)) | {255}
        # depth is metres: sky has none, everything else lies within the generator's 140 m
        depth = sample["depth"]
        assert depth.dtype == np.float32 and 0.0 <= depth.min() and depth.max() <= 140.0


def test_dataset_with_eval_transform_collates(synthdrive_tiny):
    ds = BDD100KDataset(synthdrive_tiny, "val", transform=EvalTransform((32, 64)))
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (len(ds), 3, 32, 64)
    assert batch["semseg"].shape[1:] == (64, 112) and batch["orig_size"].tolist()[0] == [64, 112]
    assert batch["labeled"]["det"].sum().item() == 3 and batch["labeled"]["semseg"].sum().item() == 2
    assert all(t["boxes"].dtype == torch.float32 for t in batch["det"])


def test_synthdrive_seg_set_carries_semseg_depth_normals_edges(synthdrive_tiny):
    from mtwork.data.transforms import TrainTransform

    tasks = ("semseg", "depth", "normals", "edges")
    ds = BDD100KDataset(synthdrive_tiny, "val", tasks=tasks)
    # 3 det-set + 2 seg-set images, 1 shared: depth, camera and edges exist for every image
    assert ds.labeled_counts() == {"semseg": 2, "depth": 4, "normals": 4, "edges": 4}
    seg = [i for i in range(len(ds)) if "semseg" in ds.tasks_of(i)]
    assert all(ds.tasks_of(i) == tasks for i in seg)
    sample = ds[seg[0]]
    assert sample["depth"].shape == sample["semseg"].shape == sample["edges"].shape == (64, 112)
    assert sample["normals"].shape == (64, 112, 3) and sample["camera"].shape == (4,)
    assert sample["normals"].dtype == np.float32 and sample["edges"].dtype == np.float32
    length = np.linalg.norm(sample["normals"], axis=-1)
    valid = length > 0
    np.testing.assert_allclose(length[valid], 1.0, atol=1e-5)
    assert not valid[sample["depth"] == 0].any()  # no normal where there is no depth
    assert 0.0 <= sample["edges"].min() and sample["edges"].max() <= 1.0 and sample["edges"].max() > 0.1
    # transformed and collated: every key in the network-input frame, camera rows per sample
    ds.transform = TrainTransform((48, 96), generator=torch.Generator().manual_seed(0))
    batch = collate([ds[i] for i in range(len(ds))])
    n = len(ds)
    assert batch["depth"].shape == batch["edges"].shape == batch["semseg"].shape == (n, 48, 96)
    assert batch["normals"].shape == (n, 3, 48, 96) and batch["camera"].shape == (n, 4)
    assert batch["labeled"]["normals"].all() and batch["labeled"]["semseg"].sum() == 2
    # normals only: the depth PNG is still read (normals come from it) but no depth key appears
    only = BDD100KDataset(synthdrive_tiny, "val", tasks=("normals",))[0]
    assert "normals" in only and "depth" not in only and "edges" not in only


def test_missing_or_broken_camera_file_is_named(synthdrive_tiny, tmp_path):
    import shutil

    root = tmp_path / "sd"
    shutil.copytree(synthdrive_tiny, root)
    camera = sorted((root / "labels/camera/val").glob("*.json"))[0]
    good = camera.read_text()
    camera.write_text(json.dumps({"intrinsic": {"fx": 50.0, "fy": 50.0, "u0": 10.0}}))
    ds = BDD100KDataset(root, "val", tasks=("depth", "normals"))
    index = ds.names.index(next(n for n in ds.names if n.startswith(camera.stem)))
    with pytest.raises(DatasetError, match=rf"{camera.name}.*intrinsic\.v0"):
        ds[index]
    camera.write_text(good)
    assert "normals" in ds[index]
    camera.unlink()
    with pytest.raises(DatasetError, match=rf"{camera.name}: camera file not found"):
        BDD100KDataset(root, "val", tasks=("depth", "normals"))
    # without normals the camera is not needed
    assert len(BDD100KDataset(root, "val", tasks=("depth", "edges"))) == 4


# ---------------------------------------------------------------------------------------------
# attribute domains
# ---------------------------------------------------------------------------------------------


def _attribute_fixture(root):
    """bdd_mini_root plus: det_val.json naming the 10k train image d.jpg (night, the 100k set's val
    split), and an attribute frame list giving c.jpg (whose det frame has none) and e.jpg."""
    (root / "labels/det_20/det_val.json").write_text(json.dumps([
        {"name": "d.jpg", "attributes": {"weather": "rainy", "timeofday": "night", "scene": "highway"}},
    ]))
    (root / "labels/attributes").mkdir(parents=True)
    (root / "labels/attributes/attributes_train.json").write_text(json.dumps([
        {"name": "c.jpg", "attributes": {"weather": "clear", "timeofday": "daytime", "scene": "residential"}},
        # a.jpg's det frame says city street and wins: first source per key
        {"name": "a.jpg", "attributes": {"weather": "snowy", "timeofday": "night", "scene": "tunnel"}},
    ]))


def test_attribute_filter_applies_to_every_task(bdd_mini_root):
    _attribute_fixture(bdd_mini_root)
    day = BDD100KDataset(bdd_mini_root, "train", attributes={"timeofday": "daytime"})
    # a (det frame), c (frame list); b has empty attributes, big none; d is night
    assert day.names == ["a.jpg", "c.jpg"]
    assert day.filter_counts == {"kept": 2, "other_attributes": 1, "unattributed": 2}
    assert day.attributes_of(0) == {"weather": "clear", "timeofday": "daytime", "scene": "city street"}
    assert day.labeled_counts() == {"semseg": 1, "drivable": 2, "det": 2}
    # the semseg-only image d gets the attributes of its same-named det frame in the other split
    night = BDD100KDataset(bdd_mini_root, "train", tasks=("semseg",), attributes={"timeofday": ["night", "dawn/dusk"]})
    assert night.names == ["d.jpg"] and night.attributes_of(0)["weather"] == "rainy"
    both = BDD100KDataset(bdd_mini_root, "train", attributes={"timeofday": "daytime", "scene": ["residential"]})
    assert both.names == ["c.jpg"]
    # no filter: everything, and no attribute file is read
    assert len(BDD100KDataset(bdd_mini_root, "train")) == 5


def test_attribute_filter_errors_name_key_and_value(bdd_mini_root):
    with pytest.raises(ValueError, match="'season'"):
        BDD100KDataset(bdd_mini_root, "train", attributes={"season": "summer"})
    with pytest.raises(ValueError, match=r"timeofday.*'evening'.*dawn/dusk"):
        BDD100KDataset(bdd_mini_root, "train", attributes={"timeofday": "evening"})
    with pytest.raises(ValueError, match="non-empty"):
        BDD100KDataset(bdd_mini_root, "train", attributes={"weather": []})
    with pytest.raises(DatasetError, match=r"foggy.*1 with other values, 4 without"):
        BDD100KDataset(bdd_mini_root, "train", attributes={"weather": "foggy"})


def test_synthdrive_domains_are_attribute_domains(synthdrive_tiny):
    """Every SynthDrive image, segmentation-only ones included, carries its domain's attributes."""
    ds = BDD100KDataset(synthdrive_tiny, "val", tasks=("semseg", "drivable", "det"),
                        attributes={"weather": "clear", "timeofday": "daytime"})
    assert ds.filter_counts == {"kept": 4, "other_attributes": 0, "unattributed": 0}
    assert all(ds.attributes_of(i)["scene"] in ("city street", "residential", "highway") for i in range(len(ds)))
    with pytest.raises(DatasetError, match="night"):
        BDD100KDataset(synthdrive_tiny, "val", attributes={"timeofday": "night"})


def _jpeg(path, image, quality=95):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=quality)
    return path


def test_image_file_decodes_at_the_largest_reduction_that_holds_the_target(tmp_path):
    from PIL import Image

    from mtwork.data.bdd100k import ImageFile

    image = np.zeros((64, 112, 3), np.uint8)
    image[16:48, 32:96] = 255
    jpeg = ImageFile(_jpeg(tmp_path / "a.jpg", image))
    assert jpeg.size == (64, 112) and jpeg.shape == (64, 112, 3)
    # 64x112 halves to 32x56, quarters to 16x28, eighths to 8x14: the smallest one still >= the target
    assert [jpeg.reduction(s) for s in [(32, 56), (30, 50), (16, 28), (9, 14), (8, 14), (33, 56), (32, 57)]] == [2, 2, 4, 4, 8, 1, 1]
    assert jpeg.reduction(None) == 1 and jpeg.decode().shape == (64, 112, 3)
    half = jpeg.decode((32, 56))
    assert half.shape == (32, 56, 3) and half.dtype == np.uint8
    # the reduced decode spans the whole frame: the white box lands on half its pixel edges
    rows, cols = np.nonzero(half[..., 0] > 127)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (8, 24, 16, 48)
    np.testing.assert_array_equal(np.asarray(jpeg), jpeg.decode())  # array-taking code sees the full image
    # sides not divisible by the reduction, or another format: always full size
    assert ImageFile(_jpeg(tmp_path / "odd.jpg", image[:63])).reduction((8, 14)) == 1
    Image.fromarray(image).save(tmp_path / "b.png")
    assert ImageFile(tmp_path / "b.png").reduction((8, 14)) == 1


def test_image_file_errors_name_the_file(tmp_path):
    from mtwork.data.bdd100k import ImageFile

    with pytest.raises(DatasetError, match="missing.jpg: image file not found"):
        ImageFile(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="junk.jpg"):
        ImageFile(tmp_path / "junk.jpg")
    data = _jpeg(tmp_path / "cut.jpg", np.full((64, 112, 3), 90, np.uint8)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # header intact, scan data cut
    with pytest.raises(DatasetError, match="cut.jpg"):
        ImageFile(tmp_path / "cut.jpg").decode((32, 56))


def test_jpeg_decoder_gives_the_pixels_pil_gives(tmp_path):
    """JPEGs are decoded by libjpeg-turbo through simplejpeg (mtwork.data.codecs); the reference is PIL
    on the same files (RGB and greyscale JPEGs, 4:2:0 and 4:4:4), at full size and through PIL's
    draft mode at every reduction."""
    from PIL import Image

    from mtwork.data.bdd100k import JPEG_REDUCTIONS, ImageFile, read_image

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (9, 15, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))  # 72x120
    noisy = rng.integers(0, 256, (72, 120, 3), dtype=np.uint8)
    cases = {"smooth.jpg": (smooth, {}), "noisy444.jpg": (noisy, {"subsampling": 0}), "grey.jpg": (smooth[..., 0], {})}
    for name, (array, options) in cases.items():
        path = tmp_path / name
        Image.fromarray(array).save(path, quality=90, **options)
        for r in (1, *JPEG_REDUCTIONS):
            with Image.open(path) as img:
                if r > 1:
                    img.draft("RGB", (120 // r, 72 // r))
                expected = np.asarray(img.convert("RGB"))
            decoded = ImageFile(path).decode((72 // r, 120 // r))
            assert decoded.shape == (72 // r, 120 // r, 3) and decoded.dtype == np.uint8, (name, r)
            np.testing.assert_array_equal(decoded, expected, err_msg=f"{name} at 1/{r}")
        full = read_image(path)
        assert full.flags.writeable and full.shape == (72, 120, 3)


def test_jpeg_decoder_refuses_an_inexact_reduction():
    from mtwork.data.codecs import decode_jpeg_rgb

    with pytest.raises(ValueError, match="reduction 2 does not divide the image size 63x112"):
        decode_jpeg_rgb(b"", (63, 112), 2)
    with pytest.raises(ValueError, match="reduction 3"):
        decode_jpeg_rgb(b"", (72, 120), 3)


def test_full_size_jpeg_errors_name_the_file(tmp_path):
    from mtwork.data.bdd100k import ImageFile, read_image

    data = _jpeg(tmp_path / "full.jpg", np.random.default_rng(0).integers(0, 256, (64, 112, 3), dtype=np.uint8)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])  # header intact, scan data cut
    with pytest.raises(DatasetError, match="cut.jpg: unreadable or corrupt image"):
        ImageFile(tmp_path / "cut.jpg").decode()
    with pytest.raises(DatasetError, match="cut.jpg: unreadable or corrupt image"):
        read_image(tmp_path / "cut.jpg")
    with pytest.raises(DatasetError, match="gone.jpg: image file not found"):
        read_image(tmp_path / "gone.jpg")


def test_train_transform_reads_the_encoded_image_like_the_decoded_one(synthdrive_tiny):
    from mtwork.data.bdd100k import ImageFile
    from mtwork.data.transforms import TrainTransform

    # 64x112 images to 24x48: every draw (scale 0.3-0.47) takes the 1/2 JPEG decode
    ds = BDD100KDataset(synthdrive_tiny, "train", transform=TrainTransform((24, 48)))
    assert isinstance(ds.raw_sample(0, encoded_image=True)["image"], ImageFile)
    assert isinstance(BDD100KDataset(synthdrive_tiny, "train", tasks=("semseg", "edges")).raw_sample(0, encoded_image=True)["image"], np.ndarray)
    for i in range(len(ds)):
        fast = ds.get(i, generator=torch.Generator().manual_seed(i))
        full = ds.transform(ds.raw_sample(i), generator=torch.Generator().manual_seed(i))
        assert fast.keys() == full.keys() and fast["image_box"] == full["image_box"]
        for key in ("semseg", "drivable"):
            if key in full:
                assert torch.equal(fast[key], full[key])
        if "det" in full:
            assert torch.equal(fast["det"]["boxes"], full["det"]["boxes"])
        # the same frame, decoded by libjpeg's DCT scaling instead of a full decode and a triangle
        # filter: a little sharper, 1-3 grey levels apart on average on these images
        diff = (fast["image"].float() - full["image"].float()).abs()
        assert fast["image"].dtype == torch.uint8 and diff.mean() < 4.0
    assert ds[0]["image"].shape == (3, 24, 48)  # __getitem__ takes the same path


def test_collate_leaves_out_dense_labels_no_sample_carries(synthdrive_tiny):
    from mtwork.data.batch import batch_to_device
    from mtwork.data.transforms import TrainTransform

    ds = BDD100KDataset(synthdrive_tiny, "train", tasks=("semseg", "drivable", "det"),
                        transform=TrainTransform((48, 96), generator=torch.Generator().manual_seed(0)))
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].dtype == torch.uint8 and batch["semseg"].dtype == torch.uint8
    assert batch["image_box"].shape == (4, 4)
    for task in ("depth", "normals", "edges"):
        assert task not in batch and not batch["labeled"][task].any()
    on_device = batch_to_device(batch, torch.device("cpu"))
    assert on_device["image"].dtype == torch.float32 and on_device["drivable"].dtype == torch.int64
    # after batch_to_device every dense key is there, invalid everywhere (made on the device)
    assert (on_device["depth"] == 0).all() and on_device["depth"].shape == (4, 48, 96)
    assert (on_device["edges"] == -1).all() and on_device["normals"].shape == (4, 3, 48, 96)


def test_mask_reader_gives_the_values_pil_gives(tmp_path):
    """8-bit greyscale masks go through libspng (mtwork.data.codecs), every other kind through PIL; the
    reference is PIL on the same files: random ids, a tRNS chunk, several IDAT chunks, palette indices,
    16-bit depth."""
    from PIL import Image, PngImagePlugin

    from mtwork.data.bdd100k import read_mask
    from mtwork.data.codecs import decode_grey8_png, png_header

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    files = {
        "grey.png": (Image.fromarray(ids), {}),
        "grey_trns.png": (Image.fromarray(ids), {"transparency": 5}),
        "palette.png": (Image.fromarray(ids).convert("P", palette=Image.Palette.ADAPTIVE, colors=7), {}),
        "depth16.png": (Image.fromarray(ids.astype(np.uint16) * 251 + 7), {}),
    }
    old_block = PngImagePlugin.ImageFile.MAXBLOCK
    for name, (image, options) in files.items():
        PngImagePlugin.ImageFile.MAXBLOCK = 256 if name == "grey.png" else old_block  # many IDAT chunks
        try:
            image.save(tmp_path / name, **options)
        finally:
            PngImagePlugin.ImageFile.MAXBLOCK = old_block
        data = (tmp_path / name).read_bytes()
        with Image.open(tmp_path / name) as img:
            expected = np.asarray(img)
        mask = read_mask(tmp_path / name)
        assert mask.dtype == expected.dtype and mask.shape == (37, 53), name
        np.testing.assert_array_equal(mask, expected, err_msg=name)
        fast = decode_grey8_png(data)
        # only 8-bit greyscale takes the libspng path: pyspng turns palettes into RGB, 16 bits into grey+alpha
        assert (fast is not None) == name.startswith("grey"), name
        assert png_header(data)[:2] == (37, 53)
    assert decode_grey8_png(b"not a png") is None and png_header(b"\x89PNG") is None


def test_mask_errors_name_the_file(tmp_path):
    from PIL import Image

    from mtwork.data.bdd100k import read_mask

    Image.fromarray(np.arange(64 * 112, dtype=np.uint32).reshape(64, 112).astype(np.uint8)).save(tmp_path / "m.png")
    data = (tmp_path / "m.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) - 40])  # IDAT cut short
    corrupt = bytearray(data)
    corrupt[60:70] = b"\xff" * 10  # inside the compressed pixels
    (tmp_path / "corrupt.png").write_bytes(bytes(corrupt))
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    for name, what in (("cut.png", "unreadable or corrupt mask"), ("corrupt.png", "unreadable or corrupt mask"),
                       ("empty.png", "unreadable or corrupt mask"), ("rgb.png", "expected a single-channel mask"),
                       ("gone.png", "mask file not found")):
        with pytest.raises(DatasetError, match=f"{name}: {what}"):
            read_mask(tmp_path / name)
