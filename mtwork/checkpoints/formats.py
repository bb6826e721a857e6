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
upstream-file builder to ``tests/unit/test_checkpoint_formats.py`` (a test fails until you do). A file
that holds the encoder to import among other things (heads, momentum encoders, queues) is described by a
``_Layout`` (wrapper key, key prefix, head names) and converted by ``_convert_layouts``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from mtwork.errors import UserError
from mtwork.registry import Registry

CHECKPOINT_FORMATS = Registry("checkpoint format")

# DistributedDataParallel saves every key under this prefix; single-process saves do not.
DDP_PREFIX = "module."
# The ImageNet classifier of torchvision/timm ResNets (and MoCo's projection head, which replaces it).
CLASSIFIER_PREFIX = "fc."


class CheckpointFormatError(UserError, ValueError):
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


# Where upstream training scripts record the network they trained, looked up in this order: a top-level
# ``arch`` (facebookresearch/moco v1/v2 and moco-v3 ``main_moco.py``, DetCo, timm's ``train.py``, mtwork's
# embedded pretraining), the saved argparse namespace of DINO (``args.arch``) and PixPro (``opt.arch``),
# and torchvision's ``references/classification/train.py`` (``args.model``). Only these documented
# fields count: a name elsewhere in a file (an experiment name, a config path) is no declaration.
ARCH_FIELDS: Tuple[Tuple[str, ...], ...] = (("arch",), ("args", "arch"), ("opt", "arch"), ("args", "model"))


def declared_arch(obj: Any) -> Tuple[Optional[str], Optional[str]]:
    """(architecture name, field) that an upstream file declares, e.g. ``("resnet50", "arch")`` for a
    MoCo checkpoint or ``("resnet50", "args.arch")`` for DINO's; ``(None, None)`` when it declares none.

    The name is the upstream's own (torchvision/timm model names for every layout above)."""
    if not isinstance(obj, Mapping):
        return None, None
    for path in ARCH_FIELDS:
        node: Any = obj
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else getattr(node, part, None)
        if isinstance(node, str) and node:
            return node, ".".join(path)
    return None, None


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


# --------------------------------------------------------------------------- encoder layouts
#
# Self-supervised releases differ only in where the encoder to import sits (a wrapper key, a key prefix,
# sometimes other module names) and in what else the file holds (heads, momentum encoders, queues,
# optimizer state). One ``_Layout`` describes each; ``_convert_layouts`` finds the one that applies,
# keeps its encoder and lists everything else as dropped.

# A ResNet trunk key: the stem (``conv1``/``bn1``, also timm's deep stem ``conv1.N``) or a stage
# (``layer1`` ...). Every other name beside the trunk is a head (classifier, projector, prototypes).
_TRUNK_KEY = re.compile(r"(conv1|bn1|layer\d+)\.")
# How many keys a refusal message shows.
_SHOW = 6
# ``_Layout.heads`` value: every name under the prefix that is not a trunk key is a head.
_ALL_BUT_TRUNK = None


@dataclass(frozen=True)
class _Layout:
    """Where one upstream layout keeps the encoder that is imported.

    ``wrapper``: the top-level key holding the state dict (None: the loaded object is the state dict).
    ``prefixes``: candidate prefixes of the kept encoder's keys, tried in order, each first behind
    DistributedDataParallel's ``module.`` when ``ddp``; the first with ResNet trunk keys under it is used.
    ``heads``: names under the prefix that are dropped (prefix match), or ``_ALL_BUT_TRUNK``.
    ``markers``: some key (``module.`` removed) must start with one of these; they tell the layout apart
    from look-alikes (a DenseCL file also has ``backbone.*``, but no ``target_net.*`` as BYOL has).
    ``required``: top-level keys that must be present besides ``wrapper``; ``alone``: nothing else may be.
    ``rename``: maps every upstream key to its torchvision name, or to None when it has none.
    ``name`` starts the conversion notes; ``expected`` describes the layout in refusals.
    """

    name: str
    expected: str
    wrapper: Optional[str]
    prefixes: Tuple[str, ...] = ("",)
    heads: Optional[Tuple[str, ...]] = (CLASSIFIER_PREFIX,)
    markers: Tuple[str, ...] = ()
    required: Tuple[str, ...] = ()
    alone: bool = False
    ddp: bool = True
    rename: Optional[Callable[[Mapping[str, torch.Tensor]], Dict[str, Optional[str]]]] = None

    def applies(self, obj: Mapping[str, Any]) -> bool:
        if self.wrapper is not None and not isinstance(obj.get(self.wrapper), Mapping):
            return False
        return all(key in obj for key in self.required)

    def candidates(self) -> List[str]:
        return [c for p in self.prefixes for c in ((DDP_PREFIX + p, p) if self.ddp else (p,))]

    def is_head(self, name: str) -> bool:
        if self.heads is _ALL_BUT_TRUNK:
            return not _TRUNK_KEY.match(name)
        return name.startswith(self.heads)


def _convert_layouts(obj: Any, fmt: str, *layouts: _Layout) -> Conversion:
    """Convert ``obj`` with the first of ``layouts`` whose wrapper (and required keys) it has; refuse it
    (naming its top-level keys) when none applies or the one that applies does not hold its encoder."""
    _require_object(obj, fmt)
    expected = " or ".join(layout.expected for layout in layouts)
    if isinstance(obj, Mapping):
        for layout in layouts:
            if layout.applies(obj):
                return _convert_layout(obj, layout, expected)
    raise _refusal(obj, expected)


def _convert_layout(obj: Mapping[str, Any], layout: _Layout, expected: str) -> Conversion:
    """Keep ``layout``'s encoder from ``obj``; refusals say ``expected`` (every layout of the format)."""
    state = obj if layout.wrapper is None else obj[layout.wrapper]
    others = [] if layout.wrapper is None else [k for k in obj if k != layout.wrapper]
    if layout.alone and others:
        raise _refusal(obj, expected, why=f"only '{layout.wrapper}' belongs at the top level")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise _refusal(obj, expected, state, f"entry {key!r} is a {type(value).__name__}, not a tensor")

    names = layout.rename(state) if layout.rename else {key: key for key in state}
    unknown = [key for key, name in names.items() if name is None]
    if unknown:
        raise _refusal(obj, expected, state, f"{len(unknown)} keys have no torchvision ResNet name: "
                       f"{_first(unknown)}")
    prefix = next((c for c in layout.candidates() if any(
        n.startswith(c) and _TRUNK_KEY.match(n[len(c):]) for n in names.values())), None)
    if prefix is None:
        raise _refusal(obj, expected, state, "no ResNet keys under " +
                       " or ".join(f"'{c}*'" for c in layout.candidates()))
    if layout.markers and not any(_strip(n, DDP_PREFIX).startswith(layout.markers) for n in names.values()):
        raise _refusal(obj, expected, state, "no " + " or ".join(f"'{m}*'" for m in layout.markers) + " keys")

    kept: Dict[str, torch.Tensor] = {}
    dropped: List[str] = []
    for key, value in state.items():
        name = names[key]
        inner = name[len(prefix):] if name.startswith(prefix) else None
        if inner is None or layout.is_head(inner):
            dropped.append(key)  # as named in the file
        else:
            kept[inner] = value
    where = f"encoder '{prefix}*'" if prefix else "encoder at the top level"
    meta = _meta(obj)
    return Conversion(state_dict=kept, dropped=dropped + others,
                      notes=f"{layout.name}{f' ({meta})' if meta else ''}; {where}")


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def _meta(obj: Mapping[str, Any]) -> str:
    """``arch=..., epoch=...`` from the top level or an OpenMMLab ``meta`` entry, for the notes."""
    found = {}
    for source in (obj, obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}):
        for key in ("arch", "epoch"):
            if isinstance(source.get(key), (str, int)) and key not in found:
                found[key] = source[key]
    return ", ".join(f"{k}={v}" for k, v in found.items())


def _first(keys) -> str:
    keys = [str(k) for k in keys]
    more = f" ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{keys[:_SHOW]}{more}"


def _refusal(obj: Any, expected: str, state: Optional[Mapping] = None, why: str = "") -> CheckpointFormatError:
    """The error for an object that is not the layout: what was expected, why not, and the file's keys."""
    parts = [f"expected {expected}"] + ([why] if why else [])
    if isinstance(obj, Mapping):
        parts.append(f"the file's top-level keys are {_first(obj)}")
        if state is not None and state is not obj:
            parts.append(f"its state dict starts with {_first(state)}")
    else:
        parts.append(f"the file holds a {type(obj).__name__}, not a dict")
    return CheckpointFormatError("; ".join(parts))


# Separius/SimCLRv2-Pytorch ``resnet.py`` module names (see ``_convert_simclr``).
_SEPARIUS_STEM_BN = re.compile(r"net\.0\.1\.0\.(\w+)$")
_SEPARIUS_SHORTCUT = re.compile(r"net\.(\d+)\.blocks\.(\d+)\.projection\.(?:shortcut\.(weight)|bn\.0\.(\w+))$")
_SEPARIUS_BRANCH = re.compile(r"net\.(\d+)\.blocks\.(\d+)\.net\.(\d+)\.(?:(weight)|0\.(\w+))$")


def _separius_names(state: Mapping[str, torch.Tensor]) -> Dict[str, Optional[str]]:
    """Separius names -> torchvision names; None for keys without one (selective kernels, SK stem)."""
    return {key: _separius_name(key) for key in state}


def _separius_name(key: str) -> Optional[str]:
    if key == "net.0.0.weight":
        return "conv1.weight"
    if key.startswith(CLASSIFIER_PREFIX):
        return key
    if match := _SEPARIUS_STEM_BN.match(key):
        return f"bn1.{match[1]}"
    if match := _SEPARIUS_SHORTCUT.match(key):
        stage, block, conv, bn = match.groups()
        return f"layer{stage}.{block}.downsample." + ("0.weight" if conv else f"1.{bn}")
    if match := _SEPARIUS_BRANCH.match(key):
        stage, block, op, conv, bn = match.groups()
        # The residual branch is [conv, BN+ReLU, conv, BN+ReLU, conv, BN]: even ops are convs, odd ops BNs.
        number, is_conv = int(op) // 2 + 1, int(op) % 2 == 0
        if is_conv and conv:
            return f"layer{stage}.{block}.conv{number}.weight"
        if not is_conv and bn:
            return f"layer{stage}.{block}.bn{number}.{bn}"
    return None


# --------------------------------------------------------------------------- converters


_MOCO = _Layout(
    name="MoCo checkpoint",
    expected="a MoCo v1/v2 checkpoint: 'state_dict' with 'module.encoder_q.*' keys",
    wrapper="state_dict",
    prefixes=("encoder_q.",),
)
_MOCO_BARE = replace(_MOCO, name="bare MoCo state dict", wrapper=None,
                     expected="a bare MoCo state dict with 'module.encoder_q.*' keys")


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
    conversion = _convert_layouts(obj, "moco", _MOCO, _MOCO_BARE)
    head = [k for k in conversion.dropped if "encoder_q.fc." in k]
    kind = "v2 MLP head" if any(".fc.0." in k for k in head) else ("v1 linear head" if head else "no head")
    conversion.notes += f"; {kind}"
    return conversion


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

    timm Swin-V2 (``SwinTransformerV2.state_dict()``, keys ``patch_embed.*``, ``layers.{i}.blocks.{j}.*``,
    ``layers.{i}.downsample.*``, ``norm.*``) goes through the same path: its classifier ``head.*`` is
    dropped, and so are the buffers the model recomputes from its window size and input size
    (``relative_position_index``, ``relative_coords_table``, ``attn_mask``), which older timm versions
    saved.
    """
    conversion = _plain_resnet(obj, "timm", wrappers=("state_dict", "model"))
    kept = {k: v for k, v in conversion.state_dict.items()
            if not (k.startswith(TIMM_HEAD_PREFIX) or k.rsplit(".", 1)[-1] in SWIN_DERIVED_BUFFERS)}
    dropped = [k for k in conversion.state_dict if k not in kept]
    return Conversion(state_dict=kept, dropped=list(conversion.dropped) + dropped, notes=conversion.notes)


@CHECKPOINT_FORMATS.register("simmim")
def _convert_simmim(obj: Any) -> Conversion:
    """mtwork's SimMIM pretraining file (``mtwork.pretrain.simmim``): ``{"state_dict": timm Swin-V2
    keys, "arch": str, "pretrain": {...}}``. SimMIM's own releases wrap a Microsoft-layout Swin under
    ``model`` with ``encoder.`` keys; the embedded run writes timm's layout instead, so this is the timm
    conversion under the pretrainer's name (a pretrainer's name is the format of what it writes)."""
    return _convert_timm(obj)


#: The classifier of timm's transformer models (``head.fc.*`` in Swin-V2, ``head.*`` in ViT).
TIMM_HEAD_PREFIX = "head."
#: Swin-V2 buffers derived from the window and input size, not learned.
SWIN_DERIVED_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


@CHECKPOINT_FORMATS.register("random")
def _convert_random(obj: Any) -> Conversion:
    """No upstream file: the importer initialises the backbone (timm's init) from its seed.

    Used as the "no pretraining" row of the comparison tables; provenance records the seed.
    """
    if obj is not None:
        raise CheckpointFormatError("format 'random' takes no upstream file (got one)")
    return Conversion(state_dict={}, dropped=[], notes="random initialisation from seed", init_from_seed=True)


# --------------------------------------------------------------------------- self-supervised ResNet releases

_MOCO_V3 = _Layout(
    name="MoCo v3 checkpoint",
    expected="a MoCo v3 checkpoint: 'state_dict' with 'module.base_encoder.*' keys",
    wrapper="state_dict",
    prefixes=("base_encoder.",),
)


@CHECKPOINT_FORMATS.register("moco_v3")
def _convert_moco_v3(obj: Any) -> Conversion:
    """MoCo v3 ResNet checkpoints (``r-50-100ep.pth.tar``, ``r-50-300ep.pth.tar``, ``r-50-1000ep.pth.tar``).

    Written by facebookresearch/moco-v3 ``main_moco.py`` (``save_checkpoint``) around the model of
    ``moco/builder.py`` (``MoCo_ResNet``); ``main_lincls.py`` reads it. Layout::

        {"epoch": int, "arch": "resnet50", "optimizer": LARS state dict, "scaler": GradScaler state dict,
         "state_dict": {
            "module.base_encoder.<resnet keys>"   the encoder trained by the optimizer
            "module.base_encoder.fc.{0,1,3,4}.*"  projector replacing fc: Linear(no bias), BN1d, ReLU,
                                                  Linear(no bias), BN1d(affine=False)
            "module.momentum_encoder.*"           EMA copy of base_encoder, projector included
            "module.predictor.{0,1,3,4}.*"        predictor MLP, same structure as the projector}}

    Kept: ``base_encoder`` minus ``fc.*``, as ``main_lincls.py`` does. Single-process saves (no
    ``module.``) are accepted too.
    """
    return _convert_layouts(obj, "moco_v3", _MOCO_V3)


_SIMCLR_V1 = _Layout(
    name="SimCLR v1 (tonylins/simclr-converter)",
    expected="a SimCLR v1 conversion: {'state_dict': torchvision ResNet keys} and nothing else",
    wrapper="state_dict",
    alone=True,
    ddp=False,
)
_SIMCLR_V2 = _Layout(
    name="SimCLR v2 (Separius/SimCLRv2-Pytorch)",
    expected="a SimCLR v2 conversion: {'resnet': Separius ResNet (sk0) keys, 'head': ...}",
    wrapper="resnet",
    ddp=False,
    rename=_separius_names,
)


@CHECKPOINT_FORMATS.register("simclr")
def _convert_simclr(obj: Any) -> Conversion:
    """SimCLR ResNet-50 weights as converted to PyTorch from the TensorFlow releases of google-research/simclr.

    Google publishes TensorFlow checkpoints only; two community converters are supported:

    * SimCLR v1, tonylins/simclr-converter ``convert.py`` (``resnet50-1x.pth``, ``-2x``, ``-4x``): a
      torchvision-keyed model (its ``resnet_wider.py``, a torchvision ResNet with a width multiplier) with
      the supervised linear head as ``fc``, saved as ``{"state_dict": model.state_dict()}``.
    * SimCLR v2, Separius/SimCLRv2-Pytorch ``convert.py`` (``r50_1x_sk0.pth``, ``_ema`` variants), saved
      as ``{"resnet": ..., "head": ...}`` with the module names of its ``resnet.py``::

        "net.0.0.weight", "net.0.1.0.*"                     stem conv, stem BN      -> conv1, bn1
        "net.{s}.blocks.{i}.net.{0,2,4}.weight"             branch convs            -> layer{s}.{i}.conv{1,2,3}
        "net.{s}.blocks.{i}.net.{1,3,5}.0.*"                branch BNs              -> layer{s}.{i}.bn{1,2,3}
        "net.{s}.blocks.{i}.projection.shortcut.weight"     projection conv         -> layer{s}.{i}.downsample.0
        "net.{s}.blocks.{i}.projection.bn.0.*"              projection BN           -> layer{s}.{i}.downsample.1
        "fc.*"                                              supervised linear head  (dropped)
        "head": ContrastiveHead ``layers.{0,1,3,4,6,7}.*``  projection head         (dropped whole)

      Only selective-kernel-free models (``sk0``) have a torchvision equivalent; ``sk1`` files (SK
      convolutions, deep stem) are refused, naming the keys without a torchvision name.

    ``fc.*`` is dropped from both. Separius's blocks put the stride on the 3x3 convolution and pad as
    torchvision does, so the renamed weights compute the same function (checked in the tests).
    """
    return _convert_layouts(obj, "simclr", _SIMCLR_V2, _SIMCLR_V1)


_BYOL = _Layout(
    name="BYOL (OpenMMLab)",
    expected="an OpenMMLab BYOL checkpoint: 'state_dict' with 'backbone.*' and 'target_net.*' keys",
    wrapper="state_dict",
    prefixes=("backbone.",),
    markers=("target_net.",),
)


@CHECKPOINT_FORMATS.register("byol")
def _convert_byol(obj: Any) -> Conversion:
    """BYOL checkpoints of OpenMMLab's open-mmlab/mmselfsup (and its predecessor OpenSelfSup).

    The model is ``mmselfsup/models/algorithms/byol.py`` (mmselfsup 1.x); the file is what the runner's
    checkpoint hook writes (``epoch_200.pth``); the model-zoo ``byol_resnet50_*.pth`` files are the same
    minus ``optimizer`` (``tools/model_converters/publish_model.py`` removes only that). Layout::

        {"meta": {...}, "optimizer": ..., "message_hub": ..., "param_schedulers": ...,   (1.x; 0.x: meta, optimizer)
         "state_dict": {
            "backbone.<resnet keys>"           online encoder (mmcls ResNet: torchvision key names)
            "neck.fc0.*", "neck.bn0.*", "neck.fc1.*"       online projector (NonLinearNeck)
            "head.predictor.fc0.*", ".bn0.*", ".fc1.*"     predictor (LatentPredictHead)
            "target_net.steps", "target_net.module.0.*", "target_net.module.1.*"   EMA target (CosineEMA)
            (0.x / OpenSelfSup: "online_net.0.*", "online_net.1.*" duplicate backbone and neck,
             the target is "target_net.0.*", "target_net.1.*")}}

    Kept: ``backbone.*``, as mmselfsup's ``tools/model_converters/extract_backbone_weights.py`` does.
    That tool's output (``{"state_dict": bare ResNet keys, "author": "MMSelfSup"}``) imports with format
    ``torchvision``.
    """
    return _convert_layouts(obj, "byol", _BYOL)


_SWAV_HEADS = (CLASSIFIER_PREFIX, "projection_head", "prototypes")
_SWAV_HUB = _Layout(
    name="SwAV state dict",
    expected="a SwAV state dict: 'module.<resnet keys>' with 'module.projection_head.*'/'module.prototypes.*'",
    wrapper=None,
    heads=_SWAV_HEADS,
    markers=("projection_head", "prototypes"),
)
_SWAV_TRAIN = replace(_SWAV_HUB, name="SwAV checkpoint", wrapper="state_dict",
                      expected="a SwAV checkpoint: 'state_dict' with 'module.projection_head.*' keys")


@CHECKPOINT_FORMATS.register("swav")
def _convert_swav(obj: Any) -> Conversion:
    """SwAV ResNet-50 weights of facebookresearch/swav.

    The released files (``swav_800ep_pretrain.pth.tar`` etc., loaded by ``hubconf.py``) are a bare state
    dict of the DDP-wrapped model of ``src/resnet50.py``; ``main_swav.py`` checkpoints
    (``checkpoint.pth.tar``, ``ckp-{epoch}.pth``) wrap the same dict as
    ``{"epoch", "state_dict", "optimizer"[, "amp"]}``. Keys::

        "module.<resnet keys>"                 torchvision names (the extra input padding has no weights)
        "module.projection_head.{0,1,3}.*"     Linear, BN1d, ReLU, Linear (a single Linear if hidden_mlp=0)
        "module.prototypes.weight"             prototypes (``prototypes{i}.weight`` for multi-prototype heads)

    Kept: the ResNet keys, as ``hubconf.py`` and ``eval_linear.py`` do.
    """
    return _convert_layouts(obj, "swav", _SWAV_TRAIN, _SWAV_HUB)


_DINO_TEACHER = _Layout(
    name="DINO checkpoint, teacher",
    expected="a DINO training checkpoint: 'teacher' with 'module.backbone.*' keys",
    wrapper="teacher",
    prefixes=("backbone.",),
)
_DINO_BACKBONE = _Layout(
    name="DINO backbone release",
    expected="the DINO backbone release: a bare torchvision ResNet state dict",
    wrapper=None,
    ddp=False,
)


@CHECKPOINT_FORMATS.register("dino")
def _convert_dino(obj: Any) -> Conversion:
    """DINO ResNet-50 weights of facebookresearch/dino.

    Two published layouts:

    * ``dino_resnet50_pretrain.pth``: the backbone alone, a bare torchvision ResNet state dict (no
      ``fc``: DINO replaces it by an identity); ``hubconf.py`` and ``utils.load_pretrained_weights`` load it.
    * ``dino_resnet50_pretrain_full_checkpoint.pth``, as ``main_dino.py`` saves it::

        {"student": {"module.backbone.<resnet keys>", "module.head.mlp.*", "module.head.last_layer.*"},
         "teacher": same keys (the teacher is DDP-wrapped for BatchNorm models),
         "optimizer", "epoch", "args": argparse.Namespace, "dino_loss": {"center"}[, "fp16_scaler"]}

    From the full checkpoint the *teacher* backbone is kept: the teacher is the network DINO evaluates and
    releases (``load_pretrained_weights`` defaults to ``checkpoint_key="teacher"``); the student, the
    DINO heads and the training state are dropped.
    """
    return _convert_layouts(obj, "dino", _DINO_TEACHER, _DINO_BACKBONE)


_DENSECL_RELEASE = _Layout(
    name="DenseCL extracted backbone",
    expected="the DenseCL release: {'state_dict': torchvision ResNet keys, 'author': 'DenseCL'}",
    wrapper="state_dict",
    required=("author",),
    ddp=False,
)
_DENSECL_TRAIN = _Layout(
    name="DenseCL checkpoint",
    expected="a DenseCL training checkpoint: 'state_dict' with 'backbone.*' and 'encoder_k.*' keys",
    wrapper="state_dict",
    prefixes=("backbone.",),
    markers=("encoder_k.",),
)


@CHECKPOINT_FORMATS.register("densecl")
def _convert_densecl(obj: Any) -> Conversion:
    """DenseCL ResNet weights of WXinlong/DenseCL (OpenSelfSup-based).

    Two layouts:

    * the released models (``densecl_r50_imagenet_200ep.pth``, ``densecl_r50_coco_1600ep.pth``, ...),
      written by ``tools/extract_backbone_weights.py``: ``{"state_dict": <resnet keys>, "author": "DenseCL"}``.
    * training checkpoints (``epoch_200.pth``, mmcv's ``{"meta", "state_dict", "optimizer"}``) of the model
      in ``openselfsup/models/densecl.py``::

        "queue", "queue_ptr", "queue2", "queue2_ptr"        global and dense negative queues
        "encoder_q.0.<resnet keys>"                         query backbone
        "encoder_q.1.mlp.{0,2}.*", "encoder_q.1.mlp2.{0,2}.*"  DenseCLNeck (global MLP, dense 1x1 convs)
        "encoder_k.0.*", "encoder_k.1.*"                    momentum (key) encoder
        "backbone.<resnet keys>"                            the query backbone again (same module)

      Kept: ``backbone.*``, as ``extract_backbone_weights.py`` does.
    """
    return _convert_layouts(obj, "densecl", _DENSECL_RELEASE, _DENSECL_TRAIN)


_PIXPRO = _Layout(
    name="PixPro checkpoint",
    expected="a PixPro checkpoint: 'model' with 'module.encoder.*' keys",
    wrapper="model",
    prefixes=("encoder.",),
)


@CHECKPOINT_FORMATS.register("pixpro")
def _convert_pixpro(obj: Any) -> Conversion:
    """PixPro ResNet-50 checkpoints of zdaxie/PixPro (``ckpt_epoch_{N}.pth``, ``current.pth``, the released
    ``pixpro_base_r50_{100,400}ep_md5_*.pth``).

    Written by ``main_pretrain.py`` (``save_checkpoint``) around ``contrast/models/PixPro.py``::

        {"opt": argparse.Namespace, "optimizer", "scheduler", "epoch"[, "amp"],
         "model": {
            "module.encoder.<resnet keys>"         online encoder (``contrast/resnet.py``, no fc)
            "module.projector.*"                   MLP2d: linear1, bn1, linear2 (1x1 convs)
            "module.encoder_k.*", "module.projector_k.*"   momentum encoder and projector
            "module.value_transform.*"             pixel-propagation transform (1x1 conv or MLP2d)
            "module.projector_instance[_k].*", "module.predictor.*"   instance branch (PixContrast loss)}}

    Kept: ``module.encoder.*``, as ``transfer/detection/convert_pretrain_to_d2.py`` does.
    """
    return _convert_layouts(obj, "pixpro", _PIXPRO)


_DETCO = _Layout(
    name="DetCo checkpoint",
    expected="a MoCo-style DetCo checkpoint: 'state_dict' with 'module.encoder_q.*' keys",
    wrapper="state_dict",
    prefixes=("encoder_q.",),
    heads=_ALL_BUT_TRUNK,
)


@CHECKPOINT_FORMATS.register("detco")
def _convert_detco(obj: Any) -> Conversion:
    """DetCo ResNet-50 checkpoints, MoCo-style (DetCo extends MoCo v2 with global and local heads per stage).

    Unconfirmed upstream layout: xieenze/DetCo has not released its pretraining code (its README:
    "Pretext Task Pretrain: Coming Soon") and its weights (DetCo-200ep, DetCo-200ep-AA) are on Google
    Drive, so the released files' keys could not be read here. Supported is the layout of the public
    MoCo-based implementation shuuchen/DetCo.pytorch (``main_detco.py`` saves facebookresearch/moco's
    checkpoint around ``detco/builder.py`` and ``detco/models.py``)::

        {"epoch", "arch", "optimizer",
         "state_dict": {
            "module.encoder_q.<resnet keys>"                    query encoder
            "module.encoder_q.layers.{0..3}.*"                  the four stages again (same modules)
            "module.encoder_q.global_mlps.{0..3}.mlp.{0,2}.*"   global heads, one per stage
            "module.encoder_q.local_mlps.{0..3}.mlp.{0,2}.*"    local (jigsaw patch) heads, one per stage
            "module.encoder_k.*"                                momentum (key) encoder
            "module.queue" (8, dim, K), "module.queue_ptr"}}

    Because the official head names are unknown, every key under ``encoder_q`` that is not a ResNet trunk
    key (``conv1``, ``bn1``, ``layerN``) is dropped as a head; a file whose trunk keys differ is still
    refused by the importer's key and shape check. A DetCo file holding plain torchvision keys imports
    with format ``torchvision``.
    """
    return _convert_layouts(obj, "detco", _DETCO)


# The CLIP image tower's converter lives in its own module, which registers itself as "open_clip".
# Imported here, last, so the registry is complete whichever of the two modules is imported first
# (a plain import of a module that is still initialising returns it, where a from-import would fail).
import mtwork.checkpoints.clip_format  # noqa: E402,F401
