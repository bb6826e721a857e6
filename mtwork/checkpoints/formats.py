"""Upstream checkpoint formats -> backbone state dicts: one pure converter per published format.

A converter takes the Python object ``torch.load`` returned for an upstream file (``None`` for
formats without a file) and returns a :class:`Conversion`:

* ``state_dict``: ``{key: Tensor}`` in timm/torchvision ResNet key names (``conv1.weight``,
  ``bn1.running_mean``, ``layer1.0.conv1.weight``, ... ``layer4.1.bn2.num_batches_tracked``), with no
  classifier (``fc.*``). These are exactly the keys of timm's ``features_only`` ResNet.
* ``dropped``: every upstream key that was not kept (weights as ``module.encoder_k.conv1.weight``,
  whole top-level entries as ``optimizer``), so the import report can account for every key.
* ``notes``: one human-readable line on what the upstream file was (epoch, arch, wrapper).

Converters never touch files, never build models and never check the result against an
architecture: that is the importer's job (``mtwork.checkpoints.importer``), which refuses partial loads.
This module is a leaf (stdlib, torch, ``mtwork.registry``) so it can be tested on plain dicts.

Adding a format: write ``def _convert_x(obj) -> Conversion`` whose docstring gives the upstream key
layout and where it is published, decorate it with ``@CHECKPOINT_FORMATS.register("x")`` and add an
upstream-file builder to ``tests/unit/test_checkpoint_formats.py`` (a test fails until you do).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

import torch

from mtwork.registry import Registry

CHECKPOINT_FORMATS = Registry("checkpoint format")

# DistributedDataParallel saves every key under this prefix; single-process saves do not.
DDP_PREFIX = "module."
# The ImageNet classifier of torchvision/timm ResNets (and MoCo's projection head, which replaces it).
CLASSIFIER_PREFIX = "fc."


class CheckpointFormatError(ValueError):
    """The loaded object does not have the layout of the format it was declared as."""


@dataclass
class Conversion:
    """Result of one converter (see the module docstring for the meaning of each field).

    ``init_from_seed`` is True only for formats without upstream weights ("random"): the importer
    then initialises the backbone from its seed and ``state_dict`` is empty.
    """

    state_dict: Dict[str, torch.Tensor]
    dropped: List[str] = field(default_factory=list)
    notes: str = ""
    init_from_seed: bool = False


def convert(fmt: str, obj: Any) -> Conversion:
    """Run the converter registered as ``fmt`` on a loaded upstream object."""
    return CHECKPOINT_FORMATS.get(fmt)(obj)


# --------------------------------------------------------------------------- shared helpers


def _require_object(obj: Any, fmt: str) -> None:
    if obj is None:
        raise CheckpointFormatError(f"format '{fmt}' converts an upstream file, but none was given")


def _require_mapping(obj: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{what} is a {type(obj).__name__}, expected a dict")
    return obj


def _check_tensors(state: Mapping[str, Any], what: str) -> None:
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointFormatError(f"{what}: key {key!r} is a {type(key).__name__}, expected str")
        if not isinstance(value, torch.Tensor):
            raise CheckpointFormatError(
                f"{what}: entry '{key}' is a {type(value).__name__}, expected a tensor (not a state dict?)"
            )


def _unwrap(obj: Any, fmt: str, wrappers: Tuple[str, ...]) -> Tuple[Mapping[str, Any], List[str], str]:
    """Find the state dict in ``obj``: under the first present key of ``wrappers``, else ``obj`` itself.

    Returns (state dict, dropped top-level keys, a note naming the wrapper).
    """
    _require_object(obj, fmt)
    obj = _require_mapping(obj, f"'{fmt}' checkpoint")
    for wrapper in wrappers:
        if isinstance(obj.get(wrapper), Mapping):
            others = [k for k in obj if k != wrapper]
            return obj[wrapper], others, f"state dict under '{wrapper}'"
    return obj, [], "bare state dict"


def _strip_common_prefix(state: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    """Strip ``prefix`` when *every* key has it (a DDP save); a partial prefix is left for the checks."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _split_classifier(state: Mapping[str, torch.Tensor], upstream_keys: Mapping[str, str]):
    """Split a backbone+classifier state dict into (kept, dropped upstream keys)."""
    kept: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    for key, value in state.items():
        if key.startswith(CLASSIFIER_PREFIX):
            dropped.append(upstream_keys[key])
        else:
            kept[key] = value
    return kept, dropped


def _plain_resnet(obj: Any, fmt: str, wrappers: Tuple[str, ...]) -> Conversion:
    state, dropped, note = _unwrap(obj, fmt, wrappers)
    _check_tensors(state, f"'{fmt}' state dict")
    stripped = _strip_common_prefix(state, DDP_PREFIX)
    # Remember each stripped key's original name so dropped keys are reported as in the file.
    upstream = dict(zip(stripped, state))
    kept, dropped_weights = _split_classifier(stripped, upstream)
    if list(stripped) != list(state):
        note += f", '{DDP_PREFIX}' prefix stripped"
    return Conversion(state_dict=kept, dropped=dropped_weights + dropped, notes=note)


# --------------------------------------------------------------------------- converters


@CHECKPOINT_FORMATS.register("moco")
def _convert_moco(obj: Any) -> Conversion:
    """MoCo v1/v2 pretraining checkpoints (``checkpoint_%04d.pth.tar``).

    Published by facebookresearch/moco ``main_moco.py`` (``save_checkpoint``) and the released
    ``moco_v1_200ep_pretrain.pth.tar`` / ``moco_v2_800ep_pretrain.pth.tar``; the same layout is what
    ``main_lincls.py`` reads. Layout::

        {"epoch": int, "arch": "resnet50", "optimizer": SGD state dict,
         "state_dict": {
            "module.encoder_q.<resnet keys>"       query encoder (the one that is trained by SGD)
            "module.encoder_q.fc.0.*", "fc.2.*"    v2 MLP head: Linear(d,d), ReLU, Linear(d,dim)
            "module.encoder_q.fc.*"                v1 linear head: Linear(d,dim)
            "module.encoder_k.*"                   momentum (key) encoder
            "module.queue" (dim, K), "module.queue_ptr" (1,)}}

    Kept: the query encoder minus its head, as ``main_lincls.py`` does. Keys without the ``module.``
    prefix (single-process saves) and a bare ``state_dict`` (no wrapper) are accepted too.
    """
    _require_object(obj, "moco")
    obj = _require_mapping(obj, "'moco' checkpoint")
    if isinstance(obj.get("state_dict"), Mapping):
        state, top_dropped = obj["state_dict"], [k for k in obj if k != "state_dict"]
        meta = ", ".join(f"{k}={obj[k]}" for k in ("arch", "epoch") if k in obj)
        note = f"MoCo checkpoint ({meta})" if meta else "MoCo checkpoint"
    else:
        state, top_dropped, note = obj, [], "bare MoCo state dict"
    _check_tensors(state, "'moco' state_dict")

    query = "encoder_q."
    kept: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    for key, value in state.items():
        name = key[len(DDP_PREFIX):] if key.startswith(DDP_PREFIX) else key
        inner = name[len(query):] if name.startswith(query) else None
        if inner is None or inner.startswith(CLASSIFIER_PREFIX):
            dropped.append(key)
        else:
            kept[inner] = value
    if not kept:
        raise CheckpointFormatError(
            f"no query-encoder keys ('{DDP_PREFIX}{query}*' or '{query}*') in the 'moco' state_dict; "
            f"first keys: {list(state)[:5]}"
        )
    head = [k for k in dropped if (query + CLASSIFIER_PREFIX) in k]
    kind = "v2 MLP head" if any(".fc.0." in k for k in head) else ("v1 linear head" if head else "no head")
    return Conversion(state_dict=kept, dropped=dropped + top_dropped, notes=f"{note}; {kind}")


@CHECKPOINT_FORMATS.register("torchvision")
def _convert_torchvision(obj: Any) -> Conversion:
    """A torchvision ResNet state dict (``torchvision.models.resnet*().state_dict()``).

    Layout (torchvision ``models/resnet.py``; the released ``resnet18-f37072fd.pth`` etc.)::

        conv1.weight, bn1.{weight,bias,running_mean,running_var,num_batches_tracked},
        layer{1..4}.{i}.{conv,bn}{1,2[,3]}.*, layer{1..4}.0.downsample.{0,1}.*, fc.{weight,bias}

    Also accepted: the training checkpoint of torchvision's ``references/classification/train.py``
    (``{"model": state dict, "optimizer", "lr_scheduler", "epoch", "args"}``), a ``{"state_dict": ...}``
    wrapper, and ``module.``-prefixed keys. ``fc.*`` is dropped.
    """
    return _plain_resnet(obj, "torchvision", wrappers=("model", "state_dict"))


@CHECKPOINT_FORMATS.register("timm")
def _convert_timm(obj: Any) -> Conversion:
    """A timm ResNet state dict (``timm.create_model("resnet18").state_dict()``).

    Layout (timm ``models/resnet.py``): the torchvision key names for the plain stem; deep-stem
    variants (``resnet10t``, ``*d``) use ``conv1.{0,1,3,4,6}.*`` and ``bn1.*``; the classifier is
    ``fc.{weight,bias}`` (``default_cfg["classifier"] == "fc"``). Also accepted: a timm ``train.py``
    checkpoint (``{"state_dict", "optimizer", "epoch", "arch", "args", "version", ...}``; the non-EMA
    ``state_dict`` is used, as timm's ``load_checkpoint(use_ema=False)`` does) and a ``{"model": ...}``
    wrapper. ``fc.*`` is dropped.
    """
    return _plain_resnet(obj, "timm", wrappers=("state_dict", "model"))


@CHECKPOINT_FORMATS.register("random")
def _convert_random(obj: Any) -> Conversion:
    """No upstream file: the importer initialises the backbone (timm's init) from its seed.

    Used as the "no pretraining" row of the comparison tables; provenance records the seed.
    """
    if obj is not None:
        raise CheckpointFormatError("format 'random' takes no upstream file (got one)")
    return Conversion(state_dict={}, dropped=[], notes="random initialisation from seed", init_from_seed=True)
