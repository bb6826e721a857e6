"""Embedded CLIP pretraining: a tiny open_clip model trained on SynthDrive images and label captions.

The model is an ordinary open_clip model (``open_clip.create_model``) of the tiny configuration
``MTWORK_TINY_CLIP_NAME`` (registered with ``open_clip.add_model_config``; the config lives in
``mtwork.models.clip_backbone`` so that the backbone can be built without this training module),
trained with open_clip's own ``ClipLoss`` on (image, caption) pairs whose captions are written from
the data set's labels (``mtwork.pretrain.captions``). Any other open_clip model name works the same
way (``model_name="RN50"``), which is how a paper-scale run would differ; there a released checkpoint
is used instead of this training.

The checkpoint is written in open_clip's training-checkpoint layout,
``{"epoch", "name", "state_dict", "model_cfg"}`` (open_clip's ``load_checkpoint`` reads the state dict
under ``"state_dict"``), so ``open_clip.create_model(name, pretrained=<file>)`` loads it and the
``open_clip`` checkpoint converter imports its image tower as a backbone.

Choices, as open_clip's training recipe where it applies: AdamW (betas 0.9/0.98, eps 1e-6, weight
decay on matrices only), linear warmup then cosine decay per step, the learnable temperature clamped
at 100 after each step. Augmentation is a resize of the *whole* image to the square input (no crop:
a crop would drop objects the caption counts) and a horizontal flip (counts are flip-invariant);
images are normalised with OpenAI's CLIP mean/std.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mtwork.io import save_torch, write_json
from mtwork.models.clip_backbone import (
    MTWORK_TINY_CLIP_CONFIG,
    MTWORK_TINY_CLIP_NAME,
    clip_model_config,
    clip_tokenizer,
    create_clip_model,
    register_tiny_clip,
    tiny_clip_name,
)
from mtwork.pretrain.captions import caption_pairs

__all__ = [
    "MTWORK_TINY_CLIP_CONFIG",
    "MTWORK_TINY_CLIP_NAME",
    "CaptionedImages",
    "register_tiny_clip",
    "tiny_clip_name",
    "train_tiny_clip",
]

# open_clip's training clamps the learnable temperature so that exp(logit_scale) <= 100.
MAX_LOGIT_SCALE = math.log(100.0)


class CaptionedImages(Dataset):
    """Item i: (image (3,S,S) float normalised with OpenAI's mean/std, token ids (L,) long).

    The whole image is resized (bilinear) to S x S, then flipped horizontally with probability
    ``hflip_prob`` (torch's global RNG, so a seeded run with ``num_workers=0`` is reproducible).
    """

    def __init__(self, files: Sequence[Path], tokens: torch.Tensor, image_size: int, hflip_prob: float = 0.5):
        from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        if len(files) != tokens.shape[0]:
            raise ValueError(f"{len(files)} images for {tokens.shape[0]} captions")
        self.files = list(files)
        self.tokens = tokens
        self.image_size = int(image_size)
        self.hflip_prob = hflip_prob
        self.mean = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        path = self.files[index]
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
        except OSError as exc:
            raise OSError(f"cannot read image {path}: {exc}") from exc
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div_(255.0)
        if float(torch.rand(())) < self.hflip_prob:
            x = x.flip(-1)
        return (x - self.mean) / self.std, self.tokens[index]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Weight decay on weight matrices/kernels only (open_clip excludes gains, biases, embeddings of
    rank < 2 and the logit scale)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_tiny_clip(
    data_root: str | Path,
    out: str | Path,
    epochs: int = 15,
    batch_size: int = 32,
    image_size: Optional[int] = None,
    lr: float = 5e-4,
    seed: int = 0,
    num_threads: Optional[int] = None,
    progress: bool = True,
    model_name: Optional[str] = None,
    weight_decay: float = 0.1,
    warmup_fraction: float = 0.1,
    split: str = "train",
    num_workers: int = 0,
    image_names: Optional[Collection[str]] = None,
) -> Dict[str, Any]:
    """Train an open_clip model on (image, label caption) pairs of ``data_root``'s ``split``.

    Args:
        data_root: a BDD100K-layout root (a SynthDrive domain folder or real BDD100K); every image of
            both image sets is used once (the union by file name).
        out: the checkpoint file; ``out.with_suffix(".json")`` gets the log.
        epochs, batch_size, lr, weight_decay, warmup_fraction (of all steps): the schedule.
            Batches are full (``drop_last``) unless there are fewer images than ``batch_size``.
        image_size: square input in px (a multiple of 32); None = the model config's. With the tiny
            model each size is its own open_clip config, ``tiny_clip_name(image_size)``.
        model_name: an open_clip model name; None = the tiny CLIP at ``image_size``.
        seed: initialisation, data order and flips (deterministic on CPU with ``num_workers=0``).
        image_names: train only on these image file names (a domain's images); None = every image.
        num_threads: torch CPU threads while training (restored afterwards); None leaves them.
    Returns (and writes to the JSON log): {"checkpoint", "model_name", "image_size", "num_images",
    "epochs", "steps", "losses" (per-epoch mean), "step_losses", "seconds", "images_per_second",
    "parameters", "config", "captions" (the first 5 (image name, caption) pairs)}.
    The checkpoint loads with ``open_clip.create_model(result["model_name"], pretrained=out)``.
    """
    out = Path(out)
    if model_name is None:
        model_name = tiny_clip_name(image_size)
    config = clip_model_config(model_name)
    config_size = config["vision_cfg"].get("image_size", 224)
    config_size = config_size[0] if isinstance(config_size, (list, tuple)) else int(config_size)
    if image_size is not None and int(image_size) != config_size:
        raise ValueError(
            f"image_size {image_size} differs from model '{model_name}''s {config_size}; "
            "choose the model for that size (tiny CLIP: tiny_clip_name(image_size))"
        )
    image_size = config_size
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2 (contrastive), got {epochs}, {batch_size}")

    pairs = caption_pairs(data_root, split)
    if image_names is not None:
        pairs = [(path, caption) for path, caption in pairs if path.name in image_names]
    if len(pairs) < 2:
        raise ValueError(f"{data_root}: CLIP training needs at least 2 images in split '{split}', found {len(pairs)}")
    tokenizer = clip_tokenizer(model_name)
    tokens = tokenizer([caption for _, caption in pairs])

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        torch.manual_seed(seed)
        model = create_clip_model(model_name)
        effective_batch = min(batch_size, len(pairs))
        loader = DataLoader(
            CaptionedImages([p for p, _ in pairs], tokens, image_size),
            batch_size=effective_batch,
            shuffle=True,
            drop_last=True,  # contrastive batches of one size; with fewer images the one batch is all of them
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed),
        )
        history = _train(model, loader, epochs, lr, weight_decay, warmup_fraction, progress)
    finally:
        torch.set_num_threads(previous_threads)

    save_torch(out, {"epoch": epochs, "name": model_name, "state_dict": model.state_dict(), "model_cfg": config})
    result = {
        "checkpoint": str(out),
        "model_name": model_name,
        "image_size": image_size,
        "num_images": len(pairs),
        "batch_size": effective_batch,
        "epochs": epochs,
        **history,
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": {
            "data_root": str(data_root), "split": split, "lr": lr, "weight_decay": weight_decay,
            "warmup_fraction": warmup_fraction, "seed": seed, "model_cfg": config,
        },
        "captions": [[p.name, c] for p, c in pairs[:5]],
    }
    write_json(out.with_suffix(".json"), result)
    return result


def _train(model, loader: DataLoader, epochs: int, lr: float, weight_decay: float,
           warmup_fraction: float, progress: bool) -> Dict[str, Any]:
    from open_clip import ClipLoss

    criterion = ClipLoss()
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    total = epochs * len(loader)
    warmup = int(round(warmup_fraction * total))
    model.train()
    losses: List[float] = []
    step_losses: List[float] = []
    step = seen = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        epoch_loss = 0.0
        bar = tqdm(loader, desc=f"clip epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress)
        for images, texts in bar:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total, warmup, lr)
            image_features, text_features, logit_scale = model(images, texts)[:3]
            loss = criterion(image_features, text_features, logit_scale)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"CLIP loss is {loss.item()} at epoch {epoch} step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step += 1
            seen += images.shape[0]
            epoch_loss += loss.item()
            step_losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        losses.append(epoch_loss / max(1, len(loader)))
    seconds = time.perf_counter() - start
    return {
        "steps": step,
        "losses": losses,
        "step_losses": step_losses,
        "seconds": round(seconds, 2),
        "images_per_second": round(seen / seconds, 2) if seconds > 0 else None,
    }
