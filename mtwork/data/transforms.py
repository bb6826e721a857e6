"""Joint image/label transforms: raw dataset samples -> the ``mtwork.data.batch`` sample contract.

Input (raw sample, e.g. from ``BDD100KDataset`` without a transform)::

    image (H0,W0,3) uint8 | semseg, drivable (H0,W0) uint8 | depth (H0,W0) float32 metres
    normals (H0,W0,3) float32 unit camera-frame vectors | edges (H0,W0) float32 [0,1]
    camera (4,) intrinsics (fx, fy, u0, v0) px, pixel centres at integers
    det {"boxes": (N,4) float xyxy pixel edges, "labels": (N,) int, optional "ignore_boxes" (M,4),
         "ignore_labels" (M,): ignore regions, transformed like the boxes} | name | orig_size (H0,W0)

With ``render_on_device``, TrainTransform's output image is instead the decoded frame (h,w,3) uint8
with its ``image_geometry``, drawn on the training device (``render_image``, ``CanvasGeometry``).

``TrainTransform`` also takes an encoded image in place of the array (``TAKES_ENCODED_IMAGE``): an
object with ``size`` (H0, W0) and ``decode(min_size) -> (h,w,3) uint8`` (``mtwork.data.bdd100k.
ImageFile``), which it decodes at the largest JPEG reduction that still holds the resized image.

Output: image (3,H,W) uint8 RGB (normalised later, on the device: ``mtwork.data.batch.
batch_to_device``); image_box (x1, y1, x2, y2) of the real image on the canvas (TrainTransform; the rest
is padding); semseg/drivable (h,w) uint8 with 255 = ignore; depth (h,w) float32 metres (0 = invalid);
normals (3,h,w) float32 ((0,0,0) = invalid); edges (h,w) float32 in [0,1] (-1 = invalid, i.e.
padding); camera (4,) float32 intrinsics of the *label* frame (h,w); det {"boxes": (N,4) float32,
"labels": (N,) int64, and "ignore_boxes" (M,4) float32, "ignore_labels" (M,) int64 when the input has
them}; name; orig_size = (H0, W0), the size on disk. ``EvalTransform`` letterboxes too (the image at
the top-left corner), so its image_box is (0, 0, w, h).

Resampling: images bilinearly with antialiasing (torch's uint8 kernel, PIL's filter and pixel-centre
sampling: out pixel i <- in (i + 0.5) / scale - 0.5), masks by nearest neighbour at exactly
floor((i + 0.5) / scale) (integer arithmetic), so masks and boxes stay on the same pixels.

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

import warnings
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mtwork.data.batch import IGNORE_INDEX, IMAGE_PAD_UINT8

#: Value of padded pixels per label kind; each is the kind's "invalid" value, so padding never counts
#: in a loss or metric. Padded image pixels get the mean colour (``IMAGE_PAD_UINT8``), and are
#: exactly 0 after normalisation (``image_box``, ``mtwork.data.batch.normalize_images``).
MASK_PAD = {"semseg": IGNORE_INDEX, "drivable": IGNORE_INDEX, "depth": 0.0, "normals": 0.0, "edges": -1.0}
#: Float label kinds and whether they are resized by nearest neighbour (else bilinear).
FLOAT_LABELS = {"depth": True, "normals": True, "edges": False}
#: Boxes narrower or shorter than this (pixels) after clipping are dropped with their labels.
MIN_BOX_SIZE = 2.0

_PAD_COLOUR = torch.tensor(IMAGE_PAD_UINT8, dtype=torch.uint8)


def _check_size(size: Tuple[int, int], what: str) -> Tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"{what}: size must be (H, W) positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _writable(array: np.ndarray, dtype=None) -> np.ndarray:
    """C-contiguous, writable (torch.from_numpy needs both; PIL hands out read-only arrays)."""
    return np.require(array, dtype=dtype, requirements=("C", "W"))


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,H,W) uint8 tensor (contiguous: the sample contract)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))


def frame_tensor(image: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 array -> (H,W,3) uint8 tensor sharing its memory. Read-only arrays (PIL hands
    those out) are shared too: only ever read (``resize_uint8``) or copied (``collate``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns once about non-writable arrays
        return torch.from_numpy(image)


def resize_uint8(frame: torch.Tensor, size_hw: Tuple[int, int]) -> torch.Tensor:
    """(H,W,3) uint8 tensor -> (3,h,w) uint8, bilinear with antialiasing, on the frame's device.

    On the CPU: torch's vectorised uint8 kernel (3-5x faster than PIL's on one thread), with PIL's
    triangle filter widened by the scale factor when shrinking and pixel-centre sampling; it reads the
    (H,W,3) layout as channels-last, so nothing is copied first. Elsewhere (CUDA has no uint8
    antialiased kernel) the same filter runs in float32 and is rounded to uint8: within one grey
    level of the CPU's fixed-point result. Not necessarily contiguous.
    """
    if frame.device.type != "cpu":
        return resize_uint8_in_float(frame, size_hw)
    view = frame.permute(2, 0, 1).unsqueeze(0)  # channels-last strides, no copy
    return F.interpolate(view, size=tuple(size_hw), mode="bilinear", align_corners=False, antialias=True)[0]


def resize_uint8_in_float(frame: torch.Tensor, size_hw: Tuple[int, int]) -> torch.Tensor:
    """``resize_uint8``'s path off the CPU: (H,W,3) uint8 -> (3,h,w) uint8 through float32, rounded."""
    view = frame.permute(2, 0, 1).unsqueeze(0).float()
    out = F.interpolate(view, size=tuple(size_hw), mode="bilinear", align_corners=False, antialias=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_image(image: np.ndarray, size_hw: Tuple[int, int]) -> torch.Tensor:
    """(H,W,3) uint8 array -> (3,h,w) uint8 tensor, bilinear with antialiasing (``resize_uint8``).
    Not necessarily contiguous."""
    if image.shape[:2] == tuple(size_hw):
        return image_tensor(image)
    return resize_uint8(frame_tensor(image), size_hw)


class CanvasGeometry(NamedTuple):
    """Where TrainTransform puts its image on the canvas, in network pixels: the whole frame resized to
    ``resized`` (h, w), the window of ``region`` (h, w) at ``crop`` (y0, x0) of it placed on the
    ``canvas`` (H, W) at column ``cx`` (row 0), flipped horizontally with the canvas when ``flip``;
    the rest of the canvas is padding. ``render_image`` draws it; a sample whose image rendering is
    left to the device carries it as ``image_geometry`` (``as_tensor``: (10,) int64)."""

    rh: int
    rw: int
    y0: int
    x0: int
    ch: int
    cw: int
    out_h: int
    out_w: int
    cx: int
    flip: int

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor(self, dtype=torch.int64)

    @classmethod
    def from_tensor(cls, row: torch.Tensor) -> "CanvasGeometry":
        return cls(*(int(v) for v in row.tolist()))


def render_image(frame: torch.Tensor, g: CanvasGeometry) -> torch.Tensor:
    """(h,w,3) uint8 frame, the whole image (possibly decoded at a reduced size) -> (3,H,W) uint8
    canvas (``CanvasGeometry``), on the frame's device: resize, crop, flip, pad with the mean colour.
    TrainTransform's one implementation of the image's geometry, in a loader worker or (deferred) on
    the training device (``mtwork.data.batch.batch_to_device``); the same pixels on the CPU either way."""
    if tuple(frame.shape[:2]) == (g.rh, g.rw):
        resized = frame.permute(2, 0, 1)
    else:
        resized = resize_uint8(frame, (g.rh, g.rw))
    window = resized[:, g.y0 : g.y0 + g.ch, g.x0 : g.x0 + g.cw]
    window = window.flip(-1) if g.flip else window
    if (g.ch, g.cw) == (g.out_h, g.out_w):
        return window.contiguous()
    canvas = _PAD_COLOUR.to(frame.device).view(3, 1, 1).repeat(1, g.out_h, g.out_w)
    canvas[:, : g.ch, g.cx : g.cx + g.cw] = window
    return canvas


def nearest_indices(size_in: int, size_out: int, start: int = 0, count: Optional[int] = None) -> np.ndarray:
    """Source index of output pixels ``start .. start+count-1`` when resizing ``size_in`` -> ``size_out``
    pixels by nearest neighbour: floor((i + 0.5) * size_in / size_out), in exact integer arithmetic
    (float formulas round the many exact ties, e.g. every pixel at scale 1/2, either way)."""
    count = size_out - start if count is None else count
    i = np.arange(start, start + count, dtype=np.int64)
    return ((2 * i + 1) * size_in) // (2 * size_out)


def _resize(array: np.ndarray, size_hw: Tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize sampling pixel centres: out pixel i <- in ((i + 0.5) / scale); uint8 RGB images through
    ``resize_image``, nearest neighbour by ``nearest_indices``, float maps bilinearly with PIL."""
    if array.shape[:2] == tuple(size_hw):
        return array
    if nearest:
        rows, cols = nearest_indices(array.shape[0], size_hw[0]), nearest_indices(array.shape[1], size_hw[1])
        return array[rows][:, cols]
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        return resize_image(array, size_hw).permute(1, 2, 0).numpy()
    if array.ndim == 3:
        # PIL has no multi-channel float mode: resize each channel ("F" mode), same sampling
        return np.stack([_resize(np.ascontiguousarray(array[..., c]), size_hw, nearest)
                         for c in range(array.shape[2])], axis=-1)
    if array.dtype in (np.float64, np.float16):
        array = array.astype(np.float32)
    return np.asarray(Image.fromarray(array).resize((size_hw[1], size_hw[0]), Image.BILINEAR))


def _mask_tensor(task: str, mask: np.ndarray) -> torch.Tensor:
    if task == "normals":  # (h,w,3) -> (3,h,w), channels first like the network output
        return torch.from_numpy(_writable(mask, np.float32)).permute(2, 0, 1).contiguous()
    if task in FLOAT_LABELS:
        return torch.from_numpy(_writable(mask, np.float32))
    return torch.from_numpy(_writable(mask, np.uint8))  # class ids; int64 only on the device


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
    padded at the bottom/right (masks with 255, depth with 0, the image with the mean colour, which is
    exactly 0 after normalisation: the output's ``image_box`` marks the real pixels, then flipped with
    the canvas). Images are resized bilinearly, masks by nearest neighbour. Boxes are scaled, shifted,
    clipped and flipped with the same formulas; those under ``MIN_BOX_SIZE`` px wide or tall afterwards
    are dropped with their labels.

    The image may come encoded (see the module docstring): it is then decoded at the largest JPEG
    reduction (1/2, 1/4, 1/8) that is still at least the drawn resized size, so a reduced decode is
    only ever shrunk further, never enlarged. Only the image is resized over the whole frame; masks
    are sampled on the crop window alone.

    ``generator``: a seeded ``torch.Generator`` for reproducible draws; None uses torch's global RNG
    (which DataLoader seeds per worker).

    ``render_on_device``: leave the image's resize, crop, flip and padding to the training device. The
    sample's ``image`` is then the decoded frame, (h,w,3) uint8 (the whole image, possibly decoded at
    a reduced size), with ``image_geometry`` (``CanvasGeometry.as_tensor``); ``collate`` keeps the
    frames as a list and ``batch_to_device`` renders the (B,3,H,W) canvas on the device with
    ``render_image``, the function this transform uses otherwise: identical pixels on the CPU. Masks,
    boxes and cameras are transformed here either way. The resize is a quarter of a loader worker's
    time at 736x1280 on a CPU and a few microseconds on a GPU (docs/benchmarks.md, "Loader").
    """

    #: Datasets may hand this transform an encoded image (``mtwork.data.bdd100k.ImageFile``).
    TAKES_ENCODED_IMAGE = True

    def __init__(
        self,
        size: Tuple[int, int],
        scale_range: Tuple[float, float] = (0.8, 1.25),
        hflip_prob: float = 0.5,
        generator: Optional[torch.Generator] = None,
        render_on_device: bool = False,
    ):
        self.size = _check_size(size, "TrainTransform")
        self.render_on_device = bool(render_on_device)
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
        h0, w0 = _image_size(sample)
        out_h, out_w = self.size
        rh, rw = params.resized
        y0, x0 = params.crop
        # Region of the resized image that lands on the canvas (the rest of the canvas is padding).
        ch, cw = min(out_h, rh - y0), min(out_w, rw - x0)
        # The canvas columns the region lands on: [0, cw), or [out_w - cw, out_w) once flipped.
        cx = out_w - cw if params.flip else 0
        rows, cols = nearest_indices(h0, rh, y0, ch), nearest_indices(w0, rw, x0, cw)
        if params.flip:
            cols = np.ascontiguousarray(cols[::-1])  # a reversed view would make the gathered windows non-contiguous

        def place(array: np.ndarray, fill: Any, nearest: bool) -> np.ndarray:
            if nearest:  # sample the crop window only (rows first: the column gather then sees only those)
                window = array[rows][:, cols]
            else:
                window = _resize(array, (rh, rw), nearest=False)[y0 : y0 + ch, x0 : x0 + cw]
                window = window[:, ::-1] if params.flip else window
            if (ch, cw) == (out_h, out_w):
                return window
            canvas = np.empty((out_h, out_w) + array.shape[2:], dtype=array.dtype)
            canvas[...] = fill
            canvas[:ch, cx : cx + cw] = window
            return canvas

        out: Dict[str, Any] = {"name": sample["name"], "orig_size": (h0, w0)}
        geometry = CanvasGeometry(rh, rw, y0, x0, ch, cw, out_h, out_w, cx, int(params.flip))
        frame = frame_tensor(_decoded_image(sample, (rh, rw)))
        if self.render_on_device:
            out["image"], out["image_geometry"] = frame, geometry.as_tensor()
        else:
            out["image"] = render_image(frame, geometry)
        out["image_box"] = (cx, 0, cx + cw, ch)

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
        return self.apply(sample, self.sample_params(_image_size(sample), generator))


def _is_encoded(image: Any) -> bool:
    return not isinstance(image, np.ndarray) and callable(getattr(image, "decode", None))


def _image_size(sample: Dict[str, Any]) -> Tuple[int, int]:
    """(H0, W0) of a raw sample's image, array or encoded; checks an array's layout."""
    image = sample["image"]
    if _is_encoded(image):
        return tuple(image.size)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"TrainTransform: sample '{sample.get('name')}' image must be (H,W,3) uint8, got {image.shape} {image.dtype}"
        )
    return image.shape[:2]


def _decoded_image(sample: Dict[str, Any], min_size: Tuple[int, int]) -> np.ndarray:
    """The raw sample's image as (h,w,3) uint8: encoded ones decoded at least ``min_size`` (H, W) large,
    still spanning the whole frame (so resizing it to the target gives the same geometry)."""
    image = sample["image"]
    return image.decode(min_size) if _is_encoded(image) else np.asarray(image)


class EvalTransform:
    """Letterbox the image into ``size`` like training, without randomness (uint8, normalised on the
    device); labels stay on disk's frame.

    The image is scaled by ``fit = min(H/H0, W/W0)`` (bilinear) to (h, w) = ``letterbox_size``, placed
    at the top-left of an (H, W) canvas and padded at the bottom/right with the mean colour (0 after
    normalisation), exactly as ``TrainTransform`` with scale factor 1 and no crop or flip. Masks, dense
    maps and boxes keep the on-disk resolution (``orig_size``): evaluators map predictions back to it
    and score there, as the official evaluation does; the sample's ``image_box`` = (0, 0, w, h) (the
    batch's ``valid_size`` = (h, w)) tells them where the image is (``mtwork.data.batch.dense_to_orig`` /
    ``boxes_to_orig``: take that region and resize it to orig_size; divide boxes by (h, w)/orig per
    axis). ``size=None`` keeps the image size.
    """

    def __init__(self, size: Optional[Tuple[int, int]]):
        self.size = None if size is None else _check_size(size, "EvalTransform")

    def __call__(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        image = np.asarray(sample["image"])
        h0, w0 = image.shape[:2]
        valid = (h0, w0) if self.size is None else letterbox_size((h0, w0), self.size)
        out_h, out_w = valid if self.size is None else self.size
        # the training geometry with no crop or flip: the image at the top-left, the mean colour (0 after
        # normalisation) below and to the right
        letterbox = CanvasGeometry(*valid, 0, 0, *valid, out_h, out_w, 0, 0)
        out: Dict[str, Any] = {
            "image": render_image(frame_tensor(image), letterbox),
            "image_box": (0, 0, valid[1], valid[0]),
            "name": sample["name"],
            "orig_size": (h0, w0),
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
