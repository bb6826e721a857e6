"""Embedded DINO pretraining of a ResNet, saved as the full ``main_dino.py`` checkpoint the ``"dino"``
converter reads (it keeps the teacher backbone).

Model and loss follow facebookresearch/dino (``main_dino.py``, ``utils.py``, ``vision_transformer.py``)
for ResNets: student and teacher are ``MultiCropWrapper(backbone, DINOHead)`` with the ResNet's ``fc``
replaced by an identity. ``DINOHead``: MLP ``Linear(d,hid), GELU, Linear(hid,hid), GELU,
Linear(hid,bottleneck)`` (trunc-normal init, std 0.02), L2 normalisation, then a weight-normalised
``last_layer`` (``weight_g`` fixed at 1: ``norm_last_layer=True``). ``DINOLoss``: the teacher's outputs on
the two global crops are centred (``- center``) and sharpened (softmax at ``teacher_temp``); each student
crop (temperature ``student_temp``) is trained to match every teacher crop but its own; the centre is
then an EMA (``center_momentum``) of the teacher's batch mean. The teacher is an EMA of the student,
updated after each optimizer step with momentum rising from ``momentum_teacher`` to 1 along a cosine;
it sees only the global crops and keeps its own BatchNorm statistics. The optimizer is SGD (upstream's
choice for ResNets) with biases and norm parameters free of weight decay; gradients are clipped per
parameter (``clip_grad``) and the last layer is frozen during the first ``freeze_last_layer`` epochs.

Multi-crop is optional (``local_crops_number``, default 0: two global crops). Deviations for a short
CPU run: a smaller head (``out_dim`` 4096 instead of 65536, hidden 2048, bottleneck 256), no lr warmup
by default (upstream: 10 epochs), constant teacher temperature (upstream ResNet recipe: 0.04 too) and
weight decay (upstream ResNet recipe: 1e-4 constant), no fp16 scaler.

Saved as ``{"student", "teacher"`` (both with ``module.`` keys, as the DDP-wrapped models)``,
"optimizer", "epoch", "args"`` (an ``argparse.Namespace``, which the importer allows)``, "dino_loss"}``.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from mtwork.pretrain.augment import dino_transforms
from mtwork.pretrain.common import (
    DDP_PREFIX,
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


class WeightNormLinear(nn.Module):
    """``nn.utils.weight_norm(nn.Linear(in, out, bias=False))`` with its parameter names ``weight_g``
    (out, 1) and ``weight_v`` (out, in): weight = g * v / ||v|| per output row. Written out because the
    old ``weight_norm`` is deprecated and the new parametrisation renames the keys."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        linear = nn.Linear(in_features, out_features, bias=False)
        self.weight_v = nn.Parameter(linear.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))  # DINOHead: weight_g.data.fill_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, weight)


class DINOHead(nn.Module):
    """(B, in_dim) -> (B, out_dim) logits; keys ``mlp.{0,2,4}.*``, ``last_layer.weight_{g,v}``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class MultiCropWrapper(nn.Module):
    """``backbone`` + ``head``; crops of equal size go through the backbone together (upstream)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """Crops (each (B,3,H_i,W_i)) -> head outputs (len(crops)*B, out_dim), crop-major."""
        features: List[torch.Tensor] = []
        start = 0
        while start < len(crops):
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            features.append(self.backbone(torch.cat(list(crops[start:end]))))
            start = end
        return self.head(torch.cat(features))


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student, over crop pairs; ``center``
    (1, out_dim) is a buffer (saved as ``dino_loss`` ``{"center"}``)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, teacher_temp: float,
                ncrops: int) -> torch.Tensor:
        """``student_output`` (ncrops*B, K), ``teacher_output`` (2*B, K), crop-major. Updates ``center``."""
        student = (student_output / self.student_temp).chunk(ncrops)
        teacher = F.softmax((teacher_output - self.center) / teacher_temp, dim=-1).detach().chunk(2)
        total, terms = 0.0, 0
        for iq, q in enumerate(teacher):
            for v, s in enumerate(student):
                if v == iq:
                    continue  # a crop is not its own target
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                terms += 1
        self.update_center(teacher_output)
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        batch_center = teacher_output.sum(dim=0, keepdim=True) / len(teacher_output)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


def clip_gradients(model: nn.Module, clip: float) -> None:
    """DINO's ``utils.clip_gradients``: each parameter's gradient norm clipped to ``clip`` on its own."""
    for param in model.parameters():
        if param.grad is not None:
            coef = clip / (param.grad.norm(2) + 1e-6)
            if coef < 1:
                param.grad.mul_(coef)


class DINO(SSLModel):
    def __init__(self, arch: str, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 momentum_teacher: float = 0.996, teacher_temp: float = 0.04, student_temp: float = 0.1,
                 center_momentum: float = 0.9, clip_grad: float = 3.0, freeze_last_layer: int = 1):
        super().__init__()
        self.momentum_teacher = momentum_teacher
        self.teacher_temp = teacher_temp
        self.clip_grad = clip_grad
        self.freeze_last_layer = freeze_last_layer
        backbone = create_resnet(arch, num_classes=0)  # fc = identity, as main_dino.py does for ResNets
        head = DINOHead(backbone.num_features, out_dim, hidden_dim, bottleneck_dim)
        self.student = MultiCropWrapper(backbone, head)
        # main_dino.py loads the student's state into a separately built teacher: the same weights.
        self.teacher = copy.deepcopy(self.student)
        for param in self.teacher.parameters():
            param.requires_grad = False
        self.dino_loss = DINOLoss(out_dim, student_temp, center_momentum)

    def training_step(self, views, epoch):
        teacher_output = self.teacher(views[:2])  # only the 2 global crops pass through the teacher
        student_output = self.student(views)
        loss = self.dino_loss(student_output, teacher_output, self.teacher_temp, len(views))
        return loss, {}

    def param_groups(self):
        return no_decay_groups(self.student)

    def before_optimizer_step(self, epoch):
        if self.clip_grad:
            clip_gradients(self.student, self.clip_grad)
        if epoch < self.freeze_last_layer:  # utils.cancel_gradients_last_layer
            for param in self.student.head.last_layer.parameters():
                param.grad = None

    def momentum_at(self, step: int, total_steps: int) -> float:
        """``cosine_scheduler(momentum_teacher, 1, ...)`` at global iteration ``step``."""
        return cosine_ramp(self.momentum_teacher, 1.0, step, total_steps)

    def after_optimizer_step(self, step, total_steps):
        ema_update(self.teacher, self.student, self.momentum_at(step, total_steps))


def upstream_checkpoint(model: DINO, optimizer: torch.optim.Optimizer, epochs: int, args: argparse.Namespace) -> Dict:
    """``main_dino.py``'s ``save_dict``: student and teacher as DDP-wrapped (``module.`` keys)."""
    return {
        "student": prefixed(DDP_PREFIX, model.student.state_dict()),
        "teacher": prefixed(DDP_PREFIX, model.teacher.state_dict()),
        "optimizer": optimizer.state_dict(),
        "epoch": epochs,
        "args": args,
        "dino_loss": prefixed("", model.dino_loss.state_dict()),
    }


@PRETRAINERS.register("dino")
def pretrain_dino(
    image_dirs: Sequence[str | Path],
    out: str | Path,
    arch: str = "resnet18",
    epochs: int = 3,
    batch_size: int = 32,
    crop: int = 96,
    lr: float = 0.03,
    weight_decay: float = 1e-4,
    out_dim: int = 4096,
    hidden_dim: int = 2048,
    bottleneck_dim: int = 256,
    momentum_teacher: float = 0.99,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
    center_momentum: float = 0.9,
    clip_grad: float = 3.0,
    freeze_last_layer: int = 1,
    local_crops_number: int = 0,
    global_crops_scale: Tuple[float, float] = (0.14, 1.0),
    local_crops_scale: Tuple[float, float] = (0.05, 0.14),
    warmup_epochs: float = 0.0,
    seed: int = 0,
    num_threads: Optional[int] = None,
    progress: bool = True,
    num_workers: int = 0,
) -> Dict:
    """Pretrain DINO on every JPEG under ``image_dirs``; write ``out`` (full main_dino.py checkpoint) and its log.

    Defaults follow upstream's ResNet-50 recipe (SGD lr 0.03, weight decay 1e-4, crop scales 0.14-1 and
    0.05-0.14, teacher temperature 0.04) at a smaller head and a lower teacher momentum (upstream 0.996
    over 100+ epochs; smaller suits short runs). ``local_crops_number`` adds local crops of 96/224 of
    ``crop``. Returns ``{"losses", "images_seen", "iterations", "seconds", "epoch_seconds", "num_images"}``.
    """
    settings = LoopSettings(epochs=epochs, batch_size=batch_size, crop=crop, lr=lr, weight_decay=weight_decay,
                            seed=seed, num_threads=num_threads, progress=progress, num_workers=num_workers,
                            warmup_epochs=warmup_epochs)
    config = dict(arch=arch, out_dim=out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                  use_bn_in_head=False, norm_last_layer=True, momentum_teacher=momentum_teacher,
                  teacher_temp=teacher_temp, warmup_teacher_temp=teacher_temp, warmup_teacher_temp_epochs=0,
                  student_temp=student_temp, center_momentum=center_momentum, clip_grad=clip_grad,
                  freeze_last_layer=freeze_last_layer, local_crops_number=local_crops_number,
                  global_crops_scale=list(global_crops_scale), local_crops_scale=list(local_crops_scale),
                  optimizer="sgd")
    # main_dino.py's argparse names, stored as the checkpoint's "args" (plain values only).
    args = argparse.Namespace(
        **config, epochs=epochs, batch_size_per_gpu=batch_size, lr=lr, weight_decay=weight_decay,
        weight_decay_end=weight_decay, warmup_epochs=warmup_epochs, min_lr=0.0, seed=seed, crop=crop,
        data_path=[str(d) for d in image_dirs], output_dir=str(Path(out).parent),
    )
    return run_pretraining(
        "dino", image_dirs, out, settings,
        dino_transforms(crop, local_crops_number, tuple(global_crops_scale), tuple(local_crops_scale)),
        build_model=lambda: DINO(arch, out_dim, hidden_dim, bottleneck_dim, momentum_teacher, teacher_temp,
                                 student_temp, center_momentum, clip_grad, freeze_last_layer),
        write_checkpoint=lambda model, optimizer, history: upstream_checkpoint(model, optimizer, epochs, args),
        config=config,
    )
