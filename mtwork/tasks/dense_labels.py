"""Labels the dense tasks derive from other data: surface normals from depth, edges from the image.

Pure NumPy functions (no torch, no mtwork imports) so that the dataset reader can call them on raw
samples and the tests can check them against analytic geometry.

Conventions (one place for them):

* **Camera frame** (OpenCV / Cityscapes): x right, y down, z forward along the optical axis, metres.
* **Intrinsics** ``(fx, fy, u0, v0)`` in pixels, pixel centres at integer coordinates: the pixel in
  row ``v``, column ``u`` is the ray through ``((u - u0) / fx, (v - v0) / fy, 1)``. Depth is
  *z-depth* (distance along the optical axis), so the 3-D point of that pixel is
  ``z * ((u - u0) / fx, (v - v0) / fy, 1)``.
* **Normals**: unit vectors in the camera frame, oriented towards the camera (``n . P < 0`` for the
  surface point ``P``): a flat road seen from above is ``(0, -1, 0)``, a wall facing the camera
  ``(0, 0, -1)``. Invalid pixels hold the zero vector.
* **Edges**: Sobel gradient magnitude of the grayscale image in [0, 1] (see ``sobel_edges``).

How intrinsics follow resize/crop/flip lives with the transforms (``mtwork.data.transforms``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: ITU-R BT.601 luma weights (R, G, B): the grayscale the edge label is taken of.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

#: Largest Sobel magnitude a 3x3 window of values in [0, 1] can reach: Gx = 4 and Gy = 2 at once
#: (e.g. a step along a diagonal with one corner lit), sqrt(4^2 + 2^2) = 2 sqrt(5). Both components
#: cannot be 4 together (that would need the top-right corner to be 0 and 1), so 4 sqrt(2) is never
#: reached; dividing by the attained maximum keeps the label's range exactly [0, 1].
SOBEL_MAX_MAGNITUDE = float(2.0 * np.sqrt(5.0))

#: Intrinsics order used everywhere a camera travels as a vector (raw samples, batches).
INTRINSICS_KEYS = ("fx", "fy", "u0", "v0")


def backproject(depth: np.ndarray, intrinsics: Sequence[float]) -> np.ndarray:
    """z-depth (H,W) metres + intrinsics (fx, fy, u0, v0) px -> camera-frame points (H,W,3) metres."""
    fx, fy, u0, v0 = (float(v) for v in intrinsics)
    h, w = depth.shape
    z = depth.astype(np.float64)
    u = np.arange(w, dtype=np.float64)[None, :]
    v = np.arange(h, dtype=np.float64)[:, None]
    return np.stack([(u - u0) / fx * z, (v - v0) / fy * z, z], axis=-1)


def normals_from_depth(depth: np.ndarray, intrinsics: Sequence[float]) -> np.ndarray:
    """Unit surface normals (H,W,3) float32 in the camera frame from z-depth (H,W) metres.

    Each pixel is back-projected to a 3-D point; the normal is the normalised cross product of the
    horizontal and vertical finite differences of the neighbouring points, oriented towards the
    camera. A pixel is valid only when its depth and those of its four 4-neighbours are > 0 (so the
    image border and pixels next to sky or other invalid depth are invalid); invalid pixels get the
    zero vector.

    Per axis the difference is taken towards the neighbour whose depth is closer to the pixel's own
    (forward or backward difference). On a plane both choices lie in the plane, so planar surfaces
    get exact normals; at an occlusion boundary this picks the neighbour on the same surface instead
    of spanning the depth jump, which a central difference would turn into a meaningless normal.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"normals_from_depth: depth must be (H,W), got shape {depth.shape}")
    fx, fy = float(intrinsics[0]), float(intrinsics[1])
    if not (np.isfinite(fx) and np.isfinite(fy) and fx > 0 and fy > 0):
        raise ValueError(f"normals_from_depth: focal lengths must be positive, got fx={fx}, fy={fy}")
    h, w = depth.shape
    normals = np.zeros((h, w, 3), dtype=np.float32)
    if h < 3 or w < 3:
        return normals
    valid = np.isfinite(depth) & (depth > 0)
    points = backproject(np.where(valid, depth, 0.0), intrinsics)
    z = points[..., 2]

    # Interior pixels only: (h-2, w-2) windows; c = centre, l/r/t/b = neighbours.
    c = points[1:-1, 1:-1]
    ok = valid[1:-1, 1:-1] & valid[1:-1, :-2] & valid[1:-1, 2:] & valid[:-2, 1:-1] & valid[2:, 1:-1]
    zc = z[1:-1, 1:-1]
    forward_u = np.abs(z[1:-1, 2:] - zc) <= np.abs(zc - z[1:-1, :-2])
    du = np.where(forward_u[..., None], points[1:-1, 2:] - c, c - points[1:-1, :-2])
    forward_v = np.abs(z[2:, 1:-1] - zc) <= np.abs(zc - z[:-2, 1:-1])
    dv = np.where(forward_v[..., None], points[2:, 1:-1] - c, c - points[:-2, 1:-1])

    n = np.cross(du, dv)  # both differences point along +u / +v, so the orientation is consistent
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    ok &= norm[..., 0] > 0
    n = n / np.where(norm > 0, norm, 1.0)
    # Face the camera: the point itself is the viewing ray, so n . P must be negative.
    n = np.where((np.sum(n * c, axis=-1, keepdims=True) > 0), -n, n)
    normals[1:-1, 1:-1] = np.where(ok[..., None], n, 0.0).astype(np.float32)
    return normals


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (H,W) float64 luma in [0, 1] (``LUMA_WEIGHTS``)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"to_grayscale: image must be (H,W,3), got shape {image.shape}")
    return (image.astype(np.float64) / 255.0) @ np.asarray(LUMA_WEIGHTS, dtype=np.float64)


def sobel_magnitude(gray: np.ndarray) -> np.ndarray:
    """Raw Sobel magnitude sqrt(Gx^2 + Gy^2) of a (H,W) image, float64, replicate-padded borders.

    Gx = [[-1,0,1],[-2,0,2],[-1,0,1]] (x = columns, right positive), Gy its transpose (rows, down
    positive). Replicate padding makes a flat image's border 0 instead of a fake frame of edges.
    """
    g = np.pad(np.asarray(gray, dtype=np.float64), 1, mode="edge")
    left = g[:-2, :-2] + 2.0 * g[1:-1, :-2] + g[2:, :-2]
    right = g[:-2, 2:] + 2.0 * g[1:-1, 2:] + g[2:, 2:]
    top = g[:-2, :-2] + 2.0 * g[:-2, 1:-1] + g[:-2, 2:]
    bottom = g[2:, :-2] + 2.0 * g[2:, 1:-1] + g[2:, 2:]
    return np.hypot(right - left, bottom - top)


def sobel_edges(image: np.ndarray) -> np.ndarray:
    """Edge label (H,W) float32 in [0, 1] of an un-normalised (H,W,3) uint8 RGB image.

    Grayscale (BT.601 luma, [0, 1]) -> Sobel magnitude -> divided by ``SOBEL_MAX_MAGNITUDE``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"sobel_edges: expects the un-normalised uint8 image, got {image.dtype}")
    return (sobel_magnitude(to_grayscale(image)) / SOBEL_MAX_MAGNITUDE).clip(0.0, 1.0).astype(np.float32)
