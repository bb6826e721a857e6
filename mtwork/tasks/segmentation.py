"""Dense classification shared by ``semseg`` and ``drivable``: metrics, head, loss and evaluator.

Metric conventions (one place for both tasks):
- the confusion matrix has rows = ground truth, columns = prediction; pixels whose label is
  ``ignore_index`` (255) are not counted;
- IoU_k = TP_k / (TP_k + FP_k + FN_k); a class with union 0 (absent from both the ground truth and the
  predictions of the whole evaluated set) has IoU NaN and is *excluded* from the mean, so mIoU is the
  mean over the classes that occur;
- evaluation happens at label resolution: the logits' valid region (the letterboxed image without
  its padding, ``batch["valid_size"]``) is resized bilinearly to the on-disk size of each image
  (``batch["orig_size"]``, ``mtwork.data.batch.dense_to_orig``), then the arg-max is taken.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtwork.data.batch import IGNORE_INDEX, dense_to_orig
from mtwork.engine.distributed import global_mean
from mtwork.tasks.base import FeatureSpec, Metric, Task


# --------------------------------------------------------------------------------------------------
# pure metric functions
# --------------------------------------------------------------------------------------------------
def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Confusion matrix (K,K) int64, rows = ground truth class, columns = predicted class.

    Args:
        pred: (N,) or (B,H,W) long class ids in [0, K).
        target: same shape as ``pred``, long class ids in [0, K) or ``ignore_index``.
    Pixels whose target is ``ignore_index`` are skipped. Raises ValueError on shape mismatch or on
    ids outside [0, K) (other than ``ignore_index``), which would otherwise silently corrupt the counts.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long().to(pred.device)
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target ids outside [0, {num_classes}) and not ignore_index={ignore_index}")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted ids outside [0, {num_classes})")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().to(torch.int64)


def miou_from_confusion(cm: torch.Tensor, num_classes: int | None = None) -> Tuple[float, torch.Tensor]:
    """(mIoU, per-class IoU) as fractions in [0, 1] from a (K,K) confusion matrix (rows = GT).

    per-class IoU: (K,) float64, NaN for classes with union TP+FP+FN = 0 (absent from both GT and
    prediction); mIoU is the mean over the non-NaN classes (NaN when every class is absent).
    ``num_classes``: only the first K of the matrix's rows/columns are classes; the further columns
    count ground-truth pixels predicted as no class (e.g. a missing prediction file): false negatives
    of their row's class and nobody's false positives.
    """
    cm = cm.to(torch.float64)
    k = cm.shape[0] if num_classes is None else int(num_classes)
    tp = cm.diag()[:k]
    union = cm[:k, :k].sum(dim=0) + cm[:k].sum(dim=1) - tp  # TP + FP + FN
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
    present = ~torch.isnan(iou)
    miou = iou[present].mean().item() if present.any() else math.nan
    return miou, iou


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Fraction of non-ignored pixels predicted correctly (NaN when no pixel was counted)."""
    total = cm.sum().item()
    return cm.diag().sum().item() / total if total else math.nan


# --------------------------------------------------------------------------------------------------
# head
# --------------------------------------------------------------------------------------------------
def _group_norm(channels: int) -> nn.Module:
    # gcd keeps 32 groups for the usual widths and still works for any width
    return nn.GroupNorm(math.gcd(32, channels), channels)


NORMS: Dict[str, Callable[[int], nn.Module]] = {"bn": nn.BatchNorm2d, "gn": _group_norm}


def _conv_norm_relu(cin: int, cout: int, norm: str) -> nn.Sequential:
    if norm not in NORMS:
        raise KeyError(f"unknown norm '{norm}' (known: {', '.join(sorted(NORMS))})")
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), NORMS[norm](cout), nn.ReLU(inplace=True))


class SegmentationHead(nn.Module):
    """Semantic-FPN style head (Kirillov et al. 2019, simplified to one conv per level).

    Each FPN level gets a 3x3 conv+norm+ReLU, all levels are upsampled (bilinear) to the finest level
    (stride 4) and summed, then a 3x3 conv+norm+ReLU and a 1x1 classifier; the logits are upsampled
    bilinearly to the network input size.

    forward(features: list of L maps (B,C,H/s,W/s), input_size: (H,W)) -> logits (B,K,H,W)

    Optional language path (``enable_language``, used by the LV-Adapter): the head then also takes
    ``score_map`` (B,K_s,H/4,W/4), pixel-text similarities at the finest level, concatenated to the
    summed stride-4 features before the fuse conv. The concatenation is written as the fuse conv of
    the features plus a conv ``score_fuse`` (K_s -> width, 3x3) of the score maps, which is the same
    function, so the head's own weights keep their names.
    """

    #: what the language path of this head consumes (see ``mtwork.models.multitask``)
    language_input = "score_map"

    def __init__(self, in_channels: int, num_classes: int, num_levels: int = 4,
                 head_channels: int | None = None, norm: str = "gn"):
        super().__init__()
        width = head_channels or in_channels
        self.width = width
        self.num_classes = num_classes
        self.levels = nn.ModuleList([_conv_norm_relu(in_channels, width, norm) for _ in range(num_levels)])
        self.fuse = _conv_norm_relu(width, width, norm)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.score_fuse: nn.Module | None = None

    def enable_language(self, text_dim: int, num_classes: int) -> None:
        """Add the score-map input: ``num_classes`` maps concatenated to the fused features.
        (``text_dim`` is accepted for a uniform head interface; score maps are already similarities.)"""
        if num_classes != self.num_classes:
            raise ValueError(f"{num_classes} score maps for a head of {self.num_classes} classes")
        self.score_fuse = nn.Conv2d(num_classes, self.width, 3, padding=1, bias=False)

    def forward(self, features: Sequence[torch.Tensor], input_size: Sequence[int],
                score_map: torch.Tensor | None = None) -> torch.Tensor:
        if len(features) != len(self.levels):
            raise ValueError(f"segmentation head built for {len(self.levels)} levels, got {len(features)}")
        size = features[0].shape[-2:]
        x = self.levels[0](features[0])
        for conv, feat in zip(self.levels[1:], features[1:]):
            x = x + F.interpolate(conv(feat), size=size, mode="bilinear", align_corners=False)
        if self.score_fuse is None:
            if score_map is not None:
                raise ValueError("score_map given to a segmentation head without a language path")
            fused = self.fuse(x)
        else:
            if score_map is None or score_map.shape[-2:] != x.shape[-2:]:
                got = None if score_map is None else tuple(score_map.shape)
                raise ValueError(f"this head needs score_map (B,{self.num_classes},{size[0]},{size[1]}), got {got}")
            # fuse conv over concat([x, score_map]) == conv_x(x) + conv_s(score_map), then norm + ReLU
            fused = self.fuse[1:](self.fuse[0](x) + self.score_fuse(score_map.to(x.dtype)))
        logits = self.classifier(fused)
        return F.interpolate(logits, size=tuple(int(s) for s in input_size), mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------------
# loss and evaluator
# --------------------------------------------------------------------------------------------------
def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over the labeled samples, mean over their non-ignored pixels.

    logits (B,K,H,W), target (B,H,W) long (training frame: same H,W as the logits), labeled (B,) bool.
    When the labeled samples hold no valid pixel the loss is a graph-connected zero (not NaN). Under
    data parallelism the mean is over the valid pixels of the global batch (``global_mean``).
    """
    labeled = labeled.to(logits.device)
    logits = logits[labeled]
    target = target.to(logits.device)[labeled]
    if target.shape[-2:] != logits.shape[-2:]:
        raise ValueError(
            f"label size {tuple(target.shape[-2:])} != logits size {tuple(logits.shape[-2:])}: "
            "training labels must be in the network-input frame"
        )
    valid = target != ignore_index
    if not valid.any():
        return global_mean(logits.sum() * 0.0, 0)
    return global_mean(F.cross_entropy(logits, target, ignore_index=ignore_index), valid.sum())


class SegmentationEvaluator:
    """Accumulates a confusion matrix over the labeled images of one task.

    ``evaluate()`` returns the declared metrics only: {"miou": %, "pixel_acc": %}; per-class IoU
    (percent, NaN for absent classes) is available from ``per_class_iou()`` after ``evaluate()`` or at
    any time, keyed by class name. (Per-class values stay out of ``evaluate()`` so that every key it
    returns is a declared ``Metric`` with a direction.)
    """

    def __init__(self, task: str, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX):
        self.task = task
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        k = len(self.class_names)
        self.confusion = torch.zeros((k, k), dtype=torch.int64)

    @torch.no_grad()
    def process(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        """outputs: logits (B,K,h,w) in the input frame (letterboxed, ``batch["valid_size"]``);
        batch[task]: (B,H,W) on-disk frame, 255-padded."""
        labeled = batch["labeled"][self.task]
        masks = batch[self.task]
        for i in torch.nonzero(labeled).flatten().tolist():
            h0, w0 = (int(v) for v in batch["orig_size"][i])
            if masks.shape[-2] < h0 or masks.shape[-1] < w0:
                raise ValueError(f"{self.task} mask {tuple(masks.shape[-2:])} smaller than orig_size {(h0, w0)}")
            logits = dense_to_orig(outputs[i], batch, i)
            # max(dim).indices, not argmax(dim): the same first-maximum index, but argmax over the
            # channel dim of a (K,H,W) tensor takes a slow strided path on CPU (5x in a benchmark)
            pred = logits.max(dim=0).indices
            self.confusion += confusion_matrix(pred, masks[i, :h0, :w0], len(self.class_names), self.ignore_index)

    def evaluate(self) -> Dict[str, float]:
        miou, _ = miou_from_confusion(self.confusion)
        return {"miou": 100.0 * miou, "pixel_acc": 100.0 * pixel_accuracy(self.confusion)}

    def per_class_iou(self) -> Dict[str, float]:
        _, iou = miou_from_confusion(self.confusion)
        return {name: 100.0 * float(v) for name, v in zip(self.class_names, iou)}


class SegmentationTask(Task):
    """Base for per-pixel classification tasks; subclasses set ``name`` and ``_class_names()``.

    Args:
        head_channels: width of the head's convs (default: the FPN width).
        norm: "gn" (GroupNorm, default: independent of how many samples carry this task's label)
              or "bn".
    """

    metrics = (Metric("miou", True, "mIoU"), Metric("pixel_acc", True, "pixel acc."))
    primary_metric = "miou"

    def __init__(self, head_channels: int | None = None, norm: str = "gn"):
        if norm not in NORMS:
            raise KeyError(f"unknown norm '{norm}' (known: {', '.join(sorted(NORMS))})")
        self.head_channels = head_channels
        self.norm = norm
        self.class_names: List[str] = list(self._class_names())
        self.num_classes = len(self.class_names)

    @staticmethod
    def _class_names() -> Sequence[str]:
        raise NotImplementedError

    def build_head(self, spec: FeatureSpec) -> nn.Module:
        return SegmentationHead(spec.channels, self.num_classes, num_levels=len(spec.strides),
                                head_channels=self.head_channels, norm=self.norm)

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any], labeled: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(outputs, batch[self.name], labeled)

    def evaluator(self) -> SegmentationEvaluator:
        return SegmentationEvaluator(self.name, self.class_names)
