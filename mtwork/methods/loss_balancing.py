"""Multi-task loss balancing: how the per-task losses become the one scalar that is backpropagated.

Every balancer is a :class:`LossBalancer` (an ``nn.Module``, so ``parameters()``, ``state_dict()`` and
``.to(device)`` work as for any module) created by name with :func:`create_balancer`:

* ``equal``: the plain sum ``sum_t L_t``.
* ``uncertainty`` (Kendall, Gal & Cipolla, CVPR 2018): learned log-variances ``s_t = log sigma_t^2``,
  ``L = sum_t exp(-s_t) L_t + s_t``. Kendall et al. give ``1/(2 sigma^2) L + log sigma`` for regression and
  ``1/sigma^2 L + log sigma`` for classification; we use the one form above for every task (it is twice
  the regression form, so ``s_t = 0`` gives the plain sum and the optimum is ``s_t = log L_t``), because
  the tasks here mix classification (segmentation, detection) and regression (depth, normals, edges) and
  the two forms differ only by constant factors that the learned ``s_t`` absorbs. The ``s_t`` are the
  balancer's ``parameters()``: give them to the optimizer.
* ``dwa`` (dynamic weight average, Liu, Johns & Davison, CVPR 2019): ``w_t = T exp(r_t / tau) /
  sum_s exp(r_s / tau)`` with ``r_t = L_t(e-1) / L_t(e-2)`` from epoch-mean losses and temperature
  ``tau = 2``; ``w_t = 1`` for the first two epochs (no ratio exists yet). ``L = sum_t w_t L_t``.
* ``troa``: task-relation-optimised affinity (``mtwork.methods.troa``): per target task, a weight vector
  over all tasks from the agreement of the tasks' gradients on the shared parameters; those vectors are
  the task-affinity matrix that TAA consumes, and their row sums weight the losses.
* ``troa_global``: mtwork's earlier TROA reading (one global weight vector, a separate symmetric
  affinity), kept as an ablation.

The interface the training loop uses, the same for all:

* ``weighted_loss(losses: {task: scalar tensor}) -> scalar tensor``; tasks absent from ``losses`` (no
  label in this batch) contribute nothing; a task the balancer does not know raises ``KeyError``.
* ``maybe_update(step, losses, shared_params, all_reduce=None) -> bool``: per-step hook before backward (only TROA does
  work; the others return False).
* ``end_epoch(epoch_mean_losses: {task: float})``: per-epoch hook (DWA's ratios).
* ``weights`` (T,): the balancer's own task weights (TROA: on the simplex, the mean over targets; DWA: summing to T;
  uncertainty: ``exp(-s_t)``; equal: ones). ``loss_scales`` (T,): the factor multiplying each ``L_t`` in
  ``weighted_loss``, comparable across balancers (equal weights -> ones).
* ``affinity`` (T, T), rows source task, columns target task: the identity except for the TROA balancers.
* ``history(clear=False)``: JSON-ready records to log (what changed since the last clear).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from mtwork.registry import Registry

BALANCERS = Registry("loss balancer")

# DWA's temperature (Liu et al. 2019, Sec. 3.3: "T = 2").
DWA_TEMPERATURE = 2.0


class LossBalancer(nn.Module):
    """Base class: equal weights, identity affinity, no per-step or per-epoch work.

    Subclasses override :meth:`loss_scales_for` (or :meth:`weighted_loss` when the combination is not a
    weighted sum) and the hooks they need. Task order is ``task_names``' order everywhere.
    """

    def __init__(self, task_names: Sequence[str]):
        super().__init__()
        names = [str(t) for t in task_names]
        if not names:
            raise ValueError("a loss balancer needs at least one task")
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        self.task_names: List[str] = names
        self._index: Dict[str, int] = {t: i for i, t in enumerate(names)}
        self._history: List[Dict[str, Any]] = []

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    # ------------------------------------------------------------------ combining losses

    @property
    def loss_scales(self) -> torch.Tensor:
        """(T,) float32: the factor on each task's loss in :meth:`weighted_loss` (detached)."""
        return torch.ones(self.num_tasks)

    @property
    def weights(self) -> torch.Tensor:
        """(T,) float32: the balancer's own task weights (see the module docstring for each scale)."""
        return self.loss_scales

    def weighted_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``sum_t loss_scales[t] * L_t`` over the tasks present in ``losses`` -> scalar tensor."""
        self._check_known(losses)
        if not losses:
            raise ValueError("weighted_loss needs at least one task loss")
        scales = self.loss_scales
        terms = [scales[self._index[t]].to(loss.device, loss.dtype) * loss for t, loss in losses.items()]
        return torch.stack(terms).sum()

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.weighted_loss(losses)

    # ------------------------------------------------------------------ hooks

    def maybe_update(
        self, step: int, losses: Mapping[str, torch.Tensor], shared_params: Sequence[torch.Tensor],
        all_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> bool:
        """Per training step, after the forward and before backward; True when weights changed.

        ``all_reduce``: under data parallelism, a function averaging a tensor over all processes (the
        training engine passes it; None in one process), so every rank takes the same decision.
        """
        return False

    def end_epoch(self, epoch_mean_losses: Mapping[str, float]) -> None:
        """Per epoch, with each task's mean (unweighted) training loss over the epoch."""

    @property
    def affinity(self) -> torch.Tensor:
        """(T, T) float32, rows source task, columns target task: identity (no relation is modelled)."""
        return torch.eye(self.num_tasks)

    def history(self, clear: bool = False) -> List[Dict[str, Any]]:
        """JSON-ready records of weight changes since the last ``clear=True`` (or the start)."""
        records = list(self._history)
        if clear:
            self._history.clear()
        return records

    # ------------------------------------------------------------------ helpers

    def _check_known(self, losses: Mapping[str, Any]) -> None:
        unknown = [t for t in losses if t not in self._index]
        if unknown:
            raise KeyError(f"losses for unknown tasks {unknown}; this balancer has tasks {self.task_names}")

    def _as_dict(self, values: torch.Tensor) -> Dict[str, float]:
        return {t: float(v) for t, v in zip(self.task_names, values.tolist())}


@BALANCERS.register("equal")
class EqualWeights(LossBalancer):
    """``L = sum_t L_t``: every task counts once."""


@BALANCERS.register("uncertainty")
class UncertaintyWeighting(LossBalancer):
    """Kendall et al. 2018 with one form for all tasks: ``L = sum_t exp(-s_t) L_t + s_t``.

    ``log_vars`` (T,) is the learnable ``s_t = log sigma_t^2`` (init ``init_log_var``, default 0: the
    plain sum at the start); it must be in the optimizer (``parameters()``), without weight decay
    (decay would pull every sigma to 1 regardless of the losses).
    """

    def __init__(self, task_names: Sequence[str], init_log_var: float = 0.0):
        super().__init__(task_names)
        self.log_vars = nn.Parameter(torch.full((self.num_tasks,), float(init_log_var)))

    @property
    def loss_scales(self) -> torch.Tensor:
        return torch.exp(-self.log_vars.detach()).float().cpu()

    def weighted_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        self._check_known(losses)
        if not losses:
            raise ValueError("weighted_loss needs at least one task loss")
        terms = []
        for task, loss in losses.items():
            s = self.log_vars[self._index[task]].to(loss.device)
            # Gradients flow to s_t through both terms: exp(-s) L pushes s up, + s pushes it down.
            terms.append(torch.exp(-s).to(loss.dtype) * loss + s.to(loss.dtype))
        return torch.stack(terms).sum()

    def end_epoch(self, epoch_mean_losses: Mapping[str, float]) -> None:
        self._history.append({"log_vars": self._as_dict(self.log_vars.detach().cpu())})


@BALANCERS.register("dwa")
class DynamicWeightAverage(LossBalancer):
    """Liu et al. 2019: ``w_t = T exp(r_t/tau) / sum_s exp(r_s/tau)``, ``r_t = L_t(e-1) / L_t(e-2)``.

    ``end_epoch`` records each epoch's mean losses and sets the weights of the next epoch; with fewer
    than two recorded epochs the weights are 1 (upstream ``mtan`` code does the same for epochs 0 and 1).
    A task missing from either of the two last epochs, or with a zero loss two epochs ago, gets ratio 1
    (no evidence that it is learning faster or slower than its peers).
    """

    def __init__(self, task_names: Sequence[str], temperature: float = DWA_TEMPERATURE):
        super().__init__(task_names)
        if temperature <= 0:
            raise ValueError(f"DWA temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.register_buffer("_weights", torch.ones(self.num_tasks))
        self._epoch_losses: List[Dict[str, float]] = []

    @property
    def loss_scales(self) -> torch.Tensor:
        return self._weights.detach().float().cpu()

    def end_epoch(self, epoch_mean_losses: Mapping[str, float]) -> None:
        self._check_known(epoch_mean_losses)
        self._epoch_losses.append({t: float(v) for t, v in epoch_mean_losses.items()})
        if len(self._epoch_losses) >= 2:
            prev, prev2 = self._epoch_losses[-1], self._epoch_losses[-2]
            ratios = torch.tensor([self._ratio(prev.get(t), prev2.get(t)) for t in self.task_names],
                                  dtype=torch.float64)
            weights = self.num_tasks * torch.softmax(ratios / self.temperature, dim=0)
            self._weights.copy_(weights.to(self._weights.dtype))
        self._history.append({"epoch_losses": dict(self._epoch_losses[-1]), "weights": self._as_dict(self.loss_scales)})

    @staticmethod
    def _ratio(last: Optional[float], before: Optional[float]) -> float:
        if last is None or before is None or before == 0 or not math.isfinite(last / before):
            return 1.0
        return last / before

    def get_extra_state(self) -> Dict[str, Any]:
        return {"epoch_losses": [dict(e) for e in self._epoch_losses], "task_names": list(self.task_names)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        _check_same_tasks(self.task_names, state.get("task_names"))
        self._epoch_losses = [dict(e) for e in state["epoch_losses"]]


@BALANCERS.register("troa")
def _create_troa(task_names: Sequence[str], **kwargs: Any) -> LossBalancer:
    # Imported here: troa.py subclasses LossBalancer, so a top-level import would be circular.
    from mtwork.methods.troa import TROA

    return TROA(task_names, **kwargs)


@BALANCERS.register("troa_global")
def _create_troa_global(task_names: Sequence[str], **kwargs: Any) -> LossBalancer:
    from mtwork.methods.troa import TROAGlobal

    return TROAGlobal(task_names, **kwargs)


def create_balancer(name: str, task_names: Sequence[str], **kwargs: Any) -> LossBalancer:
    """The balancer registered as ``name`` (``equal``, ``uncertainty``, ``dwa``, ``troa``, ``troa_global``) for ``task_names``;
    ``kwargs`` are its constructor's explicit options (e.g. ``temperature`` for DWA)."""
    return BALANCERS.create(name, task_names, **kwargs)


def _check_same_tasks(mine: Sequence[str], saved: Optional[Sequence[str]]) -> None:
    if saved is not None and list(saved) != list(mine):
        raise ValueError(f"state was saved for tasks {list(saved)}, this balancer has tasks {list(mine)}")
