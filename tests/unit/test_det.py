"""FCOS targets, loss, decoding and the COCO evaluator against hand-made cases and pycocotools."""
import contextlib
import io
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from mtwork.tasks import create_task
from mtwork.tasks.base import FeatureSpec
from mtwork.tasks.det import DetEvaluator
from mtwork.tasks.fcos import fcos_loss, fcos_targets, ignore_mask, level_points, postprocess

STRIDES = (8, 16, 32)
# a 64x64 input: levels of 8x8, 4x4 and 2x2 points
POINTS = [level_points(64 // s, 64 // s, s) for s in STRIDES]
OFFSETS = (0, 64, 80)


def point_index(level: int, x: float, y: float) -> int:
    s = STRIDES[level]
    width = 64 // s
    return OFFSETS[level] + int((y - s / 2) // s) * width + int((x - s / 2) // s)


def test_level_points_are_cell_centres():
    assert POINTS[0][:3].tolist() == [[4, 4], [12, 4], [20, 4]]
    assert POINTS[1][4].tolist() == [8, 24]


def test_fcos_targets_hand_made_boxes():
    # A = [8,8,40,32] (label 3): max distance 20 from any centre-sampled point -> level 0 only.
    # B = [0,0,64,48] (label 7): centre (32,24); distances 40 (level 1) and 48 (level 2).
    boxes = torch.tensor([[8.0, 8.0, 40.0, 32.0], [0.0, 0.0, 64.0, 48.0]])
    labels = torch.tensor([3, 7])
    ranges = ((0, 24), (24, 48), (48, math.inf))
    got_labels, got_ltrb = fcos_targets(POINTS, STRIDES, boxes, labels, ranges, center_radius=1.5)

    expected = torch.full((84,), -1, dtype=torch.long)
    # level 0, radius 12 around (24,20) clipped to A: x in (12,36), y in (8,32)
    for x in (20, 28):
        for y in (12, 20, 28):
            expected[point_index(0, x, y)] = 3
    # level 1, radius 24 around (32,24) clipped to B: x in (8,56), y in (0,48)
    for x in (24, 40):
        for y in (8, 24, 40):
            expected[point_index(1, x, y)] = 7
    # level 2, radius 48: x in (0,64), y in (0,48) -> (16,16), (48,16)
    expected[point_index(2, 16, 16)] = 7
    expected[point_index(2, 48, 16)] = 7
    assert torch.equal(got_labels, expected)

    assert got_ltrb[point_index(0, 20, 12)].tolist() == [12, 4, 20, 20]
    assert got_ltrb[point_index(1, 40, 24)].tolist() == [40, 24, 24, 24]
    assert got_ltrb[point_index(2, 48, 16)].tolist() == [48, 16, 16, 32]
    assert torch.count_nonzero(got_ltrb[got_labels < 0]) == 0


def test_fcos_targets_ambiguity_takes_smallest_box():
    points = [level_points(4, 4, 8)]  # centres 4, 12, 20, 28
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 24.0, 24.0]])
    labels, ltrb = fcos_targets(points, (8,), boxes, torch.tensor([1, 2]), ((0, math.inf),), center_radius=0)
    grid = labels.view(4, 4)
    assert grid.tolist() == [[1, 1, 1, 1], [1, 2, 2, 1], [1, 2, 2, 1], [1, 1, 1, 1]]
    assert ltrb[5].tolist() == [4, 4, 12, 12]  # point (12,12) inside the small box
    assert ltrb[0].tolist() == [4, 4, 28, 28]  # point (4,4) only inside the big box


def test_fcos_targets_no_boxes_all_background():
    labels, ltrb = fcos_targets(POINTS, STRIDES, torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.long),
                                ((0, 64), (64, 128), (128, math.inf)))
    assert labels.shape == (84,) and bool((labels == -1).all()) and ltrb.abs().sum() == 0


def _random_outputs(batch: int, k: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(64 // s, 64 // s) for s in STRIDES]
    return {
        "cls": [torch.randn(batch, k, h, w, generator=g).requires_grad_() for h, w in shapes],
        "box": [(torch.rand(batch, 4, h, w, generator=g) * 30 + 1).requires_grad_() for h, w in shapes],
        "ctr": [torch.randn(batch, 1, h, w, generator=g).requires_grad_() for h, w in shapes],
        "strides": STRIDES,
    }


def _flat_cls(outputs, i):
    return torch.cat([m[i].permute(1, 2, 0).reshape(-1, m.shape[1]) for m in outputs["cls"]])


def test_loss_counts_images_without_boxes_as_negatives():
    outputs = _random_outputs(2)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 32.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([3])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}]
    ranges = ((0, 64), (64, 128), (128, math.inf))
    losses = fcos_loss(outputs, targets, ranges)

    labels0, _ = fcos_targets(POINTS, STRIDES, boxes, torch.tensor([3]), ranges)
    num_pos = int((labels0 >= 0).sum())
    assert num_pos == 6
    onehot0 = torch.zeros(84, 10)
    onehot0[labels0 >= 0, 3] = 1
    expected = (sigmoid_focal_loss(_flat_cls(outputs, 0), onehot0, reduction="sum")
                + sigmoid_focal_loss(_flat_cls(outputs, 1), torch.zeros(84, 10), reduction="sum")) / num_pos
    assert losses["cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert outputs["cls"][0].grad[1].abs().sum() > 0  # the box-less image still gets a gradient


def test_loss_perfect_boxes_have_zero_giou_loss_and_no_boxes_is_finite():
    outputs = _random_outputs(1)
    boxes = torch.tensor([[8.0, 8.0, 40.0, 32.0]])
    ranges = ((0, 64), (64, 128), (128, math.inf))
    labels, ltrb = fcos_targets(POINTS, STRIDES, boxes, torch.tensor([3]), ranges)
    with torch.no_grad():  # write the exact ltrb targets into the level-0 regression map
        outputs["box"][0][0] = ltrb[:64].T.reshape(4, 8, 8)
    losses = fcos_loss(outputs, [{"boxes": boxes, "labels": torch.tensor([3])}], ranges)
    assert losses["box"].item() == pytest.approx(0.0, abs=1e-6)

    empty = fcos_loss(_random_outputs(1), [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}])
    assert empty["box"].item() == 0.0 and empty["ctr"].item() == 0.0 and math.isfinite(empty["cls"].item())


def test_ignore_mask_marks_points_strictly_inside_for_the_region_class():
    # [8,8,24,24] of class 2: level 0 centres 12 and 20 in both axes (4 points); level 1 centres
    # 8, 24 lie on the border (not inside); level 2 centre (16,16) is inside
    mask = ignore_mask(torch.cat(POINTS), torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.tensor([2]), 10)
    assert mask.shape == (84, 10) and not mask[:, [0, 1, 3, 4, 5, 6, 7, 8, 9]].any()
    expected = {point_index(0, x, y) for x in (12, 20) for y in (12, 20)} | {point_index(2, 16, 16)}
    assert set(torch.nonzero(mask[:, 2]).flatten().tolist()) == expected


def test_loss_leaves_ignore_region_pairs_out_but_keeps_positives():
    """cls loss = the plain focal loss minus its terms at (point inside an ignore region of class k,
    class k) that are not positives of class k; box and centerness losses are unchanged."""
    ranges = ((0, 64), (64, 128), (128, math.inf))
    boxes = torch.tensor([[8.0, 8.0, 24.0, 24.0]])  # a class-2 object inside the class-2 ignore region
    ignore_boxes, ignore_labels = torch.tensor([[0.0, 0.0, 32.0, 32.0]]), torch.tensor([2])
    target = {"boxes": boxes, "labels": torch.tensor([2]), "ignore_boxes": ignore_boxes, "ignore_labels": ignore_labels}
    plain_target = {"boxes": boxes, "labels": torch.tensor([2])}
    outputs = _random_outputs(1)
    losses, plain = fcos_loss(outputs, [target], ranges), fcos_loss(outputs, [plain_target], ranges)

    labels, _ = fcos_targets(POINTS, STRIDES, boxes, torch.tensor([2]), ranges)
    num_pos = int((labels >= 0).sum())
    assert num_pos > 0
    onehot = torch.zeros(84, 10)
    onehot[labels >= 0, 2] = 1
    terms = sigmoid_focal_loss(_flat_cls(outputs, 0), onehot, reduction="none")
    pts = torch.cat(POINTS)
    inside = (pts[:, 0] > 0) & (pts[:, 0] < 32) & (pts[:, 1] > 0) & (pts[:, 1] < 32)
    left_out = inside & (labels != 2)
    assert left_out.sum() > 0 and (inside & (labels == 2)).sum() == num_pos  # positives stay positives
    expected = (terms.sum() - terms[left_out, 2].sum()) / num_pos
    assert losses["cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["box"].item() == pytest.approx(plain["box"].item(), rel=1e-6)
    assert losses["ctr"].item() == pytest.approx(plain["ctr"].item(), rel=1e-6)
    # a class-2 logit on an ignored point gets no gradient; another class there does (a false positive)
    losses["cls"].backward()
    grad = outputs["cls"][0].grad[0]  # level 0: (10, 8, 8); point (4, 4) is inside, background
    assert grad[2, 0, 0] == 0 and grad[5, 0, 0] != 0


def test_evaluator_scores_ignore_regions_as_crowd():
    """A detection on an ignore region is neither TP nor FP: AP50 stays 100 with the region, and
    drops when the same box is not known to be an ignore region."""
    from mtwork.data.bdd100k import DET_CATEGORIES

    def postprocess(outputs, size):
        return [{"boxes": torch.tensor([[30.0, 0.0, 40.0, 10.0], [0.0, 0.0, 10.0, 10.0]]),
                 "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([2, 2])}]

    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2]),
              "ignore_boxes": torch.tensor([[28.0, 0.0, 42.0, 12.0]]), "ignore_labels": torch.tensor([2])}
    outputs = {"cls": [torch.zeros(1, 10, 1, 1)], "box": [torch.zeros(1, 4, 1, 1)], "ctr": [torch.zeros(1, 1, 1, 1)],
               "strides": (8,)}

    def evaluate(det):
        batch = {"image": torch.zeros(1, 3, 16, 48), "orig_size": torch.tensor([[16, 48]]),
                 "labeled": {"det": torch.tensor([True])}, "det": [det]}
        evaluator = DetEvaluator(DET_CATEGORIES, postprocess)
        evaluator.process(outputs, batch)
        return evaluator.evaluate()

    assert evaluate(target)["map50"] == pytest.approx(100.0)
    # (the crowd IoU is intersection / detection area = 1 although the region is larger)
    plain = evaluate({"boxes": target["boxes"], "labels": target["labels"]})
    # FP then TP over one box: precision 1/2 at every recall point up to 1
    assert plain["map50"] == pytest.approx(50.0)


def test_task_loss_skips_unlabeled_images():
    task = create_task("det")
    outputs = _random_outputs(3)
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 32.0]]), "labels": torch.tensor([3])}
    other = {"boxes": torch.tensor([[0.0, 0.0, 60.0, 60.0]]), "labels": torch.tensor([1])}
    batch = {"det": [target, other, other]}
    loss = task.loss(outputs, batch, torch.tensor([True, False, True]))
    subset = {key: ([m[[0, 2]] for m in v] if key != "strides" else v) for key, v in outputs.items()}
    expected = sum(fcos_loss(subset, [target, other], task.size_ranges).values())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert outputs["cls"][0].grad[1].abs().sum() == 0


def _hand_outputs():
    """One 64x64 image; every score ~0 except three hand-placed (point, class) pairs."""
    shapes = [(64 // s, 64 // s) for s in STRIDES]
    out = {"cls": [torch.full((1, 10, h, w), -20.0) for h, w in shapes],
           "box": [torch.ones(1, 4, h, w) for h, w in shapes],
           "ctr": [torch.full((1, 1, h, w), -20.0) for h, w in shapes], "strides": STRIDES}

    def put(level, x, y, cls, cls_logit, ctr_logit, ltrb):
        s = STRIDES[level]
        r, c = int((y - s / 2) // s), int((x - s / 2) // s)
        out["cls"][level][0, cls, r, c] = cls_logit
        out["ctr"][level][0, 0, r, c] = ctr_logit
        out["box"][level][0, :, r, c] = torch.tensor(ltrb)

    put(0, 20, 12, 3, 10.0, 10.0, [12.0, 4.0, 20.0, 20.0])  # box [8,8,40,32], score sigmoid(10)
    put(0, 28, 12, 3, 2.0, 10.0, [20.0, 4.0, 12.0, 20.0])  # same box, lower score: suppressed by NMS
    put(0, 28, 20, 5, 0.0, 0.0, [20.0, 12.0, 12.0, 12.0])  # same box, other class: kept, score 0.5
    put(2, 48, 16, 7, 1.0, 20.0, [48.0, 16.0, 32.0, 40.0])  # [0,0,80,56] clipped to [0,0,64,56]
    return out


def test_postprocess_hand_made_outputs():
    (res,) = postprocess(_hand_outputs(), (64, 64), score_thresh=0.05, nms_iou=0.6)
    sig = torch.sigmoid
    assert res["labels"].tolist() == [3, 7, 5]
    assert res["scores"].tolist() == pytest.approx(
        [sig(torch.tensor(10.0)).item(), math.sqrt(sig(torch.tensor(1.0)).item()), 0.5], rel=1e-4)
    assert res["boxes"].tolist() == [[8, 8, 40, 32], [0, 0, 64, 56], [8, 8, 40, 32]]

    (top,) = postprocess(_hand_outputs(), (64, 64), score_thresh=0.6)
    assert top["labels"].tolist() == [3, 7]
    (one,) = postprocess(_hand_outputs(), (64, 64), max_detections=1)
    assert one["labels"].tolist() == [3]
    (no_nms,) = postprocess(_hand_outputs(), (64, 64), nms_iou=1.0)
    assert sorted(no_nms["labels"].tolist()) == [3, 3, 5, 7]


# ---------------------------------------------------------------------------------------------
# evaluator against pycocotools run on json files
# ---------------------------------------------------------------------------------------------
# input frame 32x48; on-disk frames below. Predictions per image index in the input frame.
ORIG_SIZES = [[64, 96], [32, 48], [64, 96], [96, 144]]
GROUND_TRUTH = [  # on-disk frame
    {"boxes": [[10, 10, 40, 50], [50, 20, 90, 60]], "labels": [2, 0]},
    {"boxes": [[4, 4, 20, 30]], "labels": [9]},  # image 1 is not det-labeled
    {"boxes": [[0, 0, 30, 30], [60, 10, 80, 40]], "labels": [2, 2]},
    {"boxes": [[30, 30, 90, 90]], "labels": [5]},  # GT but no predictions
]
PREDICTIONS = [  # input frame: image 0 and 2 are at half the on-disk size, image 3 at a third
    {"boxes": [[5, 5, 20, 25], [26, 11, 45, 30], [0, 0, 10, 10]], "scores": [0.9, 0.8, 0.7], "labels": [2, 0, 2]},
    {"boxes": [[0, 0, 40, 30], [1, 1, 10, 10]], "scores": [0.99, 0.95], "labels": [9, 2]},  # must be ignored
    {"boxes": [[0, 0, 14, 16], [30, 5, 40, 20], [31, 6, 40, 19]], "scores": [0.6, 0.85, 0.3], "labels": [2, 2, 2]},
    {"boxes": [], "scores": [], "labels": []},
]


def _fake_postprocess(outputs, input_size):
    assert tuple(input_size) == (32, 48)
    results = []
    for image_index in outputs["cls"][0][:, 0, 0, 0].long().tolist():
        p = PREDICTIONS[image_index]
        results.append({"boxes": torch.tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.tensor(p["scores"]), "labels": torch.tensor(p["labels"], dtype=torch.long)})
    return results


def _batch():
    index_map = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    outputs = {"cls": [index_map], "box": [index_map], "ctr": [index_map], "strides": (8,)}
    batch = {
        "image": torch.zeros(4, 3, 32, 48),
        "orig_size": torch.tensor(ORIG_SIZES),
        "labeled": {"det": torch.tensor([True, False, True, True])},
        "det": [{"boxes": torch.tensor(g["boxes"], dtype=torch.float32), "labels": torch.tensor(g["labels"])}
                for g in GROUND_TRUTH],
    }
    return outputs, batch


def _reference_stats(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, dets = [], [], []
    for image_id, i in enumerate((0, 2, 3), start=1):
        h, w = ORIG_SIZES[i]
        images.append({"id": image_id, "height": h, "width": w})
        for (x1, y1, x2, y2), label in zip(GROUND_TRUTH[i]["boxes"], GROUND_TRUTH[i]["labels"]):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": label + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        sx, sy = w / 48, h / 32
        p = PREDICTIONS[i]
        for (x1, y1, x2, y2), score, label in zip(p["boxes"], p["scores"], p["labels"]):
            dets.append({"image_id": image_id, "category_id": label + 1, "score": score,
                         "bbox": [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy]})
    gt_file, det_file = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": anns,
                                   "categories": [{"id": k + 1, "name": str(k)} for k in range(10)]}))
    det_file.write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(det_file)), iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def test_evaluator_equals_direct_pycocotools(tmp_path, capsys):
    from mtwork.data.bdd100k import DET_CATEGORIES

    evaluator = DetEvaluator(DET_CATEGORIES, _fake_postprocess)
    outputs, batch = _batch()
    evaluator.process(outputs, batch)
    metrics = evaluator.evaluate()
    assert capsys.readouterr().out == ""  # pycocotools' printing is silenced

    stats = _reference_stats(tmp_path)
    assert 0 < stats[0] < stats[1] < 1  # a case where mAP, AP50 differ and neither is trivial
    assert metrics == pytest.approx({"map": 100 * stats[0], "map50": 100 * stats[1],
                                     "map75": 100 * stats[2], "ar100": 100 * stats[8]}, abs=1e-9)


def test_evaluator_without_any_prediction_returns_zero():
    evaluator = DetEvaluator([str(k) for k in range(10)], lambda outputs, size: [
        {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
        for _ in range(outputs["cls"][0].shape[0])])
    outputs, batch = _batch()
    evaluator.process(outputs, batch)
    assert evaluator.evaluate() == {"map": 0.0, "map50": 0.0, "map75": 0.0, "ar100": 0.0}


def test_det_task_head_and_kwargs():
    torch.manual_seed(0)
    task = create_task("det", num_convs=3, score_thresh=0.3, max_detections=7)
    head = task.build_head(FeatureSpec(channels=16))
    assert len(head.cls_tower) == 3 * 3 and len(create_task("det").build_head(FeatureSpec(16)).cls_tower) == 2 * 3 and head.strides == (8, 16, 32)
    # prior probability 0.01 in the classifier bias
    assert torch.sigmoid(head.cls_logits.bias).tolist() == pytest.approx([0.01] * 10)
    feats = [torch.randn(2, 16, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    out = head(feats, (64, 96))
    assert [tuple(m.shape) for m in out["cls"]] == [(2, 10, 8, 12), (2, 10, 4, 6), (2, 10, 2, 3)]
    assert all(bool((m >= 0).all()) for m in out["box"])
    for res in task.postprocess(out, (64, 96)):
        assert len(res["scores"]) <= 7 and bool((res["scores"] > 0.3).all())
    with pytest.raises(ValueError, match="size_ranges"):
        create_task("det", size_ranges=((0, 64), (64, math.inf)))


def test_fcos_box_branch_cannot_die():
    """The regression stays trainable however negative the conv output gets (the ReLU form would
    output 0 with zero gradient there and never recover) and starts at one stride per side."""
    torch.manual_seed(0)
    head = create_task("det").build_head(FeatureSpec(channels=16))
    feats = [torch.randn(1, 16, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    out = head(feats, (64, 96))
    for box, stride in zip(out["box"], head.strides):
        # conv weights ~N(0, 0.01) and zero bias: exp(~0) * stride
        assert box.mean().item() == pytest.approx(stride, rel=0.1)
    with torch.no_grad():
        head.bbox_pred.bias.fill_(-50.0)
    out = head(feats, (64, 96))
    assert all(bool((m > 0).all()) for m in out["box"])
    sum(m.sum() for m in out["box"]).backward()
    assert head.bbox_pred.bias.grad.abs().sum() > 0
