"""Import an upstream checkpoint as a converted backbone file, refusing partial or odd loads.

``import_checkpoint("moco", "moco_v2_800ep_pretrain.pth.tar", "models/pretrained/moco_v2.pt")``

1. loads the upstream file (``torch.load(weights_only=True)``: no code from the file runs),
2. converts it with the registered converter (``mtwork.checkpoints.formats``),
3. settles the architecture (``choose_arch``): the one the file declares (MoCo's ``arch`` field and the
   other ``formats.ARCH_FIELDS``), else the one of ``INFERABLE_ARCHS`` its tensor shapes fit (exactly one
   must); a requested ``arch`` (``--arch``, or the pipeline's catalog ``arch`` / ``model.backbone``) is
   needed only when neither settles it, and one that contradicts the file's declaration is an error,
4. compares keys AND shapes with the backbone that arch expects (``expected_state``): any missing,
   unexpected or mis-shaped key raises :class:`CheckpointImportError` and nothing is written,
5. writes ``OUT`` = ``{"arch", "state_dict", "provenance"}`` (the file ``create_backbone`` loads) and
   ``OUT.with_suffix(".json")`` (the human-readable report), both atomically and only after the written
   file has been loaded back through ``create_backbone``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

import mtwork
from mtwork.checkpoints.formats import CHECKPOINT_FORMATS, CheckpointFormatError, Conversion, declared_arch
from mtwork.io import atomic_path, save_torch_to, sha256_file
from mtwork.models.backbones import (
    BackboneLoadError,
    create_backbone,
    create_features_model,
    expected_state,
    split_arch,
)
from mtwork.models.swin import SWIN_CONFIGS
from mtwork.errors import UserError

# How many keys error messages and provenance list before "...": enough to diagnose, short to read.
SHOW_KEYS = 10
# Non-tensor objects that published training checkpoints hold and that are safe to rebuild:
# timm's and torchvision's train.py save their argparse ``args`` in the checkpoint.
SAFE_GLOBALS = (argparse.Namespace,)
# BatchNorm's step counter: absent from checkpoints saved before PyTorch 0.4.1 and unused by
# momentum-based BN, so a missing one is filled with 0 (and reported) instead of refusing the file.
FILLABLE_SUFFIX = ".num_batches_tracked"
#: The architectures an import infers from tensor shapes when the file declares none and none is
#: requested: every torchvision ResNet (what the self-supervised releases train; timm has them under the
#: same names and keys), the CLIP ModifiedResNets in the QuickGELU configs that every published CLIP
#: ResNet weight needs (``mtwork.checkpoints.catalog.quickgelu_config_for``), mtwork's tiny CLIP, and the
#: Swin-V2 configs of ``mtwork.models.swin``. Each has parameter shapes of its own (a test checks), so a
#: shape match names one network. Networks with the shapes of a listed one but other computations are
#: left out on purpose (timm's anti-aliased ``resnetaa50`` has resnet50's parameters): a file of those
#: needs its arch declared or requested.
INFERABLE_ARCHS: Tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "clip:mtwork-tiny-clip", "clip:RN50-quickgelu", "clip:RN101-quickgelu", "clip:RN50x4-quickgelu",
    "clip:RN50x16-quickgelu", "clip:RN50x64-quickgelu",
    *(f"swin:{name}" for name in SWIN_CONFIGS),
)
# A timm Swin-V2 state dict has this key; a declared timm Swin name becomes the swin family's arch.
_SWIN_MARKER = "patch_embed.proj.weight"


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
    ``mismatched`` items are ``[key, shape in file, shape expected]``. ``arch_from`` says where ``arch``
    came from (the file's declaration, the tensor shapes, or the request).
    """

    format: str
    source_file: Optional[str]
    sha256: Optional[str]
    out: str
    arch: str
    arch_from: str = ""
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
            f"import {self.format} -> {self.arch}" + (f" ({self.arch_from})" if self.arch_from else "")
            + f": {source} -> {self.out}",
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
    arch: Optional[str] = None,
    seed: int = 0,
    allow_pickle: bool = False,
    arch_origin: str = "the requested arch",
) -> ImportReport:
    """Convert the upstream file ``src`` (format ``fmt``) into the backbone file ``out``.

    ``arch``: the backbone architecture asked for (a timm name, ``clip:<open_clip name>`` or
    ``swin:<name>``), or None to take the one the file declares or its tensor shapes fit (see
    ``choose_arch``); ``arch_origin`` names where ``arch`` came from in error messages ("--arch",
    "model.backbone", ...). ``seed`` initialises formats without upstream weights ("random"), which
    need ``arch``. ``allow_pickle=True`` lets a file that ``weights_only`` loading refuses be unpickled
    in full: that runs code from the file, so only use it for files you trust. Raises
    :class:`CheckpointImportError` (nothing written) when the file is unreadable, not of format ``fmt``,
    of no settled architecture, or does not fit it exactly.
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
        obj, loaded_with = (None, None) if src_path is None else _load_upstream(src_path, allow_pickle)
        try:
            conversion = CHECKPOINT_FORMATS.get(fmt)(obj)
        except CheckpointFormatError as exc:
            where = src_path or "(no source file)"
            raise CheckpointImportError(f"{where}: not a '{fmt}' checkpoint: {exc}") from exc
        if conversion.init_from_seed:
            if arch is None:
                raise CheckpointImportError(f"format '{fmt}' has no upstream file to read the architecture "
                                            "from: give the arch (--arch)")
            arch_from = arch_origin
        else:
            arch, arch_from = choose_arch(obj, conversion, arch, arch_origin, src_path)
        try:
            expected = _expected_state(arch)
        except CheckpointImportError as exc:  # e.g. a declared upstream name that timm does not know
            raise CheckpointImportError(f"{exc} (arch from {arch_from}; give the mtwork arch with --arch)") from exc

        report = ImportReport(
            format=fmt,
            source_file=str(src_path) if src_path is not None else None,
            sha256=None,  # hashed only once the file is accepted
            out=str(out),
            arch=arch,
            arch_from=arch_from,
            notes=conversion.notes,
            seed=seed if conversion.init_from_seed else None,
            dropped=list(conversion.dropped),
        )
        state = _seeded_state(arch, seed) if conversion.init_from_seed else dict(conversion.state_dict)
        state = _match_expected(state, expected, report)
        if not report.ok:
            # which known network the file holds instead, when its shapes say so
            fits = [] if conversion.init_from_seed else fitting_archs(conversion.state_dict)
            raise CheckpointImportError(_refusal_message(report, fits), report)

        report.sha256 = sha256_file(src_path) if src_path is not None else None
        provenance = _provenance(report, loaded_with)
        # the weights file holds nothing time-dependent, so the same upstream file imports to the same
        # bytes (DVC and Snakemake see an unchanged output); the time of the import goes to the report
        payload = {"arch": arch, "state_dict": state, "provenance": provenance}
        with atomic_path(out) as tmp_out, atomic_path(report_path) as tmp_report:
            save_torch_to(tmp_out, payload)
            # Prove the promise to the consumer before anything appears at the final path.
            try:
                create_backbone(arch, tmp_out)
            except BackboneLoadError as exc:  # a bug here, not in the upstream file
                raise CheckpointImportError(f"{out}: the converted file does not load back: {exc}", report) from exc
            created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            tmp_report.write_text(_json({**report.to_dict(), "provenance": provenance, "created_utc": created}))
    return report


# --------------------------------------------------------------------------- the architecture


def choose_arch(obj: Any, conversion: Conversion, requested: Optional[str] = None,
                origin: str = "the requested arch", src: Optional[Path] = None) -> Tuple[str, str]:
    """(arch, where it came from) for an upstream object and its conversion.

    1. The file declares one (``formats.declared_arch``): that one. A ``requested`` arch that names
       another network is an error naming both (``origin`` says which setting requested it), unless
       the declared name is no architecture mtwork can build (an upstream's own naming): then the
       requested one is used and the key/shape comparison decides.
    2. Else a ``requested`` arch is used as given (the key/shape comparison then checks it).
    3. Else the one architecture of ``INFERABLE_ARCHS`` whose keys and shapes the converted tensors fit;
       none or several is an error asking for the arch.
    """
    where = src if src is not None else "(no source file)"
    declared, field_name = declared_arch(obj)
    if declared is not None:
        if requested is None:
            return _family_arch(declared, conversion.state_dict), f"the file's '{field_name}' field"
        if not same_arch(requested, declared) and not _buildable(_family_arch(declared, conversion.state_dict)):
            # the upstream's own name for a network mtwork names otherwise: nothing to contradict
            return requested, f"{origin} (the file's '{field_name}' field says '{declared}', no mtwork arch)"
        if not same_arch(requested, declared):
            # a setting (model.backbone, a catalog arch) is corrected there; a one-off request is left out
            fix = f"set {origin}: {declared}" if "." in origin else f"leave out {origin} to use the file's"
            raise CheckpointImportError(
                f"{where}: {origin} is '{requested}' but the file declares arch '{declared}' (its "
                f"'{field_name}' field): they contradict each other, nothing written ({fix}, or check that "
                "this is the file you meant)"
            )
        return requested, f"{origin}, as the file's '{field_name}' field declares"
    if requested is not None:
        return requested, origin
    fits = fitting_archs(conversion.state_dict)
    if len(fits) == 1:
        return fits[0], "inferred from the tensor shapes"
    if not fits:
        raise CheckpointImportError(
            f"{where}: declares no architecture and its converted tensors fit none of the known ones "
            f"({', '.join(INFERABLE_ARCHS)}): give the arch (--arch)"
        )
    raise CheckpointImportError(
        f"{where}: declares no architecture and its tensor shapes fit {len(fits)} architectures "
        f"({', '.join(fits)}): give the arch (--arch)"
    )


def same_arch(a: str, b: str) -> bool:
    """Whether two arch spellings name one network: the same family (a missing prefix matches any)
    and model name, a timm pretrained tag aside (``resnet50.a1_in1k`` is ``resnet50``)."""
    (fam_a, name_a), (fam_b, name_b) = _split(a), _split(b)
    return name_a.split(".")[0] == name_b.split(".")[0] and (fam_a == fam_b or None in (fam_a, fam_b))


def _split(arch: str) -> Tuple[Optional[str], str]:
    family, name = split_arch(arch)
    return (family if arch.startswith(f"{family}:") else None), name


def _family_arch(declared: str, state: Mapping[str, torch.Tensor]) -> str:
    """A declared upstream name as an mtwork arch: timm's ``train.py`` names a Swin-V2 without the
    ``swin:`` prefix that selects mtwork's Swin family; everything else is already an mtwork arch."""
    if _split(declared)[0] is None and _SWIN_MARKER in state:
        return f"swin:{declared}"
    return declared


def fitting_archs(state: Mapping[str, torch.Tensor], candidates: Optional[Sequence[str]] = None) -> List[str]:
    """The ``candidates`` (default ``INFERABLE_ARCHS``) whose backbone keys and shapes ``state`` has
    exactly (a missing BatchNorm step counter aside, as the import fills those)."""
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    return [arch for arch in (INFERABLE_ARCHS if candidates is None else candidates)
            if _fits(shapes, _arch_shapes(arch))]


def _fits(shapes: Mapping[str, Tuple[int, ...]], expected: Mapping[str, Tuple[int, ...]]) -> bool:
    if any(key not in expected for key in shapes):
        return False
    return all(shapes[key] == shape if key in shapes else key.endswith(FILLABLE_SUFFIX)
               for key, shape in expected.items())


def _buildable(arch: str) -> bool:
    try:
        _arch_shapes(arch)
    except (RuntimeError, ValueError, KeyError):  # timm's "Unknown model", unknown Swin/CLIP configs
        return False
    return True


@functools.lru_cache(maxsize=None)
def _arch_shapes(arch: str) -> Dict[str, Tuple[int, ...]]:
    """Keys and shapes of ``arch``'s feature extractor, built on the meta device: no memory, no init
    values, a few milliseconds per ResNet."""
    with torch.device("meta"):
        model = create_features_model(arch)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


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
    except (RuntimeError, ValueError) as exc:  # timm: "Unknown model (...)"; unknown Swin-V2 configs
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


def _refusal_message(report: ImportReport, fits: Optional[List[str]] = None) -> str:
    source = report.source_file or "(no source file)"
    origin = f", {report.arch_from}" if report.arch_from else ""
    parts = [f"{source}: refusing to import as '{report.arch}' (format '{report.format}'{origin}, nothing written)"]
    if fits:
        parts.append(f"its tensor shapes fit {' and '.join(repr(a) for a in fits)}")
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
        "arch_from": report.arch_from,
        "seed": report.seed,
        "loaded_with": loaded_with,
        "notes": report.notes,
        "kept_keys": len(report.kept),
        "filled_keys": list(report.filled),
        "dropped_keys": {"count": len(report.dropped), "first": report.dropped[:SHOW_KEYS]},
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

