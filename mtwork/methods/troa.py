"""TROA: task-relation-optimised affinity (source 2, Bhattacharjee et al., ICCV 2023).

Source 2 describes TROA as: for each *target* task t, a task-weight vector ``w_t`` over all tasks,
updated by approximate mirror descent from the cosine similarity between the gradients of the target's
loss and of the other ("inductive") tasks' losses on the shared parameters; at the end of an iteration
``w_t`` expresses t's relation to every task, and the affinity matrix of the paper's figure is made of
these vectors (asymmetric: S -> N 0.117, N -> S 0.662). The affinity vector of t weights the task
embeddings that feed TAA's FiLM. This is the line of *target-aware weighted training* (TAWT, Chen et
al., "Weighted training for cross-task learning", ICLR 2022): the weights of auxiliary tasks for one
target, updated by exponentiated gradient on the gradient cosine. The released code has no TROA, so the
exact choices below are ours.

**Gradient work** (every ``every`` steps): ``G_t = d L_t / d theta_shared`` flattened over the shared
parameters (``torch.autograd.grad(..., retain_graph=True)``, so the caller's later backward of the
weighted loss still works; parameters a task does not reach contribute zeros). ``C[s, t] = cos(G_s, G_t)``
(T, T), ``C[t, t] = 1``. This costs T extra backward passes through the shared part per update, which
is why ``every`` exists. Under data parallelism (``all_reduce`` given) each task's gradient is averaged
over the processes whose batch had that task *before* the cosines (a task labelled on no process is
absent), so every process computes the same matrix and takes the same step.

**Per-target weights** (:class:`TROA`, balancer ``troa``): ``W`` (T, T), column t = ``w_t`` on the
probability simplex over source tasks s, initialised uniform (``1/T``). Exponentiated gradient (mirror
descent with the entropy map) for target t, with the agreement of each source with the target as the
ascent direction:

    w_t[s] <- w_t[s] exp(eta C[s, t]) / sum_r w_t[r] exp(eta C[r, t])

done in log space (weights stay strictly positive). ``C[t, t] = 1`` is the largest cosine, so a
target's own weight grows fastest (the published matrix's dominant diagonal); a source whose gradient
agrees with the target's gains weight, one that conflicts with it loses weight. Over many updates the
log-ratio ``log w_t[s] / w_t[t]`` falls by ``eta (1 - C[s, t])`` per update, so ``eta`` and ``every``
set how fast a column concentrates on its own task.

**Affinity** ``A = W`` (T, T), **rows source, columns target** (the published matrix's orientation:
``A[s, t]`` is how much source s counts for target t; each *column* sums to 1). Asymmetric in general:
the cosines are symmetric, but each column has its own normaliser. The published values do not sum to
1 along rows or columns (diagonal 0.91-0.99), so the paper rescaled them in a way it does not state; we
keep the simplex weights themselves. The model's task embedding of target t is the affinity-weighted
mix of the embedding table E (T, D) with t's column: ``e'_t = sum_s A[s, t] E[s]`` (``A^T E``;
``mtwork.methods.vtagml.VTAGMLModel.task_embeddings``).

**Loss weights**: each target's TAWT objective is ``sum_s w_t[s] L_s``; training all targets at once
minimises their sum, ``sum_s (sum_t w_t[s]) L_s``. So ``loss_scales[s] = sum_t A[s, t]`` (row sums: the
plain sum of losses while ``W`` is uniform), and ``weights = loss_scales / T`` (row means, on the
simplex): a task that helps many targets counts more.

**Missing labels**: only tasks present in the batch take part. For a present target, only the entries
of present sources move, and they are renormalised to keep their total mass, so an absent source
keeps its weight ``w_t[s]`` exactly; columns of absent targets do not change. With fewer than two
tasks present there is no relation and nothing is updated.

:class:`TROAGlobal` (balancer ``troa_global``) is mtwork's earlier reading, kept as an ablation: one
global weight vector by exponentiated gradient on each task's mean agreement with the others, and a
separate symmetric affinity (a moving average of the clipped cosine matrix) that does not come from the
weights.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from mtwork.methods.loss_balancing import LossBalancer, _check_same_tasks

AllReduce = Callable[[torch.Tensor], torch.Tensor]


def flat_gradient(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """d loss / d params flattened into one float32 vector (P,) (P = total elements of ``params``).

    The graph is retained for the caller's backward; parameters ``loss`` does not depend on give zeros,
    so every task's vector has the same layout and cosines compare like with like.
    """
    if not loss.requires_grad:  # a loss that reaches no trainable parameter at all
        return torch.zeros(sum(p.numel() for p in params), device=loss.device)
    grads = torch.autograd.grad(loss, list(params), retain_graph=True, allow_unused=True)
    parts = [
        (g if g is not None else torch.zeros_like(p)).reshape(-1).float()
        for g, p in zip(grads, params)
    ]
    return torch.cat(parts)


def cosine_matrix(gradients: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(T, P) gradients -> (T, T) float64 cosine similarities, diagonal set to 1.

    A zero gradient (a task that does not reach the shared parameters) has cosine 0 with every other
    task; its diagonal is still 1 (a task always agrees with itself).
    """
    g = gradients.double()
    unit = g / g.norm(dim=1, keepdim=True).clamp_min(eps)
    cos = (unit @ unit.T).clamp(-1.0, 1.0)
    cos.fill_diagonal_(1.0)
    return cos


def agreement(cos: torch.Tensor) -> torch.Tensor:
    """(T, T) cosines -> (T,) ``g_t = mean_{s != t} cos[t, s]`` (zeros for T = 1)."""
    num = cos.shape[0]
    if num < 2:
        return torch.zeros(num, dtype=cos.dtype)
    off = cos - torch.diag(torch.diagonal(cos))
    return off.sum(dim=1) / (num - 1)


def task_gradients(
    losses: Mapping[str, torch.Tensor], task_names: Sequence[str], params: Sequence[torch.Tensor],
    all_reduce: Optional[AllReduce] = None,
) -> Tuple[List[str], Optional[torch.Tensor]]:
    """The tasks that have a loss and their flattened gradients on ``params``: (tasks, (T', P) float32).

    One process (``all_reduce`` None): the tasks of ``losses`` in ``task_names`` order; (tasks, None)
    when fewer than two are present (no gradient work is done then).

    Data parallel (``all_reduce`` averages a tensor over processes): every process contributes a
    (T, P + 1) buffer holding its gradient of each task it has (zeros otherwise) and a presence flag in
    the last column, so all processes reduce a tensor of the same shape even when their batches hold
    different tasks. After the average, ``sum / count = mean / share``: each task's gradient is the mean
    over the processes that had it, and a task no process had is absent. Every process returns the same.
    """
    local = [t for t in task_names if t in losses]
    if all_reduce is None:
        if len(local) < 2:
            return local, None
        return local, torch.stack([flat_gradient(losses[t], params) for t in local])
    size = sum(p.numel() for p in params)
    buffer = torch.zeros(len(task_names), size + 1, device=params[0].device)
    for i, task in enumerate(task_names):
        if task in losses:
            buffer[i, :size] = flat_gradient(losses[task], params)
            buffer[i, size] = 1.0
    buffer = all_reduce(buffer)
    share = buffer[:, size]
    idx = [i for i in range(len(task_names)) if float(share[i]) > 0]
    present = [task_names[i] for i in idx]
    if len(present) < 2:
        return present, None
    rows = torch.tensor(idx, device=buffer.device)
    return present, buffer[rows, :size] / share[rows, None]


class TROA(LossBalancer):
    """Per-target task weights by exponentiated gradient on gradient cosines; the affinity is those weights.

    ``step_size`` (eta, > 0): exponentiated-gradient step; cosines lie in [-1, 1], so one update changes
    a weight ratio within a column by at most ``exp(2 eta)``. ``every`` (k >= 1): gradient work happens
    only on steps divisible by k.

    Use per step: ``troa.maybe_update(step, losses, shared_params)`` then
    ``troa.weighted_loss(losses).backward()``; read ``troa.affinity`` in the model's forward.
    """

    def __init__(self, task_names: Sequence[str], step_size: float = 0.1, every: int = 1, eps: float = 1e-12):
        super().__init__(task_names)
        if step_size <= 0:
            raise ValueError(f"TROA step_size must be positive, got {step_size}")
        if int(every) < 1:
            raise ValueError(f"TROA every must be at least 1, got {every}")
        self.step_size = float(step_size)
        self.every = int(every)
        self.eps = float(eps)
        t = self.num_tasks
        # log W[s, t] = log w_t[s]; float64 so that a weight far below the others does not underflow
        self.register_buffer("log_task_weights", torch.full((t, t), -math.log(t), dtype=torch.float64))
        self.updates = 0

    # ------------------------------------------------------------------ what the model and loss read

    @property
    def affinity(self) -> torch.Tensor:
        """(T, T) float32, ``A[s, t] = w_t[s]``: rows source task, columns target task; columns sum to 1."""
        return torch.exp(self.log_task_weights.detach()).float().cpu()

    @property
    def task_weight_vectors(self) -> Dict[str, Dict[str, float]]:
        """{target: {source: w_target[source]}} (the affinity's columns, JSON-ready)."""
        a = self.affinity
        return {t: {s: float(a[i, j]) for i, s in enumerate(self.task_names)} for j, t in enumerate(self.task_names)}

    @property
    def loss_scales(self) -> torch.Tensor:
        """(T,) ``sum_t w_t[s]``: the affinity's row sums (ones while every ``w_t`` is uniform)."""
        return self.affinity.sum(dim=1)

    @property
    def weights(self) -> torch.Tensor:
        """(T,) ``mean_t w_t[s]``, on the simplex (positive, sum 1); uniform before the first update."""
        return self.affinity.mean(dim=1)

    # ------------------------------------------------------------------ the update

    def maybe_update(
        self, step: int, losses: Mapping[str, torch.Tensor], shared_params: Sequence[torch.Tensor],
        all_reduce: Optional[AllReduce] = None,
    ) -> bool:
        """Every ``every`` steps: per-task gradients on ``shared_params``, cosines, one mirror-descent step
        per present target. Returns True when the weights were updated.

        ``losses``: {task: scalar tensor with its graph}; ``shared_params``: the trainable parameters all
        tasks share (not task heads). The graph is retained, so ``weighted_loss(losses).backward()`` works
        afterwards. ``all_reduce``: see :func:`task_gradients` (every process must call this on the same
        steps).
        """
        if step % self.every != 0:
            return False
        self._check_known(losses)
        params = [p for p in shared_params if p.requires_grad]
        if not params:
            return False
        present, grads = task_gradients(losses, self.task_names, params, all_reduce)
        if grads is None:
            return False
        cos = cosine_matrix(grads, self.eps).cpu()
        idx = torch.tensor([self._index[t] for t in present])
        with torch.no_grad():
            log_w = self.log_task_weights.detach().cpu()
            block = log_w[idx][:, idx]                     # rows: present sources, columns: present targets
            mass = torch.logsumexp(block, dim=0)           # log of each column's present-source mass
            moved = block + self.step_size * cos           # cos[s, t]: source s's agreement with target t
            block = moved - torch.logsumexp(moved, dim=0) + mass
            rows, cols = torch.meshgrid(idx, idx, indexing="ij")
            log_w[rows, cols] = block
            self.log_task_weights.copy_(log_w.to(self.log_task_weights.device))
        self.updates += 1
        self._history.append({
            "step": int(step),
            "tasks": present,
            "cosine": [[round(float(v), 6) for v in row] for row in cos.tolist()],
            "task_weights": self.task_weight_vectors,
            "weights": self._as_dict(self.weights),
        })
        return True

    # ------------------------------------------------------------------ resume

    def get_extra_state(self) -> Dict[str, Any]:
        return {"kind": "troa", "task_names": list(self.task_names), "updates": self.updates,
                "history": list(self._history)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        _check_same_kind("troa", state)
        _check_same_tasks(self.task_names, state.get("task_names"))
        self.updates = int(state["updates"])
        self._history = list(state["history"])

    def extra_repr(self) -> str:
        return f"tasks={self.task_names}, step_size={self.step_size}, every={self.every}"


class TROAGlobal(LossBalancer):
    """mtwork's earlier TROA reading (balancer ``troa_global``): one global weight vector and a symmetric
    affinity that is not derived from it.

    Weights ``w`` (T,) on the simplex, initialised uniform, by exponentiated gradient
    ``log w += eta g`` then a log-softmax, with ``g_t = mean_{s != t} C[t, s]``, task t's mean agreement
    with the *other* tasks (absent tasks get ``g = 0``). Loss ``T sum_t w_t L_t``.
    Affinity ``A <- m A + (1 - m) max(C, 0)`` from the identity (``affinity_momentum`` m in [0, 1)):
    symmetric with a unit diagonal; absent tasks keep their rows and columns.
    """

    def __init__(self, task_names: Sequence[str], step_size: float = 0.1, every: int = 1,
                 affinity_momentum: float = 0.9, eps: float = 1e-12):
        super().__init__(task_names)
        if step_size <= 0:
            raise ValueError(f"TROA step_size must be positive, got {step_size}")
        if int(every) < 1:
            raise ValueError(f"TROA every must be at least 1, got {every}")
        if not 0.0 <= affinity_momentum < 1.0:
            raise ValueError(f"TROA affinity_momentum must be in [0, 1), got {affinity_momentum}")
        self.step_size = float(step_size)
        self.every = int(every)
        self.affinity_momentum = float(affinity_momentum)
        self.eps = float(eps)
        t = self.num_tasks
        self.register_buffer("log_weights", torch.full((t,), -math.log(t), dtype=torch.float64))
        self.register_buffer("_affinity", torch.eye(t, dtype=torch.float32))
        self.updates = 0

    @property
    def weights(self) -> torch.Tensor:
        """(T,) float32 on the simplex (positive, sum 1); uniform before the first update."""
        return torch.softmax(self.log_weights.detach(), dim=0).float().cpu()

    @property
    def loss_scales(self) -> torch.Tensor:
        """(T,) ``T * w``: ``weighted_loss = T sum_t w_t L_t``, the plain sum for uniform weights."""
        return self.num_tasks * self.weights

    @property
    def affinity(self) -> torch.Tensor:
        """(T, T) float32, rows source, columns target (symmetric here); detached."""
        return self._affinity.detach().clone().cpu()

    def maybe_update(
        self, step: int, losses: Mapping[str, torch.Tensor], shared_params: Sequence[torch.Tensor],
        all_reduce: Optional[AllReduce] = None,
    ) -> bool:
        """As :meth:`TROA.maybe_update`, with this class's global weight vector and EMA affinity."""
        if step % self.every != 0:
            return False
        self._check_known(losses)
        params = [p for p in shared_params if p.requires_grad]
        if not params:
            return False
        present, grads = task_gradients(losses, self.task_names, params, all_reduce)
        if grads is None:
            return False
        cos = cosine_matrix(grads, self.eps).cpu()
        g_present = agreement(cos)
        idx = torch.tensor([self._index[t] for t in present])
        g = torch.zeros(self.num_tasks, dtype=torch.float64)
        g[idx] = g_present
        with torch.no_grad():
            log_w = self.log_weights.detach().cpu() + self.step_size * g
            self.log_weights.copy_(torch.log_softmax(log_w, dim=0).to(self.log_weights.device))
            block = self._affinity[idx][:, idx].cpu()
            block = self.affinity_momentum * block + (1.0 - self.affinity_momentum) * cos.clamp_min(0.0).float()
            device = self._affinity.device
            rows, cols = torch.meshgrid(idx, idx, indexing="ij")
            self._affinity[rows.to(device), cols.to(device)] = block.to(device)
        self.updates += 1
        self._history.append({
            "step": int(step),
            "tasks": present,
            "cosine": [[round(float(v), 6) for v in row] for row in cos.tolist()],
            "agreement": {t: float(v) for t, v in zip(present, g_present.tolist())},
            "weights": self._as_dict(self.weights),
        })
        return True

    def get_extra_state(self) -> Dict[str, Any]:
        return {"kind": "troa_global", "task_names": list(self.task_names), "updates": self.updates,
                "history": list(self._history)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        _check_same_kind("troa_global", state)
        _check_same_tasks(self.task_names, state.get("task_names"))
        self.updates = int(state["updates"])
        self._history = list(state["history"])

    def extra_repr(self) -> str:
        return (f"tasks={self.task_names}, step_size={self.step_size}, every={self.every}, "
                f"affinity_momentum={self.affinity_momentum}")


def _check_same_kind(mine: str, state: Mapping[str, Any]) -> None:
    saved = state.get("kind", mine)
    if saved != mine:
        raise ValueError(f"state was saved by the '{saved}' balancer, this balancer is '{mine}'")


__all__: List[str] = ["TROA", "TROAGlobal", "flat_gradient", "cosine_matrix", "agreement", "task_gradients"]
