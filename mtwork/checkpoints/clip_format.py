"""open_clip CLIP checkpoints -> the CLIP image-tower backbone's state dict (a pure converter).

Upstream layout (open_clip's ``CLIP.state_dict()``, as written by open_clip's training script, by
``mtwork pretrain clip`` and by ``torch.save(model.state_dict())`` of a loaded OpenAI/open_clip model):

* image tower ``visual.*``: for a ResNet tower (RN50, RN101, RN50x4, ..., mtwork-tiny-clip) the stem
  ``visual.conv1..3`` / ``visual.bn1..3``, the stages ``visual.layer1..4.*`` and the attention pool
  ``visual.attnpool.{positional_embedding, q_proj, k_proj, v_proj, c_proj}``;
* text tower ``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.*``,
  ``ln_final.*``, ``text_projection`` (``text.*`` for open_clip's CustomTextCLIP), and ``logit_scale``
  (``logit_bias`` for SigLIP-style models); OpenAI's TorchScript state dicts also carry
  ``input_resolution``, ``context_length`` and ``vocab_size``.

The file may hold the state dict itself or ``{"state_dict": ..., "epoch": ..., "name": ...,
"optimizer": ...}`` (open_clip's training checkpoints), and keys may carry DistributedDataParallel's
``module.`` prefix. (OpenAI's original ``RN50.pt`` is a TorchScript archive, not a pickled dict: load
it once with ``open_clip.create_model("RN50-quickgelu", pretrained="openai")`` and save ``state_dict()``;
its mtwork arch is ``clip:RN50-quickgelu``: OpenAI trained it with QuickGELU.)

Kept: the image tower's trunk, renamed ``visual.X`` -> ``X`` (the key names of
``mtwork.models.clip_backbone.CLIPResNetFeatures``, a subclass of open_clip's ModifiedResNet).
Dropped and listed: the attention pool ``visual.attnpool.*`` (it pools the stride-32 map into one
global embedding that dense tasks do not use, and its positional embedding is tied to one input
size), the whole text tower, ``logit_scale``/``logit_bias`` and every other top-level entry. The text
tower is not lost: the LV-Adapter reads it from the same upstream file (``mtwork.methods.lv_adapter``).

A leaf module: stdlib, torch and ``mtwork.checkpoints.formats``' registry and result types only.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch

from mtwork.checkpoints.formats import CHECKPOINT_FORMATS, CheckpointFormatError, Conversion

VISUAL_PREFIX = "visual."
ATTNPOOL_PREFIX = "visual.attnpool."
DDP_PREFIX = "module."
WRAPPER_KEY = "state_dict"
# A ModifiedResNet tower has this key; a ViT tower has ``visual.class_embedding`` instead.
_RESNET_MARKER = "visual.layer1.0.conv1.weight"
_VIT_MARKERS = ("visual.class_embedding", "visual.trunk.", "visual.transformer.")
# Text-tower keys of open_clip's CLIP (token_embedding ...) or CustomTextCLIP (text.*).
_TEXT_MARKERS = ("token_embedding.weight", "text.")


@CHECKPOINT_FORMATS.register("open_clip")
def convert_open_clip_visual(obj: Any) -> Conversion:
    """Keep the ResNet image-tower trunk of an open_clip CLIP checkpoint (see the module docstring).

    ``obj``: what ``torch.load`` returned for the file. Raises ``CheckpointFormatError`` when it is
    not an open_clip CLIP state dict, or when its image tower is not a ModifiedResNet (ViT towers have
    no multi-scale maps).
    """
    if obj is None:
        raise CheckpointFormatError("format 'open_clip' converts an upstream file, but none was given")
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"'open_clip' checkpoint is a {type(obj).__name__}, expected a dict")
    state, dropped_top, note = _unwrap(obj)
    state, stripped = _strip_ddp(state)
    if stripped:
        note += f", '{DDP_PREFIX}' prefix stripped"
    upstream = {key: (DDP_PREFIX + key if stripped else key) for key in state}

    if not any(k.startswith(VISUAL_PREFIX) for k in state):
        raise CheckpointFormatError(
            f"no image-tower keys ('{VISUAL_PREFIX}*') in the state dict; first keys: {_first(state)}"
        )
    if not any(k == m or k.startswith(m) for k in state for m in _TEXT_MARKERS):
        raise CheckpointFormatError(
            "no text-tower keys ('token_embedding.weight' or 'text.*'): not an open_clip CLIP checkpoint "
            f"(first keys: {_first(state)})"
        )
    if _RESNET_MARKER not in state:
        vit = any(k.startswith(m) for k in state for m in _VIT_MARKERS)
        kind = "a Vision-Transformer" if vit else "not a ModifiedResNet"
        raise CheckpointFormatError(
            f"the image tower is {kind} (no '{_RESNET_MARKER}'): only ResNet CLIP towers "
            "(RN50, RN101, RN50x4, ..., mtwork-tiny-clip) give the multi-scale maps the backbone needs"
        )

    kept: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    n_pool = n_other = 0
    for key, value in state.items():
        if key.startswith(VISUAL_PREFIX) and not key.startswith(ATTNPOOL_PREFIX):
            if not isinstance(value, torch.Tensor):
                raise CheckpointFormatError(f"entry '{upstream[key]}' is a {type(value).__name__}, expected a tensor")
            kept[key[len(VISUAL_PREFIX):]] = value
        else:
            dropped.append(upstream[key])
            if key.startswith(ATTNPOOL_PREFIX):
                n_pool += 1
            else:
                n_other += 1
    note += (
        f"; ModifiedResNet image tower: {len(kept)} trunk keys kept, attention pool dropped "
        f"({n_pool} keys), text tower and logit scale dropped ({n_other} keys)"
    )
    meta = _meta(obj)
    if meta:
        note += f"; {meta}"
    return Conversion(state_dict=kept, dropped=dropped + dropped_top, notes=note)


def _unwrap(obj: Mapping[str, Any]) -> Tuple[Mapping[str, Any], List[str], str]:
    """(state dict, dropped top-level keys, note): under ``"state_dict"`` when that is a dict."""
    inner = obj.get(WRAPPER_KEY)
    if isinstance(inner, Mapping):
        return inner, [k for k in obj if k != WRAPPER_KEY], f"open_clip checkpoint, state dict under '{WRAPPER_KEY}'"
    for key in obj:
        if not isinstance(key, str):
            raise CheckpointFormatError(f"key {key!r} is a {type(key).__name__}, expected str")
    return obj, [], "open_clip checkpoint, bare state dict"


def _strip_ddp(state: Mapping[str, Any]) -> Tuple[Dict[str, Any], bool]:
    if state and all(isinstance(k, str) and k.startswith(DDP_PREFIX) for k in state):
        return {k[len(DDP_PREFIX):]: v for k, v in state.items()}, True
    return dict(state), False


def _meta(obj: Mapping[str, Any]) -> str:
    parts = [f"{key} {obj[key]}" for key in ("name", "epoch") if isinstance(obj.get(key), (str, int))]
    return ", ".join(parts)


def _first(state: Mapping[str, Any], n: int = 5) -> str:
    keys = [str(k) for k in list(state)[:n]]
    return ", ".join(keys) + (" ..." if len(state) > n else "")
