"""The training loop for one run: stages (adapt, finetune), AdamW with warmup + cosine, bf16 autocast on
GPU, a checkpoint per epoch with resume, a progress bar, and a JSON log.

Files written into the run directory (``models/runs/<run>/``):
    epoch_NNN.pt   full training state after each epoch (the last two are kept while training, to resume;
                   removed once final.pt is written unless train.keep_epoch_checkpoints: with optimizer
                   state they are ~3x the model, and a default run has ~100 runs)
    adapt.pt       after the adapt stage: only what that stage trained (adapters, neck, heads)
    final.pt       {"run", "model_config", "state_dict", "params_hash"}: the trained model
    log.json       run spec, per-epoch losses/lr/seconds, train time, parameter counts
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtwork import __version__
from mtwork.io import save_torch, write_json
from mtwork.plan import RunSpec, parse_run_id
from mtwork.runtime import autocast, params_hash, resolve_device, seed_everything, set_threads

KEEP_EPOCH_CHECKPOINTS = 2
# train settings that change how a run executes, not its result (left out of the run's hash)
EXECUTION_KEYS = ("workers", "threads", "keep_epoch_checkpoints")


def model_config(params: Mapping[str, Any], run: RunSpec) -> Dict[str, Any]:
    """The explicit constructor arguments of the run's model (stored with every checkpoint)."""
    from mtwork.plan import lv_text_checkpoint, source_arch

    model = params["model"]
    config: Dict[str, Any] = {
        "arch": source_arch(params, run.source),
        "tasks": list(run.tasks),
        "fpn_channels": model["fpn_channels"],
        "method": run.method,
        "adapter_reduction": model["adapter_reduction"],
        "adapter_placement": run.placement,  # part of the run id (plan.adapter_placements)
        "task_kwargs": {t: kw for t, kw in task_kwargs(params).items() if t in run.tasks},
    }
    if run.method == "lv_adapter":
        lv = model["lv"]
        clip_arch = source_arch(params, lv["clip_source"])
        config["text_encoder_checkpoint"] = str(lv_text_checkpoint(params))
        config["clip_model_name"] = clip_arch.split(":", 1)[1] if clip_arch.startswith("clip:") else None
        config["lv_kwargs"] = {"num_context": lv["num_context"], "align_weight": lv["align_weight"]}
    if run.method == "lora":
        config["lora_kwargs"] = dict(model["lora"])
    return config


def task_kwargs(params: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Task constructor arguments that come from params.yaml, per task."""
    det = params["model"]["det"]
    return {"det": {"score_thresh": det["score_thresh"], "nms_iou": det["nms_iou"], "max_detections": det["max_detections"]}}


def run_params_hash(params: Mapping[str, Any], run: RunSpec) -> str:
    """Hash of everything that shapes this run's result (so a resume never mixes two settings)."""
    return params_hash(
        {
            "run": run.id,
            "data": params["data"],
            "model": params["model"],
            "train": {k: v for k, v in params["train"].items() if k not in EXECUTION_KEYS},
            "checkpoint": params["checkpoints"]["catalog"].get(run.source),
        }
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup from 0 to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _latest_epoch_checkpoint(out_dir: Path) -> Path | None:
    found = sorted(out_dir.glob("epoch_*.pt"))
    return found[-1] if found else None


def _prune_epoch_checkpoints(out_dir: Path) -> None:
    for old in sorted(out_dir.glob("epoch_*.pt"))[:-KEEP_EPOCH_CHECKPOINTS]:
        old.unlink()


def trainable_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Everything but the backbone: what the adapt stage trains (adapter checkpoints stay small)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def train_run(
    params: Mapping[str, Any],
    run_id: str,
    data_root: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
    domain: str | None = None,
) -> Dict[str, Any]:
    """Train one run on ``domain`` (default data.source_domain; its data under ``data_root``) and return
    its log record (also written to ``out_dir/log.json``)."""
    from mtwork.data.batch import batch_to_device, collate
    from mtwork.data.registry import open_domain
    from mtwork.data.transforms import TrainTransform
    from mtwork.models.multitask import build_multitask_model, multitask_loss
    from mtwork.tasks import TASKS

    run = parse_run_id(run_id)
    tp = params["train"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_threads(tp["threads"])
    generator = seed_everything(run.seed)
    device = resolve_device(tp["device"])
    use_amp = bool(tp["amp"])
    p_hash = run_params_hash(params, run)

    config = model_config(params, run)
    model = build_multitask_model(weights=checkpoint, **config).to(device)
    tasks = {name: TASKS.create(name, **config["task_kwargs"].get(name, {})) for name in run.tasks}
    loss_weights = {t: float(tp["loss_weights"][t]) for t in run.tasks}

    dataset = open_domain(params, domain or params["data"]["source_domain"], "train", run.tasks,
                          TrainTransform(tuple(tp["input_size"])), root=data_root)
    if len(dataset) == 0:
        raise ValueError(f"{data_root}: the train split has no images labeled for {', '.join(run.tasks)}")
    loader = DataLoader(
        dataset,
        batch_size=tp["batch_size"],
        shuffle=True,
        drop_last=len(dataset) > tp["batch_size"],
        num_workers=tp["workers"],
        collate_fn=collate,
        generator=generator,
        persistent_workers=tp["workers"] > 0,
    )

    stages = run.stages(tp["epochs"], tp["adapt_epochs"])
    epoch_stage: List[str] = [stage for stage, n in stages for _ in range(n)]
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * len(epoch_stage)
    warmup_steps = int(round(tp["warmup_epochs"] * steps_per_epoch))

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters()], lr=tp["lr"], weight_decay=tp["weight_decay"]
    )  # frozen parameters get no gradient, so AdamW leaves them untouched during the adapt stage
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps))

    trainable_by_stage: Dict[str, int] = {}
    for stage, _ in stages:
        model.set_stage(stage)
        trainable_by_stage[stage] = model.count_parameters(trainable_only=True)
    log: Dict[str, Any] = {
        "run": run.id,
        "source": run.source,
        "paradigm": run.paradigm,
        "method": run.method,
        "tasks": list(run.tasks),
        "seed": run.seed,
        "params_hash": p_hash,
        "model_config": config,
        "stages": [{"stage": s, "epochs": n} for s, n in stages],
        "total_params": model.count_parameters(trainable_only=False),
        "trainable_params": trainable_by_stage,
        "train_images": len(dataset),
        "labeled_images": dataset.labeled_counts(),
        "steps_per_epoch": steps_per_epoch,
        "device": str(device),
        "torch": torch.__version__,
        "mtwork": __version__,
        "epochs": [],
    }

    start_epoch = 0
    resume = _latest_epoch_checkpoint(out_dir)
    if resume is not None:
        state = torch.load(resume, map_location=device, weights_only=False)
        if state.get("params_hash") == p_hash:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            log["epochs"] = state["log_epochs"]
            start_epoch = state["epoch"] + 1
            print(f"[mtwork train] {run.id}: resuming after epoch {start_epoch} from {resume.name}")
        else:
            for stale in out_dir.glob("epoch_*.pt"):
                stale.unlink()  # written under other parameters: never resume from them

    for epoch in range(start_epoch, len(epoch_stage)):
        stage = epoch_stage[epoch]
        model.set_stage(stage)
        model.train()
        sums: Dict[str, float] = {t: 0.0 for t in run.tasks}
        counts: Dict[str, int] = {t: 0 for t in run.tasks}
        total_sum = 0.0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{run.id} ep {epoch + 1}/{len(epoch_stage)} [{stage}]", leave=False, dynamic_ncols=True)
        for batch in bar:
            batch = batch_to_device(batch, device)
            with autocast(device, use_amp):
                outputs = model(batch["image"])
                total, parts = multitask_loss(tasks, outputs, batch, loss_weights)
            if not total.requires_grad:
                continue  # no sample of this batch carries a label of the run's tasks
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            total_sum += float(total.detach())
            for task, value in parts.items():
                sums[task] += float(value)
                counts[task] += 1
            bar.set_postfix(loss=f"{float(total.detach()):.3f}", refresh=False)
        seconds = time.perf_counter() - t0
        entry = {
            "epoch": epoch + 1,
            "stage": stage,
            "loss": total_sum / max(1, steps_per_epoch),
            "task_loss": {t: (sums[t] / counts[t] if counts[t] else None) for t in run.tasks},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
        }
        log["epochs"].append(entry)
        print(
            f"[mtwork train] {run.id} epoch {epoch + 1}/{len(epoch_stage)} [{stage}] "
            f"loss {entry['loss']:.4f} ({seconds:.1f} s)",
            flush=True,
        )
        if stage == "adapt" and (epoch + 1 == len(epoch_stage) or epoch_stage[epoch + 1] != "adapt"):
            save_torch(
                out_dir / "adapt.pt",
                {"run": run.id, "model_config": config, "backbone_checkpoint": str(checkpoint), "state_dict": trainable_state(model)},
            )
        save_torch(
            out_dir / f"epoch_{epoch + 1:03d}.pt",
            {
                "epoch": epoch,
                "params_hash": p_hash,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "log_epochs": log["epochs"],
            },
        )
        _prune_epoch_checkpoints(out_dir)

    log["train_seconds"] = sum(e["seconds"] for e in log["epochs"])
    log["stage_seconds"] = {s: sum(e["seconds"] for e in log["epochs"] if e["stage"] == s) for s, _ in stages}
    save_torch(out_dir / "final.pt", {"run": run.id, "model_config": config, "params_hash": p_hash, "state_dict": model.state_dict()})
    write_json(out_dir / "log.json", log)
    if not tp["keep_epoch_checkpoints"]:
        for done in out_dir.glob("epoch_*.pt"):  # the run is complete: nothing left to resume
            done.unlink()
    return log
