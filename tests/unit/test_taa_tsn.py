"""Task-Adapted Attention and Task-Scaled Norm against timm's Swin-V2 attention and LayerNorm."""
from __future__ import annotations

import math

import pytest
import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2Block, WindowAttention
from torch import nn

from mtwork.methods.taa import TaskAdaptedAttention
from mtwork.methods.tsn import TaskScaledNorm

D = 6  # task embedding size used throughout


def _random_attention(window, heads, dim=24, seed=0) -> WindowAttention:
    """A timm WindowAttention with non-trivial weights; one head's logit scale above the log(100) clamp."""
    torch.manual_seed(seed)
    attn = WindowAttention(dim, window_size=window, num_heads=heads)
    with torch.no_grad():
        for name, p in attn.named_parameters():
            p.normal_(0, 0.3)
        attn.logit_scale.copy_(torch.linspace(math.log(5.0), 5.5, heads).view(heads, 1, 1))  # 5.5 > log 100
    return attn.eval()


def _timm_logits(attn: WindowAttention, x, mask=None):
    """timm's own pre-softmax logits, captured at the input of its softmax module."""
    seen = {}

    def hook(module, inputs, output):  # returns None: the softmax output is left as it is
        seen["logits"] = inputs[0].detach()

    handle = attn.softmax.register_forward_hook(hook)
    out = attn(x, mask=mask)
    handle.remove()
    return seen["logits"], out


def _shift_mask(window, grid):
    """timm's shift mask (windows, N, N) for a shifted block on a grid of ``grid`` tokens."""
    blk = SwinTransformerV2Block(dim=8, input_resolution=grid, num_heads=1, window_size=window,
                                 shift_size=tuple(w // 2 for w in window))
    assert blk.attn_mask is not None
    return blk.attn_mask


@pytest.mark.parametrize("window,heads", [((4, 4), 2), ((3, 5), 3), ((2, 2), 1)])
@pytest.mark.parametrize("shifted", [False, True])
def test_taa_at_init_is_timm_attention(window, heads, shifted):
    attn = _random_attention(window, heads)
    taa = TaskAdaptedAttention(attn, D)
    mask = _shift_mask(window, (2 * window[0], 3 * window[1])) if shifted else None
    windows = 6 if mask is None else mask.shape[0]
    x = torch.randn(2 * windows, window[0] * window[1], 24)
    ref_logits, ref_out = _timm_logits(attn, x, mask)
    e = torch.randn(D)
    # zero offsets: logits equal timm's exactly (same scaling: no 1/sqrt(d), clamped logit scale)
    assert torch.equal(taa.logits(x, e, mask), ref_logits)
    assert torch.equal(taa.logits(x, None, mask), ref_logits)
    # The logits are bitwise timm's; softmax @ v and the output projection then run as separate calls
    # whose matmul shapes (so CPU kernel blocking and summation order) may differ from timm's: outputs
    # are sums of <= 24 products of O(1) terms, a few ulp of O(1) apart on AVX2, more on AVX-512
    # kernels; 1e-5 (~80 ulp at 1) bounds that without hiding a wrong term (which shifts by >= 1e-2).
    assert torch.allclose(taa(x, e, mask), ref_out, rtol=1e-5, atol=1e-5)
    assert torch.allclose(taa(x, torch.randn(2, D), mask), ref_out, rtol=1e-5, atol=1e-5)  # one embedding per image


def test_taa_shares_pretrained_modules():
    attn = _random_attention((4, 4), 2)
    taa = TaskAdaptedAttention(attn, D)
    own = {id(p) for n, p in taa.named_parameters() if not n.startswith("attn.")}
    assert {id(p) for p in attn.parameters()}.isdisjoint(own)
    assert taa.attn.qkv.weight is attn.qkv.weight and taa.attn.cpb_mlp is attn.cpb_mlp
    assert {n for n, _ in taa.named_parameters() if not n.startswith("attn.")} == \
        {"A", "gamma.weight", "gamma.bias", "beta.weight", "beta.bias"}
    assert taa.A.shape == (2, 16, 16) and torch.count_nonzero(taa.A) == 0


def test_taa_bias_added_after_logit_scale():
    """A' joins the logits beside the position bias: not multiplied by exp(logit_scale)."""
    attn = _random_attention((4, 4), 2)
    with torch.no_grad():
        attn.logit_scale.fill_(math.log(50.0))  # a scale far from 1, so a misplaced A would show
    taa = TaskAdaptedAttention(attn, D)
    with torch.no_grad():
        taa.A.normal_()
    x = torch.randn(4, 16, 24)
    ref_logits, _ = _timm_logits(attn, x)
    diff = taa.logits(x, torch.randn(D)) - ref_logits
    # the two logits share their bits up to adding A to values of |.| <= 50, whose ulp is 3.8e-6:
    # (s + A) - s is A within ~1 ulp(50), on any CPU (no reduction differs)
    assert torch.allclose(diff, taa.A.detach().expand_as(diff), atol=1e-5)
    # and the mask is still added after it (masked pairs stay at about -100 relative)
    mask = _shift_mask((4, 4), (8, 12))
    xm = torch.randn(2 * mask.shape[0], 16, 24)
    ref_m, _ = _timm_logits(attn, xm, mask)
    diff_m = taa.logits(xm, torch.randn(D), mask) - ref_m
    assert torch.allclose(diff_m, taa.A.detach().expand_as(diff_m), atol=1e-4)


def test_taa_film_modulation():
    attn = _random_attention((4, 4), 2)
    taa = TaskAdaptedAttention(attn, D)
    with torch.no_grad():
        for p in (taa.A, taa.gamma.weight, taa.gamma.bias, taa.beta.weight, taa.beta.bias):
            p.normal_()
    e = torch.randn(D)
    gamma = taa.gamma(e).view(2, 1, 16)
    beta = taa.beta(e).view(2, 1, 16)
    assert torch.allclose(taa.task_bias(e), (1 + gamma) * taa.A + beta)
    # per-image embeddings give what per-task calls give, image by image
    x = torch.randn(2 * 3, 16, 24)
    e2 = torch.randn(2, D)
    both = taa(x, e2)
    # batched and per-image calls multiply matrices of other shapes (the FiLM Linear on (2, D) vs (D,),
    # attention over 6 vs 3 windows), which x86 kernels block differently (AVX-512 differently from
    # AVX2): the same sums in another order. Outputs are O(1) sums of <= 24 products, so a few ulp
    # each way; rtol/atol 1e-5 (~80 ulp at 1) holds on any kernel path, and a task mix-up moves
    # outputs by ~1e-1 (the "different tasks" check below).
    assert torch.allclose(both[:3], taa(x[:3], e2[0]), rtol=1e-5, atol=1e-5)
    assert torch.allclose(both[3:], taa(x[3:], e2[1]), rtol=1e-5, atol=1e-5)
    # different tasks, different attention
    assert not torch.allclose(taa(x, e2[0]), taa(x, e2[1]))


def test_taa_refuses_other_window():
    taa = TaskAdaptedAttention(_random_attention((4, 4), 2), D)
    with pytest.raises(ValueError, match="windows"):
        taa(torch.randn(2, 9, 24), torch.randn(D))


def _random_ln(c=10):
    ln = nn.LayerNorm(c)
    with torch.no_grad():
        ln.weight.normal_(1, 0.3)
        ln.bias.normal_(0, 0.3)
    return ln


def test_tsn_at_init_is_layernorm():
    ln = _random_ln()
    tsn = TaskScaledNorm(ln, D)
    x = torch.randn(3, 5, 7, 10)
    assert torch.equal(tsn(x), ln(x))
    # with an embedding TSN applies the (zero) FiLM terms as separate ops after the normalisation,
    # instead of LayerNorm's fused affine: a rounding or two of O(1) outputs (a few ulp); 1e-5 leaves
    # room for any kernel path
    assert torch.allclose(tsn(x, torch.randn(D)), ln(x), rtol=1e-5, atol=1e-5)
    assert torch.allclose(tsn(x, torch.randn(3, D)), ln(x), rtol=1e-5, atol=1e-5)
    assert tsn.norm.weight is ln.weight  # shared, not copied


def test_tsn_film_formula_and_grads():
    ln = _random_ln()
    ln.requires_grad_(False)
    tsn = TaskScaledNorm(ln, D)
    with torch.no_grad():
        for p in (tsn.gamma.weight, tsn.gamma.bias, tsn.beta.weight, tsn.beta.bias):
            p.normal_(0, 0.5)
    x = torch.randn(3, 4, 10)
    e = torch.randn(3, D)
    y = tsn(x, e)
    normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    g, b = tsn.gamma(e)[:, None], tsn.beta(e)[:, None]
    # the hand formula reduces mean and variance with other kernels than LayerNorm's: O(1) outputs a
    # few ulp apart; batched vs single embedding: the FiLM Linear on (3, D) vs (1, D) (other blocking)
    assert torch.allclose(y, normed * (ln.weight * (1 + g)) + (ln.bias + b), rtol=1e-5, atol=1e-5)
    assert torch.allclose(y[1], tsn(x[1:2], e[1])[0], rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert ln.weight.grad is None and tsn.gamma.weight.grad is not None
