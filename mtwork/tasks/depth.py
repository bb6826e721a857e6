"""Task ``depth``: monocular z-depth regression in metres; plus the pieces the dense regression tasks
(``depth``, ``normals``, ``edges``) share: the head and the walk over labeled images at label size.

Batch keys (``mtwork.data.batch``):
    depth:            (B,H,W) float32 z-depth in metres (distance along the optical axis), 0 = invalid
                      (sky, bonnet, padding, unlabeled samples)
    labeled["depth"]: (B,) bool
Head output: (B,1,H,W) metres at the network input size, non-negative: ``DEPTH_UNIT * softplus(x)`` at
the end of the head, so the loss, the evaluator and any later use see the same non-negative depth. The
conv predicts in units of ``DEPTH_UNIT`` (10 m): road scenes span tens of metres, and a head whose
output starts near softplus(0) = 0.7 m would spend a short schedule learning the scale alone.

Loss (over the valid pixels, depth > 0, of the labeled samples):
    "berhu" (default; reverse Huber, Laina et al. 2016): with r = pred - gt and c = t * max |r| over
    the batch's valid pixels (t = ``berhu_threshold``, 0.2; c is not differentiated),
        berHu(r) = |r|                    if |r| <= c
                   (r^2 + c^2) / (2 c)    otherwise,
    averaged over the valid pixels; "l1": mean |r|.
Metrics (over every valid pixel of the evaluated set, each pixel weighing the same: running sums, not
a mean of per-image or per-batch means), at label size (on-disk frame: the predictions' letterboxed
region is resized bilinearly to ``orig_size``, see ``labeled_at_label_size``):
    rmse     sqrt(mean (pred - gt)^2)             metres, lower is better
    abs_rel  mean |pred - gt| / gt                 lower is better
    delta1   % of pixels with max(pred/gt, gt/pred) < 1.25     higher is better
    delta2   % of pixels with max(pred/gt, gt/pred) < 1.25^2   higher is better
    delta3   % of pixels with max(pred/gt, gt/pred) < 1.25^3   higher is better
(the three delta accuracies of Eigen et al. 2014 that depth tables print side by side)
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterator, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtwork.data.batch import dense_to_orig
from mtwork.engine.distributed import global_max, global_mean
from mtwork.tasks.base import TASKS, FeatureSpec, Metric, Task
from mtwork.tasks.segmentation import NORMS, SegmentationHead

#: delta accuracy threshold (ratio) of the delta1 metric; delta2 and delta3 use its square and cube.
DELTA_THRESHOLD = 1.25
#: metric name -> ratio threshold of the delta accuracies.
DELTA_THRESHOLDS = {"delta1": DELTA_THRESHOLD, "delta2": DELTA_THRESHOLD ** 2, "delta3": DELTA_THRESHOLD ** 3}
LOSSES = ("berhu", "l1")


# --------------------------------------------------------------------------------------------------
# shared by the dense regression tasks
# --------------------------------------------------------------------------------------------------
#: Metres per unit of the depth head's pre-activation output (see the module docstring).
DEPTH_UNIT = 10.0

#: Output activations of the dense regression heads, by name.
ACTIVATIONS = {
    "softplus": F.softplus,  # non-negative, smooth, no dead zone at 0 unlike ReLU
    "depth": lambda x: DEPTH_UNIT * F.softplus(x),  # metres, non-negative, starting at ~7 m

    "sigmoid": torch.sigmoid,  # edges: [0, 1] like the label
    "normalize": lambda x: F.normalize(x, dim=1),  # normals: unit vectors along the channel dim
    "identity": lambda x: x,
}


class DenseRegressionHead(SegmentationHead):
    """The semantic-FPN head of ``segmentation`` with ``out_channels`` outputs and an activation.

    forward(features: list of L maps (B,C,H/s,W/s), input_size: (H,W)) -> (B,out_channels,H,W); the
    activation is applied after the bilinear upsampling to the input size, so e.g. softplus depth
    stays non-negative and normalised normals stay unit length at every output pixel.
    Has no language path (``language_input`` None), unlike the segmentation head it builds on.
    """

    language_input = None

    def __init__(self, in_channels: int, out_channels: int, activation: str, num_levels: int = 4,
                 head_channels: int | None = None, norm: str = "gn"):
        if activation not in ACTIVATIONS:
            raise KeyError(f"unknown activation '{activation}' (known: {', '.join(sorted(ACTIVATIONS))})")
        super().__init__(in_channels, out_channels, num_levels=num_levels, head_channels=head_channels, norm=norm)
        self.activation = activation

    def enable_language(self, text_dim: int, num_classes: int) -> None:
        raise TypeError("dense regression heads have no language path")

    def forward(self, features: Sequence[torch.Tensor], input_size: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        return ACTIVATIONS[self.activation](super().forward(features, input_size))


class DenseRegressionTask(Task):
    """Base of ``depth``, ``normals`` and ``edges``: subclasses set ``out_channels`` and ``activation``.

    Args:
        head_channels: width of the head's convs (default: the FPN width).
        norm: "gn" (default) or "bn", as for the segmentation head.
    """

    out_channels: int = 1
    activation: str = "identity"

    def __init__(self, head_channels: int | None = None, norm: str = "gn"):
        if norm not in NORMS:
            raise KeyError(f"unknown norm '{norm}' (known: {', '.join(sorted(NORMS))})")
        self.head_channels = head_channels
        self.norm = norm

    def build_head(self, spec: FeatureSpec) -> nn.Module:
        return DenseRegressionHead(spec.channels, self.out_channels, self.activation,
                                   num_levels=len(spec.strides), head_channels=self.head_channels, norm=self.norm)


def labeled_training_pairs(outputs: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor,
                           task: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(outputs, target) of the labeled samples; the target must be in the outputs' (input) frame."""
    labeled = labeled.to(outputs.device)
    outputs = outputs[labeled]
    target = target.to(outputs.device)[labeled]
    if target.shape[-2:] != outputs.shape[-2:]:
        raise ValueError(
            f"{task} label size {tuple(target.shape[-2:])} != output size {tuple(outputs.shape[-2:])}: "
            "training labels must be in the network-input frame"
        )
    return outputs, target


def labeled_at_label_size(outputs: torch.Tensor, batch: Mapping[str, Any],
                          task: str) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (prediction (C,H0,W0) float32, label (..., H0, W0)) per labeled image of ``task``.

    Predictions (B,C,h,w) in the input frame are mapped to the image's on-disk frame
    (``batch["orig_size"]``) by ``mtwork.data.batch.dense_to_orig``: their valid region (without the
    letterbox padding, ``batch["valid_size"]``) resized bilinearly; labels are in that frame, padded
    at the bottom/right, and are cut to it.
    """
    labeled = batch["labeled"][task]
    labels = batch[task]
    for i in torch.nonzero(labeled).flatten().tolist():
        h0, w0 = (int(v) for v in batch["orig_size"][i])
        if labels.shape[-2] < h0 or labels.shape[-1] < w0:
            raise ValueError(f"{task} label {tuple(labels.shape[-2:])} smaller than orig_size {(h0, w0)}")
        pred = dense_to_orig(outputs[i], batch, i)
        yield pred, labels[i, ..., :h0, :w0].to(pred.device)


# --------------------------------------------------------------------------------------------------
# depth: pure loss and metric functions
# --------------------------------------------------------------------------------------------------
def berhu_loss(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """Mean berHu over the given pixels (1-D or any shape; all assumed valid); formula in the module doc.

    ``c`` = threshold * max |pred - target| is detached. When every residual is 0 the loss is 0; with
    no pixel at all, a graph-connected 0. Under data parallelism the max is over the global batch
    (every rank must call this, with or without pixels).
    """
    r = pred - target
    a = r.abs()
    c = threshold * global_max(a.max().detach() if a.numel() else a.new_zeros(()))
    # clamp: the quadratic branch is evaluated everywhere by torch.where, and a 0 divisor there would
    # put NaN into the gradient even where that branch is not selected
    c_safe = c.clamp(min=torch.finfo(a.dtype).tiny)
    if a.numel() == 0:
        return r.sum() * 0.0
    return torch.where(a <= c, a, (r * r + c * c) / (2 * c_safe)).mean()


def depth_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "berhu", berhu_threshold: float = 0.2) -> torch.Tensor:
    """Loss between pred (N,1,H,W) or (N,H,W) metres and target (N,H,W) metres over target > 0.

    A graph-connected zero when no pixel is valid (not NaN), so a batch without depth is harmless.
    Under data parallelism: the mean over the global batch's valid pixels, berHu's threshold from its
    largest residual (``mtwork.engine.distributed``).
    """
    if kind not in LOSSES:
        raise KeyError(f"unknown depth loss '{kind}' (known: {', '.join(LOSSES)})")
    if pred.dim() == 4:
        if pred.shape[1] != 1:
            raise ValueError(f"depth prediction must have 1 channel, got shape {tuple(pred.shape)}")
        pred = pred[:, 0]
    valid = target > 0
    p, t = pred[valid], target[valid].to(pred.dtype)
    if kind == "l1":
        local = (p - t).abs().mean() if p.numel() else pred.sum() * 0.0
    else:
        local = berhu_loss(p, t, berhu_threshold)
    return global_mean(local, valid.sum())


def depth_error_sums(pred: torch.Tensor, target: torch.Tensor) -> Dict[str, float]:
    """Running sums over the valid pixels (target > 0) of one prediction/label pair, float64.

    pred and target: same shape, metres. Returns {"n", "sq_err", "abs_rel", "delta1", "delta2", "delta3"}:
    the pixel count, sum (p - g)^2, sum |p - g| / g and the numbers of pixels with max(p/g, g/p) below
    1.25, 1.25^2 and 1.25^3 (a zero prediction has an infinite ratio and never counts).
    """
    if pred.shape != target.shape:
        raise ValueError(f"depth pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    valid = target > 0
    p = pred[valid].double()
    g = target[valid].double()
    ratio = torch.maximum(p / g, g / p)  # g > 0; p = 0 gives inf, which is > 1.25
    return {
        "n": float(valid.sum()),
        "sq_err": float(((p - g) ** 2).sum()),
        "abs_rel": float(((p - g).abs() / g).sum()),
        **{name: float((ratio < limit).sum()) for name, limit in DELTA_THRESHOLDS.items()},
    }


class DepthEvaluator:
    """Accumulates per-pixel sums over the whole evaluated set; ``evaluate()`` -> rmse, abs_rel, delta1..3.

    Metrics are NaN when no valid pixel was seen.
    """

    def __init__(self, task: str = "depth"):
        self.task = task
        self.reset()

    def reset(self) -> None:
        self.sums = {"n": 0.0, "sq_err": 0.0, "abs_rel": 0.0, **{name: 0.0 for name in DELTA_THRESHOLDS}}

    @torch.no_grad()
    def process(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        """outputs: (B,1,h,w) metres in the input frame; batch["depth"]: (B,H,W) on-disk frame."""
        for pred, label in labeled_at_label_size(outputs, batch, self.task):
            for key, value in depth_error_sums(pred[0], label).items():
                self.sums[key] += value

    def evaluate(self) -> Dict[str, float]:
        n = self.sums["n"]
        if n == 0:
            return {"rmse": math.nan, "abs_rel": math.nan, **{name: math.nan for name in DELTA_THRESHOLDS}}
        return {
            "rmse": math.sqrt(self.sums["sq_err"] / n),
            "abs_rel": self.sums["abs_rel"] / n,
            **{name: 100.0 * self.sums[name] / n for name in DELTA_THRESHOLDS},
        }


@TASKS.register("depth")
class DepthTask(DenseRegressionTask):
    """Depth in metres (module docstring). Args: loss "berhu" | "l1"; berhu_threshold (fraction of the
    batch's largest residual where berHu turns quadratic); head_channels, norm as for every dense head."""

    name = "depth"
    out_channels = 1
    activation = "depth"
    metrics = (
        Metric("rmse", False, "RMSE (m)"),
        Metric("abs_rel", False, "AbsRel"),
        Metric("delta1", True, "delta<1.25 (%)"),
        Metric("delta2", True, "delta<1.25^2 (%)"),
        Metric("delta3", True, "delta<1.25^3 (%)"),
    )
    primary_metric = "rmse"

    def __init__(self, loss: str = "berhu", berhu_threshold: float = 0.2, head_channels: int | None = None,
                 norm: str = "gn"):
        super().__init__(head_channels=head_channels, norm=norm)
        if loss not in LOSSES:
            raise KeyError(f"unknown depth loss '{loss}' (known: {', '.join(LOSSES)})")
        if not 0.0 < berhu_threshold <= 1.0:
            raise ValueError(f"berhu_threshold must be in (0, 1], got {berhu_threshold!r}")
        self.loss_kind = loss
        self.berhu_threshold = float(berhu_threshold)

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any], labeled: torch.Tensor) -> torch.Tensor:
        pred, target = labeled_training_pairs(outputs, batch[self.name], labeled, self.name)
        return depth_loss(pred, target, self.loss_kind, self.berhu_threshold)

    def evaluator(self) -> DepthEvaluator:
        return DepthEvaluator(self.name)
