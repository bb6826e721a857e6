"""The multi-task driving-perception model of source 1: backbone -> [adapters] -> FPN -> task heads.

Stages (the pretrain-adapt-finetune paradigm):
- ``adapt``: the pretrained backbone is frozen: no parameter of it requires grad, it runs in eval mode
  (BatchNorm statistics do not move; nothing stochastic in a feature extractor that is not trained)
  and its forward runs under ``torch.no_grad()``, so no activations are kept for a backward through
  it. Adapters, neck and heads train. This is why adapt epochs are cheaper than finetune epochs.
- ``finetune``: every parameter is trainable.

Adapter placement (``adapter_placement``, params ``model.adapter_placement``): the multi-scale adapters
of a method (``multiscale_adapter``, and those inside ``lv_adapter``) sit on the backbone's outputs
before the neck (``outputs``), or after each backbone stage with the adapted map feeding the next stage
(``stages``; ``mtwork.methods.multiscale_adapter``). With ``stages`` the backbone runs stage by stage
(``mtwork.models.backbones.forward_stages``) and, in the adapt stage, *with* autograd: its weights stay
frozen, but the gradient of an early adapter flows back through the later frozen stages (autograd
records nothing before the first adapter, whose input needs no gradient). Methods without multi-scale
adapters (``finetune``, ``lora``) build the same model under either placement.

Language methods (``lv_adapter``): a method module with ``uses_language = True`` also encodes text
prompts once per forward (``encode_prompts()``), uses them on the backbone maps
(``adapter(features, text)``) and after the neck hands each head that has a language path its input
(``language_outputs(neck_maps, text)`` -> {task: head keyword arguments}, {name: auxiliary loss
term}). Heads declare their language path with ``language_input`` ("score_map" or "text") and
``enable_language(text_dim, num_classes)``. Auxiliary terms are returned under ``outputs[AUX_OUTPUTS]``
and added by ``multitask_loss``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from mtwork.methods.multiscale_adapter import PLACEMENTS, MultiScaleAdapter
from mtwork.models.backbones import (backbone_channels, backbone_strides, create_backbone, forward_stages,
                                     set_batchnorm_eval, supports_stage_hooks)
from mtwork.models.necks import FPN

STAGES = ("adapt", "finetune", "lora")
#: ``model.adapter_placement`` values (``mtwork.methods.multiscale_adapter``).
ADAPTER_PLACEMENTS = PLACEMENTS
#: Key of ``MultiTaskModel`` outputs holding a method's auxiliary loss terms ({name: term}); each term
#: has ``weight`` and ``loss(batch) -> Tensor | None`` (None: no labeled sample for it in the batch).
#: Not a task name, so evaluators and ``multitask_loss``' task loop never look at it.
AUX_OUTPUTS = "_aux"


class MultiTaskModel(nn.Module):
    """forward(image (B,3,H,W)) -> {task: head output}.

    Args:
        backbone: returns a list of L maps (B,C_i,H/s_i,W/s_i).
        neck: list of L maps -> list of L maps (B,C,H/s_i,W/s_i).
        heads: {task: module called as head(neck_maps, (H, W))}.
        adapter: method module applied to the backbone maps before the neck, or None.
        tasks: optional {task: Task} kept for the training loop (losses, evaluators); not modules.
        adapter_placement: "outputs" or "stages" (module docstring); "stages" needs a backbone that
            ``forward_stages`` can split (ValueError naming the backbone otherwise).
    The model starts in stage "finetune".
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, heads: Mapping[str, nn.Module],
                 adapter: nn.Module | None = None, tasks: Mapping[str, Any] | None = None,
                 adapter_placement: str = "outputs"):
        super().__init__()
        if adapter_placement not in ADAPTER_PLACEMENTS:
            raise ValueError(f"adapter_placement must be one of {list(ADAPTER_PLACEMENTS)}, got {adapter_placement!r}")
        self.backbone = backbone
        self.adapter = adapter
        self.neck = neck
        self.heads = nn.ModuleDict(dict(heads))
        self.tasks = dict(tasks or {})
        self.stage = "finetune"
        self.adapter_placement = adapter_placement
        found = [m for m in adapter.modules() if isinstance(m, MultiScaleAdapter)] if adapter is not None else []
        if len(found) > 1:
            raise ValueError(f"method module {type(adapter).__name__} holds {len(found)} multi-scale adapters; "
                             "the placement can move only one")
        # The adapters that run between the backbone's stages (None: placement "outputs", or none exist).
        # A plain reference, not a submodule: they are registered (and saved) once, under the method.
        stage_adapters: Optional[MultiScaleAdapter] = None
        if adapter_placement == "stages" and found:
            if not supports_stage_hooks(backbone):
                raise ValueError(
                    f"model.adapter_placement 'stages' with method {type(adapter).__name__} needs a backbone "
                    f"that can be run stage by stage; {type(backbone).__name__} cannot")
            stage_adapters = found[0].set_placement("stages")
        object.__setattr__(self, "_stage_adapters", stage_adapters)

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
        elif stage == "lora":
            # the backbone's base weights stay frozen, its low-rank updates train; unlike "adapt" the
            # backbone forward keeps autograd, since the LoRA gradients flow through it
            from mtwork.methods.lora import mark_only_lora_trainable

            mark_only_lora_trainable(self.backbone)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "MultiTaskModel":
        super().train(mode)
        if self.backbone_frozen:
            # model.train() at each epoch must not switch the frozen backbone's BatchNorm back on
            self.backbone.eval()
            set_batchnorm_eval(self.backbone)
        return self

    @property
    def uses_language(self) -> bool:
        return bool(getattr(self.adapter, "uses_language", False))

    def backbone_features(self, image: torch.Tensor) -> list:
        """The backbone's 4 maps; with placement "stages" already adapted between (and after) its stages."""
        if self._stage_adapters is not None:
            # no torch.no_grad even when frozen: adapters inside need gradients through the later stages
            return forward_stages(self.backbone, image, self._stage_adapters.adapt)
        if self.backbone_frozen:
            with torch.no_grad():
                return self.backbone(image)
        return self.backbone(image)

    def forward(self, image: torch.Tensor) -> Dict[str, Any]:
        """{task: head output}; with a language method also ``AUX_OUTPUTS``: {name: aux loss term}."""
        features = self.backbone_features(image)
        input_size = tuple(image.shape[-2:])
        if self.uses_language:
            text = self.adapter.encode_prompts()  # once per forward: shared by every use below
            features = self.neck(self.adapter(features, text))
            head_inputs, aux = self.adapter.language_outputs(features, text)
            outputs: Dict[str, Any] = {
                name: head(features, input_size, **head_inputs.get(name, {})) for name, head in self.heads.items()
            }
            if aux:
                outputs[AUX_OUTPUTS] = aux
            return outputs
        if self.adapter is not None:
            features = self.adapter(features)
        features = self.neck(features)
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
    text_encoder_checkpoint: str | Path | None = None,
    clip_model_name: Optional[str] = None,
    lv_kwargs: Mapping[str, Any] | None = None,
    lora_kwargs: Mapping[str, Any] | None = None,
    adapter_placement: str = "outputs",
) -> MultiTaskModel:
    """Backbone ``arch`` (optionally loaded from a converted ``weights`` file), method ``method``, an
    FPN of width ``fpn_channels`` and one head per task (tasks built with ``task_kwargs[task]``).
    The Task objects are kept on ``model.tasks``.

    Language methods (``method="lv_adapter"``) also take ``text_encoder_checkpoint`` (an open_clip
    checkpoint file or tag holding the text tower), ``clip_model_name`` (its open_clip model name;
    None = the embedded tiny CLIP) and ``lv_kwargs`` (the method's options: ``num_context``,
    ``align_weight``, ``attn_heads``, and ``class_names`` = {task: prompt words per class}, default the
    task's class names); other methods refuse them. ``method="lora"`` injects low-rank updates into
    the backbone's convolutions (``lora_kwargs``: ``rank``, ``alpha``, ``dropout``, ``target``; see
    mtwork.methods.lora.apply_lora) and trains them in the "lora" stage. ``adapter_placement``: where
    the method's multi-scale adapters sit, "outputs" or "stages" (``MultiTaskModel``).
    """
    from mtwork.methods import METHODS, create_method
    from mtwork.tasks import FeatureSpec, create_task

    if not tasks:
        raise ValueError("build_multitask_model needs at least one task")
    task_kwargs = dict(task_kwargs or {})
    unknown = sorted(set(task_kwargs) - set(tasks))
    if unknown:
        raise KeyError(f"task_kwargs for tasks not in the model: {unknown}")
    language = bool(getattr(METHODS.get(method), "uses_language", False))
    if not language and (text_encoder_checkpoint is not None or clip_model_name is not None or lv_kwargs):
        raise ValueError(
            f"method '{method}' takes no language options (text_encoder_checkpoint, clip_model_name, lv_kwargs)"
        )
    if lora_kwargs and method != "lora":
        raise ValueError(f"method '{method}' takes no lora_kwargs")
    backbone = create_backbone(arch, weights)
    if method == "lora":
        from mtwork.methods.lora import apply_lora

        backbone = apply_lora(backbone, **dict(lora_kwargs or {}))
    channels = backbone_channels(backbone)
    if not language:
        adapter = create_method(method, channels, reduction=adapter_reduction)
    neck = FPN(channels, fpn_channels)
    spec = FeatureSpec(channels=fpn_channels, strides=tuple(backbone_strides(backbone)))
    task_objs = {name: create_task(name, **task_kwargs.get(name, {})) for name in tasks}
    heads = {name: task.build_head(spec) for name, task in task_objs.items()}
    if language:
        adapter = _build_language_method(method, channels, adapter_reduction, fpn_channels, task_objs, heads,
                                         text_encoder_checkpoint, clip_model_name, dict(lv_kwargs or {}))
    return MultiTaskModel(backbone, neck, heads, adapter, task_objs, adapter_placement=adapter_placement)


def _build_language_method(method, channels, reduction, fpn_channels, task_objs, heads, checkpoint,
                           clip_model_name, options: Dict[str, Any]) -> nn.Module:
    """Build a language method for the heads that have a language path, then switch those paths on.

    Prompts are made for those heads' tasks, with the task's class names unless ``options``
    ``class_names`` gives other words (one per class, same order: the prompts' embeddings *are* the
    classifier, so their number must match the task's classes).
    """
    from mtwork.methods import create_method

    kinds = {name: head.language_input for name, head in heads.items() if getattr(head, "language_input", None)}
    names = {name: list(task_objs[name].class_names) for name in kinds}
    overrides = dict(options.pop("class_names", None) or {})
    for task, words in overrides.items():
        if task not in names:
            raise KeyError(f"lv_kwargs class_names for '{task}', which has no language path in this model "
                           f"(tasks with one: {sorted(names)})")
        if len(words) != len(names[task]):
            raise ValueError(f"lv_kwargs class_names['{task}'] has {len(words)} names, the task {len(names[task])} classes")
        names[task] = list(words)
    adapter = create_method(
        method, channels, reduction=reduction, text_encoder_checkpoint=checkpoint, clip_model_name=clip_model_name,
        class_names=names, fpn_channels=fpn_channels,
        score_map_tasks=[n for n, k in kinds.items() if k == "score_map"],
        text_tasks=[n for n, k in kinds.items() if k == "text"], **options,
    )
    for name in kinds:
        heads[name].enable_language(adapter.text_dim, len(names[name]))
    return adapter


def multitask_loss(
    tasks: Mapping[str, Any],
    outputs: Mapping[str, Any],
    batch: Mapping[str, Any],
    weights: Mapping[str, float] | None = None,
    aux_values: Dict[str, float] | None = None,
    present: Sequence[str] | None = None,
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """sum_t weights[t] * loss_t over the tasks with at least one labeled sample in the batch, plus
    the method's auxiliary terms ``outputs[AUX_OUTPUTS]`` (each ``term.weight * term.loss(batch)``,
    skipped when it returns None; e.g. the LV-Adapter's alignment loss).

    Tasks without a labeled sample are skipped entirely (their head gets no gradient, no NaN from an
    empty mean). ``weights`` None means 1 for every task; a given mapping must name every task.
    Returns (total, {task: unweighted loss value}) for the tasks that counted; when none counted,
    total is a zero tensor without grad and the dict is empty (callers skip that step). The values of
    the auxiliary terms that counted are written into ``aux_values`` when a dict is given (unweighted),
    so the returned dict keeps holding task names only.

    ``present``: the tasks to compute, instead of those with a labeled sample in ``batch``. Under data
    parallelism the training engine passes the tasks labeled on *any* rank, so every rank computes
    (and normalises, ``mtwork.engine.distributed``) the same losses, with graph-connected zeros where
    it holds no label; an auxiliary term with a ``task`` attribute then counts iff its task does.
    """
    total: torch.Tensor | None = None
    values: Dict[str, float] = {}
    for name, task in tasks.items():
        labeled = batch["labeled"][name]
        if (name not in present) if present is not None else not bool(labeled.any()):
            continue
        if weights is not None and name not in weights:
            raise KeyError(f"no loss weight for task '{name}' (weights given for {sorted(weights)})")
        weight = 1.0 if weights is None else float(weights[name])
        loss = task.loss(outputs[name], batch, labeled)
        values[name] = loss.item()
        total = weight * loss if total is None else total + weight * loss
    for name, term in (outputs.get(AUX_OUTPUTS) or {}).items():
        term_task = getattr(term, "task", None)
        if present is not None and term_task is not None:
            if term_task not in present:
                continue
            loss = term.loss(batch, required=True)
        else:
            loss = term.loss(batch)
        if loss is None:
            continue
        if aux_values is not None:
            aux_values[name] = loss.item()
        total = term.weight * loss if total is None else total + term.weight * loss
    if total is None:
        total = torch.zeros(())
    return total, values
