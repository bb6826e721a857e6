"""Swin-V2 encoders (timm ``SwinTransformerV2``) at paper scale and in miniature.

Paper scale (source 2) is Swin-V2-B, in two documented configurations:

* ``swinv2_base_window12_192``: 192 px, window 12 (timm's ``.ms_in22k`` ImageNet-22K weights);
* ``swinv2_base_window16_256``: 256 px, window 16 (timm's ``.ms_in1k`` weights), the resolution of the
  paper's Swin-V2-B. At 256 px the token maps are 64, 32, 16 and 8 wide, so timm clamps the last
  stage's window to 8 and drops the shift where a window covers the whole map (stages 3 and 4).

Both have depths (2, 2, 18, 2), so the adapted blocks are the same: stage 3 blocks 15-18 and both
stage-4 blocks (``mtwork.methods.vtagml.default_adapted_blocks``). The input size comes from
``vit.input_size`` ([192, 192] or [256, 256]). timm's ``swinv2_base_window12to16_192to256`` (ImageNet-22K,
fine-tuned at 256) is *not* this configuration: it was trained with ``pretrained_window_sizes``
(12, 12, 12, 6), which changes how the position-bias MLP's inputs are scaled.
The embedded default uses ``mtwork_swinv2_tiny``: the same timm class with a small configuration that
keeps the structure the method needs (4 stages; stage 3 has at least 4 blocks so the paper's "last
four blocks of stage 3 + both blocks of stage 4" can be adapted) and runs on a CPU.

Keys are timm's (``patch_embed.*``, ``layers.{i}.blocks.{j}.*``, ``layers.{i}.downsample.*``,
``norm.*``), so a file saved from ``create_swinv2(...).state_dict()`` is a timm-layout checkpoint
and imports through the ``timm`` checkpoint format like any other source.

timm's Swin-V2 stages return channels-last maps (B,H,W,C); ``encoder_maps`` turns them into the
(B,C,H,W) maps the decoders take.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2
from torch import nn

#: Residual post-norm weight of the embedded tiny Swin at initialisation (see ``init_res_post_norm``).
#: Chosen by measurement (docs/vit_adapters.md, "The frozen Swin carries information"): with 100 SimMIM
#: steps, 0.3 reached the SimMIM loss of timm's 0 and a linear probe at least as good, 1.0 trained
#: unstably to a higher loss and a worse probe.
RES_POST_NORM_INIT_TINY = 0.3

#: Configurations by arch name: keyword arguments of timm's ``SwinTransformerV2``, plus mtwork's own
#: ``res_post_norm_init`` (see ``init_res_post_norm``; absent = timm's 0).
SWIN_CONFIGS: Dict[str, Dict[str, Any]] = {
    # source 2's backbone (timm's registered model of the same name)
    "swinv2_base_window12_192": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    # the same at 256 px with window 16 (timm's registered swinv2_base_window16_256)
    "swinv2_base_window16_256": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=16),
    # embedded default: ~2.7 M parameters; window 4 divides every stage of a 64x112 or 128x224 input
    "mtwork_swinv2_tiny": dict(embed_dim=32, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8), window_size=4,
                               res_post_norm_init=RES_POST_NORM_INIT_TINY),
}


def swin_config(arch: str) -> Dict[str, Any]:
    """The timm keyword arguments of ``arch`` (without mtwork's ``res_post_norm_init``)."""
    try:
        config = dict(SWIN_CONFIGS[arch])
    except KeyError:
        raise ValueError(f"unknown Swin-V2 arch '{arch}'; known: {', '.join(sorted(SWIN_CONFIGS))}") from None
    config.pop("res_post_norm_init", None)
    return config


def res_post_norm_init(arch: str) -> float:
    """The post-norm weight ``arch`` starts from: 0 (timm's) unless its config says otherwise."""
    swin_config(arch)  # unknown arch -> ValueError
    return float(SWIN_CONFIGS[arch].get("res_post_norm_init", 0.0))


@torch.no_grad()
def init_res_post_norm(model: SwinTransformerV2, weight: float) -> None:
    """Set the weight of every block's residual post-norm (``norm1``, ``norm2``) to ``weight``, bias 0.

    Swin-V2 normalises each residual branch's output *before* adding it (``x + norm(attn(x))``). timm,
    like the official code (``_init_respostnorm``), starts these weights at 0, so that at initialisation
    every block is the identity and the network only grows its blocks' contribution over a long
    pretraining (hundreds of epochs upstream). A short embedded pretraining moves them only by about
    ``lr`` per AdamW step (100 steps at 1e-3 left them at 0.001-0.02), leaving the frozen blocks close
    to the identity. Everything source 2's adapters do inside a block passes through these weights (TAA
    changes the attention before ``norm1``; TSN scales ``weight``), so near-zero weights would also
    silence TAA and TSN. The tiny Swin therefore starts from ``RES_POST_NORM_INIT_TINY``: each branch
    adds a LayerNorm-normalised update of that RMS from the first step.
    """
    for layer in model.layers:
        for block in layer.blocks:
            for norm in (block.norm1, block.norm2):
                norm.weight.fill_(float(weight))
                norm.bias.zero_()


def create_swinv2(arch: str, img_size: Tuple[int, int], drop_path_rate: float = 0.0) -> SwinTransformerV2:
    """A randomly initialised timm Swin-V2 encoder (no classifier) for inputs of ``img_size`` (H, W) px,
    its residual post-norms set by ``init_res_post_norm(model, res_post_norm_init(arch))``.

    ``drop_path_rate`` defaults to 0: the encoder is frozen in source 2's method, and stochastic depth
    on frozen blocks would only add noise.
    """
    model = SwinTransformerV2(img_size=tuple(int(s) for s in img_size), num_classes=0,
                              drop_path_rate=drop_path_rate, **swin_config(arch))
    init_res_post_norm(model, res_post_norm_init(arch))
    return model


def swin_channels(model: SwinTransformerV2) -> List[int]:
    """Channels of the 4 stage outputs, e.g. [32, 64, 128, 256] (strides 4, 8, 16, 32)."""
    info = model.feature_info
    return list(info.channels()) if hasattr(info, "channels") else [int(i["num_chs"]) for i in info]


def encoder_maps(model: SwinTransformerV2, image: torch.Tensor, after_stage=None) -> List[torch.Tensor]:
    """image (B,3,H,W) -> the 4 stage outputs as (B,C_i,H/s_i,W/s_i), strides 4, 8, 16, 32.

    The stage outputs are taken *before* timm's final ``norm`` (which only the classifier uses).
    ``after_stage(i, map (B,C_i,H_i,W_i))`` (optional) replaces stage i's output before stage i + 1
    consumes it (``mtwork.models.backbones.forward_stages``).
    """
    x = model.patch_embed(image)  # (B,H/4,W/4,C)
    maps = []
    for i, layer in enumerate(model.layers):
        x = layer(x)
        m = x.permute(0, 3, 1, 2).contiguous()
        if after_stage is not None:
            m = after_stage(i, m)
            x = m.permute(0, 2, 3, 1)  # back to timm's channels-last for the next stage
        maps.append(m)
    return maps


class SwinV2Features(SwinTransformerV2):
    """timm's Swin-V2 as an mtwork backbone family member: forward gives the 4 stage maps
    (B,C_i,H/s_i,W/s_i) and ``feature_info`` answers ``channels()``/``reduction()`` like timm's
    ``features_only`` models. Its state dict keys are exactly timm's (it *is* the timm class)."""

    def __init__(self, arch: str, img_size: Tuple[int, int] = (224, 224), drop_path_rate: float = 0.0):
        super().__init__(img_size=tuple(int(s) for s in img_size), num_classes=0,
                         drop_path_rate=drop_path_rate, **swin_config(arch))
        from timm.models._features import FeatureInfo

        self.feature_info = FeatureInfo(list(self.feature_info), out_indices=(0, 1, 2, 3))
        init_res_post_norm(self, res_post_norm_init(arch))

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:  # type: ignore[override]
        return encoder_maps(self, image)

    def forward_stages(self, image: torch.Tensor, after_stage=None) -> List[torch.Tensor]:
        """``forward`` with a hook between stages (``mtwork.models.backbones.forward_stages``)."""
        return encoder_maps(self, image, after_stage)


def stage_blocks(model: SwinTransformerV2) -> Sequence[Sequence[nn.Module]]:
    """``blocks[stage][index]``: the transformer blocks, 0-based, as timm holds them."""
    return [list(layer.blocks) for layer in model.layers]
