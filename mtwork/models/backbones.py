"""Backbones: timm models with multi-scale ``features_only`` outputs, loaded from converted files.

A converted file (written by ``mtwork import-checkpoint``) is a dict
``{"arch": str, "state_dict": {timm feature-extractor keys: tensors}, "provenance": {...}}``.
This module only *loads* such files; converting upstream formats is ``mtwork.checkpoints``' job.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import timm
import torch
from torch import nn

# Strides 4, 8, 16, 32: the four scales the FPN neck and the multi-scale adapters use.
OUT_INDICES: Sequence[int] = (1, 2, 3, 4)


class BackboneLoadError(ValueError):
    """A converted backbone file does not fit the requested architecture."""


def create_features_model(arch: str) -> nn.Module:
    """A randomly initialised timm feature extractor returning 4 maps (B,C_i,H/s_i,W/s_i)."""
    return timm.create_model(arch, pretrained=False, features_only=True, out_indices=OUT_INDICES)


def expected_state(arch: str) -> Dict[str, torch.Tensor]:
    """Keys and shapes a converted file must provide for ``arch`` (the timm feature-extractor keys)."""
    return create_features_model(arch).state_dict()


def backbone_channels(model: nn.Module) -> List[int]:
    return list(model.feature_info.channels())


def backbone_strides(model: nn.Module) -> List[int]:
    return list(model.feature_info.reduction())


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
