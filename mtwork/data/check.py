"""Validate a BDD100K-layout data set (real or SynthDrive) before anyone spends GPU hours on it.

``check_bdd100k`` reads every image, mask and det frame once and reports counts (images per split
and image set, labels per task, objects per class, ignore regions of the official protocol, skipped
unknown categories, frame attribute values (the domains), pixels per segmentation and drivable class)
and every problem found, each naming its file. It never raises on bad data: a broken file is a
problem in the report, and the check goes on.

Box tolerance: a box may stick out of its image by up to ``BOX_TOLERANCE`` px (rounding in the
annotation tool) before it counts as out-of-image.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from mtwork.data.bdd100k import (
    ATTRIBUTE_VALUES,
    DET_CATEGORIES,
    DRIVABLE_CLASSES,
    IMAGE_SETS,
    SEMSEG_CLASSES,
    decode_drivable,
    det_json_path,
    image_dir,
    list_images,
    list_masks,
    load_frame_attributes,
    mask_dir,
    parse_det_frames,
)
from mtwork.data.batch import IGNORE_INDEX
from mtwork.io import write_json
from mtwork.registry import Registry

BOX_TOLERANCE = 1.0
#: Problems listed by ``to_text`` (``to_dict`` keeps them all).
TEXT_PROBLEM_LIMIT = 50

# Problem kinds.
MISSING = "missing"  # a label/image directory or label file that should be there
CORRUPT_IMAGE = "corrupt_image"
CORRUPT_MASK = "corrupt_mask"
SIZE_MISMATCH = "size_mismatch"  # mask size differs from its image
UNKNOWN_ID = "unknown_id"  # mask value outside the task's ids
INVALID_JSON = "invalid_json"  # unreadable det JSON or a frame/label with a missing/invalid key
FRAME_WITHOUT_IMAGE = "frame_without_image"
MASK_WITHOUT_IMAGE = "mask_without_image"
BAD_BOX = "bad_box"  # degenerate or out-of-image box
UNKNOWN_ATTRIBUTE = "unknown_attribute"  # a frame attribute value outside ATTRIBUTE_VALUES
#: Key of the attribute count of images without a known value.
NO_ATTRIBUTE = "(none)"


@dataclass(frozen=True)
class Problem:
    kind: str
    path: str
    message: str

    def to_dict(self) -> Dict[str, str]:
        return {"kind": self.kind, "path": self.path, "message": self.message}


@dataclass
class CheckReport:
    """Outcome of ``check_bdd100k``; per-split dicts are keyed by split name.

    images: {split: {"100k": n, "10k": n, "total": n (union by name)}}
    labeled: {split: {"det", "semseg", "drivable", "depth", "all_three": n images}}
    objects / skipped_categories: {split: {category: n boxes}} (objects: evaluated; skipped: unknown)
    ignore_regions: {split: {category as written, or "crowd <class>": n boxes}}
    attributes: {split: {"weather"|"timeofday"|"scene": {value or "(none)": n images}}} over the
        split's images (both sets), looked up by name as ``BDD100KDataset`` does
    semseg_pixels: {split: {class name or "ignore": n}}; drivable_pixels: {split: {class: n}}
    """

    root: str
    splits: Tuple[str, ...]
    images: Dict[str, Dict[str, int]] = field(default_factory=dict)
    labeled: Dict[str, Dict[str, int]] = field(default_factory=dict)
    objects: Dict[str, Dict[str, int]] = field(default_factory=dict)
    skipped_categories: Dict[str, Dict[str, int]] = field(default_factory=dict)
    ignore_regions: Dict[str, Dict[str, int]] = field(default_factory=dict)
    attributes: Dict[str, Dict[str, Dict[str, int]]] = field(default_factory=dict)
    semseg_pixels: Dict[str, Dict[str, int]] = field(default_factory=dict)
    drivable_pixels: Dict[str, Dict[str, int]] = field(default_factory=dict)
    problems: List[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, path: Path | str, message: str) -> None:
        self.problems.append(Problem(kind, str(path), message))

    def to_dict(self) -> Dict[str, Any]:
        return {
            "root": self.root,
            "ok": self.ok,
            "splits": list(self.splits),
            "images": self.images,
            "labeled": self.labeled,
            "objects": self.objects,
            "skipped_categories": self.skipped_categories,
            "ignore_regions": self.ignore_regions,
            "attributes": self.attributes,
            "semseg_pixels": self.semseg_pixels,
            "drivable_pixels": self.drivable_pixels,
            "problem_counts": dict(Counter(p.kind for p in self.problems)),
            "problems": [p.to_dict() for p in self.problems],
        }

    def to_text(self) -> str:
        splits = list(self.splits)
        lines = [f"BDD100K check of {self.root}: " + ("OK" if self.ok else f"{len(self.problems)} problem(s)"), ""]

        def table(title: str, keys: Sequence[str], data: Dict[str, Dict[str, int]], percent: bool = False) -> None:
            width = max([len(title)] + [len(k) for k in keys])
            lines.append(f"{title:<{width}}  " + "  ".join(f"{s:>12}" for s in splits))
            for key in keys:
                cells = []
                for s in splits:
                    value = data.get(s, {}).get(key, 0)
                    total = sum(data.get(s, {}).values()) or 1
                    cells.append(f"{value:>12,}" if not percent else f"{100.0 * value / total:>11.2f}%")
                lines.append(f"{key:<{width}}  " + "  ".join(cells))
            lines.append("")

        table("images", ["100k", "10k", "total"], self.images)
        table("labeled images", ["det", "semseg", "drivable", "depth", "all_three"], self.labeled)
        table("objects (boxes)", list(DET_CATEGORIES), self.objects)
        ignore = sorted({k for s in splits for k in self.ignore_regions.get(s, {})})
        if ignore:
            table("ignore regions", ignore, self.ignore_regions)
        skipped = sorted({k for s in splits for k in self.skipped_categories.get(s, {})})
        if skipped:
            table("skipped (unknown category)", skipped, self.skipped_categories)
        for key in ATTRIBUTE_VALUES:
            per_split = {s: self.attributes.get(s, {}).get(key, {}) for s in splits}
            values = [v for v in ATTRIBUTE_VALUES[key] + (NO_ATTRIBUTE,) if any(v in c for c in per_split.values())]
            values += sorted({v for c in per_split.values() for v in c} - set(values))  # unknown values
            if values:
                table(f"{key} (images)", values, per_split)
        table("semseg pixels", list(SEMSEG_CLASSES) + ["ignore"], self.semseg_pixels, percent=True)
        table("drivable pixels", list(DRIVABLE_CLASSES), self.drivable_pixels, percent=True)
        if self.problems:
            counts = Counter(p.kind for p in self.problems)
            lines.append("problems by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
            shown = self.problems[:TEXT_PROBLEM_LIMIT]
            for p in shown:
                lines.append(f"  [{p.kind}] {p.path}: {p.message}")
            if len(self.problems) > len(shown):
                lines.append(f"  ... and {len(self.problems) - len(shown)} more (see the JSON report)")
        return "\n".join(lines).rstrip() + "\n"


def _open_image(path: Path) -> Tuple[Optional[Tuple[int, int]], Optional[str]]:
    """((H, W), None) for a fully decodable image, (None, reason) otherwise."""
    try:
        with Image.open(path) as img:
            img.load()  # decode everything: a truncated JPEG only fails here
            return (img.height, img.width), None
    except (OSError, SyntaxError, ValueError) as err:
        return None, str(err) or type(err).__name__


def _open_mask(path: Path, modes: Tuple[str, ...]) -> Tuple[Optional[np.ndarray], Optional[str]]:
    try:
        with Image.open(path) as img:
            if img.mode not in modes:
                return None, f"expected a single-channel mask (PIL mode {' or '.join(modes)}), got {img.mode}"
            return np.asarray(img), None
    except (OSError, SyntaxError, ValueError) as err:
        return None, str(err) or type(err).__name__


def _check_split(report: CheckReport, root: Path, split: str, bar: tqdm,
                 attributes: Dict[str, Dict[str, str]]) -> None:
    # --- images (both sets; a name in both is checked in both) ---
    sets = {s: list_images(image_dir(root, s, split)) for s in IMAGE_SETS}
    for s in IMAGE_SETS:
        if not image_dir(root, s, split).is_dir():
            report.add(MISSING, image_dir(root, s, split), f"image directory of the {s} set is missing")
    sizes: Dict[str, Tuple[int, int]] = {}
    for s in IMAGE_SETS:
        for name, path in sets[s].items():
            size, err = _open_image(path)
            bar.update(1)
            if err is not None:
                report.add(CORRUPT_IMAGE, path, f"unreadable or corrupt image: {err}")
            elif name in sizes and sizes[name] != size:
                report.add(SIZE_MISMATCH, path, f"is {size[0]}x{size[1]} but the same name in the other set is "
                           f"{sizes[name][0]}x{sizes[name][1]}")
            else:
                sizes.setdefault(name, size)
    names = set(sets["100k"]) | set(sets["10k"])
    stems = {Path(n).stem: n for n in names}
    report.images[split] = {"100k": len(sets["100k"]), "10k": len(sets["10k"]), "total": len(names)}

    # --- detection frames ---
    labeled: Dict[str, set] = {t: set() for t in ("det", "semseg", "drivable", "depth")}
    objects: Counter = Counter()
    skipped: Counter = Counter()
    ignored: Counter = Counter()
    json_path = det_json_path(root, split)
    if not json_path.is_file():
        report.add(MISSING, json_path, "detection label file is missing")
    else:
        try:
            with open(json_path, "rb") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as err:
            report.add(INVALID_JSON, json_path, f"not valid JSON ({err})")
            data = None
        if data is not None:
            frames = parse_det_frames(data, str(json_path), lambda m: report.add(INVALID_JSON, json_path, m), skipped,
                                      ignored=ignored)
            for name, boxes in frames.items():
                if name not in names:
                    report.add(FRAME_WITHOUT_IMAGE, json_path, f"frame '{name}' names an image not in {split}")
                    continue
                labeled["det"].add(name)
                height, width = sizes.get(name, (None, None))
                for label, x1, y1, x2, y2, _ in boxes:
                    objects[DET_CATEGORIES[label]] += 1
                    box = f"frame '{name}' {DET_CATEGORIES[label]} box x1={x1:g} y1={y1:g} x2={x2 - 1:g} y2={y2 - 1:g}"
                    if x2 - x1 <= 0 or y2 - y1 <= 0:
                        report.add(BAD_BOX, json_path, f"{box}: degenerate (x2 < x1 or y2 < y1)")
                    elif width is not None and (
                        x1 < -BOX_TOLERANCE or y1 < -BOX_TOLERANCE
                        or x2 > width + BOX_TOLERANCE or y2 > height + BOX_TOLERANCE
                    ):
                        report.add(BAD_BOX, json_path, f"{box}: outside the {width}x{height} image")
    report.objects[split] = {c: objects.get(c, 0) for c in DET_CATEGORIES}
    report.skipped_categories[split] = dict(sorted(skipped.items()))
    report.ignore_regions[split] = dict(sorted(ignored.items()))
    counts: Dict[str, Counter] = {key: Counter() for key in ATTRIBUTE_VALUES}
    for name in names:
        found = attributes.get(name, {})
        for key in ATTRIBUTE_VALUES:
            counts[key][found.get(key, NO_ATTRIBUTE)] += 1
    report.attributes[split] = {key: dict(c) for key, c in counts.items()}

    # --- masks ---
    semseg_counts = np.zeros(256, dtype=np.int64)
    drivable_counts = np.zeros(len(DRIVABLE_CLASSES), dtype=np.int64)
    for task in ("semseg", "drivable", "depth"):
        directory = mask_dir(root, task, split)
        if not directory.is_dir():
            if task != "depth":  # depth is SynthDrive's extra; real BDD100K has none
                report.add(MISSING, directory, f"{task} label directory is missing")
            continue
        modes = ("I;16", "I;16B", "I") if task == "depth" else ("L", "P")
        for stem, path in list_masks(directory).items():
            bar.update(1)
            if stem not in stems:
                report.add(MASK_WITHOUT_IMAGE, path, f"{task} mask has no image '{stem}.*' in {split}")
                continue
            mask, err = _open_mask(path, modes)
            if mask is None:
                report.add(CORRUPT_MASK, path, f"unreadable {task} mask: {err}")
                continue
            size = sizes.get(stems[stem])
            if size is not None and mask.shape != size:
                report.add(SIZE_MISMATCH, path, f"{task} mask is {mask.shape[0]}x{mask.shape[1]}, "
                           f"its image is {size[0]}x{size[1]}")
                continue
            labeled[task].add(stems[stem])
            if task == "depth":
                continue
            counts = np.bincount(mask.ravel(), minlength=256)
            if task == "semseg":
                valid = np.zeros(256, bool)
                valid[: len(SEMSEG_CLASSES)] = True
                valid[IGNORE_INDEX] = True
                allowed = "0..18 and 255"
                semseg_counts += counts[:256]
            else:
                valid = np.zeros(len(counts), bool)
                valid[: len(DRIVABLE_CLASSES)] = True
                allowed = "the on-disk ids 0..2"
                disk = counts[: len(DRIVABLE_CLASSES)]
                train_ids = decode_drivable(np.arange(len(DRIVABLE_CLASSES), dtype=np.uint8))
                np.add.at(drivable_counts, train_ids, disk)
            bad = np.nonzero((counts > 0) & ~valid[: len(counts)])[0]
            if bad.size:
                shown = ", ".join(f"{int(v)} ({int(counts[v])} px)" for v in bad[:10])
                report.add(UNKNOWN_ID, path, f"{task} mask has ids outside {allowed}: {shown}")
    report.semseg_pixels[split] = {
        **{c: int(semseg_counts[i]) for i, c in enumerate(SEMSEG_CLASSES)},
        "ignore": int(semseg_counts[IGNORE_INDEX]),
    }
    report.drivable_pixels[split] = {c: int(drivable_counts[i]) for i, c in enumerate(DRIVABLE_CLASSES)}
    # --- cameras: normals are derived from depth and the intrinsics, so every depth image needs one ---
    if labeled["depth"]:
        from mtwork.data.bdd100k import DatasetError, camera_dir, read_camera

        cameras = camera_dir(root, split)
        for name in sorted(labeled["depth"]):
            path = cameras / f"{Path(name).stem}.json"
            if not path.is_file():
                report.add(MISSING, path, "camera file missing: the depth image's normals need its intrinsics")
                continue
            try:
                read_camera(path)
            except (DatasetError, ValueError, OSError) as exc:
                report.add(INVALID_JSON, path, f"unreadable camera file: {exc}")
    all_three = labeled["det"] & labeled["semseg"] & labeled["drivable"]
    report.labeled[split] = {**{t: len(v) for t, v in labeled.items()}, "all_three": len(all_three)}


def _count_files(root: Path, splits: Sequence[str]) -> int:
    total = 0
    for split in splits:
        total += sum(len(list_images(image_dir(root, s, split))) for s in IMAGE_SETS)
        total += sum(len(list_masks(mask_dir(root, t, split))) for t in ("semseg", "drivable", "depth"))
    return total


def check_bdd100k(
    root: str | os.PathLike, splits: Sequence[str] = ("train", "val"), progress: bool = True
) -> "CheckReport":
    """Check the BDD100K layout under ``root`` for ``splits``; see the module docstring."""
    root = Path(root)
    report = CheckReport(root=str(root), splits=tuple(splits))
    if not root.is_dir():
        report.add(MISSING, root, "data set root directory not found")
        return report
    # det JSON problems are reported by the split's own pass; attribute frame lists are checked here
    det_files = {det_json_path(root, s) for s in splits}
    attributes = load_frame_attributes(
        root, on_problem=lambda path, message: None if path in det_files else report.add(INVALID_JSON, path, message))
    unknown: Counter = Counter(
        (key, value) for found in attributes.values() for key, value in found.items()
        if value not in ATTRIBUTE_VALUES[key])
    for (key, value), n in sorted(unknown.items()):
        report.add(UNKNOWN_ATTRIBUTE, root / "labels", f"attribute {key}={value!r} on {n} frame(s) is not a BDD100K "
                   f"value ({', '.join(ATTRIBUTE_VALUES[key])}): no attribute domain will match it")
    with tqdm(total=_count_files(root, splits), desc="checking BDD100K", unit="file",
              file=sys.stderr, disable=not progress) as bar:
        for split in splits:
            _check_split(report, root, split, bar, attributes)
    return report


# ---------------------------------------------------------------------------------------------
# Format dispatch: ``mtwork data check --format F``
# ---------------------------------------------------------------------------------------------

#: format name -> check(root, progress=...) returning a report with ``ok``, ``to_text()``, ``to_dict()``.
#: The dense-label formats (cityscapes, vkitti2, synthia, taskonomy, nyuv2) register from
#: ``mtwork.data.dense_check``.
CHECK_FORMATS = Registry("data check format")
CHECK_FORMATS.register("bdd100k")(check_bdd100k)


def check_dataset(fmt: str, root: str | os.PathLike, progress: bool = True):
    """Check ``root`` as a data set of format ``fmt`` (KeyError listing the known formats)."""
    import mtwork.data.dense_check  # noqa: F401  (registers the dense formats)

    return CHECK_FORMATS.get(fmt)(root, progress=progress)


def run_check_cli(root: str | os.PathLike, json_out: Optional[str | os.PathLike] = None, fmt: str = "bdd100k") -> int:
    """Print the report as text, write it as JSON to ``json_out`` if given (atomically).

    Returns the process exit code: 0 when no problem was found, 1 otherwise.
    """
    report = check_dataset(fmt, root)
    print(report.to_text(), end="")
    if json_out is not None:
        write_json(json_out, report.to_dict())
    return 0 if report.ok else 1
