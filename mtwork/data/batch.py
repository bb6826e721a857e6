"""Collation of samples with partial labels into one batch (layout documented in mtwork.tasks.base).

Sample dict produced by a dataset (after its transform):
    image:     (3,H,W) uint8 RGB, not normalised (``batch_to_device`` normalises on the device); or,
               from ``TrainTransform(render_on_device=True)``, the decoded frame (h,w,3) uint8 with
    image_geometry: (10,) int64 ``CanvasGeometry``: batched as ``frames`` (a list) and
               ``image_geometry`` (B,10), and drawn into the (B,3,H,W) canvas by ``batch_to_device``
    image_box: (x1, y1, x2, y2) ints, pixel edges of the canvas region that holds the image; the rest
               is padding (filled with ``IMAGE_PAD_UINT8``, the mean colour) -- optional, absent =
               the whole canvas is image
    name:      str, image file name (e.g. "abc.jpg")
    orig_size: (H0,W0) ints, size on disk
    semseg:    (h,w) uint8 train ids, 255 ignore            -- only when the image has a seg label
    drivable:  (h,w) uint8 0/1/2, 255 ignore                -- only when labeled
    det:       {"boxes": (N,4) float32 xyxy px, "labels": (N,) int64 0..9, optionally "ignore_boxes"
               (M,4), "ignore_labels" (M,): ignore regions of those classes}  -- only when labeled
    depth:     (h,w) float32 z-depth in metres, 0 invalid                      -- only when labeled
    normals:   (3,h,w) float32 unit camera-frame normals, (0,0,0) invalid      -- only when labeled
    edges:     (h,w) float32 Sobel magnitude in [0,1], -1 invalid (padding)    -- only when labeled
    camera:    (4,) float32 intrinsics (fx, fy, u0, v0) px of the label frame  -- with normals

Images and masks stay uint8 through the loader workers, collation and the host-to-device copy (4x and
8x fewer bytes than float32 and int64); ``batch_to_device`` makes the model's input on the device:
    image:     (B,3,H,W) float32, (x/255 - IMAGENET_MEAN) / IMAGENET_STD, exactly 0 (the mean colour)
               outside each sample's ``image_box``
    semseg, drivable: (B,H,W) int64
So a collated batch on the CPU holds image (B,3,H,W) uint8, image_box (B,4) int64, and semseg/drivable
(B,H,W) uint8; everything that feeds a model or a loss takes its batch from ``batch_to_device``.

``valid_size`` (B,2) long, (y2, x2) of ``image_box``: the top-left part of the input that holds the
image. Evaluation letterboxes (EvalTransform: the image at the top-left corner, padding bottom/right),
and evaluators map input-frame predictions back to the on-disk frame with ``dense_to_orig`` and
``boxes_to_orig``: the one place for that geometry.

Batch keys for the dense regression tasks (collated only when some sample of the batch carries the
label, so the loader never builds maps of nothing; ``batch_to_device`` adds the missing ones filled with
the invalid value on the device, so after it every key is present; padding and unlabeled samples hold
the invalid value, so losses and metrics that look at valid pixels need no extra mask):
    depth:   (B,H,W) float32 metres, 0 = invalid
    normals: (B,3,H,W) float32, zero vector = invalid
    edges:   (B,H,W) float32 in [0,1], -1 = invalid
    camera:  (B,4) float32 (fx, fy, u0, v0) px, NaN rows for samples without one -- only when some
             sample of the batch carries a camera
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
import torch.utils.data

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: uint8 fill of padded image pixels: the ImageNet mean colour, rounded. Normalisation makes it exactly
#: 0 (``image_box``), so this value only matters to whoever looks at a batch before ``batch_to_device``.
IMAGE_PAD_UINT8 = tuple(round(255 * m) for m in IMAGENET_MEAN)
IGNORE_INDEX = 255
MASK_TASKS = ("semseg", "drivable")
BOX_TASKS = ("det",)
#: Dense regression labels: {task: (channels or None for a (h,w) map, invalid/padding value)}.
FLOAT_TASKS = {"depth": (None, 0.0), "normals": (3, 0.0), "edges": (None, -1.0)}


def _batch_tensor(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch tensor. In a DataLoader worker it lives in shared memory, as torch's
    ``default_collate`` does it: the worker then sends the main process a handle to it, where a
    tensor on the worker's heap would be copied into shared memory once more (2.8 MB per 736x1280
    image) before it can be sent."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=dtype)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=dtype).set_(storage).view(tuple(shape))


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)`` into a ``_batch_tensor``."""
    return torch.stack(list(tensors), out=_batch_tensor((len(tensors), *tensors[0].shape), tensors[0].dtype))


def _pad_stack(masks: List[torch.Tensor | None], shape: tuple[int, int]) -> torch.Tensor:
    """Stack (h,w) uint8 masks into (B,H,W) uint8, padding and filling absent ones with IGNORE_INDEX."""
    if all(m is not None and tuple(m.shape) == tuple(shape) and m.dtype == torch.uint8 for m in masks):
        return _stack(masks)
    out = _batch_tensor((len(masks), *shape), torch.uint8).fill_(IGNORE_INDEX)
    for i, mask in enumerate(masks):
        if mask is not None:
            out[i, : mask.shape[0], : mask.shape[1]] = mask
    return out


def collate(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Samples -> batch with ``labeled[task]`` for every task; mask and box keys are always present,
    dense regression keys when some sample carries the label (module docstring)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    deferred = ["image_geometry" in s for s in samples]
    if any(deferred) != all(deferred):
        raise ValueError("collate: some samples carry a frame to render on the device (image_geometry), others a canvas")
    batch: Dict[str, Any] = {}
    if all(deferred):
        # frames of different sizes (reduced decodes), rendered by batch_to_device; each one copied
        # into shared memory in a worker, as _stack does
        frames = [s["image"] for s in samples]
        if any(f.dtype != torch.uint8 or f.dim() != 3 or f.shape[-1] != 3 for f in frames):
            raise ValueError("collate: frames to render on the device must be (h,w,3) uint8 (mtwork.data.transforms)")
        in_worker = torch.utils.data.get_worker_info() is not None
        batch["frames"] = [_batch_tensor(f.shape, f.dtype).copy_(f) if in_worker else f for f in frames]
        batch["image_geometry"] = _stack([s["image_geometry"] for s in samples])
        height, width = (int(v) for v in batch["image_geometry"][0, 6:8])  # CanvasGeometry's out_h, out_w
        if bool((batch["image_geometry"][:, 6:8] != torch.tensor([height, width])).any()):
            raise ValueError("collate: the samples' canvases differ in size")
    else:
        batch["image"] = _stack([s["image"] for s in samples])
        if batch["image"].dtype != torch.uint8:
            raise ValueError(f"collate: sample images must be (3,H,W) uint8 (mtwork.data.batch), got {batch['image'].dtype}")
        height, width = batch["image"].shape[-2:]
    batch.update({
        "image_box": torch.tensor([list(s.get("image_box", (0, 0, width, height))) for s in samples], dtype=torch.long),
        "names": [s["name"] for s in samples],
        "orig_size": torch.tensor([list(s["orig_size"]) for s in samples], dtype=torch.long),
        "labeled": {},
    })
    batch["valid_size"] = batch["image_box"][:, [3, 2]].clone()  # (y2, x2): the letterbox's image part
    for task in MASK_TASKS:
        masks = [s.get(task) for s in samples]
        present = [m for m in masks if m is not None]
        shape = (
            max(m.shape[0] for m in present) if present else height,
            max(m.shape[1] for m in present) if present else width,
        )
        batch[task] = _pad_stack(masks, shape)
        batch["labeled"][task] = torch.tensor([m is not None for m in masks])
    for task, (channels, fill) in FLOAT_TASKS.items():
        maps = [s.get(task) for s in samples]
        present = [m for m in maps if m is not None]
        batch["labeled"][task] = torch.tensor([m is not None for m in maps])
        if not present:
            continue  # no (B,...) float32 map of invalid values: 5 MB per 384x640 sample for nothing
        shape = (max(m.shape[-2] for m in present), max(m.shape[-1] for m in present))
        lead = (len(samples),) if channels is None else (len(samples), channels)
        out = _batch_tensor((*lead, *shape), torch.float32).fill_(fill)
        for i, m in enumerate(maps):
            if m is not None:
                out[i, ..., : m.shape[-2], : m.shape[-1]] = m
        batch[task] = out
    cameras = [s.get("camera") for s in samples]
    if any(c is not None for c in cameras):
        batch["camera"] = torch.stack([
            torch.as_tensor(c, dtype=torch.float32).reshape(4) if c is not None else torch.full((4,), float("nan"))
            for c in cameras
        ])
    for task in BOX_TASKS:
        targets = [s.get(task) for s in samples]
        batch["labeled"][task] = torch.tensor([t is not None for t in targets])
        batch[task] = [
            t
            if t is not None
            else {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}
            for t in targets
        ]
    return batch


def normalize_images(images: torch.Tensor, image_box: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images (...,3,H,W) -> float32 (x/255 - IMAGENET_MEAN) / IMAGENET_STD, on their device.

    ``image_box`` (...,4) xyxy pixel edges (as collated, or one sample's (4,)): pixels outside it are
    padding and become exactly 0, the mean colour after normalisation (the padding rule of
    ``mtwork.data.transforms``). None: the whole image is real.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"normalize_images: expected uint8 images, got {images.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=images.device).view(3, 1, 1)
    out = images.float().div_(255.0).sub_(mean).div_(std)
    if image_box is not None:
        height, width = out.shape[-2:]
        box = image_box.to(out.device).reshape(*out.shape[:-3], 4)[..., None, None]
        rows = torch.arange(height, device=out.device).view(height, 1)
        cols = torch.arange(width, device=out.device)
        inside = (rows >= box[..., 1, :, :]) & (rows < box[..., 3, :, :]) & (cols >= box[..., 0, :, :]) & (cols < box[..., 2, :, :])
        out = out.masked_fill_(~inside.unsqueeze(-3), 0.0)
    return out


def batch_to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """Move a collated batch to ``device`` and make the model's input there (layout in the module
    docstring): uint8 images are normalised (padding outside ``image_box`` -> 0) and uint8 masks
    become int64 after the copy, so only uint8 crosses to the device. A float image (a batch made by
    hand, already normalised) is moved as it is. A batch of decoded frames (``frames``,
    ``image_geometry``: ``TrainTransform(render_on_device=True)``) gets its (B,3,H,W) uint8 canvas
    drawn on the device first (``mtwork.data.transforms.render_image``)."""
    out = dict(batch)
    if "frames" in batch:  # TrainTransform(render_on_device=True): draw the canvases here
        from mtwork.data.transforms import CanvasGeometry, render_image

        del out["frames"], out["image_geometry"]
        image = torch.stack([render_image(frame.to(device, non_blocking=True), CanvasGeometry.from_tensor(g))
                             for frame, g in zip(batch["frames"], batch["image_geometry"])])
    else:
        image = batch["image"].to(device, non_blocking=True)
    if image.dtype == torch.uint8:
        box = batch.get("image_box")
        # decided on the host copy (no device sync): most batches (evaluation) have no padding at all
        full = box is None or bool((box.cpu() == torch.tensor([0, 0, image.shape[-1], image.shape[-2]])).all())
        image = normalize_images(image, None if full else box.to(device, non_blocking=True))
    out["image"] = image
    if "image_box" in batch:
        out["image_box"] = batch["image_box"].to(device, non_blocking=True)
    for task in MASK_TASKS:
        if task in batch:
            out[task] = batch[task].to(device, non_blocking=True).long()
    for task in (*FLOAT_TASKS, "camera"):
        if task in batch:  # tolerate batches collated before a task existed
            out[task] = batch[task].to(device, non_blocking=True)
    for key in ("valid_size",):
        if key in batch:
            out[key] = batch[key].to(device, non_blocking=True)
    height, width = image.shape[-2:]
    for task, (channels, fill) in FLOAT_TASKS.items():
        if task not in out:  # no sample of the batch carries it: invalid everywhere, made on the device
            lead = (image.shape[0],) if channels is None else (image.shape[0], channels)
            out[task] = torch.full((*lead, height, width), fill, dtype=torch.float32, device=image.device)
    out["labeled"] = {t: v.to(device) for t, v in batch["labeled"].items()}
    out["det"] = [{k: v.to(device) for k, v in t.items()} for t in batch["det"]]
    return out


def _valid_and_orig(batch: Dict[str, Any], index: int, input_hw: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    valid = batch.get("valid_size")
    vh, vw = (int(input_hw[0]), int(input_hw[1])) if valid is None else (int(v) for v in valid[index])
    h0, w0 = (int(v) for v in batch["orig_size"][index])
    return (vh, vw), (h0, w0)


def _input_hw(batch: Dict[str, Any], fallback: Sequence[int]) -> tuple[int, int]:
    """(H, W) of the network input: the batch image's, else ``fallback`` (hand-made batches)."""
    hw = batch["image"].shape[-2:] if "image" in batch else fallback
    return int(hw[0]), int(hw[1])


def dense_to_orig(pred: torch.Tensor, batch: Dict[str, Any], index: int) -> torch.Tensor:
    """A dense prediction (C,h,w) of sample ``index`` in the network-input frame -> (C,H0,W0) float32
    in the on-disk frame: the valid region ``[:vh, :vw]`` (``batch["valid_size"]``, the whole input
    when absent) resized bilinearly (align_corners=False) to ``orig_size``. A prediction at another
    resolution than the input (``batch["image"]``) is first resized to the input size."""
    pred = pred.float()[None]
    input_hw = _input_hw(batch, pred.shape[-2:])
    (vh, vw), (h0, w0) = _valid_and_orig(batch, index, input_hw)
    if tuple(pred.shape[-2:]) != input_hw:
        pred = F.interpolate(pred, size=input_hw, mode="bilinear", align_corners=False)
    pred = pred[..., :vh, :vw]
    if (vh, vw) != (h0, w0):
        pred = F.interpolate(pred, size=(h0, w0), mode="bilinear", align_corners=False)
    return pred[0]


def boxes_to_orig(boxes: torch.Tensor, batch: Dict[str, Any], index: int) -> torch.Tensor:
    """Boxes (N,4) xyxy in the input frame (``batch["image"]``) -> the on-disk frame: x * W0/vw,
    y * H0/vh (the inverse of the resize, which scaled the image by vw/W0 and vh/H0), clipped to the
    image (the padding is no part of it)."""
    (vh, vw), (h0, w0) = _valid_and_orig(batch, index, _input_hw(batch, ()))
    scale = boxes.new_tensor([w0 / vw, h0 / vh, w0 / vw, h0 / vh], dtype=torch.float32)
    out = boxes.float() * scale
    out[:, 0::2] = out[:, 0::2].clamp(0, w0)
    out[:, 1::2] = out[:, 1::2].clamp(0, h0)
    return out
