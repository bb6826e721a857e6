"""BDD100K: class lists, on-disk layout, the det_20 JSON reader and the multi-task dataset.

This module is the one place for BDD100K facts (class lists, label ids, palettes, units). SynthDrive
writes exactly this layout, so the same code reads the generated default and the real data set.

Layout under ROOT (real BDD100K, plus SynthDrive's depth extra)::

    images/100k/{train,val}/<name>.jpg          detection + drivable image set (real: 1280x720)
    images/10k/{train,val}/<name>.jpg           segmentation image set (overlaps the 100k set by name)
    labels/det_20/det_{train,val}.json          Scalabel frames (see ``load_det_frames``)
    labels/attributes/attributes_{train,val}.json  Scalabel frames {name, attributes} (mtwork extra, below)
    labels/drivable/masks/{train,val}/<stem>.png  uint8, on-disk ids 0 direct, 1 alternative, 2 background
    labels/sem_seg/masks/{train,val}/<stem>.png   uint8 Cityscapes train ids 0..18, 255 ignore
    labels/depth/{train,val}/<stem>.png           uint16 z-depth in 1/256 m, 0 = invalid (SynthDrive only)
    labels/camera/{train,val}/<stem>.json         pinhole camera of the image (SynthDrive only, see below)

Derived labels (no file of their own): ``normals`` from the depth PNG and the camera file, ``edges``
from the image (``mtwork.tasks.dense_labels``). Every image carries an edge label; an image carries a
normals label iff it has a depth PNG, and then its camera file must exist.

Camera files follow the Cityscapes ``camera/*.json`` style::

    {"extrinsic": {"x": 0, "y": 0, "z": <camera height above the road, m>,
                   "pitch": <rad>, "roll": 0, "yaw": 0},
     "intrinsic": {"fx": px, "fy": px, "u0": px, "v0": px}}

Intrinsics are in pixels of the image *on disk*, with pixel centres at integer coordinates (the
OpenCV convention: pixel (row v, column u) looks along ((u - u0)/fx, (v - v0)/fy, 1) in the camera
frame x right, y down, z forward). Only ``intrinsic`` is read; Cityscapes' stereo ``baseline`` is
absent (SynthDrive is monocular) and not needed.

Two conventions worth knowing:

* **Drivable ids.** The official toolkit (``bdd100k/label/label.py``) stores drivable masks as
  0 = direct, 1 = alternative, 2 = background. mtwork's training ids (``DRIVABLE_CLASSES``, the batch
  contract) are 0 = background, 1 = direct, 2 = alternative. ``decode_drivable`` is the one mapping
  between them; everything that reads a mask file goes through it.
* **Boxes.** Scalabel ``box2d`` is in inclusive pixel indices (x2 is the last covered column; the toolkit
  converts to COCO with ``w = x2 - x1 + 1``). ``load_det_frames`` returns continuous pixel-edge
  coordinates instead (x2 + 1, y2 + 1), so a box scales exactly like the mask it outlines.

Official detection protocol (``bdd100k`` 1.0.1 ``configs/det.toml`` with scalabel's COCO conversion):
categories are renamed by ``NAME_MAPPING`` (bike -> bicycle, ...); a category of ``DET_CATEGORIES`` is
an object of that class; a category of ``IGNORED_MAPPING`` ("other person", "other vehicle",
"trailer") and any box whose label attribute ``crowd`` is true is an **ignore region** of the class
it maps to (COCO ``iscrowd=1``: a detection of that class lying on it is neither a true nor a false
positive, and missing it costs nothing); any other category is skipped and counted. The readers
return ignore regions only when asked (``ignore_regions=True``): the dataset does, for training (where
FCOS leaves them out of the classification loss, ``mtwork.tasks.fcos``) and evaluation; the data check
and the caption writer count objects without them.

Domains from frame attributes (``attributes=`` of ``BDD100KDataset``): BDD100K frames carry
``attributes`` {weather, timeofday, scene} (values in ``ATTRIBUTE_VALUES``). The attributes of an
image are looked up **by file name** in these frame lists, first found per key wins:

1. ``labels/det_20/det_{train,val}.json`` (every split: an image of the 10k set may sit in the other
   split of the 100k set; attributes belong to the image, not to a split);
2. ``labels/attributes/attributes_{train,val}.json``: an mtwork extra, Scalabel frames with ``name``
   and ``attributes`` only (no labels). SynthDrive writes it for every image it generates, so its
   segmentation-only images have attributes too; for real BDD100K a user can write one for the 10k
   images that are not in the 100k set (the official layout has no frame list with their attributes).

So semseg/drivable/depth images get the attributes of the same-named det frame. An image without a
known value for a filtered key is excluded from the filtered domain and counted
(``BDD100KDataset.filter_counts["unattributed"]``).
"""
from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from mtwork.data.batch import IGNORE_INDEX
from mtwork.data.codecs import JPEG_REDUCTIONS, decode_grey8_png, decode_jpeg_rgb
from mtwork.errors import UserError

# ---------------------------------------------------------------------------------------------
# Class lists and palettes
# ---------------------------------------------------------------------------------------------

#: The 10 evaluated detection categories in the official order; COCO category_id = index + 1.
DET_CATEGORIES: Tuple[str, ...] = (
    "pedestrian",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "traffic light",
    "traffic sign",
)
DET_INDEX: Dict[str, int] = {name: i for i, name in enumerate(DET_CATEGORIES)}

#: Official ``ignored_mapping``: these categories are ignore regions (COCO iscrowd=1) of the class
#: they map to, neither scored as that class nor dropped.
IGNORED_MAPPING: Dict[str, str] = {"other person": "pedestrian", "other vehicle": "car", "trailer": "truck"}
#: Official ``name_mapping``: older label names, renamed before anything else.
NAME_MAPPING: Dict[str, str] = {
    "bike": "bicycle", "caravan": "car", "motor": "motorcycle", "person": "pedestrian", "van": "car",
}

#: Frame attribute values of BDD100K labels (the domains of the DG protocol).
ATTRIBUTE_VALUES: Dict[str, Tuple[str, ...]] = {
    "weather": ("clear", "partly cloudy", "overcast", "rainy", "snowy", "foggy", "undefined"),
    "timeofday": ("daytime", "night", "dawn/dusk", "undefined"),
    "scene": ("city street", "highway", "residential", "parking lot", "tunnel", "gas stations", "undefined"),
}

#: The 19 Cityscapes train-id classes (semseg mask value = index); 255 = ignore.
SEMSEG_CLASSES: Tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
SEMSEG_INDEX: Dict[str, int] = {name: i for i, name in enumerate(SEMSEG_CLASSES)}

#: Semseg train id of each detection category (the same object in both label kinds).
DET_TO_SEMSEG: Tuple[int, ...] = tuple(
    SEMSEG_INDEX["person" if c == "pedestrian" else c] for c in DET_CATEGORIES
)

#: Drivable training ids (the batch contract): 0 background, 1 direct (ego lane), 2 alternative.
DRIVABLE_CLASSES: Tuple[str, ...] = ("background", "direct", "alternative")
#: On-disk value of each drivable class in BDD100K mask files (official toolkit ids).
DRIVABLE_DISK_IDS: Dict[str, int] = {"direct": 0, "alternative": 1, "background": 2}

# Lookup tables, 256 entries so any uint8 value maps; unknown values become IGNORE_INDEX.
_DRIVABLE_DECODE = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_DRIVABLE_ENCODE = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _train_id, _name in enumerate(DRIVABLE_CLASSES):
    _DRIVABLE_DECODE[DRIVABLE_DISK_IDS[_name]] = _train_id
    _DRIVABLE_ENCODE[_train_id] = DRIVABLE_DISK_IDS[_name]

#: Depth PNG unit: stored value / DEPTH_SCALE = metres (uint16, so at most 255.996 m); 0 = invalid.
DEPTH_SCALE = 256.0

#: Cityscapes colours (RGB) of the 19 semseg classes, for visualisation.
SEMSEG_PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
#: Colours of the drivable training ids (toolkit colours; background black).
DRIVABLE_PALETTE: Tuple[Tuple[int, int, int], ...] = ((0, 0, 0), (219, 94, 86), (86, 211, 219))
#: Bright, mutually distinct box colours for the 10 detection categories.
DET_PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (255, 60, 60), (255, 150, 0), (0, 200, 255), (60, 90, 255), (255, 230, 0),
    (180, 0, 255), (0, 255, 120), (255, 0, 200), (255, 255, 255), (140, 255, 0),
)

# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------

SPLITS = ("train", "val")
IMAGE_SETS = ("100k", "10k")  # detection/drivable set, segmentation set
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TASKS = ("semseg", "drivable", "det", "depth", "normals", "edges")
#: Tasks whose label is computed from other files rather than read from a file of its own.
DERIVED_TASKS = ("normals", "edges")


def image_dir(root: str | os.PathLike, image_set: str, split: str) -> Path:
    return Path(root) / "images" / image_set / split


def det_json_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "labels" / "det_20" / f"det_{split}.json"


def attributes_json_path(root: str | os.PathLike, split: str) -> Path:
    """The frame list {name, attributes} of a split (mtwork extra, see the module docstring)."""
    return Path(root) / "labels" / "attributes" / f"attributes_{split}.json"


def mask_dir(root: str | os.PathLike, task: str, split: str) -> Path:
    """Directory of per-image PNG labels of a mask task ("semseg", "drivable" or "depth")."""
    sub = {"semseg": ("sem_seg", "masks"), "drivable": ("drivable", "masks"), "depth": ("depth",)}
    if task not in sub:
        raise ValueError(f"no mask directory for task '{task}' (known: {', '.join(sub)})")
    return Path(root, "labels", *sub[task], split)


def camera_dir(root: str | os.PathLike, split: str) -> Path:
    """Directory of the per-image camera JSON files (``<stem>.json``, layout in the module docstring)."""
    return Path(root, "labels", "camera", split)


def list_images(directory: Path) -> Dict[str, Path]:
    """{file name: path} of the images in ``directory`` (empty when it does not exist)."""
    if not directory.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(directory.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    }


def list_masks(directory: Path) -> Dict[str, Path]:
    """{stem: path} of the PNG masks in ``directory`` (empty when it does not exist)."""
    if not directory.is_dir():
        return {}
    return {p.stem: p for p in sorted(directory.glob("*.png")) if not p.name.startswith(".")}


# ---------------------------------------------------------------------------------------------
# Mask decoding
# ---------------------------------------------------------------------------------------------


def _lookup(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``table[ids]`` for uint8 ids and a 256-entry uint8 table, as a read-only array.

    ``bytes.translate`` walks the bytes with the table in C: 1.6x faster than ``np.take`` and 2.9x
    faster than ``table[ids]`` on a 1280x720 mask, which both widen every id to int64 first.
    """
    ids = np.asarray(ids)
    if ids.dtype != np.uint8:
        return table[ids]
    return np.frombuffer(ids.tobytes().translate(table.tobytes()), dtype=np.uint8).reshape(ids.shape)


def decode_drivable(disk: np.ndarray) -> np.ndarray:
    """On-disk drivable ids (0 direct, 1 alt, 2 bg) -> training ids (0 bg, 1 direct, 2 alt), uint8."""
    return _lookup(_DRIVABLE_DECODE, disk)


def encode_drivable(train_ids: np.ndarray) -> np.ndarray:
    """Training drivable ids -> on-disk ids (inverse of ``decode_drivable``), uint8."""
    return _lookup(_DRIVABLE_ENCODE, train_ids)


def depth_to_metres(stored: np.ndarray) -> np.ndarray:
    """uint16 depth PNG values -> float32 metres; 0 (invalid) stays 0."""
    return stored.astype(np.float32) / DEPTH_SCALE


def metres_to_depth(depth_m: np.ndarray) -> np.ndarray:
    """float metres -> uint16 PNG values (1/256 m); values <= 0 or non-finite become 0 = invalid."""
    depth = np.where(np.isfinite(depth_m) & (depth_m > 0), depth_m, 0.0)
    return np.clip(np.rint(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# det_20 JSON
# ---------------------------------------------------------------------------------------------


class DatasetError(UserError, ValueError):
    """Bad data on disk; the message names the file (and key or value) at fault."""


class EmptyDomainError(DatasetError):
    """No image of the split carries a requested label and matches the attribute filter: a domain that
    has no labels of a task (training cannot use it; evaluation reports the task as unscored)."""


class DetBox(NamedTuple):
    """One box of a det frame: class index 0..9 and pixel-edge coordinates (x2 = Scalabel x2 + 1).

    ``ignore``: an ignore region of class ``label`` (an ``IGNORED_MAPPING`` category or a crowd box),
    not an object to detect (COCO iscrowd=1).
    """

    label: int
    x1: float
    y1: float
    x2: float
    y2: float
    ignore: bool = False


def det_category(category: str) -> Optional[Tuple[int, bool]]:
    """Official reading of a Scalabel category: (class index 0..9, is an ignore region), or None for a
    category the detection protocol does not know (``NAME_MAPPING`` first, then the class list, then
    ``IGNORED_MAPPING``, as the toolkit's ``process_category``)."""
    name = NAME_MAPPING.get(category, category)
    if name in DET_INDEX:
        return DET_INDEX[name], False
    if name in IGNORED_MAPPING:
        return DET_INDEX[IGNORED_MAPPING[name]], True
    return None


def _is_crowd(label: Mapping[str, Any]) -> bool:
    attributes = label.get("attributes")
    return isinstance(attributes, dict) and bool(attributes.get("crowd", False))


def _read_box2d(label: Mapping[str, Any], lwhere: str, on_problem: Callable[[str], None]) -> Optional[Tuple[float, ...]]:
    """(x1, y1, x2, y2) of a label's box2d as written (inclusive pixel indices), None after a problem."""
    category = label["category"]
    box = label.get("box2d")
    if not isinstance(box, dict):
        on_problem(f"{lwhere} ({category}): missing key 'box2d'")
        return None
    try:
        values = tuple(float(box[k]) for k in ("x1", "y1", "x2", "y2"))
    except (KeyError, TypeError, ValueError):
        on_problem(f"{lwhere} ({category}): box2d needs numeric x1, y1, x2, y2, got {box!r}")
        return None
    if not all(np.isfinite(values)):
        on_problem(f"{lwhere} ({category}): box2d has a non-finite value {box!r}")
        return None
    return values


def _walk_frames(data: Any, source: str, on_problem: Callable[[str], None]):
    """Yield (where, name, frame) for every well-formed, not repeated frame of a Scalabel frame list."""
    if isinstance(data, dict) and isinstance(data.get("frames"), list):
        data = data["frames"]  # Scalabel's {"frames": [...], "config": ...} form
    if not isinstance(data, list):
        on_problem(f"{source}: expected a JSON list of frames, got {type(data).__name__}")
        return
    seen = set()
    for f_idx, frame in enumerate(data):
        where = f"{source}: frame {f_idx}"
        if not isinstance(frame, dict) or not isinstance(frame.get("name"), str):
            on_problem(f"{where}: missing key 'name' (a string)")
            continue
        name = frame["name"]
        where = f"{source}: frame '{name}'"
        if name in seen:
            on_problem(f"{where}: appears twice")
            continue
        seen.add(name)
        yield where, name, frame


def _frame_labels(frame: Mapping[str, Any], where: str, on_problem: Callable[[str], None]) -> Optional[list]:
    labels = frame.get("labels")
    if labels is None:  # no "labels" (or null): a labelled image with no objects
        return []
    if not isinstance(labels, list):
        on_problem(f"{where}: 'labels' must be a list, got {type(labels).__name__}")
        return None
    return labels


def parse_det_frames(
    data: Any,
    source: str,
    on_problem: Callable[[str], None],
    skipped: Optional[Counter] = None,
    ignore_regions: bool = False,
    ignored: Optional[Counter] = None,
) -> Dict[str, List[DetBox]]:
    """Walk decoded det_20 JSON -> {name: [DetBox]}, reporting each problem through ``on_problem``.

    Shared by ``load_det_frames`` (which raises on the first problem), the data checker (which
    collects them all) and ``mtwork score``. A frame or label with a problem is left out; the rest are
    returned. Follows the official toolkit (module docstring): a frame without "labels" (or with null)
    is a labeled image with no objects; categories are renamed by ``NAME_MAPPING``; ignore regions
    (``IGNORED_MAPPING`` categories, crowd boxes) are returned with ``ignore=True`` only when
    ``ignore_regions``, and counted in ``ignored`` either way (keyed by the category as written, or
    "crowd <class>"); unknown categories are skipped and counted in ``skipped``.
    """
    frames: Dict[str, List[DetBox]] = {}
    for where, name, frame in _walk_frames(data, source, on_problem):
        labels = _frame_labels(frame, where, on_problem)
        if labels is None:
            continue
        boxes: List[DetBox] = []
        for l_idx, label in enumerate(labels):
            lwhere = f"{where} label {l_idx}"
            if not isinstance(label, dict) or not isinstance(label.get("category"), str):
                on_problem(f"{lwhere}: missing key 'category' (a string)")
                continue
            category = label["category"]
            resolved = det_category(category)
            if resolved is None:
                if skipped is not None:
                    skipped[category] += 1
                continue
            index, ignore = resolved
            if not ignore and _is_crowd(label):
                ignore, category = True, f"crowd {DET_CATEGORIES[index]}"
            box = _read_box2d(label, lwhere, on_problem)
            if box is None:
                continue
            if ignore and ignored is not None:
                ignored[category] += 1
            if ignore and not ignore_regions:
                continue
            x1, y1, x2, y2 = box
            # Inclusive pixel indices -> pixel edges (see module docstring).
            boxes.append(DetBox(index, x1, y1, x2 + 1.0, y2 + 1.0, ignore))
        frames[name] = boxes
    return frames


def read_json(path: Path, what: str) -> Any:
    """The decoded JSON of ``path``; ``DatasetError`` naming the file (as ``what``) when it is missing
    or not JSON."""
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DatasetError(f"{path}: not valid JSON ({err})") from None


def _raise(message: str) -> None:
    raise DatasetError(message)


def load_det_frames(
    json_path: str | os.PathLike,
    skipped: Optional[Counter] = None,
    ignore_regions: bool = False,
    ignored: Optional[Counter] = None,
) -> Dict[str, List[DetBox]]:
    """Read a det_20 JSON file -> {image name: [DetBox(label 0..9, x1, y1, x2, y2, ignore)]}.

    Boxes are in pixel-edge coordinates (Scalabel x2 + 1). Frames without "labels" map to an empty
    list (a det-labeled image with no objects). Ignore regions ("other vehicle", "trailer", crowd
    boxes, ...) are returned only with ``ignore_regions=True``; see ``parse_det_frames`` for
    ``skipped`` and ``ignored``. Raises ``DatasetError`` naming the file for unreadable JSON or a
    missing/invalid key.
    """
    path = Path(json_path)
    return parse_det_frames(read_json(path, "detection label file"), str(path), _raise, skipped,
                            ignore_regions, ignored)


def det_frames_to_coco(
    frames: Mapping[str, Sequence[DetBox]], image_sizes: Mapping[str, Tuple[int, int]]
) -> Dict[str, Any]:
    """Frames (from ``load_det_frames``) -> a COCO ground-truth dict for pycocotools.

    ``image_sizes``: {name: (H, W)} pixels. Images get ids 1..N in sorted name order; categories are
    ids 1..10 in ``DET_CATEGORIES`` order; bbox = [x1, y1, x2 - x1, y2 - y1] from pixel-edge boxes,
    which equals the toolkit's ``x2 - x1 + 1`` on the original inclusive Scalabel values; ignore
    regions get ``iscrowd=1``.
    """
    images, annotations = [], []
    for image_id, name in enumerate(sorted(frames), start=1):
        if name not in image_sizes:
            raise KeyError(f"det_frames_to_coco: no image size given for '{name}'")
        height, width = image_sizes[name]
        images.append({"id": image_id, "file_name": name, "height": int(height), "width": int(width)})
        for box in frames[name]:
            label, x1, y1, x2, y2 = box[:5]
            w, h = float(x2 - x1), float(y2 - y1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(x1), float(y1), w, h],
                    "area": w * h,
                    "iscrowd": int(bool(box[5]) if len(box) > 5 else 0),
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(DET_CATEGORIES)]
    return {"images": images, "annotations": annotations, "categories": categories}


# ---------------------------------------------------------------------------------------------
# Scalabel predictions (the format ``bdd100k.eval`` reads)
# ---------------------------------------------------------------------------------------------

#: One predicted box: class index 0..9, pixel-edge x1, y1, x2, y2 and the score.
DetPrediction = Tuple[int, float, float, float, float, float]


def parse_det_predictions(data: Any, source: str, on_problem: Callable[[str], None]) -> Dict[str, List[DetPrediction]]:
    """Scalabel prediction frames -> {name: [(label, x1, y1, x2, y2 pixel edges, score)]}.

    As the toolkit converts predictions: categories go through ``det_category`` (so an "other
    vehicle" prediction is a car prediction, ``NAME_MAPPING`` names are renamed); labels without
    box2d are skipped. An unknown category or a missing or non-finite score is a problem (the
    toolkit would fail on it).
    """
    frames: Dict[str, List[DetPrediction]] = {}
    for where, name, frame in _walk_frames(data, source, on_problem):
        labels = _frame_labels(frame, where, on_problem)
        if labels is None:
            continue
        preds: List[DetPrediction] = []
        for l_idx, label in enumerate(labels):
            lwhere = f"{where} label {l_idx}"
            if not isinstance(label, dict) or not isinstance(label.get("category"), str):
                on_problem(f"{lwhere}: missing key 'category' (a string)")
                continue
            resolved = det_category(label["category"])
            if resolved is None:
                known = ", ".join(DET_CATEGORIES + tuple(NAME_MAPPING) + tuple(IGNORED_MAPPING))
                on_problem(f"{lwhere}: unknown category '{label['category']}' (known: {known})")
                continue
            if label.get("box2d") is None:
                continue
            score = label.get("score")
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not np.isfinite(score):
                on_problem(f"{lwhere} ({label['category']}): 'score' must be a finite number, got {score!r}")
                continue
            box = _read_box2d(label, lwhere, on_problem)
            if box is None:
                continue
            x1, y1, x2, y2 = box
            preds.append((resolved[0], x1, y1, x2 + 1.0, y2 + 1.0, float(score)))
        frames[name] = preds
    return frames


def det_prediction_frame(name: str, boxes: Any, scores: Any, labels: Any) -> Dict[str, Any]:
    """One Scalabel prediction frame from pixel-edge boxes (N,4), scores (N,) and class ids (N,).

    box2d is written in Scalabel's inclusive pixel indices (x2 = edge x2 - 1), coordinates rounded to
    1e-4 px (below float32 resolution at BDD100K's 1280 px); label ids are "0".."N-1" per frame.
    """
    out = []
    for k, ((x1, y1, x2, y2), score, label) in enumerate(zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4).tolist(),
                                                            np.asarray(scores, dtype=np.float64).reshape(-1).tolist(),
                                                            np.asarray(labels).reshape(-1).tolist())):
        out.append({
            "id": str(k),
            "category": DET_CATEGORIES[int(label)],
            "box2d": {"x1": round(x1, 4), "y1": round(y1, 4), "x2": round(x2 - 1.0, 4), "y2": round(y2 - 1.0, 4)},
            "score": float(score),
        })
    return {"name": name, "labels": out}


# ---------------------------------------------------------------------------------------------
# Frame attributes (domains)
# ---------------------------------------------------------------------------------------------

#: A validated attribute filter: {attribute key: accepted values}.
AttributeFilter = Dict[str, FrozenSet[str]]


def attribute_filter(attributes: Mapping[str, Any]) -> AttributeFilter:
    """Validate ``{"timeofday": "daytime", "weather": ["clear", "partly cloudy"]}`` (a value or a list
    of accepted values per key) -> {key: frozenset(values)}. ValueError naming the key or value."""
    if not isinstance(attributes, Mapping) or not attributes:
        raise ValueError(f"attributes must be a non-empty mapping like {{'timeofday': 'daytime'}}, got {attributes!r}")
    out: AttributeFilter = {}
    for key, value in attributes.items():
        if key not in ATTRIBUTE_VALUES:
            raise ValueError(f"attributes: unknown key '{key}' (known: {', '.join(ATTRIBUTE_VALUES)})")
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, (list, tuple, set, frozenset)) or not values:
            raise ValueError(f"attributes.{key}: expected a value or a non-empty list of values, got {value!r}")
        for v in values:
            if v not in ATTRIBUTE_VALUES[key]:
                known = ", ".join(repr(k) for k in ATTRIBUTE_VALUES[key])
                raise ValueError(f"attributes.{key}: unknown value {v!r} (known: {known})")
        out[key] = frozenset(values)
    return out


def match_attributes(frame_attributes: Optional[Mapping[str, str]], filt: AttributeFilter) -> Optional[bool]:
    """True/False whether a frame's attributes pass ``filt``; None when a filtered key is unknown."""
    if frame_attributes is None or any(key not in frame_attributes for key in filt):
        return None
    return all(frame_attributes[key] in values for key, values in filt.items())


def parse_frame_attributes(data: Any, source: str, on_problem: Callable[[str], None]) -> Dict[str, Dict[str, str]]:
    """{name: {key: value}} of the ``ATTRIBUTE_VALUES`` keys with string values of each frame of a
    Scalabel frame list (frames without such attributes are left out; values are not checked here:
    the data check reports unknown ones, and a filter simply does not match them)."""
    out: Dict[str, Dict[str, str]] = {}
    for where, name, frame in _walk_frames(data, source, on_problem):
        attributes = frame.get("attributes")
        if attributes is None:
            continue
        if not isinstance(attributes, dict):
            on_problem(f"{where}: 'attributes' must be an object, got {type(attributes).__name__}")
            continue
        found = {k: v for k, v in attributes.items() if k in ATTRIBUTE_VALUES and isinstance(v, str)}
        if found:
            out[name] = found
    return out


def attribute_sources(root: str | os.PathLike) -> List[Path]:
    """The frame lists attributes are looked up in, in lookup order (module docstring)."""
    return [det_json_path(root, s) for s in SPLITS] + [attributes_json_path(root, s) for s in SPLITS]


def load_frame_attributes(
    root: str | os.PathLike,
    loaded: Optional[Mapping[Path, Any]] = None,
    on_problem: Optional[Callable[[Path, str], None]] = None,
) -> Dict[str, Dict[str, str]]:
    """{image name: {key: value}} from every existing file of ``attribute_sources(root)``; for each
    name and key the first source that has it wins. ``loaded``: {path: decoded JSON} already read
    (not read again). ``on_problem(path, message)``: default raises ``DatasetError``."""
    merged: Dict[str, Dict[str, str]] = {}
    for path in attribute_sources(root):
        report = _raise if on_problem is None else (lambda message, path=path: on_problem(path, message))
        if loaded is not None and path in loaded:
            data = loaded[path]
        elif path.is_file():
            try:
                data = read_json(path, "frame list")
            except DatasetError as err:
                report(str(err))
                continue
        else:
            continue
        for name, attributes in parse_frame_attributes(data, str(path), report).items():
            entry = merged.setdefault(name, {})
            for key, value in attributes.items():
                entry.setdefault(key, value)
    return merged


def domain_images(root: str | os.PathLike, split: str, attributes: Optional[Mapping[str, Any]] = None) -> List[Path]:
    """The image files of ``split`` (both image sets, one per file name, the 100k file winning, sorted by
    name) whose frame attributes pass ``attributes`` (None: all): a domain's unlabelled images, e.g. for
    self-supervised pretraining. Raises ``DatasetError`` naming the root when none is left."""
    root = Path(root)
    images: Dict[str, Path] = {}
    for image_set in reversed(IMAGE_SETS):
        images.update(list_images(image_dir(root, image_set, split)))
    if attributes is not None:
        filt = attribute_filter(attributes)
        known = load_frame_attributes(root)
        images = {name: path for name, path in images.items() if match_attributes(known.get(name), filt)}
    if not images:
        raise DatasetError(f"{root}: no {split} image" + (f" with attributes {dict(attributes)}" if attributes else ""))
    return [images[name] for name in sorted(images)]


# ---------------------------------------------------------------------------------------------
# File readers
# ---------------------------------------------------------------------------------------------


def read_image(path: Path) -> np.ndarray:
    """RGB image -> (H,W,3) uint8, writable; ``DatasetError`` naming the file when missing or corrupt."""
    array = ImageFile(path).decode()
    return array if array.flags.writeable else array.copy()


class ImageFile:
    """An image file read into memory, decoded on demand: at full size, or (JPEG) reduced.

    ``size``: (H, W) on disk, from the header. ``decode(min_size)`` returns (h,w,3) uint8 RGB (to be
    treated as read-only): a JPEG whose sides are both divisible by r in ``JPEG_REDUCTIONS`` is decoded at 1/r
    (libjpeg's DCT scaling, much cheaper than a full decode plus a resize) for the largest r that
    keeps it at least ``min_size`` (H, W); otherwise at full size. Divisibility keeps a reduced image
    exactly the full frame (reduced pixel j covers full pixels r*j .. r*j+r-1), so resizing it to a
    target gives the target's geometry. Errors are ``DatasetError`` naming the file.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._data = self.path.read_bytes()
            with Image.open(io.BytesIO(self._data)) as img:
                self.size: Tuple[int, int] = (img.height, img.width)
                self.format = img.format
        except FileNotFoundError:
            raise DatasetError(f"{path}: image file not found") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise DatasetError(f"{path}: unreadable or corrupt image ({err})") from None

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (*self.size, 3)

    def reduction(self, min_size: Optional[Tuple[int, int]]) -> int:
        """The r of ``decode(min_size)``: 1, or the largest JPEG reduction that keeps ``min_size``."""
        if min_size is None or self.format != "JPEG":
            return 1
        height, width = self.size
        for r in JPEG_REDUCTIONS:
            if height % r == 0 and width % r == 0 and height // r >= min_size[0] and width // r >= min_size[1]:
                return r
        return 1

    def decode(self, min_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """(H/r, W/r, 3) uint8 RGB (see the class docstring; possibly read-only: PIL hands out read-only
        arrays for other formats); ``min_size`` None: full size."""
        r = self.reduction(min_size)
        try:
            if self.format == "JPEG":  # libjpeg-turbo straight into numpy (mtwork.data.codecs)
                array = decode_jpeg_rgb(self._data, self.size, r)
            else:
                with Image.open(io.BytesIO(self._data)) as img:
                    array = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as err:  # PIL's and the JPEG decoder's errors
            raise DatasetError(f"{self.path}: unreadable or corrupt image ({err})") from None
        if array.shape[:2] != (self.size[0] // r, self.size[1] // r):
            raise DatasetError(f"{self.path}: decoded at {array.shape[:2]}, expected {self.size} / {r}")
        return array

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``np.asarray(image_file)``: the full-size decode (for transforms that take arrays only)."""
        array = self.decode()
        if dtype is not None and np.dtype(dtype) != array.dtype:
            return array.astype(dtype)
        return array.copy() if copy else array


def read_mask(path: Path) -> np.ndarray:
    """Single-channel PNG -> (H,W) array (uint8 for 8-bit masks, uint16/int32 for 16-bit).

    8-bit greyscale files (BDD100K's semseg and drivable masks) are decoded by libspng
    (``mtwork.data.codecs``), every other kind by PIL; both give the file's values. ``DatasetError``
    naming the file when it is missing, corrupt or not single-channel.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        mask = decode_grey8_png(data)
        if mask is not None:
            return mask
        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("L", "P", "I;16", "I;16B", "I"):
                raise DatasetError(f"{path}: expected a single-channel mask, got PIL mode {img.mode}")
            return np.asarray(img)
    except FileNotFoundError:
        raise DatasetError(f"{path}: mask file not found") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"{path}: unreadable or corrupt mask ({err})") from None


def read_camera(path: Path) -> np.ndarray:
    """Camera JSON (layout in the module docstring) -> intrinsics (4,) float64 (fx, fy, u0, v0) px.

    ``DatasetError`` naming the file (and the key) when it is missing, not JSON, lacks
    ``intrinsic.fx/fy/u0/v0``, or has a non-finite value or a focal length <= 0.
    """
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DatasetError(f"{path}: camera file not found (needed for the normals label)") from None
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None
    intrinsic = data.get("intrinsic") if isinstance(data, dict) else None
    if not isinstance(intrinsic, dict):
        raise DatasetError(f"{path}: missing key 'intrinsic' (an object with fx, fy, u0, v0)")
    values = []
    for key in ("fx", "fy", "u0", "v0"):
        value = intrinsic.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise DatasetError(f"{path}: 'intrinsic.{key}' must be a finite number, got {value!r}")
        values.append(float(value))
    if values[0] <= 0 or values[1] <= 0:
        raise DatasetError(f"{path}: focal lengths must be positive, got fx={values[0]}, fy={values[1]}")
    return np.asarray(values, dtype=np.float64)


def image_size(path: Path) -> Tuple[int, int]:
    """(H, W) from the image header without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable or corrupt image ({err})") from None


def valid_semseg(mask: np.ndarray, path: Path) -> np.ndarray:
    """A semseg mask read from ``path`` -> uint8 train ids; ``DatasetError`` for ids outside 0..18, 255."""
    ok = (mask < len(SEMSEG_CLASSES)) | (mask == IGNORE_INDEX)
    if not ok.all():
        bad = sorted(int(v) for v in np.unique(mask[~ok]))[:10]
        raise DatasetError(f"{path}: semseg ids {bad} outside 0..18 and 255")
    return mask.astype(np.uint8, copy=False)


def valid_drivable(mask: np.ndarray, path: Path) -> np.ndarray:
    """A drivable mask read from ``path`` (on-disk ids) -> training ids; ``DatasetError`` for ids > 2."""
    if mask.max(initial=0) >= len(DRIVABLE_CLASSES):
        bad = sorted(int(v) for v in np.unique(mask[mask >= len(DRIVABLE_CLASSES)]))[:10]
        raise DatasetError(f"{path}: drivable ids {bad} outside the on-disk ids 0..2")
    return decode_drivable(mask.astype(np.uint8, copy=False))


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    name: str
    image: Path
    det: Optional[List[DetBox]] = None
    semseg: Optional[Path] = None
    drivable: Optional[Path] = None
    depth: Optional[Path] = None
    normals: Optional[Path] = None  # the camera file; the normals come from it and ``depth``
    edges: Optional[Path] = None  # the image itself: every image has an edge label


class BDD100KDataset(torch.utils.data.Dataset):
    """The union of a split's 100k and 10k image sets, each image with whichever labels it has.

    An image is det-labeled iff its name is a frame in ``det_<split>.json``; semseg/drivable/depth-
    labeled iff its mask file exists. Only ``tasks`` are loaded, and images carrying none of them are
    dropped. Order: sorted by file name.

    ``attributes``: a domain as a filter on frame attributes, e.g. ``{"timeofday": "daytime",
    "weather": ["clear", "partly cloudy"]}`` (a value or a list of accepted values per key of
    ``ATTRIBUTE_VALUES``). It applies to every task: each image is kept iff the attributes found for
    its file name (module docstring: det frames of any split, then the attribute frame lists) match;
    images without a known value for a filtered key are left out. ``filter_counts`` then says
    {"kept", "other_attributes", "unattributed"} over the images that carry a requested label, and a
    filter that keeps nothing is a ``DatasetError``. ``attributes_of(index)`` gives an image's
    attributes ({} when unknown).

    Without a transform, ``__getitem__`` returns the raw sample::

        image:     (H,W,3) uint8 RGB              name: str            orig_size: (H, W)
        semseg:    (H,W) uint8 train ids, 255 ignore
        drivable:  (H,W) uint8 training ids 0 bg / 1 direct / 2 alternative (decoded from disk ids)
        depth:     (H,W) float32 metres, 0 invalid             (only when "depth" is requested)
        normals:   (H,W,3) float32 unit normals, camera frame (x right, y down, z forward), facing the
                   camera; (0,0,0) invalid                    (only when "normals" is requested)
        camera:    (4,) float64 intrinsics (fx, fy, u0, v0) px of this image (with "normals")
        edges:     (H,W) float32 Sobel magnitude in [0, 1]   (only when "edges" is requested)
        det:       {"boxes": (N,4) float32 xyxy pixel edges, "labels": (N,) int64 0..9,
                    "ignore_boxes": (M,4) float32, "ignore_labels": (M,) int64}: the objects, and
                   the ignore regions with the class each one ignores (module docstring)
    (a task key is present only when the image carries that label). Normals and edges are derived at
    the on-disk resolution (``mtwork.tasks.dense_labels``); transforms then resize, crop and flip them
    like the other labels (a flip negates the normals' x component), which is exact for normals since
    resizing or cropping an image does not move the 3-D scene. With a transform (see
    ``mtwork.data.transforms``), whatever the transform returns: the ``mtwork.data.batch`` contract;
    ``get(index, generator)`` passes a per-sample generator to it, and a transform that takes encoded
    images (``TrainTransform``) gets an ``ImageFile`` instead of the decoded array.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        tasks: Sequence[str] = ("semseg", "drivable", "det"),
        transform: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
        attributes: Optional[Mapping[str, Any]] = None,
    ):
        self.root = Path(root)
        self.split = split
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ValueError(f"tasks {list(tasks)!r}: each must be one of {', '.join(TASKS)}")
        self.tasks = tuple(tasks)
        self.transform = transform
        self.attribute_filter = None if attributes is None else attribute_filter(attributes)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root not found")

        images: Dict[str, Path] = {}
        # The 100k file wins when a name is in both sets; both hold the same image in BDD100K.
        for image_set in reversed(IMAGE_SETS):
            images.update(list_images(image_dir(self.root, image_set, split)))
        if not images:
            dirs = " or ".join(str(image_dir(self.root, s, split)) for s in IMAGE_SETS)
            raise DatasetError(f"no images found in {dirs}")

        entries = {name: _Entry(name, path) for name, path in images.items()}
        self.skipped_categories: Counter = Counter()
        self.ignore_regions: Counter = Counter()
        loaded: Dict[Path, Any] = {}
        if "det" in self.tasks:
            json_path = det_json_path(self.root, split)
            loaded[json_path] = read_json(json_path, "detection label file")
            frames = parse_det_frames(loaded[json_path], str(json_path), _raise, self.skipped_categories,
                                      ignore_regions=True, ignored=self.ignore_regions)
            for name, boxes in frames.items():
                if name in entries:
                    entries[name].det = boxes
        for task in ("semseg", "drivable", "depth"):
            if task not in self.tasks:
                continue
            directory = mask_dir(self.root, task, split)
            if not directory.is_dir():
                raise DatasetError(f"{directory}: {task} label directory not found")
            masks = list_masks(directory)
            for name, entry in entries.items():
                setattr(entry, task, masks.get(Path(name).stem))
        if "normals" in self.tasks:
            self._attach_cameras(entries)
        if "edges" in self.tasks:
            for entry in entries.values():
                entry.edges = entry.image

        self._entries = [
            entries[n]
            for n in sorted(entries)
            if any(getattr(entries[n], t) is not None for t in self.tasks)
        ]
        # attributes are read only for a filter: the det_20 files of real BDD100K are large
        self._attributes: Dict[str, Dict[str, str]] = {}
        self.filter_counts: Dict[str, int] = {"kept": len(self._entries), "other_attributes": 0, "unattributed": 0}
        if self.attribute_filter is not None:
            self._apply_filter(loaded)
        self.names: List[str] = [e.name for e in self._entries]

    def _apply_filter(self, loaded: Mapping[Path, Any]) -> None:
        self._attributes = load_frame_attributes(self.root, loaded)
        kept = []
        for entry in self._entries:
            verdict = match_attributes(self._attributes.get(entry.name), self.attribute_filter)
            if verdict is None:
                self.filter_counts["unattributed"] += 1
            elif not verdict:
                self.filter_counts["other_attributes"] += 1
            else:
                kept.append(entry)
        self.filter_counts["kept"] = len(kept)
        self._entries = kept
        if not kept:
            wanted = {k: sorted(v) for k, v in self.attribute_filter.items()}
            raise EmptyDomainError(
                f"{self.root} ({self.split}): no image with a {'/'.join(self.tasks)} label matches the attributes "
                f"{wanted} ({self.filter_counts['other_attributes']} with other values, "
                f"{self.filter_counts['unattributed']} without known attributes)"
            )

    def attributes_of(self, index: int) -> Dict[str, str]:
        """The frame attributes of image ``index`` ({} when unknown or when no filter was given)."""
        return dict(self._attributes.get(self._entries[index].name, {}))

    def _attach_cameras(self, entries: Dict[str, _Entry]) -> None:
        """Normals need depth + camera: an image with a depth PNG must have its camera file."""
        depth_masks = list_masks(mask_dir(self.root, "depth", self.split))
        if not depth_masks:
            raise DatasetError(
                f"{mask_dir(self.root, 'depth', self.split)}: no depth PNGs, which the normals label is derived from"
            )
        cameras = camera_dir(self.root, self.split)
        for name, entry in entries.items():
            stem = Path(name).stem
            if stem not in depth_masks:
                continue
            path = cameras / f"{stem}.json"
            if not path.is_file():
                raise DatasetError(f"{path}: camera file not found (needed for the normals label of {name})")
            entry.normals = path

    def __len__(self) -> int:
        return len(self._entries)

    def labeled_counts(self) -> Dict[str, int]:
        """{task: number of images carrying that label}, for the requested tasks."""
        return {t: sum(getattr(e, t) is not None for e in self._entries) for t in self.tasks}

    def tasks_of(self, index: int) -> Tuple[str, ...]:
        """The requested tasks that image ``index`` carries labels for (no file is read)."""
        return tuple(t for t in self.tasks if getattr(self._entries[index], t) is not None)

    def image_size(self, index: int) -> Tuple[int, int]:
        """(H, W) of image ``index`` on disk, read from its header."""
        return image_size(self._entries[index].image)

    def det_frames(self) -> Dict[str, List[DetBox]]:
        """{name: boxes} of the det-labeled images in this dataset (pixel-edge boxes, ignore regions
        flagged)."""
        return {e.name: list(e.det) for e in self._entries if e.det is not None}

    def coco_ground_truth(self) -> Dict[str, Any]:
        """COCO GT dict of this dataset's det-labeled images (for pycocotools evaluation)."""
        sizes = {e.name: image_size(e.image) for e in self._entries if e.det is not None}
        return det_frames_to_coco(self.det_frames(), sizes)

    def raw_sample(self, index: int, encoded_image: bool = False) -> Dict[str, Any]:
        """The sample before any transform (layout in the class docstring).

        ``encoded_image``: leave the image undecoded, an ``ImageFile`` (for transforms that decode it
        at a reduced size, ``TAKES_ENCODED_IMAGE``); ignored when a label derived from the pixels
        (edges) needs the full-size image anyway.
        """
        entry = self._entries[index]
        if encoded_image and entry.edges is None:
            image: Any = ImageFile(entry.image)
            size = image.size
        else:
            image = read_image(entry.image)
            size = image.shape[:2]
        sample: Dict[str, Any] = {"image": image, "name": entry.name, "orig_size": tuple(size)}
        if "semseg" in self.tasks and entry.semseg is not None:
            sample["semseg"] = valid_semseg(self._mask(entry.semseg, size), entry.semseg)
        if "drivable" in self.tasks and entry.drivable is not None:
            sample["drivable"] = valid_drivable(self._mask(entry.drivable, size), entry.drivable)
        depth = None
        if ("depth" in self.tasks and entry.depth is not None) or entry.normals is not None:
            # normals need the depth file even when the depth task itself is not requested
            depth_path = entry.depth or mask_dir(self.root, "depth", self.split) / f"{Path(entry.name).stem}.png"
            depth = depth_to_metres(self._mask(depth_path, size))
        if "depth" in self.tasks and entry.depth is not None:
            sample["depth"] = depth
        if entry.normals is not None:
            # imported here: importing mtwork.tasks registers (and imports) every task module, which
            # a reader that is not asked for derived labels has no need to pay for
            from mtwork.tasks.dense_labels import normals_from_depth

            camera = read_camera(entry.normals)
            sample["camera"] = camera
            sample["normals"] = normals_from_depth(depth, camera)
        if entry.edges is not None:
            from mtwork.tasks.dense_labels import sobel_edges

            sample["edges"] = sobel_edges(image)
        if "det" in self.tasks and entry.det is not None:
            det = np.asarray(entry.det, dtype=np.float64).reshape(-1, 6)
            ignore = det[:, 5] > 0
            sample["det"] = {
                "boxes": det[~ignore, 1:5].astype(np.float32),
                "labels": det[~ignore, 0].astype(np.int64),
                "ignore_boxes": det[ignore, 1:5].astype(np.float32),
                "ignore_labels": det[ignore, 0].astype(np.int64),
            }
        return sample

    @staticmethod
    def _mask(path: Path, size: Tuple[int, int]) -> np.ndarray:
        mask = read_mask(path)
        if mask.shape != tuple(size):
            raise DatasetError(
                f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image is {size[0]}x{size[1]}"
            )
        return mask

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.get(index)

    def get(self, index: int, generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
        """Sample ``index`` through the transform, which draws from ``generator`` when one is given
        (a training engine seeding each sample's augmentation); the raw sample without a transform.
        A transform with ``TAKES_ENCODED_IMAGE`` gets the image undecoded (``raw_sample``)."""
        if self.transform is None:
            return self.raw_sample(index)
        sample = self.raw_sample(index, encoded_image=bool(getattr(self.transform, "TAKES_ENCODED_IMAGE", False)))
        return self.transform(sample) if generator is None else self.transform(sample, generator=generator)
