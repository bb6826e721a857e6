"""LoRA on the backbone's convolutions, through ``peft``: a modern parameter-efficient baseline.

Not part of source 1: a baseline beside the multi-scale adapters. Each targeted ``nn.Conv2d`` (by
default the 3x3 ``conv2`` of every residual block) becomes ``y = W x + (alpha / r) * B(A(dropout(x)))``
where the pretrained ``W`` is frozen and only ``A`` and ``B`` train. peft's Conv2d LoRA layer builds

* ``A``: a conv with the base conv's kernel, stride and padding, weight (r, in, k, k), no bias;
* ``B``: a 1x1 conv, weight (out, r, 1, 1), no bias, initialised to zero,

so a targeted conv adds ``r*in*k*k + r*out`` trainable parameters, and at initialisation the wrapped
backbone computes exactly the original function (B = 0).

``apply_lora`` injects the layers *in place* with ``peft.inject_adapter_in_model`` (not
``get_peft_model``, whose ``PeftModel`` wrapper would hide ``feature_info`` and change the forward), so
the backbone stays the same timm ``FeatureListNet``: same forward (image -> list of 4 maps), same
``feature_info``. peft renames a wrapped conv's weight ``<conv>.base_layer.weight``; hooks installed
here map it back, so the state dict keeps the original keys plus ``<conv>.lora_A.default.weight`` and
``<conv>.lora_B.default.weight`` (a converted backbone file still loads into a wrapped backbone, and
``lora_state_dict`` is just the ``lora_`` keys: the adapter of a ResNet-50 is megabytes).

The pretrained backbone is frozen the way the adapt stage freezes it: base weights get no gradient and
every BatchNorm stays in eval mode (running statistics untouched, even under ``model.train()``), since
its statistics belong to the pretrained function that LoRA adapts. Unlike the adapt stage, gradients
flow *through* the backbone (the LoRA factors sit inside it), so its forward must not run under
``torch.no_grad()``.

timm zero-initialises the last BatchNorm scale of every residual block (``zero_init_last``), so on a
*randomly initialised* ResNet-18/34 the default ``conv2`` LoRA feeds a zero scale and gets no gradient.
Pretrained checkpoints have non-zero scales; LoRA on a random frozen backbone is no baseline anyway.

peft is imported only when ``apply_lora`` runs: it pulls in ``transformers`` (seconds of import time)
that no other method needs.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Sequence

import torch
from torch import nn

from mtwork.methods.base import METHODS

#: peft's adapter name; it appears in every LoRA key (``...conv2.lora_A.default.weight``).
ADAPTER_NAME = "default"

#: Named sets of convolutions to adapt (regular expressions fully matching module names of a timm
#: ResNet ``features_only`` backbone). ``conv2`` is the 3x3 conv of both BasicBlock and Bottleneck.
LORA_TARGETS: Dict[str, str] = {
    "conv2": r"layer\d+\.\d+\.conv2",
    "block": r"layer\d+\.\d+\.conv\d",  # every conv of every residual block (1x1 and 3x3)
    "all": r".+",  # every conv: stem, blocks and downsample projections
}


def is_lora_key(name: str) -> bool:
    """True for parameter/state-dict names inside a LoRA layer's own modules (``lora_A``, ``lora_B``, ...)."""
    return any(part.startswith("lora_") for part in name.split("."))


def lora_target_modules(backbone: nn.Module, target: str | Sequence[str] = "conv2") -> List[str]:
    """Names of the ``nn.Conv2d`` modules of ``backbone`` that ``target`` selects.

    ``target`` is a key of ``LORA_TARGETS`` or an explicit list of module names (each must name a
    ``nn.Conv2d``). Raises ``ValueError`` when nothing is selected or a name is not a Conv2d.
    """
    convs = {name: m for name, m in backbone.named_modules() if type(m) is nn.Conv2d}
    if isinstance(target, str):
        if target not in LORA_TARGETS:
            raise ValueError(f"unknown LoRA target '{target}' (known: {', '.join(LORA_TARGETS)}, or a list of conv names)")
        pattern = re.compile(LORA_TARGETS[target])
        names = [name for name in convs if pattern.fullmatch(name)]
    else:
        names = list(target)
        wrong = [name for name in names if name not in convs]
        if wrong:
            raise ValueError(f"LoRA targets that are not nn.Conv2d modules of the backbone: {wrong[:5]}")
    if not names:
        raise ValueError(f"LoRA target {target!r} selects no nn.Conv2d of the backbone")
    for name in names:
        conv = convs[name]
        # peft's A conv copies kernel, stride and padding but not dilation (shapes would not match) and
        # is dense while B takes the groups: refuse instead of computing something else silently.
        if conv.groups != 1 or tuple(conv.dilation) != (1, 1):
            raise ValueError(f"LoRA needs plain convolutions; '{name}' has groups={conv.groups}, dilation={conv.dilation}")
    return names


def apply_lora(
    backbone: nn.Module,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target: str | Sequence[str] = "conv2",
) -> nn.Module:
    """Inject LoRA (rank ``rank``, scaling ``alpha / rank``, dropout on the LoRA input) into the convs
    ``target`` selects (see ``lora_target_modules``), in place, and return ``backbone``.

    Afterwards only LoRA parameters require grad, every BatchNorm is locked in eval mode, and the
    state dict holds the original keys plus ``lora_`` keys. The forward and ``feature_info`` are
    unchanged; at initialisation so is the output.
    """
    if int(rank) != rank or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be > 0, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    if any(is_lora_key(name) for name, _ in backbone.named_parameters()):
        raise ValueError("the backbone already holds LoRA layers")
    names = lora_target_modules(backbone, target)

    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(
        r=int(rank), lora_alpha=alpha, lora_dropout=float(dropout), target_modules=names, bias="none",
        init_lora_weights=True,  # A: kaiming-uniform, B: zeros -> identity at init
    )
    inject_adapter_in_model(config, backbone, adapter_name=ADAPTER_NAME)
    for module in backbone.modules():
        if isinstance(module, LoraLayer):
            module.register_state_dict_post_hook(_drop_base_layer_prefix)
            module.register_load_state_dict_pre_hook(_add_base_layer_prefix)
    mark_only_lora_trainable(backbone)
    lock_batchnorm_eval(backbone)
    return backbone


def mark_only_lora_trainable(module: nn.Module) -> nn.Module:
    """``requires_grad`` True for LoRA parameters, False for all others of ``module``."""
    for name, param in module.named_parameters():
        param.requires_grad_(is_lora_key(name))
    return module


def lora_parameters(module: nn.Module) -> List[nn.Parameter]:
    """The LoRA parameters of ``module`` (for an optimizer group)."""
    return [p for name, p in module.named_parameters() if is_lora_key(name)]


def lora_state_dict(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The ``lora_`` entries of ``module.state_dict()`` (cloned), keyed as in ``module``'s state dict.

    Raises ``ValueError`` when ``module`` holds no LoRA layer, so a misconfigured run cannot save an
    empty adapter.
    """
    state = {k: v.detach().clone() for k, v in module.state_dict().items() if is_lora_key(k)}
    if not state:
        raise ValueError("the module holds no LoRA parameters (was apply_lora called?)")
    return state


def load_lora_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Load LoRA weights saved by ``lora_state_dict`` into ``module`` (keys relative to ``module``).

    Refuses (``ValueError``, nothing loaded) non-LoRA keys, keys ``module`` lacks, mis-shaped tensors
    and, when ``strict``, a state that leaves some of ``module``'s LoRA keys unset.
    """
    own = {k: v for k, v in module.state_dict().items() if is_lora_key(k)}
    if not own:
        raise ValueError("the module holds no LoRA parameters (was apply_lora called?)")
    problems = []
    not_lora = sorted(k for k in state if not is_lora_key(k))
    if not_lora:
        problems.append(f"non-LoRA keys {not_lora[:5]}")
    unexpected = sorted(k for k in state if is_lora_key(k) and k not in own)
    if unexpected:
        problems.append(f"unexpected LoRA keys {unexpected[:5]}")
    missing = sorted(k for k in own if k not in state)
    if strict and missing:
        problems.append(f"missing LoRA keys {missing[:5]}")
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in state if k in own and state[k].shape != own[k].shape]
    if mismatched:
        problems.append(f"shape mismatches (key, given, expected) {mismatched[:5]}")
    if problems:
        raise ValueError(f"cannot load LoRA state ({len(state)} keys): " + "; ".join(problems))
    result = module.load_state_dict(dict(state), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # checked above


@METHODS.register("lora")
def lora(channels: Sequence[int], reduction: int | None = None) -> None:
    """LoRA adds no module between backbone and neck: it lives inside the backbone (``apply_lora``).
    ``reduction`` (the adapters' option) is accepted and unused, as for ``finetune``."""
    return None


# --------------------------------------------------------------------------- frozen BatchNorm


class _EvalOnlyNorm:
    """Mixin for a norm layer that stays in eval mode whatever ``train()`` asks: the frozen
    pretrained statistics are used and never updated."""

    def train(self, mode: bool = True):
        return super().train(False)


_EVAL_ONLY_CLASSES: Dict[type, type] = {}


def _eval_only_class(cls: type) -> type:
    if cls not in _EVAL_ONLY_CLASSES:
        name = f"EvalOnly{cls.__name__}"
        new = type(name, (_EvalOnlyNorm, cls), {"__module__": __name__, "__qualname__": name})
        globals()[name] = new  # importable by name, so a pickled module can be loaded back
        _EVAL_ONLY_CLASSES[cls] = new
    return _EVAL_ONLY_CLASSES[cls]


def lock_batchnorm_eval(module: nn.Module) -> nn.Module:
    """Switch every BatchNorm of ``module`` to an eval-only subclass of its own class (same
    parameters, buffers and state-dict keys; ``isinstance`` checks still hold) and to eval mode."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not isinstance(sub, _EvalOnlyNorm):
            sub.__class__ = _eval_only_class(type(sub))
            sub.eval()
    return module


# --------------------------------------------------------------------------- state-dict key layout

_BASE = "base_layer."


def _drop_base_layer_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """``<conv>.base_layer.weight`` -> ``<conv>.weight``: keep the un-wrapped backbone's keys."""
    for key in [k for k in state_dict if k.startswith(prefix + _BASE)]:
        state_dict[prefix + key[len(prefix) + len(_BASE):]] = state_dict.pop(key)


def _add_base_layer_prefix(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """The inverse on loading: ``<conv>.weight`` -> ``<conv>.base_layer.weight``."""
    for name in module.base_layer.state_dict():
        if prefix + name in state_dict and prefix + _BASE + name not in state_dict:
            state_dict[prefix + _BASE + name] = state_dict.pop(prefix + name)
