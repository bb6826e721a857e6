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
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtwork.pretrain.augment import moco_v2_transform
from mtwork.pretrain.common import (
    DDP_PREFIX,
    PRETRAINERS,
    LoopSettings,
    SSLModel,
    check_bn_splits,
    check_queue,
    cosine_lr,
    create_resnet,
    ema_update,
    forward_in_chunks,
    forward_shuffled,
    prefixed,
    run_pretraining,
)

__all__ = ["MoCo", "create_moco_encoder", "cosine_lr", "upstream_checkpoint", "pretrain_moco_v2", "DDP_PREFIX"]


def create_moco_encoder(arch: str, dim: int, mlp: bool = True) -> nn.Module:
    """timm ``arch`` with its classifier as MoCo's projection head: (B,3,H,W) -> (B,dim) (unnormalised).

    v2 (``mlp=True``): ``fc = Sequential(Linear(d,d), ReLU, Linear(d,dim))`` -> keys ``fc.0.*``, ``fc.2.*``;
    v1: ``fc = Linear(d,dim)``. Only ResNet-style models (classifier named ``fc``) fit the upstream layout.
    """
    encoder = create_resnet(arch, num_classes=dim)
    if mlp:
        width = encoder.fc.weight.shape[1]
        encoder.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), encoder.fc)
    return encoder


def enqueue(queue: torch.Tensor, queue_ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Replace the oldest ``B`` columns of ``queue`` (dim, K) with ``keys`` (B, dim); K a multiple of B."""
    batch = keys.shape[0]
    ptr = int(queue_ptr)
    queue[:, ptr : ptr + batch] = keys.T
    queue_ptr[0] = (ptr + batch) % queue.shape[1]


def info_nce_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N,C) queries, (N,C) positive keys, (C,K) negatives, all L2-normalised -> logits (N, 1+K) / T,
    the positive in column 0 (``moco/builder.py``; DenseCL's ``ContrastiveHead``)."""
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.clone().detach()
    return torch.cat([l_pos, l_neg], dim=1) / temperature


class MoCo(SSLModel):
    """Query encoder, momentum key encoder and a queue of negatives (``moco/builder.py``).

    ``queue``: (dim, K) L2-normalised keys, oldest overwritten first at ``queue_ptr``.
    """

    lr_per_iteration = False  # main_moco.py sets the cosine rate once per epoch

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
        ema_update(self.encoder_k, self.encoder_q, self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest ``B`` queue columns with ``keys`` (B, dim); K must be a multiple of B."""
        enqueue(self.queue, self.queue_ptr, keys)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Two views (B,3,H,W) -> logits (B, 1+K) / T and labels (B,) zeros (the positive is column 0).

        Side effects as upstream: momentum update of encoder_k before computing keys, and the keys
        enqueued after the logits are formed.
        """
        q = F.normalize(forward_in_chunks(self.encoder_q, im_q, self.bn_splits), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = F.normalize(forward_shuffled(self.encoder_k, im_k, self.bn_splits), dim=1)
        logits = info_nce_logits(q, k, self.queue, self.temperature)
        labels = torch.zeros(logits.shape[0], dtype=torch.long)
        self.enqueue(k)
        return logits, labels

    def training_step(self, views, epoch):
        logits, labels = self(views[0], views[1])
        loss = F.cross_entropy(logits, labels)
        return loss, {"acc1": (logits.argmax(dim=1) == 0).float().mean().item()}

    def summary(self) -> Dict:
        return {"queue_ptr": int(self.queue_ptr)}


def upstream_checkpoint(model: MoCo, optimizer: torch.optim.Optimizer, epoch: int, arch: str) -> Dict:
    """The dict ``main_moco.py`` saves: keys prefixed ``module.`` as from the DDP-wrapped model."""
    return {"epoch": epoch, "arch": arch, "state_dict": prefixed(DDP_PREFIX, model.state_dict()),
            "optimizer": optimizer.state_dict()}


@PRETRAINERS.register("moco")
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
    256, cosine over epochs; weight decay 1e-4); ``momentum`` is the key encoder's EMA factor (upstream
    0.999 for 200 epochs; smaller suits short runs). Deterministic for a given seed on CPU with
    ``num_workers=0``. Returns ``{"losses", "acc1"`` (per epoch means)``, "images_seen", "iterations",
    "num_images", "queue_ptr", "seconds", "epoch_seconds"}``.
    """
    check_queue(queue_size, batch_size)
    check_bn_splits(batch_size, bn_splits)
    settings = LoopSettings(epochs=epochs, batch_size=batch_size, crop=crop, lr=lr, weight_decay=1e-4, seed=seed,
                            num_threads=num_threads, progress=progress, num_workers=num_workers)
    config = dict(arch=arch, queue_size=queue_size, momentum=momentum, temperature=temperature, dim=dim,
                  bn_splits=bn_splits)
    transform = moco_v2_transform(crop)
    return run_pretraining(
        "moco v2", image_dirs, out, settings, [transform, transform],
        build_model=lambda: MoCo(arch, dim, queue_size, momentum, temperature, mlp=True, bn_splits=bn_splits),
        write_checkpoint=lambda model, optimizer, history: upstream_checkpoint(model, optimizer, epochs, arch),
        config=config,
    )
