"""Cityscapes: fine semantic labels, metric depth from disparity, normals from depth, edges.

Release: the official packages ``leftImg8bit_trainvaltest.zip``, ``gtFine_trainvaltest.zip``,
``disparity_trainvaltest.zip`` and ``camera_trainvaltest.zip`` (https://www.cityscapes-dataset.com,
login required; ``mtwork download --dataset cityscapes`` fetches them with CITYSCAPES_USERNAME /
CITYSCAPES_PASSWORD), unzipped into one ROOT::

    leftImg8bit/{train,val,test}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png   RGB, 2048x1024
    gtFine/{split}/{city}/{stem}_gtFine_labelIds.png     uint8 label ids 0..33 of ``LABELS``
    disparity/{split}/{city}/{stem}_disparity.png        uint16 p: 0 invalid, else d = (p - 1) / 256 px
    camera/{split}/{city}/{stem}_camera.json             {"extrinsic": {"baseline": m, ...},
                                                          "intrinsic": {"fx", "fy", "u0", "v0": px}}

``stem`` is ``{city}_{seq:06d}_{frame:06d}``. 2,975 train / 500 val / 1,525 test images (test labels
are not public: its gtFine files hold only the void classes).

Decoding, as the dataset's documentation (``cityscapesscripts``, the disparity README) specifies:

* **semseg**: labelIds -> class names by ``LABELS`` (the label table of ``cityscapesscripts/helpers/
  labels.py``) -> ids of the label space (``cityscapes19`` by default, where they equal the official
  trainIds: road 7 -> 0, sky 23 -> 10, car 26 -> 13, ids 0..6 -> 255). Ids above 33 are an error.
* **depth**: disparity d = (p - 1) / 256 px for p > 0; z = baseline * fx / d metres. p = 0 (no
  disparity) and p = 1 (d = 0, infinitely far) are invalid (0). Nothing is clipped: the far tail of
  small disparities is as the dataset gives it (evaluation protocols cap depth, readers do not).
* **normals**: ``normals_from_depth`` of that depth with the camera's (fx, fy, u0, v0).
* **camera**: the intrinsics (fx, fy, u0, v0) of ``camera/*.json`` (pixel centres at integers).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

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
    read_json,
    read_png,
)
from mtwork.data.registry import DATASETS


class Label(NamedTuple):
    name: str
    id: int
    train_id: int


#: The Cityscapes label table (cityscapesscripts/helpers/labels.py): name, labelId, trainId. The
#: labelId is the value in ``*_gtFine_labelIds.png``; "license plate" (id -1) never appears there.
LABELS: Tuple[Label, ...] = (
    Label("unlabeled", 0, 255), Label("ego vehicle", 1, 255), Label("rectification border", 2, 255),
    Label("out of roi", 3, 255), Label("static", 4, 255), Label("dynamic", 5, 255), Label("ground", 6, 255),
    Label("road", 7, 0), Label("sidewalk", 8, 1), Label("parking", 9, 255), Label("rail track", 10, 255),
    Label("building", 11, 2), Label("wall", 12, 3), Label("fence", 13, 4), Label("guard rail", 14, 255),
    Label("bridge", 15, 255), Label("tunnel", 16, 255), Label("pole", 17, 5), Label("polegroup", 18, 255),
    Label("traffic light", 19, 6), Label("traffic sign", 20, 7), Label("vegetation", 21, 8),
    Label("terrain", 22, 9), Label("sky", 23, 10), Label("person", 24, 11), Label("rider", 25, 12),
    Label("car", 26, 13), Label("truck", 27, 14), Label("bus", 28, 15), Label("caravan", 29, 255),
    Label("trailer", 30, 255), Label("train", 31, 16), Label("motorcycle", 32, 17), Label("bicycle", 33, 18),
)
#: {labelId: class name}: the native table the label spaces map.
NATIVE_CLASSES: Dict[int, str] = {label.id: label.name for label in LABELS}
_KNOWN_IDS = np.zeros(256, dtype=bool)
_KNOWN_IDS[list(NATIVE_CLASSES)] = True

SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
#: file kind -> (top folder, file suffix) of the per-image files beside leftImg8bit.
LABEL_FILES: Dict[str, Tuple[str, str]] = {
    "semseg": ("gtFine", "_gtFine_labelIds.png"),
    "depth": ("disparity", "_disparity.png"),  # the depth label is decoded from the disparity
    "camera": ("camera", "_camera.json"),
}
#: Which tasks each file kind labels (for messages and for strict mode).
_KIND_TASKS = {"semseg": ("semseg",), "depth": ("depth", "normals"), "camera": ("depth", "normals")}
_STEM = re.compile(r"^(?P<city>[^_/]+)_\d{6}_\d{6}$")


def disparity_to_depth(stored: np.ndarray, baseline: float, fx: float) -> np.ndarray:
    """uint16 disparity PNG values -> float32 z-depth in metres (0 where invalid).

    d = (p - 1) / 256 px for p > 0 and z = baseline * fx / d; p = 0 and p = 1 (d = 0) are invalid.
    """
    p = stored.astype(np.float64)
    d = (p - 1.0) / 256.0
    valid = (stored > 0) & (d > 0)
    return np.where(valid, baseline * fx / np.where(valid, d, 1.0), 0.0).astype(np.float32)


@DATASETS.register("cityscapes")
class CityscapesDataset(DenseDataset):
    """Cityscapes ``split`` of ``root`` (layout and units in the module docstring)."""

    name = "cityscapes"
    TASKS = ("semseg", "depth", "normals", "edges")
    SPLITS = SPLITS
    CHECK_SPLITS = ("train", "val")
    OPTIONAL_CHECK_SPLITS = ("test",)
    DEFAULT_LABEL_SPACE = "cityscapes19"
    TASK_FILES = {"semseg": ("semseg",), "depth": ("depth", "camera"), "normals": ("depth", "camera"), "edges": ()}

    def layout_hint(self) -> str:
        return f"expected leftImg8bit/{self.split}/<city>/*{IMAGE_SUFFIX}"

    def _index(self) -> Tuple[List[Entry], List[IndexProblem]]:
        problems: List[IndexProblem] = []
        image_root = self.root / "leftImg8bit" / self.split
        images = sorted(image_root.glob(f"*/*{IMAGE_SUFFIX}")) if image_root.is_dir() else []
        if not image_root.is_dir():
            problems.append(IndexProblem(MISSING, str(image_root), "image folder missing (leftImg8bit package)"))
        entries: Dict[str, Entry] = {}
        for path in images:
            stem = path.name[: -len(IMAGE_SUFFIX)]
            city = path.parent.name
            if not _STEM.match(stem) or not stem.startswith(city + "_"):
                problems.append(IndexProblem(MISSING, str(path), f"file name does not follow {{city}}_{{seq}}_{{frame}}"
                                             f"{IMAGE_SUFFIX} inside its city folder '{city}'"))
                continue
            entries[f"{city}/{stem}"] = Entry(f"{city}/{stem}", path)
        for kind, (top, suffix) in LABEL_FILES.items():
            folder = self.root / top / self.split
            tasks = _KIND_TASKS[kind]
            if not folder.is_dir():
                problems.append(IndexProblem(MISSING, str(folder), f"{top} folder missing ({top} package), "
                                             f"so no image has its {'/'.join(tasks)} label", tasks))
                continue
            found = {f"{p.parent.name}/{p.name[: -len(suffix)]}": p for p in folder.glob(f"*/*{suffix}")}
            for name, entry in entries.items():
                path = found.pop(name, None)
                if path is None:
                    city, stem = name.split("/")
                    problems.append(IndexProblem(MISSING, str(folder / city / f"{stem}{suffix}"),
                                                 f"{kind} file missing for image {entry.image}", tasks))
                else:
                    entry.files[kind] = path
            for name, path in sorted(found.items()):
                problems.append(IndexProblem(LABEL_WITHOUT_IMAGE, str(path), f"{kind} file has no image "
                                             f"{image_root / name}{IMAGE_SUFFIX}", tasks))
        return [entries[n] for n in sorted(entries)], problems

    # -- file kinds ---------------------------------------------------------------------------------
    def read_semseg(self, entry: Entry) -> np.ndarray:
        path = entry.files["semseg"]
        ids = read_png(path, "gtFine labelIds")
        if ids.ndim != 2 or ids.dtype != np.uint8:
            raise ReaderError(CORRUPT_MASK, path, f"labelIds must be a single-channel 8-bit PNG, got shape {ids.shape} "
                              f"{ids.dtype}")
        ids_in_table(ids, _KNOWN_IDS, path, "labelIds")
        return self._lut()[ids]

    def read_camera(self, entry: Entry) -> np.ndarray:
        """(fx, fy, u0, v0) px of ``camera/*.json``."""
        return self._camera_file(entry)[0]

    def read_disparity(self, entry: Entry) -> np.ndarray:
        """The stored uint16 disparity values (H,W) of the depth file."""
        path = entry.files["depth"]
        stored = read_png(path, "disparity")
        if stored.ndim != 2 or stored.dtype != np.uint16:
            raise ReaderError(CORRUPT_MASK, path, f"disparity must be a single-channel 16-bit PNG, got shape "
                              f"{stored.shape} {stored.dtype}")
        return stored

    def read_depth(self, entry: Entry) -> np.ndarray:
        """z-depth (H,W) float32 metres from the disparity PNG (file kind "depth") and the camera's
        baseline and fx."""
        intrinsics, baseline = self._camera_file(entry)
        return disparity_to_depth(self.read_disparity(entry), baseline, intrinsics[0])

    def _camera_file(self, entry: Entry) -> Tuple[np.ndarray, float]:
        path = entry.files["camera"]
        data = read_json(path, "camera")
        intrinsic = data.get("intrinsic") if isinstance(data, dict) else None
        extrinsic = data.get("extrinsic") if isinstance(data, dict) else None
        if not isinstance(intrinsic, dict) or not isinstance(extrinsic, dict):
            raise ReaderError(BAD_CAMERA, path, "camera file needs the objects 'intrinsic' and 'extrinsic'")
        values = []
        for key in ("fx", "fy", "u0", "v0"):
            value = intrinsic.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ReaderError(BAD_CAMERA, path, f"'intrinsic.{key}' must be a number, got {value!r}")
            values.append(float(value))
        baseline = extrinsic.get("baseline")
        if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not np.isfinite(baseline) or baseline <= 0:
            raise ReaderError(BAD_CAMERA, path, f"'extrinsic.baseline' must be a positive number (metres), got {baseline!r}")
        return check_intrinsics(values, path), float(baseline)

    def _lut(self) -> np.ndarray:
        if not hasattr(self, "_lut_cache"):
            self._lut_cache = self.label_space.lookup_table(self.name, NATIVE_CLASSES)
        return self._lut_cache


def image_path(root: Path, split: str, city: str, stem: str) -> Path:
    """Where the image of ``stem`` lives (used by tests and tools that write the layout)."""
    return Path(root) / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}"
