"""Swin-V2 initialisation: the embedded tiny Swin starts its residual post-norms at RES_POST_NORM_INIT_TINY
(its blocks act from the first step), timm's configurations keep timm's zero (identity blocks), and the
`random` checkpoint format builds the same weights as create_swinv2."""
from __future__ import annotations

import torch

from mtwork.models.swin import (RES_POST_NORM_INIT_TINY, SWIN_CONFIGS, SwinV2Features, create_swinv2,
                                init_res_post_norm, res_post_norm_init, swin_config)

ARCH = "mtwork_swinv2_tiny"


def _post_norms(model):
    return [n for layer in model.layers for blk in layer.blocks for n in (blk.norm1, blk.norm2)]


def test_tiny_swin_post_norms_start_at_the_configured_weight():
    assert 0.0 < RES_POST_NORM_INIT_TINY <= 1.0
    model = create_swinv2(ARCH, (64, 128))
    norms = _post_norms(model)
    assert len(norms) == 2 * sum(SWIN_CONFIGS[ARCH]["depths"])
    for norm in norms:
        assert torch.all(norm.weight == RES_POST_NORM_INIT_TINY) and torch.all(norm.bias == 0)
    # only the residual post-norms: the patch embedding's, the patch mergings' and the final norm keep 1
    assert torch.all(model.patch_embed.norm.weight == 1) and torch.all(model.norm.weight == 1)
    assert all(torch.all(layer.downsample.norm.weight == 1) for layer in model.layers[1:])


def test_timm_configurations_keep_timm_zero_init():
    for arch in ("swinv2_base_window12_192", "swinv2_base_window16_256"):
        assert res_post_norm_init(arch) == 0.0
        assert "res_post_norm_init" not in swin_config(arch)
    assert "res_post_norm_init" not in swin_config(ARCH)  # mtwork's key never reaches timm


def test_zero_post_norms_make_every_block_the_identity_and_the_init_undoes_it():
    torch.manual_seed(0)
    model = create_swinv2(ARCH, (32, 64)).eval()
    block = model.layers[2].blocks[1]
    x = torch.randn(2, *model.layers[2].output_resolution, block.dim)
    init_res_post_norm(model, 0.0)
    with torch.no_grad():
        assert torch.equal(block(x), x)  # x + 0 * LN(...) + 0: timm's starting point
        init_res_post_norm(model, RES_POST_NORM_INIT_TINY)
        change = (block(x) - x).norm() / x.norm()
    # each branch adds a LayerNorm-normalised (unit-variance) update scaled by the weight: two branches
    # of RMS about RES_POST_NORM_INIT_TINY against an input of RMS 1
    assert 0.5 * RES_POST_NORM_INIT_TINY < change < 2.0 * 2 ** 0.5 * RES_POST_NORM_INIT_TINY


def test_random_format_model_has_the_same_initialisation():
    torch.manual_seed(3)
    a = create_swinv2(ARCH, (64, 128))
    torch.manual_seed(3)
    b = SwinV2Features(ARCH)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
