"""Evaluation of a trained run on a domain's val split, and the multi-task delta_m.

``evaluate_run`` writes one metrics JSON per (run, protocol, domain) — the source domain and, in the
same job, every domain-generalization domain (the model is loaded once):
    {"run", "protocol", "domain", "source", "paradigm", "tasks", "seed", "params_hash",
     "metrics": {task: {metric: value}}, "train": {"seconds", "stage_seconds", "trainable_params",
     "total_params"}, "val_images": {task: n}}
and, for a run with the det task, its detections on those images in Scalabel format (the format
``bdd100k.eval`` and ``mtwork score det`` read: frames {name, labels [{id, category, box2d {x1, y1, x2,
y2} inclusive pixel indices of the on-disk image, score}]}, one frame per evaluated image) at
``predictions_path(out, "det")``: ``<metrics folder>/predictions/<run>.det.scalabel.json`` (a subfolder,
so that readers of ``<metrics folder>/*.json`` see metrics records only).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtwork.engine.precision import autocast
from mtwork.io import atomic_path, nan_to_none, write_json
from mtwork.plan import ADAPTER_METHODS
from mtwork.runtime import resolve_device, set_threads

# delta_m compares one primary metric per task (named in every table caption).
PRIMARY_METRIC = {"semseg": "miou", "drivable": "miou", "det": "map",
                  # source 2's dense tasks (lower is better for all three)
                  "depth": "rmse", "normals": "mean_angle", "edges": "edge_l1"}


def delta_m(
    metrics: Mapping[str, Mapping[str, float]],
    baselines: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool],
    primary: Mapping[str, str] = PRIMARY_METRIC,
) -> float:
    """Maninis et al. (2019): mean over tasks of (-1)^l_t (M_t - M_single,t) / M_single,t, in percent.

    ``metrics[task][metric]`` is the multi-task model's value, ``baselines[task][metric]`` the
    single-task run's; l_t = 1 when lower is better. Tasks absent from either side are an error,
    since a silently shorter mean would not be comparable across rows.
    """
    terms = []
    for task, metric in primary.items():
        if task not in metrics:
            continue
        if task not in baselines:
            raise KeyError(f"delta_m: no single-task baseline for task '{task}'")
        m, b = float(metrics[task][metric]), float(baselines[task][metric])
        if b == 0:
            raise ZeroDivisionError(f"delta_m: single-task baseline of '{task}' {metric} is 0")
        sign = 1.0 if higher_is_better[task] else -1.0
        terms.append(sign * (m - b) / abs(b))
    if not terms:
        raise ValueError("delta_m: no task in common")
    return 100.0 * sum(terms) / len(terms)


def predictions_path(metrics_path: str | Path, task: str) -> Path:
    """Where the predictions of the run whose metrics go to ``metrics_path`` are exported."""
    metrics_path = Path(metrics_path)
    return metrics_path.parent / "predictions" / f"{metrics_path.stem}.{task}.scalabel.json"


def load_trained_model(run_dir: Path, device: torch.device):
    """Rebuild a run's model from final.pt (its stored constructor arguments + weights)."""
    from mtwork.models.multitask import build_multitask_model

    path = Path(run_dir) / "final.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_multitask_model(weights=None, **ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def evaluate_run(
    params: Mapping[str, Any],
    run_dir: str | Path,
    data_root: str | Path,
    out: str | Path,
    protocol: str = "mtl",
    domain: str | None = None,
    dg: Sequence[Tuple[str, str | Path, str | Path]] = (),
) -> Dict[str, Any]:
    """Evaluate a run on ``data_root`` (written to ``out`` under ``protocol``/``domain``), then on every
    ``(domain, data_root, out)`` of ``dg`` (protocol dg: domains the run never trained on).

    The model is loaded once for all of them; returns the first record (the others are on disk).
    """
    run_dir = Path(run_dir)
    set_threads(params["train"]["threads"])
    device = resolve_device(params["train"]["device"])
    model, ckpt = load_trained_model(run_dir, device)
    targets = [(protocol, domain or params["data"]["source_domain"], data_root, out)]
    targets += [("dg", dg_domain, dg_root, dg_out) for dg_domain, dg_root, dg_out in dg]
    records = [_evaluate_on(params, run_dir, model, ckpt, device, *target) for target in targets]
    return records[0]


def _evaluate_on(params, run_dir: Path, model, ckpt, device, protocol: str, domain: str,
                 data_root: str | Path, out: str | Path) -> Dict[str, Any]:
    from mtwork.data.batch import collate
    from mtwork.data.bdd100k import DatasetError, EmptyDomainError
    from mtwork.data.registry import open_domain
    from mtwork.data.transforms import EvalTransform
    from mtwork.tasks import TASKS

    config = ckpt["model_config"]
    tasks = {t: TASKS.create(t, **config["task_kwargs"].get(t, {})) for t in config["tasks"]}
    t0 = time.perf_counter()
    evaluators = {t: task.evaluator() for t, task in tasks.items()}
    unscored = None
    try:
        dataset = open_domain(params, domain, "val", tuple(tasks), EvalTransform(tuple(params["train"]["input_size"])),
                              root=data_root)
    except EmptyDomainError as err:
        # a domain without val labels of the run's tasks (e.g. no rainy image with a segmentation mask):
        # its metrics are undefined (null), and the record says why; the tables show them as missing
        dataset, unscored = None, str(err)
        metrics = {t: {m.name: float("nan") for m in task.metrics} for t, task in tasks.items()}
    if dataset is not None:
        if len(dataset) == 0:
            raise DatasetError(f"{data_root}: the val split has no images labeled for {', '.join(tasks)}")
        loader = eval_loader(dataset, params["evaluate"]["batch_size"], collate, params["train"]["workers"], device)
        metrics = run_evaluators(tasks, loader, model, device, params["train"]["amp"],
                                 desc=f"evaluate {run_dir.name} on {domain}", evaluators=evaluators)
    log_path = run_dir / "log.json"
    log = _read_json(log_path) if log_path.is_file() else {}
    record = {
        "run": ckpt["run"],
        "protocol": protocol,
        "domain": domain,
        "source": log.get("source"),
        "paradigm": log.get("paradigm"),
        "adapter_placement": config.get("adapter_placement") if config.get("method") in ADAPTER_METHODS else None,
        "method": log.get("method"),
        "tasks": config["tasks"],
        "seed": log.get("seed"),
        "params_hash": ckpt.get("params_hash"),
        "metrics": nan_to_none(metrics),  # an undefined metric (nothing to score) is null
        "higher_is_better": {t: {m.name: m.higher_is_better for m in task.metrics} for t, task in tasks.items()},
        "train": {
            "seconds": log.get("train_seconds"),
            "stage_seconds": log.get("stage_seconds"),
            "trainable_params": log.get("trainable_params"),
            "total_params": log.get("total_params"),
        },
        "val_images": dataset.labeled_counts() if dataset is not None else {t: 0 for t in tasks},
        "eval_seconds": time.perf_counter() - t0,
    }
    if unscored:
        record["unscored"] = unscored
    write_json(out, record)
    for t, evaluator in evaluators.items():
        if dataset is not None and hasattr(evaluator, "scalabel_frames"):
            with atomic_path(predictions_path(out, t)) as tmp:  # compact: one val split holds ~1e6 boxes
                tmp.write_text(json.dumps(evaluator.scalabel_frames(), separators=(",", ":")) + "\n")
    summary = "; ".join(f"{t}: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items() if isinstance(v, float) and "/" not in k) for t, m in metrics.items())
    print(f"[mtwork evaluate] {ckpt['run']} ({protocol}, {domain}): {summary}", flush=True)
    return record


def eval_loader(dataset, batch_size: int, collate: Callable, workers: int, device: torch.device) -> DataLoader:
    """The evaluation DataLoader: in order, ``workers`` loader processes (train.workers) that keep the
    memory they free (``mtwork.data.memory``), pinned memory on CUDA so the copies to the GPU overlap
    the forward."""
    from mtwork.data.memory import loader_worker_init

    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers,
                      pin_memory=device.type == "cuda", worker_init_fn=loader_worker_init)


def run_evaluators(tasks: Mapping[str, Any], loader: DataLoader, forward: Callable[[torch.Tensor], Mapping[str, Any]],
                   device: torch.device, amp: str, desc: str,
                   evaluators: Mapping[str, Any] | None = None) -> Dict[str, Dict[str, float]]:
    """Every task's evaluator over ``loader``: ``forward(image (B,3,H,W)) -> {task: outputs}``, run without
    gradients under the autocast of ``amp`` (train.amp, ``mtwork.engine.precision``); each evaluator sees
    its task's outputs in float32 for the batches holding a sample labeled for it.
    Returns {task: {metric: value}}. ``evaluators``: use these ({task: evaluator}, e.g. to export their
    predictions afterwards) instead of new ones."""
    from mtwork.data.batch import batch_to_device

    if evaluators is None:
        evaluators = {t: task.evaluator() for t, task in tasks.items()}
    for evaluator in evaluators.values():
        evaluator.reset()
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
            batch = batch_to_device(batch, device)
            with autocast(device, amp):
                outputs = forward(batch["image"])
            for t, evaluator in evaluators.items():
                if bool(batch["labeled"][t].any()):
                    evaluator.process(_float(outputs[t]), batch)
    return {t: ev.evaluate() for t, ev in evaluators.items()}


def _float(outputs: Any) -> Any:
    """Cast bf16 outputs back to float32 so metrics and decoding run in full precision."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: _float(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_float(v) for v in outputs)
    return outputs


def _read_json(path: Path) -> Dict[str, Any]:
    import json

    return json.loads(path.read_text())
