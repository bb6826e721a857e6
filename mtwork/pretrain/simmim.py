"""Embedded SimMIM pretraining of the Swin-V2 encoder, saved in timm's key layout.

SimMIM (Xie et al., CVPR 2022; microsoft/SimMIM ``models/simmim.py``, ``data/data_simmim.py``):

* **masking**: the image is cut into square *mask patches* (32 px at 192 px upstream) and a fraction
  ``mask_ratio`` (0.6) of them, ``ceil(count * ratio)`` per image, is masked. A mask patch is a whole
  number of the encoder's 4-px patches, so masking happens on patch embeddings: after ``patch_embed`` the
  masked tokens are replaced by one learnable ``mask_token``. At the small crops here the mask patch is
  scaled down (default 16 px at a 96-px crop, the same 1/6 of the side as 32/192).
* **encoder**: the timm Swin-V2 (``mtwork.models.swin.create_swinv2``) forward after the patch
  embedding, including its final ``norm``, giving (B, C, H/32, W/32).
* **decoder**: one 1x1 conv to ``32^2 * 3`` channels and a pixel shuffle back to (B, 3, H, W).
* **loss**: L1 between the (normalised) input and the reconstruction on masked pixels only, divided by
  the number of masked pixels times 3 channels.
* **optimisation**: AdamW (betas 0.9/0.999, weight decay 0.05 except norms, biases, ``logit_scale``,
  ``cpb_mlp`` and the mask token, as upstream's ``skip_keywords``), linear warmup then cosine to 0 per
  iteration, gradient clipping at norm 5.
* **views**: upstream's ``SimMIMTransform``: RandomResizedCrop(scale (0.67, 1), ratio (3/4, 4/3)),
  horizontal flip, ImageNet normalisation (``augment.view_transform`` with colour, grey and blur off).

The file holds the encoder only, in the keys of ``create_swinv2(arch, ...).state_dict()`` (no mask token,
no decoder): ``{"state_dict": {timm keys: tensors}, "arch": arch, "pretrain": {"method": "simmim", ...}}``,
the timm ``train.py`` wrapper that the ``timm`` checkpoint format unwraps (``arch``/``pretrain`` are
reported as dropped top-level entries). Swin-V2 keys do not depend on the input size (attention masks
and relative-position tables are non-persistent), so the file fits the encoder at any image size.

The loop is ``mtwork.pretrain.common``'s (seeding, loader, per-epoch history, tqdm progress, atomic
checkpoint and JSON log); only the optimizer differs (AdamW instead of the shared SGD).
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mtwork.io import save_torch, write_json
from mtwork.models.swin import create_swinv2
from mtwork.pretrain.augment import view_transform
from mtwork.pretrain.common import PRETRAINERS, LoopSettings, SSLModel, _train, prefixed
from mtwork.pretrain.images import MultiViewImages, find_images
from mtwork.runtime import seed_everything

__all__ = ["SimMIM", "swin_name", "random_mask", "pixel_mask", "masked_l1_loss", "simmim_transform", "pretrain_simmim"]

# Upstream SimMIM settings (configs/simmim_pretrain__swin_base__img192_window6__100ep.yaml).
MASK_RATIO = 0.6
ADAMW_BETAS = (0.9, 0.999)
WEIGHT_DECAY = 0.05
CLIP_GRAD = 5.0
CROP_SCALE = (0.67, 1.0)
# Parameter-name fragments kept out of weight decay (upstream ``skip_keywords`` for Swin-V2 plus ours).
NO_DECAY_KEYWORDS = ("logit_scale", "cpb_mlp", "mask_token", "relative_position_bias_table")


def random_mask(
    batch: int, image_size: int, mask_patch_size: int, model_patch_size: int, mask_ratio: float = MASK_RATIO,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """(B, S, S) float token mask, S = image_size / model_patch_size, 1 = masked (upstream ``MaskGenerator``).

    Exactly ``ceil((image_size / mask_patch_size)^2 * mask_ratio)`` mask patches per image are masked,
    each covering ``mask_patch_size / model_patch_size`` tokens per side. Sizes in pixels.
    """
    if mask_patch_size % model_patch_size:
        raise ValueError(f"mask_patch_size={mask_patch_size} px must be a multiple of the encoder's "
                         f"patch size {model_patch_size} px")
    if image_size % mask_patch_size:
        raise ValueError(f"crop={image_size} px must be a multiple of mask_patch_size={mask_patch_size} px")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    side = image_size // mask_patch_size
    count = side * side
    masked = int(math.ceil(count * mask_ratio))
    scores = torch.rand(batch, count, generator=generator)
    chosen = scores.argsort(dim=1)[:, :masked]  # a uniformly random subset of `masked` patches per image
    mask = torch.zeros(batch, count)
    mask.scatter_(1, chosen, 1.0)
    scale = mask_patch_size // model_patch_size
    mask = mask.view(batch, side, side)
    return mask.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)


def pixel_mask(token_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, S, S) token mask -> (B, 1, S * patch_size, S * patch_size) pixel mask."""
    return token_mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)


def masked_l1_loss(target: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 on masked pixels: ``sum(|x - x_rec| * m) / (sum(m) * C)``; x, x_rec (B,C,H,W), m (B,1,H,W) in {0,1}.

    Unmasked pixels do not enter the loss: SimMIM predicts only what the encoder could not see.
    (Upstream adds 1e-5 to the mask count; a mask is never empty here, so the plain count is used.)
    """
    channels = target.shape[1]
    per_pixel = F.l1_loss(reconstruction, target, reduction="none")
    return (per_pixel * mask).sum() / (mask.sum() * channels).clamp_min(1.0)


def simmim_transform(crop: int) -> nn.Module:
    """Upstream ``SimMIMTransform``'s image part: (3, crop, crop) ImageNet-normalised float."""
    return view_transform(crop, scale=CROP_SCALE, jitter_p=0.0, gray_p=0.0, blur_p=0.0)


class SimMIM(SSLModel):
    """Swin-V2 encoder + mask token + linear pixel-shuffle decoder (``models/simmim.py``).

    ``img_size`` (px, square) must be a multiple of the encoder's total stride (32) and of
    ``mask_patch_size``; ``mask_patch_size`` a multiple of the encoder's patch size (4).
    """

    lr_per_iteration = True  # upstream steps its cosine schedule every iteration, after a warmup

    def __init__(self, arch: str, img_size: int, mask_patch_size: int = 16, mask_ratio: float = MASK_RATIO):
        super().__init__()
        self.encoder = create_swinv2(arch, (img_size, img_size))
        self.img_size = int(img_size)
        self.patch_size = int(self.encoder.patch_embed.patch_size[0])
        self.stride = int(self.encoder.feature_info[-1]["reduction"])
        if img_size % self.stride:
            raise ValueError(f"crop={img_size} px must be a multiple of the encoder's stride {self.stride} px "
                             "(the decoder reconstructs the image from the stride-32 map)")
        random_mask(1, img_size, mask_patch_size, self.patch_size, mask_ratio)  # validate the sizes early
        self.mask_patch_size = int(mask_patch_size)
        self.mask_ratio = float(mask_ratio)
        dim = int(self.encoder.patch_embed.proj.out_channels)
        # Channels-last like timm's Swin-V2 patch embeddings (B, H/4, W/4, C).
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(self.encoder.num_features, self.stride**2 * 3, kernel_size=1),
            nn.PixelShuffle(self.stride),
        )

    def encode(self, image: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W), token_mask (B,H/4,W/4) -> (B,C,H/32,W/32) after the encoder's final norm."""
        x = self.encoder.patch_embed(image)
        w = token_mask.unsqueeze(-1).to(x.dtype)
        x = x * (1.0 - w) + self.mask_token.to(x.dtype) * w
        x = self.encoder.norm(self.encoder.layers(x))
        return x.permute(0, 3, 1, 2)

    def forward(self, image: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """image (B,3,H,W) normalised, token_mask (B,H/4,W/4) -> masked-pixel L1 loss (scalar)."""
        reconstruction = self.decoder(self.encode(image, token_mask))
        return masked_l1_loss(image, reconstruction, pixel_mask(token_mask, self.patch_size))

    def training_step(self, views, epoch):
        image = views[0]
        # Global RNG: seeded by the run, so masks are reproducible with the data order.
        mask = random_mask(image.shape[0], self.img_size, self.mask_patch_size, self.patch_size, self.mask_ratio)
        loss = self(image, mask.to(image.device))
        return loss, {}

    def param_groups(self) -> List[Dict[str, Any]]:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            skip = param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in NO_DECAY_KEYWORDS)
            (no_decay if skip else decay).append(param)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def before_optimizer_step(self, epoch: int) -> None:
        nn.utils.clip_grad_norm_(self.parameters(), CLIP_GRAD)

    def encoder_state(self) -> Dict[str, torch.Tensor]:
        """The encoder's state dict in timm's keys, detached copies (no mask token, no decoder)."""
        return prefixed("", self.encoder.state_dict())


def swin_name(arch: str) -> str:
    """The Swin-V2 configuration name in ``arch``: ``"swin:mtwork_swinv2_tiny"`` (a backbone-family
    prefix, as catalog entries name backbones) or plain ``"mtwork_swinv2_tiny"`` -> ``"mtwork_swinv2_tiny"``."""
    return arch.rpartition(":")[2]


@PRETRAINERS.register("simmim")
def pretrain_simmim(
    image_dirs: Sequence[str | Path],
    out: str | Path,
    arch: str = "mtwork_swinv2_tiny",
    epochs: int = 3,
    batch_size: int = 32,
    crop: int = 96,
    lr: float = 1e-3,
    weight_decay: float = WEIGHT_DECAY,
    warmup_epochs: float = 0.5,
    mask_patch_size: int = 16,
    mask_ratio: float = MASK_RATIO,
    seed: int = 0,
    num_threads: Optional[int] = None,
    progress: bool = True,
    num_workers: int = 0,
    steps: Optional[int] = None,
) -> Dict:
    """Pretrain the Swin-V2 ``arch`` with SimMIM on every JPEG under ``image_dirs``; save the encoder.

    ``arch``: a ``mtwork.models.swin.SWIN_CONFIGS`` name, optionally with a backbone-family prefix
    (``swin:``), recorded as given. Writes ``out`` = ``{"state_dict": <timm keys of create_swinv2(arch)>,
    "arch", "pretrain": {"method":
    "simmim", "epochs", "crop", "mask_patch_size", "mask_ratio", "losses", ...}}`` (imports through the
    ``timm`` checkpoint format) and ``out.with_suffix(".json")`` (config, per-epoch losses), atomically,
    after training succeeded. ``crop`` in px (multiple of 32 and of ``mask_patch_size``); ``lr`` is the
    AdamW peak rate (upstream: 1e-4 per 512 images, i.e. 8e-4 at batch 2048), reached after
    ``warmup_epochs`` and decayed by a per-iteration cosine to 0. ``steps`` (optional) sets the schedule
    in optimisation steps instead of ``epochs``: the run takes ``ceil(steps / steps_per_epoch)`` epochs
    (``steps_per_epoch = images // batch_size``), so its cost does not grow with the number of images;
    ``epochs`` is then ignored. Deterministic for a seed on CPU with ``num_workers=0``. Returns
    ``{"losses", "images_seen", "iterations", "seconds", "epoch_seconds", "num_images", "epochs"}``.
    """
    name = "simmim"
    out = Path(out)
    swin_arch = swin_name(arch)
    files = find_images(image_dirs)
    if len(files) < batch_size:
        raise ValueError(f"{name} needs at least batch_size={batch_size} images, found {len(files)} under "
                         f"{[str(d) for d in image_dirs]}")
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        epochs = math.ceil(steps / (len(files) // batch_size))
    settings = LoopSettings(epochs=epochs, batch_size=batch_size, crop=crop, lr=lr, weight_decay=weight_decay,
                            seed=seed, num_threads=num_threads, progress=progress, num_workers=num_workers,
                            warmup_epochs=warmup_epochs)
    config = dict(arch=arch, mask_patch_size=mask_patch_size, mask_ratio=mask_ratio, optimizer="adamw",
                  betas=list(ADAMW_BETAS), clip_grad=CLIP_GRAD, crop_scale=list(CROP_SCALE), steps=steps)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")

    # The shared loop (common._train) with AdamW: common.run_pretraining builds SGD, which SimMIM does not use.
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        generator = seed_everything(seed)
        model = SimMIM(swin_arch, crop, mask_patch_size, mask_ratio)
        optimizer = torch.optim.AdamW(model.param_groups(), lr=lr, betas=ADAMW_BETAS, weight_decay=weight_decay)
        loader = DataLoader(MultiViewImages(files, [simmim_transform(crop)]), batch_size=batch_size, shuffle=True,
                            drop_last=True, num_workers=num_workers, generator=generator)
        history = _train(name, model, optimizer, loader, settings)
    finally:
        torch.set_num_threads(previous_threads)

    pretrain_record = {"method": name, "epochs": epochs, "steps": history["iterations"], "crop": crop,
                       "batch_size": batch_size, "lr": lr, "mask_patch_size": mask_patch_size, "mask_ratio": mask_ratio, "seed": seed,
                       "losses": history["losses"], "num_images": len(files)}
    save_torch(out, {"state_dict": model.encoder_state(), "arch": arch, "pretrain": pretrain_record})
    result = {**history, "num_images": len(files), "epochs": epochs}
    full_config = {"method": name, **asdict(settings), **config, "image_dirs": [str(d) for d in image_dirs]}
    write_json(out.with_suffix(".json"), {"checkpoint": str(out), "config": full_config, **result})
    return result
