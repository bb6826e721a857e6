"""Data check: clean on a fresh SynthDrive, finds injected problems naming the file, counts right."""
from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from mtwork.data import check as chk
from mtwork.data.check import check_bdd100k, run_check_cli


def test_fresh_synthdrive_is_clean_and_counted(synthdrive_tiny):
    report = check_bdd100k(synthdrive_tiny, progress=False)
    assert report.ok, report.to_text()
    assert report.images == {"train": {"100k": 6, "10k": 4, "total": 8}, "val": {"100k": 3, "10k": 2, "total": 4}}
    assert report.labeled["train"] == {"det": 6, "semseg": 4, "drivable": 6, "depth": 8, "all_three": 2}
    # Object counts agree with the JSON itself; pixel counts cover every mask pixel (64x112 each).
    frames = json.loads((synthdrive_tiny / "labels/det_20/det_train.json").read_text())
    n_boxes = sum(lab["category"] != "trailer" for f in frames for lab in f.get("labels", []))
    assert sum(report.objects["train"].values()) == n_boxes
    assert sum(report.semseg_pixels["train"].values()) == 4 * 64 * 112
    assert sum(report.drivable_pixels["train"].values()) == 6 * 64 * 112
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True
    assert report.to_text().startswith(f"BDD100K check of {synthdrive_tiny}: OK")
    # the trailers are ignore regions of truck; every image (segmentation-only ones too) is clear daytime
    n_trailers = sum(lab["category"] == "trailer" for f in frames for lab in f.get("labels", []))
    assert report.ignore_regions["train"] == ({"trailer": n_trailers} if n_trailers else {})
    assert report.attributes["train"]["weather"] == {"clear": 8} and report.attributes["val"]["timeofday"] == {"daytime": 4}
    assert sum(report.attributes["train"]["scene"].values()) == 8
    assert "timeofday (images)" in report.to_text() and "daytime" in report.to_text()


def test_hand_built_counts(bdd_mini_root):
    report = check_bdd100k(bdd_mini_root, splits=("train",), progress=False)
    assert report.images["train"] == {"100k": 5, "10k": 2, "total": 6}
    assert report.labeled["train"] == {"det": 4, "semseg": 2, "drivable": 2, "depth": 0, "all_three": 1}
    assert report.objects["train"]["car"] == 1 and report.objects["train"]["traffic light"] == 1
    assert report.objects["train"]["truck"] == 1 and report.objects["train"]["pedestrian"] == 1
    assert report.skipped_categories["train"] == {} and report.ignore_regions["train"] == {"other vehicle": 1}
    # attributes: a.jpg's det frame only; b's are empty; c, big, d, e have none
    assert report.attributes["train"]["weather"] == {"clear": 1, chk.NO_ATTRIBUTE: 5}
    assert report.attributes["train"]["scene"] == {"city street": 1, chk.NO_ATTRIBUTE: 5}
    assert report.drivable_pixels["train"] == {"background": 960 + 1536, "direct": 288, "alternative": 288}
    semseg = report.semseg_pixels["train"]
    assert (semseg["road"], semseg["sky"], semseg["car"], semseg["ignore"]) == (1056, 480, 16, 1520)
    # The only problem: the frame naming an image that is not there.
    assert [(p.kind, p.path) for p in report.problems] == [
        (chk.FRAME_WITHOUT_IMAGE, str(bdd_mini_root / "labels/det_20/det_train.json"))
    ]
    assert "ghost.jpg" in report.problems[0].message


def test_injected_problems_are_found_and_name_their_file(synthdrive_tiny, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(synthdrive_tiny, root)
    train_det = sorted((root / "images/100k/train").iterdir())
    seg_images = sorted((root / "images/10k/train").iterdir())
    # 1. a truncated JPEG
    corrupt = train_det[0]
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    # 2. a semseg mask of the wrong size
    wrong_size = root / "labels/sem_seg/masks/train" / f"{seg_images[-1].stem}.png"
    Image.fromarray(np.zeros((32, 56), np.uint8)).save(wrong_size)
    # 3. an unknown id 77 in a drivable mask
    unknown = root / "labels/drivable/masks/val" / f"{sorted((root / 'images/100k/val').iterdir())[0].stem}.png"
    mask = np.asarray(Image.open(unknown)).copy()
    mask[0, :5] = 77
    Image.fromarray(mask).save(unknown)
    # 4. an image that a det frame names is deleted (its drivable and depth masks stay behind)
    gone = [p for p in sorted((root / "images/100k/val").iterdir())
            if not (root / "images/10k/val" / p.name).exists()][-1]
    gone.unlink()
    # 5. a degenerate box
    json_path = root / "labels/det_20/det_train.json"
    frames = json.loads(json_path.read_text())
    frame = next(f for f in frames if f.get("labels"))
    frame["labels"][0]["box2d"]["x2"] = frame["labels"][0]["box2d"]["x1"] - 3
    json_path.write_text(json.dumps(frames))

    report = check_bdd100k(root, progress=False)
    found = {(p.kind, p.path) for p in report.problems}
    assert (chk.CORRUPT_IMAGE, str(corrupt)) in found
    assert (chk.SIZE_MISMATCH, str(wrong_size)) in found
    assert (chk.UNKNOWN_ID, str(unknown)) in found
    assert (chk.FRAME_WITHOUT_IMAGE, str(root / "labels/det_20/det_val.json")) in found
    assert (chk.MASK_WITHOUT_IMAGE, str(root / "labels/drivable/masks/val" / f"{gone.stem}.png")) in found
    assert (chk.BAD_BOX, str(json_path)) in found
    messages = {p.kind: p.message for p in report.problems}
    assert "77 (5 px)" in messages[chk.UNKNOWN_ID] and gone.name in messages[chk.FRAME_WITHOUT_IMAGE]
    assert "32x56" in messages[chk.SIZE_MISMATCH] and "degenerate" in messages[chk.BAD_BOX]
    assert not report.ok
    # Exactly these problems and no others (depth mask of the deleted image is the 7th).
    assert len(report.problems) == 7, report.to_text()
    text = report.to_text()
    assert "7 problem(s)" in text and str(corrupt) in text


def test_missing_label_files_and_invalid_json(bdd_mini_root):
    shutil.rmtree(bdd_mini_root / "labels/sem_seg")
    (bdd_mini_root / "labels/det_20/det_train.json").write_text("[{")
    report = check_bdd100k(bdd_mini_root, splits=("train",), progress=False)
    kinds = {(p.kind, p.path) for p in report.problems}
    assert (chk.MISSING, str(bdd_mini_root / "labels/sem_seg/masks/train")) in kinds
    assert (chk.INVALID_JSON, str(bdd_mini_root / "labels/det_20/det_train.json")) in kinds
    out_of_image = check_bdd100k(bdd_mini_root.parent / "nowhere", progress=False)
    assert [p.kind for p in out_of_image.problems] == [chk.MISSING]


def test_out_of_image_box_is_reported(bdd_mini_root):
    path = bdd_mini_root / "labels/det_20/det_train.json"
    frames = [f for f in json.loads(path.read_text()) if f["name"] != "ghost.jpg"]
    frames[0]["labels"][0]["box2d"]["x2"] = 60  # image a.jpg is 48 wide
    path.write_text(json.dumps(frames))
    report = check_bdd100k(bdd_mini_root, splits=("train",), progress=False)
    assert [(p.kind, "outside the 48x32 image" in p.message) for p in report.problems] == [(chk.BAD_BOX, True)]


def test_run_check_cli_exit_code_and_json(synthdrive_tiny, bdd_mini_root, tmp_path, capsys):
    out = tmp_path / "reports" / "check.json"
    assert run_check_cli(synthdrive_tiny, json_out=out) == 0
    assert json.loads(out.read_text())["ok"] is True
    assert "OK" in capsys.readouterr().out
    assert run_check_cli(bdd_mini_root, json_out=out) == 1  # the mini root has no val split
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["problem_counts"][chk.MISSING] >= 4
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, no temp file left


def test_depth_images_need_a_readable_camera_file(synthdrive_tiny, tmp_path):
    from pathlib import Path

    from mtwork.data.check import INVALID_JSON, MISSING, check_bdd100k

    root = tmp_path / "cams"
    shutil.copytree(synthdrive_tiny, root)
    cameras = sorted((root / "labels/camera/train").glob("*.json"))
    cameras[0].unlink()
    cameras[1].write_text('{"intrinsic": {"fx": 100}}')
    report = check_bdd100k(root)
    found = {(p["kind"], Path(p["path"]).name) for p in report.to_dict()["problems"]}
    assert (MISSING, cameras[0].name) in found and (INVALID_JSON, cameras[1].name) in found
    assert not report.ok


def test_unknown_attribute_values_and_a_broken_attribute_file_are_reported(bdd_mini_root):
    path = bdd_mini_root / "labels/det_20/det_train.json"
    frames = json.loads(path.read_text())
    frames[0]["attributes"]["timeofday"] = "Daytime"  # not a BDD100K value: no domain would match
    path.write_text(json.dumps(frames))
    listing = bdd_mini_root / "labels/attributes/attributes_train.json"
    listing.parent.mkdir(parents=True)
    listing.write_text('[{"name": "d.jpg", "attributes": "night"}]')
    report = check_bdd100k(bdd_mini_root, splits=("train",), progress=False)
    kinds = {p.kind: p for p in report.problems}
    assert "'Daytime' on 1 frame" in kinds[chk.UNKNOWN_ATTRIBUTE].message
    assert kinds[chk.INVALID_JSON].path == str(listing) and "'attributes' must be an object" in kinds[chk.INVALID_JSON].message
    assert report.attributes["train"]["timeofday"] == {"Daytime": 1, chk.NO_ATTRIBUTE: 5}
    assert "Daytime" in report.to_text()
