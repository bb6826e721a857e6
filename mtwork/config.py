"""params.yaml: loading, ``key=value`` overrides, the paper-scale switch, and validation.

``load_params`` returns the *resolved* parameters as a plain nested dict, in three layers:

1. ``params.yaml`` (as written, e.g. after ``dvc exp run -S`` edited it), without its ``paper:`` block;
2. the ``paper:`` block merged over it, when ``scale`` is "paper" (in the file *or* in an override:
   ``--set scale=paper`` applies the block);
3. the user's overrides (``--set KEY=VALUE``; Snakemake's ``--config``/``--configfile`` values, which
   rules/common.smk turns into ``--set``) merged last, so they win over the paper block too.
   An override of a ``paper.*`` key edits the block itself.

Merging is recursive for mappings; any other value (a list included) replaces the one below it.
Every leaf is checked against ``SCHEMA``; unknown keys (typos) and wrong types are errors that name
the dotted key.

All settings YAML (params files, ``--set`` values, Snakemake's config values) is read with one loader,
``yaml_load``: PyYAML's safe loader (YAML 1.1) plus YAML 1.2's float notation, so ``1e-4``, ``3E5``,
``1.0e12``, ``-2e-3`` and ``.5`` are numbers, as DVC (YAML 1.2) reads them; ``yaml_dump`` writes what
``yaml_load`` reads back unchanged.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping

import yaml

from mtwork.checkpoints.catalog import quickgelu_config_for  # data only (stdlib): no torch imported here
from mtwork.errors import UserError

SCALES = ("embedded", "paper")
#: On-disk formats a dataset can have: the readers of mtwork.data.registry (a test keeps them equal,
#: without importing torch here). Attribute filters (domains) work on the BDD100K format's frames.
DATASET_FORMATS = ("bdd100k", "cityscapes", "vkitti2", "synthia", "taskonomy", "nyuv2")
DATASET_KEYS = ("format", "root", "generate")
DOMAIN_KEYS = ("dataset", "attributes")
ATTRIBUTE_KEYS = ("weather", "timeofday", "scene")
TASK_NAMES = ("semseg", "drivable", "det")
PARADIGMS = ("single_task", "pretrain_finetune", "pretrain_adapt_finetune", "pretrain_adapt_finetune_lv", "lora")
# Source 2 (ViT adapters on a frozen Swin-V2): dense tasks and the multi-task paradigms of the vit block
# (mtwork.plan.VIT_PARADIGMS holds what each means; a test keeps the two equal).
VIT_TASK_NAMES = ("semseg", "depth", "normals", "edges")
VIT_PARADIGMS = ("full_finetune", "frozen_multiscale_adapter", "vtagml", "vtagml_no_taa", "vtagml_no_tsn",
                 "vtagml_no_troa", "vtagml_uncertainty", "vtagml_dwa")
DEVICES = ("auto", "cpu", "cuda")
# Where source 1's multi-scale adapters sit (mtwork.models.multitask.ADAPTER_PLACEMENTS) and what trains in
# source 2's adapted blocks (mtwork.methods.vtagml.ADAPTED_BLOCK_TRAINING); tests keep each pair equal.
ADAPTER_PLACEMENTS = ("outputs", "stages")
ADAPTED_BLOCK_TRAINING = ("frozen", "full")
# Source 2's transfer protocols (mtwork.protocols): the GAN losses of UDA's output-space discriminators
# (mtwork.methods.output_discriminator.GAN_LOSSES; a test keeps the two equal) and the label spaces a
# run's semseg head can have (mtwork.data.label_spaces; a test keeps them equal).
GAN_LOSSES = ("bce", "lsgan")
LABEL_SPACES = ("cityscapes19", "indoor10", "nyuv2_40", "synthetic8", "synthia16", "taskonomy17")
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
        "datasets": ("mapping", Mapping),  # entries checked in _check_data
        "domains": ("mapping", Mapping),
        "source_domain": str,
        "dg_domains": _list_of(str),
        "synthdrive": {
            "domains": _list_of(str),
            "seed": int,
            "image_size": _list_of(int),
            "overlap": _num,
            "min_box_pixels": (int, type(None)),
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
        "adapter_placement": ("choice_or_list", ADAPTER_PLACEMENTS),
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
        "adapted_block_training": ("choice", ADAPTED_BLOCK_TRAINING),
        "troa": {"step_size": _num, "every": int},
        "troa_global": {"step_size": _num, "every": int, "affinity_momentum": _num},
        # source 2's own domains and label space (null: data.source_domain / data.dg_domains / the readers')
        "source_domain": _opt_str,
        "dg_domains": (list, type(None)),
        "label_space": _opt_str,
        "zero_shot": {"enabled": bool, "target_domain": str, "finetune_tasks": _list_of(str, VIT_TASK_NAMES),
                      "paradigms": _list_of(str, VIT_PARADIGMS), "epochs": int, "oracle": bool},
        "uda": {"enabled": bool, "target_domain": str, "tasks": _list_of(str, VIT_TASK_NAMES),
                "paradigms": _list_of(str, VIT_PARADIGMS), "epochs": int, "adversarial_weight": _num,
                "discriminator_lr": _num, "discriminator_width": int, "gan_loss": ("choice", GAN_LOSSES),
                "pseudo_labels": (dict, type(None)), "oracle": bool},
    },
}


class ParamsError(UserError, ValueError):
    """params.yaml (or an override) is invalid; the message names the dotted key."""


# ---- the one YAML dialect of settings -------------------------------------------------------------

# Floats of YAML 1.2's core schema that YAML 1.1 (PyYAML) reads as strings: an exponent without a dot
# or without a sign (1e-4, 3E5, 1.0e12, -2e-3, 1.e5) and a leading-dot number with an unsigned
# exponent (.5e3). Plain integers do not match (they stay ints: the int resolver also runs first).
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|\.[0-9][0-9_]*[eE][-+]?[0-9]+)$")
_FLOAT_TAG = "tag:yaml.org,2002:float"
_FLOAT_FIRST = list("-+0123456789.")


class SettingsLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader plus YAML 1.2 float notation (see ``_FLOAT_12``); nothing else changes."""


class SettingsDumper(yaml.SafeDumper):
    """PyYAML's SafeDumper that quotes every string ``SettingsLoader`` would read as a float."""


SettingsLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_12, _FLOAT_FIRST)
SettingsDumper.add_implicit_resolver(_FLOAT_TAG, _FLOAT_12, _FLOAT_FIRST)


def yaml_load(text_or_stream: Any) -> Any:
    """Settings YAML (a string or an open file) -> Python objects; raises ``yaml.YAMLError``."""
    return yaml.load(text_or_stream, Loader=SettingsLoader)


def yaml_dump(obj: Any) -> str:
    """``obj`` as block-style YAML (lists of scalars in flow style) that ``yaml_load`` reads back equal."""
    return yaml.dump(obj, Dumper=SettingsDumper, sort_keys=False, default_flow_style=None, width=120,
                     allow_unicode=True)


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
    """``"train.epochs=3"`` -> ``{"train": {"epochs": 3}}`` (the value is parsed with ``yaml_load``, like
    ``dvc exp run -S``: ``train.lr=1e-4`` gives the float 0.0001)."""
    if "=" not in text:
        raise ParamsError(f"override '{text}' is not of the form key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ParamsError(f"override '{text}': '{key.strip()}' is not a dotted key path")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ParamsError(f"override '{text}': the value is not valid YAML ({exc})") from None
    node: Dict[str, Any] = {}
    cursor = node
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
    if isinstance(spec, tuple) and spec and spec[0] == "choice_or_list":
        # one value, or a non-empty list of distinct values (the plan makes a run for each)
        values = value if isinstance(value, list) else [value]
        if not values or len(set(map(str, values))) != len(values) or any(v not in spec[1] for v in values):
            raise ParamsError(f"'{key}' must be one of {list(spec[1])} or a list of them, got {value!r}")
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
    ("vit.zero_shot.epochs", 1, False), ("vit.uda.epochs", 1, False), ("vit.uda.adversarial_weight", 0, False),
    ("vit.uda.discriminator_lr", 0, True), ("vit.uda.discriminator_width", 1, False),
    ("model.fpn_channels", 1, False), ("model.adapter_reduction", 1, False),
    ("checkpoints.pretrain.epochs", 1, False), ("checkpoints.pretrain.batch_size", 1, False),
    ("checkpoints.pretrain.crop", 1, False), ("data.synthdrive.overlap", 0, False),
    ("data.synthdrive.min_box_pixels", 1, False),
)
#: Keys of RANGES that may also be null (then unchecked: the reader's default applies).
OPTIONAL_RANGES = frozenset({"data.synthdrive.min_box_pixels"})


def _get(p: Mapping[str, Any], dotted: str) -> Any:
    node: Any = p
    for part in dotted.split("."):
        node = node[part]
    return node


def _check_ranges(p: Dict[str, Any]) -> None:
    import math

    for key, bound, strict in RANGES:
        value = _get(p, key)
        if value is None and key in OPTIONAL_RANGES:
            continue
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
        _check_clip_activation(name, entry.get("arch", ""))
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
    if "pretrain_adapt_finetune_lv" in train["paradigms"] and ckpt["sources"]:  # no source: no source-1 run
        if clip_source not in ckpt["catalog"] or ckpt["catalog"][clip_source]["format"] != "open_clip":
            raise ParamsError(f"'model.lv.clip_source' = '{clip_source}' must be a checkpoints.catalog entry of format open_clip")
        if p["scale"] == "paper" and not ckpt["catalog"][clip_source].get("path"):
            raise ParamsError(f"'checkpoints.catalog.{clip_source}.path' is null: at paper scale the LV-Adapter's "
                              "text tower (model.lv.clip_source) needs its open_clip file")
    _check_vit(p)
    _check_data(data)


def _check_data(data: Mapping[str, Any]) -> None:
    """Datasets (format, root, generate), domains (a dataset + attribute filter) and the domain names used."""
    generated = []
    for name, entry in data["datasets"].items():
        key = f"data.datasets.{name}"
        if not isinstance(entry, Mapping):
            raise ParamsError(f"'{key}' must be a mapping with format, root (and generate), got {entry!r}")
        for sub in entry:
            if sub not in DATASET_KEYS:
                raise ParamsError(f"unknown key '{key}.{sub}' (known: {', '.join(DATASET_KEYS)})")
        if entry.get("format") not in DATASET_FORMATS:
            raise ParamsError(f"'{key}.format' must be one of {list(DATASET_FORMATS)}, got {entry.get('format')!r}")
        if not isinstance(entry.get("root"), _opt_str):
            raise ParamsError(f"'{key}.root' must be a folder (string) or null, got {entry.get('root')!r}")
        if not isinstance(entry.get("generate", False), bool):
            raise ParamsError(f"'{key}.generate' must be true or false, got {entry.get('generate')!r}")
        if entry.get("generate"):
            generated.append(name)
            if entry["format"] != "bdd100k" or entry.get("root"):
                raise ParamsError(f"'{key}': a generated dataset (SynthDrive) has format bdd100k and root null")
    if len(generated) > 1:
        raise ParamsError(f"'data.datasets': only one dataset can be generated (SynthDrive), got {generated}")
    for name, entry in data["domains"].items():
        key = f"data.domains.{name}"
        if not isinstance(entry, Mapping):
            raise ParamsError(f"'{key}' must be a mapping with dataset (and attributes), got {entry!r}")
        for sub in entry:
            if sub not in DOMAIN_KEYS:
                raise ParamsError(f"unknown key '{key}.{sub}' (known: {', '.join(DOMAIN_KEYS)})")
        dataset = entry.get("dataset")
        if dataset not in data["datasets"]:
            raise ParamsError(f"'{key}.dataset' = {dataset!r} is not in data.datasets (known: {', '.join(data['datasets'])})")
        attributes = entry.get("attributes")
        if attributes is None:
            continue
        if data["datasets"][dataset]["format"] != "bdd100k":
            raise ParamsError(f"'{key}.attributes': only datasets of format bdd100k have frame attributes")
        if not isinstance(attributes, Mapping) or not attributes:
            raise ParamsError(f"'{key}.attributes' must be a mapping like {{timeofday: night}}, got {attributes!r}")
        for attr, value in attributes.items():
            if attr not in ATTRIBUTE_KEYS:
                raise ParamsError(f"unknown key '{key}.attributes.{attr}' (known: {', '.join(ATTRIBUTE_KEYS)})")
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str) for v in values):
                raise ParamsError(f"'{key}.attributes.{attr}' must be a value or a list of values, got {value!r}")
    for key, names in (("data.source_domain", [data["source_domain"]]), ("data.dg_domains", data["dg_domains"])):
        for name in names:
            if name not in data["domains"]:
                raise ParamsError(f"'{key}': domain {name!r} is not in data.domains (known: {', '.join(data['domains'])})")
    if data["source_domain"] in data["dg_domains"]:
        raise ParamsError(f"'data.dg_domains' lists the source domain {data['source_domain']!r}: DG evaluates unseen domains")


def _check_clip_activation(name: str, arch: str) -> None:
    """OpenAI's (and open_clip's) CLIP ResNet weights need open_clip's QuickGELU config: refuse the GELU one."""
    family, _, model = arch.partition(":")
    wanted = quickgelu_config_for(model) if family == "clip" else None
    if wanted:
        raise ParamsError(
            f"'checkpoints.catalog.{name}.arch' = '{arch}': every published {model} CLIP weight (OpenAI's, "
            f"open_clip's) was trained with QuickGELU, and open_clip's '{model}' config builds GELU, which "
            f"silently changes the text embeddings: use 'clip:{wanted}'"
        )


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
    _check_vit_protocols(p)


def _check_vit_protocols(p: Dict[str, Any]) -> None:
    """Source 2's domains, label space and transfer protocols (vit.zero_shot, vit.uda): every domain
    known, targets and DG domains other than the source domain, task sets within vit.tasks."""
    vit, domains = p["vit"], p["data"]["domains"]
    source = vit["source_domain"] or p["data"]["source_domain"]
    if vit["source_domain"] is not None and vit["source_domain"] not in domains:
        raise ParamsError(f"'vit.source_domain': domain {vit['source_domain']!r} is not in data.domains "
                          f"(known: {', '.join(domains)})")
    dg = vit["dg_domains"]
    if dg is not None:
        for i, name in enumerate(dg):
            if not isinstance(name, str) or name not in domains:
                raise ParamsError(f"'vit.dg_domains[{i}]': domain {name!r} is not in data.domains (known: {', '.join(domains)})")
    dg = p["data"]["dg_domains"] if dg is None else dg
    if source in dg:
        raise ParamsError(f"'vit.dg_domains' (or data.dg_domains, its default) lists source 2's source domain "
                          f"{source!r}: DG evaluates unseen domains")
    if vit["label_space"] is not None and vit["label_space"] not in LABEL_SPACES:
        raise ParamsError(f"'vit.label_space' must be null or one of {list(LABEL_SPACES)}, got {vit['label_space']!r}")
    for block in ("zero_shot", "uda"):
        key, spec = f"vit.{block}", vit[block]
        if not spec["enabled"] or not spec["paradigms"]:
            continue
        target = spec["target_domain"]
        if "__" in target:  # run ids separate their fields with "__"
            raise ParamsError(f"'{key}.target_domain' = {target!r}: a transfer target's name cannot contain '__'")
        if target not in domains:
            raise ParamsError(f"'{key}.target_domain': domain {target!r} is not in data.domains (known: {', '.join(domains)})")
        if target == source:
            raise ParamsError(f"'{key}.target_domain' is source 2's source domain {source!r}: a transfer needs another domain")
        if len(set(spec["paradigms"])) != len(spec["paradigms"]):
            raise ParamsError(f"'{key}.paradigms' lists a paradigm twice: {spec['paradigms']}")
    zs = vit["zero_shot"]
    if zs["enabled"] and zs["paradigms"]:
        finetune = zs["finetune_tasks"]
        if not finetune or len(set(finetune)) != len(finetune) or any(t not in vit["tasks"] for t in finetune):
            raise ParamsError(f"'vit.zero_shot.finetune_tasks' must list distinct tasks of vit.tasks {vit['tasks']}, got {finetune}")
        if set(finetune) == set(vit["tasks"]):
            raise ParamsError(f"'vit.zero_shot.finetune_tasks' lists every task of vit.tasks: no task would be "
                              "evaluated zero-shot (leave at least one out)")
    uda = vit["uda"]
    if uda["enabled"] and uda["paradigms"]:
        tasks = uda["tasks"]
        if not tasks or len(set(tasks)) != len(tasks) or any(t not in vit["tasks"] for t in tasks):
            raise ParamsError(f"'vit.uda.tasks' must list distinct tasks of vit.tasks {vit['tasks']}, got {tasks}")
        pseudo = uda["pseudo_labels"]
        if pseudo is not None:
            unknown = sorted(set(pseudo) - {"threshold", "weight"})
            if unknown or set(pseudo) != {"threshold", "weight"}:
                raise ParamsError(f"'vit.uda.pseudo_labels' must be null or {{threshold, weight}}, got {pseudo!r}")
            for sub in ("threshold", "weight"):
                value = pseudo[sub]
                if isinstance(value, bool) or not isinstance(value, _num):
                    raise ParamsError(f"'vit.uda.pseudo_labels.{sub}' must be a number, got {value!r}")
            if not 0 < pseudo["threshold"] <= 1:
                raise ParamsError(f"'vit.uda.pseudo_labels.threshold' must be in (0, 1], got {pseudo['threshold']!r}")
            if pseudo["weight"] < 0:
                raise ParamsError(f"'vit.uda.pseudo_labels.weight' must be >= 0, got {pseudo['weight']!r}")


def merge_layers(raw: Mapping[str, Any], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """The resolved settings *before* validation: ``raw`` (a params file's content) without its
    ``paper:`` block, then that block when the scale is "paper", then ``overrides`` (see the module doc).

    ``mtwork params`` prints this even when validation fails; everything else calls ``resolve``.
    """
    params = copy.deepcopy(dict(raw))
    paper = params.pop("paper", None) or {}
    user: Dict[str, Any] = {}
    for text in overrides:
        user = deep_merge(user, parse_override(text))
    if "paper" in user:  # `--set paper.train.epochs=3` edits the block: it is no setting of its own
        edit = user.pop("paper")
        paper = deep_merge(paper, edit) if isinstance(edit, Mapping) and isinstance(paper, Mapping) else edit or {}
    if not isinstance(paper, Mapping):
        raise ParamsError(f"'paper' must be a mapping of the settings that scale: paper changes, got {paper!r}")
    if user.get("scale", params.get("scale")) == "paper":
        params = deep_merge(params, paper)
    return deep_merge(params, user)


def validate(params: Mapping[str, Any]) -> None:
    """Raise ``ParamsError`` (naming the dotted key) unless ``params`` are complete, typed and consistent."""
    _check(params, SCHEMA, "")
    _check_semantics(dict(params))


def resolve(raw: Mapping[str, Any], overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """``merge_layers`` (params file -> paper block at paper scale -> overrides), then ``validate``."""
    params = merge_layers(raw, overrides)
    validate(params)
    return params


def read_params_file(path: str | Path = "params.yaml") -> Dict[str, Any]:
    """A params file's content as written (no layers applied), read with ``yaml_load``."""
    path = Path(path)
    try:
        raw = yaml_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"parameter file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{path}: the top level must be a mapping")
    return dict(raw)


def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: dotted keys of the leaves (lists and scalars are leaves)."""
    if isinstance(node, Mapping) and node:
        out: Dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, _join(prefix, str(key))))
        return out
    return {prefix: node}


def override_text(key: str, value: Any) -> str:
    """``KEY=VALUE`` that ``parse_override`` reads back as ``value`` (JSON is YAML flow style)."""
    import json

    if isinstance(value, str) and value and "\n" not in value and yaml_load(value) == value:
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


#: Set by ``dvc exp run`` for the commands of its stages: the git revision the experiment starts from.
DVC_EXP_BASELINE_ENV = "DVC_EXP_BASELINE_REV"


def experiment_overrides(path: str | Path = "params.yaml") -> List[str]:
    """Inside ``dvc exp run``: the values the experiment changed in params file ``path`` (its ``-S``
    values and uncommitted edits), as overrides ``KEY=VALUE``, sorted; [] outside an experiment.

    DVC writes ``-S`` values into params.yaml itself, where they would be the base layer and the paper
    block would beat them. Compared with the experiment's baseline revision (``git show REV:path``),
    they become what they are, the user's values, applied last like ``--set``. A baseline that cannot be
    read (no git, the file not in that revision) gives a ParamsError naming the revision.
    """
    import os
    import subprocess

    rev = os.environ.get(DVC_EXP_BASELINE_ENV)
    if not rev:
        return []
    path = Path(path)
    proc = subprocess.run(["git", "show", f"{rev}:./{path.name}"], cwd=path.resolve().parent,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ParamsError(f"{path}: cannot read the DVC experiment's baseline {rev[:12]} "
                          f"({DVC_EXP_BASELINE_ENV}) to tell its -S values: {proc.stderr.strip()}")
    baseline, current = flatten(yaml_load(proc.stdout) or {}), flatten(read_params_file(path))
    return [override_text(k, v) for k, v in sorted(current.items()) if k not in baseline or baseline[k] != v]


def load_params(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """The resolved, validated settings of params file ``path`` with ``overrides`` (``KEY=VALUE`` texts)."""
    raw = read_params_file(path)
    try:
        return resolve(raw, overrides)
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
