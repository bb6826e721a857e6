"""Embedded BYOL pretraining, saved in the mmselfsup 1.x checkpoint layout the ``"byol"`` converter reads.

Model and loss follow BYOL (Grill et al. 2020) as open-mmlab/mmselfsup implements it
(``models/algorithms/byol.py``): an online network (ResNet ``backbone``, projector ``neck`` =
``NonLinearNeck`` fc0-bn0-relu-fc1, predictor ``head.predictor`` of the same shape) and a target
network (``target_net.module`` = copies of backbone and neck) that is an exponential moving average of
the online one. The loss is symmetric: each view's prediction regresses the target projection of the
other view, ``||p/|p| - z'/|z'|||^2 = 2 - 2 cos(p, z')``, summed over both directions and averaged over
the batch. The target momentum rises from ``momentum`` to 1 along a cosine over the run (BYOL's
``tau_k = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2``); the target is updated after each optimizer step with
the updated online weights (the paper's order), so after step ``k``
``target = tau_k * target + (1 - tau_k) * online``.

Deviations, for a short CPU run: SGD (momentum 0.9) with a per-step cosine rate instead of LARS (lr 4.8,
weight decay 1.5e-6 at batch 4096), biases and BN parameters without weight decay as LARS excludes them;
the EMA covers parameters only and the target's BatchNorm keeps its own statistics from its forward
passes (mmselfsup copies the online buffers); the EMA step counter ``target_net.steps`` counts updates.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtwork.pretrain.augment import byol_transforms
from mtwork.pretrain.common import (
    PRETRAINERS,
    LoopSettings,
    SSLModel,
    cosine_ramp,
    create_resnet,
    ema_update,
    no_decay_groups,
    prefixed,
    run_pretraining,
)


class NonLinearNeck(nn.Module):
    """mmselfsup ``NonLinearNeck`` as BYOL configures it (2 layers, with_bias, no last BN):
    ``fc0`` Linear(in, hid), ``bn0`` BN1d, ReLU, ``fc1`` Linear(hid, out, no bias). (B, in) -> (B, out)."""

    def __init__(self, in_channels: int, hid_channels: int, out_channels: int):
        super().__init__()
        self.fc0 = nn.Linear(in_channels, hid_channels)
        self.bn0 = nn.BatchNorm1d(hid_channels)
        self.fc1 = nn.Linear(hid_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(F.relu(self.bn0(self.fc0(x))))


class LatentPredictHead(nn.Module):
    """mmselfsup ``LatentPredictHead``: the ``predictor`` on the online projection."""

    def __init__(self, dim: int, hid_channels: int):
        super().__init__()
        self.predictor = NonLinearNeck(dim, hid_channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(x)


class TargetNet(nn.Module):
    """mmengine/mmselfsup ``CosineEMA`` wrapper: ``module`` (the averaged copy) and a ``steps`` counter."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self.module = module
        for param in self.module.parameters():
            param.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE per sample, ``2 - 2 cos(prediction, target)``: (B, D), (B, D) -> (B,)."""
    return 2 - 2 * (F.normalize(prediction, dim=1) * F.normalize(target, dim=1)).sum(dim=1)


class BYOL(SSLModel):
    """Online backbone + neck + predictor head, EMA target of backbone + neck (mmselfsup module names)."""

    def __init__(self, arch: str, hid_channels: int = 4096, dim: int = 256, momentum: float = 0.996):
        super().__init__()
        self.base_momentum = momentum
        self.backbone = create_resnet(arch, num_classes=0)  # (B,3,H,W) -> pooled (B, C)
        self.neck = NonLinearNeck(self.backbone.num_features, hid_channels, dim)
        self.head = LatentPredictHead(dim, hid_channels)
        self.target_net = TargetNet(copy.deepcopy(nn.Sequential(self.backbone, self.neck)))

    def online(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(x)))

    def training_step(self, views, epoch):
        v1, v2 = views[0], views[1]
        p1, p2 = self.online(v1), self.online(v2)
        with torch.no_grad():
            z1, z2 = self.target_net(v1), self.target_net(v2)
        loss = (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()
        return loss, {}

    def param_groups(self):
        return no_decay_groups(self)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """tau_k = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2: ``momentum`` at step 0, 1 at the end."""
        return cosine_ramp(self.base_momentum, 1.0, step, total_steps)

    def after_optimizer_step(self, step, total_steps):
        ema_update(self.target_net.module, nn.Sequential(self.backbone, self.neck), self.momentum_at(step, total_steps))
        self.target_net.steps += 1

    def summary(self) -> Dict:
        return {"target_steps": int(self.target_net.steps)}


def upstream_checkpoint(model: BYOL, optimizer: torch.optim.Optimizer, history: Dict, epochs: int,
                        lr: float, seed: int) -> Dict:
    """What mmengine's ``CheckpointHook`` saves for mmselfsup 1.x BYOL (``epoch_N.pth``)."""
    iterations = history["iterations"]
    return {
        "meta": {"epoch": epochs, "iter": iterations, "seed": seed, "experiment_name": "mtwork_byol"},
        "state_dict": prefixed("", model.state_dict()),
        "message_hub": {"log_scalars": {}, "runtime_info": {"epoch": epochs, "iter": iterations},
                        "resumed_keys": {}},
        "optimizer": optimizer.state_dict(),
        "param_schedulers": [{"type": "CosineAnnealingLR", "T_max": iterations, "eta_min": 0.0,
                              "base_values": [lr], "last_step": iterations}],
    }


@PRETRAINERS.register("byol")
def pretrain_byol(
    image_dirs: Sequence[str | Path],
    out: str | Path,
    arch: str = "resnet18",
    epochs: int = 3,
    batch_size: int = 32,
    crop: int = 96,
    lr: float = 0.06,
    weight_decay: float = 1.5e-6,
    momentum: float = 0.99,
    hid_channels: int = 1024,
    dim: int = 256,
    warmup_epochs: float = 0.0,
    seed: int = 0,
    num_threads: Optional[int] = None,
    progress: bool = True,
    num_workers: int = 0,
) -> Dict:
    """Pretrain BYOL on every JPEG under ``image_dirs``; write ``out`` (mmselfsup layout) and its JSON log.

    ``momentum``: the target's base EMA factor (upstream 0.996 over 300 epochs at batch 4096; smaller
    suits short runs), rising to 1 along a cosine. ``hid_channels``/``dim``: projector and predictor
    widths (upstream 4096/256). Returns ``{"losses", "images_seen", "iterations", "seconds",
    "epoch_seconds", "num_images", "target_steps"}``.
    """
    settings = LoopSettings(epochs=epochs, batch_size=batch_size, crop=crop, lr=lr, weight_decay=weight_decay,
                            seed=seed, num_threads=num_threads, progress=progress, num_workers=num_workers,
                            warmup_epochs=warmup_epochs)
    return run_pretraining(
        "byol", image_dirs, out, settings, byol_transforms(crop),
        build_model=lambda: BYOL(arch, hid_channels, dim, momentum),
        write_checkpoint=lambda model, optimizer, history: upstream_checkpoint(
            model, optimizer, history, epochs, lr, seed),
        config=dict(arch=arch, momentum=momentum, hid_channels=hid_channels, dim=dim, optimizer="sgd"),
    )
