"""Joint image/label transforms: raw dataset samples -> the ``mtwork.data.batch`` sample contract.

Input (raw sample, e.g. from ``BDD100KDataset`` without a transform)::

    image (H0,W0,3) uint8 | semseg, drivable (H0,W0) uint8 | depth (H0,W0) float32 metres
    normals (H0,W0,3) float32 unit camera-frame vectors | edges (H0,W0) float32 [0,1]
    camera (4,) intrinsics (fx, fy, u0, v0) px, pixel centres at integers
    det {"boxes": (N,4) float xyxy pixel edges, "labels": (N,) int, optional "ignore_boxes" (M,4),
         "ignore_labels" (M,): ignore regions, transformed like the boxes} | name | orig_size (H0,W0)

Output: image (3,H,W) float32 normalised with ImageNet mean/std; semseg/drivable (h,w) int64 with
255 = ignore; depth (h,w) float32 metres (0 = invalid); normals (3,h,w) float32 ((0,0,0) = invalid);
edges (h,w) float32 in [0,1] (-1 = invalid, i.e. padding); camera (4,) float32 intrinsics of the
*label* frame (h,w); det {"boxes": (N,4) float32, "labels": (N,) int64, and "ignore_boxes" (M,4)
float32, "ignore_labels" (M,) int64 when the input has them}; name; orig_size = (H0, W0), the size on
disk; from ``EvalTransform`` also valid_size = (h, w), the part of the input holding the image.

Dense regression labels: depth and normals are resized by nearest neighbour (a bilinear mix of a
valid and an invalid pixel, or of two surfaces, is no surface at all), edges bilinearly (a plain
image-like map with no invalid value on disk). Normals are 3-D directions in the camera frame, so
resizing and cropping leave their values alone; a horizontal flip mirrors the scene (x -> -x) and
negates their x component. The camera intrinsics follow every step (``resize_intrinsics`` etc.:
resize u0' = (u0 + 0.5) * sx - 0.5, crop u0' = u0 - x0, flip u0' = W - 1 - u0), so normals derived
from the transformed depth and camera agree with the transformed normals after crops, flips and
downscaling (to a fraction of a degree). They are nevertheless derived once at full resolution by the
reader and transformed here: nearest-upsampled depth is a staircase whose finite differences lose the
surface, and full resolution is also the frame evaluation scores in.

Boxes are continuous pixel-edge coordinates: a box (x1, y1, x2, y2) covers exactly the pixel columns
x1..x2-1 of a mask, so scaling, cropping and flipping act on boxes and masks by the same formulas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from mtwork.data.batch import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

#: Value of padded pixels per label kind (images are padded with 0 after normalisation); each is the
#: kind's "invalid" value, so padding never counts in a loss or metric.
MASK_PAD = {"semseg": IGNORE_INDEX, "drivable": IGNORE_INDEX, "depth": 0.0, "normals": 0.0, "edges": -1.0}
#: Float label kinds and whether they are resized by nearest neighbour (else bilinear).
FLOAT_LABELS = {"depth": True, "normals": True, "edges": False}
#: Boxes narrower or shorter than this (pixels) after clipping are dropped with their labels.
MIN_BOX_SIZE = 2.0

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


def _check_size(size: Tuple[int, int], what: str) -> Tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"{what}: size must be (H, W) positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _writable(array: np.ndarray, dtype=None) -> np.ndarray:
    """C-contiguous, writable (torch.from_numpy needs both; PIL hands out read-only arrays)."""
    return np.require(array, dtype=dtype, requirements=("C", "W"))


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,H,W) float32, (x/255 - mean) / std."""
    tensor = torch.from_numpy(_writable(image)).permute(2, 0, 1).float().div_(255.0)
    return (tensor - _MEAN) / _STD


def _resize(array: np.ndarray, size_hw: Tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize with PIL, which samples pixel centres: out pixel i <- in ((i + 0.5) / scale)."""
    if array.shape[:2] == tuple(size_hw):
        return array
    resample = Image.NEAREST if nearest else Image.BILINEAR
    if array.ndim == 3 and array.dtype != np.uint8:
        # PIL has no multi-channel float mode: resize each channel ("F" mode), same sampling
        return np.stack([_resize(np.ascontiguousarray(array[..., c]), size_hw, nearest)
                         for c in range(array.shape[2])], axis=-1)
    if array.dtype in (np.float64, np.float16):
        array = array.astype(np.float32)
    return np.asarray(Image.fromarray(array).resize((size_hw[1], size_hw[0]), resample))


def _mask_tensor(task: str, mask: np.ndarray) -> torch.Tensor:
    if task == "normals":  # (h,w,3) -> (3,h,w), channels first like the network output
        return torch.from_numpy(_writable(mask, np.float32)).permute(2, 0, 1).contiguous()
    if task in FLOAT_LABELS:
        return torch.from_numpy(_writable(mask, np.float32))
    return torch.from_numpy(np.asarray(mask).astype(np.int64))


def _camera_tensor(camera: Any) -> torch.Tensor:
    values = np.asarray(camera, dtype=np.float64).reshape(-1)
    if values.shape != (4,):
        raise ValueError(f"camera must be the 4 intrinsics (fx, fy, u0, v0), got shape {values.shape}")
    return torch.from_numpy(values.astype(np.float32))


def _det_tensors(boxes: np.ndarray, labels: np.ndarray, prefix: str = "") -> Dict[str, torch.Tensor]:
    return {
        f"{prefix}boxes": torch.from_numpy(_writable(np.reshape(boxes, (-1, 4)), np.float32)),
        f"{prefix}labels": torch.from_numpy(_writable(np.reshape(labels, (-1,)), np.int64)),
    }


def letterbox_size(orig_size: Tuple[int, int], size: Tuple[int, int]) -> Tuple[int, int]:
    """(h, w) of an (H0, W0) image scaled to fit inside ``size`` (H, W) keeping its aspect ratio:
    scale = min(H/H0, W/W0), each side rounded (TrainTransform's scale with no random factor)."""
    h0, w0 = orig_size
    out_h, out_w = size
    scale = min(out_h / h0, out_w / w0)
    return min(out_h, max(1, round(h0 * scale))), min(out_w, max(1, round(w0 * scale)))


# ---------------------------------------------------------------------------------------------
# Intrinsics under the joint transforms (pixel centres at integers, as in ``mtwork.tasks.dense_labels``)
# ---------------------------------------------------------------------------------------------


def resize_intrinsics(intrinsics: Sequence[float], scale_xy: Sequence[float]) -> np.ndarray:
    """Intrinsics after resizing the image by (sx, sy) = (W'/W, H'/H).

    A resize that samples pixel centres maps the centre coordinate x to (x + 0.5) * s - 0.5, so
    u0' = (u0 + 0.5) * sx - 0.5 (not just u0 * sx) and fx' = fx * sx.
    """
    fx, fy, u0, v0 = (float(v) for v in intrinsics)
    sx, sy = (float(s) for s in scale_xy)
    return np.array([fx * sx, fy * sy, (u0 + 0.5) * sx - 0.5, (v0 + 0.5) * sy - 0.5], dtype=np.float64)


def crop_intrinsics(intrinsics: Sequence[float], offset_yx: Sequence[int]) -> np.ndarray:
    """Intrinsics after cropping from the top-left corner (y0, x0): the principal point shifts."""
    fx, fy, u0, v0 = (float(v) for v in intrinsics)
    y0, x0 = offset_yx
    return np.array([fx, fy, u0 - x0, v0 - y0], dtype=np.float64)


def flip_intrinsics(intrinsics: Sequence[float], width: int) -> np.ndarray:
    """Intrinsics after a horizontal flip of an image ``width`` px wide: column u -> width-1-u.

    The flipped image is that of the mirrored scene (x -> -x), which is why normals' x component is
    negated together with this.
    """
    fx, fy, u0, v0 = (float(v) for v in intrinsics)
    return np.array([fx, fy, width - 1 - u0, v0], dtype=np.float64)


@dataclass(frozen=True)
class AugParams:
    """One draw of TrainTransform's randomness.

    scale: image scale factor (on-disk px -> network px); resized: (h, w) after scaling;
    crop: (y0, x0) top-left of the crop window in the resized image (0 when padding instead);
    flip: horizontal flip of the final (cropped/padded) canvas.
    """

    scale: float
    resized: Tuple[int, int]
    crop: Tuple[int, int]
    flip: bool


class TrainTransform:
    """Random rescale, random crop / pad to exactly ``size``, random horizontal flip.

    The scale is ``fit * U(scale_range)``, where ``fit`` makes the image fit inside ``size``
    (``min(H/H0, W/W0)``). A resized side larger than the target is randomly cropped; a smaller one is
    padded at the bottom/right (masks with 255, depth with 0, the image with 0 after normalisation,
    i.e. the mean colour). Images are resized bilinearly, masks by nearest neighbour. Boxes are
    scaled, shifted, clipped and flipped with the same formulas; those under ``MIN_BOX_SIZE`` px wide
    or tall afterwards are dropped with their labels.

    ``generator``: a seeded ``torch.Generator`` for reproducible draws; None uses torch's global RNG
    (which DataLoader seeds per worker).
    """

    def __init__(
        self,
        size: Tuple[int, int],
        scale_range: Tuple[float, float] = (0.8, 1.25),
        hflip_prob: float = 0.5,
        generator: Optional[torch.Generator] = None,
    ):
        self.size = _check_size(size, "TrainTransform")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"TrainTransform: scale_range must satisfy 0 < lo <= hi, got {scale_range!r}")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"TrainTransform: hflip_prob must be in [0, 1], got {hflip_prob!r}")
        self.scale_range = (float(lo), float(hi))
        self.hflip_prob = float(hflip_prob)
        self.generator = generator

    @staticmethod
    def _uniform(generator: Optional[torch.Generator]) -> float:
        return float(torch.rand((), generator=generator))

    @staticmethod
    def _randint(high_inclusive: int, generator: Optional[torch.Generator]) -> int:
        if high_inclusive <= 0:
            return 0
        return int(torch.randint(0, high_inclusive + 1, (), generator=generator))

    def sample_params(self, orig_size: Tuple[int, int], generator: Optional[torch.Generator] = None) -> AugParams:
        """Draw scale, crop offset and flip for an image of ``orig_size`` (H0, W0).

        ``generator``: draw from this one (e.g. seeded per sample and epoch by the training engine, so
        a sample's augmentation does not depend on which process or worker loads it); default
        ``self.generator``.
        """
        gen = self.generator if generator is None else generator
        h0, w0 = orig_size
        out_h, out_w = self.size
        lo, hi = self.scale_range
        scale = min(out_h / h0, out_w / w0) * (lo + (hi - lo) * self._uniform(gen))
        resized = (max(1, round(h0 * scale)), max(1, round(w0 * scale)))
        crop = (self._randint(resized[0] - out_h, gen), self._randint(resized[1] - out_w, gen))
        flip = self._uniform(gen) < self.hflip_prob
        return AugParams(scale=scale, resized=resized, crop=crop, flip=flip)

    def apply(self, sample: Dict[str, Any], params: AugParams) -> Dict[str, Any]:
        """Apply one fixed draw (deterministic; the tests hand-work cases through this)."""
        image = np.asarray(sample["image"])
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"TrainTransform: sample '{sample.get('name')}' image must be (H,W,3) uint8, "
                f"got {image.shape} {image.dtype}"
            )
        h0, w0 = image.shape[:2]
        out_h, out_w = self.size
        rh, rw = params.resized
        y0, x0 = params.crop
        # Region of the resized image that lands on the canvas (the rest of the canvas is padding).
        ch, cw = min(out_h, rh - y0), min(out_w, rw - x0)

        def place(array: np.ndarray, fill: Any, nearest: bool) -> np.ndarray:
            resized = _resize(array, (rh, rw), nearest)
            canvas = np.full((out_h, out_w) + array.shape[2:], fill, dtype=array.dtype)
            canvas[:ch, :cw] = resized[y0 : y0 + ch, x0 : x0 + cw]
            return canvas[:, ::-1] if params.flip else canvas

        out: Dict[str, Any] = {"name": sample["name"], "orig_size": (h0, w0)}
        img = normalize_image(place(image, 0, nearest=False))
        img[:, ch:, :] = 0.0  # padding is 0 *after* normalisation
        if params.flip:
            img[:, :, : out_w - cw] = 0.0
        else:
            img[:, :, cw:] = 0.0
        out["image"] = img

        for task, fill in MASK_PAD.items():
            if task in sample:
                mask = np.asarray(sample[task])
                if mask.shape[:2] != (h0, w0):
                    raise ValueError(
                        f"TrainTransform: sample '{sample['name']}' {task} is {mask.shape}, image {(h0, w0)}"
                    )
                placed = place(mask, fill, nearest=FLOAT_LABELS.get(task, True))
                if task == "normals" and params.flip:
                    placed = placed * np.array([-1.0, 1.0, 1.0], dtype=np.float32)  # mirrored scene
                out[task] = _mask_tensor(task, placed)

        if "camera" in sample:
            camera = resize_intrinsics(sample["camera"], (rw / w0, rh / h0))
            camera = crop_intrinsics(camera, (y0, x0))
            if params.flip:
                camera = flip_intrinsics(camera, out_w)
            out["camera"] = _camera_tensor(camera)

        if "det" in sample:
            out["det"] = {}
            # ignore regions (when present) follow the same geometry as the boxes
            for prefix in ("", "ignore_") if "ignore_boxes" in sample["det"] else ("",):
                boxes = np.asarray(sample["det"][f"{prefix}boxes"], dtype=np.float64).reshape(-1, 4)
                labels = np.asarray(sample["det"][f"{prefix}labels"], dtype=np.int64).reshape(-1)
                # Exact per-axis factors, as the masks were resized to (rh, rw), not by `scale`.
                boxes = boxes * np.array([rw / w0, rh / h0, rw / w0, rh / h0])
                boxes -= np.array([x0, y0, x0, y0], dtype=np.float64)
                boxes[:, 0::2] = boxes[:, 0::2].clip(0, cw)
                boxes[:, 1::2] = boxes[:, 1::2].clip(0, ch)
                if params.flip:
                    boxes[:, [0, 2]] = out_w - boxes[:, [2, 0]]
                keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE)
                out["det"].update(_det_tensors(boxes[keep], labels[keep], prefix))
        return out

    def __call__(self, sample: Dict[str, Any], generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
        image = np.asarray(sample["image"])
        return self.apply(sample, self.sample_params(image.shape[:2], generator))


class EvalTransform:
    """Letterbox the image into ``size`` like training, without randomness; labels stay on disk's frame.

    The image is scaled by ``fit = min(H/H0, W/W0)`` (bilinear) to ``valid_size`` = (h, w) =
    ``letterbox_size``, placed at the top-left of an (H, W) canvas and padded at the bottom/right with 0
    after normalisation (the mean colour), exactly as ``TrainTransform`` with scale factor 1 and no crop
    or flip. Masks, dense maps and boxes keep the on-disk resolution (``orig_size``): evaluators map
    predictions back to it and score there, as the official evaluation does; the sample carries
    ``valid_size`` so that they can (``mtwork.data.batch.dense_to_orig`` / ``boxes_to_orig``: take the
    valid region and resize it to orig_size; divide boxes by valid/orig per axis). ``size=None`` keeps
    the image size (valid_size = orig_size).
    """

    def __init__(self, size: Optional[Tuple[int, int]]):
        self.size = None if size is None else _check_size(size, "EvalTransform")

    def __call__(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        image = np.asarray(sample["image"])
        h0, w0 = image.shape[:2]
        valid = (h0, w0) if self.size is None else letterbox_size((h0, w0), self.size)
        canvas = normalize_image(_resize(image, valid, nearest=False))
        if self.size is not None and valid != self.size:
            padded = canvas.new_zeros((3, *self.size))
            padded[:, : valid[0], : valid[1]] = canvas
            canvas = padded
        out: Dict[str, Any] = {
            "image": canvas,
            "name": sample["name"],
            "orig_size": (h0, w0),
            "valid_size": valid,
        }
        for task in MASK_PAD:
            if task in sample:
                out[task] = _mask_tensor(task, np.asarray(sample[task]))
        if "camera" in sample:  # labels stay on disk's frame, and so does the camera
            out["camera"] = _camera_tensor(sample["camera"])
        if "det" in sample:
            out["det"] = _det_tensors(sample["det"]["boxes"], sample["det"]["labels"])
            if "ignore_boxes" in sample["det"]:
                out["det"].update(_det_tensors(sample["det"]["ignore_boxes"], sample["det"]["ignore_labels"], "ignore_"))
        return out
