"""Self-supervised augmentations: the MoCo v2 recipe, built from ``torchvision.transforms.v2``.

Upstream (facebookresearch/moco ``main_moco.py``, ``--aug-plus``), on 224-pixel crops::

    RandomResizedCrop(224, scale=(0.2, 1.0)), RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8),
    RandomGrayscale(p=0.2), RandomApply(GaussianBlur(sigma in [0.1, 2.0]), p=0.5),
    RandomHorizontalFlip(), ToTensor(), Normalize(ImageNet mean, std)

Randomness comes from torch's global RNG, so a seeded single-process loader is reproducible.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def blur_kernel_size(crop: int) -> int:
    """An odd kernel about 10% of the crop side (SimCLR's rule; 23 px at 224), at least 3 px."""
    return max(3, int(0.1 * crop) // 2 * 2 + 1)


def moco_v2_transform(crop: int = 224) -> v2.Transform:
    """PIL image -> normalised float view (3, crop, crop). Call twice per image for the two views.

    The crop is taken on the PIL image first so colour and blur run on crop-sized uint8 tensors
    (much cheaper than on the full frame). Blur sigma stays in upstream's [0.1, 2.0] pixels; PIL's
    box-sampled blur upstream and torchvision's truncated Gaussian differ slightly at the kernel edge.
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(crop, scale=(0.2, 1.0), antialias=True),
            v2.ToImage(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(blur_kernel_size(crop), sigma=(0.1, 2.0))], p=0.5),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
