"""`mtwork score`: the official BDD100K protocol on hand-made fixtures, values worked out by hand.

Detection fixture (Scalabel inclusive pixel boxes; a box (x1, y1, x2, y2) covers x2-x1+1 columns):

    a.jpg  car        (0,0)-(9,9)      A
           other vehicle (20,0)-(29,9) ignore region of car
           trailer    (40,0)-(59,9)    ignore region of truck (truck has no other box)
           pedestrian (0,20)-(9,29) crowd: true   ignore region of pedestrian
           pedestrian (40,20)-(49,29)  P
    b.jpg  car        (0,0)-(9,9)      B
           van        (20,0)-(29,9)    C (name_mapping: van -> car)

Predictions (score): a: car on the "other vehicle" (0.95), car = A (0.9), truck on the trailer (0.6),
pedestrian on the crowd box (0.8), pedestrian = P (0.7); b: car (0,0)-(9,14) (0.85) over B with
IoU 100/150 = 2/3, car = C (0.5).

car: ranked dets ignored, TP(A), B?, TP(C) against 3 boxes. At IoU thresholds 0.5..0.65 B is a TP:
AP 1. At 0.7..0.95 B is a false positive: TP, FP, TP -> recall 1/3, 1/3, 2/3, interpolated precision
1, 2/3, 2/3; COCO's 101 recall points: 34 at precision 1 (r <= 1/3), 33 at 2/3, 34 at 0 -> 56/101.
car AP = (4 + 6 * 56/101) / 10 = 740/1010; AP50 = 1; AP75 = 56/101.
pedestrian: the crowd box is ignored, P is found: AP 1 at every threshold.
truck: only an ignore region -> no AP (missing). Overall = mean over car and pedestrian.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mtwork.data.bdd100k import DatasetError
from mtwork.score import score_det, score_masks

CAR_AP = 100 * 740 / 1010
CAR_AP75 = 100 * 56 / 101


def _box(x1, y1, x2, y2):
    return {"x1": x1, "y1": y1, "x2": x2, "y2": y2}


GT = [
    {"name": "a.jpg", "attributes": {"weather": "clear", "timeofday": "daytime", "scene": "highway"}, "labels": [
        {"id": "0", "category": "car", "attributes": {"crowd": False}, "box2d": _box(0, 0, 9, 9)},
        {"id": "1", "category": "other vehicle", "box2d": _box(20, 0, 29, 9)},
        {"id": "2", "category": "trailer", "box2d": _box(40, 0, 59, 9)},
        {"id": "3", "category": "pedestrian", "attributes": {"crowd": True}, "box2d": _box(0, 20, 9, 29)},
        {"id": "4", "category": "pedestrian", "box2d": _box(40, 20, 49, 29)},
    ]},
    {"name": "b.jpg", "attributes": {"weather": "rainy", "timeofday": "night", "scene": "highway"}, "labels": [
        {"id": "5", "category": "car", "box2d": _box(0, 0, 9, 9)},
        {"id": "6", "category": "van", "box2d": _box(20, 0, 29, 9)},
    ]},
]
PRED = [
    {"name": "a.jpg", "labels": [
        {"category": "car", "box2d": _box(20, 0, 29, 9), "score": 0.95},
        {"category": "car", "box2d": _box(0, 0, 9, 9), "score": 0.9},
        {"category": "truck", "box2d": _box(40, 0, 59, 9), "score": 0.6},
        {"category": "pedestrian", "box2d": _box(0, 20, 9, 29), "score": 0.8},
        {"category": "pedestrian", "box2d": _box(40, 20, 49, 29), "score": 0.7},
    ]},
    {"name": "b.jpg", "labels": [
        {"category": "car", "box2d": _box(0, 0, 9, 14), "score": 0.85},
        {"category": "car", "box2d": _box(20, 0, 29, 9), "score": 0.5},
    ]},
]


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _score(tmp_path, gt=GT, pred=PRED, **kwargs):
    return score_det(_write(tmp_path, "gt.json", gt), _write(tmp_path, "pred.json", pred), **kwargs)


def _drop(pred, name, category, score):
    pred = copy.deepcopy(pred)
    for frame in pred:
        if frame["name"] == name:
            frame["labels"] = [lab for lab in frame["labels"] if (lab["category"], lab["score"]) != (category, score)]
    return pred


def test_official_protocol_hand_worked_values(tmp_path):
    result = _score(tmp_path)
    assert result["AP"] == pytest.approx((CAR_AP + 100) / 2, abs=1e-9)
    assert result["AP50"] == pytest.approx(100.0, abs=1e-9)
    assert result["AP75"] == pytest.approx((CAR_AP75 + 100) / 2, abs=1e-9)
    per_class = result["per_class"]
    assert per_class["car"]["AP"] == pytest.approx(CAR_AP, abs=1e-9)
    assert per_class["car"]["AP75"] == pytest.approx(CAR_AP75, abs=1e-9)
    assert per_class["pedestrian"]["AP"] == pytest.approx(100.0, abs=1e-9)
    # no ground truth of its own: missing, not 0 (the trailer only ignores truck detections)
    assert np.isnan(per_class["truck"]["AP"]) and np.isnan(per_class["bus"]["AP"])
    assert list(per_class) == ["pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle",
                               "bicycle", "traffic light", "traffic sign"]
    assert result["ignore_regions"] == {"crowd pedestrian": 1, "other vehicle": 1, "trailer": 1}
    assert result["frames"] == {"gt": 2, "pred": 2, "missing_pred": 0, "unmatched_pred": 0}
    # AR100 of car: 3 of 3 found at 4 thresholds, 2 of 3 at 6 -> (4 + 6 * 2/3) / 10
    assert per_class["car"]["AR100"] == pytest.approx(80.0, abs=1e-9)


def test_prediction_on_an_ignore_region_is_neither_true_nor_false_positive(tmp_path):
    full = _score(tmp_path)
    without = _score(tmp_path, pred=_drop(PRED, "a.jpg", "car", 0.95))
    # (AR1 does change: COCO's per-image top-1 is the ignored detection, so A is not within it)
    for metric in ("AP", "AP50", "AP75", "AR100"):
        assert without["per_class"]["car"][metric] == pytest.approx(full["per_class"]["car"][metric], abs=1e-12)
    # the same box scored as a car (the region dropped instead of ignored) would cost precision:
    # with "other vehicle" removed from the ground truth, the 0.95 car is a false positive ranked first
    dropped = copy.deepcopy(GT)
    dropped[0]["labels"] = [lab for lab in dropped[0]["labels"] if lab["category"] != "other vehicle"]
    assert _score(tmp_path, gt=dropped)["per_class"]["car"]["AP50"] < 100.0
    # the truck detection on the trailer changes nothing either
    assert _score(tmp_path, pred=_drop(PRED, "a.jpg", "truck", 0.6))["AP"] == pytest.approx(full["AP"], abs=1e-12)


def test_missed_crowd_box_costs_nothing_and_crowd_iou_uses_the_detection_area(tmp_path):
    missed = _score(tmp_path, pred=_drop(PRED, "a.jpg", "pedestrian", 0.8))
    assert missed["per_class"]["pedestrian"]["AP"] == pytest.approx(100.0, abs=1e-12)
    # the same box without the crowd flag is an object: missing it halves the recall
    # (101 recall points: 51 at precision 1 for r <= 0.5)
    not_crowd = copy.deepcopy(GT)
    not_crowd[0]["labels"][3]["attributes"]["crowd"] = False
    assert _score(tmp_path, gt=not_crowd, pred=_drop(PRED, "a.jpg", "pedestrian", 0.8))[
        "per_class"]["pedestrian"]["AP"] == pytest.approx(100 * 51 / 101, abs=1e-9)
    # a small box inside the crowd region: IoU 16/100 with the region, but pycocotools (and so the
    # toolkit) divides by the detection's own area for a crowd box: 16/16 -> ignored, not a false positive
    small = copy.deepcopy(PRED)
    small[0]["labels"].append({"category": "pedestrian", "box2d": _box(2, 22, 5, 25), "score": 0.99})
    assert _score(tmp_path, pred=small)["per_class"]["pedestrian"]["AP"] == pytest.approx(100.0, abs=1e-12)


def test_missing_and_extra_prediction_frames_follow_the_toolkit(tmp_path):
    pred = [copy.deepcopy(PRED[0]), {"name": "zzz.jpg", "labels": [{"category": "car", "box2d": _box(0, 0, 9, 9),
                                                                    "score": 0.9}]}]
    result = _score(tmp_path, pred=pred)
    assert result["frames"] == {"gt": 2, "pred": 2, "missing_pred": 1, "unmatched_pred": 1}
    # b.jpg has no predictions: its two cars are missed; car finds only A: recall 1/3 -> 34/101
    assert result["per_class"]["car"]["AP"] == pytest.approx(100 * 34 / 101, abs=1e-9)


def test_attribute_filter_scores_one_domain(tmp_path):
    night = _score(tmp_path, attributes={"timeofday": "night"})
    assert night["frames"]["gt"] == 1 and night["frames"]["other_attributes"] == 1
    # b.jpg alone, cars B and C: AP 1 at IoU thresholds up to 0.65; above, the dets rank FP, TP:
    # recall 0, 1/2, interpolated precision 1/2, 1/2 -> 51 recall points (r <= 1/2) at 1/2
    assert night["per_class"]["car"]["AP"] == pytest.approx(100 * (4 + 6 * 0.5 * 51 / 101) / 10, abs=1e-9)
    assert np.isnan(night["per_class"]["pedestrian"]["AP"])
    with pytest.raises(ValueError, match="nightt"):
        _score(tmp_path, attributes={"timeofday": "nightt"})


@pytest.mark.parametrize("pred, fragment", [
    ([{"name": "a.jpg", "labels": [{"category": "car", "box2d": _box(0, 0, 9, 9)}]}], "'score'"),
    ([{"name": "a.jpg", "labels": [{"category": "spaceship", "box2d": _box(0, 0, 9, 9), "score": 1}]}],
     "unknown category 'spaceship'"),
    ({"frame": []}, "expected a JSON list"),
])
def test_bad_prediction_files_are_named(tmp_path, pred, fragment):
    with pytest.raises(DatasetError, match="pred.json") as err:
        _score(tmp_path, pred=pred)
    assert fragment in str(err.value)


def test_evaluator_export_scores_like_the_evaluator(tmp_path):
    """DetEvaluator on a letterboxed batch, its Scalabel export and `mtwork score det` agree."""
    from mtwork.data.bdd100k import DET_CATEGORIES
    from mtwork.tasks.det import DetEvaluator

    # on-disk 40x60 images shown to the network letterboxed into 20x40: scale 0.5, valid 20x30
    gt = [[[0, 0, 10, 10], [20, 0, 30, 10]], [[0, 0, 10, 15]]]  # pixel edges, all cars
    preds = [([[0, 0, 5, 5], [10, 0, 15, 6]], [0.9, 0.8]), ([[0, 0, 5, 5], [31, 0, 40, 5]], [0.7, 0.95])]

    def postprocess(outputs, size):
        return [{"boxes": torch.tensor(b, dtype=torch.float32), "scores": torch.tensor(s),
                 "labels": torch.full((len(s),), 2)} for b, s in preds]

    batch = {"image": torch.zeros(2, 3, 20, 40), "names": ["x.jpg", "y.jpg"],
             "orig_size": torch.tensor([[40, 60], [40, 60]]), "valid_size": torch.tensor([[20, 30], [20, 30]]),
             "labeled": {"det": torch.tensor([True, True])},
             "det": [{"boxes": torch.tensor(g, dtype=torch.float32), "labels": torch.full((len(g),), 2)} for g in gt]}
    outputs = {"cls": [torch.zeros(2, 10, 1, 1)], "box": [torch.zeros(2, 4, 1, 1)], "ctr": [torch.zeros(2, 1, 1, 1)],
               "strides": (8,)}
    evaluator = DetEvaluator(DET_CATEGORIES, postprocess)
    evaluator.process(outputs, batch)
    frames = evaluator.scalabel_frames()
    # x.jpg: (0,0,5,5) x2 -> (0,0,10,10) edges -> inclusive (0,0,9,9); y.jpg's box in the padding is dropped
    assert [f["name"] for f in frames] == ["x.jpg", "y.jpg"]
    assert frames[0]["labels"][0] == {"id": "0", "category": "car", "box2d": _box(0.0, 0.0, 9.0, 9.0),
                                      "score": pytest.approx(0.9)}
    assert len(frames[1]["labels"]) == 1
    gt_frames = [{"name": n, "labels": [{"category": "car", "box2d": _box(b[0], b[1], b[2] - 1, b[3] - 1)} for b in g]}
                 for n, g in zip(["x.jpg", "y.jpg"], gt)]
    scored = score_det(_write(tmp_path, "gt.json", gt_frames), _write(tmp_path, "pred.json", frames))
    summary = evaluator.summary()
    assert scored["AP"] == pytest.approx(summary["overall"]["AP"], abs=1e-9)
    assert scored["per_class"]["car"] == pytest.approx(summary["per_class"]["car"], abs=1e-9, nan_ok=True)
    # hand-worked (x2 back to the disk frame): x's cars at IoU 1 and 100/120, y's at 100/150
    assert summary["per_class"]["car"]["AP50"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def test_drivable_hand_worked_with_a_missing_prediction(tmp_path):
    # on-disk ids: 0 direct, 1 alternative, 2 background
    _png(tmp_path / "gt/x.png", [[0, 0, 1, 1], [2, 2, 2, 2]])
    _png(tmp_path / "pred/x.png", [[0, 1, 1, 1], [2, 2, 0, 2]])
    _png(tmp_path / "gt/y.png", np.full((2, 4), 2))  # no prediction: its 8 background pixels are missed
    _png(tmp_path / "pred/z.png", np.zeros((2, 4)))  # no ground truth: left out
    result = score_masks("drivable", tmp_path / "gt", tmp_path / "pred")
    # direct: TP 1, FN 1, FP 1 -> 1/3; alternative: TP 2, FP 1 -> 2/3; background: TP 3, FN 1 + 8 -> 3/12
    assert result["IoU"] == pytest.approx({"background": 25.0, "direct": 100 / 3, "alternative": 200 / 3})
    assert result["mIoU"] == pytest.approx((25.0 + 100 / 3 + 200 / 3) / 3)
    assert result["pixel_acc"] == pytest.approx(100 * 6 / 16)
    assert result["images"] == {"gt": 2, "pred": 2, "missing_pred": 1, "unmatched_pred": 1}


def test_sem_seg_ignores_255_and_leaves_absent_classes_out(tmp_path):
    _png(tmp_path / "gt/s.png", [[0, 0, 255], [13, 13, 1]])
    _png(tmp_path / "pred/s.png", [[0, 13, 5], [13, 13, 255]])
    result = score_masks("sem_seg", tmp_path / "gt", tmp_path / "pred")
    # road TP 1 FN 1 -> 1/2; car TP 2 FP 1 -> 2/3; sidewalk predicted as nothing -> 0;
    # pole predicted only on an ignored pixel -> no union -> missing
    iou = result["IoU"]
    assert (iou["road"], iou["car"], iou["sidewalk"]) == pytest.approx((50.0, 200 / 3, 0.0))
    assert np.isnan(iou["pole"]) and np.isnan(iou["sky"])
    assert result["mIoU"] == pytest.approx(100 * 7 / 18)


def test_mask_errors_name_the_file(tmp_path):
    _png(tmp_path / "gt/s.png", [[0, 77]])
    _png(tmp_path / "pred/s.png", [[0, 0]])
    with pytest.raises(DatasetError, match=r"s\.png.*77"):
        score_masks("sem_seg", tmp_path / "gt", tmp_path / "pred")
    _png(tmp_path / "gt/s.png", [[0, 1]])
    _png(tmp_path / "pred/s.png", [[0, 1, 1]])
    with pytest.raises(DatasetError, match="1x3"):
        score_masks("sem_seg", tmp_path / "gt", tmp_path / "pred")
    with pytest.raises(DatasetError, match="nowhere"):
        score_masks("drivable", tmp_path / "nowhere", tmp_path / "pred")


def test_cli_prints_json_with_nulls_for_missing_classes(tmp_path, capsys):
    from mtwork.cli import main

    gt, pred = _write(tmp_path, "gt.json", GT), _write(tmp_path, "pred.json", PRED)
    out = tmp_path / "scores" / "det.json"
    assert main(["score", "det", "--gt", str(gt), "--pred", str(pred), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["AP50"] == pytest.approx(100.0) and printed["per_class"]["truck"]["AP"] is None
    assert main(["score", "det", "--gt", str(gt), "--pred", str(pred), "--attr", "timeofday=night,dawn/dusk"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"]["gt"] == 1
    assert main(["score", "det", "--gt", str(tmp_path / "none.json"), "--pred", str(pred)]) == 2
    assert "none.json" in capsys.readouterr().err
