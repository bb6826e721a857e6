"""The open_clip image tower (ModifiedResNet) as a multi-scale backbone, and the embedded tiny CLIP.

open_clip's ``ModifiedResNet`` (the image tower of CLIP RN50/RN101/RN50x4...) is not a timm ResNet:
a 3-conv stem with an average pool, anti-aliased strided blocks (an average pool before strided
convs) and an attention pool instead of global average pooling. ``CLIPResNetFeatures`` keeps
open_clip's own module (so its key names are exactly the checkpoint's ``visual.*`` names without the
prefix) and returns the outputs of ``layer1..layer4``: 4 maps (B,C_i,H/s_i,W/s_i) with
C = width * (4, 8, 16, 32) and strides (4, 8, 16, 32).

The attention pool (``visual.attnpool.*``) is **not** part of the backbone: it pools the stride-32
map into one global embedding, which dense tasks do not use, and its positional embedding is tied to
one square input size. The converter (``mtwork.checkpoints.clip_format``) drops it and reports it.

Input normalisation: mtwork batches are normalised with ImageNet mean/std; CLIP was trained with
OpenAI's mean/std. The backbone maps one to the other with a fixed per-channel affine map (exact,
not learned), so a CLIP checkpoint sees the statistics it was trained on.

Model names are open_clip's plus the embedded tiny config ``MTWORK_TINY_CLIP_NAME``, registered through
``open_clip.add_model_config`` on first use. Published CLIP ResNet weights (OpenAI's RN50, RN101, ...)
were trained with QuickGELU: their configs are ``RN50-quickgelu`` etc.; ``create_clip_model`` refuses
weights for the GELU-config names (``mtwork.checkpoints.catalog.quickgelu_config_for``). The activation
only acts in the text tower, so the image backbone is the same either way.
Vision-Transformer CLIP towers have no multi-scale maps and are refused with a clear error.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Sequence

import open_clip
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.modified_resnet import ModifiedResNet
from torch import nn

from mtwork.checkpoints.catalog import quickgelu_config_for
from mtwork.data.batch import IMAGENET_MEAN, IMAGENET_STD

#: The embedded CLIP (trained on SynthDrive by ``mtwork.pretrain.clip``), 128x128 input.
MTWORK_TINY_CLIP_NAME = "mtwork-tiny-clip"
#: Its open_clip configuration: a ModifiedResNet image tower (``layers`` a list of 4 selects it) of
#: width 32 (maps of 128/256/512/1024 channels) and a 3-layer, 64-wide text transformer.
#: About 5.3 M image-tower parameters (3.3 M of them in the attention pool, which the backbone
#: drops) and 3.3 M text parameters (3.2 M of them the 49408-token embedding table).
MTWORK_TINY_CLIP_CONFIG: Dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 128, "layers": [1, 1, 1, 1], "width": 32, "head_width": 64},
    "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
# "mtwork-tiny-clip" (128 px) or "mtwork-tiny-clip-<N>" (the same model at N px: the attention
# pool's positional embedding depends on the input size, so each size is its own open_clip config).
_TINY_NAME = re.compile(re.escape(MTWORK_TINY_CLIP_NAME) + r"(?:-(\d+))?$")
_REGISTERED: set[str] = set()


def tiny_clip_name(image_size: int | None = None) -> str:
    """The open_clip model name of the tiny CLIP at ``image_size`` px (None: the default 128)."""
    default = MTWORK_TINY_CLIP_CONFIG["vision_cfg"]["image_size"]
    if image_size is None or int(image_size) == default:
        return MTWORK_TINY_CLIP_NAME
    if int(image_size) < 32 or int(image_size) % 32:
        raise ValueError(f"tiny CLIP image_size must be a positive multiple of 32, got {image_size}")
    return f"{MTWORK_TINY_CLIP_NAME}-{int(image_size)}"


def register_tiny_clip(name: str = MTWORK_TINY_CLIP_NAME) -> str:
    """Register the tiny CLIP config ``name`` with open_clip (idempotent) and return the name.

    open_clip reads configs from JSON files, so the config is written to a temporary file, added with
    ``open_clip.add_model_config`` (which parses it at once) and the file is removed again.
    """
    match = _TINY_NAME.match(name)
    if match is None:
        raise KeyError(f"'{name}' is not a tiny CLIP name ({MTWORK_TINY_CLIP_NAME}[-<image size>])")
    if name in _REGISTERED and open_clip.get_model_config(name) is not None:
        return name
    config = json.loads(json.dumps(MTWORK_TINY_CLIP_CONFIG))  # a deep copy
    if match.group(1) is not None:
        config["vision_cfg"]["image_size"] = int(match.group(1))
    with tempfile.TemporaryDirectory(prefix="mtwork-open-clip-") as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)
    _REGISTERED.add(name)
    return name


def clip_model_config(name: str) -> Dict[str, Any]:
    """open_clip's config dict of model ``name`` (registering the tiny config when named)."""
    if _TINY_NAME.match(name):
        register_tiny_clip(name)
    config = open_clip.get_model_config(name)
    if config is None:  # RuntimeError as timm's "Unknown model", which the importer reports
        raise RuntimeError(
            f"unknown open_clip model '{name}' (e.g. {MTWORK_TINY_CLIP_NAME}, RN50-quickgelu, RN101-quickgelu; "
            "see open_clip.list_models())"
        )
    return config


def create_clip_model(name: str, pretrained: str | Path | None = None) -> nn.Module:
    """``open_clip.create_model(name, pretrained=...)`` after registering the tiny config if named.

    ``pretrained``: an open_clip checkpoint file (a state dict, or ``{"state_dict": ...}``, keys
    possibly prefixed ``module.``) or one of open_clip's tags; None: random initialisation.
    Weights for a GELU config whose published weights all need QuickGELU (``RN50`` and the other
    ResNet towers) are refused, naming the config to use (``RN50-quickgelu``).
    """
    clip_model_config(name)  # registers / validates the name
    wanted = quickgelu_config_for(name)
    if pretrained is not None and wanted is not None:
        raise ValueError(
            f"open_clip model '{name}' with weights {pretrained}: every published {name} CLIP weight (OpenAI's, "
            f"open_clip's yfcc15m/cc12m) was trained with QuickGELU, but open_clip's '{name}' config builds GELU, "
            f"which silently changes every text embedding: use '{wanted}' (arch clip:{wanted})"
        )
    if pretrained is not None and str(pretrained) not in open_clip.list_pretrained_tags_by_model(name):
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"CLIP checkpoint not found: {pretrained}")
    return open_clip.create_model(name, pretrained=None if pretrained is None else str(pretrained))


def clip_tokenizer(name: str):
    """open_clip's tokenizer for model ``name`` (works offline for the BPE tokenizer of CLIP)."""
    clip_model_config(name)
    return open_clip.get_tokenizer(name)


class FeatureInfo:
    """The part of timm's ``feature_info`` mtwork reads: per-map channels and reductions (strides)."""

    def __init__(self, channels: Sequence[int], reductions: Sequence[int], modules: Sequence[str]):
        self._channels, self._reductions, self._modules = list(channels), list(reductions), list(modules)

    def channels(self) -> List[int]:
        return list(self._channels)

    def reduction(self) -> List[int]:
        return list(self._reductions)

    def module_name(self) -> List[str]:
        return list(self._modules)

    def __len__(self) -> int:
        return len(self._channels)


class CLIPResNetFeatures(ModifiedResNet):
    """open_clip's ModifiedResNet trunk without its attention pool.

    forward(image (B,3,H,W) normalised with ImageNet mean/std) -> [layer1, layer2, layer3, layer4]
    outputs, (B, width*4*2^i, H/2^(i+2), W/2^(i+2)) for i = 0..3.

    Args:
        layers: blocks per stage (e.g. RN50: [3, 4, 6, 3]).
        width: stem width (RN50: 64); stage i has width*4*2^i output channels.
        input_mean, input_std: the normalisation of the incoming images (default ImageNet);
            they are mapped to OpenAI's CLIP normalisation before the stem.
    A subclass of open_clip's module, so the state-dict keys are exactly open_clip's ``visual.*``
    keys without the prefix, less ``attnpool.*``.
    """

    def __init__(self, layers: Sequence[int], width: int = 64,
                 input_mean: Sequence[float] = IMAGENET_MEAN, input_std: Sequence[float] = IMAGENET_STD):
        if len(layers) != 4:
            raise ValueError(f"a ModifiedResNet has 4 stages, got layers={list(layers)}")
        # The smallest attention pool (1x1 grid, 1 head) is built by the parent and dropped at once.
        super().__init__(list(layers), output_dim=1, heads=1, image_size=32, width=width)
        self.attnpool = None  # pooled global embedding: not used for dense features (see module doc)
        in_mean, in_std = torch.tensor(input_mean), torch.tensor(input_std)
        clip_mean, clip_std = torch.tensor(OPENAI_DATASET_MEAN), torch.tensor(OPENAI_DATASET_STD)
        # x_clip = (x_in * std_in + mean_in - mean_clip) / std_clip; buffers not saved (derived)
        self.register_buffer("input_scale", (in_std / clip_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((in_mean - clip_mean) / clip_std).view(1, 3, 1, 1), persistent=False)
        channels = [width * 4 * 2**i for i in range(4)]
        self.feature_info = FeatureInfo(channels, [4, 8, 16, 32], [f"layer{i}" for i in range(1, 5)])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:  # type: ignore[override]
        return self.forward_stages(x)

    def forward_stages(self, x: torch.Tensor, after_stage=None) -> List[torch.Tensor]:
        """As ``forward``; ``after_stage(i, map)`` (optional) replaces stage i's output before stage i + 1
        consumes it (``mtwork.models.backbones.forward_stages``)."""
        x = self.stem(x * self.input_scale.to(x.dtype) + self.input_shift.to(x.dtype))
        out = []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            if after_stage is not None:
                x = after_stage(i, x)
            out.append(x)
        return out


def create_clip_features_model(name: str) -> CLIPResNetFeatures:
    """A randomly initialised ``CLIPResNetFeatures`` with the image-tower shape of open_clip ``name``."""
    config = clip_model_config(name)
    vision = config["vision_cfg"]
    layers = vision.get("layers")
    if not isinstance(layers, (list, tuple)) or vision.get("timm_model_name"):
        raise RuntimeError(
            f"open_clip model '{name}' has no ModifiedResNet image tower (vision layers={layers!r}): "
            "only ResNet CLIP towers (RN50, RN101, RN50x4, ..., mtwork-tiny-clip) give multi-scale maps"
        )
    return CLIPResNetFeatures(layers, width=int(vision.get("width", 64)))



# Registered at import, as timm registers its models: after ``import mtwork.pretrain.clip`` (or this
# module) ``open_clip.create_model(MTWORK_TINY_CLIP_NAME, pretrained=<file>)`` works directly.
register_tiny_clip()
