"""What a line of work hands the training engine: a :class:`Recipe` and its :class:`FitSettings`.

The engine (``mtwork.engine.loop.fit``) owns everything two lines of work share: the stages, the
optimizer and its schedule, precision, accumulation, data parallelism, the data order and
augmentation seeds, guards, progress, the JSON log and the epoch checkpoints. A recipe says only
what differs: which model and data, how the losses of a batch combine, what the log records besides
the losses, and which final files the run directory gets (``mtwork.train.Source1Recipe``,
``mtwork.train_vit.VitRecipe``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn


@dataclass(frozen=True)
class FitSettings:
    """The engine's settings of one run (from params.yaml; see params.yaml for each key's meaning).

    stages: [(stage, epochs)]; batch_size: the global batch (all processes, all micro-batches of an
    optimizer step); accum_steps: micro-batches per optimizer step; amp: none | auto | bf16 | fp16.
    """

    stages: Tuple[Tuple[str, int], ...]
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    seed: int
    accum_steps: int = 1
    workers: int = 0
    amp: str = "auto"
    compile: bool = False
    channels_last: bool = False
    sync_bn: bool = False
    keep_epoch_checkpoints: bool = False
    log_steps: bool = False

    @property
    def epoch_stages(self) -> List[str]:
        """The stage of every epoch, in order."""
        return [stage for stage, n in self.stages for _ in range(n)]

    @staticmethod
    def from_params(block: Mapping[str, Any], train: Mapping[str, Any], stages: Sequence[Tuple[str, int]],
                    seed: int) -> "FitSettings":
        """``block``: the optimisation block of the line of work (``train`` or ``vit``: batch size,
        lr, weight decay, warmup, accumulation); ``train``: the execution keys both lines share."""
        return FitSettings(
            stages=tuple((str(s), int(n)) for s, n in stages if n > 0), batch_size=int(block["batch_size"]),
            lr=float(block["lr"]), weight_decay=float(block["weight_decay"]), warmup_epochs=float(block["warmup_epochs"]),
            seed=int(seed), accum_steps=int(block["accum_steps"]), workers=int(train["workers"]), amp=str(train["amp"]),
            compile=bool(train["compile"]), channels_last=bool(train["channels_last"]), sync_bn=bool(train["sync_bn"]),
            keep_epoch_checkpoints=bool(train["keep_epoch_checkpoints"]), log_steps=bool(train["log_steps"]),
        )


@dataclass
class StepContext:
    """Per micro-batch: ``step`` = optimizer steps done in the run (0-based index of this one),
    ``epoch`` 0-based, ``first_micro`` True on the first micro-batch of the step, ``present`` the tasks
    labeled on some process, ``all_reduce`` a mean over processes under DDP (else None)."""

    step: int
    epoch: int
    first_micro: bool
    present: List[str]
    all_reduce: Optional[Callable[[torch.Tensor], torch.Tensor]]


class Recipe:
    """Base class of what a line of work provides (attributes set by the subclass's constructor).

    Attributes:
        run_id: the run's id (error messages, progress); task_names: its tasks in log order;
        settings: FitSettings; params_hash: what an epoch checkpoint must match to be resumed;
        model: the nn.Module to train (built on CPU; the engine moves and wraps it); dataset: a reader
            with ``raw_sample(i)``, ``__len__`` and ``labeled_counts()``; transform: the train transform
            (takes ``generator=``); collate: batch collation.
    """

    run_id: str
    task_names: List[str]
    settings: FitSettings
    params_hash: str
    model: nn.Module
    dataset: Any
    transform: Callable[..., Dict[str, Any]]
    collate: Callable[[Sequence[Dict[str, Any]]], Dict[str, Any]]

    def to(self, device: torch.device) -> None:
        """Move what the recipe keeps besides the model (e.g. a loss balancer) to ``device``."""

    def log_header(self) -> Dict[str, Any]:
        """The run's fields of log.json before the engine's (run spec, model config, parameter counts)."""
        return {}

    def set_stage(self, stage: str) -> None:
        """Switch the model to ``stage`` (which parameters train); one-stage recipes need nothing."""

    def extra_parameters(self) -> List[nn.Parameter]:
        """Trainable parameters outside the model (no weight decay; averaged by the engine under DDP)."""
        return []

    def forward(self, model: Callable[..., Any], image: torch.Tensor) -> Any:
        """The model's outputs for a batch image (``model`` may be the DDP / compiled wrapper)."""
        return model(image)

    def losses(self, outputs: Any, batch: Mapping[str, Any], ctx: StepContext) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """(total loss to backpropagate, {name: value to log (tensor or float)}) for ``ctx.present``."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, stage: str, task_means: Mapping[str, Optional[float]]) -> Dict[str, Any]:
        """Per epoch after its last step (every rank): extra fields for the epoch's log entry."""
        return {}

    def end_stage(self, stage: str, out_dir: Any) -> None:
        """After a stage's last epoch, rank 0 only (source 1 writes adapt.pt)."""

    def state_dict(self) -> Dict[str, Any]:
        """What an epoch checkpoint keeps besides the model, optimizer and RNG (a balancer's state)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def finish(self, log: Dict[str, Any], out_dir: Any) -> None:
        """Rank 0, after training: write the final files (final.pt, ...) and add their fields to ``log``
        (the engine writes log.json afterwards)."""
        raise NotImplementedError
