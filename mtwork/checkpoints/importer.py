"""Import an upstream checkpoint as a converted backbone file, refusing partial or odd loads.

``import_checkpoint("moco", "moco_v2_800ep_pretrain.pth.tar", "models/pretrained/moco_v2.pt", "resnet50")``

1. loads the upstream file (``torch.load(weights_only=True)``: no code from the file runs),
2. converts it with the registered converter (``mtwork.checkpoints.formats``),
3. compares keys AND shapes with the backbone ``arch`` expects (``expected_state``): any missing,
   unexpected or mis-shaped key raises :class:`CheckpointImportError` and nothing is written,
4. writes ``OUT`` = ``{"arch", "state_dict", "provenance"}`` (the file ``create_backbone`` loads) and
   ``OUT.with_suffix(".json")`` (the human-readable report), both atomically and only after the written
   file has been loaded back through ``create_backbone``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

import mtwork
from mtwork.checkpoints.formats import CHECKPOINT_FORMATS, CheckpointFormatError
from mtwork.errors import UserError
from mtwork.io import atomic_path, sha256_file
from mtwork.models.backbones import BackboneLoadError, create_backbone, create_features_model, expected_state

# How many keys error messages and provenance list before "...": enough to diagnose, short to read.
SHOW_KEYS = 10
# Non-tensor objects that published training checkpoints hold and that are safe to rebuild:
# timm's and torchvision's train.py save their argparse ``args`` in the checkpoint.
SAFE_GLOBALS = (argparse.Namespace,)
# BatchNorm's step counter: absent from checkpoints saved before PyTorch 0.4.1 and unused by
# momentum-based BN, so a missing one is filled with 0 (and reported) instead of refusing the file.
FILLABLE_SUFFIX = ".num_batches_tracked"


class CheckpointImportError(UserError, ValueError):
    """An upstream checkpoint cannot be imported as the requested backbone; nothing was written.

    ``report`` holds the comparison (missing/unexpected/mismatched keys) when one was made.
    """

    def __init__(self, message: str, report: Optional["ImportReport"] = None):
        super().__init__(message)
        self.report = report


@dataclass
class ImportReport:
    """What one import kept, dropped and found wrong. Key lists use the names in each namespace:
    ``kept``/``missing``/``unexpected``/``mismatched``/``filled`` backbone keys, ``dropped`` upstream keys.
    ``mismatched`` items are ``[key, shape in file, shape expected]``.
    """

    format: str
    source_file: Optional[str]
    sha256: Optional[str]
    out: str
    arch: str
    kept: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, List[int], List[int]]] = field(default_factory=list)
    filled: List[str] = field(default_factory=list)
    notes: str = ""
    seed: Optional[int] = None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def counts(self) -> Dict[str, int]:
        names = ("kept", "dropped", "missing", "unexpected", "mismatched", "filled")
        return {name: len(getattr(self, name)) for name in names}

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: the scalar fields, then ``counts``, then the key lists."""
        fields = asdict(self)
        lists = ("kept", "dropped", "missing", "unexpected", "mismatched", "filled")
        out = {k: v for k, v in fields.items() if k not in lists}
        out["counts"] = self.counts()
        out.update({k: fields[k] for k in lists})
        out["mismatched"] = [list(m) for m in self.mismatched]
        return out

    def to_text(self) -> str:
        """A few lines for the terminal: counts, then the keys of every non-empty problem list."""
        source = self.source_file or f"(none: seed {self.seed})"
        lines = [
            f"import {self.format} -> {self.arch}: {source} -> {self.out}",
            "  " + ", ".join(f"{k} {v}" for k, v in self.counts().items()),
        ]
        if self.sha256:
            lines.append(f"  source sha256 {self.sha256}")
        if self.notes:
            lines.append(f"  notes: {self.notes}")
        if self.dropped:
            groups = ", ".join(f"{g} ({n})" for g, n in _group_keys(self.dropped).items())
            lines.append(f"  dropped: {groups}")
        for name in ("missing", "unexpected", "filled"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name}: {_preview(keys)}")
        if self.mismatched:
            shown = "; ".join(f"{k} {tuple(a)} != expected {tuple(b)}" for k, a, b in self.mismatched[:SHOW_KEYS])
            lines.append(f"  mismatched: {shown}")
        return "\n".join(lines)


def import_checkpoint(
    fmt: str,
    src: str | Path | None,
    out: str | Path,
    arch: str,
    seed: int = 0,
    allow_pickle: bool = False,
) -> ImportReport:
    """Convert the upstream file ``src`` (format ``fmt``) into the backbone file ``out`` for ``arch``.

    ``seed`` initialises formats without upstream weights ("random"). ``allow_pickle=True`` lets a
    file that ``weights_only`` loading refuses be unpickled in full: that runs code from the file, so
    only use it for files you trust. Raises :class:`CheckpointImportError` (nothing written) when the
    file is unreadable, not of format ``fmt``, or does not fit ``arch`` exactly.
    """
    if fmt not in CHECKPOINT_FORMATS:
        raise CheckpointImportError(
            f"unknown checkpoint format '{fmt}' (known: {', '.join(CHECKPOINT_FORMATS.names())})"
        )
    out = Path(out)
    report_path = out.with_suffix(".json")
    if report_path == out:
        raise CheckpointImportError(f"output {out} must not end in .json: the report is written beside it")
    src_path = Path(src) if src is not None else None

    # Building reference models draws random init weights; an import must not shift the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        expected = _expected_state(arch)
        obj, loaded_with = (None, None) if src_path is None else _load_upstream(src_path, allow_pickle)
        try:
            conversion = CHECKPOINT_FORMATS.get(fmt)(obj)
        except CheckpointFormatError as exc:
            where = src_path or "(no source file)"
            raise CheckpointImportError(f"{where}: not a '{fmt}' checkpoint: {exc}") from exc

        report = ImportReport(
            format=fmt,
            source_file=str(src_path) if src_path is not None else None,
            sha256=None,  # hashed only once the file is accepted
            out=str(out),
            arch=arch,
            notes=conversion.notes,
            seed=seed if conversion.init_from_seed else None,
            dropped=list(conversion.dropped),
        )
        state = _seeded_state(arch, seed) if conversion.init_from_seed else dict(conversion.state_dict)
        state = _match_expected(state, expected, report)
        if not report.ok:
            raise CheckpointImportError(_refusal_message(report), report)

        report.sha256 = sha256_file(src_path) if src_path is not None else None
        provenance = _provenance(report, loaded_with)
        payload = {"arch": arch, "state_dict": state, "provenance": provenance}
        with atomic_path(out) as tmp_out, atomic_path(report_path) as tmp_report:
            torch.save(payload, tmp_out)
            # Prove the promise to the consumer before anything appears at the final path.
            try:
                create_backbone(arch, tmp_out)
            except BackboneLoadError as exc:  # a bug here, not in the upstream file
                raise CheckpointImportError(f"{out}: the converted file does not load back: {exc}", report) from exc
            tmp_report.write_text(_json({**report.to_dict(), "provenance": provenance}))
    return report


# --------------------------------------------------------------------------- loading


def _load_upstream(src: Path, allow_pickle: bool) -> Tuple[Any, str]:
    """``torch.load`` on CPU, without running code from the file unless ``allow_pickle``."""
    if not src.is_file():
        raise CheckpointImportError(f"upstream checkpoint not found: {src}")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(src, map_location="cpu", weights_only=True), "weights_only"
    except Exception as exc:  # pickle.UnpicklingError for foreign objects, RuntimeError for non-torch files
        unsafe = _unsafe_globals(src)
        if not unsafe:
            raise CheckpointImportError(f"{src}: cannot be read as a torch checkpoint ({exc})") from exc
        if not allow_pickle:
            raise CheckpointImportError(
                f"{src}: holds Python objects that safe (weights_only) loading refuses: {unsafe}. "
                "If you trust this file, re-run with allow_pickle=True (this executes code from the file)."
            ) from exc
    return torch.load(src, map_location="cpu", weights_only=False), "pickle"


def _unsafe_globals(src: Path) -> List[str]:
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(src)
    except Exception:  # not a zip/pickle torch file at all
        return []
    safe = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    return [g for g in found if g not in safe]


# --------------------------------------------------------------------------- comparing


def _expected_state(arch: str) -> Dict[str, torch.Tensor]:
    try:
        return expected_state(arch)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise CheckpointImportError(f"cannot build backbone '{arch}': {exc}") from exc


def _seeded_state(arch: str, seed: int) -> Dict[str, torch.Tensor]:
    """timm's initialisation of ``arch`` under ``torch.manual_seed(seed)`` (caller forks the RNG)."""
    torch.manual_seed(seed)
    return create_features_model(arch).state_dict()


def _match_expected(
    state: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], report: ImportReport
) -> Dict[str, torch.Tensor]:
    """Fill ``report``'s key lists and return the state in ``expected``'s key order.

    Floating tensors are cast to the expected dtype (fp16 releases load into fp32 models); tensors
    are cloned so the saved file holds no storage shared with the upstream object.
    """
    for key in expected:
        if key not in state and key.endswith(FILLABLE_SUFFIX):
            state[key] = torch.zeros_like(expected[key])
            report.filled.append(key)
    report.missing = [k for k in expected if k not in state]
    report.unexpected = sorted(k for k in state if k not in expected)
    report.mismatched = [
        (k, list(state[k].shape), list(expected[k].shape))
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    report.kept = [k for k in expected if k in state and k not in report.filled]
    matched: Dict[str, torch.Tensor] = {}
    for key, ref in expected.items():
        if key in state:
            value = state[key]
            if value.is_floating_point() and ref.is_floating_point():
                value = value.to(ref.dtype)
            matched[key] = value.detach().clone().contiguous()
    return matched


def _refusal_message(report: ImportReport) -> str:
    source = report.source_file or "(no source file)"
    parts = [f"{source}: refusing to import as '{report.arch}' (format '{report.format}', nothing written)"]
    if report.missing:
        parts.append(f"missing {len(report.missing)} backbone keys: {_preview(report.missing)}")
    if report.unexpected:
        parts.append(f"unexpected {len(report.unexpected)} keys: {_preview(report.unexpected)}")
    if report.mismatched:
        shown = ", ".join(f"{k} {tuple(a)} vs expected {tuple(b)}" for k, a, b in report.mismatched[:SHOW_KEYS])
        parts.append(f"{len(report.mismatched)} shape mismatches: {shown}")
    if report.notes:
        parts.append(f"upstream: {report.notes}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- writing


def _provenance(report: ImportReport, loaded_with: Optional[str]) -> Dict[str, Any]:
    return {
        "format": report.format,
        "source_file": report.source_file,
        "sha256": report.sha256,
        "arch": report.arch,
        "seed": report.seed,
        "loaded_with": loaded_with,
        "notes": report.notes,
        "kept_keys": len(report.kept),
        "filled_keys": list(report.filled),
        "dropped_keys": {"count": len(report.dropped), "first": report.dropped[:SHOW_KEYS]},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mtwork_version": mtwork.__version__,
        "torch_version": str(torch.__version__),  # TorchVersion would not load weights_only
    }


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"


def _preview(keys: List[str]) -> str:
    more = f" ... (+{len(keys) - SHOW_KEYS} more)" if len(keys) > SHOW_KEYS else ""
    return ", ".join(keys[:SHOW_KEYS]) + more


def _group_keys(keys: List[str]) -> Dict[str, int]:
    """Count keys per family, in first-seen order: the leading two name parts ("module.encoder_k",
    "optimizer"), or up to the classifier ("module.encoder_q.fc") so a dropped head stands out."""
    groups: Dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        group = ".".join(parts[: parts.index("fc") + 1] if "fc" in parts[:-1] else parts[:2])
        groups[group] = groups.get(group, 0) + 1
    return groups

