"""Task ``edges``: 2-D texture edges, the Sobel gradient magnitude of the input image.

Label (``mtwork.tasks.dense_labels.sobel_edges``, computed by the reader from the *un-normalised*
uint8 image at its on-disk resolution): BT.601 luma in [0, 1], Sobel magnitude with replicate-padded
borders, divided by the largest magnitude a 3x3 window can reach (2 sqrt 5), so values lie in [0, 1].

Batch keys (``mtwork.data.batch``):
    edges:            (B,H,W) float32 in [0, 1]; -1 = invalid (padding, unlabeled samples)
    labeled["edges"]: (B,) bool (every image read with "edges" requested carries the label)
Head output: (B,1,H,W) in [0, 1] (sigmoid at the end of the head).

Loss: mean |pred - gt| over the valid pixels (gt >= 0) of the labeled samples.
Metric: edge_l1, the same mean absolute error over every valid pixel of the evaluated set (running
sums, on-disk frame: predictions resized bilinearly to ``orig_size``); lower is better.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping

import torch

from mtwork.engine.distributed import global_mean
from mtwork.tasks.base import TASKS, Metric
from mtwork.tasks.depth import DenseRegressionTask, labeled_at_label_size, labeled_training_pairs


def edges_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 between pred (N,1,H,W) or (N,H,W) and target (N,H,W) over target >= 0; 0 if none.
    Under data parallelism the mean is over the global batch's valid pixels (``global_mean``)."""
    if pred.dim() == 4:
        if pred.shape[1] != 1:
            raise ValueError(f"edge prediction must have 1 channel, got shape {tuple(pred.shape)}")
        pred = pred[:, 0]
    valid = target >= 0
    if not valid.any():
        return global_mean(pred.sum() * 0.0, 0)
    return global_mean((pred[valid] - target[valid].to(pred.dtype)).abs().mean(), valid.sum())


class EdgesEvaluator:
    """Accumulates the absolute error sum and the valid pixel count; ``evaluate()`` -> {"edge_l1"}."""

    def __init__(self, task: str = "edges"):
        self.task = task
        self.reset()

    def reset(self) -> None:
        self.abs_err = 0.0
        self.count = 0

    @torch.no_grad()
    def process(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        """outputs: (B,1,h,w) in the input frame; batch["edges"]: (B,H,W) on-disk frame."""
        for pred, label in labeled_at_label_size(outputs, batch, self.task):
            valid = label >= 0
            self.abs_err += float((pred[0][valid].double() - label[valid].double()).abs().sum())
            self.count += int(valid.sum())

    def evaluate(self) -> Dict[str, float]:
        return {"edge_l1": self.abs_err / self.count if self.count else math.nan}


@TASKS.register("edges")
class EdgesTask(DenseRegressionTask):
    """Sobel edges (module docstring). Args: head_channels, norm as for every dense head."""

    name = "edges"
    out_channels = 1
    activation = "sigmoid"
    metrics = (Metric("edge_l1", False, "edge L1"),)
    primary_metric = "edge_l1"

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any], labeled: torch.Tensor) -> torch.Tensor:
        pred, target = labeled_training_pairs(outputs, batch[self.name], labeled, self.name)
        return edges_loss(pred, target)

    def evaluator(self) -> EdgesEvaluator:
        return EdgesEvaluator(self.name)
