"""Task ``det``: BDD100K traffic-object detection (10 classes) with an FCOS head, COCO-style mAP.

The head, targets, loss and decoding live in ``mtwork.tasks.fcos``; this module binds them to the
task interface and evaluates with pycocotools (COCOeval, iouType "bbox") under the official BDD100K
protocol (``mtwork.data.bdd100k`` module docstring): ignore regions are iscrowd=1 annotations, and
AP/AP50/AP75/... overall and per class in percent as the toolkit reports them
(``coco_detection_summary``; ``mtwork score det`` runs the same function on Scalabel files).
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
#: The official toolkit's metrics in its order (percent): COCO's 12 summary numbers.
TOOLKIT_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
#: Each declared metric's toolkit name.
_DECLARED = {"map": "AP", "map50": "AP50", "map75": "AP75", "ar100": "AR100"}
# (precision or recall, IoU threshold or None = mean over 0.5:0.95, area range index, maxDets index)
_SUMMARY = {
    "AP": ("precision", None, 0, 2), "AP50": ("precision", 0.5, 0, 2), "AP75": ("precision", 0.75, 0, 2),
    "APs": ("precision", None, 1, 2), "APm": ("precision", None, 2, 2), "APl": ("precision", None, 3, 2),
    "AR1": ("recall", None, 0, 0), "AR10": ("recall", None, 0, 1), "AR100": ("recall", None, 0, 2),
    "ARs": ("recall", None, 1, 2), "ARm": ("recall", None, 2, 2), "ARl": ("recall", None, 3, 2),
}


def _rows(values: Any, width: int | None = None) -> List[Any]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    values = list(values)
    return [list(v)[:width] for v in values] if width else values


def coco_detection_summary(
    images: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
) -> Dict[str, Any]:
    """COCO bbox evaluation as the official BDD100K toolkit reports it (pycocotools, printing silenced).

    images: [{"id": int}] (height/width optional: COCOeval does not use them for boxes)
    ground_truth: [{"image_id", "boxes": (N,4) xyxy px, "labels": (N,) 0..K-1, optional
        "ignore_boxes": (M,4), "ignore_labels": (M,)}]: ignore regions become iscrowd=1 annotations,
        so a detection on one is neither a true nor a false positive and missing one costs nothing
        (pycocotools: IoU with a crowd box = intersection / detection area; a detection matches a
        regular box first and an ignore region only when no regular box is left to match)
    detections: [{"image_id", "boxes": (M,4) xyxy px, "scores": (M,), "labels": (M,) 0..K-1}]
    Lists, numpy arrays or tensors. Category ids are label + 1; area = w * h of the xyxy boxes.
    Returns {"overall": {metric: %}, "per_class": {class name: {metric: %}}} over ``TOOLKIT_METRICS``,
    each the mean of COCOeval's precision (AP) or recall (AR) entries that are not -1, as the
    toolkit's ``get_score``: NaN where there are none, i.e. a class without a non-ignored
    ground-truth box gives no AP (missing, not 0); a class with ground truth but no detection gives 0.
    Overall = the same mean over every class, i.e. the mean of the classes that have ground truth.
    """
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
    image_records = [{"id": int(im["id"]), "height": int(im.get("height", 0)), "width": int(im.get("width", 0))}
                     for im in images]
    annotations: List[Dict[str, Any]] = []
    for record in ground_truth:
        for prefix, crowd in (("", 0), ("ignore_", 1)):
            if f"{prefix}boxes" not in record:
                continue
            for box, label in zip(_rows(record[f"{prefix}boxes"], 4), _rows(record[f"{prefix}labels"])):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": int(record["image_id"]), "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": crowd,
                })
    results: List[Dict[str, Any]] = []
    for record in detections:
        for box, score, label in zip(_rows(record["boxes"], 4), _rows(record["scores"]), _rows(record["labels"])):
            x1, y1, x2, y2 = (float(v) for v in box)
            # what COCO.loadRes makes of a result (area w*h, iscrowd 0), built here so that no
            # detection at all is an empty result set rather than a special case
            results.append({"id": len(results) + 1, "image_id": int(record["image_id"]),
                            "category_id": int(label) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": (x2 - x1) * (y2 - y1), "score": float(score), "iscrowd": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": image_records, "categories": categories, "annotations": annotations}
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": copy.deepcopy(image_records), "categories": copy.deepcopy(categories),
                           "annotations": results}
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = sorted(im["id"] for im in image_records)
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params

    def score(metric: str, classes: Any) -> float:
        kind, iou, area, max_dets = _SUMMARY[metric]
        values = evaluator.eval[kind]  # precision (T,R,K,A,M), recall (T,K,A,M)
        if iou is not None:
            values = values[np.isclose(params.iouThrs, iou)]
        values = values[:, :, classes, area, max_dets] if kind == "precision" else values[:, classes, area, max_dets]
        values = values[values > -1]
        return 100.0 * float(values.mean()) if values.size else math.nan

    return {
        "overall": {m: score(m, slice(None)) for m in TOOLKIT_METRICS},
        "per_class": {name: {m: score(m, k) for m in TOOLKIT_METRICS} for k, name in enumerate(class_names)},
    }


def coco_detection_metrics(
    images: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
) -> Dict[str, float]:
    """The declared metrics {"map", "map50", "map75", "ar100"} in percent of ``coco_detection_summary``
    (same arguments): 0.0 where ground truth exists but nothing was detected, NaN without any
    non-ignored ground-truth box."""
    overall = coco_detection_summary(images, ground_truth, detections, class_names)["overall"]
    return {name: overall[toolkit] for name, toolkit in _DECLARED.items()}


class DetEvaluator:
    """Collects ground truth and predictions of the det-labeled images, then runs COCOeval.

    ``process(outputs, batch)``: outputs are the FCOS head's; predictions are decoded in the input
    frame (batch["image"] H,W, letterboxed: ``batch["valid_size"]``) and mapped to the on-disk frame
    (batch["orig_size"]) by ``mtwork.data.batch.boxes_to_orig`` (divided by the resize factor, clipped
    to the image; a box left with no width or height, i.e. lying in the padding, is dropped), where
    batch["det"] holds the ground truth (with its ignore regions) in evaluation batches.
    ``evaluate()`` -> {"map", "map50", "map75", "ar100"} in percent (NaN when no labeled image or no
    ground-truth box was seen); ``summary()`` -> the toolkit's numbers overall and per class
    (``coco_detection_summary``); ``scalabel_frames()`` -> the predictions as Scalabel frames (one per
    evaluated image, named by batch["names"]), the format ``bdd100k.eval`` and ``mtwork score det`` read.
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
        self.names: List[str] = []
        self.ground_truth: List[Dict[str, Any]] = []
        self.detections: List[Dict[str, Any]] = []

    @torch.no_grad()
    def process(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        from mtwork.data.batch import boxes_to_orig

        index = torch.nonzero(batch["labeled"][self.task]).flatten()
        if index.numel() == 0:
            return
        height, width = batch["image"].shape[-2:]
        predictions = self.postprocess(fcos.select_images(outputs, index), (height, width))
        names = batch.get("names")
        for i, pred in zip(index.tolist(), predictions):
            h0, w0 = (int(v) for v in batch["orig_size"][i])
            image_id = len(self.images) + 1
            self.images.append({"id": image_id, "height": h0, "width": w0})
            self.names.append(str(names[i]) if names is not None else f"{image_id}")
            target = batch[self.task][i]
            record = {"image_id": image_id, "boxes": target["boxes"].detach().cpu().float(),
                      "labels": target["labels"].detach().cpu()}
            if "ignore_boxes" in target:
                record.update(ignore_boxes=target["ignore_boxes"].detach().cpu().float(),
                              ignore_labels=target["ignore_labels"].detach().cpu())
            self.ground_truth.append(record)
            boxes = boxes_to_orig(pred["boxes"].detach().cpu(), batch, i)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            self.detections.append({"image_id": image_id, "boxes": boxes[keep],
                                    "scores": pred["scores"].detach().cpu().float()[keep],
                                    "labels": pred["labels"].detach().cpu()[keep]})

    def summary(self) -> Dict[str, Any]:
        if not self.images:
            nan = {m: math.nan for m in TOOLKIT_METRICS}
            return {"overall": dict(nan), "per_class": {name: dict(nan) for name in self.class_names}}
        return coco_detection_summary(self.images, self.ground_truth, self.detections, self.class_names)

    def evaluate(self) -> Dict[str, float]:
        overall = self.summary()["overall"]
        return {name: overall[toolkit] for name, toolkit in _DECLARED.items()}

    def scalabel_frames(self) -> List[Dict[str, Any]]:
        from mtwork.data.bdd100k import det_prediction_frame

        return [det_prediction_frame(name, det["boxes"], det["scores"], det["labels"])
                for name, det in zip(self.names, self.detections)]


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
