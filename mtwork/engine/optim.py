"""AdamW with two parameter groups and a learning-rate schedule that restarts with every stage.

**Parameter groups.** Weight decay pulls weights towards zero; for a scale or shift it only distorts
the function, so it applies to weight matrices and convolution kernels alone. No decay for:
* every parameter with at most one dimension: biases, the weights of BatchNorm / GroupNorm /
  LayerNorm, per-channel scales such as FCOS's ``Scale`` and LayerScale, learned scalars (CLIP-style
  logit scales and temperatures, uncertainty weighting's log-variances);
* single-element parameters of any shape (a scalar stored as (1, 1, 1));
* what a module lists in timm's ``no_weight_decay()`` (Swin-V2: position-bias tables, logit scales),
  matched by name, as timm's own optimizer factory does.
Every parameter is in the optimizer, trainable in the current stage or not: a frozen parameter gets
no gradient, and AdamW skips parameters without one (no decay, no moment update), so the backbone is
untouched during the adapt stage and joins in the finetune stage with fresh moments.

**Schedule.** The run's stages (``adapt`` then ``finetune``; or one ``finetune``, ``lora`` or
``train`` stage) each get their own schedule over their own optimizer steps: a linear warmup from
``lr / warmup_steps`` to ``lr`` over ``warmup_steps = round(warmup_epochs * steps_per_epoch)``, then a
cosine decay to 0 at the stage's last step. A stage restarts at warmup, so the backbone's first
updates in the finetune stage start small instead of at the ~76 % of the peak where one schedule
spanning both stages would be.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup from 1/warmup_steps to 1 over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps`` (``step`` counts from 0 within the stage)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class StageSchedule:
    """The factor on the peak LR at every optimizer step of a run made of stages.

    ``stage_steps``: [(stage, optimizer steps in that stage)]; ``warmup_steps``: per stage.
    ``factor(step)`` takes the run's global step (0-based) and applies :func:`lr_factor` within the
    stage that step falls in.
    """

    def __init__(self, stage_steps: Sequence[Tuple[str, int]], warmup_steps: int):
        self.stage_steps = [(str(s), int(n)) for s, n in stage_steps]
        self.warmup_steps = int(warmup_steps)

    def locate(self, step: int) -> Tuple[str, int, int]:
        """(stage, step within it, the stage's total steps) of global ``step``."""
        start = 0
        for stage, n in self.stage_steps:
            if step < start + n:
                return stage, step - start, n
            start += n
        stage, n = self.stage_steps[-1]
        return stage, n, n  # past the end: the last stage's final value (0)

    def factor(self, step: int) -> float:
        _, within, total = self.locate(step)
        return lr_factor(within, total, min(self.warmup_steps, total))


def _no_decay_names(model: nn.Module) -> List[str]:
    """Name keywords from timm-style ``no_weight_decay()`` of every submodule, prefixed with its path."""
    names: List[str] = []
    for prefix, module in model.named_modules():
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook):
            for key in hook():
                names.append(f"{prefix}.{key}" if prefix else str(key))
    return names


def decays(name: str, param: torch.Tensor, no_decay_names: Iterable[str] = ()) -> bool:
    """Whether ``param`` (named ``name``) gets weight decay (module docstring). ``no_decay_names``:
    full parameter names, module names (all their parameters) or fnmatch patterns."""
    if param.ndim <= 1 or param.numel() == 1:
        return False
    return not any(name == key or name.startswith(key + ".") or fnmatch.fnmatchcase(name, key)
                   for key in no_decay_names)


def param_groups(model: nn.Module, weight_decay: float,
                 extra_no_decay: Sequence[nn.Parameter] = ()) -> List[Dict[str, object]]:
    """[{params with decay, weight_decay}, {params without, 0.0}] over every parameter of ``model``
    (shared tensors once) plus ``extra_no_decay`` (e.g. a loss balancer's learned log-variances)."""
    skip = _no_decay_names(model)
    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        (decay if decays(name, param, skip) else no_decay).append(param)
    for param in extra_no_decay:
        if id(param) not in seen:
            seen.add(id(param))
            no_decay.append(param)
    groups: List[Dict[str, object]] = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay), "name": "decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, stage_steps: Sequence[Tuple[str, int]],
                    warmup_steps: int, extra_no_decay: Sequence[nn.Parameter] = ()):
    """AdamW over :func:`param_groups` and a LambdaLR following :class:`StageSchedule`."""
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay, extra_no_decay), lr=lr)
    schedule = StageSchedule(stage_steps, warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    return optimizer, scheduler, schedule
