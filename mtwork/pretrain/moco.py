"""Embedded MoCo v2 pretraining on unlabeled images, saved in the upstream MoCo checkpoint layout.

The model, loss, queue, optimizer and schedule follow facebookresearch/moco (``moco/builder.py``,
``main_moco.py``) so that the file this writes is imported by the same ``"moco"`` converter as a
released checkpoint: the pipeline's default run exercises the real import path. Only the scale is
small (a few epochs, small crops, a short queue).

Upstream's *shuffling BN* exists because per-GPU BatchNorm lets a query and its positive key share
batch statistics, which the contrastive task can exploit. On one device a single BN over the whole
batch leaks the same way and shuffling the batch order alone changes nothing, so we emulate the
multi-GPU setting: the batch is split into ``bn_splits`` chunks (the "GPUs"), each chunk is forwarded
separately (its own BN statistics), and the keys are shuffled across chunks before and unshuffled
after, as upstream's ``_batch_shuffle_ddp``. ``bn_splits=1`` turns this off (one BN over the batch).
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mtwork.io import save_torch, write_json
from mtwork.pretrain.augment import moco_v2_transform
from mtwork.pretrain.images import TwoViewImages, find_images

# DistributedDataParallel's key prefix: upstream checkpoints are saved from the DDP-wrapped model.
DDP_PREFIX = "module."


def create_moco_encoder(arch: str, dim: int, mlp: bool = True) -> nn.Module:
    """timm ``arch`` with its classifier as MoCo's projection head: (B,3,H,W) -> (B,dim) (unnormalised).

    v2 (``mlp=True``): ``fc = Sequential(Linear(d,d), ReLU, Linear(d,dim))`` -> keys ``fc.0.*``, ``fc.2.*``;
    v1: ``fc = Linear(d,dim)``. Only ResNet-style models (classifier named ``fc``) fit the upstream layout.
    """
    encoder = timm.create_model(arch, pretrained=False, num_classes=dim)
    fc = getattr(encoder, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise ValueError(
            f"MoCo's checkpoint layout needs a ResNet-style 'fc' classifier; timm '{arch}' has "
            f"'{encoder.default_cfg.get('classifier', '?')}'"
        )
    if mlp:
        width = fc.weight.shape[1]
        encoder.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), fc)
    return encoder


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and a queue of negatives (``moco/builder.py``).

    ``queue``: (dim, K) L2-normalised keys, oldest overwritten first at ``queue_ptr``.
    """

    def __init__(
        self,
        arch: str,
        dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.07,
        mlp: bool = True,
        bn_splits: int = 1,
    ):
        super().__init__()
        self.momentum = momentum
        self.temperature = temperature
        self.bn_splits = bn_splits
        self.encoder_q = create_moco_encoder(arch, dim, mlp)
        # Upstream builds encoder_k separately and copies encoder_q's parameters into it; a deep copy
        # gives the same weights and identical initial BN buffers.
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for param in self.encoder_k.parameters():
            param.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """encoder_k <- m * encoder_k + (1 - m) * encoder_q (parameters only; BN buffers are its own)."""
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.mul_(self.momentum).add_(param_q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest ``B`` queue columns with ``keys`` (B, dim); K must be a multiple of B."""
        batch = keys.shape[0]
        ptr = int(self.queue_ptr)
        self.queue[:, ptr : ptr + batch] = keys.T
        self.queue_ptr[0] = (ptr + batch) % self.queue.shape[1]

    def _chunked(self, encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        # One forward per simulated GPU, so every chunk has its own BatchNorm statistics.
        return torch.cat([encoder(chunk) for chunk in images.chunk(self.bn_splits)])

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Two views (B,3,H,W) -> logits (B, 1+K) / T and labels (B,) zeros (the positive is column 0).

        Side effects as upstream: momentum update of encoder_k before computing keys, and the keys
        enqueued after the logits are formed.
        """
        q = F.normalize(self._chunked(self.encoder_q, im_q), dim=1)
        with torch.no_grad():
            self.momentum_update()
            if self.bn_splits > 1:
                shuffle = torch.randperm(im_k.shape[0])
                k = self._chunked(self.encoder_k, im_k[shuffle])[torch.argsort(shuffle)]
            else:
                k = self.encoder_k(im_k)
            k = F.normalize(k, dim=1)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ self.queue.clone().detach()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        self.enqueue(k)
        return logits, labels


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """Upstream ``adjust_learning_rate`` with ``--cos``: set once per epoch, epoch counted from 0."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def upstream_checkpoint(model: MoCo, optimizer: torch.optim.Optimizer, epoch: int, arch: str) -> Dict:
    """The dict ``main_moco.py`` saves: keys prefixed ``module.`` as from the DDP-wrapped model."""
    state = {DDP_PREFIX + key: value.detach().clone() for key, value in model.state_dict().items()}
    return {"epoch": epoch, "arch": arch, "state_dict": state, "optimizer": optimizer.state_dict()}


def pretrain_moco_v2(
    image_dirs: Sequence[str | Path],
    out: str | Path,
    arch: str = "resnet18",
    epochs: int = 3,
    batch_size: int = 32,
    crop: int = 96,
    queue_size: int = 1024,
    momentum: float = 0.99,
    temperature: float = 0.2,
    lr: float = 0.03,
    dim: int = 128,
    seed: int = 0,
    num_threads: Optional[int] = None,
    progress: bool = True,
    bn_splits: int = 4,
    num_workers: int = 0,
) -> Dict:
    """Pretrain MoCo v2 on every JPEG under ``image_dirs`` and save an upstream-layout checkpoint.

    Writes ``out`` (``{"epoch", "arch", "state_dict": {"module.encoder_q.*", "module.encoder_k.*",
    "module.queue", "module.queue_ptr"}, "optimizer"}``) and ``out.with_suffix(".json")`` (config and
    losses), both atomically. ``crop`` in pixels; ``lr`` is the SGD base rate (upstream: 0.03 at batch
    256, cosine over epochs); ``momentum`` is the key encoder's EMA factor (upstream 0.999 for 200
    epochs; smaller suits short runs). Deterministic for a given seed on CPU with ``num_workers=0``.
    Returns ``{"losses", "acc1"`` (per epoch means)``, "images_seen", "iterations", "num_images",
    "queue_ptr", "seconds"}``.
    """
    out = Path(out)
    files = find_images(image_dirs)
    _check_sizes(len(files), batch_size, queue_size, bn_splits, image_dirs)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        torch.manual_seed(seed)
        model = MoCo(arch, dim, queue_size, momentum, temperature, mlp=True, bn_splits=bn_splits)
        # All parameters, as upstream (encoder_k's have no grad and are skipped by SGD).
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        loader = DataLoader(
            TwoViewImages(files, moco_v2_transform(crop)),
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,  # a full batch per step keeps the queue a whole number of batches
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed),
        )
        history = _train(model, optimizer, loader, epochs, lr, progress)
    finally:
        torch.set_num_threads(previous_threads)

    save_torch(out, upstream_checkpoint(model, optimizer, epochs, arch))
    config = dict(
        arch=arch, epochs=epochs, batch_size=batch_size, crop=crop, queue_size=queue_size, momentum=momentum,
        temperature=temperature, lr=lr, dim=dim, seed=seed, bn_splits=bn_splits,
        image_dirs=[str(d) for d in image_dirs],
    )
    result = {**history, "num_images": len(files), "queue_ptr": int(model.queue_ptr)}
    write_json(out.with_suffix(".json"), {"checkpoint": str(out), "config": config, **result})
    return result


def _train(model: MoCo, optimizer, loader: DataLoader, epochs: int, lr: float, progress: bool) -> Dict:
    model.train()
    criterion = nn.CrossEntropyLoss()
    losses: List[float] = []
    accs: List[float] = []
    seen = iterations = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(lr, epoch, epochs)
        total_loss = total_acc = 0.0
        steps = 0
        bar = tqdm(loader, desc=f"moco v2 epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress)
        for im_q, im_k in bar:
            logits, labels = model(im_q, im_k)
            loss = criterion(logits, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"MoCo loss is {loss.item()} at epoch {epoch} step {steps}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            total_acc += (logits.argmax(dim=1) == 0).float().mean().item()
            steps += 1
            seen += im_q.shape[0]
            bar.set_postfix(loss=f"{total_loss / steps:.3f}")
        iterations += steps
        losses.append(total_loss / steps)
        accs.append(total_acc / steps)
    return {
        "losses": losses,
        "acc1": accs,
        "images_seen": seen,
        "iterations": iterations,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _check_sizes(num_images: int, batch_size: int, queue_size: int, bn_splits: int, image_dirs) -> None:
    if num_images < batch_size:
        raise ValueError(f"MoCo needs at least batch_size={batch_size} images, found {num_images} under {list(image_dirs)}")
    if queue_size % batch_size:
        raise ValueError(f"queue_size={queue_size} must be a multiple of batch_size={batch_size} (upstream assumption)")
    if batch_size % bn_splits or batch_size // bn_splits < 2:
        raise ValueError(
            f"batch_size={batch_size} must split into bn_splits={bn_splits} chunks of at least 2 images "
            "(BatchNorm needs 2 samples)"
        )
