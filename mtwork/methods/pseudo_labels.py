"""Confidence-filtered pseudo-labels for unlabelled target images (self-training in UDA).

Segmentation only: a target pixel gets the class the model itself predicts there when that class's
probability is at least ``threshold`` (softmax over classes of the detached logits), and is ignored
(255) otherwise; the loss is the cross-entropy of the logits against those labels, averaged over the
pixels kept (0, with the graph kept, when none is). The teacher is the model being trained (online
self-training, as in CBST / IAST's confidence filtering without class balancing).

Regression tasks (depth, normals, edges) have no per-pixel confidence to filter by: they get no
pseudo-labels (``mtwork.protocols.uda_recipe`` applies this to ``semseg`` only).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from mtwork.data.batch import IGNORE_INDEX


def confident_labels(logits: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """logits (B, K, H, W) -> (labels (B, H, W) int64 with IGNORE_INDEX where max prob < threshold,
    kept (B, H, W) bool). Computed without gradient."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"pseudo-label threshold must be in (0, 1], got {threshold}")
    with torch.no_grad():
        prob, labels = torch.softmax(logits.detach().float(), dim=1).max(dim=1)
        kept = prob >= threshold
        labels = torch.where(kept, labels, torch.full_like(labels, IGNORE_INDEX))
    return labels, kept


def pseudo_label_loss(logits: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, float]:
    """(mean cross-entropy over the confident pixels, share of pixels kept in [0, 1])."""
    labels, kept = confident_labels(logits, threshold)
    share = float(kept.float().mean())
    if not kept.any():
        return logits.sum() * 0.0, share
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX), share
