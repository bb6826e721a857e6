"""Task ``normals``: surface normals in the camera frame, derived from depth and camera intrinsics.

Batch keys (``mtwork.data.batch``):
    normals:            (B,3,H,W) float32 unit vectors, camera frame x right / y down / z forward,
                        oriented towards the camera; (0,0,0) = invalid (no depth there or at a
                        4-neighbour, image border, padding, unlabeled samples)
    camera:             (B,4) float32 intrinsics (fx, fy, u0, v0) px of the label frame (not needed by
                        the loss or metrics; the labels are made by ``mtwork.tasks.dense_labels``)
    labeled["normals"]: (B,) bool
Head output: (B,3,H,W) unit vectors (L2-normalised over the channels at the end of the head).

Loss over the valid pixels of the labeled samples (a pixel is valid when its label has length > 0.5):
    l1_weight * mean_pixels(sum_xyz |p - g|) + cosine_weight * mean_pixels(1 - cos(p, g)),
both weights 1 by default. The L1 term alone is what the source reports; the cosine term measures
exactly the angle the metrics score, and its gradient does not fade for large errors as the
L1 distance between unit vectors does near 180 degrees.

Metrics over every valid pixel of the evaluated set (on-disk frame; predictions are resized bilinearly
to ``orig_size`` and re-normalised), all in degrees or percent:
    mean_angle    mean angular error, exact running sum                     lower is better
    median_angle  median angular error from a histogram of ``bin_width``   lower is better
                  (0.01 deg) bins over [0, 180]: each of the two middle order statistics is read as
                  its bin's centre, so the result is within bin_width / 2 of the exact median, at a
                  fixed 18,000 counters instead of storing every pixel's angle
    within_11_25, within_22_5, within_30   % of pixels with error < 11.25 / 22.5 / 30 deg (exact)
                                                                              higher is better
Angles are atan2(|p x g|, p . g), accurate near 0 where acos loses digits; a zero-length prediction
counts as 90 degrees (it says nothing about the direction).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping

import torch
import torch.nn.functional as F

from mtwork.engine.distributed import global_mean
from mtwork.tasks.base import TASKS, Metric
from mtwork.tasks.depth import DenseRegressionTask, labeled_at_label_size, labeled_training_pairs

#: Angle thresholds (degrees) of the "within" metrics, with their metric names.
ANGLE_THRESHOLDS = {"within_11_25": 11.25, "within_22_5": 22.5, "within_30": 30.0}


def valid_normals(target: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) or (3,H,W) labels -> bool mask of pixels with a normal (zero vector = invalid)."""
    return target.norm(dim=-3) > 0.5


def angular_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees (float64) between (..., 3) vectors ``pred`` and ``target`` (any lengths > 0).

    A zero-length prediction gives 90 degrees.
    """
    p, g = pred.double(), target.double()
    cross = torch.linalg.cross(p, g, dim=-1).norm(dim=-1)
    dot = (p * g).sum(dim=-1)
    angle = torch.rad2deg(torch.atan2(cross, dot))
    return torch.where(p.norm(dim=-1) > 0, angle, torch.full_like(angle, 90.0))


def normals_loss(pred: torch.Tensor, target: torch.Tensor, l1_weight: float = 1.0,
                 cosine_weight: float = 1.0) -> torch.Tensor:
    """Loss between pred and target (N,3,H,W) over the target's valid pixels (module docstring).

    A graph-connected zero when no pixel is valid. Under data parallelism both means are over the
    global batch's valid pixels (``mtwork.engine.distributed.global_mean``).
    """
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"normals pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (N,3,H,W)")
    valid = valid_normals(target)
    if not valid.any():
        return global_mean(pred.sum() * 0.0, 0)
    p = pred.permute(0, 2, 3, 1)[valid]  # (P,3)
    g = target.permute(0, 2, 3, 1)[valid].to(p.dtype)
    l1 = (p - g).abs().sum(dim=-1).mean()
    cosine = (1.0 - F.cosine_similarity(p, g, dim=-1)).mean()
    return global_mean(l1_weight * l1 + cosine_weight * cosine, valid.sum())


class NormalsEvaluator:
    """Accumulates angle sums, threshold counts and an angle histogram over the evaluated set."""

    def __init__(self, task: str = "normals", bin_width: float = 0.01):
        if not 0.0 < bin_width <= 1.0:
            raise ValueError(f"bin_width must be in (0, 1] degrees, got {bin_width!r}")
        self.task = task
        self.bin_width = float(bin_width)
        self.num_bins = int(math.ceil(180.0 / self.bin_width))
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.angle_sum = 0.0
        self.within = {name: 0 for name in ANGLE_THRESHOLDS}
        self.histogram = torch.zeros(self.num_bins, dtype=torch.int64)

    def add_angles(self, angles: torch.Tensor) -> None:
        """Accumulate a flat tensor of per-pixel angular errors (degrees)."""
        angles = angles.reshape(-1).double().cpu()
        self.count += angles.numel()
        self.angle_sum += float(angles.sum())
        for name, threshold in ANGLE_THRESHOLDS.items():
            self.within[name] += int((angles < threshold).sum())
        bins = (angles / self.bin_width).floor().long().clamp(0, self.num_bins - 1)
        self.histogram += torch.bincount(bins, minlength=self.num_bins)

    @torch.no_grad()
    def process(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        """outputs: (B,3,h,w) in the input frame; batch["normals"]: (B,3,H,W) on-disk frame."""
        for pred, label in labeled_at_label_size(outputs, batch, self.task):
            valid = valid_normals(label)
            p = F.normalize(pred, dim=0).permute(1, 2, 0)[valid]  # bilinear mixing shortens vectors
            g = label.permute(1, 2, 0)[valid]
            self.add_angles(angular_error(p, g))

    def median(self) -> float:
        """Median angle (degrees) from the histogram: mean of the two middle order statistics' bins."""
        if self.count == 0:
            return math.nan
        cumulative = torch.cumsum(self.histogram, dim=0)
        # 1-based ranks of the middle order statistics (the same one twice for an odd count)
        ranks = torch.tensor([(self.count + 1) // 2, self.count // 2 + 1], dtype=torch.int64)
        bins = torch.searchsorted(cumulative, ranks)  # first bin whose cumulative count reaches the rank
        return float(((bins.double() + 0.5) * self.bin_width).mean())

    def evaluate(self) -> Dict[str, float]:
        if self.count == 0:
            return {"mean_angle": math.nan, "median_angle": math.nan, **{k: math.nan for k in ANGLE_THRESHOLDS}}
        return {
            "mean_angle": self.angle_sum / self.count,
            "median_angle": self.median(),
            **{name: 100.0 * n / self.count for name, n in self.within.items()},
        }


@TASKS.register("normals")
class NormalsTask(DenseRegressionTask):
    """Surface normals (module docstring). Args: l1_weight, cosine_weight (loss terms); bin_width
    (degrees, median histogram); head_channels, norm as for every dense head."""

    name = "normals"
    out_channels = 3
    activation = "normalize"
    metrics = (
        Metric("mean_angle", False, "mean angle (deg)"),
        Metric("median_angle", False, "median angle (deg)"),
        Metric("within_11_25", True, "<11.25 deg (%)"),
        Metric("within_22_5", True, "<22.5 deg (%)"),
        Metric("within_30", True, "<30 deg (%)"),
    )
    primary_metric = "mean_angle"

    def __init__(self, l1_weight: float = 1.0, cosine_weight: float = 1.0, bin_width: float = 0.01,
                 head_channels: int | None = None, norm: str = "gn"):
        super().__init__(head_channels=head_channels, norm=norm)
        if l1_weight < 0 or cosine_weight < 0 or l1_weight + cosine_weight == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got l1={l1_weight}, cosine={cosine_weight}")
        self.l1_weight = float(l1_weight)
        self.cosine_weight = float(cosine_weight)
        self.bin_width = float(bin_width)

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any], labeled: torch.Tensor) -> torch.Tensor:
        pred, target = labeled_training_pairs(outputs, batch[self.name], labeled, self.name)
        return normals_loss(pred, target, self.l1_weight, self.cosine_weight)

    def evaluator(self) -> NormalsEvaluator:
        return NormalsEvaluator(self.name, self.bin_width)
