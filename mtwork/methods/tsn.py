"""Task-Scaled Norm (TSN, source 2): a pretrained LayerNorm whose affine transform is modulated per task.

    y = LN(x) * (weight * (1 + gamma(e))) + (bias + beta(e))

LN(x) is the parameter-free normalisation over the last dimension (C channels); weight and bias are the
pretrained LayerNorm's (shared with it, not copied, and left to the owner to freeze); gamma and beta
are linear maps of the task embedding e (D,) -> (C,), both starting at zero (weight and bias), so at
initialisation TSN computes exactly the pretrained LayerNorm. The paper modulates the scale, and per
its text also the shift; both are modulated here. (The released VTAGML code never enables TSN.)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class TaskScaledNorm(nn.Module):
    """FiLM-modulated LayerNorm built from a pretrained ``nn.LayerNorm`` over the last dimension.

    Shapes: x (B, ..., C); e (D,) for one task shared by the batch, (B, D) for one embedding per image,
    or None for the plain pretrained LayerNorm. Output: the shape of x.
    """

    def __init__(self, norm: nn.LayerNorm, task_embed_dim: int):
        super().__init__()
        if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
            raise TypeError(f"TSN is built from an nn.LayerNorm over one dimension, got {norm!r}")
        if norm.weight is None:
            raise ValueError("TSN modulates the LayerNorm's affine weight; this LayerNorm has none")
        self.norm = norm
        self.channels = int(norm.normalized_shape[0])
        self.task_embed_dim = int(task_embed_dim)
        self.gamma = nn.Linear(self.task_embed_dim, self.channels)
        self.beta = nn.Linear(self.task_embed_dim, self.channels)
        for lin in (self.gamma, self.beta):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, task_embedding: Optional[torch.Tensor] = None) -> torch.Tensor:
        if task_embedding is None:
            return self.norm(x)
        gamma, beta = self.gamma(task_embedding), self.beta(task_embedding)  # (C,) or (B, C)
        if gamma.dim() == 2:  # one modulation per image: broadcast over the token dimensions
            shape = (gamma.shape[0],) + (1,) * (x.dim() - 2) + (self.channels,)
            gamma, beta = gamma.view(shape), beta.view(shape)
        bias = self.norm.bias if self.norm.bias is not None else torch.zeros_like(self.norm.weight)
        y = F.layer_norm(x, self.norm.normalized_shape, None, None, self.norm.eps)
        return y * (self.norm.weight * (1 + gamma)) + (bias + beta)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, task_embed_dim={self.task_embed_dim}"
