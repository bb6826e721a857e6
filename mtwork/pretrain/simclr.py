"""Embedded SimCLR pretraining, saved in the SimCLR v1 PyTorch layout the ``"simclr"`` converter reads.

Model and loss follow google-research/simclr (``model_util.projection_head``, ``objective.add_contrastive_loss``):
a ResNet, a 2-layer MLP projection head ``Linear(d,d), BN, ReLU, Linear(d,dim)`` on the pooled features,
and NT-Xent over the two views of every image (each view's positive is the other view of its image,
the other 2B-2 views are negatives, cosine similarity / temperature).

Deviations, for a short CPU run: SGD (momentum 0.9) with a per-step cosine rate instead of LARS
(lr 0.3 x B/256, weight decay 1e-6 at batch 4096); as with LARS, biases and BN parameters get no
weight decay. The loss is the mean over the 2B views, i.e. half upstream's ``loss_a + loss_b`` (a
constant factor, absorbed by the learning rate).

The file is what tonylins/simclr-converter writes for the released models: ``{"state_dict":
torchvision ResNet keys + fc}``, with nothing else at the top level (no epoch, no optimizer: the JSON log
beside it has those). There ``fc`` is the supervised linear head; here it is the projection head
(``fc.0`` Linear, ``fc.1`` BN, ``fc.3`` Linear), where the layout keeps its head and the converter drops it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtwork.pretrain.augment import simclr_transform
from mtwork.pretrain.common import (
    PRETRAINERS,
    LoopSettings,
    SSLModel,
    create_resnet,
    no_decay_groups,
    prefixed,
    run_pretraining,
)


def nt_xent_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Projections of view 1 and view 2 (B, D) -> logits (2B, 2B-1) and targets (2B,).

    Row ``i`` holds view ``i``'s cosine similarities / T to every other view (itself removed); its
    target is the column of the other view of the same image.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z.shape[0]
    batch = n // 2
    sim = z @ z.T / temperature
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    logits = sim[off_diagonal].view(n, n - 1)
    partner = torch.cat([torch.arange(batch, n), torch.arange(0, batch)])
    # Removing the diagonal shifts every column right of it one to the left.
    targets = partner - (partner > torch.arange(n)).long()
    return logits, targets


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR's normalised temperature-scaled cross entropy), mean over the 2B views."""
    logits, targets = nt_xent_logits(z1, z2, temperature)
    return F.cross_entropy(logits, targets)


def create_simclr_encoder(arch: str, dim: int) -> nn.Module:
    """ResNet with ``fc`` = projection head ``Linear(d,d), BN1d(d), ReLU, Linear(d,dim)``: (B,3,H,W) -> (B,dim)."""
    encoder = create_resnet(arch, num_classes=dim)
    width = encoder.fc.weight.shape[1]
    encoder.fc = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), encoder.fc)
    return encoder


class SimCLR(SSLModel):
    def __init__(self, arch: str, dim: int = 128, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature
        self.encoder = create_simclr_encoder(arch, dim)

    def training_step(self, views, epoch):
        # One forward over both views: BN statistics over all 2B views, as SimCLR's global BN.
        z = self.encoder(torch.cat([views[0], views[1]]))
        z1, z2 = z.chunk(2)
        logits, targets = nt_xent_logits(z1, z2, self.temperature)
        loss = F.cross_entropy(logits, targets)
        return loss, {"acc1": (logits.argmax(dim=1) == targets).float().mean().item()}

    def param_groups(self):
        return no_decay_groups(self)


def upstream_checkpoint(model: SimCLR) -> Dict:
    """tonylins/simclr-converter's layout: ``{"state_dict": torchvision keys + fc.*}`` and nothing else."""
    return {"state_dict": prefixed("", model.encoder.state_dict())}


@PRETRAINERS.register("simclr")
def pretrain_simclr(
    image_dirs: Sequence[str | Path],
    out: str | Path,
    arch: str = "resnet18",
    epochs: int = 3,
    batch_size: int = 32,
    crop: int = 96,
    lr: float = 0.06,
    weight_decay: float = 1e-6,
    temperature: float = 0.2,
    dim: int = 128,
    warmup_epochs: float = 0.0,
    seed: int = 0,
    num_threads: Optional[int] = None,
    progress: bool = True,
    num_workers: int = 0,
) -> Dict:
    """Pretrain SimCLR on every JPEG under ``image_dirs``; write ``out`` (SimCLR v1 layout) and its JSON log.

    ``temperature``: NT-Xent's (upstream 0.1 at batch 4096, 0.5 at small batches; 0.2 between);
    ``dim``: projection output (upstream 128). Returns ``{"losses", "acc1"`` (how often a view's
    partner is its most similar view), ``"images_seen", "iterations", "seconds", "epoch_seconds",
    "num_images"}``.
    """
    settings = LoopSettings(epochs=epochs, batch_size=batch_size, crop=crop, lr=lr, weight_decay=weight_decay,
                            seed=seed, num_threads=num_threads, progress=progress, num_workers=num_workers,
                            warmup_epochs=warmup_epochs)
    transform = simclr_transform(crop)
    return run_pretraining(
        "simclr", image_dirs, out, settings, [transform, transform],
        build_model=lambda: SimCLR(arch, dim, temperature),
        write_checkpoint=lambda model, optimizer, history: upstream_checkpoint(model),
        config=dict(arch=arch, temperature=temperature, dim=dim, optimizer="sgd"),
    )
