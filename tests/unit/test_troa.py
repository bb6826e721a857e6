"""TROA: simplex weights under exponentiated gradient, gradient cosines against hand values, the
`every` schedule, the retained graph, the affinity EMA and resume."""
from __future__ import annotations

import io
import math

import pytest
import torch

from mtwork.methods.loss_balancing import create_balancer
from mtwork.methods.troa import TROA, agreement, cosine_matrix


def linear_losses(directions: dict, param: torch.Tensor) -> dict:
    """L_t = <d_t, theta>: the gradient of task t on theta is exactly d_t."""
    return {t: (torch.as_tensor(d, dtype=torch.float32) * param).sum() for t, d in directions.items()}


def test_weights_stay_on_the_simplex_with_random_gradients():
    gen = torch.Generator().manual_seed(0)
    tasks = ["semseg", "depth", "normals", "edges"]
    troa = TROA(tasks, step_size=0.5)
    theta = torch.zeros(16, requires_grad=True)
    for step in range(300):
        directions = {t: torch.randn(16, generator=gen) for t in tasks}
        assert troa.maybe_update(step, linear_losses(directions, theta), [theta])
        w = troa.weights
        assert w.shape == (4,) and torch.all(w > 0)
        assert math.isclose(float(w.sum()), 1.0, abs_tol=1e-6)
    assert troa.updates == 300 and len(troa.history()) == 300


def test_agreeing_tasks_gain_weight_and_the_opposed_one_loses():
    troa = TROA(["a", "b", "c"], step_size=0.2)
    theta = torch.zeros(3, requires_grad=True)
    d = [1.0, 2.0, -0.5]
    losses = linear_losses({"a": d, "b": d, "c": [-x for x in d]}, theta)
    assert torch.allclose(troa.weights, torch.full((3,), 1 / 3))
    troa.maybe_update(0, losses, [theta])
    w = troa.weights
    assert w[0] > 1 / 3 and w[1] > 1 / 3 and w[2] < 1 / 3
    # g = mean over the others: a: (1 + -1)/2 = 0, b: 0, c: (-1 + -1)/2 = -1 -> w ∝ (1, 1, e^-0.2)
    expected = torch.tensor([1.0, 1.0, math.exp(-0.2)])
    assert torch.allclose(w, (expected / expected.sum()).float(), atol=1e-6)
    for step in range(1, 20):
        troa.maybe_update(step, losses, [theta])
    assert troa.weights[2] < w[2]


def test_cosine_matrix_of_known_gradients():
    grads = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0], [-3.0, 0.0, 0.0]])
    cos = cosine_matrix(grads)
    r = 1 / math.sqrt(2)
    expected = torch.tensor([
        [1.0, r, 0.0, -1.0],
        [r, 1.0, 0.0, -r],
        [0.0, 0.0, 1.0, 0.0],
        [-1.0, -r, 0.0, 1.0],
    ], dtype=torch.float64)
    assert torch.allclose(cos, expected, atol=1e-12)
    g = agreement(cos)
    assert torch.allclose(g, torch.tensor([(r - 1) / 3, 0.0, 0.0, (-1 - r) / 3], dtype=torch.float64))


def test_cosines_through_maybe_update_over_several_parameter_tensors():
    # Two parameter tensors, one that task "c" does not touch (zeros in its flattened gradient).
    troa = TROA(["a", "b", "c"], step_size=0.1, affinity_momentum=0.0)
    w1 = torch.zeros(2, requires_grad=True)
    w2 = torch.zeros(1, requires_grad=True)
    losses = {
        "a": (torch.tensor([1.0, 0.0]) * w1).sum() + 1.0 * w2.sum(),  # grad (1, 0, 1)
        "b": (torch.tensor([0.0, 1.0]) * w1).sum() + 1.0 * w2.sum(),  # grad (0, 1, 1)
        "c": (torch.tensor([2.0, 0.0]) * w1).sum(),                   # grad (2, 0, 0); w2 unused
    }
    troa.maybe_update(0, losses, [w1, w2])
    cos = torch.tensor(troa.history()[0]["cosine"])
    r = 1 / math.sqrt(2)
    assert torch.allclose(cos, torch.tensor([[1.0, 0.5, r], [0.5, 1.0, 0.0], [r, 0.0, 1.0]]), atol=1e-6)
    # momentum 0: the affinity is the positive part of this update's cosines
    assert torch.allclose(troa.affinity, cos.clamp_min(0), atol=1e-6)


def test_affinity_is_an_ema_of_positive_cosines_from_the_identity():
    troa = TROA(["a", "b"], affinity_momentum=0.75)
    assert torch.equal(troa.affinity, torch.eye(2))
    theta = torch.zeros(2, requires_grad=True)
    troa.maybe_update(0, linear_losses({"a": [1.0, 0.0], "b": [1.0, 1.0]}, theta), [theta])
    r = 1 / math.sqrt(2)
    assert torch.allclose(troa.affinity, torch.tensor([[1.0, 0.25 * r], [0.25 * r, 1.0]]))
    troa.maybe_update(1, linear_losses({"a": [1.0, 0.0], "b": [-1.0, 0.0]}, theta), [theta])  # conflict: clipped to 0
    assert torch.allclose(troa.affinity, torch.tensor([[1.0, 0.75 * 0.25 * r], [0.75 * 0.25 * r, 1.0]]))


def test_gradient_work_only_on_steps_divisible_by_every(monkeypatch):
    calls = []
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(1)
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    troa = TROA(["a", "b"], every=3)
    theta = torch.zeros(2, requires_grad=True)
    updated = []
    for step in range(10):
        before = len(calls)
        changed = troa.maybe_update(step, linear_losses({"a": [1.0, 0.0], "b": [1.0, 1.0]}, theta), [theta])
        if changed:
            updated.append(step)
        assert (len(calls) - before) == (2 if step % 3 == 0 else 0)
    assert updated == [0, 3, 6, 9]
    assert [r["step"] for r in troa.history()] == [0, 3, 6, 9]


def test_graph_survives_for_the_weighted_backward():
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 4)
    heads = {t: torch.nn.Linear(4, 1) for t in ("a", "b", "c")}
    x = torch.randn(8, 4)
    feats = torch.relu(shared(x))
    losses = {t: head(feats).pow(2).mean() for t, head in heads.items()}
    troa = TROA(list(heads), step_size=0.3)
    assert troa.maybe_update(0, losses, list(shared.parameters()))
    assert shared.weight.grad is None  # autograd.grad does not accumulate into .grad
    troa.weighted_loss(losses).backward()
    assert shared.weight.grad is not None and all(h.weight.grad is not None for h in heads.values())


def test_weighted_loss_is_t_times_the_weighted_sum():
    troa = TROA(["a", "b", "c"])
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(4.0)}
    assert torch.isclose(troa.weighted_loss(losses), torch.tensor(7.0))  # uniform: the plain sum
    theta = torch.zeros(2, requires_grad=True)
    troa.maybe_update(0, linear_losses({"a": [1.0, 0.0], "b": [1.0, 0.0], "c": [-1.0, 0.0]}, theta), [theta])
    w = troa.weights
    assert torch.isclose(troa.weighted_loss(losses), 3 * (w[0] * 1 + w[1] * 2 + w[2] * 4))
    assert torch.isclose(troa.weighted_loss({"b": torch.tensor(2.0)}), 3 * w[1] * 2)  # absent tasks add 0
    with pytest.raises(KeyError, match="unknown tasks"):
        troa.weighted_loss({"x": torch.tensor(1.0)})


def test_absent_tasks_keep_their_log_weight_and_one_task_is_not_updated():
    troa = TROA(["a", "b", "c"], step_size=0.5)
    theta = torch.zeros(2, requires_grad=True)
    assert not troa.maybe_update(0, linear_losses({"a": [1.0, 0.0]}, theta), [theta])
    assert troa.maybe_update(0, linear_losses({"a": [1.0, 0.0], "b": [-1.0, 0.0]}, theta), [theta])
    w = troa.weights
    # a and b both get g = -1; c keeps its log weight, so it now outweighs them
    assert torch.isclose(w[0], w[1]) and w[2] > w[0]
    assert torch.allclose(w, torch.tensor([math.exp(-0.5), math.exp(-0.5), 1.0]) / (1 + 2 * math.exp(-0.5)))
    assert troa.affinity[2, 0] == 0 and troa.affinity[2, 2] == 1


def test_state_dict_round_trip_resumes_exactly():
    theta = torch.zeros(3, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    batches = [{t: torch.randn(3, generator=gen) for t in "abc"} for _ in range(6)]
    a = TROA(list("abc"), step_size=0.3, affinity_momentum=0.5)
    for step, d in enumerate(batches[:3]):
        a.maybe_update(step, linear_losses(d, theta), [theta])
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = create_balancer("troa", list("abc"), step_size=0.3, affinity_momentum=0.5)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.updates == 3 and b.history() == a.history()
    for step, d in enumerate(batches[3:], start=3):
        a.maybe_update(step, linear_losses(d, theta), [theta])
        b.maybe_update(step, linear_losses(d, theta), [theta])
    assert torch.equal(a.weights, b.weights) and torch.equal(a.affinity, b.affinity)
    with pytest.raises(ValueError, match="saved for tasks"):
        TROA(list("abd")).load_state_dict(a.state_dict())


def test_history_clear_returns_each_epoch_once():
    troa = TROA(["a", "b"])
    theta = torch.zeros(2, requires_grad=True)
    for step in range(3):
        troa.maybe_update(step, linear_losses({"a": [1.0, 0.0], "b": [0.0, 1.0]}, theta), [theta])
    first = troa.history(clear=True)
    assert len(first) == 3 and set(first[0]) == {"step", "tasks", "cosine", "agreement", "weights"}
    assert troa.history() == []


@pytest.mark.parametrize("kwargs", [dict(step_size=0), dict(every=0), dict(affinity_momentum=1.0)])
def test_bad_settings_refused(kwargs):
    with pytest.raises(ValueError):
        TROA(["a", "b"], **kwargs)
