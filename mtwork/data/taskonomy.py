"""Taskonomy in the Omnidata folder layout: pseudo-semantic labels, z-buffer depth, surface normals.

Release: the Taskonomy component of the Omnidata starter dataset, as ``omnitools.download rgb normal
depth_zbuffer segment_semantic point_info --components taskonomy --subset tiny --dest ROOT`` writes it
(the Taskonomy data README points there since 2021)::

    rgb/taskonomy/{building}/point_{p}_view_{v}_domain_rgb.png                 512x512 RGB
    depth_zbuffer/taskonomy/{building}/point_{p}_view_{v}_domain_depth_zbuffer.png   uint16, 1/512 m
    normal/taskonomy/{building}/point_{p}_view_{v}_domain_normal.png           RGB, 127.5-centred
    segment_semantic/taskonomy/{building}/point_{p}_view_{v}_domain_segment_semantic.png   uint8 0..17
    point_info/taskonomy/{building}/point_{p}_view_{v}_domain_point_info.json  (optional) camera

Files are matched by (building, point, view); the domain part of the name is not relied on (older
copies name the semantic files ``..._domain_segmentsemantic.png``). A ROOT without the ``taskonomy``
component level (``rgb/{building}/...``) is read too.

Decoding, as the Taskonomy data README (and the 2D-3D-S README for the shared conventions) specifies:

* **semseg**: 0 = uncertain (ignore: "masked during learning"), 1 = background, 2..17 the 16 COCO
  classes of ``coco_selected_classes.txt`` (``NATIVE_CLASSES``) -> ids of the label space
  (``taskonomy17`` by default: background 0, bottle 1, ..., vase 16). Values above 17 are an error
  (Omnidata's loader lists a longer COCO class list for its taskonomy component: such a copy is
  reported, not misread).
* **depth**: metres = value / 512 (max range 128 m); 65535 marks missing mesh: invalid (0), as is 0.
* **normals**: n = value / 255 * 2 - 1 per channel ("127-centred"), in the convention 2D-3D-S states
  for its camera-relative normals: the NYU RGB-D one, x right, y down, z towards the viewer
  (Omnidata's loader documents the same: "+X right, +Y down, +Z from screen to me"). z is negated for
  mtwork's camera frame (x right, y down, z forward): ``mtwork.data.nyuv2.nyu_normals_to_camera``.
  Pixels at (128, 128, 128) or (127, 127, 127) ("missing mesh") are invalid. The generation script
  (the annotator's ``create_normal_images.py``) writes Blender's normal pass n as (1 - (n_x/2 + 0.5),
  n_y/2 + 0.5, n_z/2 + 0.5), whose axes depend on Blender's pass convention, not confirmed here:
  ``mtwork data check --format taskonomy`` compares the files with their depth and names the
  ``normals_axes`` option that fixes a disagreement.
* **camera** (only when point_info exists): square pixels, fx = fy = (W / 2) / tan(fov / 2) from
  ``field_of_view_rads``, principal point at the image centre ((W - 1) / 2, (H - 1) / 2).

Splits: the official building splits. ``split_table`` is ``"tiny"`` (built in: 25 train / 5 val /
5 test buildings, Omnidata's ``train_val_test_tiny.csv``) or the path of an official
``train_val_test_<subset>.csv`` (columns id, train, val, test); ``split="all"`` takes every building
on disk; ``buildings`` overrides the list.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mtwork.data.dense import (
    BAD_CAMERA,
    CORRUPT_MASK,
    LABEL_WITHOUT_IMAGE,
    MISSING,
    DenseDataset,
    Entry,
    IndexProblem,
    ReaderError,
    check_intrinsics,
    ids_in_table,
    image_size,
    read_json,
    read_png,
)
from mtwork.data.nyuv2 import nyu_normals_to_camera
from mtwork.data.registry import DATASETS

#: Pixel values of ``segment_semantic`` (Taskonomy data README + coco_selected_classes.txt).
NATIVE_CLASSES: Dict[int, str] = dict(enumerate((
    "uncertain", "background", "bottle", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
)))
_KNOWN_IDS = np.zeros(256, dtype=bool)
_KNOWN_IDS[list(NATIVE_CLASSES)] = True
DEPTH_SCALE = 512.0
DEPTH_MISSING = 65535
#: Omnidata's train_val_test_tiny.csv.
TINY_SPLIT: Dict[str, Tuple[str, ...]] = {
    "train": ("hanson", "merom", "klickitat", "onaga", "leonardo", "marstons", "newfields", "pinesdale",
              "lakeville", "cosmos", "benevolence", "pomaria", "tolstoy", "shelbyville", "allensville",
              "wainscott", "beechwood", "coffeen", "stockman", "hiteman", "woodbine", "lindenwood", "forkland",
              "mifflinburg", "ranchester"),
    "val": ("wiconisco", "corozal", "collierville", "markleeville", "darden"),
    "test": ("ihlen", "muleshoe", "uvalda", "noxapater", "mcdade"),
}
#: Domain folder of each file kind.
DOMAINS = {"image": "rgb", "depth": "depth_zbuffer", "normals": "normal", "semseg": "segment_semantic",
           "camera": "point_info"}
_KIND_TASKS = {"depth": ("depth",), "normals": ("normals",), "semseg": ("semseg",), "camera": ()}
_NAME = re.compile(r"^point_(?P<point>\d+)_view_(?P<view>\d+)_domain_\w+\.(png|json)$")


def read_split_table(path: Path) -> Dict[str, Tuple[str, ...]]:
    """An official train_val_test_<subset>.csv -> {"train"|"val"|"test": buildings}."""
    out: Dict[str, List[str]] = {"train": [], "val": [], "test": []}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for split in out:
                if str(row.get(split, "0")).strip() == "1":
                    out[split].append(row["id"].strip())
    return {k: tuple(v) for k, v in out.items()}


@DATASETS.register("taskonomy")
class TaskonomyDataset(DenseDataset):
    """Taskonomy ``split`` of ``root`` (layout, units and splits in the module docstring)."""

    name = "taskonomy"
    TASKS = ("semseg", "depth", "normals", "edges")
    SPLITS = ("train", "val", "test", "all")
    CHECK_SPLITS = ("all",)
    DEFAULT_LABEL_SPACE = "taskonomy17"
    TASK_FILES = {"semseg": ("semseg",), "depth": ("depth",), "normals": ("normals",), "edges": ()}
    OPTIONAL_FILES = {"normals": ("camera",)}

    def __init__(self, root, split, tasks=None, transform=None, label_space=None, strict=True, *,
                 split_table: str = "tiny", buildings: Optional[Sequence[str]] = None, **kwargs):
        if buildings is not None:
            self.buildings: Optional[Tuple[str, ...]] = tuple(buildings)
        elif split == "all":
            self.buildings = None
        else:
            table = TINY_SPLIT if split_table == "tiny" else read_split_table(Path(split_table))
            self.buildings = table.get(split, ())
        super().__init__(root, split, tasks, transform, label_space, strict, **kwargs)

    def _domain_dir(self, kind: str) -> Path:
        top = self.root / DOMAINS[kind]
        return top / "taskonomy" if (top / "taskonomy").is_dir() else top

    def layout_hint(self) -> str:
        which = "any building" if self.buildings is None else \
            f"the {self.split} buildings ({', '.join(self.buildings[:4])}{', ...' if len(self.buildings) > 4 else ''})"
        return (f"expected rgb/taskonomy/<building>/point_*_view_*_domain_rgb.png for {which}; "
                "split='all' takes every building on disk")

    def _index(self) -> Tuple[List[Entry], List[IndexProblem]]:
        problems: List[IndexProblem] = []
        rgb_root = self._domain_dir("image")
        if not rgb_root.is_dir():
            return [], [IndexProblem(MISSING, str(rgb_root), "rgb folder missing")]
        on_disk = sorted(p.name for p in rgb_root.iterdir() if p.is_dir())
        buildings = on_disk if self.buildings is None else [b for b in self.buildings if b in on_disk]
        entries: List[Entry] = []
        for building in buildings:
            images = self._views(rgb_root / building)
            building_entries = {key: Entry(f"{building}/point_{key[0]}_view_{key[1]}", path, meta={"building": building})
                                for key, path in images.items()}
            for kind in ("semseg", "depth", "normals", "camera"):
                folder = self._domain_dir(kind) / building
                tasks = _KIND_TASKS[kind]
                if not folder.is_dir():
                    if kind != "camera":
                        problems.append(IndexProblem(MISSING, str(folder), f"{DOMAINS[kind]} folder of building "
                                                     f"{building} missing", tasks))
                    continue
                found = self._views(folder)
                for key, entry in building_entries.items():
                    if key in found:
                        entry.files[kind] = found.pop(key)
                    elif kind != "camera":
                        problems.append(IndexProblem(MISSING, str(folder / f"point_{key[0]}_view_{key[1]}_domain_"
                                                                  f"{DOMAINS[kind]}.png"),
                                                     f"{kind} file missing for image {entry.image}", tasks))
                for key, path in sorted(found.items()):
                    problems.append(IndexProblem(LABEL_WITHOUT_IMAGE, str(path), f"{kind} file has no rgb image", tasks))
            entries.extend(building_entries.values())
        entries.sort(key=lambda e: e.name)
        return entries, problems

    @staticmethod
    def _views(folder: Path) -> Dict[Tuple[int, int], Path]:
        out: Dict[Tuple[int, int], Path] = {}
        for path in sorted(folder.iterdir()):
            match = _NAME.match(path.name)
            if match and path.is_file():
                out[(int(match.group("point")), int(match.group("view")))] = path
        return out

    # -- file kinds ---------------------------------------------------------------------------------
    def read_semseg(self, entry: Entry) -> np.ndarray:
        path = entry.files["semseg"]
        ids = read_png(path, "segment_semantic")
        if ids.ndim == 3:  # a copy saved as RGB(A) with the id in every channel
            ids = ids[..., 0]
        if ids.dtype != np.uint8:
            raise ReaderError(CORRUPT_MASK, path, f"segment_semantic must be an 8-bit PNG, got {ids.dtype}")
        ids_in_table(ids, _KNOWN_IDS, path, "segment_semantic")
        if not hasattr(self, "_lut_cache"):
            self._lut_cache = self.label_space.lookup_table(self.name, NATIVE_CLASSES)
        return self._lut_cache[ids]

    def read_depth(self, entry: Entry) -> np.ndarray:
        path = entry.files["depth"]
        stored = read_png(path, "depth_zbuffer")
        if stored.ndim != 2 or stored.dtype != np.uint16:
            raise ReaderError(CORRUPT_MASK, path, f"depth_zbuffer must be a single-channel 16-bit PNG, got shape "
                              f"{stored.shape} {stored.dtype}")
        valid = (stored > 0) & (stored != DEPTH_MISSING)
        return np.where(valid, stored.astype(np.float32) / DEPTH_SCALE, 0.0).astype(np.float32)

    def read_normals(self, entry: Entry) -> np.ndarray:
        path = entry.files["normals"]
        rgb = read_png(path, "normal")
        if rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.dtype != np.uint8:
            raise ReaderError(CORRUPT_MASK, path, f"normal must be an 8-bit RGB PNG, got shape {rgb.shape} {rgb.dtype}")
        rgb = rgb[..., :3]
        missing = np.all((rgb == 127) | (rgb == 128), axis=-1)
        vectors = rgb.astype(np.float64) / 255.0 * 2.0 - 1.0
        vectors[missing] = 0.0
        return nyu_normals_to_camera(vectors)

    def read_camera(self, entry: Entry) -> np.ndarray:
        path = entry.files["camera"]
        data = read_json(path, "point_info")
        fov = data.get("field_of_view_rads") if isinstance(data, dict) else None
        if isinstance(fov, bool) or not isinstance(fov, (int, float)) or not 0 < fov < math.pi:
            raise ReaderError(BAD_CAMERA, path, f"'field_of_view_rads' must be a number in (0, pi), got {fov!r}")
        height, width = image_size(entry.image)
        focal = (width / 2.0) / math.tan(fov / 2.0)
        return check_intrinsics((focal, focal, (width - 1) / 2.0, (height - 1) / 2.0), path)
