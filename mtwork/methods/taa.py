"""Task-Adapted Attention (TAA, source 2): a pretrained Swin-V2 window attention plus a task-modulated bias.

Built from an existing timm ``WindowAttention`` whose modules it *shares* (qkv, q_bias/v_bias,
logit_scale, cpb_mlp, relative coordinate/index buffers, proj): nothing of the pretrained attention is
copied, so the frozen backbone is held in memory once, and an adapter file never contains it.

Pre-softmax logits, per window, per head h (N = window area, tokens):

    logits = cos(q, k) * exp(min(logit_scale_h, log 100))      # timm's cosine attention, unchanged
           + 16 * sigmoid(cpb_mlp(relative coords))            # timm's continuous position bias
           + A'_h(e)                                           # TAA (this module)
           + shift mask                                        # 0 / -100, shifted windows only
    A'_h(e) = (1 + gamma_h(e)) * A_h + beta_h(e)

A (heads, N, N) is a learnable task-adapted relative bias. It is added *after* the cosine similarity
has been multiplied by the logit scale, like the position bias, so the learned logit scale of the
pretrained head does not rescale it (the paper treats A as a bias beside the position bias).
There is no 1/sqrt(d) anywhere: Swin-V2's cosine attention is scaled only by its logit scale, and
TAA keeps exactly that scaling (the released VTAGML code got the scale of its attention wrong).

FiLM granularity (our choice): gamma(e), beta(e) are linear maps of the task embedding e to one value
per (head, key position), shape (heads, 1, N), broadcast over query positions. Per-head *scalars*
would make beta a no-op, because softmax is invariant to adding the same constant to a whole row;
per-key values keep FiLM cheap (2 * heads * N outputs) yet let beta move attention between keys. This
is also the column-wise FiLM of the released code. Per-head full (N, N) matrices would cost
heads * N^2 outputs per embedding dimension (20 k x heads for a 12x12 window), which we do not use.

A, gamma and beta start at zero, so at initialisation TAA computes exactly the pretrained attention.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import WindowAttention
from torch import nn


class TaskAdaptedAttention(nn.Module):
    """Window attention with a task-modulated bias on the logits.

    Args:
        attn: the pretrained timm Swin-V2 ``WindowAttention`` (shared, not copied; its freezing is the
            owner's business).
        task_embed_dim: D, the size of the task embedding e.

    Shapes: x (B_*, N, C) with B_* = batch * windows (timm's window order: image-major), mask
    (windows, N, N) of 0 / -100 or None, e (D,) for one task shared by the whole batch, (B, D) for
    one embedding per image, or None for the plain pretrained attention.
    """

    def __init__(self, attn: WindowAttention, task_embed_dim: int):
        super().__init__()
        if not isinstance(attn, WindowAttention):
            raise TypeError(f"TAA wraps a timm Swin-V2 WindowAttention, got {type(attn).__name__}")
        self.attn = attn
        self.num_heads = int(attn.num_heads)
        self.window_size = tuple(int(w) for w in attn.window_size)
        self.window_area = self.window_size[0] * self.window_size[1]
        self.task_embed_dim = int(task_embed_dim)
        heads, n = self.num_heads, self.window_area
        self.A = nn.Parameter(torch.zeros(heads, n, n))
        self.gamma = nn.Linear(self.task_embed_dim, heads * n)
        self.beta = nn.Linear(self.task_embed_dim, heads * n)
        for lin in (self.gamma, self.beta):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def task_bias(self, task_embedding: torch.Tensor) -> torch.Tensor:
        """A'(e) = (1 + gamma(e)) * A + beta(e): (heads, N, N) for e (D,), (B, heads, N, N) for e (B, D)."""
        heads, n = self.num_heads, self.window_area
        lead = task_embedding.shape[:-1]  # () or (B,)
        gamma = self.gamma(task_embedding).view(*lead, heads, 1, n)
        beta = self.beta(task_embedding).view(*lead, heads, 1, n)
        return (1 + gamma) * self.A + beta

    def _qkv(self, x: torch.Tensor):
        """timm's q, k, v projection (B_*, heads, N, C/heads) each, with its k bias of zeros."""
        attn = self.attn
        b_, n, _ = x.shape
        if attn.q_bias is None:
            qkv = attn.qkv(x)
        else:
            qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            if attn.qkv_bias_separate:
                qkv = attn.qkv(x) + qkv_bias
            else:
                qkv = F.linear(x, weight=attn.qkv.weight, bias=qkv_bias)
        qkv = qkv.reshape(b_, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def position_bias(self) -> torch.Tensor:
        """timm's continuous position bias, 16 * sigmoid(cpb_mlp(coords)): (heads, N, N)."""
        attn = self.attn
        table = attn.cpb_mlp(attn.relative_coords_table).view(-1, self.num_heads)
        bias = table[attn.relative_position_index.view(-1)].view(self.window_area, self.window_area, -1)
        return 16 * torch.sigmoid(bias.permute(2, 0, 1).contiguous())

    def _logits(self, q: torch.Tensor, k: torch.Tensor, task_embedding: Optional[torch.Tensor],
                mask: Optional[torch.Tensor]) -> torch.Tensor:
        b_, heads, n, _ = q.shape
        if (n, tuple(self.attn.window_size)) != (self.window_area, self.window_size):
            raise ValueError(f"TAA was built for {self.window_size} windows ({self.window_area} tokens), got "
                             f"{n} tokens with attention window {tuple(self.attn.window_size)}")
        # cosine attention scaled by the learned, clamped logit scale: exactly timm's expression
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logit_scale = torch.clamp(self.attn.logit_scale, max=math.log(1.0 / 0.01)).exp()
        logits = logits * logit_scale
        logits = logits + self.position_bias().unsqueeze(0)
        # the task bias joins the position bias after the scaling (never multiplied by logit_scale)
        if task_embedding is not None:
            bias = self.task_bias(task_embedding)
            if bias.dim() == 3:
                logits = logits + bias.unsqueeze(0)
            else:  # one bias per image: windows are image-major in timm's partition
                images = bias.shape[0]
                if b_ % images:
                    raise ValueError(f"{b_} windows cannot be split over {images} task embeddings")
                logits = (logits.view(images, b_ // images, heads, n, n) + bias.unsqueeze(1)).view(b_, heads, n, n)
        if mask is not None:
            num_win = mask.shape[0]
            logits = logits.view(-1, num_win, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            logits = logits.view(-1, heads, n, n)
        return logits

    def logits(self, x: torch.Tensor, task_embedding: Optional[torch.Tensor] = None,
               mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The pre-softmax attention logits (B_*, heads, N, N), shift mask included."""
        q, k, _ = self._qkv(x)
        return self._logits(q, k, task_embedding, mask)

    def forward(self, x: torch.Tensor, task_embedding: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B_*, N, C) -> (B_*, N, C)."""
        b_, n, c = x.shape
        q, k, v = self._qkv(x)
        attn = self.attn.softmax(self._logits(q, k, task_embedding, mask))
        attn = self.attn.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.attn.proj_drop(self.attn.proj(x))

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, num_heads={self.num_heads}, task_embed_dim={self.task_embed_dim}"
