# Shared definitions of the workflow (functions and values only; the rules live beside this file):
# the params overrides, the resolved params P, the plan of runs, paths from mtwork.plan, resources.
# Included first by the Snakefile, after `configfile: "params.yaml"`.

import json
import shlex
import sys
from pathlib import Path

import yaml

from mtwork import config as mtconfig
from mtwork import plan


PARAMS_FILE = "params.yaml"


# ---- overrides: config values that differ from params.yaml ---------------------------------------


def _flatten(node, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}. Lists and scalars are leaves; key 'a__b' (or 'a.b') is path a.b."""
    if isinstance(node, dict) and node:
        out = {}
        # plain keys first: a dotted key ("a__b") is more specific and wins over its parent's subtree
        # (snakemake puts --config keys *before* the config file's keys in `config`)
        for key, value in sorted(node.items(), key=lambda kv: "__" in str(kv[0]) or "." in str(kv[0])):
            key = str(key).replace("__", ".")
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: node}


def _retype(value):
    """Snakemake parses nested --config values with YAML's BaseLoader (all strings): re-type them."""
    if isinstance(value, list):
        return [_retype(v) for v in value]
    if isinstance(value, dict):
        return {k: _retype(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return value if isinstance(parsed, (dict, list)) else parsed
    return value


def _yaml_text(value):
    """A value as `--set` text that yaml.safe_load reads back unchanged (plain when possible)."""
    if isinstance(value, str):
        try:
            if value and "\n" not in value and yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)  # JSON is YAML flow style


def config_overrides(file_params, cfg):
    """Sorted ["dotted.key=value", ...] for every config leaf that differs from params.yaml."""
    base = _flatten(file_params)
    overrides = {}
    for key, value in _flatten(dict(cfg)).items():
        if key in base and base[key] == value:
            continue
        value = _retype(value)
        if key in base and base[key] == value:
            continue
        overrides[key] = value
    return [f"{key}={_yaml_text(value)}" for key, value in sorted(overrides.items())]


with open(PARAMS_FILE) as _fh:
    FILE_PARAMS = yaml.safe_load(_fh)
OVERRIDES = config_overrides(FILE_PARAMS, config)
try:
    P = mtconfig.resolve(FILE_PARAMS, OVERRIDES)  # the resolved params the DAG is planned from
except mtconfig.ParamsError as exc:
    raise ValueError(f"{PARAMS_FILE} with overrides {OVERRIDES}: {exc}") from None


class CommandArgs:
    """`--params params.yaml [--set KEY=VALUE ...]` (shell-quoted), the `params.args` of every rule.

    Deliberately not a str: Snakemake's params trigger skips values it cannot represent, so a new
    override reruns only the rules whose resolved `settings` it changes, not every rule whose command
    line gained a `--set`.
    """

    def __init__(self, overrides):
        self.text = " ".join(["--params", PARAMS_FILE] + [f"--set {shlex.quote(o)}" for o in overrides])

    def __str__(self):
        return self.text

    __repr__ = __str__


MTWORK_ARGS = CommandArgs(OVERRIDES)
if OVERRIDES:
    print(f"mtwork params overrides: {' '.join(OVERRIDES)}", file=sys.stderr)


# ---- the parameters each rule reads (its `params`; dvc.yaml lists the same keys per stage) --------

# the training engine's keys that change a run's numbers; not workers/threads/keep_epoch_checkpoints/
# log_steps (speed and bookkeeping only), nor the number of processes (world-size invariant)
ENGINE_KEYS = [f"train.{k}" for k in ("device", "amp", "compile", "channels_last", "sync_bn")]
TRAIN_KEYS = [f"train.{k}" for k in ("epochs", "adapt_epochs", "batch_size", "input_size", "lr", "weight_decay",
                                     "warmup_epochs", "loss_weights", "accum_steps")] + ENGINE_KEYS
PARAM_KEYS = {
    "generate_synthdrive": ["data.synthdrive"],
    "check_data": [],
    "pretrain": ["checkpoints.pretrain", "checkpoints.catalog.{source}", "model.backbone"],
    "import_checkpoint": ["checkpoints.catalog.{source}", "model.backbone"],
    # model: the architecture and the det post-processing stored with final.pt; not workers/threads
    "train": TRAIN_KEYS + ["model"],
    "evaluate": ["evaluate", "train.input_size", "train.device", "train.amp", "data.source_domain", "data.dg_domains"],
    "tables": ["checkpoints.sources", "train.tasks", "train.paradigms", "train.seeds", "data.source_domain",
               "data.dg_domains", "vit.enabled", "vit.tasks", "vit.task_subsets", "vit.paradigms", "vit.seeds"],
    # source 2: everything of the vit block shapes a run but its run lists (those only plan runs)
    "train_vit": [f"vit.{k}" for k in ("source", "epochs", "batch_size", "input_size", "lr", "weight_decay",
                                       "warmup_epochs", "loss_weights", "accum_steps", "task_embed_dim", "adapter_reduction",
                                       "adapted_blocks", "troa")]
    + ENGINE_KEYS,
    "evaluate_vit": ["evaluate", "vit.input_size", "train.device", "train.amp", "data.source_domain"],
}


def pick(keys, **fmt):
    """{dotted key: resolved value} for the given keys (formatted with wildcards)."""
    out = {}
    for key in (k.format(**fmt) for k in keys):
        node = P
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


def rule_params(rule_name):
    """A `params:` function giving the rule's resolved parameters for a job's wildcards."""
    return lambda wildcards: pick(PARAM_KEYS[rule_name], **dict(wildcards.items()))


# ---- plan, paths, resources -----------------------------------------------------------------------

RUNS = plan.plan_runs(P)
# a source-1 run id without its source: "__PARADIGM__TASKS__sSEED", the same list for every source
RUN_SHAPES = list(dict.fromkeys(run.id[len(run.source):] for run in RUNS))
VIT_RUNS = plan.plan_vit_runs(P)
SOURCE_DOMAIN = P["data"]["source_domain"]
DG_DOMAINS = list(P["data"]["dg_domains"])
SYNTHDRIVE = P["data"]["dataset"] == "synthdrive"

RUN_FINAL = "final.pt"  # written by `mtwork train` into the run directory (see mtwork/train.py)
RUN_LOG = "log.json"
TABLES_DIR = str(plan.RESULTS_DIR / "tables")
FIGURES_DIR = str(plan.RESULTS_DIR / "figures")
# sources whose upstream file the embedded pretraining makes (catalog path null)
EMBEDDED_SOURCES = plan.embedded_pretrain_sources(P)


def dataset_root(domain):
    return str(plan.dataset_root(P, domain))


def dataset_input(domain):
    """A domain's data as an input: generated SynthDrive (a rule output) or the user's BDD100K (ancient)."""
    root = dataset_root(domain)
    return root if SYNTHDRIVE else ancient(root)


def run_file(run_id, name):
    return str(plan.run_dir(run_id) / name)


def lv_text_input(wildcards):
    """LV-Adapter runs read the frozen CLIP text tower from model.lv.clip_source's open_clip file
    (the embedded tiny CLIP, or the user's file: ancient, only its presence matters). For a job of
    one run (wildcard run) or of all runs of a checkpoint source (wildcard source)."""
    if "run" in wildcards.keys():
        runs = [plan.parse_run_id(wildcards.run)]
    else:
        runs = plan.source_runs(P, wildcards.source)
    if all(run.method != "lv_adapter" for run in runs):
        return []
    clip_source = P["model"]["lv"]["clip_source"]
    path = str(plan.lv_text_checkpoint(P))
    return [ancient(path)] if P["checkpoints"]["catalog"][clip_source].get("path") else [path]


def upstream_input(wildcards):
    """The source's upstream file: none for random init, the embedded pretraining's output, or the
    user's file (ancient: only its presence matters, e.g. after a DVC checkout)."""
    path = plan.upstream_checkpoint_path(P, wildcards.source)
    if path is None:
        return []
    return [str(path)] if wildcards.source in EMBEDDED_SOURCES else [ancient(str(path))]


def train_checkpoint(wildcards):
    """The converted backbone a run starts from (its source is part of the run id)."""
    return str(plan.pretrained_path(plan.parse_run_id(wildcards.run).source))


def dg_args(wildcards, input):
    """`--dg-domain D --dg-data ROOT` per domain of data.dg_domains (same order as DG_DOMAINS)."""
    return " ".join(
        f"--dg-domain {shlex.quote(domain)} --dg-data {shlex.quote(str(root))}" for domain, root in zip(DG_DOMAINS, input.dg_data)
    )


def parent_dir(name, levels=1):
    """A params function: the directory `levels` up from the first file of input `name`."""

    def get(wildcards, input):
        path = Path(input[name][0])
        for _ in range(levels):
            path = path.parent
        return str(path)

    return get


def train_gpus():
    """GPUs per training/evaluation job: 1 when it runs on CUDA (paper scale), 0 on CPU (embedded)."""
    device = P["train"]["device"]
    return 1 if device == "cuda" or (device == "auto" and P["scale"] == "paper") else 0


GPUS = train_gpus()


def nproc_args(wildcards, resources):
    """` --nproc N` for a training job whose resource nproc is above 1 (set per rule in a profile's
    set-resources, next to gpu=N); nothing otherwise, so the command stays dvc.yaml's."""
    n = int(getattr(resources, "nproc", 1))
    return f" --nproc {n}" if n > 1 else ""

TRAIN_THREADS = P["train"]["threads"]
# used only with --use-conda; relative to the .smk file holding the rule (rules/)
CONDA_ENV = "../envs/mtwork.yaml"

# run ids as plan.RunSpec.id writes them: SOURCE__PARADIGM__TASK-TASK__sSEED
_paradigms = "|".join(plan.PARADIGM_METHOD)
_tasks = "|".join(dict.fromkeys(mtconfig.TASK_NAMES + mtconfig.VIT_TASK_NAMES))
RUN_ID_PATTERN = rf"[A-Za-z0-9_\-]+?__(?:{_paradigms})__(?:{_tasks})(?:-(?:{_tasks}))*__s[0-9]+"
