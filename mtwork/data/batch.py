"""Collation of samples with partial labels into one batch (layout documented in mtwork.tasks.base).

Sample dict produced by a dataset (after its transform):
    image:     (3,H,W) float32, normalised with IMAGENET_MEAN/STD
    name:      str, image file name (e.g. "abc.jpg")
    orig_size: (H0,W0) ints, size on disk
    valid_size:(h,w) ints, the top-left part of ``image`` that holds the letterboxed image (the rest is
               padding); set by EvalTransform, absent = the whole image
    semseg:    (h,w) int64 train ids, 255 ignore           -- only when the image has a seg label
    drivable:  (h,w) int64 0/1/2, 255 ignore               -- only when labeled
    det:       {"boxes": (N,4) float32 xyxy px, "labels": (N,) int64 0..9, optionally "ignore_boxes"
               (M,4), "ignore_labels" (M,): ignore regions of those classes}  -- only when labeled
    depth:     (h,w) float32 z-depth in metres, 0 invalid                      -- only when labeled
    normals:   (3,h,w) float32 unit camera-frame normals, (0,0,0) invalid      -- only when labeled
    edges:     (h,w) float32 Sobel magnitude in [0,1], -1 invalid (padding)    -- only when labeled
    camera:    (4,) float32 intrinsics (fx, fy, u0, v0) px of the label frame  -- with normals

Batch key ``valid_size`` (B,2) long is present when some sample carries one (samples without take their
image size). Evaluators map input-frame predictions back to the on-disk frame with ``dense_to_orig``
and ``boxes_to_orig``: the one place for that geometry.

Batch keys for the dense regression tasks (always present, like the masks; padding and unlabeled
samples hold the invalid value, so losses and metrics that look at valid pixels need no extra mask):
    depth:   (B,H,W) float32 metres, 0 = invalid
    normals: (B,3,H,W) float32, zero vector = invalid
    edges:   (B,H,W) float32 in [0,1], -1 = invalid
    camera:  (B,4) float32 (fx, fy, u0, v0) px, NaN rows for samples without one -- only when some
             sample of the batch carries a camera
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255
MASK_TASKS = ("semseg", "drivable")
BOX_TASKS = ("det",)
#: Dense regression labels: {task: (channels or None for a (h,w) map, invalid/padding value)}.
FLOAT_TASKS = {"depth": (None, 0.0), "normals": (3, 0.0), "edges": (None, -1.0)}


def _pad_stack(masks: List[torch.Tensor | None], shape: tuple[int, int]) -> torch.Tensor:
    """Stack (h,w) masks into (B,H,W), padding and filling absent ones with IGNORE_INDEX."""
    out = torch.full((len(masks), *shape), IGNORE_INDEX, dtype=torch.long)
    for i, mask in enumerate(masks):
        if mask is not None:
            out[i, : mask.shape[0], : mask.shape[1]] = mask
    return out


def collate(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Samples -> batch; every task key is present, with ``labeled[task]`` marking real labels."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    images = torch.stack([s["image"] for s in samples])
    batch: Dict[str, Any] = {
        "image": images,
        "names": [s["name"] for s in samples],
        "orig_size": torch.tensor([list(s["orig_size"]) for s in samples], dtype=torch.long),
        "labeled": {},
    }
    if any("valid_size" in s for s in samples):
        full = list(images.shape[-2:])
        batch["valid_size"] = torch.tensor([list(s.get("valid_size", full)) for s in samples], dtype=torch.long)
    for task in MASK_TASKS:
        masks = [s.get(task) for s in samples]
        present = [m for m in masks if m is not None]
        shape = (
            max(m.shape[0] for m in present) if present else images.shape[-2],
            max(m.shape[1] for m in present) if present else images.shape[-1],
        )
        batch[task] = _pad_stack(masks, shape)
        batch["labeled"][task] = torch.tensor([m is not None for m in masks])
    for task, (channels, fill) in FLOAT_TASKS.items():
        maps = [s.get(task) for s in samples]
        present = [m for m in maps if m is not None]
        shape = (
            max(m.shape[-2] for m in present) if present else images.shape[-2],
            max(m.shape[-1] for m in present) if present else images.shape[-1],
        )
        lead = (len(samples),) if channels is None else (len(samples), channels)
        out = torch.full((*lead, *shape), fill, dtype=torch.float32)
        for i, m in enumerate(maps):
            if m is not None:
                out[i, ..., : m.shape[-2], : m.shape[-1]] = m
        batch[task] = out
        batch["labeled"][task] = torch.tensor([m is not None for m in maps])
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


def batch_to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """Move a collated batch's tensors (image, masks, labeled flags, det targets) to ``device``."""
    out = dict(batch)
    out["image"] = batch["image"].to(device, non_blocking=True)
    for task in (*MASK_TASKS, *FLOAT_TASKS, "camera"):
        if task in batch:  # tolerate batches collated before a task existed
            out[task] = batch[task].to(device, non_blocking=True)
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
