"""NYUDv2 in the common multi-task layout (NYUD_MT): 40-class segmentation, metric depth, normals.

Release: ``NYUD_MT.tgz`` as distributed with Vandenhende et al.'s Multi-Task-Learning-PyTorch (and used
by ATRC, InvPT and others; Google Drive file 14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw): the 1,449 labelled
images of ``nyu_depth_v2_labeled.mat`` cropped to 425x560, split 795 train / 654 val, extracted so that
the archive's ``NYUD_MT/`` folder is ROOT::

    images/{id}.jpg             RGB 425x560 (.png is read too)
    segmentation/{id}.png       uint8: 0 void, 1..40 the NYU-40 classes of Gupta et al. (label_spaces.NYUV2_40)
    depth/{id}.npy              float (H,W) metres
    normals/{id}.npy            float (H,W,3) unit normals, (0,0,0) where unknown
    gt_sets/{train,val}.txt     one id per line
    edge/{id}.npy               (not read: edges are derived from the image, as for every dataset)

Decoding:

* **semseg**: 0 -> 255, k -> NYU-40 class k -> ids of the label space (``nyuv2_40`` by default: k - 1,
  as the release's own loader does). Values above 40 are an error.
* **depth**: metres as stored; non-finite or <= 0 values are invalid (0).
* **normals**: the stored vectors use the NYU RGB-D axis convention: x right, y down, z pointing
  *out of* the image towards the viewer (so a surface facing the camera has z > 0). mtwork's camera
  frame has z forward, into the scene: z is negated (``NYU_TO_CAMERA``). The 2D-3D-S / Taskonomy
  normals are documented as using the same convention (``mtwork.data.taskonomy``). ``mtwork data check
  --format nyuv2`` compares the stored normals with the normals of the stored depth (intrinsics below)
  and reports a copy whose axes disagree.
* **camera**: not emitted (the normals come from files). The check uses the Kinect colour intrinsics of
  the NYU toolbox (fx 518.857901, fy 519.469611, centre (325.582449, 253.736166), MATLAB 1-based)
  moved to 0-based pixel centres and to the 425x560 crop (rows 45.., columns 40..): ``CROP_INTRINSICS``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from mtwork.data.dense import (
    CORRUPT_MASK,
    LABEL_WITHOUT_IMAGE,
    MISSING,
    DenseDataset,
    Entry,
    IndexProblem,
    ReaderError,
    ids_in_table,
    list_files,
    read_npy,
    read_png,
    unit_normals,
)
from mtwork.data.label_spaces import NYUV2_40
from mtwork.data.registry import DATASETS

#: {segmentation value: NYU-40 class name}; 0 (void) is in no table, so it is ignore.
NATIVE_CLASSES: Dict[int, str] = {k + 1: name for k, name in enumerate(NYUV2_40)}
_KNOWN_IDS = np.zeros(256, dtype=bool)
_KNOWN_IDS[[0, *NATIVE_CLASSES]] = True
#: Stored NYU-convention normal (x right, y down, z towards the viewer) * NYU_TO_CAMERA = camera frame.
NYU_TO_CAMERA = np.array([1.0, 1.0, -1.0])
#: Kinect colour camera of the NYU toolbox (camera_params.m), full 480x640 frame, 0-based pixel centres.
FULL_INTRINSICS = (518.857901, 519.469611, 325.582449 - 1.0, 253.736166 - 1.0)
CROP_OFFSET_YX = (45, 40)
CROP_SIZE = (425, 560)
CROP_INTRINSICS = (FULL_INTRINSICS[0], FULL_INTRINSICS[1],
                   FULL_INTRINSICS[2] - CROP_OFFSET_YX[1], FULL_INTRINSICS[3] - CROP_OFFSET_YX[0])
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def nyu_normals_to_camera(stored: np.ndarray) -> np.ndarray:
    """(H,W,3) NYU-convention normals (any length; ~0 = unknown) -> unit camera-frame float32, (0,0,0) invalid."""
    vectors = np.asarray(stored, dtype=np.float64) * NYU_TO_CAMERA
    # stored unit vectors have length ~1; unknown pixels hold ~0 (a valid one is never shorter than 0.5)
    valid = np.isfinite(vectors).all(axis=-1) & (np.linalg.norm(np.nan_to_num(vectors), axis=-1) > 0.5)
    return unit_normals(np.nan_to_num(vectors), valid)


@DATASETS.register("nyuv2")
class NYUv2Dataset(DenseDataset):
    """NYUDv2 (NYUD_MT layout) ``split`` of ``root`` (layout and units in the module docstring)."""

    name = "nyuv2"
    TASKS = ("semseg", "depth", "normals", "edges")
    SPLITS = ("train", "val")
    CHECK_SPLITS = ("train", "val")
    DEFAULT_LABEL_SPACE = "nyuv2_40"
    TASK_FILES = {"semseg": ("semseg",), "depth": ("depth",), "normals": ("normals",), "edges": ()}
    LABEL_FOLDERS = {"semseg": ("segmentation", ".png"), "depth": ("depth", ".npy"), "normals": ("normals", ".npy")}

    def layout_hint(self) -> str:
        return f"expected gt_sets/{self.split}.txt and images/<id>.jpg"

    def _index(self) -> Tuple[List[Entry], List[IndexProblem]]:
        problems: List[IndexProblem] = []
        list_path = self.root / "gt_sets" / f"{self.split}.txt"
        if not list_path.is_file():
            return [], [IndexProblem(MISSING, str(list_path), "split list missing")]
        try:
            ids = [line.strip() for line in list_path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as err:
            return [], [IndexProblem(MISSING, str(list_path), f"unreadable split list ({err})")]
        images = {p.stem: p for p in list_files(self.root / "images", IMAGE_SUFFIXES)}
        entries: List[Entry] = []
        for image_id in ids:
            if image_id not in images:
                problems.append(IndexProblem(MISSING, str(self.root / "images" / f"{image_id}.jpg"),
                                             f"image listed in {list_path} is missing"))
                continue
            entry = Entry(image_id, images[image_id])
            for kind, (folder, suffix) in self.LABEL_FOLDERS.items():
                path = self.root / folder / f"{image_id}{suffix}"
                if path.is_file():
                    entry.files[kind] = path
                else:
                    problems.append(IndexProblem(MISSING, str(path), f"{kind} file missing for image {entry.image}", (kind,)))
            entries.append(entry)
        if self.split == self.SPLITS[-1]:  # report files no split lists once, with the last split
            listed = set()
            for split in self.SPLITS:
                path = self.root / "gt_sets" / f"{split}.txt"
                if path.is_file():
                    listed |= {line.strip() for line in path.read_text().splitlines() if line.strip()}
            for kind, (folder, suffix) in self.LABEL_FOLDERS.items():
                for path in list_files(self.root / folder, (suffix,)):
                    if path.stem not in listed:
                        problems.append(IndexProblem(LABEL_WITHOUT_IMAGE, str(path), f"{kind} file of an id no split "
                                                     "list names", (kind,)))
        entries.sort(key=lambda e: e.name)
        return entries, problems

    # -- file kinds ---------------------------------------------------------------------------------
    def read_semseg(self, entry: Entry) -> np.ndarray:
        path = entry.files["semseg"]
        ids = read_png(path, "segmentation")
        if ids.ndim != 2 or ids.dtype != np.uint8:
            raise ReaderError(CORRUPT_MASK, path, f"segmentation must be a single-channel 8-bit PNG, got shape "
                              f"{ids.shape} {ids.dtype}")
        ids_in_table(ids, _KNOWN_IDS, path, "segmentation")
        if not hasattr(self, "_lut_cache"):
            self._lut_cache = self.label_space.lookup_table(self.name, NATIVE_CLASSES)
        return self._lut_cache[ids]

    def read_depth(self, entry: Entry) -> np.ndarray:
        path = entry.files["depth"]
        depth = read_npy(path, "depth")
        if depth.ndim == 3 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
            raise ReaderError(CORRUPT_MASK, path, f"depth must be a numeric (H,W) array, got {depth.shape} {depth.dtype}")
        depth = depth.astype(np.float32)
        return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)

    def read_normals(self, entry: Entry) -> np.ndarray:
        path = entry.files["normals"]
        stored = read_npy(path, "normals")
        if stored.ndim != 3 or stored.shape[-1] != 3 or not np.issubdtype(stored.dtype, np.number):
            raise ReaderError(CORRUPT_MASK, path, f"normals must be a numeric (H,W,3) array, got {stored.shape} "
                              f"{stored.dtype}")
        return nyu_normals_to_camera(stored)

    @classmethod
    def reference_intrinsics(cls, size: Tuple[int, int]) -> Optional[Tuple[float, ...]]:
        """Intrinsics of an image of ``size`` (H, W) for the check's normals comparison (None if unknown)."""
        if tuple(size) == CROP_SIZE:
            return CROP_INTRINSICS
        if tuple(size) == (480, 640):
            return FULL_INTRINSICS
        return None
