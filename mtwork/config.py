"""params.yaml: loading, ``key=value`` overrides, the paper-scale switch, and validation.

``load_params`` returns the *resolved* parameters as a plain nested dict: when ``scale`` is
"paper", the ``paper:`` block is merged over the defaults. Every leaf is checked against
``SCHEMA``; unknown keys (typos) and wrong types are errors that name the dotted key.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping

import yaml

from mtwork.errors import UserError

SCALES = ("embedded", "paper")
DATASETS = ("synthdrive", "bdd100k")
TASK_NAMES = ("semseg", "drivable", "det")
PARADIGMS = ("single_task", "pretrain_finetune", "pretrain_adapt_finetune", "pretrain_adapt_finetune_lv", "lora")
# Source 2 (ViT adapters on a frozen Swin-V2): dense tasks and the multi-task paradigms of the vit block
# (mtwork.plan.VIT_PARADIGMS holds what each means; a test keeps the two equal).
VIT_TASK_NAMES = ("semseg", "depth", "normals", "edges")
VIT_PARADIGMS = ("full_finetune", "frozen_multiscale_adapter", "vtagml", "vtagml_no_taa", "vtagml_no_tsn",
                 "vtagml_no_troa", "vtagml_uncertainty", "vtagml_dwa")
DEVICES = ("auto", "cpu", "cuda")
# train.amp (mtwork.engine.precision): auto = bf16 on CUDA, none on CPU
AMP_MODES = ("auto", "none", "bf16", "fp16")
# Checkpoint formats that have an embedded pretraining run (mtwork.pretrain.PRETRAINERS; a test keeps
# the two equal, without importing torch here).
EMBEDDED_PRETRAIN_FORMATS = ("byol", "densecl", "dino", "moco", "open_clip", "simclr", "simmim")
CATALOG_KEYS = ("format", "path", "pretrain", "arch")

_num = (int, float)
_opt_str = (str, type(None))


def _list_of(kind, choices=None):
    return ("list", kind, choices)


# The optimisation settings that source 1's `train` and source 2's `vit` blocks both have.
_SCHEDULE: Dict[str, Any] = {
    "batch_size": int,
    "input_size": _list_of(int),
    "lr": _num,
    "weight_decay": _num,
    "warmup_epochs": _num,
    "loss_weights": ("mapping", _num),
    "accum_steps": int,
}

# Leaf spec: a type or tuple of types, or ("list", item_type, choices), or ("choice", values).
SCHEMA: Dict[str, Any] = {
    "scale": ("choice", SCALES),
    "data": {
        "dataset": ("choice", DATASETS),
        "bdd100k_root": _opt_str,
        "source_domain": str,
        "dg_domains": _list_of(str),
        "synthdrive": {
            "seed": int,
            "image_size": _list_of(int),
            "overlap": _num,
            "counts": {"det": {"train": int, "val": int}, "seg": {"train": int, "val": int}},
        },
    },
    "checkpoints": {
        "sources": _list_of(str),
        "catalog": ("mapping", Mapping),  # entries checked in _check_semantics
        "pretrain": {"epochs": int, "batch_size": int, "crop": int},
    },
    "model": {
        "backbone": str,
        "fpn_channels": int,
        "adapter_reduction": int,
        "det": {"score_thresh": _num, "nms_iou": _num, "max_detections": int},
        "lv": {"clip_source": str, "num_context": int, "align_weight": _num},
        "lora": {"rank": int, "alpha": _num, "target": str},
    },
    "train": {
        "tasks": _list_of(str, TASK_NAMES),
        "paradigms": _list_of(str, PARADIGMS),
        "seeds": _list_of(int),
        "epochs": int,
        "adapt_epochs": int,
        **_SCHEDULE,
        "workers": int,
        "device": ("choice", DEVICES),
        "amp": ("choice", AMP_MODES),
        "compile": bool,
        "channels_last": bool,
        "sync_bn": bool,
        "threads": int,
        "keep_epoch_checkpoints": bool,
        "log_steps": bool,
    },
    "evaluate": {"batch_size": int},
    "vit": {
        "enabled": bool,
        "source": str,
        "tasks": _list_of(str, VIT_TASK_NAMES),
        "task_subsets": _list_of(list),
        "paradigms": _list_of(str, VIT_PARADIGMS),
        "seeds": _list_of(int),
        "epochs": int,
        **_SCHEDULE,
        "task_embed_dim": int,
        "adapter_reduction": int,
        "adapted_blocks": (list, type(None)),
        "troa": {"step_size": _num, "every": int, "affinity_momentum": _num},
    },
}


class ParamsError(UserError, ValueError):
    """params.yaml (or an override) is invalid; the message names the dotted key."""


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> Dict[str, Any]:
    """``"train.epochs=3"`` -> ``{"train": {"epochs": 3}}`` (the value is parsed as YAML, like ``dvc exp run -S``)."""
    if "=" not in text:
        raise ParamsError(f"override '{text}' is not of the form key.path=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    node: Dict[str, Any] = {}
    cursor = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return node


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _check(value: Any, spec: Any, key: str) -> None:
    if isinstance(spec, dict):
        if not isinstance(value, Mapping):
            raise ParamsError(f"'{key}' must be a mapping, got {type(value).__name__}")
        for sub in value:
            if sub not in spec:
                raise ParamsError(f"unknown key '{_join(key, sub)}' (known: {', '.join(spec)})")
        for sub, sub_spec in spec.items():
            if sub not in value:
                raise ParamsError(f"missing key '{_join(key, sub)}'")
            _check(value[sub], sub_spec, _join(key, sub))
        return
    if isinstance(spec, tuple) and spec and spec[0] == "choice":
        if value not in spec[1]:
            raise ParamsError(f"'{key}' must be one of {list(spec[1])}, got {value!r}")
        return
    if isinstance(spec, tuple) and spec and spec[0] == "list":
        if not isinstance(value, list):
            raise ParamsError(f"'{key}' must be a list, got {value!r}")
        for i, item in enumerate(value):
            _check(item, spec[1], f"{key}[{i}]")
            if spec[2] is not None and item not in spec[2]:
                raise ParamsError(f"'{key}[{i}]' must be one of {list(spec[2])}, got {item!r}")
        return
    if isinstance(spec, tuple) and spec and spec[0] == "mapping":
        if not isinstance(value, Mapping):
            raise ParamsError(f"'{key}' must be a mapping, got {value!r}")
        for sub, item in value.items():
            _check(item, spec[1], _join(key, sub))
        return
    kinds = spec if isinstance(spec, tuple) else (spec,)
    # bool is an int subclass: do not let `true` pass where a number is expected
    if isinstance(value, bool) and bool not in kinds:
        raise ParamsError(f"'{key}' must be {_kind_names(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ParamsError(f"'{key}' must be {_kind_names(kinds)}, got {value!r}")


def _kind_names(kinds) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


#: Lower bounds of numeric settings: (dotted key, bound, strict). Checked before anything else uses them.
RANGES = (
    ("train.epochs", 1, False), ("train.adapt_epochs", 0, False), ("train.batch_size", 1, False),
    ("train.lr", 0, True), ("train.weight_decay", 0, False), ("train.warmup_epochs", 0, False),
    ("train.accum_steps", 1, False), ("train.workers", 0, False), ("train.threads", 1, False),
    ("evaluate.batch_size", 1, False),
    ("vit.epochs", 1, False), ("vit.batch_size", 1, False), ("vit.lr", 0, True), ("vit.weight_decay", 0, False),
    ("vit.warmup_epochs", 0, False), ("vit.accum_steps", 1, False), ("vit.task_embed_dim", 1, False),
    ("vit.adapter_reduction", 1, False), ("vit.troa.every", 1, False), ("vit.troa.step_size", 0, True),
    ("model.fpn_channels", 1, False), ("model.adapter_reduction", 1, False),
    ("checkpoints.pretrain.epochs", 1, False), ("checkpoints.pretrain.batch_size", 1, False),
    ("checkpoints.pretrain.crop", 1, False), ("data.synthdrive.overlap", 0, False),
)


def _get(p: Mapping[str, Any], dotted: str) -> Any:
    node: Any = p
    for part in dotted.split("."):
        node = node[part]
    return node


def _check_ranges(p: Dict[str, Any]) -> None:
    import math

    for key, bound, strict in RANGES:
        value = _get(p, key)
        if not math.isfinite(value) or (value <= bound if strict else value < bound):
            raise ParamsError(f"'{key}' must be {'>' if strict else '>='} {bound}, got {value!r}")
    for block in ("train", "vit"):
        for task, weight in p[block]["loss_weights"].items():
            if not math.isfinite(weight) or weight < 0:
                raise ParamsError(f"'{block}.loss_weights.{task}' must be >= 0, got {weight!r}")
        if p[block]["accum_steps"] > p[block]["batch_size"]:
            raise ParamsError(f"'{block}.accum_steps' ({p[block]['accum_steps']}) cannot exceed {block}.batch_size "
                              f"({p[block]['batch_size']}): each micro-batch needs at least one sample")
    if not 0 <= p["data"]["synthdrive"]["overlap"] <= 1:
        raise ParamsError(f"'data.synthdrive.overlap' must be in [0, 1], got {p['data']['synthdrive']['overlap']!r}")


def _check_semantics(p: Dict[str, Any]) -> None:
    _check_ranges(p)
    train, ckpt, data = p["train"], p["checkpoints"], p["data"]
    if not 0 <= train["adapt_epochs"] < train["epochs"]:
        raise ParamsError(
            f"'train.adapt_epochs' must be in [0, train.epochs) = [0, {train['epochs']}), got {train['adapt_epochs']}"
        )
    for i, size_key in enumerate(("train.input_size", "data.synthdrive.image_size")):
        section, *rest = size_key.split(".")
        size = p[section]
        for part in rest:
            size = size[part]
        if len(size) != 2 or any(s <= 0 for s in size):
            raise ParamsError(f"'{size_key}' must be [H, W] with positive values, got {size}")
    if any(s % 32 for s in train["input_size"]):
        raise ParamsError(f"'train.input_size' must be multiples of 32 (the backbone's stride), got {train['input_size']}")
    for task in train["loss_weights"]:
        if task not in TASK_NAMES:
            raise ParamsError(f"unknown task 'train.loss_weights.{task}' (known: {', '.join(TASK_NAMES)})")
    for task in train["tasks"]:
        if task not in train["loss_weights"]:
            raise ParamsError(f"missing key 'train.loss_weights.{task}'")
    for name, entry in ckpt["catalog"].items():
        for sub in entry:
            if sub not in CATALOG_KEYS:
                raise ParamsError(f"unknown key 'checkpoints.catalog.{name}.{sub}' (known: {', '.join(CATALOG_KEYS)})")
        if "pretrain" in entry and not isinstance(entry["pretrain"], Mapping):
            raise ParamsError(f"'checkpoints.catalog.{name}.pretrain' must be a mapping of pretraining settings")
        if not isinstance(entry.get("format"), str):
            raise ParamsError(f"'checkpoints.catalog.{name}.format' must be a string, got {entry.get('format')!r}")
        if not isinstance(entry.get("arch", ""), str):
            raise ParamsError(f"'checkpoints.catalog.{name}.arch' must be a string (a timm name or clip:<open_clip name>)")
        if not isinstance(entry.get("path"), _opt_str):
            raise ParamsError(f"'checkpoints.catalog.{name}.path' must be a string or null, got {entry.get('path')!r}")
    for i, source in enumerate(ckpt["sources"]):
        if source not in ckpt["catalog"]:
            raise ParamsError(
                f"'checkpoints.sources[{i}]' = '{source}' is not in checkpoints.catalog "
                f"(known: {', '.join(ckpt['catalog'])})"
            )
        entry = ckpt["catalog"][source]
        if entry["format"] != "random" and not entry.get("path"):
            if entry["format"] not in EMBEDDED_PRETRAIN_FORMATS or "pretrain" not in entry:
                raise ParamsError(
                    f"'checkpoints.catalog.{source}.path' is null: source '{source}' needs its weights file "
                    f"(only formats {', '.join(EMBEDDED_PRETRAIN_FORMATS)} with a `pretrain` block can be made here)"
                )
        if p["scale"] == "paper" and entry["format"] != "random" and not entry.get("path"):
            raise ParamsError(
                f"'checkpoints.catalog.{source}.path' is null: at paper scale every source needs its upstream file"
            )
    clip_source = p["model"]["lv"]["clip_source"]
    if "pretrain_adapt_finetune_lv" in train["paradigms"]:
        if clip_source not in ckpt["catalog"] or ckpt["catalog"][clip_source]["format"] != "open_clip":
            raise ParamsError(f"'model.lv.clip_source' = '{clip_source}' must be a checkpoints.catalog entry of format open_clip")
        if p["scale"] == "paper" and not ckpt["catalog"][clip_source].get("path"):
            raise ParamsError(f"'checkpoints.catalog.{clip_source}.path' is null: at paper scale the LV-Adapter's "
                              "text tower (model.lv.clip_source) needs its open_clip file")
    _check_vit(p)
    if data["dataset"] == "bdd100k" and not data["bdd100k_root"]:
        raise ParamsError("'data.bdd100k_root' is null: the bdd100k dataset needs the folder holding images/ and labels/")


def _check_vit(p: Dict[str, Any]) -> None:
    vit, catalog = p["vit"], p["checkpoints"]["catalog"]
    if not vit["enabled"]:
        return
    source = vit["source"]
    if source not in catalog:
        raise ParamsError(f"'vit.source' = '{source}' is not in checkpoints.catalog (known: {', '.join(catalog)})")
    arch = catalog[source].get("arch", "")
    if not arch.startswith("swin:"):
        raise ParamsError(f"'checkpoints.catalog.{source}.arch' must name a Swin-V2 (swin:<name>) for vit.source, got {arch!r}")
    entry = catalog[source]
    if not entry.get("path") and (entry["format"] not in EMBEDDED_PRETRAIN_FORMATS or "pretrain" not in entry):
        raise ParamsError(f"'checkpoints.catalog.{source}.path' is null and the entry has no embedded pretraining")
    if len(vit["tasks"]) < 2 or len(set(vit["tasks"])) != len(vit["tasks"]):
        raise ParamsError(f"'vit.tasks' must list at least two different tasks, got {vit['tasks']}")
    for i, subset in enumerate(vit["task_subsets"]):
        if len(subset) < 2 or any(t not in vit["tasks"] for t in subset):
            raise ParamsError(f"'vit.task_subsets[{i}]' must list at least two of vit.tasks {vit['tasks']}, got {subset}")
    for task in vit["tasks"]:
        if task not in vit["loss_weights"]:
            raise ParamsError(f"missing key 'vit.loss_weights.{task}'")
    blocks = vit["adapted_blocks"]
    if blocks is not None and (not blocks or not all(
            isinstance(b, list) and len(b) == 2 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in b)
            for b in blocks)):
        raise ParamsError(f"'vit.adapted_blocks' must be null or a non-empty list of [stage, block] index pairs, got {blocks}")
    size = vit["input_size"]
    if len(size) != 2 or any(s <= 0 or s % 32 for s in size):
        raise ParamsError(f"'vit.input_size' must be [H, W], multiples of 32 (the Swin's stride), got {size}")


def resolve(raw: Mapping[str, Any], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Apply overrides, merge the paper block when scale is paper, and validate."""
    params = copy.deepcopy(dict(raw))
    for text in overrides:
        params = deep_merge(params, parse_override(text))
    paper = params.pop("paper", {}) or {}
    if params.get("scale") == "paper":
        params = deep_merge(params, paper)
    _check(params, SCHEMA, "")
    _check_semantics(params)
    return params


def load_params(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> Dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"parameter file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{path}: the top level must be a mapping")
    try:
        return resolve(raw, overrides)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
