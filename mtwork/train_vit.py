"""Training and evaluation of source 2's runs: VTAGML and its baselines on a frozen Swin-V2, dense tasks.

A run (``mtwork.plan.plan_vit_runs``) names the Swin's checkpoint source, a paradigm of
``mtwork.plan.VIT_PARADIGMS`` (which model, TAA/TSN switches, which loss balancer), its tasks and seed.
Settings come from the ``vit`` block of params.yaml (device and AMP from ``train``).

The training loop is ``mtwork.engine`` (docs/training.md); this module says what differs for source 2.
Files written into the run directory (``models/runs/<run>/``):
    epoch_NNN.pt  full training state after each epoch (resume; removed once final.pt is written unless
               train.keep_epoch_checkpoints), as for source 1
    final.pt   the adapter file (``VTAGMLModel.save_adapter``): only what the run trained (adapters,
               task embeddings, decoders; the encoder too for full finetuning) plus the backbone's
               arch and the sha256 of its converted checkpoint; loading refuses another backbone
    log.json   run spec, build config, per-epoch losses / task weights / affinity, time per epoch,
               parameter counts, adapter file size

Every step runs the frozen part of the encoder once for all tasks (see ``VTAGMLModel``); TROA's
affinity matrix feeds the task embeddings of TAA/TSN, and its task weights weight the losses.

A run's protocol (``mtwork.protocols``) picks its recipe: ``VitRecipe`` for the multi-task runs and the
target oracles (on the target domain), ``ZeroShotRecipe`` and ``UdaRecipe`` (``mtwork/protocols/``) for
the transfer runs, which start from their mtl run's final.pt.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch

from mtwork.engine.recipe import FitSettings, Recipe, StepContext
from mtwork.errors import UserError
from mtwork.io import atomic_path, nan_to_none, sha256_file, write_json
from mtwork.plan import PROTOCOL_DG, PROTOCOL_MTL, VIT_PARADIGMS, RunSpec, parse_run_id, source_arch, \
    vit_source_domain
from mtwork.runtime import params_hash, resolve_device, seed_everything, set_threads

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
    vit = params["vit"]
    spec = VIT_PARADIGMS[run.paradigm]
    config: Dict[str, Any] = {
        "arch": source_arch(params, run.source),
        "input_size": list(vit["input_size"]),
        "tasks": {t: task_out_channels(task) for t, task in vit_tasks(vit.get("label_space"), run.tasks).items()},
        "label_space": vit.get("label_space"),
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


def vit_tasks(label_space: str | None, names) -> Dict[str, Any]:
    """{name: task} of source 2's tasks; semseg with the classes of ``label_space`` (a name of
    ``mtwork.data.label_spaces``; None: the readers' own, cityscapes19)."""
    from mtwork.tasks import TASKS

    kwargs: Dict[str, Dict[str, Any]] = {}
    if label_space is not None:
        from mtwork.data.label_spaces import get_label_space

        kwargs["semseg"] = {"classes": get_label_space(label_space).classes}
    return {t: TASKS.create(t, **kwargs.get(t, {})) for t in names}


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


def vit_dataset(params: Mapping[str, Any], data_root: str | Path, split: str, tasks, eval_transform: bool = False,
             domain: str | None = None):
    """The split's reader of ``domain`` (default: source 2's source domain) under ``data_root``, semseg in
    ``vit.label_space``; raw samples for training (the engine applies the seeded train transform), or
    with the evaluation transform."""
    from mtwork.data.bdd100k import DatasetError
    from mtwork.data.registry import open_domain
    from mtwork.data.transforms import EvalTransform

    transform = EvalTransform(tuple(params["vit"]["input_size"])) if eval_transform else None
    space = params["vit"].get("label_space")
    dataset = open_domain(params, domain or vit_source_domain(params), split, tuple(tasks), transform,
                          root=data_root, **({"label_space": space} if space is not None else {}))
    if len(dataset) == 0:
        raise DatasetError(f"{data_root}: the {split} split has no images labeled for {', '.join(tasks)}")
    return dataset


class VitRecipe(Recipe):
    """One source-2 run: a Swin-V2 model of ``VIT_PARADIGMS`` on the converted encoder, the dense tasks'
    losses (``vit.loss_weights``) combined by the paradigm's loss balancer, one ``train`` stage of the
    protocol's epochs (``vit.epochs`` for mtl and oracle runs), on the protocol's training domain
    (``domain`` overrides it: mtl runs train on ``vit.source_domain``, oracles on their target).

    Subclasses (the transfer recipes) change what trains through three hooks: ``train_task_list`` (the
    tasks whose labels the run reads), ``prepare`` (after the model is built: load and freeze weights)
    and ``make_balancer``."""

    def __init__(self, params: Mapping[str, Any], run: RunSpec, data_root: str | Path, checkpoint: str | Path,
                 domain: str | None = None):
        from mtwork.data.batch import collate
        from mtwork.data.transforms import TrainTransform
        from mtwork.protocols import protocol_of

        if run.paradigm not in VIT_PARADIGMS:
            raise UserError(f"run '{run.id}': paradigm '{run.paradigm}' is not one of source 2's ({', '.join(VIT_PARADIGMS)})")
        vit, tp = params["vit"], params["train"]
        self.run, self.run_id, self.checkpoint = run, run.id, str(checkpoint)
        self.protocol = protocol_of(run)
        self.task_names = list(self.train_task_list(params))
        self.settings = FitSettings.from_params(vit, tp, [("train", self.protocol.epochs(params))], run.seed)
        self.params_hash = vit_params_hash(params, run, self.hash_extra())
        seed_everything(run.seed)  # decoders and adapters are initialised here
        self.config = vit_model_config(params, run)
        self.model = build_vit_model(self.config, checkpoint)
        self.tasks = vit_tasks(vit.get("label_space"), run.tasks)
        self.weights = {t: float(vit["loss_weights"][t]) for t in run.tasks}
        self.prepare(params)
        self.balancer = self.make_balancer(params)
        self.domain = domain or self.protocol.train_domains(params, run)[0]
        self.dataset = vit_dataset(params, data_root, "train", self.task_names, domain=self.domain)
        self.transform = TrainTransform(tuple(vit["input_size"]))
        self.collate = collate
        self.shared = self.model.shared_adapter_parameters()

    # -- hooks of the transfer recipes -------------------------------------------------------------
    def train_task_list(self, params: Mapping[str, Any]) -> List[str]:
        """The tasks whose labels the run trains with (the engine's task names)."""
        return list(self.run.tasks)

    def hash_extra(self) -> Dict[str, Any]:
        """What besides the settings a resumable epoch file must match (e.g. the weights a run starts from)."""
        return {}

    def prepare(self, params: Mapping[str, Any]) -> None:
        """After the model is built (seeded): load weights, freeze parts."""

    def make_balancer(self, params: Mapping[str, Any]):
        from mtwork.methods.loss_balancing import create_balancer

        return create_balancer(self.config["balancer"], list(self.run.tasks),
                               **_balancer_kwargs(params, self.config["balancer"]))

    def to(self, device: torch.device) -> None:
        self.balancer.to(device)
        self.device = device

    def log_header(self) -> Dict[str, Any]:
        run = self.run
        return {
            "run": run.id, "source": run.source, "paradigm": run.paradigm, "method": self.config["model"],
            "tasks": list(run.tasks), "seed": run.seed, "params_hash": self.params_hash,
            "protocol": run.protocol, "domain": self.domain, "trained_tasks": list(self.task_names),
            "model_config": self.config, "checkpoint": self.checkpoint,
            "total_params": self.model.count_parameters(trainable_only=False),
            "trainable_params": {"train": self.model.count_parameters(trainable_only=True)},
            "parameter_budget": self.model.parameter_budget(),
        }

    def extra_parameters(self) -> List[torch.nn.Parameter]:
        # uncertainty weighting's log-variances: learned, never decayed, outside the model
        return [p for p in self.balancer.parameters() if p.requires_grad]

    def forward(self, model: Any, image: torch.Tensor) -> Any:
        return model(image, self.balancer.affinity.to(image.device))

    def losses(self, outputs: Any, batch: Mapping[str, Any], ctx: StepContext):
        losses = {t: self.weights[t] * task.loss(activate(task, outputs[t].float()), batch, batch["labeled"][t])
                  for t, task in self.tasks.items() if t in ctx.present}
        if self.shared and ctx.first_micro:  # TROA: per-task gradients every k optimizer steps
            self.balancer.maybe_update(ctx.step, losses, self.shared, all_reduce=ctx.all_reduce)
        return self.balancer.weighted_loss(losses), {t: v.detach() for t, v in losses.items()}

    def end_epoch(self, epoch: int, stage: str, task_means: Mapping[str, Any]) -> Dict[str, Any]:
        self.balancer.end_epoch({t: v for t, v in task_means.items() if v is not None})
        return {"task_weights": [float(w) for w in self.balancer.weights],
                "affinity": self.balancer.affinity.detach().cpu().tolist(),
                "balancer_updates": len(self.balancer.history(clear=True))}

    def state_dict(self) -> Dict[str, Any]:
        return {"balancer": self.balancer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "balancer" in state:
            self.balancer.load_state_dict(state["balancer"])

    def finish(self, log: Dict[str, Any], out_dir: Path) -> None:
        log["seconds_per_epoch"] = log["train_seconds"] / max(1, len(log["epochs"]))
        final = Path(out_dir) / "final.pt"
        with atomic_path(final) as tmp:
            self.model.save_adapter(tmp, backbone_info(self.config, self.checkpoint, self.run.source))
        log["adapter_bytes"] = final.stat().st_size
        log["balancer_state"] = {"weights": [float(w) for w in self.balancer.weights],
                                 "affinity": self.balancer.affinity.detach().cpu().tolist()}


def vit_params_hash(params: Mapping[str, Any], run: RunSpec, extra: Mapping[str, Any] | None = None) -> str:
    """Hash of what shapes a source-2 run: exactly the settings its training job reads
    (``mtwork.workflow.job_param_keys``: the vit block's schedule and model keys, the protocol's block,
    the engine settings that change numbers, the training domains), its checkpoint entry, and
    ``extra`` (a transfer run: the sha256 of the final.pt it starts from)."""
    from mtwork.workflow import run_settings

    blob = {"run": run.id, "settings": run_settings(params, run),
            "checkpoint": params["checkpoints"]["catalog"].get(run.source)}
    if extra:
        blob["extra"] = dict(extra)
    return params_hash(blob)


def create_vit_recipe(params: Mapping[str, Any], run_id: str, data_root: str | Path, checkpoint: str | Path,
                      domain: str | None = None, init_dir: str | Path | None = None,
                      target_data: str | Path | None = None) -> Recipe:
    """The recipe of a source-2 run, by its protocol (``mtwork.protocols``): ``init_dir`` is the folder of
    the run it starts from (zero-shot and UDA runs, nothing else), ``target_data`` the root of the
    unlabelled target domain (UDA runs, nothing else); a missing or superfluous one is a UserError."""
    import importlib

    run = parse_run_id(run_id)
    protocol = _protocol(run)
    init = protocol.init_run(run)
    if init is not None and init_dir is None:
        raise UserError(f"run '{run_id}' starts from run '{init.id}': give that run's folder (--init)")
    if init is None and init_dir is not None:
        raise UserError(f"run '{run_id}' ({protocol.name}) starts from the pretrained Swin, not from a run: no --init")
    unlabelled = protocol.train_domains(params, run)[1]
    if unlabelled is not None and target_data is None:
        raise UserError(f"run '{run_id}' adapts to the unlabelled domain '{unlabelled}': give its data root (--target-data)")
    if unlabelled is None and target_data is not None:
        raise UserError(f"run '{run_id}' ({protocol.name}) reads no unlabelled target domain: no --target-data")
    module, _, name = protocol.recipe.partition(":")
    recipe_cls = getattr(importlib.import_module(module), name)
    kwargs: Dict[str, Any] = {}
    if init_dir is not None:
        kwargs["init_dir"] = Path(init_dir)
    if target_data is not None:
        kwargs["target_root"] = Path(target_data)
    return recipe_cls(params, run, data_root, checkpoint, domain, **kwargs)


def _protocol(run: RunSpec):
    from mtwork.protocols import protocol_of

    return protocol_of(run)


def train_vit_run(params: Mapping[str, Any], run_id: str, data_root: str | Path, checkpoint: str | Path,
                  out_dir: str | Path, domain: str | None = None, init_dir: str | Path | None = None,
                  target_data: str | Path | None = None) -> Dict[str, Any]:
    """Train one source-2 run (``create_vit_recipe``) on ``domain`` (default: its protocol's training
    domain) into ``out_dir``; returns its log (also written to ``out_dir/log.json``)."""
    from mtwork.engine.loop import fit

    set_threads(params["train"]["threads"])
    recipe = create_vit_recipe(params, run_id, data_root, checkpoint, domain, init_dir, target_data)
    return fit(recipe, out_dir, resolve_device(params["train"]["device"]))


def evaluate_vit_run(params: Mapping[str, Any], run_dir: str | Path, data_root: str | Path, out: str | Path,
                     domain: str | None = None, dg: Sequence[Tuple[str, str | Path, str | Path]] = ()) -> Dict[str, Any]:
    """Evaluate a trained source-2 run on the val split of ``domain`` (default: where it trained) under
    ``data_root`` into ``out``, then, with the model loaded once, on every ``(domain, data root, out)`` of
    ``dg`` (domains it never trained on). Returns the first record.

    A record's ``protocol`` says what was evaluated: ``mtl`` an mtl run where it trained, ``dg`` an mtl run
    on another domain, else the transfer run's protocol (on its target)."""
    import json

    from mtwork.data.batch import collate
    from mtwork.evaluate import eval_loader, run_evaluators

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
    tasks = vit_tasks(config.get("label_space"), log["tasks"])
    run = parse_run_id(log["run"])
    # where the run belongs: a transfer run on its target (a UDA run trains with the source's labels)
    home = run.target if run.protocol != PROTOCOL_MTL else (log.get("domain") or vit_source_domain(params))
    affinity = torch.tensor(log["balancer_state"]["affinity"], device=device)  # TROA's, as trained

    def forward(image: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {t: activate(tasks[t], raw.float()) for t, raw in model(image, affinity).items()}

    records = []
    for where, root, path in [(domain or home, data_root, out), *dg]:
        if run.protocol != PROTOCOL_MTL and where != home:
            raise ValueError(f"run '{run.id}' is evaluated on its target '{home}' only, not on '{where}'")
        protocol = run.protocol if run.protocol != PROTOCOL_MTL else (PROTOCOL_MTL if where == home else PROTOCOL_DG)
        dataset = vit_dataset(params, root, "val", log["tasks"], eval_transform=True, domain=where)
        loader = eval_loader(dataset, params["evaluate"]["batch_size"], collate, tp["workers"], device)
        t0 = time.perf_counter()
        metrics = run_evaluators(tasks, loader, forward, device, tp["amp"], desc=f"evaluate {run_dir.name} ({where})")
        record = {
            "run": log["run"], "protocol": protocol, "domain": where, "trained_on": log.get("domain", home), "source": log["source"],
            "paradigm": log["paradigm"], "method": log["method"], "tasks": log["tasks"], "seed": log["seed"],
            "trained_tasks": log.get("trained_tasks", log["tasks"]),
            "params_hash": log["params_hash"], "metrics": nan_to_none(metrics),
            "higher_is_better": {t: {m.name: m.higher_is_better for m in task.metrics} for t, task in tasks.items()},
            "train": {"seconds": log["train_seconds"], "seconds_per_epoch": log["seconds_per_epoch"],
                      "trainable_params": log["trainable_params"], "total_params": log["total_params"],
                      "adapter_bytes": log["adapter_bytes"],
                      "adapted_block_training": config["kwargs"].get("adapted_block_training"),
                      "parameter_budget": log.get("parameter_budget")},
            "val_images": dataset.labeled_counts(), "eval_seconds": time.perf_counter() - t0,
        }
        write_json(path, record)
        summary = "; ".join(f"{t}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()) for t, m in metrics.items())
        print(f"[mtwork evaluate] {log['run']} ({protocol}, {where}): {summary}", flush=True)
        records.append(record)
    return records[0]
