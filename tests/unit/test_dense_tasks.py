"""Dense regression tasks (depth, normals, edges): heads, losses against their formulas and metrics
against hand-computed values, accumulated over several batches."""
from __future__ import annotations

import math

import pytest
import torch

from mtwork.tasks import TASKS, FeatureSpec, create_task
from mtwork.tasks.depth import berhu_loss
from mtwork.tasks.normals import NormalsEvaluator, angular_error

DENSE = {"depth": 1, "normals": 3, "edges": 1}


def _batch(task, labels, labeled=None):
    """A batch whose labels are already at the (tiny) on-disk size the outputs are given at."""
    b = labels.shape[0]
    return {
        task: labels,
        "labeled": {task: torch.ones(b, dtype=torch.bool) if labeled is None else torch.tensor(labeled)},
        "orig_size": torch.tensor([list(labels.shape[-2:])] * b),
    }


@pytest.mark.parametrize("name", sorted(DENSE))
def test_registered_with_channels_head_and_declared_metrics(name):
    task = create_task(name)
    assert name in TASKS.names() and task.out_channels == DENSE[name]
    assert task.metric(task.primary_metric) is not None
    head = task.build_head(FeatureSpec(channels=16))
    assert head.language_input is None  # no language path: the LV-Adapter must not wire one in
    features = [torch.randn(2, 16, 8 // s, 16 // s) for s in (1, 2, 4, 8)]
    out = head(features, (32, 64))
    assert out.shape == (2, DENSE[name], 32, 64)
    if name == "depth":
        assert (out >= 0).all()
    elif name == "edges":
        assert ((out >= 0) & (out <= 1)).all()
    else:
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 32, 64))
    # the loss trains the head; a batch with only unlabeled samples gives a zero, not NaN
    labels = {"depth": torch.rand(2, 32, 64) * 50, "edges": torch.rand(2, 32, 64),
              "normals": torch.nn.functional.normalize(torch.randn(2, 3, 32, 64), dim=1)}[name]
    loss = task.loss(out, _batch(name, labels), torch.tensor([True, False]))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters() if p.requires_grad)
    assert task.loss(out.detach(), _batch(name, labels), torch.tensor([False, False])) == 0
    # keys evaluate() returns are exactly the declared metrics
    ev = task.evaluator()
    ev.process(out.detach(), _batch(name, labels))
    assert set(ev.evaluate()) == {m.name for m in task.metrics}


def test_training_label_in_another_frame_is_refused():
    task = create_task("depth")
    with pytest.raises(ValueError, match="network-input frame"):
        task.loss(torch.ones(1, 1, 4, 4), _batch("depth", torch.ones(1, 8, 8)), torch.tensor([True]))


def test_berhu_matches_its_formula_and_l1_is_selectable():
    residuals = torch.tensor([0.1, -0.5, 1.0, -2.0])
    # c = 0.2 * 2 = 0.4: 0.1 stays linear; the rest are (r^2 + c^2) / (2c)
    expected = (0.1 + (0.25 + 0.16) / 0.8 + (1.0 + 0.16) / 0.8 + (4.0 + 0.16) / 0.8) / 4
    assert berhu_loss(residuals + 3.0, torch.full((4,), 3.0)).item() == pytest.approx(expected)
    # through the task: the invalid (0) pixel and the unlabeled sample are left out
    pred = torch.tensor([3.1, 2.5, 4.0, 1.0, 99.0]).view(1, 1, 1, 5).repeat(2, 1, 1, 1)
    gt = torch.tensor([3.0, 3.0, 3.0, 3.0, 0.0]).view(1, 1, 5).repeat(2, 1, 1)
    gt[1] = 50.0
    labeled = torch.tensor([True, False])
    assert create_task("depth").loss(pred, _batch("depth", gt), labeled).item() == pytest.approx(expected)
    l1 = create_task("depth", loss="l1").loss(pred, _batch("depth", gt), labeled).item()
    assert l1 == pytest.approx((0.1 + 0.5 + 1.0 + 2.0) / 4)
    # all residuals 0: loss 0 and a finite gradient (the quadratic branch must not divide by 0)
    p = torch.full((3,), 2.0, requires_grad=True)
    berhu_loss(p, torch.full((3,), 2.0)).backward()
    assert torch.isfinite(p.grad).all()
    with pytest.raises(KeyError, match="unknown depth loss"):
        create_task("depth", loss="l2")


def test_depth_metrics_hand_computed_over_two_batches_with_invalid_pixels():
    ev = create_task("depth").evaluator()
    # batch 1: valid errors 0.5 (gt 2), 0 (gt 4), 1 (gt 1); the 0-depth pixel is invalid
    pred1 = torch.tensor([[2.5, 9.0], [4.0, 2.0]]).view(1, 1, 2, 2)
    gt1 = torch.tensor([[2.0, 0.0], [4.0, 1.0]]).view(1, 2, 2)
    # a second, unlabeled sample with large errors must not count
    ev.process(torch.cat([pred1, pred1 * 0]), _batch("depth", torch.cat([gt1, gt1 + 5]), [True, False]))
    # batch 2: one valid pixel, error 1 at gt 10
    pred2 = torch.tensor([[11.0, 1.0], [1.0, 1.0]]).view(1, 1, 2, 2)
    gt2 = torch.tensor([[10.0, 0.0], [0.0, 0.0]]).view(1, 2, 2)
    ev.process(pred2, _batch("depth", gt2))
    m = ev.evaluate()
    # four pixels in all, each weighing the same (not the mean of the two batches' values)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 0 + 1 + 1) / 4))  # 0.75
    assert m["abs_rel"] == pytest.approx((0.25 + 0 + 1 + 0.1) / 4)
    # ratios 1.25 (not < 1.25), 1, 2, 1.1 -> 2 of 4
    assert m["delta1"] == pytest.approx(50.0)
    # < 1.25^2 = 1.5625 and < 1.25^3 = 1.953125: 1.25, 1, 1.1 -> 3 of 4 (2 is above both)
    assert m["delta2"] == pytest.approx(75.0) and m["delta3"] == pytest.approx(75.0)
    ev.reset()
    assert math.isnan(ev.evaluate()["rmse"])


def test_depth_delta_accuracies_at_the_three_thresholds():
    ev = create_task("depth").evaluator()
    # pred / gt pairs with ratios max(p/g, g/p): 2.4/2 = 1.2, 3/2 = 1.5, 1/1.9 -> 1.9, 5/2 = 2.5,
    # 1.5625/1 = 1.5625 (exactly 1.25^2, not below it) and a zero prediction (infinite ratio)
    pred = torch.tensor([[2.4, 3.0, 1.0], [5.0, 1.5625, 0.0]]).view(1, 1, 2, 3)
    gt = torch.tensor([[2.0, 2.0, 1.9], [2.0, 1.0, 3.0]]).view(1, 2, 3)
    ev.process(pred, _batch("depth", gt))
    m = ev.evaluate()
    assert m["delta1"] == pytest.approx(100 * 1 / 6)  # 1.2
    assert m["delta2"] == pytest.approx(100 * 2 / 6)  # 1.2, 1.5 (1.5625 is not < 1.5625)
    assert m["delta3"] == pytest.approx(100 * 4 / 6)  # 1.2, 1.5, 1.9, 1.5625 (< 1.953125); not 2.5, not 0
    assert [x.name for x in create_task("depth").metrics] == ["rmse", "abs_rel", "delta1", "delta2", "delta3"]
    assert all(x.higher_is_better for x in create_task("depth").metrics[2:])
    ev.reset()
    assert all(math.isnan(ev.evaluate()[k]) for k in ("delta1", "delta2", "delta3"))


def test_depth_evaluator_scores_at_label_size():
    # a 1x2 prediction is resized bilinearly to the 2x4 label: a constant stays constant
    ev = create_task("depth").evaluator()
    ev.process(torch.full((1, 1, 1, 2), 3.0), _batch("depth", torch.full((1, 2, 4), 2.0)))
    assert ev.evaluate()["rmse"] == pytest.approx(1.0) and ev.sums["n"] == 8


def test_angular_error_is_exact_at_0_90_180_and_small_angles():
    x, y = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    assert angular_error(x, x).item() == 0.0
    assert angular_error(x, y).item() == pytest.approx(90.0)
    assert angular_error(x, -x).item() == pytest.approx(180.0)
    tiny = torch.tensor([math.cos(1e-4), math.sin(1e-4), 0.0], dtype=torch.float64)
    assert angular_error(x, tiny).item() == pytest.approx(math.degrees(1e-4), rel=1e-6)
    assert angular_error(torch.zeros(3), x).item() == 90.0  # a zero prediction says nothing


def test_normals_metrics_hand_computed_over_two_batches():
    task = create_task("normals")
    ev = task.evaluator()
    s = math.sqrt(0.5)
    # four pixels (1x4): errors 0, 90, 45 degrees, and a pixel without a label (zero vector)
    gt = torch.tensor([[0, 0, -1.0], [0, -1.0, 0], [0, 0, -1.0], [0, 0, 0]]).T.reshape(1, 3, 1, 4)
    pred = torch.tensor([[0, 0, -1.0], [1.0, 0, 0], [0, s, -s], [1.0, 0, 0]]).T.reshape(1, 3, 1, 4)
    ev.process(pred, _batch("normals", gt))
    m = ev.evaluate()
    assert m["mean_angle"] == pytest.approx(45.0)
    assert m["median_angle"] == pytest.approx(45.0, abs=0.01)  # 0.01-degree bins
    assert m["within_11_25"] == m["within_22_5"] == m["within_30"] == pytest.approx(100 / 3)
    # a second batch of one exact pixel: angles {0, 0, 45, 90}, median between 0 and 45
    ev.process(gt[..., :1], _batch("normals", gt[..., :1]))
    m = ev.evaluate()
    assert m["mean_angle"] == pytest.approx(135 / 4)
    assert m["median_angle"] == pytest.approx(22.5, abs=0.01)
    assert m["within_11_25"] == pytest.approx(50.0)
    # the loss: L1 (sum over xyz) + (1 - cos), mean over the valid pixels of the labeled sample
    l1 = (0 + 2 + (s + 1 - s)) / 3
    cosine = (0 + 1 + (1 - s)) / 3
    assert task.loss(pred, _batch("normals", gt), torch.tensor([True])).item() == pytest.approx(l1 + cosine, rel=1e-6)


def test_normals_median_matches_numpy_on_many_angles():
    ev = NormalsEvaluator()
    angles = torch.rand(10001, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 60
    ev.add_angles(angles[:5000])
    ev.add_angles(angles[5000:])
    assert ev.evaluate()["median_angle"] == pytest.approx(float(angles.median()), abs=0.005)
    assert ev.evaluate()["mean_angle"] == pytest.approx(float(angles.mean()))


def test_edges_loss_and_metric_hand_computed():
    task = create_task("edges")
    gt = torch.tensor([[0.0, 0.5], [1.0, -1.0]]).view(1, 2, 2)  # -1 = padding
    pred = torch.tensor([[0.25, 0.5], [0.5, 0.9]]).view(1, 1, 2, 2)
    assert task.loss(pred, _batch("edges", gt), torch.tensor([True])).item() == pytest.approx(0.75 / 3)
    ev = task.evaluator()
    ev.process(pred, _batch("edges", gt))
    ev.process(torch.zeros(1, 1, 2, 2), _batch("edges", torch.full((1, 2, 2), 0.25)))
    assert ev.evaluate() == {"edge_l1": pytest.approx((0.75 + 4 * 0.25) / 7)}
