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
from mtwork import workflow as mtworkflow


PARAMS_FILE = "params.yaml"


# ---- overrides: the user's config values ----------------------------------------------------------
# Snakemake's `config` is params.yaml (the configfile) with the user's --configfile files and --config
# values merged over it. Those user values become `--set` overrides of every mtwork command, which
# mtwork.config applies last: after the paper block, so they win at paper scale too.


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
    """Snakemake reads nested --config values with YAML's BaseLoader (all strings) and config files with
    YAML 1.1 (`1e-4` a string): re-read strings with mtwork's settings loader (`1e-4` a float)."""
    if isinstance(value, list):
        return [_retype(v) for v in value]
    if isinstance(value, dict):
        return {k: _retype(v) for k, v in value.items()}
    if isinstance(value, str):
        try:
            parsed = mtconfig.yaml_load(value)
        except yaml.YAMLError:
            return value
        return value if isinstance(parsed, (dict, list)) else parsed
    return value


def _yaml_text(value):
    """A value as `--set` text that mtwork's loader reads back unchanged (plain when possible)."""
    if isinstance(value, str):
        try:
            if value and "\n" not in value and mtconfig.yaml_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)  # JSON is YAML flow style


def _within(key, keys):
    """Whether dotted `key` is one of `keys`, under one, or above one."""
    return any(key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in keys)


def config_overrides(file_params, cfg, user=None):
    """Sorted ["dotted.key=value", ...]: every leaf of Snakemake's `cfg` that differs from params.yaml
    (`file_params`), and, at paper scale, every leaf that the user gave explicitly (`user`: Snakemake's
    --configfile/--config values; None where unknown) under a key the paper block sets, even when it
    equals params.yaml: `--config scale=paper model__backbone=resnet18` must keep resnet18."""
    base = _flatten(file_params)
    overrides = {}
    for key, value in _flatten(dict(cfg)).items():
        if key in base and base[key] == value:
            continue
        value = _retype(value)
        if key in base and base[key] == value:
            continue
        overrides[key] = value
    merged = _flatten(dict(cfg))
    if user and _retype(merged.get("scale")) == "paper":
        paper_keys = [k[len("paper."):] for k in merged if k.startswith("paper.")]
        for key in _flatten(dict(user)):
            if key not in overrides and _within(key, paper_keys):
                overrides[key] = _retype(merged[key])
    return [f"{key}={_yaml_text(value)}" for key, value in sorted(overrides.items())]


def user_config():
    """The user's --configfile/--config values as Snakemake read them (files first, then --config),
    or None outside a Snakemake run (tests exec this file with a plain `config`)."""
    settings = getattr(globals().get("workflow"), "config_settings", None)
    return getattr(settings, "overwrite_config", None)


try:
    FILE_PARAMS = mtconfig.read_params_file(PARAMS_FILE)
except mtconfig.ParamsError as exc:
    raise ValueError(str(exc)) from None
# the user's values, applied after the paper block: inside `dvc exp run`, what the experiment set in
# params.yaml (-S), then Snakemake's --configfile/--config values (a key given twice: the latter wins)
_user = dict(o.split("=", 1) for o in mtconfig.experiment_overrides(PARAMS_FILE) + config_overrides(FILE_PARAMS, config, user_config()))
OVERRIDES = [f"{key}={value}" for key, value in _user.items()]
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


# ---- the parameters each rule reads (mtwork.workflow.RULE_PARAM_KEYS; the DVC stages track them too) ---


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
    """A `params:` function giving the resolved parameters a job of the rule reads (its `settings`)."""

    def settings(wildcards):
        fmt = dict(wildcards.items())
        return pick(mtworkflow.job_param_keys(P, rule_name, fmt), **fmt)

    return settings


# ---- plan, paths, resources -----------------------------------------------------------------------

RUNS = plan.plan_runs(P)
# a source-1 run id without its source: "__PARADIGM__TASKS__sSEED", the same list for every source
RUN_SHAPES = list(dict.fromkeys(run.id[len(run.source):] for run in RUNS))
VIT_RUNS = plan.plan_vit_runs(P)
SOURCE_DOMAIN = P["data"]["source_domain"]
DG_DOMAINS = list(P["data"]["dg_domains"])
# source 2: its source domain and the other domains its runs train or are evaluated on (DG, targets)
VIT_SOURCE_DOMAIN = plan.vit_source_domain(P)
VIT_OTHER_DOMAINS = [d for d in plan.vit_domains(P) if d != VIT_SOURCE_DOMAIN]
VIT_EVALUATIONS = plan.vit_evaluations(P) if VIT_RUNS else {}
# [(run, [metrics paths])] of every planned source-2 evaluation (plan.vit_evaluation_paths)
VIT_METRICS = [str(path) for run, domains in VIT_EVALUATIONS.items()
               for _, path in plan.vit_evaluation_paths(P, run, domains)]
DATASETS = plan.planned_datasets(P)  # the datasets of the planned domains

RUN_FINAL = "final.pt"  # written by `mtwork train` into the run directory (see mtwork/train.py)
RUN_LOG = "log.json"
TABLES_DIR = str(plan.TABLES_DIR)
FIGURES_DIR = str(plan.FIGURES_DIR)
# sources whose upstream file the embedded pretraining makes (catalog path null)
EMBEDDED_SOURCES = plan.embedded_pretrain_sources(P)


def dataset_input(dataset):
    """A dataset's folder as an input: made by a rule (generated, downloaded) or the user's (ancient)."""
    root = str(plan.dataset_root(P, dataset))
    return root if plan.made_by_workflow(P, dataset) else ancient(root)


def domain_check(domain):
    """The data check report of a domain's dataset (a job reads a dataset only once it passed)."""
    return str(plan.data_check_path(plan.domain(P, domain).dataset))


def domain_input(domain):
    """A domain's data as an input: its dataset's folder (see dataset_input)."""
    return dataset_input(plan.domain(P, domain).dataset)


def run_file(run_id, name):
    return str(plan.run_dir(run_id) / name)


def train_text_input(wildcards):
    """A training job's extra input: the LV-Adapter's text tower (source 1 LV runs only)."""
    run = plan.parse_run_id(wildcards.run)
    return [] if plan.is_vit_run(P, run) else lv_text_input(wildcards)


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


def _train_run(wildcards):
    return plan.parse_run_id(wildcards.run)


def train_domain(wildcards):
    """The domain a run trains on with labels: data.source_domain (source 1); source 2: its protocol's
    (vit.source_domain, a transfer's target; mtwork.protocols)."""
    run = _train_run(wildcards)
    return plan.vit_train_domains(P, run)[0] if plan.is_vit_run(P, run) else SOURCE_DOMAIN


def _unlabelled_domain(wildcards):
    run = _train_run(wildcards)
    return plan.vit_train_domains(P, run)[1] if plan.is_vit_run(P, run) else None


def train_data(wildcards):
    return domain_input(train_domain(wildcards))


def train_checks(wildcards):
    """The data checks of every domain a training job reads."""
    domains = [train_domain(wildcards), _unlabelled_domain(wildcards)]
    return list(dict.fromkeys(domain_check(d) for d in domains if d is not None))


def train_target_data(wildcards):
    """A UDA run's unlabelled target domain's data ([] for every other run)."""
    target = _unlabelled_domain(wildcards)
    return [] if target is None else [domain_input(target)]


def train_init(wildcards):
    """The final.pt and log.json of the run a transfer run starts from ([] for every other run)."""
    run = _train_run(wildcards)
    init = plan.vit_init_run(run) if plan.is_vit_run(P, run) else None
    return [] if init is None else [run_file(init.id, RUN_FINAL), run_file(init.id, RUN_LOG)]


def transfer_args(wildcards, input):
    """`--init DIR` and `--target-data ROOT` of source 2's transfer runs (empty for every other run)."""
    args = []
    if input.init:
        args.append(f"--init {shlex.quote(str(Path(input.init[0]).parent))}")
    if input.target:
        args.append(f"--target-data {shlex.quote(str(input.target[0]))}")
    return " ".join(args)


def pretrain_domain(wildcards):
    return plan.pretrain_domain(P, wildcards.source)


def train_checkpoint(wildcards):
    """The converted backbone a run starts from (its source is part of the run id)."""
    return str(plan.pretrained_path(plan.parse_run_id(wildcards.run).source))


def dg_args(wildcards, input):
    """`--dg-domain D --dg-data ROOT` per domain of data.dg_domains (same order as DG_DOMAINS)."""
    return " ".join(
        f"--dg-domain {shlex.quote(domain)} --dg-data {shlex.quote(str(root))}" for domain, root in zip(DG_DOMAINS, input.dg_data)
    )


def parent_dir(name, levels=1, *fallbacks):
    """A params function: the directory `levels` up from the first file of input `name`; when that input
    is empty (e.g. no source-1 run), of the first non-empty `(name, levels)` of `fallbacks`."""

    def get(wildcards, input):
        for key, up in ((name, levels), *fallbacks):
            if input[key]:
                path = Path(input[key][0])
                for _ in range(up):
                    path = path.parent
                return str(path)
        raise ValueError(f"no input file in {[name, *(k for k, _ in fallbacks)]} to take a folder from")

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
_placements = "|".join(plan.PLACEMENTS)
_protocols = "|".join(plan.RUN_PROTOCOLS)
RUN_ID_PATTERN = (rf"[A-Za-z0-9_\-]+?__(?:{_paradigms})(?:-(?:{_placements}))?__(?:{_tasks})(?:-(?:{_tasks}))*"
                  rf"(?:__(?:{_protocols})-[A-Za-z0-9_\-]+?)?__s[0-9]+")


# ---- every planned output, rule by rule ------------------------------------------------------------


def outputs_by_rule():
    """[(rule, [output paths])] of the whole plan, each rule after the rules whose outputs it reads."""
    pretrained = EMBEDDED_SOURCES + [
        s for s in [P["model"]["lv"]["clip_source"]]  # the LV-Adapter's text tower, read by training
        if any(run.method == "lv_adapter" for run in RUNS) and s not in EMBEDDED_SOURCES
        and not P["checkpoints"]["catalog"][s].get("path")
    ]
    return [
        ("download", [str(plan.dataset_root(P, d)) for d in DATASETS if plan.made_by_workflow(P, d) == "download"]),
        ("generate_synthdrive", [str(plan.GENERATED_ROOT)] if any(plan.made_by_workflow(P, d) == "generate" for d in DATASETS) else []),
        ("check_data", [str(plan.data_check_path(d)) for d in DATASETS]),
        ("pretrain", [str(plan.embedded_checkpoint_path(s)) for s in pretrained]),
        ("import_checkpoint", [str(plan.pretrained_path(s)) for s in plan.planned_sources(P)]),
        ("train", [run_file(run.id, name) for run in [*RUNS, *VIT_RUNS] for name in (RUN_FINAL, RUN_LOG)]),
        ("evaluate", [str(plan.metrics_path(run.id, plan.PROTOCOL_MTL)) for run in RUNS]
         + [str(plan.metrics_path(run.id, plan.PROTOCOL_DG, d)) for d in DG_DOMAINS for run in RUNS]),
        ("evaluate_vit", VIT_METRICS),
        ("tables", [TABLES_DIR, FIGURES_DIR]),
    ]


def planned_outputs(*rules):
    return [path for rule, paths in outputs_by_rule() if rule in rules for path in paths]


# ---- recording a complete run for DVC ---------------------------------------------------------------


def record_for_dvc():
    """After a successful run that built the tables (the whole plan), commit every DVC stage's outputs
    (mtwork.workflow.record_outputs), so that `dvc status` is clean and `dvc push` has the results.
    Runs of a part of the plan (other targets, --until) and DVC's own stage runs record nothing."""
    targets = {str(f) for f in workflow.dag.targetfiles} | {job.rule.name for job in workflow.dag.targetjobs}
    if TABLES_DIR not in targets and "all" not in targets:
        return
    if OVERRIDES:  # DVC's lock would claim these outputs came from params.yaml's values
        print(f"mtwork: outputs not recorded for DVC: they were made with --config/--configfile values "
              f"({' '.join(OVERRIDES)}); DVC tracks params.yaml: write them there (or use dvc exp run -S)",
              file=sys.stderr)
        return
    try:
        stages = mtworkflow.record_outputs(".")
    except mtworkflow.RecordSkipped as why:
        print(f"mtwork: outputs not recorded for DVC: {why}", file=sys.stderr)
        return
    print(f"mtwork: outputs of the DVC stages {', '.join(stages)} recorded (dvc status is clean)", file=sys.stderr)


def restore_checkout_times():
    """In a fresh clone whose outputs `dvc pull` restored: give them modification times in plan order.

    DVC writes files with the time of the checkout, in no particular order, so Snakemake (which cannot
    switch its mtime trigger off) would see outputs older than their inputs and redo the pipeline. When
    Snakemake has no record of its own yet (no .snakemake/metadata), every planned output exists and
    DVC finds them exactly as dvc.lock recorded them (a complete, consistent run), their times are set
    in the order of the rules that make them. Anything else is left alone."""
    if not workflow.is_main_process or any(Path(".snakemake", "metadata").glob("*")):
        return
    if not Path("dvc.lock").is_file():
        return
    restored = mtworkflow.restore_checkout_times(outputs_by_rule(), ".")
    if restored:
        print(f"mtwork: {restored} outputs checked out by DVC (dvc status clean) dated in plan order", file=sys.stderr)
