"""The loop every embedded self-supervised pretraining run shares, and the pieces its methods reuse.

A method (``moco.py``, ``simclr.py``, ``byol.py``, ``dino.py``, ``densecl.py``) supplies three things:

* an :class:`SSLModel`: ``training_step(views, epoch) -> (loss, metrics)`` plus optional hooks (what
  the optimizer trains, what happens around the optimizer step: EMA targets, gradient surgery);
* the image views it trains on (``mtwork.pretrain.augment`` recipes);
* a writer from the trained model to the dict its upstream code saves, so the file is imported by the
  same converter (``mtwork.checkpoints.formats``) as a released checkpoint.

:func:`run_pretraining` does the rest the same way for all of them: find the images, seed, build the
model, SGD (momentum 0.9) with a cosine learning rate, tqdm progress, atomic save of the checkpoint
and a JSON log (config, per-epoch losses and metrics, seconds) beside it. On CPU with
``num_workers=0`` a run is deterministic for a seed.

Every method registers its ``pretrain_<method>`` function in :data:`PRETRAINERS` under the name of the
checkpoint format it writes, so ``import_checkpoint(name, out, ...)`` imports what ``PRETRAINERS.get(name)``
wrote.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mtwork.io import save_torch, write_json
from mtwork.pretrain.images import MultiViewImages, Transform, find_images
from mtwork.registry import Registry
from mtwork.runtime import seed_everything

PRETRAINERS = Registry("pretraining method")

# DistributedDataParallel's key prefix: upstream checkpoints are saved from the DDP-wrapped model.
DDP_PREFIX = "module."
# SGD momentum of every method here (upstream MoCo, DenseCL, DINO-ResNet; SimCLR and BYOL use LARS).
SGD_MOMENTUM = 0.9


# --------------------------------------------------------------------------- the method interface


class SSLModel(nn.Module):
    """What :func:`run_pretraining` needs from a method. Subclasses implement :meth:`training_step`.

    ``lr_per_iteration``: False sets the cosine rate once per epoch (MoCo's and OpenSelfSup's
    ``CosineAnnealing`` by epoch), True every step (SimCLR, BYOL, DINO), with optional linear warmup.
    """

    lr_per_iteration: bool = True

    def training_step(self, views: Sequence[torch.Tensor], epoch: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Views (one (B,3,H,W) batch per augmentation) -> scalar loss and per-step metrics (floats)."""
        raise NotImplementedError

    def param_groups(self) -> List[Dict[str, Any]]:
        """Optimizer parameter groups; groups without ``weight_decay`` get the run's."""
        return [{"params": list(self.parameters())}]

    def before_optimizer_step(self, epoch: int) -> None:
        """After backward, before the update (gradient clipping, frozen layers)."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """After the update; ``step`` counts from 0 over the whole run (EMA targets)."""

    def summary(self) -> Dict[str, Any]:
        """JSON-ready state to report after the run (queue pointers, EMA steps)."""
        return {}


def no_decay_groups(module: nn.Module) -> List[Dict[str, Any]]:
    """Trainable parameters split as DINO's ``get_params_groups`` and LARS's exclusions do: biases and
    1-D (norm) parameters without weight decay, the rest with the run's."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.ndim == 1 else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------- model pieces


def create_resnet(arch: str, num_classes: int = 0) -> nn.Module:
    """timm ``arch`` (random init), ``num_classes=0`` giving pooled features (B, C) and no ``fc`` keys.

    Only ResNet-style models (torchvision key names, classifier ``fc``) fit the upstream layouts.
    """
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    if not hasattr(model, "fc") or not hasattr(model, "layer4"):
        raise ValueError(
            f"the upstream self-supervised checkpoint layouts need a ResNet-style model (stages 'layer1..4', "
            f"classifier 'fc'); timm '{arch}' has classifier '{model.default_cfg.get('classifier', '?')}'"
        )
    return model


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- m * target + (1 - m) * online, parameters only (BN buffers are the target's own)."""
    for param_t, param_o in zip(target.parameters(), online.parameters()):
        param_t.mul_(momentum).add_(param_o.detach(), alpha=1.0 - momentum)


def cosine_ramp(base: float, final: float, step: int, total: int) -> float:
    """``final + (base - final) * (1 + cos(pi * step / total)) / 2``: ``base`` at step 0, ``final`` at
    ``total`` (BYOL's target momentum, DINO's ``cosine_scheduler``)."""
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """MoCo's ``adjust_learning_rate`` with ``--cos``: set once per epoch, epoch counted from 0."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def forward_in_chunks(fn: Callable, images: torch.Tensor, splits: int):
    """``fn`` on ``splits`` equal chunks, outputs concatenated (a tuple output per part).

    One forward per simulated GPU, so every chunk has its own BatchNorm statistics.
    """
    outputs = [fn(chunk) for chunk in images.chunk(splits)]
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


def forward_shuffled(fn: Callable, images: torch.Tensor, splits: int):
    """MoCo's shuffling BN (``_batch_shuffle_ddp``/``_batch_unshuffle_ddp``) on one device.

    Per-GPU BatchNorm lets a query and its positive key share batch statistics, which the contrastive
    task can exploit; upstream shuffles the keys across GPUs. Here the batch is split into ``splits``
    chunks (the "GPUs"), each forwarded separately, with the samples shuffled across chunks before and
    unshuffled after. ``splits=1``: one forward over the batch.
    """
    if splits <= 1:
        return fn(images)
    shuffle = torch.randperm(images.shape[0])
    unshuffle = torch.argsort(shuffle)
    out = forward_in_chunks(fn, images[shuffle], splits)
    if isinstance(out, tuple):
        return tuple(part[unshuffle] for part in out)
    return out[unshuffle]


def check_bn_splits(batch_size: int, bn_splits: int) -> None:
    if batch_size % bn_splits or batch_size // bn_splits < 2:
        raise ValueError(
            f"batch_size={batch_size} must split into bn_splits={bn_splits} chunks of at least 2 images "
            "(BatchNorm needs 2 samples)"
        )


def check_queue(queue_size: int, batch_size: int) -> None:
    if queue_size % batch_size:
        raise ValueError(f"queue_size={queue_size} must be a multiple of batch_size={batch_size} (upstream assumption)")


def prefixed(prefix: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``{prefix + key: detached copy}``: checkpoint entries that share no storage with the live model."""
    return {prefix + key: value.detach().clone() for key, value in state.items()}


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class LoopSettings:
    """The settings every method's run shares (``lr``: the SGD base rate as given, not batch-scaled)."""

    epochs: int
    batch_size: int
    crop: int
    lr: float
    weight_decay: float
    seed: int = 0
    num_threads: Optional[int] = None
    progress: bool = True
    num_workers: int = 0
    warmup_epochs: float = 0.0


def lr_at(settings: LoopSettings, per_iteration: bool, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Cosine learning rate to 0; per iteration (after a linear warmup) or once per epoch."""
    if not per_iteration:
        return cosine_lr(settings.lr, epoch, settings.epochs)
    total = settings.epochs * steps_per_epoch
    warmup = min(int(round(settings.warmup_epochs * steps_per_epoch)), total)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    return cosine_ramp(settings.lr, 0.0, step - warmup, total - warmup)


def build_optimizer(model: SSLModel, settings: LoopSettings) -> torch.optim.SGD:
    return torch.optim.SGD(model.param_groups(), lr=settings.lr, momentum=SGD_MOMENTUM,
                           weight_decay=settings.weight_decay)


def train_step(
    name: str, model: SSLModel, optimizer: torch.optim.Optimizer, views: Sequence[torch.Tensor],
    epoch: int, step: int, total_steps: int,
) -> Tuple[float, Dict[str, float]]:
    """One optimisation step with the method's hooks; raises on a non-finite loss. Returns (loss, metrics)."""
    loss, metrics = model.training_step(views, epoch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{name} loss is {loss.item()} at epoch {epoch} step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    model.before_optimizer_step(epoch)
    optimizer.step()
    model.after_optimizer_step(step, total_steps)
    return loss.item(), metrics


def run_pretraining(
    name: str,
    image_dirs: Sequence[str | Path],
    out: str | Path,
    settings: LoopSettings,
    views: Sequence[Transform],
    build_model: Callable[[], SSLModel],
    write_checkpoint: Callable[[SSLModel, torch.optim.Optimizer, Dict[str, Any]], Dict[str, Any]],
    config: Dict[str, Any],
) -> Dict[str, Any]:
    """Train ``build_model()`` on ``views`` of every JPEG under ``image_dirs``; save and log it.

    ``write_checkpoint(model, optimizer, history)`` returns the upstream-layout dict saved at ``out``;
    ``config`` (method settings, JSON-ready) is logged with ``settings`` in ``out.with_suffix(".json")``.
    Both files are written atomically, only after training succeeded. Returns ``{"losses", <metric>
    per epoch ..., "images_seen", "iterations", "seconds", "epoch_seconds", "num_images", **summary}``.
    """
    out = Path(out)
    files = find_images(image_dirs)
    if len(files) < settings.batch_size:
        raise ValueError(
            f"{name} needs at least batch_size={settings.batch_size} images, found {len(files)} under "
            f"{[str(d) for d in image_dirs]}"
        )
    if settings.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {settings.epochs}")
    previous_threads = torch.get_num_threads()
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    try:
        generator = seed_everything(settings.seed)
        model = build_model()
        optimizer = build_optimizer(model, settings)
        loader = DataLoader(
            MultiViewImages(files, views),
            batch_size=settings.batch_size,
            shuffle=True,
            drop_last=True,  # full batches: queues stay a whole number of batches, BN never sees 1 sample
            num_workers=settings.num_workers,
            generator=generator,
        )
        history = _train(name, model, optimizer, loader, settings)
    finally:
        torch.set_num_threads(previous_threads)

    save_torch(out, write_checkpoint(model, optimizer, history))
    result = {**history, "num_images": len(files), **model.summary()}
    full_config = {"method": name, **asdict(settings), **config, "image_dirs": [str(d) for d in image_dirs]}
    write_json(out.with_suffix(".json"), {"checkpoint": str(out), "config": full_config, **result})
    return result


def _train(name: str, model: SSLModel, optimizer, loader: DataLoader, settings: LoopSettings) -> Dict[str, Any]:
    model.train()
    steps_per_epoch = len(loader)
    total_steps = settings.epochs * steps_per_epoch
    history: Dict[str, List[float]] = {"losses": []}
    epoch_seconds: List[float] = []
    seen = step = 0
    start = time.perf_counter()
    for epoch in range(settings.epochs):
        epoch_start = time.perf_counter()
        sums: Dict[str, float] = {}
        count = 0
        bar = tqdm(loader, desc=f"{name} epoch {epoch + 1}/{settings.epochs}", unit="batch",
                   disable=not settings.progress)
        for views in bar:
            lr = lr_at(settings, model.lr_per_iteration, epoch, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, metrics = train_step(name, model, optimizer, list(views), epoch, step, total_steps)
            for key, value in {"losses": loss, **metrics}.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            step += 1
            seen += views[0].shape[0]
            bar.set_postfix(loss=f"{sums['losses'] / count:.3f}", refresh=False)
        for key, total in sums.items():
            history.setdefault(key, []).append(total / count)
        epoch_seconds.append(round(time.perf_counter() - epoch_start, 2))
    return {
        **history,
        "images_seen": seen,
        "iterations": step,
        "seconds": round(time.perf_counter() - start, 2),
        "epoch_seconds": epoch_seconds,
    }
