"""Tiny fixtures of the dense-label datasets, written in each dataset's real on-disk layout.

Each ``write_<format>(root)`` writes a couple of small images per split with label values chosen so that
the expected decoded values can be worked out by hand from the dataset's documentation (they are
spelled out in the ``EXPECT`` dicts and in the reader tests, not computed by mtwork code).

``png_rgb16`` writes 16-bit-per-channel colour PNGs with a PNG encoder of its own (zlib + the five
PNG row filters), independent of Pillow, which cannot write them.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Dict

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------
# File writers
# ---------------------------------------------------------------------------------------------


def save_image(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def gradient_rgb(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic textured RGB image (so Sobel edges are not all zero)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def png_rgb16(path: Path, array: np.ndarray) -> Path:
    """Write (H,W,3|4) uint16 as a 16-bit RGB(A) PNG; row r uses filter type r % 5 (None, Sub, Up,
    Average, Paeth), so a reader must undo every filter with the 6/8-byte pixel stride."""
    array = np.asarray(array, dtype=np.uint16)
    height, width, channels = array.shape
    bpp = 2 * channels
    rows = array.astype(">u2").reshape(height, width * channels).view(np.uint8).reshape(height, -1).astype(np.int64)
    out = bytearray()
    prior = np.zeros_like(rows[0])
    for r in range(height):
        raw = rows[r]
        left = np.concatenate([np.zeros(bpp, np.int64), raw[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prior[:-bpp]])
        kind = r % 5
        predictor = (np.zeros_like(raw), left, prior, (left + prior) // 2, _paeth(left, prior, upleft))[kind]
        out.append(kind)
        out += ((raw - predictor) % 256).astype(np.uint8).tobytes()
        prior = raw

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    color_type = {3: 2, 4: 6}[channels]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out)))
                     + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------------

CITYSCAPES_IMAGES = {"train": [("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")],
                     "val": [("frankfurt", "frankfurt_000000_000294")]}
CITYSCAPES_CAMERA = {"baseline": 0.22, "fx": 2262.0, "fy": 2265.0, "u0": 3.5, "v0": 2.5}


def cityscapes_label_ids() -> np.ndarray:
    """(6,8) labelIds: row 0 road road sidewalk sidewalk sky sky car car, row 1 the void ids 0..6 and
    parking (9), rows 2..5 person rider truck bicycle ... (see the test for the trainIds)."""
    ids = np.full((6, 8), 7, np.uint8)
    ids[0] = [7, 7, 8, 8, 23, 23, 26, 26]
    ids[1] = [0, 1, 2, 3, 4, 5, 6, 9]
    ids[2, :4] = [24, 25, 27, 33]
    return ids


def cityscapes_disparity() -> np.ndarray:
    """(6,8) uint16: 257 (d = 1 px) everywhere but row 0: p=0, p=1 (both invalid), p=513 (d = 2 px)."""
    disp = np.full((6, 8), 257, np.uint16)
    disp[0, :3] = [0, 1, 513]
    return disp


def write_cityscapes(root: Path) -> Path:
    for split, images in CITYSCAPES_IMAGES.items():
        for i, (city, stem) in enumerate(images):
            save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", gradient_rgb(6, 8, i))
            save_image(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", cityscapes_label_ids())
            save_image(root / "disparity" / split / city / f"{stem}_disparity.png", cityscapes_disparity())
            camera = {"extrinsic": {"baseline": CITYSCAPES_CAMERA["baseline"], "pitch": 0.038, "roll": 0.0,
                                    "x": 1.7, "y": 0.1, "yaw": -0.0195, "z": 1.22},
                      "intrinsic": {k: CITYSCAPES_CAMERA[k] for k in ("fx", "fy", "u0", "v0")}}
            path = root / "camera" / split / city / f"{stem}_camera.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(camera, indent=4))
    return root


# ---------------------------------------------------------------------------------------------
# Virtual KITTI 2
# ---------------------------------------------------------------------------------------------

#: colors.txt of the release (README order and names).
VKITTI2_COLORS = """Category r g b
Terrain 210 0 200
Sky 90 200 255
Tree 0 199 0
Vegetation 90 240 0
Building 140 140 140
Road 100 60 100
GuardRail 250 100 255
TrafficSign 255 255 0
TrafficLight 200 200 0
Pole 255 130 0
Misc 80 80 80
Truck 160 60 60
Car 255 127 80
Van 0 139 139
Undefined 0 0 0
"""
VKITTI2_FRAMES = {("Scene01", "clone"): [0, 1], ("Scene01", "fog"): [0], ("Scene02", "clone"): [0]}
VKITTI2_K = {0: (725.0087, 725.0087, 620.5, 187.0), 1: (725.0087, 725.0087, 620.5, 187.0)}


def vkitti2_classgt() -> np.ndarray:
    """(4,6,3) colours: row 0 Car, Van, Sky, GuardRail, Terrain, Undefined; rows 1..3 Road."""
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:] = (100, 60, 100)
    rgb[0] = [(255, 127, 80), (0, 139, 139), (90, 200, 255), (250, 100, 255), (210, 0, 200), (0, 0, 0)]
    return rgb


def vkitti2_depth() -> np.ndarray:
    """(4,6) uint16 cm: 1234 (12.34 m) everywhere, the far plane 65535 at [0,2] (the sky pixel)."""
    depth = np.full((4, 6), 1234, np.uint16)
    depth[0, 2] = 65535
    return depth


def write_vkitti2(root: Path, folder: str = "classSegmentation") -> Path:
    for (scene, variation), frames in VKITTI2_FRAMES.items():
        base = root / scene / variation
        base.mkdir(parents=True, exist_ok=True)
        (base / "colors.txt").write_text(VKITTI2_COLORS)
        rows = ["frame cameraID K[0,0] K[1,1] K[0,2] K[1,2]"]
        for frame in frames:
            for camera, k in VKITTI2_K.items():
                rows.append(f"{frame} {camera} " + " ".join(str(v) for v in k))
        (base / "intrinsic.txt").write_text("\n".join(rows) + "\n")
        for frame in frames:
            save_image(base / "frames" / "rgb" / "Camera_0" / f"rgb_{frame:05d}.jpg", gradient_rgb(4, 6, frame), quality=95)
            save_image(base / "frames" / "depth" / "Camera_0" / f"depth_{frame:05d}.png", vkitti2_depth())
            save_image(base / "frames" / folder / "Camera_0" / f"classgt_{frame:05d}.png", vkitti2_classgt())
    return root


# ---------------------------------------------------------------------------------------------
# SYNTHIA-RAND-CITYSCAPES
# ---------------------------------------------------------------------------------------------

SYNTHIA_IDS = ("0000000", "0000001", "0009001")


def synthia_labels() -> np.ndarray:
    """(4,6,3) uint16: R = class id (Road 3 everywhere; row 0: Car 8, sky 1, Lanemarking 22, Terrain 16,
    Pedestrian 10, void 0), G = instance id 300 (> 255 on purpose), B = 0."""
    labels = np.zeros((4, 6, 3), np.uint16)
    labels[..., 0] = 3
    labels[0, :, 0] = [8, 1, 22, 16, 10, 0]
    labels[..., 1] = 300
    return labels


def synthia_depth() -> np.ndarray:
    """(4,6,3) uint16 cm, the same in the three channels: 1234 (12.34 m); [0,0] = 0, [0,1] = 65535."""
    depth = np.full((4, 6), 1234, np.uint16)
    depth[0, :2] = [0, 65535]
    return np.repeat(depth[..., None], 3, axis=-1)


def write_synthia(root: Path) -> Path:
    for i, stem in enumerate(SYNTHIA_IDS):
        save_image(root / "RGB" / f"{stem}.png", gradient_rgb(4, 6, i))
        png_rgb16(root / "GT" / "LABELS" / f"{stem}.png", synthia_labels())
        png_rgb16(root / "Depth" / "Depth" / f"{stem}.png", synthia_depth())
    return root


# ---------------------------------------------------------------------------------------------
# Taskonomy (Omnidata layout) and NYUD_MT
# ---------------------------------------------------------------------------------------------

TASKONOMY_VIEWS = {"hanson": [(0, 0), (0, 1)], "wiconisco": [(3, 2)], "ihlen": [(1, 0)]}
#: A tilted plane (the camera looks down at a floor-like surface): unit normal in mtwork's camera
#: frame (x right, y down, z forward, facing the camera) and its distance.
PLANE_NORMAL = np.array([0.0, -0.6, -0.8])
PLANE_DISTANCE = 2.0


def plane_depth(height: int, width: int, intrinsics) -> np.ndarray:
    """z-depth of the plane n . P = -d seen through ``intrinsics``: z = d / -(n . ray)."""
    fx, fy, u0, v0 = intrinsics
    u = (np.arange(width) - u0) / fx
    v = (np.arange(height)[:, None] - v0) / fy
    along = PLANE_NORMAL[0] * u + PLANE_NORMAL[1] * v + PLANE_NORMAL[2]
    return PLANE_DISTANCE / -along


def nyu_convention(normal_camera: np.ndarray) -> np.ndarray:
    """mtwork camera-frame normal -> the NYU/2D-3D-S convention (x right, y down, z towards the viewer)."""
    return normal_camera * np.array([1.0, 1.0, -1.0])


def taskonomy_semseg() -> np.ndarray:
    """(16,16) uint8: 1 background everywhere, row 0: 0 uncertain, 3 chair, 4 couch, 2 bottle, 15 book, 17 vase."""
    ids = np.ones((16, 16), np.uint8)
    ids[0, :6] = [0, 3, 4, 2, 15, 17]
    return ids


def taskonomy_normal_png() -> np.ndarray:
    """(16,16,3) uint8: the plane's normal in the stored convention, (v + 1) / 2 * 255 rounded; row 0 has
    the documented special values: [0,0] (128,128,128) missing, [0,1] (128,128,255) facing the viewer."""
    stored = np.rint((nyu_convention(PLANE_NORMAL) + 1.0) / 2.0 * 255.0).astype(np.uint8)
    png = np.broadcast_to(stored, (16, 16, 3)).copy()
    png[0, 0] = (128, 128, 128)
    png[0, 1] = (128, 128, 255)
    return png


def write_taskonomy(root: Path, component: str = "taskonomy", point_info: bool = True) -> Path:
    fov = np.pi / 2  # fx = fy = (16 / 2) / tan(45 deg) = 8 px, centre (7.5, 7.5)
    depth_m = plane_depth(16, 16, (8.0, 8.0, 7.5, 7.5))
    stored = np.rint(depth_m * 512.0).astype(np.uint16)
    stored[0, 2] = 65535  # missing mesh
    for building, views in TASKONOMY_VIEWS.items():
        for i, (point, view) in enumerate(views):
            stem = f"point_{point}_view_{view}_domain_"
            save_image(root / "rgb" / component / building / f"{stem}rgb.png", gradient_rgb(16, 16, i))
            save_image(root / "depth_zbuffer" / component / building / f"{stem}depth_zbuffer.png", stored)
            save_image(root / "normal" / component / building / f"{stem}normal.png", taskonomy_normal_png())
            save_image(root / "segment_semantic" / component / building / f"{stem}segment_semantic.png", taskonomy_semseg())
            if point_info:
                path = root / "point_info" / component / building / f"{stem}point_info.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"field_of_view_rads": fov, "point_uuid": str(point), "view_id": view}))
    return root


NYU_IDS = {"train": ["0003", "0004"], "val": ["0001"]}


def nyu_segmentation() -> np.ndarray:
    """(6,8) uint8: 1 wall everywhere; row 0: 0 void, 5 chair, 25 television, 40 otherprop, 2 floor, 23 books."""
    ids = np.ones((6, 8), np.uint8)
    ids[0, :6] = [0, 5, 25, 40, 2, 23]
    return ids


def write_nyuv2(root: Path, size=(6, 8), intrinsics=None) -> Path:
    """NYUD_MT layout. ``intrinsics`` given: depth and normals of the tilted plane seen with them;
    otherwise depth 2.5 m with [0,0] = 0 and normals (0, 0, 1) (facing the viewer, stored convention)
    with [0,0] = (0,0,0)."""
    height, width = size
    for split, ids in NYU_IDS.items():
        for i, image_id in enumerate(ids):
            save_image(root / "images" / f"{image_id}.jpg", gradient_rgb(height, width, i), quality=95)
            seg = np.ones((height, width), np.uint8)
            seg[:6, :8] = nyu_segmentation()[: min(6, height), : min(8, width)]
            save_image(root / "segmentation" / f"{image_id}.png", seg)
            if intrinsics is None:
                depth = np.full((height, width), 2.5, np.float32)
                depth[0, 0] = 0.0
                normals = np.zeros((height, width, 3), np.float32)
                normals[..., 2] = 1.0
                normals[0, 0] = 0.0
            else:
                depth = plane_depth(height, width, intrinsics).astype(np.float32)
                normals = np.broadcast_to(nyu_convention(PLANE_NORMAL), (height, width, 3)).astype(np.float32)
            for folder, array in (("depth", depth), ("normals", normals)):
                (root / folder).mkdir(parents=True, exist_ok=True)
                np.save(root / folder / f"{image_id}.npy", array)
            (root / "edge").mkdir(parents=True, exist_ok=True)
            np.save(root / "edge" / f"{image_id}.npy", np.zeros((height, width), np.float32))
    (root / "gt_sets").mkdir(parents=True, exist_ok=True)
    for split, ids in NYU_IDS.items():
        (root / "gt_sets" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


WRITERS: Dict[str, object] = {
    "cityscapes": write_cityscapes, "vkitti2": write_vkitti2, "synthia": write_synthia,
    "taskonomy": write_taskonomy, "nyuv2": write_nyuv2,
}
