"""Multi-scale adapters (source 1, "pretrain-adapt-finetune"): one bottleneck adapter per backbone scale.

This is *our documented reading* of source 1's multi-scale adapters (no official code or adapter
shapes were available): a residual bottleneck adapter per backbone scale (strides 4, 8, 16, 32),
trained in the adapt stage while the pretrained backbone is frozen, then trained together with
everything in the finetune stage. The up-projection starts at zero, so at initialisation each adapter
is the identity and the adapted model computes exactly what the plain model computes.

Two placements (``model.adapter_placement``; the paper's text allows both readings):

* ``outputs``: on the backbone's outputs, between the backbone and the FPN. The adapt stage changes
  what the FPN sees, never what the backbone's later stages see.
* ``stages``: after each backbone stage, *inside* the backbone's forward: the adapted output of stage
  i is what stage i + 1 consumes (and what the FPN gets). ``MultiTaskModel`` runs the backbone stage
  by stage (``mtwork.models.backbones.forward_stages``) with :meth:`MultiScaleAdapter.adapt` as the
  hook; the adapters' own ``forward`` on the output list is then the identity, so a method that holds a
  ``MultiScaleAdapter`` (the LV-Adapter) works unchanged under either placement.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from mtwork.methods.base import METHODS


class BottleneckAdapter(nn.Module):
    """y = x + up(GELU(dwconv3x3(down(x)))) on a (B,C,H,W) map, output (B,C,H,W).

    down: 1x1 conv C -> C/reduction; dwconv3x3: depthwise 3x3 (spatial context at little cost);
    up: 1x1 conv back to C with weight and bias initialised to zero (identity at init).
    """

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"adapter reduction must be >= 1, got {reduction}")
        hidden = max(channels // reduction, 1)
        self.down = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.up = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.dwconv(self.down(x))))


#: Where the adapters sit (module docstring).
PLACEMENTS = ("outputs", "stages")


class MultiScaleAdapter(nn.Module):
    """One ``BottleneckAdapter`` per backbone scale; forward(list of L maps) -> list of L maps.

    ``placement`` "outputs" (default): ``forward`` adapts each map. "stages": the adapters were applied
    between the backbone's stages through :meth:`adapt`, so ``forward`` passes the maps through
    (checking their number); set by ``MultiTaskModel`` with :meth:`set_placement`.
    """

    def __init__(self, channels: Sequence[int], reduction: int = 4, placement: str = "outputs"):
        super().__init__()
        self.adapters = nn.ModuleList([BottleneckAdapter(c, reduction) for c in channels])
        self.placement = "outputs"
        self.set_placement(placement)

    def set_placement(self, placement: str) -> "MultiScaleAdapter":
        if placement not in PLACEMENTS:
            raise ValueError(f"adapter placement must be one of {list(PLACEMENTS)}, got {placement!r}")
        self.placement = placement
        return self

    def adapt(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Scale ``index``'s adapter on one map (B,C_i,H_i,W_i): the hook between backbone stages."""
        return self.adapters[index](x)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(features) != len(self.adapters):
            raise ValueError(f"{len(self.adapters)} adapters for {len(features)} feature maps")
        if self.placement == "stages":
            return list(features)
        return [adapter(f) for adapter, f in zip(self.adapters, features)]

    def extra_repr(self) -> str:
        return f"placement={self.placement}"


@METHODS.register("multiscale_adapter")
def multiscale_adapter(channels: Sequence[int], reduction: int = 4) -> MultiScaleAdapter:
    return MultiScaleAdapter(channels, reduction)
