"""Necks: turn the backbone's multi-scale maps into maps of one common width for the task heads."""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork


class FPN(nn.Module):
    """Feature Pyramid Network (Lin et al. 2017) over the backbone's scales.

    Wraps ``torchvision.ops.FeaturePyramidNetwork`` (lateral 1x1 convs, top-down nearest upsampling,
    3x3 output convs) so that the rest of mtwork passes plain lists of maps.

    Args:
        in_channels: channels of each input map, finest first (e.g. resnet18: 64, 128, 256, 512).
        out_channels: C, the width of every output map.

    Input: list of L maps (B, C_i, H/s_i, W/s_i), strides s_i ascending (4, 8, 16, 32).
    Output: list of L maps (B, C, H/s_i, W/s_i), same order and sizes.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        if not in_channels:
            raise ValueError("FPN needs at least one input level")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.fpn = FeaturePyramidNetwork(self.in_channels, out_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"FPN built for {len(self.in_channels)} levels, got {len(features)} maps")
        named = OrderedDict((str(i), f) for i, f in enumerate(features))
        return list(self.fpn(named).values())
