"""Unlabeled images for self-supervised pretraining: every JPEG under some folders, as augmented views."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset

JPEG_SUFFIXES = (".jpg", ".jpeg")

Transform = Callable[[Image.Image], torch.Tensor]


def find_images(image_dirs: Sequence[str | Path]) -> List[Path]:
    """All JPEGs under ``image_dirs`` (recursively; an entry that is a JPEG file is taken as it is, e.g. a
    domain's images from ``mtwork.data.bdd100k.domain_images``), sorted by path, one per file name.

    Deduplicating by name matters because generated datasets write the same frame into several
    layouts (e.g. a segmentation and a detection tree); the first path in sorted order wins.
    """
    found: List[Path] = []
    for folder in image_dirs:
        folder = Path(folder)
        if folder.is_file() and folder.suffix.lower() in JPEG_SUFFIXES:
            found.append(folder)
            continue
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        found.extend(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in JPEG_SUFFIXES)
    seen: set[str] = set()
    unique: List[Path] = []
    for path in sorted(found):
        if path.name not in seen:
            seen.add(path.name)
            unique.append(path)
    return unique


class MultiViewImages(Dataset):
    """Item ``i``: one view of image ``i`` per transform, ``transforms[j](image)`` -> (3,H_j,W_j) float.

    The image is decoded once per item; views are drawn in transform order (global RNG).
    """

    def __init__(self, files: Sequence[Path], transforms: Sequence[Transform]):
        if not transforms:
            raise ValueError("MultiViewImages needs at least one transform")
        self.files = list(files)
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, ...]:
        path = self.files[index]
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
        except OSError as exc:
            raise OSError(f"cannot read image {path}: {exc}") from exc
        return tuple(transform(image) for transform in self.transforms)


class TwoViewImages(MultiViewImages):
    """Item ``i``: two independently augmented views ``(3,H,W), (3,H,W)`` float of image ``i``."""

    def __init__(self, files: Sequence[Path], transform: Transform):
        super().__init__(files, [transform, transform])
