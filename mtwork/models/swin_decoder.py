"""Per-task Swin-V2 decoder of source 2 (VTAGML): 4 stages x 2 Swin-V2 blocks with skips from the encoder.

Layout (input: the encoder's 4 stage maps, strides 4, 8, 16, 32, deepest last):

    stage 0 (stride 32):  x = Linear(C_3 -> d_0)(map_3)                         -> 2 blocks (heads h_0)
    stage k (k = 1..3, stride 32 / 2^k):
        x = Linear(d_{k-1} -> d_k)(bilinear x2 of x)                 # upsampling of this stage
        x = Linear(d_k + C_{3-k} -> d_k)(concat(x, map_{3-k}))       # skip from the encoder
        -> 2 blocks (heads h_k)
    head: LayerNorm(d_3) -> 1x1 conv to out_channels (stride 4) -> bilinear x4 to the input size

The paper states "4 stages x 2 Swin blocks, heads 48/24/12/6, x2 upsampling per stage". Our reading: the
x2 upsampling sits at the entry of stages 1-3 (three x2 steps take stride 32 to 4), and the head's final
x4 takes stride 4 to the input resolution. Upsampling goes to the skip map's exact size rather than a
blind x2, because timm's patch merging pads odd sizes (a 7-wide map becomes 4 wide, not 3.5) and a
strict x2 would then be one column off.

Heads: the paper's 48/24/12/6 is for Swin-B; ``dims`` must then be divisible by them (e.g. 32 channels
per head: dims 1536/768/384/192). The default here scales with the encoder: dims = encoder channels
reversed, heads = encoder heads reversed (for ``mtwork_swinv2_tiny``: dims 256/128/64/32, heads
8/4/2/1; for Swin-V2-B: 1024/512/256/128 with 32/16/8/4 heads), i.e. 32 channels per head throughout.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.swin_transformer_v2 import SwinTransformerV2Block
from torch import nn


def _to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


class SwinDecoder(nn.Module):
    """One task's decoder and head: 4 encoder maps -> one (B, out_channels, H, W) prediction.

    Args:
        in_channels: channels C_0..C_3 of the encoder maps at strides 4, 8, 16, 32.
        feature_sizes: (H_i, W_i) in tokens of those maps; the Swin blocks build their shift masks for
            these sizes, so they must be the sizes the encoder produces for the model's input size.
        out_channels: prediction channels of the task (classes, 1 for depth, 3 for normals, ...).
        dims: channels d_0..d_3 of the decoder stages, deepest first (default: ``in_channels`` reversed).
        heads: attention heads h_0..h_3 per stage, deepest first; each d_k must be divisible by h_k
            (default: d_k // 32, at least 1).
        window_size: Swin window size (tokens) of the decoder blocks; clipped by timm to the map size.
        depth: Swin blocks per stage (2 in the paper).
        mlp_ratio: hidden width of the blocks' MLPs relative to d_k.
    """

    def __init__(self, in_channels: Sequence[int], feature_sizes: Sequence[Tuple[int, int]], out_channels: int,
                 dims: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None,
                 window_size: int = 7, depth: int = 2, mlp_ratio: float = 4.0):
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        feature_sizes = [tuple(int(s) for s in size) for size in feature_sizes]
        if len(in_channels) != 4 or len(feature_sizes) != 4:
            raise ValueError(f"the Swin decoder takes 4 encoder maps (strides 4..32), got {len(in_channels)} "
                             f"channel counts and {len(feature_sizes)} sizes")
        dims = [int(d) for d in (dims if dims is not None else in_channels[::-1])]
        heads = [int(h) for h in (heads if heads is not None else [max(d // 32, 1) for d in dims])]
        if len(dims) != 4 or len(heads) != 4:
            raise ValueError(f"decoder dims and heads need 4 entries each, got dims={dims} heads={heads}")
        for d, h in zip(dims, heads):
            if h < 1 or d % h:
                raise ValueError(f"decoder stage width {d} is not divisible by its {h} heads "
                                 f"(dims={dims}, heads={heads})")
        if depth < 1:
            raise ValueError(f"decoder depth must be >= 1, got {depth}")
        self.in_channels, self.feature_sizes, self.dims, self.heads = in_channels, feature_sizes, dims, heads
        self.out_channels = int(out_channels)

        self.proj_in = nn.Linear(in_channels[3], dims[0])
        self.up_proj = nn.ModuleList()  # d_{k-1} -> d_k after the x2 upsampling, stages 1..3
        self.fuse = nn.ModuleList()  # concat(x, skip) -> d_k, stages 1..3
        self.stages = nn.ModuleList()
        for k in range(4):
            level = 3 - k  # encoder map this stage works at (stride 4 * 2^level)
            if k > 0:
                self.up_proj.append(nn.Linear(dims[k - 1], dims[k]))
                self.fuse.append(nn.Linear(dims[k] + in_channels[level], dims[k]))
            self.stages.append(nn.Sequential(*[
                SwinTransformerV2Block(
                    dim=dims[k], input_resolution=feature_sizes[level], num_heads=heads[k],
                    window_size=window_size, shift_size=0 if j % 2 == 0 else window_size // 2,
                    mlp_ratio=mlp_ratio)
                for j in range(depth)]))
        self.norm = nn.LayerNorm(dims[3])
        self.head = nn.Conv2d(dims[3], self.out_channels, kernel_size=1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # timm's Swin init for linear layers (truncated normal, std 0.02, zero bias)
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, maps: Sequence[torch.Tensor], out_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """maps: 4 tensors (B, C_i, H_i, W_i), strides 4..32 -> (B, out_channels, *out_size).

        ``out_size`` (H, W) px defaults to 4x the stride-4 map (the input size for a patch-4 encoder).
        """
        if len(maps) != 4:
            raise ValueError(f"the Swin decoder takes 4 encoder maps, got {len(maps)}")
        for i, m in enumerate(maps):
            if tuple(m.shape[-2:]) != self.feature_sizes[i]:
                raise ValueError(f"decoder built for map {i} of size {self.feature_sizes[i]}, got "
                                 f"{tuple(m.shape[-2:])}")
        x = self.stages[0](self.proj_in(_to_nhwc(maps[3])))  # (B, H_3, W_3, d_0)
        for k in range(1, 4):
            skip = maps[3 - k]
            x = F.interpolate(_to_nchw(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.up_proj[k - 1](_to_nhwc(x))
            x = self.fuse[k - 1](torch.cat([x, _to_nhwc(skip)], dim=-1))
            x = self.stages[k](x)  # (B, H_{3-k}, W_{3-k}, d_k)
        y = self.head(_to_nchw(self.norm(x)))  # (B, out, H_0, W_0), stride 4
        if out_size is None:
            out_size = (4 * y.shape[-2], 4 * y.shape[-1])
        return F.interpolate(y, size=tuple(out_size), mode="bilinear", align_corners=False)

