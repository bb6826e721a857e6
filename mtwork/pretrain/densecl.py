"""Embedded DenseCL pretraining, saved in the OpenSelfSup training-checkpoint layout the ``"densecl"``
converter reads.

Model and loss follow WXinlong/DenseCL (``openselfsup/models/densecl.py``, ``necks.py`` ``DenseCLNeck``):
MoCo v2 with a second, dense branch. ``encoder_q`` = (ResNet, ``DenseCLNeck``), ``encoder_k`` its momentum
copy; the neck has a global MLP ``mlp`` (Linear-ReLU-Linear on the pooled last feature map) and a dense
projection head ``mlp2`` (1x1 conv-ReLU-1x1 conv on every cell of the last feature map, S = h*w cells).

* global branch: MoCo's InfoNCE of the pooled query against its key and the ``queue`` of past keys;
* dense branch: each query cell's positive is the key cell whose *backbone* feature is most similar
  (cosine) to its own backbone feature; its negatives are the ``queue2`` of past keys' pooled dense
  projections; InfoNCE over all B*S cells;
* loss = (1 - lambda) * global + lambda * dense, lambda = 0.5; temperature 0.2 for both
  (``ContrastiveHead``); both queues advance by B keys per step.

As in ``moco.py``, upstream's shuffling BN is emulated with ``bn_splits`` simulated GPUs. The
optimizer is upstream's (SGD, momentum 0.9, weight decay 1e-4, cosine by epoch); the neck's Linear
layers get mmcv's Kaiming init (``init_linear='kaiming'``).

Saved as mmcv's ``{"meta", "state_dict", "optimizer"}``; the state dict holds ``queue``, ``queue_ptr``,
``queue2``, ``queue2_ptr``, ``encoder_q.{0,1}.*``, ``encoder_k.{0,1}.*`` and ``backbone.*`` (the query
backbone again: ``self.backbone = self.encoder_q[0]``), which the converter keeps.
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
    PRETRAINERS,
    LoopSettings,
    SSLModel,
    check_bn_splits,
    check_queue,
    create_resnet,
    ema_update,
    forward_in_chunks,
    forward_shuffled,
    prefixed,
    run_pretraining,
)
from mtwork.pretrain.moco import enqueue, info_nce_logits


class DenseCLNeck(nn.Module):
    """Last feature map (B, C, h, w) -> global (B, D), dense grid (B, D, h*w), pooled dense (B, D)."""

    def __init__(self, in_channels: int, hid_channels: int, out_channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, hid_channels), nn.ReLU(), nn.Linear(hid_channels, out_channels))
        self.mlp2 = nn.Sequential(nn.Conv2d(in_channels, hid_channels, 1), nn.ReLU(),
                                  nn.Conv2d(hid_channels, out_channels, 1))
        for module in self.mlp:
            if isinstance(module, nn.Linear):  # mmcv kaiming_init(mode='fan_in', nonlinearity='relu'), bias 0
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = self.mlp(x.mean(dim=(2, 3)))
        grid = self.mlp2(x)
        return pooled, grid.flatten(2), grid.mean(dim=(2, 3))


def dense_correspondence(q_b: torch.Tensor, k_b: torch.Tensor) -> torch.Tensor:
    """L2-normalised backbone features (B, C, S) of query and key -> (B, S): for each query cell, the
    key cell with the highest cosine similarity (``backbone_sim_matrix.max(dim=2)[1]``)."""
    return torch.bmm(q_b.transpose(1, 2), k_b).argmax(dim=2)


class DenseCL(SSLModel):
    """Query/key encoders (backbone + DenseCLNeck), global ``queue`` and dense ``queue2`` (dim, K)."""

    lr_per_iteration = False  # OpenSelfSup's CosineAnnealing lr hook steps by epoch

    def __init__(self, arch: str, hid_channels: int = 2048, dim: int = 128, queue_size: int = 65536,
                 momentum: float = 0.999, temperature: float = 0.2, loss_lambda: float = 0.5, bn_splits: int = 1):
        super().__init__()
        self.momentum = momentum
        self.temperature = temperature
        self.loss_lambda = loss_lambda
        self.bn_splits = bn_splits
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("queue2", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue2_ptr", torch.zeros(1, dtype=torch.long))
        backbone = create_resnet(arch, num_classes=0)
        self.encoder_q = nn.Sequential(backbone, DenseCLNeck(backbone.num_features, hid_channels, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for param in self.encoder_k.parameters():
            param.requires_grad = False
        self.backbone = self.encoder_q[0]  # an alias, saved again as backbone.* (the converter keeps it)

    @staticmethod
    def _encode(encoder: nn.Sequential, images: torch.Tensor):
        """-> normalised (global (B,D), grid (B,D,S), pooled grid (B,D), backbone cells (B,C,S))."""
        features = encoder[0].forward_features(images)
        pooled, grid, pooled_grid = encoder[1](features)
        return (F.normalize(pooled, dim=1), F.normalize(grid, dim=1), F.normalize(pooled_grid, dim=1),
                F.normalize(features.flatten(2), dim=1))

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Two views (B,3,H,W) -> global logits (B, 1+K) and dense logits (B*S, 1+K), positive in column 0.
        Side effects as upstream: key encoder EMA before the keys, both queues fed after the logits."""
        q, q_grid, _, q_b = forward_in_chunks(lambda x: self._encode(self.encoder_q, x), im_q, self.bn_splits)
        with torch.no_grad():
            ema_update(self.encoder_k, self.encoder_q, self.momentum)
            k, k_grid, k2, k_b = forward_shuffled(lambda x: self._encode(self.encoder_k, x), im_k, self.bn_splits)
        logits = info_nce_logits(q, k, self.queue, self.temperature)

        match = dense_correspondence(q_b, k_b)  # (B, S)
        k_matched = torch.gather(k_grid, 2, match.unsqueeze(1).expand(-1, k_grid.shape[1], -1))  # (B, D, S)
        q_cells = q_grid.transpose(1, 2).reshape(-1, q_grid.shape[1])  # (B*S, D)
        k_cells = k_matched.transpose(1, 2).reshape(-1, k_grid.shape[1])
        dense_logits = info_nce_logits(q_cells, k_cells, self.queue2, self.temperature)

        enqueue(self.queue, self.queue_ptr, k)
        enqueue(self.queue2, self.queue2_ptr, k2)
        return {"logits": logits, "dense_logits": dense_logits}

    def training_step(self, views, epoch):
        out = self(views[0], views[1])
        logits, dense_logits = out["logits"], out["dense_logits"]
        loss_single = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
        loss_dense = F.cross_entropy(dense_logits, torch.zeros(len(dense_logits), dtype=torch.long))
        loss = (1 - self.loss_lambda) * loss_single + self.loss_lambda * loss_dense
        return loss, {"loss_single": loss_single.item(), "loss_dense": loss_dense.item(),
                      "acc1": (logits.argmax(dim=1) == 0).float().mean().item()}

    def summary(self) -> Dict:
        return {"queue_ptr": int(self.queue_ptr), "queue2_ptr": int(self.queue2_ptr)}


def upstream_checkpoint(model: DenseCL, optimizer: torch.optim.Optimizer, epochs: int, iterations: int) -> Dict:
    """mmcv's ``save_checkpoint``: ``{"meta", "state_dict", "optimizer"}`` of the DenseCL model."""
    return {"meta": {"epoch": epochs, "iter": iterations}, "state_dict": prefixed("", model.state_dict()),
            "optimizer": optimizer.state_dict()}


@PRETRAINERS.register("densecl")
def pretrain_densecl(
    image_dirs: Sequence[str | Path],
    out: str | Path,
    arch: str = "resnet18",
    epochs: int = 3,
    batch_size: int = 32,
    crop: int = 96,
    lr: float = 0.03,
    queue_size: int = 1024,
    momentum: float = 0.99,
    temperature: float = 0.2,
    loss_lambda: float = 0.5,
    hid_channels: int = 2048,
    dim: int = 128,
    bn_splits: int = 4,
    seed: int = 0,
    num_threads: Optional[int] = None,
    progress: bool = True,
    num_workers: int = 0,
) -> Dict:
    """Pretrain DenseCL on every JPEG under ``image_dirs``; write ``out`` (OpenSelfSup layout) and its log.

    Upstream: SGD lr 0.3 at batch 256, weight decay 1e-4, queue 65536, momentum 0.999 over 200 epochs;
    here the rate is used as given and the queue and momentum are sized for short runs. Returns
    ``{"losses", "loss_single", "loss_dense", "acc1"`` (per epoch)``, "images_seen", "iterations",
    "seconds", "epoch_seconds", "num_images", "queue_ptr", "queue2_ptr"}``.
    """
    check_queue(queue_size, batch_size)
    check_bn_splits(batch_size, bn_splits)
    settings = LoopSettings(epochs=epochs, batch_size=batch_size, crop=crop, lr=lr, weight_decay=1e-4, seed=seed,
                            num_threads=num_threads, progress=progress, num_workers=num_workers)
    transform = moco_v2_transform(crop)
    return run_pretraining(
        "densecl", image_dirs, out, settings, [transform, transform],
        build_model=lambda: DenseCL(arch, hid_channels, dim, queue_size, momentum, temperature, loss_lambda,
                                    bn_splits),
        write_checkpoint=lambda model, optimizer, history: upstream_checkpoint(
            model, optimizer, epochs, history["iterations"]),
        config=dict(arch=arch, queue_size=queue_size, momentum=momentum, temperature=temperature,
                    loss_lambda=loss_lambda, hid_channels=hid_channels, dim=dim, bn_splits=bn_splits),
    )
