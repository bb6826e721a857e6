"""Self-supervised augmentations: the view recipes of MoCo v2, SimCLR, BYOL and DINO (torchvision v2).

All recipes are one pipeline (:func:`view_transform`) with upstream's parameters, given for 224-pixel
crops and applied here at ``crop`` pixels (blur kernels scale with the crop):

* MoCo v2 (facebookresearch/moco ``main_moco.py --aug-plus``; also DenseCL's): crop scale (0.2, 1),
  ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2, blur p=0.5, flip.
* SimCLR (google-research/simclr ``data_util.py``, colour strength 1.0): crop scale (0.08, 1),
  ColorJitter(0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2, blur p=0.5, flip.
* BYOL (paper, Table 6): two asymmetric views, crop scale (0.08, 1), ColorJitter(0.4, 0.4, 0.2, 0.1)
  p=0.8, grayscale p=0.2, blur p=1.0 / 0.1, solarize p=0.0 / 0.2, flip.
* DINO (facebookresearch/dino ``main_dino.py`` ``DataAugmentationDINO``): two global crops as BYOL's
  views (scale ``global_scale``), plus optional local crops of 96/224 of the crop side (scale
  ``local_scale``, blur p=0.5).

Each view is ImageNet-normalised float (3, crop, crop). Blur sigma stays in upstream's [0.1, 2.0]
pixels (PIL's blur upstream and torchvision's truncated Gaussian differ slightly at the kernel edge);
crops are resized bilinearly (DINO uses bicubic). Randomness comes from torch's global RNG, so a
seeded single-process loader is reproducible.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The colour jitter (brightness, contrast, saturation, hue) of each recipe.
MOCO_JITTER = (0.4, 0.4, 0.4, 0.1)
SIMCLR_JITTER = (0.8, 0.8, 0.8, 0.2)
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
# DINO's local crops are 96 px for 224-px global crops.
DINO_LOCAL_FRACTION = 96 / 224


def blur_kernel_size(crop: int) -> int:
    """An odd kernel about 10% of the crop side (SimCLR's rule; 23 px at 224), at least 3 px."""
    return max(3, int(0.1 * crop) // 2 * 2 + 1)


def view_transform(
    crop: int,
    scale: Tuple[float, float] = (0.2, 1.0),
    jitter: Tuple[float, float, float, float] = MOCO_JITTER,
    jitter_p: float = 0.8,
    gray_p: float = 0.2,
    blur_p: float = 0.5,
    solarize_p: float = 0.0,
) -> v2.Transform:
    """PIL image -> one normalised float view (3, crop, crop); call once per view.

    The crop is taken on the PIL image first so colour and blur run on crop-sized uint8 tensors
    (much cheaper than on the full frame). Solarisation inverts pixels >= 128 as PIL's ``solarize``.
    """
    steps = [
        v2.RandomResizedCrop(crop, scale=scale, antialias=True),
        v2.ToImage(),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p),
        v2.RandomGrayscale(p=gray_p),
    ]
    if blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(crop), sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    steps += [
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]
    return v2.Compose(steps)


def moco_v2_transform(crop: int = 224) -> v2.Transform:
    """MoCo v2's view (both views alike); DenseCL uses it too."""
    return view_transform(crop)


def simclr_transform(crop: int = 224) -> v2.Transform:
    """SimCLR's view (both views alike), colour strength 1.0."""
    return view_transform(crop, scale=(0.08, 1.0), jitter=SIMCLR_JITTER)


def byol_transforms(crop: int = 224, scale: Tuple[float, float] = (0.08, 1.0)) -> Tuple[v2.Transform, v2.Transform]:
    """BYOL's two asymmetric views (T, T'): blur always / rarely, solarisation only on the second."""
    first = view_transform(crop, scale=scale, jitter=BYOL_JITTER, blur_p=1.0, solarize_p=0.0)
    second = view_transform(crop, scale=scale, jitter=BYOL_JITTER, blur_p=0.1, solarize_p=0.2)
    return first, second


def local_crop_size(crop: int) -> int:
    """DINO's local crop side for global crops of ``crop`` px (96 at 224), at least 8 px."""
    return max(8, round(crop * DINO_LOCAL_FRACTION))


def dino_transforms(
    crop: int = 224,
    local_crops_number: int = 0,
    global_scale: Tuple[float, float] = (0.4, 1.0),
    local_scale: Tuple[float, float] = (0.05, 0.4),
) -> List[v2.Transform]:
    """DINO's crops: two global views (as BYOL's) then ``local_crops_number`` local views."""
    globals_ = list(byol_transforms(crop, scale=global_scale))
    local = view_transform(local_crop_size(crop), scale=local_scale, jitter=BYOL_JITTER, blur_p=0.5)
    return globals_ + [local] * local_crops_number
