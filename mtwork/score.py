"""``mtwork score``: score prediction files against BDD100K labels as the official toolkit does.

The official ``bdd100k`` toolkit cannot be installed beside Snakemake 9 (it needs pydantic<2), so
these follow its protocol with mtwork's own metric code: one implementation of each metric, shared
with ``mtwork evaluate``.

``score_det(gt, pred)``: Scalabel label and prediction files (a list of frames, or Scalabel's
``{"frames": [...]}``), as ``python -m bdd100k.eval.run -t det -g GT -r PRED``:
  * ground truth through ``mtwork.data.bdd100k.parse_det_frames`` (``NAME_MAPPING``; "other person",
    "other vehicle", "trailer" and crowd boxes are ignore regions of the class they map to);
  * predictions through ``parse_det_predictions`` (labels with ``category``, ``box2d`` inclusive pixel
    indices and ``score``);
  * like the toolkit's ``reorder_preds``, every ground-truth frame is scored: one without a prediction
    frame has no detections (counted as ``frames.missing_pred``); prediction frames naming no
    ground-truth frame are left out (``frames.unmatched_pred``);
  * ``mtwork.tasks.det.coco_detection_summary``: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs,
    ARm, ARl overall and per class, in percent; a class without ground truth has no value (JSON null,
    the toolkit's "-").
  ``attributes`` restricts the ground-truth frames to an attribute domain (same filter as
  ``BDD100KDataset(attributes=...)``), e.g. to score ``mtwork evaluate``'s export of a DG domain.

``score_masks(task, gt_dir, pred_dir)`` for ``drivable`` (on-disk ids 0 direct, 1 alternative,
2 background, in both folders) and ``sem_seg`` (train ids 0..18, 255 ignore): one confusion matrix
over every ground-truth mask ``<stem>.png`` and the prediction of the same stem; ground-truth pixels
of 255 are not counted; a missing prediction file, or a predicted value outside the classes, counts
its pixels as predicted as no class (false negatives, nobody's false positive). IoU per class and
mIoU (mean over classes with a non-empty union; a class absent from both sides is null) in percent,
plus pixel accuracy: ``mtwork.tasks.segmentation``'s ``confusion_matrix`` / ``miou_from_confusion``.

Outputs are JSON objects (NaN written as null).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from mtwork.data.bdd100k import (
    DET_CATEGORIES,
    DRIVABLE_CLASSES,
    SEMSEG_CLASSES,
    DatasetError,
    read_json,
    valid_drivable,
    valid_semseg,
    attribute_filter,
    list_masks,
    match_attributes,
    parse_det_frames,
    parse_det_predictions,
    parse_frame_attributes,
    read_mask,
)
from mtwork.data.batch import IGNORE_INDEX
from mtwork.tasks.det import coco_detection_summary
from mtwork.tasks.segmentation import confusion_matrix, miou_from_confusion, pixel_accuracy


def _raise(message: str) -> None:
    raise DatasetError(message)


def score_det(gt_path: str | os.PathLike, pred_path: str | os.PathLike,
              attributes: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Detection scores of a Scalabel prediction file (module docstring).

    Returns {"AP", "AP50", ..., "ARl": % overall, "per_class": {class: {metric: %}}, "frames": {"gt",
    "pred", "missing_pred", "unmatched_pred"}, "ignore_regions": {category: n}, "skipped_categories":
    {category: n}} (plus "attributes" and "frames.other_attributes"/"unattributed" with a filter).
    ``DatasetError`` naming the file, frame and key for bad input.
    """
    gt_path, pred_path = Path(gt_path), Path(pred_path)
    gt_data = read_json(gt_path, "ground-truth label file")
    skipped, ignored = Counter(), Counter()
    gt_frames = parse_det_frames(gt_data, str(gt_path), _raise, skipped, ignore_regions=True, ignored=ignored)
    frames_info: Dict[str, int] = {}
    if attributes is not None:
        filt = attribute_filter(attributes)
        known = parse_frame_attributes(gt_data, str(gt_path), _raise)
        verdicts = {name: match_attributes(known.get(name), filt) for name in gt_frames}
        frames_info["other_attributes"] = sum(v is False for v in verdicts.values())
        frames_info["unattributed"] = sum(v is None for v in verdicts.values())
        gt_frames = {name: boxes for name, boxes in gt_frames.items() if verdicts[name]}
    if not gt_frames:
        raise DatasetError(f"{gt_path}: no ground-truth frame to score" + (" matches the attributes" if attributes else ""))
    predictions = parse_det_predictions(read_json(pred_path, "prediction file"), str(pred_path), _raise)

    images, ground_truth, detections = [], [], []
    for image_id, name in enumerate(sorted(gt_frames), start=1):
        boxes = np.asarray(gt_frames[name], dtype=np.float64).reshape(-1, 6)
        ignore = boxes[:, 5] > 0
        images.append({"id": image_id})
        ground_truth.append({"image_id": image_id, "boxes": boxes[~ignore, 1:5], "labels": boxes[~ignore, 0].astype(int),
                             "ignore_boxes": boxes[ignore, 1:5], "ignore_labels": boxes[ignore, 0].astype(int)})
        preds = np.asarray(predictions.get(name, []), dtype=np.float64).reshape(-1, 6)
        detections.append({"image_id": image_id, "boxes": preds[:, 1:5], "scores": preds[:, 5],
                           "labels": preds[:, 0].astype(int)})
    summary = coco_detection_summary(images, ground_truth, detections, DET_CATEGORIES)
    frames_info.update({
        "gt": len(gt_frames),
        "pred": len(predictions),
        "missing_pred": sum(name not in predictions for name in gt_frames),
        "unmatched_pred": sum(name not in gt_frames for name in predictions),
    })
    out: Dict[str, Any] = dict(summary["overall"])
    out["per_class"] = summary["per_class"]
    out["frames"] = frames_info
    out["ignore_regions"] = dict(sorted(ignored.items()))
    out["skipped_categories"] = dict(sorted(skipped.items()))
    if attributes is not None:
        out["attributes"] = {k: sorted(v) for k, v in attribute_filter(attributes).items()}
    return out


#: Mask tasks ``score_masks`` knows: {task: (class names in class-id order, reader of one mask file
#: -> class ids (ground truth: invalid ids are an error naming the file), value that is the class id)}.
MASK_SCORES: Dict[str, Tuple[Tuple[str, ...], Callable[[np.ndarray, Path], np.ndarray]]] = {
    # drivable files hold the toolkit's on-disk ids; decoded to mtwork's training ids (one mapping)
    "drivable": (DRIVABLE_CLASSES, valid_drivable),
    "sem_seg": (SEMSEG_CLASSES, valid_semseg),
}


def _prediction_ids(task: str, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """A prediction mask -> class ids, with every value outside the classes as ``num_classes``."""
    if task == "drivable":
        from mtwork.data.bdd100k import decode_drivable

        mask = decode_drivable(np.clip(mask, 0, 255).astype(np.uint8))  # unknown disk ids -> 255
    ids = mask.astype(np.int64)
    ids[(ids < 0) | (ids >= num_classes)] = num_classes
    return ids


def score_masks(task: str, gt_dir: str | os.PathLike, pred_dir: str | os.PathLike) -> Dict[str, Any]:
    """Segmentation scores of a folder of prediction PNGs (module docstring).

    Returns {"mIoU": %, "IoU": {class: % or NaN}, "pixel_acc": %, "images": {"gt", "pred",
    "missing_pred", "unmatched_pred"}}.
    """
    if task not in MASK_SCORES:
        raise ValueError(f"unknown mask task '{task}' (known: {', '.join(MASK_SCORES)})")
    class_names, read_gt = MASK_SCORES[task]
    k = len(class_names)
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    for directory, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not directory.is_dir():
            raise DatasetError(f"{directory}: {what} mask folder not found")
    gt_masks, pred_masks = list_masks(gt_dir), list_masks(pred_dir)
    if not gt_masks:
        raise DatasetError(f"{gt_dir}: no ground-truth masks (*.png)")
    # column k: ground-truth pixels predicted as no class
    confusion = torch.zeros((k + 1, k + 1), dtype=torch.int64)
    for stem, gt_file in gt_masks.items():
        gt = read_gt(read_mask(gt_file), gt_file)
        if stem in pred_masks:
            pred = _prediction_ids(task, read_mask(pred_masks[stem]), k)
            if pred.shape != gt.shape:
                raise DatasetError(f"{pred_masks[stem]}: prediction is {pred.shape[0]}x{pred.shape[1]} but the "
                                   f"ground truth {gt_file} is {gt.shape[0]}x{gt.shape[1]}")
        else:
            pred = np.full(gt.shape, k, dtype=np.int64)
        confusion += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt.astype(np.int64)), k + 1,
                                      IGNORE_INDEX)
    miou, iou = miou_from_confusion(confusion, num_classes=k)
    return {
        "mIoU": 100.0 * miou,
        "IoU": {name: 100.0 * float(v) for name, v in zip(class_names, iou)},
        "pixel_acc": 100.0 * pixel_accuracy(confusion),
        "images": {
            "gt": len(gt_masks),
            "pred": len(pred_masks),
            "missing_pred": sum(stem not in pred_masks for stem in gt_masks),
            "unmatched_pred": sum(stem not in gt_masks for stem in pred_masks),
        },
    }


def json_ready(value: Any) -> Any:
    """NaN -> None (JSON null: "no value", as the toolkit's "-"), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
