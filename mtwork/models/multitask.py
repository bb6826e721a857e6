"""The multi-task driving-perception model of source 1: backbone -> [adapters] -> FPN -> task heads.

Stages (the pretrain-adapt-finetune paradigm):
- ``adapt``: the pretrained backbone is frozen: no parameter of it requires grad, it runs in eval mode
  (BatchNorm statistics do not move; nothing stochastic in a feature extractor that is not trained)
  and its forward runs under ``torch.no_grad()``, so no activations are kept for a backward through
  it. Adapters, neck and heads train. This is why adapt epochs are cheaper than finetune epochs.
- ``finetune``: every parameter is trainable.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import torch
from torch import nn

from mtwork.models.backbones import backbone_channels, backbone_strides, create_backbone, set_batchnorm_eval
from mtwork.models.necks import FPN

STAGES = ("adapt", "finetune")


class MultiTaskModel(nn.Module):
    """forward(image (B,3,H,W)) -> {task: head output}.

    Args:
        backbone: returns a list of L maps (B,C_i,H/s_i,W/s_i).
        neck: list of L maps -> list of L maps (B,C,H/s_i,W/s_i).
        heads: {task: module called as head(neck_maps, (H, W))}.
        adapter: method module applied to the backbone maps before the neck, or None.
        tasks: optional {task: Task} kept for the training loop (losses, evaluators); not modules.
    The model starts in stage "finetune".
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, heads: Mapping[str, nn.Module],
                 adapter: nn.Module | None = None, tasks: Mapping[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.neck = neck
        self.heads = nn.ModuleDict(dict(heads))
        self.tasks = dict(tasks or {})
        self.stage = "finetune"

    @property
    def backbone_frozen(self) -> bool:
        return self.stage == "adapt"

    def set_stage(self, stage: str) -> "MultiTaskModel":
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}' (known: {', '.join(STAGES)})")
        self.stage = stage
        for param in self.parameters():
            param.requires_grad_(True)
        if self.backbone_frozen:
            for param in self.backbone.parameters():
                param.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "MultiTaskModel":
        super().train(mode)
        if self.backbone_frozen:
            # model.train() at each epoch must not switch the frozen backbone's BatchNorm back on
            self.backbone.eval()
            set_batchnorm_eval(self.backbone)
        return self

    def forward(self, image: torch.Tensor) -> Dict[str, Any]:
        if self.backbone_frozen:
            with torch.no_grad():
                features = self.backbone(image)
        else:
            features = self.backbone(image)
        if self.adapter is not None:
            features = self.adapter(features)
        features = self.neck(features)
        input_size = tuple(image.shape[-2:])
        return {name: head(features, input_size) for name, head in self.heads.items()}

    def count_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def build_multitask_model(
    arch: str,
    tasks: Sequence[str],
    weights: str | None = None,
    fpn_channels: int = 64,
    method: str = "finetune",
    adapter_reduction: int = 4,
    task_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> MultiTaskModel:
    """Backbone ``arch`` (optionally loaded from a converted ``weights`` file), method ``method``, an
    FPN of width ``fpn_channels`` and one head per task (tasks built with ``task_kwargs[task]``).
    The Task objects are kept on ``model.tasks``."""
    from mtwork.methods import create_method
    from mtwork.tasks import FeatureSpec, create_task

    if not tasks:
        raise ValueError("build_multitask_model needs at least one task")
    task_kwargs = dict(task_kwargs or {})
    unknown = sorted(set(task_kwargs) - set(tasks))
    if unknown:
        raise KeyError(f"task_kwargs for tasks not in the model: {unknown}")
    backbone = create_backbone(arch, weights)
    channels = backbone_channels(backbone)
    adapter = create_method(method, channels, reduction=adapter_reduction)
    neck = FPN(channels, fpn_channels)
    spec = FeatureSpec(channels=fpn_channels, strides=tuple(backbone_strides(backbone)))
    task_objs = {name: create_task(name, **task_kwargs.get(name, {})) for name in tasks}
    heads = {name: task.build_head(spec) for name, task in task_objs.items()}
    return MultiTaskModel(backbone, neck, heads, adapter, task_objs)


def multitask_loss(
    tasks: Mapping[str, Any],
    outputs: Mapping[str, Any],
    batch: Mapping[str, Any],
    weights: Mapping[str, float] | None = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """sum_t weights[t] * loss_t over the tasks with at least one labeled sample in the batch.

    Tasks without a labeled sample are skipped entirely (their head gets no gradient, no NaN from an
    empty mean). ``weights`` None means 1 for every task; a given mapping must name every task.
    Returns (total, {task: unweighted loss value}) for the tasks that counted; when none counted,
    total is a zero tensor without grad and the dict is empty (callers skip that step).
    """
    total: torch.Tensor | None = None
    values: Dict[str, float] = {}
    for name, task in tasks.items():
        labeled = batch["labeled"][name]
        if not bool(labeled.any()):
            continue
        if weights is not None and name not in weights:
            raise KeyError(f"no loss weight for task '{name}' (weights given for {sorted(weights)})")
        weight = 1.0 if weights is None else float(weights[name])
        loss = task.loss(outputs[name], batch, labeled)
        values[name] = loss.item()
        total = weight * loss if total is None else total + weight * loss
    if total is None:
        total = torch.zeros(())
    return total, values
