"""Backbones: multi-scale feature extractors, loaded from converted files.

An ``arch`` names a backbone family and a model of it: ``"<family>:<name>"`` where ``<family>`` is
registered in ``BACKBONE_FAMILIES``, anything else is a timm model name:

* ``resnet18``, ``resnet50``, ... -> timm with ``features_only`` outputs (family ``timm``);
* ``clip:RN50``, ``clip:mtwork-tiny-clip`` -> the open_clip ModifiedResNet image tower
  (family ``clip``, ``mtwork.models.clip_backbone``; open_clip is imported only when used);
* ``swin:swinv2_base_window12_192``, ``swin:mtwork_swinv2_tiny`` -> timm's Swin-V2 with timm's keys
  (family ``swin``, ``mtwork.models.swin``); its image size is fixed when the model is built for a run.

Every family returns a module whose forward gives 4 maps (B,C_i,H/s_i,W/s_i), strides 4, 8, 16, 32,
and whose ``feature_info`` answers ``channels()`` and ``reduction()`` as timm's does, and can be run
stage by stage with a hook between stages (``forward_stages``: multi-scale adapters placed between the
stages, ``model.adapter_placement: stages``).

A converted file (written by ``mtwork import-checkpoint``) is a dict
``{"arch": str, "state_dict": {feature-extractor keys: tensors}, "provenance": {...}}``.
This module only *loads* such files; converting upstream formats is ``mtwork.checkpoints``' job.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import timm
import torch
from timm.models._features import FeatureDictNet
from torch import nn

from mtwork.errors import UserError
from mtwork.registry import Registry

# Strides 4, 8, 16, 32: the four scales the FPN neck and the multi-scale adapters use.
OUT_INDICES: Sequence[int] = (1, 2, 3, 4)


class BackboneLoadError(UserError, ValueError):
    """A converted backbone file does not fit the requested architecture."""


#: Backbone families by arch prefix: ``factory(name) -> randomly initialised feature extractor``.
BACKBONE_FAMILIES = Registry("backbone family")
#: The family of an arch without a registered prefix.
DEFAULT_FAMILY = "timm"


@BACKBONE_FAMILIES.register("timm")
def _timm_features(name: str) -> nn.Module:
    return timm.create_model(name, pretrained=False, features_only=True, out_indices=OUT_INDICES)


@BACKBONE_FAMILIES.register("clip")
def _clip_features(name: str) -> nn.Module:
    from mtwork.models.clip_backbone import create_clip_features_model  # imports open_clip

    return create_clip_features_model(name)


@BACKBONE_FAMILIES.register("swin")
def _swin_features(name: str) -> nn.Module:
    from mtwork.models.swin import SwinV2Features

    return SwinV2Features(name)


def split_arch(arch: str) -> Tuple[str, str]:
    """``"clip:RN50"`` -> ("clip", "RN50"); an arch without a registered prefix -> ("timm", arch)
    (so timm's own ``hf-hub:...`` names stay timm names)."""
    prefix, sep, name = arch.partition(":")
    if sep and prefix in BACKBONE_FAMILIES:
        if not name:
            raise ValueError(f"backbone arch '{arch}' names the family '{prefix}' but no model")
        return prefix, name
    return DEFAULT_FAMILY, arch


def create_features_model(arch: str) -> nn.Module:
    """A randomly initialised feature extractor of ``arch`` returning 4 maps (B,C_i,H/s_i,W/s_i)."""
    family, name = split_arch(arch)
    factory: Callable[[str], nn.Module] = BACKBONE_FAMILIES.get(family)
    return factory(name)


def expected_state(arch: str) -> Dict[str, torch.Tensor]:
    """Keys and shapes a converted file must provide for ``arch`` (the feature extractor's keys)."""
    return create_features_model(arch).state_dict()


def backbone_channels(model: nn.Module) -> List[int]:
    return list(model.feature_info.channels())


def backbone_strides(model: nn.Module) -> List[int]:
    return list(model.feature_info.reduction())


#: ``after_stage(i, map (B,C_i,H_i,W_i)) -> map of the same shape``: the hook between backbone stages.
StageHook = Callable[[int, torch.Tensor], torch.Tensor]


def supports_stage_hooks(backbone: nn.Module) -> bool:
    """Whether :func:`forward_stages` can run ``backbone`` stage by stage (timm ``features_only`` models
    built as a module sequence, and mtwork's CLIP and Swin feature models, which define
    ``forward_stages``)."""
    return callable(getattr(backbone, "forward_stages", None)) or isinstance(backbone, FeatureDictNet)


def forward_stages(backbone: nn.Module, image: torch.Tensor, after_stage: StageHook) -> List[torch.Tensor]:
    """image (B,3,H,W) -> the 4 maps, where stage i's output is replaced by ``after_stage(i, output)``
    *before* stage i + 1 consumes it; the returned maps are the hooked ones. With an identity hook this
    is exactly ``backbone(image)``. Raises ``ValueError`` naming the backbone when it cannot be split.
    """
    own = getattr(backbone, "forward_stages", None)
    if callable(own):
        return own(image, after_stage)
    if isinstance(backbone, FeatureDictNet):
        return _feature_net_stages(backbone, image, after_stage)
    raise ValueError(
        f"model.adapter_placement 'stages' needs a backbone that can be run stage by stage; "
        f"{type(backbone).__name__} cannot (timm features_only module sequences, mtwork's CLIP ResNet "
        "and Swin-V2 feature models can)"
    )


def _feature_net_stages(net: FeatureDictNet, image: torch.Tensor, after_stage: StageHook) -> List[torch.Tensor]:
    """timm ``FeatureDictNet``/``FeatureListNet`` (``features_only`` ResNets, ...): its modules in order,
    the hook applied after each module that timm returns a feature from (as timm's ``_collect``, without
    gradient checkpointing)."""
    x = image
    out: List[torch.Tensor] = []
    for name, module in net.items():
        x = module(x)
        if name in net.return_layers:
            if isinstance(x, (tuple, list)):
                raise ValueError(f"adapter placement 'stages': timm module '{name}' returns a "
                                 f"{type(x).__name__}, not one map")
            x = after_stage(len(out), x)
            out.append(x)
    return out


def load_converted(path: str | Path) -> dict:
    """Read a converted backbone file and check its top-level structure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a torch file
        raise BackboneLoadError(f"{path}: cannot be read as a torch file ({exc})") from exc
    for key in ("arch", "state_dict", "provenance"):
        if not isinstance(obj, dict) or key not in obj:
            raise BackboneLoadError(f"{path}: not a converted backbone file (missing key '{key}')")
    return obj


def create_backbone(arch: str, weights: str | Path | None = None) -> nn.Module:
    """Build ``arch`` and, when ``weights`` is given, load a converted file into it strictly."""
    model = create_features_model(arch)
    if weights is None:
        return model
    obj = load_converted(weights)
    if obj["arch"] != arch:
        raise BackboneLoadError(f"{weights}: holds a '{obj['arch']}' backbone, expected '{arch}'")
    missing, unexpected = _compare_keys(model.state_dict(), obj["state_dict"])
    if missing or unexpected:
        raise BackboneLoadError(
            f"{weights}: keys do not match '{arch}': missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    model.load_state_dict(obj["state_dict"], strict=True)
    return model


def _compare_keys(expected: Dict[str, torch.Tensor], given: Dict[str, torch.Tensor]):
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    return missing, unexpected


def set_batchnorm_eval(module: nn.Module) -> None:
    """Put every BatchNorm in eval mode so frozen statistics are not updated by forward passes."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.eval()
