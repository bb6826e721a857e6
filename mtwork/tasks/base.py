"""The task interface: what every task module (semseg, drivable, det, ...) provides.

A task owns one head builder, one loss, one evaluator and the direction of each of its metrics.
Samples may carry labels for only some tasks; ``batch["labeled"][task]`` says which, and losses
and evaluators skip the rest.

Batch layout, as heads, losses and evaluators get it from ``mtwork.data.batch.batch_to_device`` (the
collated batch on the CPU holds the image and the masks as uint8; see ``mtwork.data.batch``):
    image:    (B,3,H,W) float, normalised with ImageNet mean/std (padding = 0, the mean colour)
    names:    list[str] of B image file names
    labeled:  {task: (B,) bool}
    semseg:   (B,H,W) long, train ids 0..18, 255 = ignore/unlabeled
    drivable: (B,H,W) long, 0 background, 1 direct, 2 alternative, 255 = ignore/unlabeled
    det:      list of B dicts {boxes: (N,4) float xyxy pixels, labels: (N,) long 0..9}
    orig_size:(B,2) long (H,W) of the image on disk
In training the labels live in the network-input frame; in evaluation the masks and boxes stay in the
on-disk frame (``orig_size``) and predictions are mapped back to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Protocol, Sequence

import torch
from torch import nn

from mtwork.registry import Registry

TASKS = Registry("task")


@dataclass(frozen=True)
class Metric:
    """A metric name with its direction; ``higher_is_better`` drives delta_m and table highlighting."""

    name: str
    higher_is_better: bool
    label: str = ""  # how the table heads the column


class Evaluator(Protocol):
    """detectron2-style evaluator: reset, process batches, evaluate -> {metric: value}."""

    def reset(self) -> None: ...

    def process(self, outputs: Any, batch: Mapping[str, Any]) -> None: ...

    def evaluate(self) -> Dict[str, float]: ...


@dataclass
class FeatureSpec:
    """What the neck hands to the heads: channels of each FPN level and its stride (pixels)."""

    channels: int
    strides: Sequence[int] = field(default_factory=lambda: (4, 8, 16, 32))


class Task:
    """Base class; subclasses set ``name``, ``metrics`` and ``primary_metric``."""

    name: str = ""
    metrics: Sequence[Metric] = ()
    primary_metric: str = ""

    def build_head(self, spec: FeatureSpec) -> nn.Module:
        """A head called as ``head(neck_maps: list of (B,C,H/s,W/s), input_size: (H, W)) -> outputs``."""
        raise NotImplementedError

    def loss(self, outputs: Any, batch: Mapping[str, Any], labeled: torch.Tensor) -> torch.Tensor:
        """Loss over the samples where ``labeled`` (B,) is True; callers skip tasks with none."""
        raise NotImplementedError

    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"task '{self.name}' has no metric '{name}'")


def create_task(name: str, **kwargs: Any) -> Task:
    return TASKS.create(name, **kwargs)
