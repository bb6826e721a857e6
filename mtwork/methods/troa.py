"""TROA: task-relation-optimised affinity (source 2, Bhattacharjee et al., ICCV 2023).

Source 2 describes TROA as: task affinities from the cosine similarity between the gradients of the
different tasks' losses on the shared parameters; task weights updated by approximate mirror descent
(exponentiated gradient on the simplex); the affinity vector of a task weights the task embeddings that
feed TAA's FiLM. The released code has no TROA, so the exact choices below are ours:

**Gradient work** (every ``every`` steps): ``G_t = d L_t / d theta_shared`` flattened over the shared
parameters (``torch.autograd.grad(..., retain_graph=True)``, so the caller's later backward of the
weighted loss still works; parameters a task does not reach contribute zeros). ``C[s, t] = cos(G_s, G_t)``
(T, T), ``C[t, t] = 1``. This costs T extra backward passes through the shared part per update, which
is why ``every`` exists.

**Weights** ``w`` (T,) on the probability simplex, initialised uniform, updated by exponentiated
gradient (mirror descent with the entropy mirror map): ``w_t <- w_t exp(eta g_t) / sum_s w_s exp(eta g_s)``
with ``g_t = mean_{s != t} C[t, s]``, the mean agreement of task t's gradient with the *other* tasks'.
A task whose descent direction helps the others gains weight, one that conflicts with them loses it:
the weighted sum of gradients then points where most tasks improve together. The diagonal is excluded
because ``C[t, t] = 1`` for every task and would only rescale the step. The update is done in log space
(``log w += eta g``, then a log-softmax), so weights stay strictly positive and sum to 1 however many
updates are made. With one task present there is no relation and nothing is updated.

**Affinity** ``A`` (T, T), rows source task, columns target task: an exponential moving average, over
updates, of the positive part of the cosine matrix, ``A <- m A + (1 - m) max(C, 0)``, initialised to the
identity. Negative cosines are clipped because the affinity is a mixing weight for task embeddings
(``e'_t = sum_s A[t, s] e_s`` feeding TAA's FiLM): a conflicting task should contribute nothing rather
than a negated embedding. Rows are *not* normalised, matching the published matrix (values in 0..1,
dominant diagonal, rows not summing to 1). Gradient cosine is symmetric with a unit diagonal, so this
``A`` is symmetric with ``A[t, t] = 1``; the published matrix is slightly asymmetric with diagonal
0.91..0.99, which a gradient-cosine definition alone cannot produce (the paper does not say what else
enters), and we do not invent a further transformation.

Updates use only the tasks present in ``losses`` (a batch may lack some labels): absent tasks keep
their log weight (``g = 0``) and their affinity rows and columns.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from mtwork.methods.loss_balancing import LossBalancer, _check_same_tasks


def flat_gradient(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """d loss / d params flattened into one float32 vector (P,) (P = total elements of ``params``).

    The graph is retained for the caller's backward; parameters ``loss`` does not depend on give zeros,
    so every task's vector has the same layout and cosines compare like with like.
    """
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


class TROA(LossBalancer):
    """Task weights by exponentiated gradient on gradient agreement, and a task-affinity matrix.

    ``step_size`` (eta, > 0): exponentiated-gradient step; ``g_t`` lies in [-1, 1], so one update
    changes a weight ratio by at most ``exp(2 eta)``. ``every`` (k >= 1): gradient work happens only on
    steps divisible by k. ``affinity_momentum`` (m in [0, 1)): EMA factor of the affinity matrix.

    Use per step: ``troa.maybe_update(step, losses, shared_params)`` then
    ``troa.weighted_loss(losses).backward()``; read ``troa.affinity`` in the model's forward.
    """

    def __init__(
        self,
        task_names: Sequence[str],
        step_size: float = 0.1,
        every: int = 1,
        affinity_momentum: float = 0.9,
        eps: float = 1e-12,
    ):
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
        # float64: a log weight that drifts far below the others must not underflow to 0 after softmax.
        self.register_buffer("log_weights", torch.full((t,), -math.log(t), dtype=torch.float64))
        self.register_buffer("_affinity", torch.eye(t, dtype=torch.float32))
        self.updates = 0

    # ------------------------------------------------------------------ what the model and loss read

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
        """(T, T) float32, rows source task, columns target task (see the module docstring); detached."""
        return self._affinity.detach().clone()

    # ------------------------------------------------------------------ the update

    def maybe_update(
        self, step: int, losses: Mapping[str, torch.Tensor], shared_params: Sequence[torch.Tensor],
        all_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> bool:
        """Every ``every`` steps: per-task gradients on ``shared_params``, cosines, weights and affinity.

        ``losses``: {task: scalar tensor with its graph}; ``shared_params``: the trainable parameters all
        tasks share (adapters, not task heads). Returns True when the weights were updated. The graph is
        retained, so ``weighted_loss(losses).backward()`` works afterwards.
        """
        if step % self.every != 0:
            return False
        self._check_known(losses)
        present = [t for t in self.task_names if t in losses]
        params = [p for p in shared_params if p.requires_grad]
        if len(present) < 2 or not params:
            return False
        grads = torch.stack([flat_gradient(losses[t], params) for t in present])
        if all_reduce is not None:  # data parallel: the gradients of the global batch, same on every rank
            grads = all_reduce(grads)
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

    # ------------------------------------------------------------------ resume

    def get_extra_state(self) -> Dict[str, Any]:
        return {"task_names": list(self.task_names), "updates": self.updates, "history": list(self._history)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        _check_same_tasks(self.task_names, state.get("task_names"))
        self.updates = int(state["updates"])
        self._history = list(state["history"])

    def extra_repr(self) -> str:
        return (f"tasks={self.task_names}, step_size={self.step_size}, every={self.every}, "
                f"affinity_momentum={self.affinity_momentum}")


__all__: List[str] = ["TROA", "flat_gradient", "cosine_matrix", "agreement"]
