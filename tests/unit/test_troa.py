"""TROA: per-target weight vectors by exponentiated gradient and the asymmetric affinity, checked against
values worked out by hand; missing tasks, data parallelism with a task missing on one process, the
`every` schedule, the retained graph, resume; and the earlier global reading (`troa_global`)."""
from __future__ import annotations

import io
import math
import threading

import pytest
import torch

from mtwork.methods.loss_balancing import create_balancer
from mtwork.methods.troa import TROA, TROAGlobal, agreement, cosine_matrix

# Hand-made gradients: with L_t = <g_t, theta>, d L_t / d theta is exactly g_t.
G_S, G_D, G_N = (1.0, 0.0), (1.0, 1.0), (-1.0, 0.5)
# |g_S| = 1, |g_D| = sqrt 2 = 1.414214, |g_N| = sqrt 1.25 = 1.118034
# cos(S, D) = (1*1 + 0*1) / (1 * 1.414214)            =  0.707107
# cos(S, N) = (1*-1 + 0*0.5) / (1 * 1.118034)         = -0.894427
# cos(D, N) = (1*-1 + 1*0.5) / (1.414214 * 1.118034)  = -0.5 / 1.581139 = -0.316228
COS_SD, COS_SN, COS_DN = 0.707107, -0.894427, -0.316228

# One update from uniform (1/3 each) with eta = 1: column t of W is w_t[s] ∝ (1/3) exp(cos(s, t)).
# target S: exp(1, 0.707107, -0.894427)     = (2.718282, 2.028115, 0.408842), sum 5.155239
#           -> w_S = (0.527285, 0.393409, 0.079306)
# target D: exp(0.707107, 1, -0.316228)     = (2.028115, 2.718282, 0.728893), sum 5.475290
#           -> w_D = (0.370412, 0.496464, 0.133124)
# target N: exp(-0.894427, -0.316228, 1)    = (0.408842, 0.728893, 2.718282), sum 3.856017
#           -> w_N = (0.106027, 0.189028, 0.704946)
W_S = (0.527285, 0.393409, 0.079306)
W_D = (0.370412, 0.496464, 0.133124)
W_N = (0.106027, 0.189028, 0.704946)
# rows source, columns target: A[s, t] = w_t[s]
AFFINITY_1 = [[W_S[0], W_D[0], W_N[0]],
              [W_S[1], W_D[1], W_N[1]],
              [W_S[2], W_D[2], W_N[2]]]
# loss scales = row sums: S 0.527285 + 0.370412 + 0.106027 = 1.003724
#                         D 0.393409 + 0.496464 + 0.189028 = 1.078901
#                         N 0.079306 + 0.133124 + 0.704946 = 0.917376
SCALES_1 = (1.003724, 1.078901, 0.917376)


def linear_losses(directions: dict, param: torch.Tensor) -> dict:
    """L_t = <d_t, theta>: the gradient of task t on theta is exactly d_t."""
    return {t: (torch.as_tensor(d, dtype=torch.float32) * param).sum() for t, d in directions.items()}


def test_one_update_gives_hand_computed_per_target_vectors_and_asymmetric_affinity():
    troa = TROA(["S", "D", "N"], step_size=1.0)
    assert torch.allclose(troa.affinity, torch.full((3, 3), 1 / 3))  # uniform before any update
    theta = torch.zeros(2, requires_grad=True)
    assert troa.maybe_update(0, linear_losses({"S": G_S, "D": G_D, "N": G_N}, theta), [theta])
    cos = torch.tensor(troa.history()[0]["cosine"])
    assert torch.allclose(cos, torch.tensor([[1.0, COS_SD, COS_SN], [COS_SD, 1.0, COS_DN], [COS_SN, COS_DN, 1.0]]),
                          atol=1e-6)
    # values rounded to 6 decimals by hand: atol 2e-6 covers the rounding, not the float32 path (~1e-7)
    assert torch.allclose(troa.affinity, torch.tensor(AFFINITY_1), atol=2e-6)
    vectors = troa.task_weight_vectors
    assert vectors["N"] == pytest.approx({"S": W_N[0], "D": W_N[1], "N": W_N[2]}, abs=2e-6)
    # asymmetric: S counts 0.106 for target N, N counts 0.079 for target S
    assert troa.affinity[0, 2] == pytest.approx(0.106027, abs=2e-6)
    assert troa.affinity[2, 0] == pytest.approx(0.079306, abs=2e-6)
    assert torch.allclose(troa.affinity.sum(dim=0), torch.ones(3), atol=1e-6)  # every column on the simplex
    # loss scales are the row sums, weights the row means (on the simplex)
    assert torch.allclose(troa.loss_scales, torch.tensor(SCALES_1), atol=3e-6)
    assert torch.allclose(troa.weights, torch.tensor(SCALES_1) / 3, atol=1e-6)
    assert float(troa.weights.sum()) == pytest.approx(1.0, abs=1e-6)
    losses = {"S": torch.tensor(1.0), "D": torch.tensor(2.0), "N": torch.tensor(4.0)}
    # 1.003724 * 1 + 1.078901 * 2 + 0.917376 * 4 = 6.831030
    assert float(troa.weighted_loss(losses)) == pytest.approx(6.831030, abs=2e-5)


def test_second_update_with_a_missing_task_keeps_its_weights():
    troa = TROA(["S", "D", "N"], step_size=1.0)
    theta = torch.zeros(2, requires_grad=True)
    troa.maybe_update(0, linear_losses({"S": G_S, "D": G_D, "N": G_N}, theta), [theta])
    # only S and D labelled, orthogonal gradients (1, 0), (0, 1): cos(S, D) = 0
    assert troa.maybe_update(1, linear_losses({"S": (1.0, 0.0), "D": (0.0, 1.0)}, theta), [theta])
    # target S: S and D hold mass 0.527285 + 0.393409 = 0.920694; they move by exp(cos) = exp(1), exp(0):
    #   0.527285 e = 1.433309 and 0.393409, sum 1.826718;
    #   w_S[S] = 0.920694 * 1.433309 / 1.826718 = 0.722410, w_S[D] = 0.920694 * 0.393409 / 1.826718 = 0.198284
    #   w_S[N] stays 0.079306
    # target D: mass 0.370412 + 0.496464 = 0.866876; S moves by exp(0), D by exp(1):
    #   0.370412 and 0.496464 e = 1.349529, sum 1.719941;
    #   w_D[S] = 0.866876 * 0.370412 / 1.719941 = 0.186693, w_D[D] = 0.866876 * 1.349529 / 1.719941 = 0.680183
    #   w_D[N] stays 0.133124
    # target N (absent): its column does not change
    expected = torch.tensor([[0.722410, 0.186693, W_N[0]],
                             [0.198284, 0.680183, W_N[1]],
                             [W_S[2], W_D[2], W_N[2]]])
    assert torch.allclose(troa.affinity, expected, atol=3e-6)
    assert torch.allclose(troa.affinity.sum(dim=0), torch.ones(3), atol=1e-6)
    assert troa.history()[-1]["tasks"] == ["S", "D"]


def test_one_task_present_updates_nothing():
    troa = TROA(["S", "D", "N"], step_size=1.0)
    theta = torch.zeros(2, requires_grad=True)
    assert not troa.maybe_update(0, linear_losses({"S": G_S}, theta), [theta])
    assert troa.updates == 0 and torch.allclose(troa.affinity, torch.full((3, 3), 1 / 3))


def test_data_parallel_update_averages_each_task_over_the_processes_that_have_it():
    """Two processes (threads) whose batches hold {S, D} and {D, N}: every process must end with the
    weights of one process that saw S = g_S, D = the mean of both D gradients, N = g_N."""
    tasks = ["S", "D", "N"]
    per_rank = [{"S": (1.0, 0.0), "D": (1.0, 3.0)}, {"D": (1.0, -1.0), "N": (-1.0, 0.5)}]
    barrier, slots, results = threading.Barrier(2), [None, None], [None, None]

    def all_reduce_for(rank):
        def reduce(tensor):
            slots[rank] = tensor.clone()
            barrier.wait()
            mean = (slots[0] + slots[1]) / 2
            barrier.wait()
            return mean
        return reduce

    def worker(rank):
        troa = TROA(tasks, step_size=1.0)
        theta = torch.zeros(2, requires_grad=True)
        troa.maybe_update(0, linear_losses(per_rank[rank], theta), [theta], all_reduce=all_reduce_for(rank))
        results[rank] = troa

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # D's global gradient: ((1, 3) + (1, -1)) / 2 = (1, 1) = g_D; so the expected matrix is AFFINITY_1
    for troa in results:
        assert troa is not None and troa.updates == 1
        assert troa.history()[0]["tasks"] == tasks
        assert torch.allclose(troa.affinity, torch.tensor(AFFINITY_1), atol=2e-6)
    assert torch.equal(results[0].affinity, results[1].affinity)


def test_data_parallel_with_one_task_in_all_does_not_update():
    troa = TROA(["S", "D"], step_size=1.0)
    theta = torch.zeros(2, requires_grad=True)
    assert not troa.maybe_update(0, linear_losses({"S": G_S}, theta), [theta], all_reduce=lambda t: t)


def test_columns_stay_on_the_simplex_with_random_gradients():
    gen = torch.Generator().manual_seed(0)
    tasks = ["semseg", "depth", "normals", "edges"]
    troa = TROA(tasks, step_size=0.5)
    theta = torch.zeros(16, requires_grad=True)
    for step in range(200):
        present = [t for t in tasks if torch.rand(1, generator=gen) > 0.3]
        directions = {t: torch.randn(16, generator=gen) for t in present}
        troa.maybe_update(step, linear_losses(directions, theta), [theta])
        a = troa.affinity
        assert torch.all(a > 0) and torch.allclose(a.sum(dim=0), torch.ones(4), atol=1e-5)
        assert math.isclose(float(troa.weights.sum()), 1.0, abs_tol=1e-5)
    # the own-task cosine is 1, the largest: every diagonal entry ends up the largest of its column
    assert torch.equal(troa.affinity.argmax(dim=0), torch.arange(4))


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
        if troa.maybe_update(step, linear_losses({"a": [1.0, 0.0], "b": [1.0, 1.0]}, theta), [theta]):
            updated.append(step)
        assert (len(calls) - before) == (2 if step % 3 == 0 else 0)
    assert updated == [0, 3, 6, 9]
    assert [r["step"] for r in troa.history()] == [0, 3, 6, 9]


def test_graph_survives_for_the_weighted_backward():
    torch.manual_seed(0)
    shared = torch.nn.Linear(4, 4)
    heads = {t: torch.nn.Linear(4, 1) for t in ("a", "b", "c")}
    feats = torch.relu(shared(torch.randn(8, 4)))
    losses = {t: head(feats).pow(2).mean() for t, head in heads.items()}
    troa = TROA(list(heads), step_size=0.3)
    assert troa.maybe_update(0, losses, list(shared.parameters()))
    assert shared.weight.grad is None  # autograd.grad does not accumulate into .grad
    troa.weighted_loss(losses).backward()
    assert shared.weight.grad is not None and all(h.weight.grad is not None for h in heads.values())


def test_state_dict_round_trip_resumes_exactly():
    theta = torch.zeros(3, requires_grad=True)
    gen = torch.Generator().manual_seed(1)
    batches = [{t: torch.randn(3, generator=gen) for t in "abc"} for _ in range(6)]
    a = TROA(list("abc"), step_size=0.3)
    for step, d in enumerate(batches[:3]):
        a.maybe_update(step, linear_losses(d, theta), [theta])
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = create_balancer("troa", list("abc"), step_size=0.3)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.updates == 3 and b.history() == a.history()
    for step, d in enumerate(batches[3:], start=3):
        a.maybe_update(step, linear_losses(d, theta), [theta])
        b.maybe_update(step, linear_losses(d, theta), [theta])
    assert torch.equal(a.weights, b.weights) and torch.equal(a.affinity, b.affinity)
    with pytest.raises(ValueError, match="saved for tasks"):
        TROA(list("abd")).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="saved by the 'troa' balancer"):
        TROAGlobal(list("abc")).load_state_dict(a.state_dict())


@pytest.mark.parametrize("kwargs", [dict(step_size=0), dict(every=0)])
def test_bad_settings_refused(kwargs):
    with pytest.raises(ValueError):
        TROA(["a", "b"], **kwargs)


# ---------------------------------------------------------------------------------------------------
# the earlier, global reading (balancer troa_global)
# ---------------------------------------------------------------------------------------------------
def test_global_reading_weights_and_symmetric_ema_affinity_by_hand():
    troa = create_balancer("troa_global", ["S", "D", "N"], step_size=1.0, affinity_momentum=0.5)
    assert isinstance(troa, TROAGlobal) and torch.equal(troa.affinity, torch.eye(3))
    theta = torch.zeros(2, requires_grad=True)
    troa.maybe_update(0, linear_losses({"S": G_S, "D": G_D, "N": G_N}, theta), [theta])
    # g = mean cosine with the others: S (0.707107 - 0.894427)/2 = -0.093660,
    # D (0.707107 - 0.316228)/2 = 0.195440, N (-0.894427 - 0.316228)/2 = -0.605328
    # w ∝ exp(g) = (0.910592, 1.215845, 0.545896), sum 2.672333 -> (0.340748, 0.454975, 0.204277)
    assert torch.allclose(troa.weights, torch.tensor([0.340748, 0.454975, 0.204277]), atol=2e-6)
    # affinity = 0.5 I + 0.5 max(C, 0): symmetric, negative cosines clipped
    expected = torch.tensor([[1.0, 0.5 * COS_SD, 0.0], [0.5 * COS_SD, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(troa.affinity, expected, atol=1e-6)
    assert set(troa.history()[0]) == {"step", "tasks", "cosine", "agreement", "weights"}


def test_cosine_matrix_and_agreement_of_known_gradients():
    grads = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0], [-3.0, 0.0, 0.0]])
    cos = cosine_matrix(grads)
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, r, 0.0, -1.0], [r, 1.0, 0.0, -r], [0.0, 0.0, 1.0, 0.0], [-1.0, -r, 0.0, 1.0]],
                            dtype=torch.float64)
    assert torch.allclose(cos, expected, atol=1e-12)
    assert torch.allclose(agreement(cos), torch.tensor([(r - 1) / 3, 0.0, 0.0, (-1 - r) / 3], dtype=torch.float64))


@pytest.mark.parametrize("kwargs", [dict(step_size=0), dict(every=0), dict(affinity_momentum=1.0)])
def test_global_reading_bad_settings_refused(kwargs):
    with pytest.raises(ValueError):
        TROAGlobal(["a", "b"], **kwargs)
