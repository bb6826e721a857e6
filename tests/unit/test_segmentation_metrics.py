"""Segmentation metrics, loss and evaluator against hand-computed references."""
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from mtwork.tasks import create_task
from mtwork.tasks.segmentation import (
    SegmentationEvaluator,
    SegmentationHead,
    confusion_matrix,
    miou_from_confusion,
    pixel_accuracy,
    segmentation_loss,
)

# 4 classes; class 3 appears in neither GT nor (counted) predictions; two ignore pixels, one of which
# is "predicted" as class 3 and must not be counted.
TARGET = torch.tensor([0, 0, 0, 1, 1, 2, 2, 255, 255])
PRED = torch.tensor([0, 0, 1, 1, 2, 2, 0, 3, 1])
EXPECTED_CM = torch.tensor([[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_confusion_matrix_hand_computed():
    cm = confusion_matrix(PRED, TARGET, num_classes=4)
    assert cm.dtype == torch.int64
    assert torch.equal(cm, EXPECTED_CM)
    # (B,H,W) input gives the same counts
    assert torch.equal(confusion_matrix(PRED.view(1, 3, 3), TARGET.view(1, 3, 3), 4), EXPECTED_CM)


def test_miou_excludes_absent_class():
    miou, iou = miou_from_confusion(EXPECTED_CM)
    # IoU = TP / (TP + FP + FN): class 0: 2/(2+1+1), class 1: 1/(1+1+1), class 2: 1/(1+1+1), class 3: absent
    assert iou[:3].tolist() == pytest.approx([0.5, 1 / 3, 1 / 3])
    assert math.isnan(iou[3].item())
    assert miou == pytest.approx((0.5 + 1 / 3 + 1 / 3) / 3)
    assert pixel_accuracy(EXPECTED_CM) == pytest.approx(4 / 7)


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), num_classes=4)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1, 1]), num_classes=4)


def test_loss_only_over_labeled_samples():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 4, 6, requires_grad=True)
    target = torch.randint(0, 5, (3, 4, 6))
    target[0, 0, :3] = 255
    target[2, 1:3, 2:] = 255
    labeled = torch.tensor([True, False, True])  # sample 1 has valid labels that must not count
    loss = segmentation_loss(logits, target, labeled)

    # reference: -log softmax at the target, averaged over the valid pixels of samples 0 and 2
    logp = torch.log_softmax(logits.detach().double(), dim=1).numpy()
    terms = [-logp[b, target[b, y, x], y, x] for b in (0, 2) for y in range(4) for x in range(6)
             if target[b, y, x] != 255]
    assert len(terms) == 2 * 24 - 3 - 8
    assert loss.item() == pytest.approx(float(np.mean(terms)), rel=1e-5)

    loss.backward()
    assert torch.count_nonzero(logits.grad[1]) == 0
    assert torch.count_nonzero(logits.grad[0]) > 0


def test_loss_all_ignored_is_zero_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    loss = segmentation_loss(logits, target, torch.tensor([True, True]))
    assert loss.item() == 0.0
    loss.backward()  # still connected to the graph


def test_evaluator_resizes_to_label_resolution_and_skips_unlabeled():
    k = 3
    # input frame 4x6: left half predicts class 0, right half class 2 (large margins)
    logits = torch.zeros(2, k, 4, 6)
    logits[:, 0, :, :3] = 10.0
    logits[:, 2, :, 3:] = 10.0
    # on-disk frame of sample 0: 8x12, collated into a 9x13 mask padded with 255
    masks = torch.full((2, 9, 13), 255, dtype=torch.long)
    gt = torch.zeros(8, 12, dtype=torch.long)
    gt[:, 4:8] = 1
    gt[:, 8:] = 2
    gt[0, :] = 255
    masks[0, :8, :12] = gt
    masks[1, :8, :12] = 1  # sample 1 is not labeled: its mask must not count
    batch = {
        "labeled": {"drivable": torch.tensor([True, False])},
        "drivable": masks,
        "orig_size": torch.tensor([[8, 12], [8, 12]]),
    }
    evaluator = SegmentationEvaluator("drivable", ["background", "direct", "alternative"])
    evaluator.process(logits, batch)

    # bilinear x2 (align_corners=False) of a 3|3 split stays a 6|6 split
    pred = torch.zeros(8, 12, dtype=torch.long)
    pred[:, 6:] = 2
    valid = gt != 255
    expected = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(gt[valid].tolist(), pred[valid].tolist()):
        expected[t, p] += 1
    # rows 1..7 (row 0 ignored): gt0 cols 0-3 -> pred 0; gt1 cols 4,5 -> 0 and 6,7 -> 2; gt2 cols 8-11 -> 2
    assert expected.tolist() == [[28, 0, 0], [14, 0, 14], [0, 0, 28]]
    assert evaluator.confusion.numpy().tolist() == expected.tolist()

    metrics = evaluator.evaluate()
    assert set(metrics) == {"miou", "pixel_acc"}
    iou0, iou1, iou2 = 28 / (28 + 14), 0.0, 28 / (28 + 14)
    assert metrics["miou"] == pytest.approx(100 * (iou0 + iou1 + iou2) / 3)
    assert metrics["pixel_acc"] == pytest.approx(100 * 56 / 84)
    per_class = evaluator.per_class_iou()
    assert per_class == pytest.approx({"background": 100 * iou0, "direct": 0.0, "alternative": 100 * iou2})

    evaluator.reset()
    assert evaluator.confusion.sum() == 0


def test_head_output_is_input_sized_logits():
    torch.manual_seed(0)
    head = SegmentationHead(in_channels=8, num_classes=5, num_levels=4)
    feats = [torch.randn(2, 8, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert head(feats, (64, 96)).shape == (2, 5, 64, 96)


@pytest.mark.parametrize("name, num_classes", [("semseg", 19), ("drivable", 3)])
def test_registered_tasks(name, num_classes):
    from mtwork.data import bdd100k

    task = create_task(name)
    expected = bdd100k.SEMSEG_CLASSES if name == "semseg" else bdd100k.DRIVABLE_CLASSES
    assert task.num_classes == num_classes and task.class_names == list(expected)
    assert task.primary_metric == "miou" and task.metric("miou").higher_is_better


def test_max_indices_pick_the_first_maximum_like_argmax():
    """The evaluator's `max(dim=1).indices` (fast path on CPU) is argmax, ties included."""
    torch.manual_seed(0)
    logits = torch.randn(1, 19, 37, 53)
    logits[0, 4:9, :5, :5] = 3.0  # a five-way tie: the first maximum (class 4) wins in both
    assert torch.equal(logits.max(dim=1).indices, logits.argmax(dim=1))
    assert bool((logits.max(dim=1).indices[0, :5, :5] == 4).all())
