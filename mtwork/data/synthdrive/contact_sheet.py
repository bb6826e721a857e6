"""A contact sheet of a BDD100K-layout data set: images with their labels drawn over, for a person.

One row per image, three panels: the image with boxes and category names, the semseg colours
blended over it, the drivable colours blended over it ("no label" where the image has none). It
reads through ``BDD100KDataset``, so it works for SynthDrive and real BDD100K alike.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mtwork.data.bdd100k import (
    DET_CATEGORIES,
    DET_PALETTE,
    DRIVABLE_PALETTE,
    SEMSEG_PALETTE,
    BDD100KDataset,
)
from mtwork.io import atomic_path

_SEMSEG_LUT = np.zeros((256, 3), dtype=np.float32)
_SEMSEG_LUT[: len(SEMSEG_PALETTE)] = SEMSEG_PALETTE
_DRIVABLE_LUT = np.zeros((256, 3), dtype=np.float32)
_DRIVABLE_LUT[: len(DRIVABLE_PALETTE)] = DRIVABLE_PALETTE


def _pick(ds: BDD100KDataset, n: int) -> List[int]:
    """About half segmentation images (those with all labels first), the rest detection images."""
    tasks = [set(ds.tasks_of(i)) for i in range(len(ds))]
    full = [i for i, t in enumerate(tasks) if {"semseg", "det"} <= t]
    seg = [i for i, t in enumerate(tasks) if "semseg" in t and i not in full]
    det = [i for i, t in enumerate(tasks) if "det" in t and i not in full]
    picks = (full[: max(1, n // 4)] + seg)[: n // 2]
    picks += [i for i in det if i not in picks][: n - len(picks)]
    picks += [i for i in range(len(ds)) if i not in picks][: n - len(picks)]
    return sorted(picks)


def _blend(image: np.ndarray, colours: np.ndarray, where: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    out = image.astype(np.float32)
    out[where] = out[where] * (1 - alpha) + colours[where] * alpha
    return out.astype(np.uint8)


def _caption(panel: Image.Image, text: str, font) -> None:
    draw = ImageDraw.Draw(panel)
    box = draw.textbbox((3, 2), text, font=font)
    draw.rectangle([box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1], fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255), font=font)


def make_contact_sheet(
    root: str | os.PathLike, out_path: str | os.PathLike, split: str = "val", n: int = 8,
    max_width: int = 448,
) -> Path:
    """Write a PNG grid of ``n`` images of ``split`` (rows) x 3 panels to ``out_path`` (atomic).

    Panels are scaled down to at most ``max_width`` pixels wide. Returns ``out_path``.
    """
    ds = BDD100KDataset(root, split, tasks=("semseg", "drivable", "det"))
    picks = _pick(ds, n)
    font = ImageFont.load_default()
    rows: List[Image.Image] = []
    for index in picks:
        sample = ds.raw_sample(index)
        image = sample["image"]
        h, w = image.shape[:2]
        k = min(1.0, max_width / w)
        size = (max(1, round(w * k)), max(1, round(h * k)))

        boxes = Image.fromarray(image).resize(size, Image.BILINEAR)
        draw = ImageDraw.Draw(boxes)
        det = sample.get("det")
        if det is not None:
            for (x1, y1, x2, y2), label in zip(det["boxes"], det["labels"]):
                colour = DET_PALETTE[int(label)]
                rect = [x1 * k, y1 * k, max(x1 * k, x2 * k - 1), max(y1 * k, y2 * k - 1)]
                draw.rectangle(rect, outline=colour, width=1)
                draw.text((rect[0], max(0, rect[1] - 11)), DET_CATEGORIES[int(label)], fill=colour, font=font)
        _caption(boxes, f"{sample['name']}  det: {'%d boxes' % len(det['labels']) if det is not None else 'no label'}", font)

        panels = [boxes]
        for task, lut in (("semseg", _SEMSEG_LUT), ("drivable", _DRIVABLE_LUT)):
            mask: Optional[np.ndarray] = sample.get(task)
            if mask is None:
                panel = Image.fromarray((image * 0.35).astype(np.uint8)).resize(size, Image.BILINEAR)
                _caption(panel, f"{task}: no label", font)
            else:
                where = (mask != 255) if task == "semseg" else (mask > 0)
                panel = Image.fromarray(_blend(image, lut[mask], where)).resize(size, Image.NEAREST)
                _caption(panel, task, font)
            panels.append(panel)
        row = Image.new("RGB", (size[0] * 3 + 4, size[1]), (255, 255, 255))
        for j, panel in enumerate(panels):
            row.paste(panel, (j * (size[0] + 2), 0))
        rows.append(row)
    if not rows:
        raise ValueError(f"{root}: no labelled images in split '{split}' for a contact sheet")
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height + 2 for r in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + 2
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return out_path
