"""Source 1's line of work for the training engine: model, data, losses and final files of one run.

The loop itself (stages, schedule, AMP, DDP, checkpoints, resume, guards) is ``mtwork.engine``; see
docs/training.md. Files written into the run directory (``models/runs/<run>/``):
    epoch_NNN.pt   full training state after each epoch (``mtwork.engine.checkpoint``; the last two are
                   kept while training, to resume; removed once final.pt is written unless
                   train.keep_epoch_checkpoints: with optimizer state they are ~3x the model, and a
                   default run has ~100 runs)
    adapt.pt       after the adapt stage: only what that stage trained (adapters, neck, heads)
    final.pt       {"run", "model_config", "state_dict", "params_hash"}: the trained model
    log.json       run spec, per-epoch losses/lr/seconds, train time, parameter counts
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch

from mtwork.engine.recipe import FitSettings, Recipe, StepContext
from mtwork.io import save_torch
from mtwork.plan import RunSpec, parse_run_id
from mtwork.runtime import params_hash, resolve_device, seed_everything, set_threads

# train settings that change how a run executes, not its result (left out of the run's hash);
# `workers` among them: each sample's augmentation has its own seeded generator (mtwork.engine.sampler),
# and tests/integration/test_engine_resume.py shows workers 0 and 2 give bitwise the same weights
EXECUTION_KEYS = ("workers", "threads", "keep_epoch_checkpoints", "log_steps")


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
    """Hash of exactly what shapes this run's result (so a resume never mixes two settings): the
    settings its training job reads (``mtwork.workflow.job_param_keys``, the same keys that rerun it in
    Snakemake; execution settings such as EXECUTION_KEYS are not among them) and its checkpoint entry."""
    from mtwork.workflow import run_settings

    return params_hash({"run": run.id, "settings": run_settings(params, run),
                        "checkpoint": params["checkpoints"]["catalog"].get(run.source)})


def trainable_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Everything but the backbone: what the adapt stage trains (adapter checkpoints stay small)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}


class Source1Recipe(Recipe):
    """One source-1 run (``SOURCE__PARADIGM__TASKS__sSEED``): the multi-task model of
    ``mtwork.models.multitask`` on the run's converted backbone, the BDD100K-layout train split, the
    weighted sum of task losses (+ the LV-Adapter's alignment term), stages from the paradigm."""

    def __init__(self, params: Mapping[str, Any], run: RunSpec, data_root: str | Path, checkpoint: str | Path,
                 domain: str | None = None):
        from mtwork.data.batch import collate
        from mtwork.data.bdd100k import DatasetError
        from mtwork.data.registry import open_domain
        from mtwork.data.transforms import TrainTransform
        from mtwork.models.multitask import build_multitask_model

        tp = params["train"]
        self.run, self.run_id, self.checkpoint = run, run.id, str(checkpoint)
        self.task_names = list(run.tasks)
        self.params_hash = run_params_hash(params, run)
        stages = run.stages(tp["epochs"], tp["adapt_epochs"])
        self.settings = FitSettings.from_params(tp, tp, stages, run.seed)
        seed_everything(run.seed)  # the heads' initialisation
        self.config = model_config(params, run)
        self.model = build_multitask_model(weights=checkpoint, **self.config)
        self.tasks = self.model.tasks
        self.loss_weights = {t: float(tp["loss_weights"][t]) for t in run.tasks}
        self.dataset = open_domain(params, domain or params["data"]["source_domain"], "train", run.tasks, root=data_root)
        if len(self.dataset) == 0:
            raise DatasetError(f"{data_root}: the train split has no images labeled for {', '.join(run.tasks)}")
        # the image's resize, crop and flip run on the training device, not in the loader workers
        # (the same pixels on the CPU; docs/benchmarks.md, "Loader")
        self.transform = TrainTransform(tuple(tp["input_size"]), render_on_device=True)
        self.collate = collate

    def log_header(self) -> Dict[str, Any]:
        trainable_by_stage: Dict[str, int] = {}
        for stage, _ in self.settings.stages:
            self.model.set_stage(stage)
            trainable_by_stage[stage] = self.model.count_parameters(trainable_only=True)
        run = self.run
        return {
            "run": run.id, "source": run.source, "paradigm": run.paradigm, "method": run.method,
            "tasks": list(run.tasks), "seed": run.seed, "params_hash": self.params_hash,
            "model_config": self.config, "stages": [{"stage": s, "epochs": n} for s, n in self.settings.stages],
            "total_params": self.model.count_parameters(trainable_only=False), "trainable_params": trainable_by_stage,
        }

    def set_stage(self, stage: str) -> None:
        self.model.set_stage(stage)

    def losses(self, outputs: Any, batch: Mapping[str, Any], ctx: StepContext):
        from mtwork.models.multitask import multitask_loss

        aux: Dict[str, float] = {}
        total, values = multitask_loss(self.tasks, outputs, batch, self.loss_weights, aux_values=aux, present=ctx.present)
        return total, {**values, **aux}

    def end_stage(self, stage: str, out_dir: Path) -> None:
        if stage == "adapt":
            save_torch(Path(out_dir) / "adapt.pt", {"run": self.run_id, "model_config": self.config,
                                                    "backbone_checkpoint": self.checkpoint,
                                                    "state_dict": trainable_state(self.model)})

    def finish(self, log: Dict[str, Any], out_dir: Path) -> None:
        save_torch(Path(out_dir) / "final.pt", {"run": self.run_id, "model_config": self.config,
                                                "params_hash": self.params_hash, "state_dict": self.model.state_dict()})


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
    from mtwork.engine.loop import fit

    set_threads(params["train"]["threads"])
    recipe = Source1Recipe(params, parse_run_id(run_id), data_root, checkpoint, domain)
    return fit(recipe, out_dir, resolve_device(params["train"]["device"]))


__all__: List[str] = ["EXECUTION_KEYS", "Source1Recipe", "model_config", "run_params_hash", "task_kwargs",
                      "train_run", "trainable_state"]
