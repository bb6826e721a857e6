"""Loss balancers (equal, uncertainty, DWA, TROA) behind one interface, against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from mtwork.methods.loss_balancing import BALANCERS, LossBalancer, create_balancer
from mtwork.methods.troa import TROA

TASKS = ["semseg", "depth", "normals"]
LOSSES = {"semseg": 1.0, "depth": 2.0, "normals": 4.0}


def tensor_losses(values=LOSSES, grad=False):
    return {t: torch.tensor(v, requires_grad=grad) for t, v in values.items()}


@pytest.mark.parametrize("name", BALANCERS.names())
def test_every_balancer_has_the_common_interface(name):
    balancer = create_balancer(name, TASKS)
    assert isinstance(balancer, LossBalancer)
    assert balancer.weights.shape == (3,) and balancer.loss_scales.shape == (3,)
    # before any update: TROA's per-target weight vectors are uniform (affinity 1/T everywhere), every
    # other balancer models no relation (identity)
    start = torch.full((3, 3), 1 / 3) if name == "troa" else torch.eye(3)
    assert torch.allclose(balancer.affinity, start, rtol=0, atol=1e-7)
    # at the start every balancer is the plain sum
    assert torch.isclose(balancer.weighted_loss(tensor_losses()), torch.tensor(7.0))
    balancer.end_epoch(LOSSES)
    assert isinstance(balancer.history(), list)
    assert isinstance(balancer.maybe_update(1, tensor_losses(), []), bool)
    with pytest.raises(KeyError, match="unknown tasks"):
        balancer.weighted_loss({"edges": torch.tensor(1.0)})


def test_registry_names_and_unknown_name():
    assert BALANCERS.names() == ["dwa", "equal", "troa", "troa_global", "uncertainty"]
    assert isinstance(create_balancer("troa", TASKS, step_size=0.2, every=5), TROA)
    with pytest.raises(KeyError, match="unknown loss balancer 'gradnorm'"):
        create_balancer("gradnorm", TASKS)


def test_equal_is_the_plain_sum_and_has_no_parameters():
    balancer = create_balancer("equal", TASKS)
    assert list(balancer.parameters()) == []
    losses = tensor_losses(grad=True)
    total = balancer.weighted_loss(losses)
    total.backward()
    assert total.item() == 7.0 and all(l.grad.item() == 1.0 for l in losses.values())
    assert torch.isclose(balancer.weighted_loss({"depth": torch.tensor(2.0)}), torch.tensor(2.0))


def test_uncertainty_formula_and_gradients_by_hand():
    balancer = create_balancer("uncertainty", TASKS)
    params = list(balancer.parameters())
    assert len(params) == 1 and params[0].shape == (3,)
    with torch.no_grad():
        balancer.log_vars.copy_(torch.tensor([0.0, math.log(2.0), -1.0]))
    total = balancer.weighted_loss(tensor_losses())
    # exp(-s) L + s: 1*1 + 0 ; 0.5*2 + ln2 ; e*4 - 1
    expected = 1.0 + (1.0 + math.log(2.0)) + (4.0 * math.e - 1.0)
    assert math.isclose(total.item(), expected, rel_tol=1e-6)
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    grad = balancer.log_vars.grad
    assert torch.allclose(grad, torch.tensor([1 - 1.0, 1 - 1.0, 1 - math.e * 4.0]), atol=1e-5)
    assert torch.allclose(balancer.weights, torch.tensor([1.0, 0.5, math.e]))


def test_uncertainty_learns_log_variance_towards_log_loss():
    balancer = create_balancer("uncertainty", ["a"])
    optimizer = torch.optim.SGD(balancer.parameters(), lr=0.1)
    for _ in range(500):
        optimizer.zero_grad()
        balancer.weighted_loss({"a": torch.tensor(3.0)}).backward()
        optimizer.step()
    assert math.isclose(balancer.log_vars.item(), math.log(3.0), abs_tol=1e-3)  # the optimum of exp(-s) L + s


def test_dwa_equal_for_two_epochs_then_hand_computed():
    balancer = create_balancer("dwa", TASKS)
    assert torch.equal(balancer.weights, torch.ones(3))
    balancer.end_epoch({"semseg": 2.0, "depth": 4.0, "normals": 1.0})
    assert torch.equal(balancer.weights, torch.ones(3))  # one epoch: no ratio yet
    balancer.end_epoch({"semseg": 1.0, "depth": 4.0, "normals": 1.5})
    r = torch.tensor([0.5, 1.0, 1.5])
    expected = 3 * torch.exp(r / 2) / torch.exp(r / 2).sum()
    assert torch.allclose(balancer.weights, expected, atol=1e-6)
    assert math.isclose(float(balancer.weights.sum()), 3.0, rel_tol=1e-6)
    total = balancer.weighted_loss(tensor_losses())
    assert torch.isclose(total, (expected * torch.tensor([1.0, 2.0, 4.0])).sum())
    # the third epoch's weights use epochs 2 and 3 only
    balancer.end_epoch({"semseg": 1.0, "depth": 2.0, "normals": 1.5})
    r = torch.tensor([1.0, 0.5, 1.0])
    assert torch.allclose(balancer.weights, 3 * torch.softmax(r / 2, 0), atol=1e-6)
    assert len(balancer.history()) == 3


def test_dwa_temperature_and_missing_task_ratio():
    balancer = create_balancer("dwa", ["a", "b"], temperature=1.0)
    balancer.end_epoch({"a": 1.0})  # b had no labels this epoch
    balancer.end_epoch({"a": 2.0, "b": 1.0})
    r = torch.tensor([2.0, 1.0])  # b: no ratio -> 1
    assert torch.allclose(balancer.weights, 2 * torch.softmax(r, 0), atol=1e-6)


def test_dwa_state_round_trip():
    a = create_balancer("dwa", TASKS)
    a.end_epoch({"semseg": 2.0, "depth": 4.0, "normals": 1.0})
    b = create_balancer("dwa", TASKS)
    b.load_state_dict(a.state_dict())
    for balancer in (a, b):
        balancer.end_epoch({"semseg": 1.0, "depth": 4.0, "normals": 1.5})
    assert torch.equal(a.weights, b.weights) and not torch.equal(a.weights, torch.ones(3))


def test_bad_construction_refused():
    with pytest.raises(ValueError, match="unique"):
        create_balancer("equal", ["a", "a"])
    with pytest.raises(ValueError, match="at least one task"):
        create_balancer("equal", [])
    with pytest.raises(ValueError, match="temperature"):
        create_balancer("dwa", TASKS, temperature=0)
