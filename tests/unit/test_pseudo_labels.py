"""Confidence-filtered segmentation pseudo-labels against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from mtwork.methods.pseudo_labels import confident_labels, pseudo_label_loss


def _logits():
    # three pixels, two classes: softmax max = sigmoid(2) = 0.881 (class 0), sigmoid(0.5) = 0.622 (class 1),
    # sigmoid(3) = 0.953 (class 1)
    return torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 3.0]]).reshape(1, 2, 1, 3).requires_grad_(True)


def test_only_pixels_above_the_threshold_get_a_label():
    labels, kept = confident_labels(_logits(), 0.8)
    assert labels.tolist() == [[[0, 255, 1]]] and kept.tolist() == [[[True, False, True]]]
    labels, _ = confident_labels(_logits(), 0.6)
    assert labels.tolist() == [[[0, 1, 1]]]
    with pytest.raises(ValueError, match="threshold"):
        confident_labels(_logits(), 0.0)


def test_loss_is_the_cross_entropy_over_the_kept_pixels():
    logits = _logits()
    loss, share = pseudo_label_loss(logits, 0.8)
    expected = (-math.log(1 / (1 + math.exp(-2))) - math.log(1 / (1 + math.exp(-3)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6) and share == pytest.approx(2 / 3)
    loss.backward()
    assert logits.grad[0, :, 0, 1].abs().sum() == 0  # the ignored pixel gets no gradient


def test_no_confident_pixel_gives_zero_with_a_graph():
    logits = _logits()
    loss, share = pseudo_label_loss(logits, 0.99)
    assert loss.item() == 0.0 and share == 0.0 and loss.requires_grad
