"""The workflow around the plan: which parameters each Snakemake rule reads, the DVC pipeline that is
generated from the same rules, and recording a finished Snakemake run for DVC.

One plan, two engines. Snakemake (Snakefile + rules/*.smk) is the execution engine: it plans one job
per run from ``mtwork.plan``, runs them in parallel or on a cluster, and reruns exactly the jobs whose
parameters (``RULE_PARAM_KEYS``), inputs or code changed. DVC versions what the pipeline produces and
drives experiments (``dvc exp run -S key=value``). dvc.yaml is *generated* (``mtwork plan --dvc``) and
has one stage per phase of the workflow (``DVC_STAGES``): each stage runs Snakemake for its phase's
target (a rule of rules/phases.smk collecting every output of the phase's jobs), tracks the union of the parameter keys those rules read plus the keys that decide which
jobs exist (``RULE_PLAN_KEYS``), and owns the folders those rules write. So every key of params.yaml,
``scale`` included, reaches DVC through the same resolution as Snakemake's (``mtwork.config``), a DVC
stage reruns when any of its keys changes, and inside it Snakemake reruns only the jobs that key
reaches.

After a complete Snakemake run, ``record_outputs`` commits every stage's outputs to DVC's cache and
lock file (the Snakefile's ``onsuccess`` calls it), so ``dvc status`` is clean, ``dvc repro`` has
nothing to do and ``dvc push`` uploads the results.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

from mtwork import plan

# ---- what each rule reads ---------------------------------------------------------------------------

# the training engine's keys that change a run's numbers; not workers/threads/keep_epoch_checkpoints/
# log_steps (speed and bookkeeping only), nor the number of processes (world-size invariant)
ENGINE_KEYS = [f"train.{k}" for k in ("device", "amp", "compile", "channels_last", "sync_bn")]
TRAIN_KEYS = [f"train.{k}" for k in ("epochs", "adapt_epochs", "batch_size", "input_size", "lr", "weight_decay",
                                     "warmup_epochs", "loss_weights", "accum_steps")] + ENGINE_KEYS

#: {rule: dotted params keys whose resolved values the rule's command reads ("{source}" is the job's
#: checkpoint source)}. A rule's jobs carry these values as Snakemake ``params`` (so a changed value
#: reruns them) and the DVC stage of the rule's phase tracks them. Execution settings that do not
#: change results (threads, workers) are left out.
RULE_PARAM_KEYS: Dict[str, List[str]] = {
    "download": [],
    "generate_synthdrive": ["data.synthdrive"],
    "check_data": [],
    "pretrain": ["checkpoints.pretrain", "checkpoints.catalog.{source}", "model.backbone"],
    "import_checkpoint": ["checkpoints.catalog.{source}", "model.backbone"],
    # model: the architecture and the det post-processing stored with final.pt; not workers/threads
    "train": TRAIN_KEYS + ["model"],
    "evaluate": ["evaluate", "train.input_size", "train.device", "train.amp", "data.source_domain", "data.dg_domains"],
    "tables": ["checkpoints.sources", "train.tasks", "train.paradigms", "train.seeds", "data.source_domain",
               "data.dg_domains", "vit.enabled", "vit.tasks", "vit.task_subsets", "vit.paradigms", "vit.seeds",
               "vit.source_domain", "vit.dg_domains", "vit.zero_shot", "vit.uda"],
    "evaluate_vit": ["evaluate", "vit.input_size", "vit.label_space", "train.device", "train.amp", "vit.source_domain",
                     "data.source_domain"],
}
#: What a source-2 run of rule ``train`` reads instead of RULE_PARAM_KEYS["train"]: everything of the
#: vit block that shapes a run but its run lists (those only plan runs).
VIT_TRAIN_PARAM_KEYS: List[str] = [
    f"vit.{k}" for k in ("source", "epochs", "batch_size", "input_size", "lr", "weight_decay", "warmup_epochs",
                         "loss_weights", "accum_steps", "task_embed_dim", "adapter_reduction", "adapted_blocks",
                         "adapted_block_training", "troa", "troa_global", "label_space")
] + ENGINE_KEYS
#: What source 2's transfer runs read besides (their protocol's block: mtwork.protocols, ``param_keys``).
VIT_PROTOCOL_PARAM_KEYS: List[str] = ["vit.zero_shot", "vit.uda"]


def train_run_param_keys(params: Mapping[str, Any], run: "plan.RunSpec") -> List[str]:
    """Exactly the keys that shape one source-1 training run: the schedule, the loss weights of its
    tasks, the architecture, and the settings of its method only (a LoRA rank does not retrain the
    adapter runs; detection's post-processing only matters to runs with det)."""
    keys = [k for k in RULE_PARAM_KEYS["train"] if k not in ("model", "train.loss_weights", "train.adapt_epochs")]
    keys += [f"train.loss_weights.{task}" for task in run.tasks]
    keys += ["model.fpn_channels"]
    if not params["checkpoints"]["catalog"][run.source].get("arch"):
        keys.append("model.backbone")
    if "det" in run.tasks:
        keys.append("model.det")
    if run.paradigm in plan.ADAPT_PARADIGMS:
        keys.append("train.adapt_epochs")
    if run.method in ("multiscale_adapter", "lv_adapter"):
        keys.append("model.adapter_reduction")  # (the placement is part of the run id)
    if run.method == "lv_adapter":
        keys.append("model.lv")
    if run.method == "lora":
        keys.append("model.lora")
    return keys


#: Rules whose jobs read the definition of the source domain (which frames of which dataset), or of
#: every planned domain (evaluation also reads the DG domains).
_READS_SOURCE_DOMAIN = ("pretrain", "train", "evaluate_vit")
_READS_ALL_DOMAINS = ("evaluate",)


def job_param_keys(params: Mapping[str, Any], rule: str, wildcards: Mapping[str, str]) -> List[str]:
    """The keys one job of ``rule`` reads (a training job: exactly those that shape its run), with the
    definitions of the domains it reads data from."""
    if rule == "train":
        run = plan.parse_run_id(wildcards["run"])
        if plan.is_vit_run(params, run):
            from mtwork.protocols import protocol_of

            keys = VIT_TRAIN_PARAM_KEYS + protocol_of(run).param_keys(run)
            domains = [d for d in plan.vit_train_domains(params, run) if d is not None]
            return keys + [f"data.domains.{name}" for name in domains]
        keys = train_run_param_keys(params, run)
    else:
        keys = list(RULE_PARAM_KEYS[rule])
    if rule == "evaluate_vit":
        domains = plan.vit_domains(params)
    elif rule == "pretrain":
        domains = [plan.pretrain_domain(params, wildcards["source"])]
    else:
        domains = ([params["data"]["source_domain"]] if rule in _READS_SOURCE_DOMAIN
                   else plan.source1_domains(params) if rule in _READS_ALL_DOMAINS else [])
    return keys + [f"data.domains.{name}" for name in domains]


def lookup(params: Mapping[str, Any], key: str) -> Any:
    """The value of dotted ``key`` in ``params`` (a KeyError names the key)."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"no setting '{key}'")
        node = node[part]
    return node


def run_settings(params: Mapping[str, Any], run: "plan.RunSpec") -> Dict[str, Any]:
    """{key: value} of exactly the settings a training run reads: what reruns its job in Snakemake, and
    what its params hash (resume, provenance) covers."""
    return {key: lookup(params, key) for key in job_param_keys(params, "train", {"run": run.id})}


def rule_param_keys(rule: str) -> List[str]:
    """The keys any job of ``rule`` may read (the union over its kinds of jobs)."""
    return RULE_PARAM_KEYS[rule] + (VIT_TRAIN_PARAM_KEYS + VIT_PROTOCOL_PARAM_KEYS if rule == "train" else [])

_SOURCE1_PLAN = ["checkpoints.sources", "train.tasks", "train.paradigms", "train.seeds", "model.adapter_placement"]
_SOURCE2_PLAN = ["vit.enabled", "vit.source", "vit.tasks", "vit.task_subsets", "vit.paradigms", "vit.seeds",
                 "vit.source_domain", "vit.dg_domains", "vit.zero_shot", "vit.uda"]
_DATA_PLAN = ["data.datasets", "data.domains", "data.source_domain", "data.dg_domains"]
_SOURCE_DATA_PLAN = ["data.datasets", "data.source_domain"]  # jobs that read the source domain only

#: {rule: keys that decide which jobs of the rule exist and where their files are} (the plan's inputs);
#: ``scale`` is one for every rule, as it switches the whole plan.
RULE_PLAN_KEYS: Dict[str, List[str]] = {
    "download": _DATA_PLAN,
    "generate_synthdrive": _DATA_PLAN,
    "check_data": _DATA_PLAN,
    "pretrain": ["checkpoints.sources", "checkpoints.catalog", "vit.enabled", "vit.source", "vit.source_domain"]
    + _SOURCE_DATA_PLAN,
    "import_checkpoint": ["checkpoints.sources", "checkpoints.catalog", "vit.enabled", "vit.source"],
    "train": _SOURCE1_PLAN + _SOURCE2_PLAN + _SOURCE_DATA_PLAN + ["model.lv.clip_source"],
    "evaluate": _SOURCE1_PLAN + _DATA_PLAN,
    "evaluate_vit": _SOURCE2_PLAN + _DATA_PLAN,
    "tables": _SOURCE1_PLAN + _SOURCE2_PLAN + _DATA_PLAN,
}


# ---- the DVC pipeline -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DvcStage:
    """One phase of the workflow as a DVC stage: Snakemake runs ``rules`` (and nothing after them),
    which write only under ``outs``; ``deps`` are the outputs of earlier phases they read."""

    name: str
    rules: Tuple[str, ...]
    outs: Tuple[str, ...]
    deps: Tuple[str, ...] = ()
    description: str = ""
    #: the Snakemake target that builds the phase: a phase rule of rules/phases.smk (named
    #: ``phase_<name>``) whose inputs are every output of the phase's jobs in the plan
    target: str = ""


#: The phases in order. Their ``outs`` are disjoint folders (DVC refuses overlapping outputs), which is
#: why every artefact path in ``mtwork.plan`` lies under exactly one of them.
DVC_STAGES: Tuple[DvcStage, ...] = (
    DvcStage("data", ("download", "generate_synthdrive", "check_data"), (str(plan.DATA_DIR),),
             description="generate the embedded data (SynthDrive), download public datasets, check every dataset"),
    DvcStage("checkpoints", ("pretrain", "import_checkpoint"), (str(plan.PRETRAINED_DIR),), (str(plan.DATA_DIR),),
             description="embedded self-supervised pretraining where a source has no file; import every source"),
    DvcStage("train", ("train",), (str(plan.RUNS_DIR),), (str(plan.DATA_DIR), str(plan.PRETRAINED_DIR)),
             description="train every run of the plan (source 1 and source 2)"),
    DvcStage("evaluate", ("evaluate", "evaluate_vit"), (str(plan.METRICS_DIR),),
             (str(plan.DATA_DIR), str(plan.PRETRAINED_DIR), str(plan.RUNS_DIR)),
             description="evaluate every run on its source domain and the domain-generalization domains"),
    DvcStage("tables", ("tables",), (str(plan.TABLES_DIR), str(plan.FIGURES_DIR)),
             (str(plan.RUNS_DIR), str(plan.METRICS_DIR)),
             description="paper-style tables and figures", target=str(plan.TABLES_DIR)),
)

DVC_HEADER = """\
# GENERATED by `mtwork plan --dvc` from mtwork/workflow.py: do not edit by hand (a test regenerates it).
#
# DVC versions the pipeline's data, models and metrics and drives experiments; Snakemake executes:
#   dvc repro                                   # run what is out of date (through Snakemake)
#   dvc exp run -S train.lr=1e-4                # an experiment: any key of params.yaml, scale included
#   dvc push / dvc pull                         # share data, models, metrics through a DVC remote
# Each stage is one phase of the workflow: it runs Snakemake for that phase's target (rules/phases.smk),
# tracks the union of the parameter keys those rules read plus the keys that decide which jobs exist,
# and owns the folders they write (persist: Snakemake updates them job by job, reruns only the jobs a
# changed key reaches, and DVC never deletes them first). Snakemake reads the workflow profile
# profiles/default (all cores) and SNAKEMAKE_PROFILE if set.
# A finished `snakemake ... results/tables` records its outputs here itself (Snakefile `onsuccess`:
# `mtwork record`), so `dvc status` is clean after it.
"""


def _widen(key: str) -> str:
    """A per-job key pattern as a stage-level key: "checkpoints.catalog.{source}" -> "checkpoints.catalog"."""
    parts = key.split(".")
    while parts and "{" in parts[-1]:
        parts.pop()
    return ".".join(parts)


def _minimal_keys(keys: Iterable[str]) -> List[str]:
    """Sorted keys without those already covered by a listed ancestor ("train" covers "train.lr")."""
    unique = sorted(set(keys))
    return [k for k in unique if not any(k.startswith(other + ".") for other in unique if other != k)]


def stage_param_keys(stage: DvcStage) -> List[str]:
    """Every params.yaml key that shapes the stage's outputs: what its rules read, and what decides
    which of their jobs exist (``scale`` included)."""
    keys = ["scale"]
    for rule in stage.rules:
        keys += [_widen(k) for k in rule_param_keys(rule)]
        if rule in _READS_SOURCE_DOMAIN + _READS_ALL_DOMAINS:
            keys.append("data.domains")
        keys += RULE_PLAN_KEYS[rule]
    return _minimal_keys(keys)


def stage_target(stage: DvcStage) -> str:
    return stage.target or f"phase_{stage.name}"


def stage_command(stage: DvcStage) -> str:
    return f"snakemake {stage_target(stage)}"


def dvc_pipeline() -> Dict[str, Any]:
    """dvc.yaml's content as a mapping (stages in workflow order)."""
    stages: Dict[str, Any] = {}
    for stage in DVC_STAGES:
        entry: Dict[str, Any] = {"desc": stage.description, "cmd": stage_command(stage)}
        if stage.deps:
            entry["deps"] = list(stage.deps)
        entry["params"] = stage_param_keys(stage)
        entry["outs"] = [{out: {"persist": True}} for out in stage.outs]
        stages[stage.name] = entry
    return {"stages": stages}


def render_dvc_yaml() -> str:
    import yaml

    return DVC_HEADER + "\n" + yaml.safe_dump(dvc_pipeline(), sort_keys=False, width=120)


def write_dvc_yaml(path: str | os.PathLike = "dvc.yaml") -> Path:
    from mtwork.io import write_text

    write_text(path, render_dvc_yaml())
    return Path(path)


def check_dvc_yaml(path: str | os.PathLike = "dvc.yaml") -> str | None:
    """None when ``path`` is what ``render_dvc_yaml`` writes; else a unified diff (what to regenerate)."""
    import difflib

    expected = render_dvc_yaml()
    try:
        actual = Path(path).read_text()
    except FileNotFoundError:
        return f"{path}: missing (run `mtwork plan --dvc`)"
    if actual == expected:
        return None
    diff = difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), str(path), "mtwork plan --dvc")
    return "".join(diff)


def rules_in_stages() -> List[str]:
    return [rule for stage in DVC_STAGES for rule in stage.rules]


# ---- recording a Snakemake run for DVC -----------------------------------------------------------------


class RecordSkipped(Exception):
    """Nothing was recorded; the message says why (not an error of the run itself)."""


def record_outputs(root: str | os.PathLike = ".", stages: Sequence[str] | None = None) -> List[str]:
    """Commit the outputs of every DVC stage to the cache and dvc.lock (``dvc commit --force``).

    Called after a complete Snakemake run: Snakemake has just made the outputs from the current
    params.yaml, so DVC may take them as the stages' results without rerunning anything. Raises
    ``RecordSkipped`` when ``root`` is no DVC repository, when DVC itself is running the workflow (a
    stage of ``dvc repro``: DVC records that run on its own), when dvc.yaml is not the generated one,
    or when a stage's outputs are missing (the run did not reach it). Returns the committed stages.
    """
    root = Path(root)
    if os.environ.get("DVC_STAGE"):
        raise RecordSkipped("running as a DVC stage: DVC records this run itself")
    if not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        raise RecordSkipped(f"{root.resolve()} is not a DVC repository (no .dvc/ or dvc.yaml)")
    stale = check_dvc_yaml(root / "dvc.yaml")
    if stale:
        raise RecordSkipped("dvc.yaml differs from `mtwork plan --dvc`; regenerate it to record runs")
    names = list(stages) if stages is not None else [s.name for s in DVC_STAGES]
    by_name = {s.name: s for s in DVC_STAGES}
    for name in names:
        missing = [out for out in by_name[name].outs if not (root / out).exists()]
        if missing:
            raise RecordSkipped(f"stage '{name}': {', '.join(missing)} missing (the run did not reach it)")
    try:
        from dvc.repo import Repo
    except ImportError:  # the workflow extra is not installed
        raise RecordSkipped("dvc is not installed (pip install 'mtwork[workflow]')") from None
    with Repo(str(root)) as repo:
        for name in names:
            repo.commit(name, force=True, relink=True)
    return names


def restore_checkout_times(outputs_by_rule: Sequence[Tuple[str, Sequence[str]]], root: str | os.PathLike = ".") -> int:
    """Date the outputs of a complete, DVC-recorded run in plan order; returns how many were dated.

    ``outputs_by_rule``: [(rule, [paths relative to root])], each rule after those it reads from. Only
    when every path exists and DVC finds the workspace exactly as dvc.lock recorded it (so the files
    are one consistent, complete run); otherwise nothing is touched and 0 is returned. Each rule's
    outputs get one time, a second after the previous rule's, ending a second before now; a directory
    output's Snakemake marker (``.snakemake_timestamp``, which DVC does not track) gets it too.
    """
    import time

    root = Path(root)
    paths = [(i, root / p) for i, (_, group) in enumerate(outputs_by_rule) for p in group]
    if not paths or not all(path.exists() for _, path in paths):
        return 0
    try:
        from dvc.repo import Repo
    except ImportError:
        return 0
    with Repo(str(root)) as repo:
        if repo.status():  # anything changed, missing or not recorded: not a clean checkout
            return 0
    start = time.time() - len(outputs_by_rule) - 1
    for i, path in paths:
        stamp = start + i
        os.utime(path, (stamp, stamp))
        marker = path / ".snakemake_timestamp"
        if path.is_dir() and marker.exists():
            os.utime(marker, (stamp, stamp))
    return len(paths)


def plan_summary(params: Mapping[str, Any]) -> Dict[str, Any]:
    """The runs a params set plans (for ``mtwork plan``): source-1 and source-2 run ids."""
    return {
        "scale": params["scale"],
        "runs": [run.id for run in plan.plan_runs(params)],
        "vit_runs": [run.id for run in plan.plan_vit_runs(params)],
    }
