"""The one fit loop of both lines of work (``fit(recipe, out_dir, device)``).

Per run: join the process group when launched as several processes (``distributed``), move the model
to its device (channels-last, SyncBatchNorm, DDP, ``torch.compile`` when asked), build AdamW with its
parameter groups and the per-stage schedule (``optim``), resume from the newest usable epoch file
(``checkpoint``), then for every epoch of every stage:

* the data of ``sampler.GlobalBatchSampler`` (world-size invariant order, per-sample augmentation
  seeds), ``accum_steps`` micro-batches per optimizer step (DDP synchronises only on the last);
* per micro-batch: the tasks labeled on *any* process, the forward under autocast, the recipe's
  losses (normalised by global counts), one reduction of the logged values over processes, the
  **non-finite guard** (a NaN or infinite loss stops the run with ``NonFiniteLossError`` naming the
  run, the loss term, the epoch and the step, before anything is written), backward (fp16: scaled);
* per optimizer step: gradients of parameters outside the model averaged (DDP), the optimizer step
  (fp16: unscaled, skipped on overflow), the schedule's step;
* per epoch: the log entry, the recipe's epoch hook, rank 0's epoch checkpoint (the last two kept).
After the last epoch rank 0 writes the recipe's final files and log.json, and removes the epoch files
unless ``keep_epoch_checkpoints``.

In one process nothing here adds work per step: every reduction is skipped, and the logged values
are read with one host synchronisation per micro-batch, as the loops before this one did.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from tqdm import tqdm

from mtwork import __version__
from mtwork.engine import checkpoint as ckpt
from mtwork.engine import distributed as dist
from mtwork.engine.optim import build_optimizer
from mtwork.engine.precision import Precision
from mtwork.engine.recipe import Recipe, StepContext
from mtwork.engine.sampler import GlobalBatchSampler, SeededSamples, train_loader
from mtwork.errors import UserError
from mtwork.io import save_torch, write_json

KEEP_EPOCH_CHECKPOINTS = 2
#: Test-only: seconds to sleep before every micro-batch, so a test can kill a run mid-epoch reliably.
STEP_DELAY_ENV = "MTWORK_TEST_STEP_DELAY"


class NonFiniteLossError(UserError, RuntimeError):
    """A loss became NaN or infinite: the run stops and writes nothing final (the message says where)."""


class TrainingSetupError(UserError, ValueError):
    """Settings that cannot run here (e.g. SyncBatchNorm on CPU); the message names the key."""


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every plain ``nn.BatchNorm1d/2d/3d`` (exact type) by ``nn.SyncBatchNorm`` with the same
    state. Subclasses (e.g. LoRA's and the adapt stage's eval-locked norms) are left alone: their
    statistics are frozen, so there is nothing to synchronise."""
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if type(module) in plain:
        sync = nn.SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        sync.load_state_dict(module.state_dict())
        sync.train(module.training)
        for p_new, p_old in zip(sync.parameters(), module.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return sync
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _wrap(model: nn.Module, device: torch.device, compile_model: bool):
    """(the module the steps call, the DDP wrapper or None): DDP under several processes (rebuilt per
    stage, since DDP registers only the parameters that require grad when it is made), compiled when
    asked."""
    module: nn.Module = model
    ddp = None
    if dist.world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: a batch may hold no label of a task on any process (its head gets no
        # gradient), and the LV-Adapter's alignment temperatures only count with their task
        ddp = module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=True)
    if compile_model:
        module = torch.compile(module)
    return module, ddp


def _average_gradients(params: List[nn.Parameter]) -> None:
    """Mean of the gradients over processes (for parameters DDP does not manage)."""
    for p in params:
        if p.grad is not None:
            p.grad.copy_(dist.all_reduce_mean(p.grad))


def _finite_or_raise(run_id: str, names: List[str], values: List[float], epoch: int, step_in_epoch: int,
                     steps_per_epoch: int) -> None:
    bad = [(n, v) for n, v in zip(names, values) if not math.isfinite(v)]
    if not bad:
        return
    # name the task term, not the total that a task's NaN made NaN too
    culprit = next(((n, v) for n, v in bad if n != "total"), bad[0])
    raise NonFiniteLossError(
        f"run {run_id}: non-finite loss ({culprit[1]}) in '{culprit[0]}' at epoch {epoch + 1}, step "
        f"{step_in_epoch + 1}/{steps_per_epoch}; training stopped, no final.pt written "
        f"(all non-finite terms: {', '.join(n for n, _ in bad)}). Lower the learning rate, or check the data.")


def fit(recipe: Recipe, out_dir: str | Path, device: torch.device) -> Dict[str, Any]:
    """Train ``recipe``'s model into ``out_dir`` (module docstring); returns the run's log."""
    out_dir = Path(out_dir)
    env = dist.env_from()
    owns_group = env.distributed and not torch.distributed.is_initialized()
    device = dist.init(env, device)
    try:
        return _fit(recipe, out_dir, device, env)
    finally:
        if owns_group:
            dist.shutdown()


def _fit(recipe: Recipe, out_dir: Path, device: torch.device, env: dist.DistEnv) -> Dict[str, Any]:
    s = recipe.settings
    main = dist.is_main()
    world = dist.world_size()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if s.sync_bn and world > 1:
        if device.type != "cuda":
            raise TrainingSetupError("train.sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU); "
                                     "set train.sync_bn: false, or train on GPUs")
        convert_sync_batchnorm(recipe.model)
    model = recipe.model.to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    recipe.to(device)

    sampler = GlobalBatchSampler(len(recipe.dataset), s.batch_size, s.seed, dist.rank(), world, s.accum_steps)
    loader = train_loader(SeededSamples(recipe.dataset, recipe.transform, s.seed), sampler, recipe.collate,
                          s.workers, pin_memory=device.type == "cuda", seed=s.seed)
    steps_per_epoch = sampler.steps_per_epoch
    micro_per_epoch = len(sampler)
    epoch_stages = s.epoch_stages
    stage_steps = [(stage, n * steps_per_epoch) for stage, n in s.stages]
    warmup_steps = int(round(s.warmup_epochs * steps_per_epoch))
    extra = recipe.extra_parameters()
    optimizer, scheduler, _ = build_optimizer(model, s.lr, s.weight_decay, stage_steps, warmup_steps, extra)
    precision = Precision(s.amp, device)

    log: Dict[str, Any] = dict(recipe.log_header())
    log.update({
        "train_images": len(recipe.dataset), "labeled_images": recipe.dataset.labeled_counts(),
        "steps_per_epoch": steps_per_epoch, "device": str(device), "world_size": world,
        "batch_size": s.batch_size, "accum_steps": s.accum_steps, "amp": precision.mode,
        "torch": torch.__version__, "mtwork": __version__, "epochs": [],
    })

    start_epoch, step = 0, 0
    point = ckpt.find_resume(out_dir, recipe.params_hash) if main else None
    resume_name = dist.broadcast_object(point.path.name if point is not None and point.path else None)
    if main:
        for name, why in point.damaged:
            print(f"[mtwork train] {recipe.run_id}: {name} is damaged ({why}); trying the epoch file before it",
                  flush=True)
        if point.stale:
            for name in point.stale:  # written under other parameters: never resume from them
                (out_dir / name).unlink(missing_ok=True)
            print(f"[mtwork train] {recipe.run_id}: removed epoch files written under other parameters "
                  f"({', '.join(point.stale)})", flush=True)
    if resume_name is not None:
        state = point.state if main else ckpt.load(out_dir / resume_name)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        precision.load_state_dict(state.get("scaler"))
        recipe.load_state_dict(state.get("recipe") or {})
        ckpt.set_rng_state(state["rng"])
        log["epochs"] = list(state["log_epochs"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        log["resumed"] = {"from": resume_name, "epochs_done": start_epoch,
                          "damaged": [name for name, _ in point.damaged] if main else []}
        if main:
            print(f"[mtwork train] {recipe.run_id}: resuming after epoch {start_epoch} from {resume_name}", flush=True)
        del state
    elif main and point.damaged:
        log["resumed"] = {"from": None, "epochs_done": 0, "damaged": [name for name, _ in point.damaged]}

    delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
    reducer = dist.mean_reducer()
    current_stage: Optional[str] = None
    module: nn.Module = model
    ddp = None
    for epoch in range(start_epoch, len(epoch_stages)):
        stage = epoch_stages[epoch]
        if stage != current_stage:
            recipe.set_stage(stage)
            module, ddp = _wrap(model, device, s.compile)
            current_stage = stage
        model.train()
        sampler.set_epoch(epoch)
        sums: Dict[str, float] = {}
        counts: Dict[str, int] = {}
        total_sum = 0.0
        step_log: List[Dict[str, float]] = []
        accumulated = False
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{recipe.run_id} ep {epoch + 1}/{len(epoch_stages)} [{stage}]", leave=False,
                   dynamic_ncols=True, disable=not main)
        for i, batch in enumerate(bar):
            if delay:
                time.sleep(delay)
            micro = i % s.accum_steps
            last_micro = micro == s.accum_steps - 1 or i == micro_per_epoch - 1
            batch = _to_device(batch, device, s.channels_last)
            flags = [bool(batch["labeled"][t].any()) for t in recipe.task_names]
            present = [t for t, f in zip(recipe.task_names, dist.present_anywhere(flags, device)) if f]
            if present:
                ctx = StepContext(step=step, epoch=epoch, first_micro=micro == 0, present=present, all_reduce=reducer)
                # DDP all-reduces gradients in the backward of a step's last micro-batch only
                with contextlib.nullcontext() if last_micro or ddp is None else ddp.no_sync():
                    with precision.autocast():
                        outputs = recipe.forward(module, batch["image"])
                        total, parts = recipe.losses(outputs, batch, ctx)
                    names = ["total", *parts]
                    values = _read_values(total, parts, device)
                    _finite_or_raise(recipe.run_id, names, values, epoch, i // s.accum_steps, steps_per_epoch)
                    precision.backward(total / s.accum_steps if s.accum_steps > 1 else total)
                accumulated = True
                total_sum += values[0]
                for name, value in zip(names[1:], values[1:]):
                    sums[name] = sums.get(name, 0.0) + value
                    counts[name] = counts.get(name, 0) + 1
                if s.log_steps:
                    step_log.append({n: v for n, v in zip(names, values)})
                bar.set_postfix(loss=f"{values[0]:.3f}", refresh=False)
            if last_micro:
                if accumulated:
                    if world > 1 and not present:
                        # the step's last micro-batch had nothing to learn from on any process, so DDP
                        # did not synchronise the gradients of the earlier ones: average them here
                        _average_gradients([p for p in model.parameters() if p.requires_grad])
                    if world > 1 and extra:
                        _average_gradients(extra)
                    precision.step(optimizer)
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                accumulated = False
        seconds = time.perf_counter() - t0
        task_means = {t: (sums[t] / counts[t] if counts.get(t) else None) for t in recipe.task_names}
        entry: Dict[str, Any] = {
            "epoch": epoch + 1, "stage": stage, "loss": total_sum / max(1, micro_per_epoch),
            "task_loss": task_means, "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
        }
        aux = {n: sums[n] / counts[n] for n in sums if n not in recipe.task_names}
        if aux:
            entry["aux_loss"] = aux
        entry.update(recipe.end_epoch(epoch, stage, task_means))
        if s.log_steps:
            entry["steps"] = step_log
        log["epochs"].append(entry)
        if main:
            print(f"[mtwork train] {recipe.run_id} epoch {epoch + 1}/{len(epoch_stages)} [{stage}] "
                  f"loss {entry['loss']:.4f} ({seconds:.1f} s)", flush=True)
            if epoch + 1 == len(epoch_stages) or epoch_stages[epoch + 1] != stage:
                recipe.end_stage(stage, out_dir)
            save_torch(ckpt.epoch_file(out_dir, epoch + 1), {
                "format": ckpt.CHECKPOINT_FORMAT, "epoch": epoch + 1, "step": step,
                "params_hash": recipe.params_hash, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": precision.state_dict(), "recipe": recipe.state_dict(), "rng": ckpt.rng_state(),
                "data": {"seed": s.seed, "epoch": epoch + 1}, "log_epochs": log["epochs"],
            })
            ckpt.prune(out_dir, KEEP_EPOCH_CHECKPOINTS)

    log["train_seconds"] = sum(e["seconds"] for e in log["epochs"])
    log["stage_seconds"] = {st: sum(e["seconds"] for e in log["epochs"] if e["stage"] == st) for st, _ in s.stages}
    if main:
        recipe.finish(log, out_dir)
        write_json(out_dir / "log.json", log)
        if not s.keep_epoch_checkpoints:
            ckpt.prune(out_dir, 0)  # the run is complete: nothing left to resume
    dist.barrier()
    return log


def _to_device(batch: Dict[str, Any], device: torch.device, channels_last: bool) -> Dict[str, Any]:
    from mtwork.data.batch import batch_to_device

    batch = batch_to_device(batch, device)
    if channels_last:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    return batch


def _read_values(total: torch.Tensor, parts: Dict[str, Any], device: torch.device) -> List[float]:
    """[total, *parts] as floats, averaged over processes under DDP (the global batch's losses, since
    every loss is normalised by global counts); one host synchronisation."""
    items = [total.detach().float()] + [
        v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for v in parts.values()]
    if dist.world_size() == 1 and all(isinstance(v, float) for v in parts.values()):
        return [float(items[0])] + [float(v) for v in parts.values()]
    vector = torch.stack([t.to(device) for t in items])
    return [float(v) for v in dist.all_reduce_mean(vector).tolist()]
