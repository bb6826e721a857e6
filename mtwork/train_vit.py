"""Training and evaluation of source 2's runs: VTAGML and its baselines on a frozen Swin-V2, dense tasks.

A run (``mtwork.plan.plan_vit_runs``) names the Swin's checkpoint source, a paradigm of
``mtwork.plan.VIT_PARADIGMS`` (which model, TAA/TSN switches, which loss balancer), its tasks and seed.
Settings come from the ``vit`` block of params.yaml (device and AMP from ``train``).

Files written into the run directory (``models/vit/<run>/``):
    final.pt   the adapter file (``VTAGMLModel.save_adapter``): only what the run trained (adapters,
               task embeddings, decoders; the encoder too for full finetuning) plus the backbone's
               arch and the sha256 of its converted checkpoint; loading refuses another backbone
    log.json   run spec, build config, per-epoch losses / task weights / affinity, time per epoch,
               parameter counts, adapter file size

Every step runs the frozen part of the encoder once for all tasks (see ``VTAGMLModel``); TROA's
affinity matrix feeds the task embeddings of TAA/TSN, and its task weights weight the losses.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtwork import __version__
from mtwork.io import sha256_file, write_json
from mtwork.plan import VIT_PARADIGMS, RunSpec, parse_run_id, source_arch
from mtwork.runtime import autocast, params_hash, resolve_device, seed_everything, set_threads
from mtwork.train import lr_factor

# Decoder depth per stage (the paper: 2 Swin blocks per decoder stage).
DECODER_DEPTH = 2


def task_out_channels(task: Any) -> int:
    """Channels of a task's prediction: ``out_channels`` (dense regression) or ``num_classes`` (segmentation)."""
    return int(getattr(task, "out_channels", None) or task.num_classes)


def activate(task: Any, raw: torch.Tensor) -> torch.Tensor:
    """The task's output activation on a decoder's raw map (segmentation keeps its logits)."""
    from mtwork.tasks.depth import ACTIVATIONS

    return ACTIVATIONS[getattr(task, "activation", "identity")](raw)


def vit_model_config(params: Mapping[str, Any], run: RunSpec) -> Dict[str, Any]:
    """Everything needed to rebuild the run's model (stored in log.json)."""
    from mtwork.tasks import TASKS

    vit = params["vit"]
    spec = VIT_PARADIGMS[run.paradigm]
    config: Dict[str, Any] = {
        "arch": source_arch(params, run.source),
        "input_size": list(vit["input_size"]),
        "tasks": {t: task_out_channels(TASKS.create(t)) for t in run.tasks},
        "model": spec["model"],
        "balancer": spec["balancer"],
        "kwargs": {"decoder_depth": DECODER_DEPTH},
    }
    if spec["model"] == "vtagml":
        config["kwargs"].update(task_embed_dim=vit["task_embed_dim"], adapter_reduction=vit["adapter_reduction"],
                                use_taa=spec["use_taa"], use_tsn=spec["use_tsn"],
                                adapted_block_training=vit["adapted_block_training"])
        if vit["adapted_blocks"] is not None:
            config["kwargs"]["adapted_blocks"] = [tuple(b) for b in vit["adapted_blocks"]]
    elif spec["model"] == "multiscale_adapter":
        config["kwargs"].update(adapter_reduction=vit["adapter_reduction"])
    return config


def build_vit_model(config: Mapping[str, Any], checkpoint: str | Path):
    """The run's model on the converted Swin-V2 file ``checkpoint`` (written by import-checkpoint)."""
    from mtwork.methods.vtagml import create_vtagml_model
    from mtwork.models.backbones import BackboneLoadError, load_converted
    from mtwork.models.swin import create_swinv2

    converted = load_converted(checkpoint)
    if converted["arch"] != config["arch"]:
        raise BackboneLoadError(f"{checkpoint}: holds a '{converted['arch']}' backbone, the run needs '{config['arch']}'")
    encoder = create_swinv2(config["arch"].split(":", 1)[1], tuple(config["input_size"]))
    missing, unexpected = encoder.load_state_dict(converted["state_dict"], strict=False)
    if missing or unexpected:
        raise BackboneLoadError(f"{checkpoint}: keys do not fit '{config['arch']}': missing {missing[:5]}, unexpected {unexpected[:5]}")
    baseline = None if config["model"] == "vtagml" else config["model"]
    return create_vtagml_model(encoder, dict(config["tasks"]), baseline=baseline, **config["kwargs"])


def backbone_info(config: Mapping[str, Any], checkpoint: str | Path, source: str) -> Dict[str, Any]:
    """What an adapter file records of its backbone: arch, sha256 of the converted file, source name."""
    return {"arch": config["arch"], "sha256": sha256_file(checkpoint), "source": source, "checkpoint": str(checkpoint)}


def _balancer_kwargs(params: Mapping[str, Any], name: str) -> Dict[str, Any]:
    return dict(params["vit"][name]) if name in ("troa", "troa_global") else {}


def _dataset(params: Mapping[str, Any], data_root: str | Path, split: str, tasks, train: bool, domain: str | None = None):
    from mtwork.data.registry import open_domain
    from mtwork.data.transforms import EvalTransform, TrainTransform

    size = tuple(params["vit"]["input_size"])
    transform = TrainTransform(size) if train else EvalTransform(size)
    dataset = open_domain(params, domain or params["data"]["source_domain"], split, tuple(tasks), transform, root=data_root)
    if len(dataset) == 0:
        raise ValueError(f"{data_root}: the {split} split has no images labeled for {', '.join(tasks)}")
    return dataset


def train_vit_run(params: Mapping[str, Any], run_id: str, data_root: str | Path, checkpoint: str | Path,
                  out_dir: str | Path, domain: str | None = None) -> Dict[str, Any]:
    """Train one source-2 run; returns its log (also written to ``out_dir/log.json``)."""
    from mtwork.data.batch import batch_to_device, collate
    from mtwork.methods.loss_balancing import create_balancer
    from mtwork.tasks import TASKS

    run = parse_run_id(run_id)
    if run.paradigm not in VIT_PARADIGMS:
        raise ValueError(f"run '{run_id}': paradigm '{run.paradigm}' is not one of source 2's ({', '.join(VIT_PARADIGMS)})")
    vit, tp = params["vit"], params["train"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_threads(tp["threads"])
    generator = seed_everything(run.seed)
    device = resolve_device(tp["device"])
    config = vit_model_config(params, run)
    model = build_vit_model(config, checkpoint).to(device)
    tasks = {t: TASKS.create(t) for t in run.tasks}
    weights = {t: float(vit["loss_weights"][t]) for t in run.tasks}
    balancer = create_balancer(config["balancer"], list(run.tasks), **_balancer_kwargs(params, config["balancer"])).to(device)

    dataset = _dataset(params, data_root, "train", run.tasks, train=True, domain=domain)
    loader = DataLoader(dataset, batch_size=vit["batch_size"], shuffle=True, drop_last=len(dataset) > vit["batch_size"],
                        num_workers=tp["workers"], collate_fn=collate, generator=generator)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * vit["epochs"]
    warmup_steps = int(round(vit["warmup_epochs"] * steps_per_epoch))
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": trainable}]
    extra = [p for p in balancer.parameters() if p.requires_grad]
    if extra:  # uncertainty weighting's log-variances: learned, never decayed
        groups.append({"params": extra, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=vit["lr"], weight_decay=vit["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps))
    shared = model.shared_adapter_parameters()

    log: Dict[str, Any] = {
        "run": run.id, "source": run.source, "paradigm": run.paradigm, "method": config["model"],
        "tasks": list(run.tasks), "seed": run.seed,
        "params_hash": params_hash({"run": run.id, "vit": vit, "data": params["data"],
                                    "checkpoint": params["checkpoints"]["catalog"].get(run.source)}),
        "model_config": config, "checkpoint": str(checkpoint),
        "total_params": model.count_parameters(trainable_only=False),
        "trainable_params": {"train": model.count_parameters(trainable_only=True)},
        "parameter_budget": model.parameter_budget(),
        "train_images": len(dataset), "labeled_images": dataset.labeled_counts(), "steps_per_epoch": steps_per_epoch,
        "device": str(device), "torch": torch.__version__, "mtwork": __version__, "epochs": [],
    }
    step = 0
    for epoch in range(vit["epochs"]):
        model.train()
        sums = {t: 0.0 for t in run.tasks}
        counts = {t: 0 for t in run.tasks}
        total_sum = 0.0
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{run.id} ep {epoch + 1}/{vit['epochs']}", leave=False, dynamic_ncols=True)
        for batch in bar:
            batch = batch_to_device(batch, device)
            with autocast(device, bool(tp["amp"])):
                outputs = model(batch["image"], balancer.affinity.to(device))
                losses = {}
                for t, task in tasks.items():
                    labeled = batch["labeled"][t]
                    if bool(labeled.any()):
                        losses[t] = weights[t] * task.loss(activate(task, outputs[t].float()), batch, labeled)
            if not losses:
                continue
            if shared:
                balancer.maybe_update(step, losses, shared)  # TROA: per-task gradients every k steps
            total = balancer.weighted_loss(losses)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            total_sum += float(total.detach())
            for t, value in losses.items():
                sums[t] += float(value.detach())
                counts[t] += 1
            bar.set_postfix(loss=f"{float(total.detach()):.3f}", refresh=False)
        seconds = time.perf_counter() - t0
        means = {t: (sums[t] / counts[t] if counts[t] else None) for t in run.tasks}
        balancer.end_epoch({t: v for t, v in means.items() if v is not None})
        entry = {
            "epoch": epoch + 1, "stage": "train", "loss": total_sum / max(1, steps_per_epoch), "task_loss": means,
            "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
            "task_weights": [float(w) for w in balancer.weights],
            "affinity": balancer.affinity.detach().cpu().tolist(),
            "balancer_updates": len(balancer.history(clear=True)),
        }
        log["epochs"].append(entry)
        print(f"[mtwork train] {run.id} epoch {epoch + 1}/{vit['epochs']} loss {entry['loss']:.4f} "
              f"weights {[round(w, 3) for w in entry['task_weights']]} ({seconds:.1f} s)", flush=True)

    log["train_seconds"] = sum(e["seconds"] for e in log["epochs"])
    log["seconds_per_epoch"] = log["train_seconds"] / max(1, len(log["epochs"]))
    log["stage_seconds"] = {"train": log["train_seconds"]}
    final = out_dir / "final.pt"
    tmp = final.with_name(final.name + ".tmp")
    model.save_adapter(tmp, backbone_info(config, checkpoint, run.source))
    tmp.replace(final)
    log["adapter_bytes"] = final.stat().st_size
    log["balancer_state"] = {"weights": [float(w) for w in balancer.weights], "affinity": balancer.affinity.detach().cpu().tolist()}
    write_json(out_dir / "log.json", log)
    return log


def evaluate_vit_run(params: Mapping[str, Any], run_dir: str | Path, data_root: str | Path, out: str | Path,
                     domain: str | None = None) -> Dict[str, Any]:
    """Evaluate a trained source-2 run on the val split; writes and returns the metrics record."""
    import json

    from mtwork.data.batch import collate
    from mtwork.evaluate import run_evaluators
    from mtwork.tasks import TASKS

    run_dir = Path(run_dir)
    log_path = run_dir / "log.json"
    if not log_path.is_file():
        raise FileNotFoundError(f"no training log at {log_path}")
    log = json.loads(log_path.read_text())
    config = log["model_config"]
    tp = params["train"]
    set_threads(tp["threads"])
    device = resolve_device(tp["device"])
    model = build_vit_model(config, log["checkpoint"])
    model.load_adapter(run_dir / "final.pt", backbone_info(config, log["checkpoint"], log["source"]))
    model = model.to(device).eval()
    tasks = {t: TASKS.create(t) for t in log["tasks"]}
    domain = domain or params["data"]["source_domain"]
    dataset = _dataset(params, data_root, "val", log["tasks"], train=False, domain=domain)
    loader = DataLoader(dataset, batch_size=params["evaluate"]["batch_size"], shuffle=False, collate_fn=collate)
    affinity = torch.tensor(log["balancer_state"]["affinity"], device=device)  # TROA's, as trained

    def forward(image: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {t: activate(tasks[t], raw.float()) for t, raw in model(image, affinity).items()}

    t0 = time.perf_counter()
    metrics = run_evaluators(tasks, loader, forward, device, bool(tp["amp"]), desc=f"evaluate {run_dir.name}")
    record = {
        "run": log["run"], "protocol": "mtl", "domain": domain, "source": log["source"],
        "paradigm": log["paradigm"], "method": log["method"], "tasks": log["tasks"], "seed": log["seed"],
        "params_hash": log["params_hash"], "metrics": metrics,
        "higher_is_better": {t: {m.name: m.higher_is_better for m in task.metrics} for t, task in tasks.items()},
        "train": {"seconds": log["train_seconds"], "seconds_per_epoch": log["seconds_per_epoch"],
                  "trainable_params": log["trainable_params"], "total_params": log["total_params"],
                  "adapter_bytes": log["adapter_bytes"],
                  "adapted_block_training": config["kwargs"].get("adapted_block_training"),
                  "parameter_budget": log.get("parameter_budget")},
        "val_images": dataset.labeled_counts(), "eval_seconds": time.perf_counter() - t0,
    }
    write_json(out, record)
    summary = "; ".join(f"{t}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()) for t, m in metrics.items())
    print(f"[mtwork evaluate] {log['run']}: {summary}", flush=True)
    return record
