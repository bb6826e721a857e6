"""SYNTHIA-RAND-CITYSCAPES: 16-bit class-id labels, depth in centimetres.

Release: SYNTHIA-RAND-CITYSCAPES (CVPR 2016 subset, README of June 26 2016; http://synthia-dataset.net,
``SYNTHIA_RAND_CITYSCAPES.rar``), extracted so that the archive's ``RAND_CITYSCAPES/`` folder is ROOT::

    RGB/{id:07d}.png            1280x760 RGB
    GT/LABELS/{id:07d}.png      16-bit PNG, class id in the first (R) channel, instance id in the second
    Depth/Depth/{id:07d}.png    16-bit PNG, depth in centimetres in any of the 3 channels (the archive
                                nests Depth/Depth; a flat Depth/ is read too)

9,400 images. Decoding, as the README specifies:

* **semseg**: the first channel's class id (0 void .. 22 Lanemarking, ``NATIVE_CLASSES``) -> ids of
  the label space (``synthia16`` by default: the standard SYNTHIA -> Cityscapes protocol). An id
  above 22 is an error. These PNGs are 16 bits per channel, which Pillow alone reads wrongly (it keeps
  the high byte: every id < 256 becomes 0); ``mtwork.data.dense.read_png`` decodes them exactly.
  A single-channel or 8-bit label PNG (a converted copy) is read the same way.
* **depth**: metres = first channel / 100; 0 and 65535 (saturated) are invalid (0).
* **normals**: ``normals_from_depth`` with intrinsics the caller gives (``intrinsics=(fx, fy, u0, v0)``):
  RAND-CITYSCAPES ships no camera file. SYNTHIA's video sequences (SYNTHIA-SEQS) publish a focal
  length of 532.740352 px and principal point (640, 380) for the same 1280x760 frames, the usual
  assumption; it is not asserted here.

Splits: the release has none. mtwork's: ``val`` = ids 9000..9399 (the last 400), ``train`` = the
others, ``all`` = every image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mtwork.data.dense import (
    CORRUPT_MASK,
    LABEL_WITHOUT_IMAGE,
    MISSING,
    DenseDataset,
    Entry,
    IndexProblem,
    ReaderError,
    check_intrinsics,
    ids_in_table,
    list_files,
    read_png,
)
from mtwork.data.registry import DATASETS

#: The README's class table: {id: name} (names exactly as the README writes them).
NATIVE_CLASSES: Dict[int, str] = dict(enumerate((
    "void", "sky", "Building", "Road", "Sidewalk", "Fence", "Vegetation", "Pole", "Car", "Traffic sign",
    "Pedestrian", "Bicycle", "Motorcycle", "Parking-slot", "Road-work", "Traffic light", "Terrain", "Rider",
    "Truck", "Bus", "Train", "Wall", "Lanemarking",
)))
_KNOWN_IDS = np.zeros(65536, dtype=bool)
_KNOWN_IDS[list(NATIVE_CLASSES)] = True
DEPTH_SCALE = 100.0
SATURATED = 65535
VAL_FIRST_ID = 9000
DEPTH_FOLDERS = (("Depth", "Depth"), ("Depth",))
#: Published intrinsics of SYNTHIA-SEQS (1280x760), for callers that choose to assume them.
SEQS_INTRINSICS = (532.740352, 532.740352, 640.0, 380.0)


def _first_channel(array: np.ndarray) -> np.ndarray:
    return array[..., 0] if array.ndim == 3 else array


@DATASETS.register("synthia")
class SynthiaDataset(DenseDataset):
    """SYNTHIA-RAND-CITYSCAPES ``split`` of ``root`` (layout, units and splits in the module docstring).

    ``intrinsics``: (fx, fy, u0, v0) px for the normals label (required when "normals" is requested).
    """

    name = "synthia"
    TASKS = ("semseg", "depth", "normals", "edges")
    SPLITS = ("train", "val", "all")
    CHECK_SPLITS = ("all",)
    DEFAULT_LABEL_SPACE = "synthia16"
    TASK_FILES = {"semseg": ("semseg",), "depth": ("depth",), "normals": ("depth",), "edges": ()}

    def __init__(self, root, split, tasks=None, transform=None, label_space=None, strict=True, *,
                 intrinsics: Optional[Sequence[float]] = None, **kwargs):
        self.intrinsics = None if intrinsics is None else check_intrinsics(intrinsics, Path("<intrinsics argument>"))
        if tasks is not None and "normals" in tasks and self.intrinsics is None:
            raise ValueError("synthia: the normals label needs intrinsics=(fx, fy, u0, v0): RAND-CITYSCAPES ships no "
                             f"camera file (SYNTHIA-SEQS publishes {SEQS_INTRINSICS} for 1280x760)")
        if tasks is None and self.intrinsics is None:
            tasks = ("semseg", "depth", "edges")
        super().__init__(root, split, tasks, transform, label_space, strict, **kwargs)

    def layout_hint(self) -> str:
        return "expected RGB/*.png (the archive's RAND_CITYSCAPES folder is the root)"

    def _in_split(self, stem: str) -> bool:
        if self.split == "all":
            return True
        is_val = stem.isdigit() and int(stem) >= VAL_FIRST_ID
        return is_val == (self.split == "val")

    def _index(self) -> Tuple[List[Entry], List[IndexProblem]]:
        problems: List[IndexProblem] = []
        rgb_dir = self.root / "RGB"
        if not rgb_dir.is_dir():
            problems.append(IndexProblem(MISSING, str(rgb_dir), "image folder RGB missing"))
        images = {p.stem: p for p in list_files(rgb_dir, (".png",)) if self._in_split(p.stem)}
        depth_dir = next((self.root.joinpath(*f) for f in DEPTH_FOLDERS if self.root.joinpath(*f).is_dir()),
                         self.root.joinpath(*DEPTH_FOLDERS[0]))
        folders = {"semseg": (self.root / "GT" / "LABELS", ("semseg",)), "depth": (depth_dir, ("depth", "normals"))}
        entries = {stem: Entry(stem, path) for stem, path in images.items()}
        for kind, (folder, tasks) in folders.items():
            if not folder.is_dir():
                problems.append(IndexProblem(MISSING, str(folder), f"{kind} folder missing", tasks))
                continue
            found = {p.stem: p for p in list_files(folder, (".png",)) if self._in_split(p.stem)}
            for stem, entry in entries.items():
                if stem in found:
                    entry.files[kind] = found.pop(stem)
                else:
                    problems.append(IndexProblem(MISSING, str(folder / f"{stem}.png"),
                                                 f"{kind} file missing for image {entry.image}", tasks))
            for stem, path in sorted(found.items()):
                problems.append(IndexProblem(LABEL_WITHOUT_IMAGE, str(path), f"{kind} file has no image "
                                             f"{rgb_dir / (stem + '.png')}", tasks))
        return [entries[s] for s in sorted(entries)], problems

    # -- file kinds ---------------------------------------------------------------------------------
    def read_semseg(self, entry: Entry) -> np.ndarray:
        path = entry.files["semseg"]
        ids = _first_channel(read_png(path, "GT/LABELS"))
        ids_in_table(ids, _KNOWN_IDS, path, "class id (first channel)")
        if not hasattr(self, "_lut_cache"):
            self._lut_cache = self.label_space.lookup_table(self.name, NATIVE_CLASSES)
        return self._lut_cache[ids]

    def read_depth(self, entry: Entry) -> np.ndarray:
        path = entry.files["depth"]
        stored = read_png(path, "depth")
        if stored.dtype != np.uint16:
            raise ReaderError(CORRUPT_MASK, path, f"depth must be a 16-bit PNG (centimetres), got {stored.dtype}")
        stored = _first_channel(stored)
        valid = (stored > 0) & (stored < SATURATED)
        return np.where(valid, stored.astype(np.float32) / DEPTH_SCALE, 0.0).astype(np.float32)

    def has_label(self, entry: Entry, task: str) -> bool:
        if task == "normals" and self.intrinsics is None:
            return False
        return super().has_label(entry, task)

    def decode(self, entry: Entry, tasks, on_problem=None):
        image, values = super().decode(entry, tasks, on_problem)
        if "normals" in tasks:
            values["camera"] = self.intrinsics  # the caller's intrinsics: no camera file in the release
        return image, values
