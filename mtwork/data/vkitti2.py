"""Virtual KITTI 2: class segmentation by colour, depth in centimetres, per-frame intrinsics.

Release: Virtual KITTI 2.0.3 (https://europe.naverlabs.com/proxy-virtual-worlds-vkitti-2/, public
tarballs ``vkitti_2.0.3_{rgb,depth,classSegmentation}.tar`` and ``vkitti_2.0.3_textgt.tar.gz``)
extracted into one ROOT, as the tarballs lay it out::

    Scene{01,02,06,18,20}/{variation}/frames/rgb/Camera_{0,1}/rgb_{i:05d}.jpg                  1242x375
    Scene{..}/{variation}/frames/depth/Camera_{k}/depth_{i:05d}.png                 uint16 cm
    Scene{..}/{variation}/frames/classSegmentation/Camera_{k}/classgt_{i:05d}.png   RGB class colours
    Scene{..}/{variation}/colors.txt       "Category r g b" then one "Name r g b" row per class
    Scene{..}/{variation}/intrinsic.txt    "frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]" then one row
                                           per (frame, camera)

``variation`` is one of clone, fog, morning, overcast, rain, sunset, 15-deg-left, 15-deg-right,
30-deg-left, 30-deg-right. The release README spells the segmentation folder ``classsegmentation``;
both spellings are read.

Decoding, as the release README specifies:

* **semseg**: each pixel's colour -> its category by the variation's own ``colors.txt`` -> ids of the
  label space (``cityscapes19`` by default; ``mtwork.data.label_spaces`` has the category table). A
  colour not in colors.txt is an error.
* **depth**: metres = value / 100. 65535 is the far plane (655.35 m), where everything farther is
  clipped: the sky. It is **invalid** (0) here, not 655.35 m: it is no measured distance, and a
  655 m target would swamp any depth loss or RMSE computed over the road scene (Cityscapes' depth from
  disparity has no sky either).
* **normals**: ``normals_from_depth`` with the frame's intrinsics (sky pixels and their neighbours
  have no normal).
* **camera**: (K[0,0], K[1,1], K[0,2], K[1,2]) of the frame's row in intrinsic.txt (the release's
  principal point (620.5, 187) for 1242x375 is the pixel-centre convention used here).

Splits: the release has none. mtwork's: ``val`` = Scene02 (urban streets, 233 frames per variation
and camera), ``train`` = the other four scenes, ``all`` = all five. ``variations`` (default all ten)
and ``cameras`` (default ``("Camera_0",)``, the left camera; Camera_1 is the stereo partner 0.532725 m
to the right) select further.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mtwork.data.dense import (
    BAD_CAMERA,
    BAD_TABLE,
    CORRUPT_MASK,
    LABEL_WITHOUT_IMAGE,
    MISSING,
    UNKNOWN_COLOUR,
    DenseDataset,
    Entry,
    IndexProblem,
    ReaderError,
    check_intrinsics,
    read_png,
)
from mtwork.data.registry import DATASETS

SCENES = ("Scene01", "Scene02", "Scene06", "Scene18", "Scene20")
VARIATIONS = ("clone", "fog", "morning", "overcast", "rain", "sunset",
              "15-deg-left", "15-deg-right", "30-deg-left", "30-deg-right")
CAMERAS = ("Camera_0", "Camera_1")
SPLIT_SCENES: Dict[str, Tuple[str, ...]] = {
    "train": ("Scene01", "Scene06", "Scene18", "Scene20"),
    "val": ("Scene02",),
    "all": SCENES,
}
#: The categories of the release's colors.txt with their colours (README); colors.txt is authoritative.
CATEGORIES: Dict[str, Tuple[int, int, int]] = {
    "Terrain": (210, 0, 200), "Sky": (90, 200, 255), "Tree": (0, 199, 0), "Vegetation": (90, 240, 0),
    "Building": (140, 140, 140), "Road": (100, 60, 100), "GuardRail": (250, 100, 255),
    "TrafficSign": (255, 255, 0), "TrafficLight": (200, 200, 0), "Pole": (255, 130, 0), "Misc": (80, 80, 80),
    "Truck": (160, 60, 60), "Car": (255, 127, 80), "Van": (0, 139, 139), "Undefined": (0, 0, 0),
}
#: Stored depth: value / DEPTH_SCALE = metres; FAR_PLANE = clipped (sky) -> invalid.
DEPTH_SCALE = 100.0
FAR_PLANE = 65535
SEGMENTATION_FOLDERS = ("classSegmentation", "classsegmentation")
_FRAME = re.compile(r"^rgb_(\d{5})\.jpg$")


def _canonical(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


_CANONICAL = {_canonical(name): name for name in CATEGORIES}


def parse_colors(path: Path) -> Dict[int, str]:
    """colors.txt -> {packed colour r<<16|g<<8|b: category name}; ReaderError(BAD_TABLE) naming the file."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise ReaderError(MISSING, path, "colors.txt not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReaderError(BAD_TABLE, path, f"unreadable colors.txt ({err})") from None
    table: Dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or (number == 1 and fields[0].lower() == "category"):
            continue
        if len(fields) != 4:
            raise ReaderError(BAD_TABLE, path, f"line {number}: expected 'Category r g b', got {line!r}")
        name = _CANONICAL.get(_canonical(fields[0]))
        if name is None:
            raise ReaderError(BAD_TABLE, path, f"line {number}: unknown category {fields[0]!r} "
                              f"(known: {', '.join(CATEGORIES)})")
        try:
            r, g, b = (int(v) for v in fields[1:])
        except ValueError:
            raise ReaderError(BAD_TABLE, path, f"line {number}: colour must be three integers, got {line!r}") from None
        if not all(0 <= v <= 255 for v in (r, g, b)):
            raise ReaderError(BAD_TABLE, path, f"line {number}: colour values must be 0..255, got {line!r}")
        code = (r << 16) | (g << 8) | b
        if code in table and table[code] != name:
            raise ReaderError(BAD_TABLE, path, f"line {number}: colour ({r}, {g}, {b}) is both {table[code]} and {name}")
        table[code] = name
    if not table:
        raise ReaderError(BAD_TABLE, path, "colors.txt lists no category")
    return table


def parse_intrinsics(path: Path) -> Dict[Tuple[int, int], np.ndarray]:
    """intrinsic.txt -> {(frame, camera id): (fx, fy, u0, v0)}; ReaderError(BAD_CAMERA) naming the file."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise ReaderError(MISSING, path, "intrinsic.txt not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ReaderError(BAD_CAMERA, path, f"unreadable intrinsic.txt ({err})") from None
    table: Dict[Tuple[int, int], np.ndarray] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or (number == 1 and fields[0].lower() == "frame"):
            continue
        if len(fields) != 6:
            raise ReaderError(BAD_CAMERA, path, f"line {number}: expected 'frame cameraID fx fy u0 v0', got {line!r}")
        try:
            frame, camera = int(fields[0]), int(fields[1])
            values = [float(v) for v in fields[2:]]
        except ValueError:
            raise ReaderError(BAD_CAMERA, path, f"line {number}: not numbers: {line!r}") from None
        try:
            table[(frame, camera)] = check_intrinsics(values, path)
        except ReaderError as err:
            raise ReaderError(BAD_CAMERA, path, f"line {number}: {err.detail}") from None
    return table


@DATASETS.register("vkitti2")
class VKITTI2Dataset(DenseDataset):
    """Virtual KITTI 2 ``split`` of ``root`` (layout, units and splits in the module docstring)."""

    name = "vkitti2"
    TASKS = ("semseg", "depth", "normals", "edges")
    SPLITS = tuple(SPLIT_SCENES)
    CHECK_SPLITS = ("all",)
    CHECK_OPTIONS = {"cameras": CAMERAS}
    DEFAULT_LABEL_SPACE = "cityscapes19"
    TASK_FILES = {"semseg": ("semseg", "colors"), "depth": ("depth",), "normals": ("depth", "camera"), "edges": ()}

    def __init__(self, root, split, tasks=None, transform=None, label_space=None, strict=True, *,
                 variations: Optional[Sequence[str]] = None, cameras: Sequence[str] = ("Camera_0",),
                 scenes: Optional[Sequence[str]] = None, **kwargs):
        for what, given, known in (("variations", variations, VARIATIONS), ("cameras", cameras, CAMERAS),
                                   ("scenes", scenes, SCENES)):
            bad = [v for v in (given or ()) if v not in known]
            if bad:
                raise ValueError(f"vkitti2: unknown {what} {bad} (known: {', '.join(known)})")
        self.variations = tuple(variations or VARIATIONS)
        self.cameras = tuple(cameras)
        self.scenes = tuple(scenes) if scenes is not None else None
        self._colors: Dict[Path, Dict[int, str]] = {}
        self._intrinsics: Dict[Path, Dict[Tuple[int, int], np.ndarray]] = {}
        super().__init__(root, split, tasks, transform, label_space, strict, **kwargs)

    def layout_hint(self) -> str:
        return "expected Scene*/<variation>/frames/rgb/Camera_*/rgb_*.jpg"

    def _index(self) -> Tuple[List[Entry], List[IndexProblem]]:
        problems: List[IndexProblem] = []
        entries: List[Entry] = []
        scenes = self.scenes if self.scenes is not None else SPLIT_SCENES[self.split]
        for scene in scenes:
            for variation in self.variations:
                base = self.root / scene / variation
                if not (base / "frames" / "rgb").is_dir():
                    continue
                colors, intrinsic = base / "colors.txt", base / "intrinsic.txt"
                seg_top = next((base / "frames" / f for f in SEGMENTATION_FOLDERS if (base / "frames" / f).is_dir()),
                               base / "frames" / SEGMENTATION_FOLDERS[0])
                for path, kind, tasks in ((colors, "colors", ("semseg",)), (intrinsic, "camera", ("normals",))):
                    if not path.is_file():
                        problems.append(IndexProblem(MISSING, str(path), f"{path.name} missing (textgt tarball), so "
                                                     f"no frame of {scene}/{variation} has its {tasks[0]} label", tasks))
                for camera in self.cameras:
                    rgb_dir = base / "frames" / "rgb" / camera
                    frames = {int(m.group(1)): p for p in sorted(rgb_dir.glob("rgb_*.jpg"))
                              if (m := _FRAME.match(p.name))}
                    labels = {"depth": (base / "frames" / "depth" / camera, "depth_{:05d}.png", ("depth", "normals")),
                              "semseg": (seg_top / camera, "classgt_{:05d}.png", ("semseg",))}
                    found: Dict[str, Dict[int, Path]] = {}
                    for kind, (folder, pattern, tasks) in labels.items():
                        found[kind] = {int(p.stem.split("_")[-1]): p for p in folder.glob(pattern.replace("{:05d}", "*"))
                                       if p.stem.split("_")[-1].isdigit()}
                        if frames and not folder.is_dir():
                            problems.append(IndexProblem(MISSING, str(folder), f"{kind} folder missing, so no frame of "
                                                         f"{scene}/{variation}/{camera} has its {kind} label", tasks))
                            continue
                        for frame in sorted(set(found[kind]) - set(frames)):
                            problems.append(IndexProblem(LABEL_WITHOUT_IMAGE, str(found[kind][frame]),
                                                         f"{kind} file has no image {rgb_dir / f'rgb_{frame:05d}.jpg'}", tasks))
                        if folder.is_dir():
                            for frame in sorted(set(frames) - set(found[kind])):
                                problems.append(IndexProblem(MISSING, str(folder / pattern.format(frame)),
                                                             f"{kind} file missing for image {frames[frame]}", tasks))
                    for frame, path in frames.items():
                        entry = Entry(f"{scene}/{variation}/{camera}/{frame:05d}", path,
                                      meta={"frame": frame, "camera": int(camera.split("_")[1])})
                        for kind in ("depth", "semseg"):
                            if frame in found[kind]:
                                entry.files[kind] = found[kind][frame]
                        if colors.is_file():
                            entry.files["colors"] = colors
                        if intrinsic.is_file():
                            entry.files["camera"] = intrinsic
                        entries.append(entry)
        entries.sort(key=lambda e: e.name)
        return entries, problems

    # -- file kinds ---------------------------------------------------------------------------------
    def read_colors(self, entry: Entry) -> Dict[int, str]:
        path = entry.files["colors"]
        if path not in self._colors:
            self._colors[path] = parse_colors(path)
        return self._colors[path]

    def read_semseg(self, entry: Entry) -> np.ndarray:
        path = entry.files["semseg"]
        rgb = read_png(path, "classSegmentation")
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ReaderError(CORRUPT_MASK, path, f"class segmentation must be an 8-bit RGB PNG, got shape {rgb.shape} "
                              f"{rgb.dtype}")
        colors = self.read_colors(entry)
        ids = self.label_space.ids(self.name)
        codes = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
        unique, inverse = np.unique(codes, return_inverse=True)
        unknown = [int(c) for c in unique if int(c) not in colors]
        if unknown:
            counts = {c: int((codes == c).sum()) for c in unknown[:10]}
            raise ReaderError(UNKNOWN_COLOUR, path, f"colours not in {entry.files['colors']}: " + ", ".join(
                f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) {n} px" for c, n in counts.items()))
        table = np.array([ids.get(colors[int(c)], 255) for c in unique], dtype=np.uint8)
        return table[inverse.reshape(codes.shape)]

    def read_depth(self, entry: Entry) -> np.ndarray:
        """(H,W) float32 metres; 0 and the far plane 65535 (sky) are invalid (0)."""
        path = entry.files["depth"]
        stored = read_png(path, "depth")
        if stored.ndim != 2 or stored.dtype != np.uint16:
            raise ReaderError(CORRUPT_MASK, path, f"depth must be a single-channel 16-bit PNG, got shape {stored.shape} "
                              f"{stored.dtype}")
        valid = (stored > 0) & (stored < FAR_PLANE)
        return np.where(valid, stored.astype(np.float32) / DEPTH_SCALE, 0.0).astype(np.float32)

    def read_camera(self, entry: Entry) -> np.ndarray:
        path = entry.files["camera"]
        if path not in self._intrinsics:
            self._intrinsics[path] = parse_intrinsics(path)
        key = (entry.meta["frame"], entry.meta["camera"])
        if key not in self._intrinsics[path]:
            raise ReaderError(BAD_CAMERA, path, f"no row for frame {key[0]} camera {key[1]} (image {entry.image})")
        return self._intrinsics[path][key]
