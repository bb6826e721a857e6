"""UDA's output-space discriminators and GAN losses against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtwork.config import GAN_LOSSES as CONFIG_GAN_LOSSES
from mtwork.methods.output_discriminator import (GAN_LOSSES, OutputDiscriminator, OutputDiscriminators, gan_loss,
                                                 output_view)

LN3 = math.log(3.0)


def test_the_config_knows_every_gan_loss():
    assert tuple(CONFIG_GAN_LOSSES) == tuple(GAN_LOSSES)


def test_bce_and_least_squares_losses_by_hand():
    z = torch.tensor([[[[0.0, LN3]]]])  # sigmoid: 1/2 and 3/4
    # source label: -log(1/2), -log(3/4) -> mean (ln 2 + ln 4/3) / 2
    assert gan_loss("bce", z, 1.0).item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
    # target label: -log(1 - 1/2), -log(1 - 3/4) -> (ln 2 + ln 4) / 2
    assert gan_loss("bce", z, 0.0).item() == pytest.approx((math.log(2) + math.log(4)) / 2, rel=1e-6)
    assert gan_loss("lsgan", torch.tensor([0.5, -1.0]), 1.0).item() == pytest.approx((0.25 + 4.0) / 2)
    assert gan_loss("lsgan", torch.tensor([0.5, -1.0]), 0.0).item() == pytest.approx((0.25 + 1.0) / 2)
    with pytest.raises(KeyError, match="hinge.*known: bce, lsgan"):
        gan_loss("hinge", z, 1.0)


def test_fc_discriminator_is_a_patch_classifier_at_stride_32():
    d = OutputDiscriminator(19, width=8)
    assert d(torch.zeros(2, 19, 64, 96)).shape == (2, 1, 2, 3)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)


def test_output_views():
    logits = torch.tensor([[[[0.0]], [[math.log(3.0)]]]])  # (1, 2, 1, 1): probabilities 1/4, 3/4
    assert output_view("semseg", logits).flatten().tolist() == pytest.approx([0.25, 0.75])
    depth = torch.tensor([[[1.0, math.e]]])  # (1, 1, 2) without channel -> (1, 1, 1, 2), log metres
    assert output_view("depth", depth).shape == (1, 1, 1, 2)
    assert output_view("depth", depth).flatten().tolist() == pytest.approx([0.0, 1.0])
    with pytest.raises(KeyError, match="drivable"):
        output_view("drivable", logits)


def _identity_discriminators(loss="bce", lr=0.1):
    """One task whose discriminator is a 1x1 conv w=1, b=0: its logit is its input."""
    d = OutputDiscriminators({"depth": 1}, width=1, lr=lr, loss=loss)
    conv = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    d.nets["depth"] = conv
    d.optimizer = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.9, 0.99))
    return d


def test_discriminator_loss_adversarial_term_and_step_by_hand():
    d = _identity_discriminators()
    source = {"depth": torch.zeros(1, 1, 1, 1)}
    target_map = torch.full((1, 1, 1, 1), LN3, requires_grad=True)
    # D's loss: (bce(0, source) + bce(ln 3, target)) / 2 = (ln 2 + ln 4) / 2
    assert d.losses(source, {"depth": target_map})["depth"].item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    # the model's adversarial term: bce(ln 3, source) = -log(3/4); d/dz = sigmoid(z) - 1 = -1/4
    adv = d.adversarial({"depth": target_map})["depth"]
    assert adv.item() == pytest.approx(math.log(4 / 3), rel=1e-6)
    adv.backward()
    assert target_map.grad.item() == pytest.approx(-0.25, rel=1e-6)
    assert all(p.grad is None for p in d.parameters())  # no gradient reaches the discriminator
    # one Adam step: dL/dw = 0.5 (sigmoid(0) - 1) * 0 + 0.5 sigmoid(ln 3) * ln 3 > 0, dL/db = -1/4 + 3/8 > 0;
    # Adam's first step moves each by lr * g / |g| (bias-corrected): w 1 -> 0.9, b 0 -> -0.1
    losses = d.update(source, {"depth": target_map.detach()})
    assert losses["depth"].item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    conv = d.nets["depth"]
    assert conv.weight.item() == pytest.approx(0.9, abs=1e-6) and conv.bias.item() == pytest.approx(-0.1, abs=1e-6)


def test_update_uses_the_reduced_gradients_and_state_round_trips():
    d = _identity_discriminators(loss="lsgan")
    calls = []

    def all_reduce(g):
        calls.append(tuple(g.shape))
        return torch.zeros_like(g)  # e.g. the other processes' gradients cancel this one's

    d.update({"depth": torch.zeros(1, 1, 1, 1)}, {"depth": torch.ones(1, 1, 1, 1)}, all_reduce)
    assert sorted(calls) == [(1,), (1, 1, 1, 1)]
    assert d.nets["depth"].weight.item() == 1.0 and d.nets["depth"].bias.item() == 0.0  # zero gradient, no move
    state = d.training_state()
    other = _identity_discriminators(loss="lsgan")
    other.load_training_state(state)
    assert other.optimizer.state_dict()["state"].keys() == d.optimizer.state_dict()["state"].keys()
