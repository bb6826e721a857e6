"""``mtwork data check`` for the dense-label formats (cityscapes, vkitti2, synthia, taskonomy, nyuv2).

``check_dense(fmt, root)`` indexes each of the format's check splits with its reader (``strict=False``),
then decodes every image and every label file once through the same ``read_<kind>`` code the reader
trains with, and reports every problem found, each naming its file: a missing image or label file, a
label without an image, an unreadable or corrupt file, a label map whose size differs from its image,
an id outside the dataset's table, a colour outside colors.txt, a bad camera file. It never raises on
bad data: a broken file is a problem in the report and the check goes on.

Besides counts (images, labeled images per task, semseg pixels per class of the reader's default label
space, valid-depth fraction and range), formats whose normals come from files (taskonomy, nyuv2) get
their axis convention checked: on the first ``normals_sample`` images with depth, normals and a camera,
the stored normals are compared with ``normals_from_depth`` of the stored depth. A median angle above
``NORMALS_FRAME_LIMIT`` degrees means the files do not use the convention the reader decodes (an axis
is flipped), which would silently corrupt every normals number: it is a problem.
"""
from __future__ import annotations

import functools
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from mtwork.data.bdd100k import DatasetError
from mtwork.data.check import CHECK_FORMATS, TEXT_PROBLEM_LIMIT, Problem
from mtwork.data.dense import NORMALS_FRAME, DenseDataset
from mtwork.data.registry import dataset_names, get_reader

#: Median angle (degrees) between stored and depth-derived normals above which the axes disagree.
#: Right conventions give a few degrees on rendered data and ~20-30 on Kinect depth; one flipped axis
#: puts whole surfaces (walls or floor) near 90-180 degrees.
NORMALS_FRAME_LIMIT = 60.0


@dataclass
class DenseCheckReport:
    """Outcome of ``check_dense``; per-split dicts are keyed by split name.

    images: {split: n}; labeled: {split: {task: n}}; semseg_pixels: {split: {class or "ignore": n}}
    depth: {split: {"valid_fraction", "min_m", "max_m"}}; normals_frame: {split: {"images",
    "median_angle_deg"}} (formats with normal files only)
    """

    format: str
    root: str
    splits: Tuple[str, ...]
    label_space: Optional[str] = None
    images: Dict[str, int] = field(default_factory=dict)
    labeled: Dict[str, Dict[str, int]] = field(default_factory=dict)
    semseg_pixels: Dict[str, Dict[str, int]] = field(default_factory=dict)
    depth: Dict[str, Dict[str, float]] = field(default_factory=dict)
    normals_frame: Dict[str, Dict[str, float]] = field(default_factory=dict)
    problems: List[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, path: Path | str, message: str) -> None:
        problem = Problem(kind, str(path), message)
        if problem not in self._seen:
            self._seen.add(problem)
            self.problems.append(problem)

    def __post_init__(self):
        self._seen = set(self.problems)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": self.format, "root": self.root, "ok": self.ok, "splits": list(self.splits),
            "label_space": self.label_space, "images": self.images, "labeled": self.labeled,
            "semseg_pixels": self.semseg_pixels, "depth": self.depth, "normals_frame": self.normals_frame,
            "problem_counts": dict(Counter(p.kind for p in self.problems)),
            "problems": [p.to_dict() for p in self.problems],
        }

    def to_text(self) -> str:
        lines = [f"{self.format} check of {self.root}: " + ("OK" if self.ok else f"{len(self.problems)} problem(s)"), ""]
        for split in self.splits:
            if split not in self.images:
                continue
            lines.append(f"[{split}] images: {self.images[split]:,}")
            labeled = self.labeled.get(split, {})
            if labeled:
                lines.append("  labeled: " + ", ".join(f"{t} {n:,}" for t, n in labeled.items()))
            depth = self.depth.get(split)
            if depth:
                lines.append(f"  depth: {100 * depth['valid_fraction']:.1f}% valid pixels, "
                             f"{depth['min_m']:.3g}..{depth['max_m']:.4g} m")
            frame = self.normals_frame.get(split)
            if frame:
                lines.append(f"  normals vs depth-derived normals: median {frame['median_angle_deg']:.1f} deg over "
                             f"{int(frame['images'])} image(s)")
            pixels = self.semseg_pixels.get(split)
            if pixels and sum(pixels.values()):
                total = sum(pixels.values())
                shown = ", ".join(f"{c} {100 * n / total:.1f}%" for c, n in pixels.items() if n)
                lines.append(f"  semseg pixels ({self.label_space}): {shown}")
        if self.problems:
            counts = Counter(p.kind for p in self.problems)
            lines.append("")
            lines.append("problems by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
            shown_problems = self.problems[:TEXT_PROBLEM_LIMIT]
            for p in shown_problems:
                lines.append(f"  [{p.kind}] {p.path}: {p.message}")
            if len(self.problems) > len(shown_problems):
                lines.append(f"  ... and {len(self.problems) - len(shown_problems)} more (see the JSON report)")
        return "\n".join(lines).rstrip() + "\n"


#: The 7 sign flips of the three axes tried when stored normals disagree with the depth.
_SIGNS = tuple((x, y, z) for x in (1, -1) for y in (1, -1) for z in (1, -1) if (x, y, z) != (1, 1, 1))


def _angles(stored: np.ndarray, derived: np.ndarray) -> np.ndarray:
    """Angles (degrees) between two normal maps where both are valid."""
    both = (np.linalg.norm(stored, axis=-1) > 0.5) & (np.linalg.norm(derived, axis=-1) > 0.5)
    dot = np.clip(np.sum(stored[both].astype(np.float64) * derived[both], axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(dot))


def _check_split(report: DenseCheckReport, ds: DenseDataset, normals_sample: int, progress: bool) -> None:
    from mtwork.tasks.dense_labels import normals_from_depth

    split = ds.split
    for p in ds.index_problems:
        report.add(p.kind, p.path, p.message)
    report.images[split] = len(ds.entries)
    report.labeled[split] = {t: 0 for t in ds.tasks}
    classes = ds.class_names
    semseg_counts = np.zeros(256, dtype=np.int64)
    depth_valid = depth_total = 0
    depth_min, depth_max = np.inf, 0.0
    medians: List[float] = []
    flipped_medians: Dict[Tuple[int, int, int], List[float]] = {s: [] for s in _SIGNS}
    normals_dir: Optional[str] = None
    for entry in tqdm(ds.entries, desc=f"checking {ds.name} {split}", unit="image", file=sys.stderr,
                      disable=not progress):
        image, values = ds.decode(entry, ds.tasks, on_problem=lambda err: report.add(err.kind, err.path, err.detail))
        if image is None:
            continue
        size = image.shape[:2]
        for task in ds.tasks:
            needed = ds.TASK_FILES.get(task, ())
            if ds.has_label(entry, task) and all(k in values for k in needed):
                report.labeled[split][task] += 1
        if "semseg" in values:
            semseg_counts += np.bincount(values["semseg"].ravel(), minlength=256)[:256]
        if "depth" in values:
            depth = values["depth"]
            valid = depth > 0
            depth_valid += int(valid.sum())
            depth_total += depth.size
            if valid.any():
                depth_min = min(depth_min, float(depth[valid].min()))
                depth_max = max(depth_max, float(depth[valid].max()))
        if "normals" in values and "depth" in values and len(medians) < normals_sample:
            camera = values.get("camera")
            if camera is None:
                camera = ds.reference_intrinsics(size)
            if camera is not None:
                derived = normals_from_depth(values["depth"], camera)
                angles = _angles(values["normals"], derived)
                if angles.size:
                    medians.append(float(np.median(angles)))
                    normals_dir = normals_dir or str(Path(entry.files["normals"]).parent)
                    for signs in _SIGNS:
                        flipped_medians[signs].append(float(np.median(_angles(values["normals"] * signs, derived))))
    if classes:
        report.semseg_pixels[split] = {**{c: int(semseg_counts[i]) for i, c in enumerate(classes)},
                                       "ignore": int(semseg_counts[255])}
    if depth_total:
        report.depth[split] = {"valid_fraction": depth_valid / depth_total,
                               "min_m": depth_min if depth_valid else 0.0, "max_m": depth_max}
    if medians:
        median = float(np.median(medians))
        report.normals_frame[split] = {"images": len(medians), "median_angle_deg": median}
        if median > NORMALS_FRAME_LIMIT:
            best = min(_SIGNS, key=lambda signs: float(np.median(flipped_medians[signs])))
            applied = tuple(int(v) for v in (ds.normals_axes if ds.normals_axes is not None else (1, 1, 1)))
            fix = tuple(a * b for a, b in zip(best, applied))
            report.add(NORMALS_FRAME, normals_dir, f"stored normals differ from the normals of the stored depth by a "
                       f"median {median:.0f} deg over {len(medians)} image(s): their axes are not the convention the "
                       f"{ds.name} reader decodes (see its docstring); with normals_axes={fix} the median is "
                       f"{float(np.median(flipped_medians[best])):.0f} deg")


def check_dense(fmt: str, root: str | os.PathLike, splits: Optional[Sequence[str]] = None, progress: bool = True,
                normals_sample: int = 8, **reader_options: Any) -> DenseCheckReport:
    """Check the ``fmt`` layout under ``root`` for ``splits`` (default: the format's CHECK_SPLITS)."""
    reader = get_reader(fmt)
    root = Path(root)
    optional = () if splits else tuple(reader.OPTIONAL_CHECK_SPLITS)
    splits = tuple(splits or reader.CHECK_SPLITS)
    report = DenseCheckReport(format=fmt, root=str(root), splits=splits + optional,
                              label_space=reader.DEFAULT_LABEL_SPACE)
    if not root.is_dir():
        report.add("missing", root, "data set root directory not found")
        return report
    for split in splits + optional:
        try:
            ds = reader(root, split, strict=False, allow_empty=True, **{**reader.CHECK_OPTIONS, **reader_options})
        except DatasetError as err:
            report.add("missing", root, f"{split}: {err}")
            continue
        if not ds.entries:
            if split in optional:
                continue  # a copy without this split is complete
            if not any(p.kind == "missing" for p in ds.index_problems):
                report.add("missing", root, f"{split}: no images found ({ds.layout_hint()})")
        _check_split(report, ds, normals_sample, progress)
    return report


def _register_formats() -> None:
    for name in dataset_names():
        reader = get_reader(name)
        if isinstance(reader, type) and issubclass(reader, DenseDataset) and name not in CHECK_FORMATS:
            CHECK_FORMATS.register(name)(functools.partial(check_dense, name))


_register_formats()
