"""Task ``det``: BDD100K traffic-object detection (10 classes) with an FCOS head, COCO-style mAP.

The head, targets, loss and decoding live in ``mtwork.tasks.fcos``; this module binds them to the
task interface and evaluates with pycocotools (COCOeval, iouType "bbox").
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from mtwork.tasks import fcos
from mtwork.tasks.base import TASKS, FeatureSpec, Metric, Task

DET_METRICS = (
    Metric("map", True, "mAP"),
    Metric("map50", True, "AP50"),
    Metric("map75", True, "AP75"),
    Metric("ar100", True, "AR100"),
)
# index of each metric in COCOeval.stats
_COCO_STATS = {"map": 0, "map50": 1, "map75": 2, "ar100": 8}


def coco_detection_metrics(
    images: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
) -> Dict[str, float]:
    """COCO bbox metrics in percent from in-memory records (pycocotools, its printing silenced).

    images: [{"id": int, "height": int, "width": int}]
    ground_truth: [{"image_id", "boxes": (N,4) xyxy px, "labels": (N,) 0..K-1}]
    detections: [{"image_id", "boxes": (M,4) xyxy px, "scores": (M,), "labels": (M,) 0..K-1}]
    Category ids are label + 1. Returns {"map", "map50", "map75", "ar100"}: 0.0 each when there is no
    detection at all (nothing was found), NaN where pycocotools reports -1 (no ground-truth box at all).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_json = {
        "images": [{"id": int(im["id"]), "height": int(im["height"]), "width": int(im["width"])} for im in images],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(class_names)],
        "annotations": [],
    }
    for record in ground_truth:
        for box, label in zip(record["boxes"].tolist(), record["labels"].tolist()):
            x1, y1, x2, y2 = box
            gt_json["annotations"].append({
                "id": len(gt_json["annotations"]) + 1, "image_id": int(record["image_id"]),
                "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
            })
    results = []
    for record in detections:
        for box, score, label in zip(record["boxes"].tolist(), record["scores"].tolist(), record["labels"].tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": int(record["image_id"]), "category_id": int(label) + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    if not results:
        # loadRes cannot take an empty list; with nothing detected every AP/AR is 0 by definition
        has_gt = bool(gt_json["annotations"])
        return {name: (0.0 if has_gt else math.nan) for name in _COCO_STATS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_json
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))  # loadRes writes into the dicts it gets
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {name: (math.nan if stats[i] < 0 else 100.0 * float(stats[i])) for name, i in _COCO_STATS.items()}


class DetEvaluator:
    """Collects ground truth and predictions of the det-labeled images, then runs COCOeval.

    ``process(outputs, batch)``: outputs are the FCOS head's; predictions are decoded in the input
    frame (batch["image"] H,W) and scaled to the on-disk frame (batch["orig_size"]), where batch["det"]
    holds the ground truth in evaluation batches. ``evaluate()`` -> {"map", "map50", "map75", "ar100"}
    in percent (NaN when no labeled image or no ground-truth box was seen).
    """

    def __init__(self, class_names: Sequence[str],
                 postprocess: Callable[[Mapping[str, Any], Tuple[int, int]], List[Dict[str, torch.Tensor]]],
                 task: str = "det"):
        self.class_names = list(class_names)
        self.postprocess = postprocess
        self.task = task
        self.reset()

    def reset(self) -> None:
        self.images: List[Dict[str, int]] = []
        self.ground_truth: List[Dict[str, Any]] = []
        self.detections: List[Dict[str, Any]] = []

    @torch.no_grad()
    def process(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        index = torch.nonzero(batch["labeled"][self.task]).flatten()
        if index.numel() == 0:
            return
        height, width = batch["image"].shape[-2:]
        predictions = self.postprocess(fcos.select_images(outputs, index), (height, width))
        for i, pred in zip(index.tolist(), predictions):
            h0, w0 = (int(v) for v in batch["orig_size"][i])
            scale = torch.tensor([w0 / width, h0 / height, w0 / width, h0 / height])
            image_id = len(self.images) + 1
            self.images.append({"id": image_id, "height": h0, "width": w0})
            target = batch[self.task][i]
            self.ground_truth.append({"image_id": image_id, "boxes": target["boxes"].detach().cpu().float(),
                                      "labels": target["labels"].detach().cpu()})
            self.detections.append({"image_id": image_id, "boxes": pred["boxes"].detach().cpu().float() * scale,
                                    "scores": pred["scores"].detach().cpu(), "labels": pred["labels"].detach().cpu()})

    def evaluate(self) -> Dict[str, float]:
        if not self.images:
            return {name: math.nan for name in _COCO_STATS}
        return coco_detection_metrics(self.images, self.ground_truth, self.detections, self.class_names)


@TASKS.register("det")
class DetTask(Task):
    """FCOS detection on the FPN levels ``levels`` (default P3..P5: neck indices 1..3, strides 8..32).

    Args:
        num_convs: conv+GroupNorm+ReLU blocks in each of the cls and reg towers (FCOS uses 4; 2 keeps
            the head cheaper than a resnet18 backbone in small CPU runs).
        size_ranges: per level (lo, hi) of max(l,t,r,b) in input px (hi may be math.inf or None).
        center_radius: center-sampling radius in strides.
        prior_prob: initial foreground probability of the classifier.
        focal_alpha, focal_gamma: sigmoid focal loss parameters.
        score_thresh, nms_iou, max_detections, pre_nms_topk: decoding (see ``fcos.postprocess``).
        levels: which neck maps the head uses.
    """

    name = "det"
    metrics = DET_METRICS
    primary_metric = "map"

    def __init__(self, num_convs: int = 2,
                 size_ranges: Sequence[Tuple[float, float]] = fcos.DEFAULT_SIZE_RANGES,
                 center_radius: float = 1.5, prior_prob: float = 0.01,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 score_thresh: float = 0.05, nms_iou: float = 0.6, max_detections: int = 100,
                 pre_nms_topk: int = 1000, levels: Sequence[int] = (1, 2, 3)):
        if len(size_ranges) != len(levels):
            raise ValueError(f"det: {len(size_ranges)} size_ranges for {len(levels)} levels")
        from mtwork.data.bdd100k import DET_CATEGORIES  # lazily: the dataset module owns the class list

        self.class_names = list(DET_CATEGORIES)
        self.num_classes = len(self.class_names)
        self.num_convs = num_convs
        self.size_ranges = tuple((float(lo), math.inf if hi is None else float(hi)) for lo, hi in size_ranges)
        self.center_radius = center_radius
        self.prior_prob = prior_prob
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.score_thresh = score_thresh
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.pre_nms_topk = pre_nms_topk
        self.levels = tuple(levels)

    def build_head(self, spec: FeatureSpec) -> nn.Module:
        if max(self.levels) >= len(spec.strides):
            raise ValueError(f"det levels {self.levels} but the neck has {len(spec.strides)} levels")
        strides = [spec.strides[i] for i in self.levels]
        return fcos.FCOSHead(spec.channels, self.num_classes, strides, self.levels, self.num_convs, self.prior_prob)

    def loss_terms(self, outputs: Mapping[str, Any], batch: Mapping[str, Any],
                   labeled: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{"cls", "box", "ctr"} over the labeled images (training frame boxes in batch["det"])."""
        index = torch.nonzero(labeled).flatten()
        targets = [batch[self.name][i] for i in index.tolist()]
        index = index.to(outputs["cls"][0].device)
        return fcos.fcos_loss(fcos.select_images(outputs, index), targets, self.size_ranges,
                              self.center_radius, self.focal_alpha, self.focal_gamma)

    def loss(self, outputs: Mapping[str, Any], batch: Mapping[str, Any], labeled: torch.Tensor) -> torch.Tensor:
        return sum(self.loss_terms(outputs, batch, labeled).values())

    def postprocess(self, outputs: Mapping[str, Any], input_size: Sequence[int]) -> List[Dict[str, torch.Tensor]]:
        return fcos.postprocess(outputs, input_size, self.score_thresh, self.nms_iou,
                                self.max_detections, self.pre_nms_topk)

    def evaluator(self) -> DetEvaluator:
        return DetEvaluator(self.class_names, self.postprocess, task=self.name)
