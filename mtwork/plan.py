"""The experiment plan: which runs exist for given params, their ids, and where each artefact lives.

Snakemake rules, DVC stages and the table renderer all take paths and run ids from here, so a run
is named in exactly one place. A run id encodes (checkpoint source, paradigm, tasks, seed):
``moco_v2__pretrain_adapt_finetune__semseg-drivable-det__s0``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

PROTOCOL_MTL = "mtl"
PROTOCOL_DG = "dg"

# Where the pipeline writes. Each phase of the workflow owns one of these folders and writes nowhere
# else (mtwork.workflow.DVC_STAGES: DVC needs disjoint outputs per stage).
DATA_DIR = Path("data")  # generated data and the data checks
MODELS_DIR = Path("models")
PRETRAINED_DIR = MODELS_DIR / "pretrained"  # upstream-format checkpoints of the embedded pretraining + imports
RUNS_DIR = MODELS_DIR / "runs"  # one folder per run, source 1 and source 2
RESULTS_DIR = Path("results")
METRICS_DIR = RESULTS_DIR / "metrics"
TABLES_DIR = RESULTS_DIR / "tables"
FIGURES_DIR = RESULTS_DIR / "figures"

# The paradigm decides the stages and whether the multi-scale adapters exist at all.
PARADIGM_METHOD = {
    "single_task": "finetune",
    "pretrain_finetune": "finetune",
    "pretrain_adapt_finetune": "multiscale_adapter",
    "pretrain_adapt_finetune_lv": "lv_adapter",  # multi-scale adapters + LV-Adapter language path
    "lora": "lora",  # backbone frozen but for low-rank updates of its convolutions, all epochs
}
# Source 2's paradigms (the `vit` block): what each run trains on the Swin-V2 and how its losses are
# balanced. ``model``: "vtagml" (TAA + TSN adapter blocks), "full_finetune" (whole encoder trainable) or
# "multiscale_adapter" (source 1's adapters on the frozen Swin); ``balancer``: a name of
# mtwork.methods.loss_balancing (TROA feeds its affinities to TAA/TSN; the others leave them identity).
VIT_PARADIGMS: Dict[str, Dict[str, Any]] = {
    "single_task": dict(model="full_finetune", use_taa=False, use_tsn=False, balancer="equal"),
    "full_finetune": dict(model="full_finetune", use_taa=False, use_tsn=False, balancer="equal"),
    "frozen_multiscale_adapter": dict(model="multiscale_adapter", use_taa=False, use_tsn=False, balancer="equal"),
    "vtagml": dict(model="vtagml", use_taa=True, use_tsn=True, balancer="troa"),
    "vtagml_no_taa": dict(model="vtagml", use_taa=False, use_tsn=True, balancer="troa"),
    "vtagml_no_tsn": dict(model="vtagml", use_taa=True, use_tsn=False, balancer="troa"),
    "vtagml_no_troa": dict(model="vtagml", use_taa=True, use_tsn=True, balancer="equal"),
    "vtagml_uncertainty": dict(model="vtagml", use_taa=True, use_tsn=True, balancer="uncertainty"),
    "vtagml_dwa": dict(model="vtagml", use_taa=True, use_tsn=True, balancer="dwa"),
}
for _name, _spec in VIT_PARADIGMS.items():
    PARADIGM_METHOD.setdefault(_name, _spec["model"])

# Paradigms whose first `train.adapt_epochs` epochs train with the backbone frozen.
ADAPT_PARADIGMS = ("pretrain_adapt_finetune", "pretrain_adapt_finetune_lv")


#: Methods with multi-scale adapters, whose placement (``model.adapter_placement``) is part of a run.
ADAPTER_METHODS = ("multiscale_adapter", "lv_adapter")
#: Where adapters sit unless the run id says otherwise (``mtwork.methods.multiscale_adapter``).
DEFAULT_PLACEMENT = "outputs"
PLACEMENTS = ("outputs", "stages")
#: Protocols of a run's training beyond the plain multi-task one (``mtl``, no segment in the id):
#: ``zeroshot``: finetuned on the target domain for some tasks, the others evaluated zero-shot there;
#: ``uda``: adapted to the unlabelled target domain; ``oracle``: trained with the target's labels.
RUN_PROTOCOLS = ("zeroshot", "uda", "oracle")


@dataclass(frozen=True)
class RunSpec:
    """One run. ``placement``: where its multi-scale adapters sit (adapter methods only); ``protocol``
    and ``target``: a run trained for a transfer protocol on ``target`` (a data.domains name)."""

    source: str
    paradigm: str
    tasks: Tuple[str, ...]
    seed: int
    placement: str = DEFAULT_PLACEMENT
    protocol: str = PROTOCOL_MTL
    target: str | None = None

    @property
    def id(self) -> str:
        """SOURCE__PARADIGM[-PLACEMENT]__TASK-TASK[__PROTOCOL-TARGET]__sSEED (brackets: only when not the
        default ``outputs`` placement / the plain multi-task protocol)."""
        paradigm = self.paradigm if self.placement == DEFAULT_PLACEMENT else f"{self.paradigm}-{self.placement}"
        protocol = "" if self.protocol == PROTOCOL_MTL else f"__{self.protocol}-{self.target}"
        return f"{self.source}__{paradigm}__{'-'.join(self.tasks)}{protocol}__s{self.seed}"

    @property
    def method(self) -> str:
        return PARADIGM_METHOD[self.paradigm]

    def stages(self, epochs: int, adapt_epochs: int) -> List[Tuple[str, int]]:
        """[(stage, epochs)]: adapt (backbone frozen) then finetune; the same total for every paradigm."""
        if self.paradigm in ADAPT_PARADIGMS and adapt_epochs > 0:
            return [("adapt", adapt_epochs), ("finetune", epochs - adapt_epochs)]
        if self.paradigm == "lora":
            return [("lora", epochs)]
        return [("finetune", epochs)]


def parse_run_id(run_id: str) -> RunSpec:
    parts = run_id.split("__")
    form = "SOURCE__PARADIGM[-PLACEMENT]__TASK-TASK[__PROTOCOL-TARGET]__sSEED"
    if len(parts) not in (4, 5) or not parts[-1].startswith("s") or not parts[-1][1:].isdigit():
        raise ValueError(f"run id '{run_id}' is not of the form {form}")
    source, paradigm, tasks = parts[:3]
    paradigm, _, placement = paradigm.partition("-")
    if paradigm not in PARADIGM_METHOD:
        raise ValueError(f"run id '{run_id}': unknown paradigm '{paradigm}' (known: {', '.join(PARADIGM_METHOD)})")
    if placement and (placement not in PLACEMENTS or PARADIGM_METHOD[paradigm] not in ADAPTER_METHODS):
        raise ValueError(f"run id '{run_id}': '{placement}' is no adapter placement of paradigm '{paradigm}'")
    protocol, target = PROTOCOL_MTL, None
    if len(parts) == 5:
        protocol, _, target = parts[3].partition("-")
        if protocol not in RUN_PROTOCOLS or not target:
            raise ValueError(f"run id '{run_id}': '{parts[3]}' is not PROTOCOL-TARGET (protocols: {', '.join(RUN_PROTOCOLS)})")
    return RunSpec(source, paradigm, tuple(tasks.split("-")), int(parts[-1][1:]), placement or DEFAULT_PLACEMENT,
                   protocol, target)


def adapter_placements(params: Mapping[str, Any]) -> List[str]:
    """model.adapter_placement as a list: one value, or several to compare (a run each)."""
    value = params["model"]["adapter_placement"]
    return [value] if isinstance(value, str) else list(value)


def plan_runs(params: Mapping[str, Any]) -> List[RunSpec]:
    """Every run the params ask for: single-task baselines per task, multi-task runs per paradigm."""
    train = params["train"]
    runs: List[RunSpec] = []
    for source in params["checkpoints"]["sources"]:
        for seed in train["seeds"]:
            for paradigm in train["paradigms"]:
                if paradigm == "single_task":
                    runs.extend(RunSpec(source, paradigm, (task,), seed) for task in train["tasks"])
                elif PARADIGM_METHOD[paradigm] in ADAPTER_METHODS:  # a run per adapter placement compared
                    runs.extend(RunSpec(source, paradigm, tuple(train["tasks"]), seed, placement)
                                for placement in adapter_placements(params))
                else:
                    runs.append(RunSpec(source, paradigm, tuple(train["tasks"]), seed))
    return runs


def source_runs(params: Mapping[str, Any], source: str) -> List[RunSpec]:
    """The source-1 runs of one checkpoint source (the workflow evaluates them in one job)."""
    runs = [run for run in plan_runs(params) if run.source == source]
    if not runs:
        raise ValueError(f"checkpoint source '{source}' is not in checkpoints.sources")
    return runs


def plan_vit_runs(params: Mapping[str, Any]) -> List[RunSpec]:
    """Source 2's runs (``vit`` block): single-task baselines of every vit task, each vit paradigm on all
    vit tasks, VTAGML on each smaller task subset (the S-D and S-D-N tables), then the transfer runs of
    ``mtwork.protocols`` (zero-shot, UDA, target oracles), each after the mtl run it starts from (added
    here when the lists above lack it, e.g. a UDA paradigm on S-D)."""
    vit = params["vit"]
    if not vit["enabled"]:
        return []
    tasks = tuple(vit["tasks"])
    runs: List[RunSpec] = []
    for seed in vit["seeds"]:
        runs.extend(RunSpec(vit["source"], "single_task", (task,), seed) for task in tasks)
        runs.extend(RunSpec(vit["source"], paradigm, tasks, seed) for paradigm in vit["paradigms"])
        runs.extend(RunSpec(vit["source"], "vtagml", tuple(subset), seed) for subset in vit["task_subsets"]
                    if tuple(subset) != tasks)
    from mtwork.protocols import plan_protocol_runs, protocol_of

    transfers = plan_protocol_runs(params)
    inits = [init for run in transfers if (init := protocol_of(run).init_run(run)) is not None]
    return list(dict.fromkeys(runs + inits + transfers))


def vit_init_run(run: RunSpec) -> RunSpec | None:
    """The run whose final.pt a source-2 run starts from (zero-shot and UDA runs: their mtl run)."""
    from mtwork.protocols import protocol_of

    return protocol_of(run).init_run(run)


def vit_train_domains(params: Mapping[str, Any], run: RunSpec) -> Tuple[str, str | None]:
    """(the domain a source-2 run trains on with labels, the domain of its unlabelled images or None)."""
    from mtwork.protocols import protocol_of

    return protocol_of(run).train_domains(params, run)


def vit_evaluations(params: Mapping[str, Any]) -> Dict[RunSpec, List[str]]:
    """{run: domains it is evaluated on} for every planned source-2 run (``mtwork.protocols``)."""
    from mtwork.protocols import evaluation_domains

    return evaluation_domains(params, plan_vit_runs(params))


def vit_source_domain(params: Mapping[str, Any]) -> str:
    """The domain source 2 trains its multi-task runs on: vit.source_domain, else data.source_domain."""
    return params["vit"].get("source_domain") or params["data"]["source_domain"]


def vit_dg_domains(params: Mapping[str, Any]) -> List[str]:
    """Source 2's unseen domains: vit.dg_domains, else data.dg_domains."""
    dg = params["vit"].get("dg_domains")
    return list(params["data"]["dg_domains"] if dg is None else dg)


def vit_domains(params: Mapping[str, Any]) -> List[str]:
    """Every domain source 2's planned runs train or are evaluated on (source first)."""
    if not params["vit"]["enabled"]:
        return []
    names = [vit_source_domain(params), *vit_dg_domains(params)]
    for domains in vit_evaluations(params).values():
        names.extend(domains)
    return list(dict.fromkeys(names))


def single_task_baseline(run: RunSpec, task: str) -> RunSpec:
    """The single-task run a multi-task run's delta_m compares ``task`` against (same source and seed)."""
    return RunSpec(run.source, "single_task", (task,), run.seed)


# ---- paths -------------------------------------------------------------------------------------


#: Where the generated dataset (SynthDrive, all its visual presets in one root) is written.
GENERATED_ROOT = DATA_DIR / "synthdrive"
#: Where the download rule puts a dataset whose root is null (``<DOWNLOAD_DIR>/<dataset>``).
DOWNLOAD_DIR = DATA_DIR / "datasets"


@dataclass(frozen=True)
class Domain:
    """A domain: ``dataset`` (a data.datasets name) of on-disk ``format`` in folder ``root``, narrowed to
    the frames whose attributes match ``attributes`` ({key: value or [values]}; None = every frame)."""

    name: str
    dataset: str
    format: str
    root: Path
    attributes: Mapping[str, Any] | None


def dataset_root(params: Mapping[str, Any], dataset: str) -> Path:
    """A dataset's folder: the user's root, or where the workflow generates / downloads it."""
    entry = params["data"]["datasets"][dataset]
    if entry.get("root"):
        return Path(entry["root"])
    return GENERATED_ROOT if entry.get("generate") else DOWNLOAD_DIR / dataset


def made_by_workflow(params: Mapping[str, Any], dataset: str) -> str | None:
    """"generate" or "download" when the workflow makes the dataset's folder; None for the user's."""
    entry = params["data"]["datasets"][dataset]
    if entry.get("root"):
        return None
    return "generate" if entry.get("generate") else "download"


def domain(params: Mapping[str, Any], name: str) -> Domain:
    entry = params["data"]["domains"][name]
    dataset = entry["dataset"]
    return Domain(name, dataset, params["data"]["datasets"][dataset]["format"], dataset_root(params, dataset),
                  entry.get("attributes"))


def source1_domains(params: Mapping[str, Any]) -> List[str]:
    """The domains source 1 trains or evaluates on: data.source_domain, then data.dg_domains ([] when
    it plans no run, e.g. a source-2-only configuration with checkpoints.sources: [])."""
    data = params["data"]
    if not params["checkpoints"]["sources"]:
        return []
    return list(dict.fromkeys([data["source_domain"], *data["dg_domains"]]))


def planned_domains(params: Mapping[str, Any]) -> List[str]:
    """The domains the plan trains or evaluates on: source 1's (data.source_domain, data.dg_domains),
    then source 2's (``vit_domains``)."""
    return list(dict.fromkeys(source1_domains(params) + vit_domains(params)))


def planned_datasets(params: Mapping[str, Any]) -> List[str]:
    """The datasets of the planned domains (each is checked once, made once when the workflow makes it)."""
    return list(dict.fromkeys(domain(params, name).dataset for name in planned_domains(params)))


def data_check_path(dataset: str) -> Path:
    """The report of ``mtwork data check`` on a dataset's folder."""
    return DATA_DIR / "checks" / f"{dataset}.json"


def upstream_checkpoint_path(params: Mapping[str, Any], source: str) -> Path | None:
    """The upstream-format file a source is imported from; None for random init."""
    entry = params["checkpoints"]["catalog"][source]
    if entry["format"] == "random":
        return None
    if entry.get("path"):
        return Path(entry["path"])
    return embedded_checkpoint_path(source)


def source_arch(params: Mapping[str, Any], source: str) -> str:
    """The backbone architecture of a source: its catalog ``arch`` (e.g. a CLIP tower) or model.backbone."""
    return params["checkpoints"]["catalog"][source].get("arch") or params["model"]["backbone"]


def is_vit_run(params: Mapping[str, Any], run: RunSpec) -> bool:
    """A run of source 2 (``mtwork.train_vit``): its checkpoint source is a Swin-V2 (arch ``swin:<name>``)."""
    return source_arch(params, run.source).startswith("swin:")


def lv_text_checkpoint(params: Mapping[str, Any]) -> Path:
    """The open_clip file whose frozen text tower the LV-Adapter uses (model.lv.clip_source)."""
    path = upstream_checkpoint_path(params, params["model"]["lv"]["clip_source"])
    assert path is not None  # config validation: clip_source is an open_clip entry
    return path


def embedded_checkpoint_path(source: str) -> Path:
    """Where the embedded pretraining of ``source`` writes its upstream-format checkpoint."""
    return PRETRAINED_DIR / "upstream" / f"{source}.pth.tar"


def planned_sources(params: Mapping[str, Any]) -> List[str]:
    """Every checkpoint source a run of the plan starts from: checkpoints.sources, then vit.source."""
    sources = list(params["checkpoints"]["sources"])
    if params["vit"]["enabled"] and params["vit"]["source"] not in sources:
        sources.append(params["vit"]["source"])
    return sources


def pretrain_domain(params: Mapping[str, Any], source: str) -> str:
    """The domain whose train images an embedded pretraining of ``source`` sees: source 2's source
    domain for its Swin (unless source 1 lists it too), else data.source_domain."""
    vit = params["vit"]
    if vit["enabled"] and source == vit["source"] and source not in params["checkpoints"]["sources"]:
        return vit_source_domain(params)
    return params["data"]["source_domain"]


def embedded_pretrain_sources(params: Mapping[str, Any]) -> List[str]:
    """The planned sources whose upstream file is made by an embedded pretraining run."""
    catalog = params["checkpoints"]["catalog"]
    return [s for s in planned_sources(params) if catalog[s]["format"] != "random" and not catalog[s].get("path")]


def pretrained_path(source: str) -> Path:
    return PRETRAINED_DIR / f"{source}.pt"


def run_dir(run_id: str) -> Path:
    """A run's folder (source 1 and source 2 alike: their run ids differ by checkpoint source)."""
    return RUNS_DIR / run_id


def vit_metrics_path(run_id: str, root: Path = METRICS_DIR, domain: str | None = None) -> Path:
    """A source-2 run's metrics JSON under ``root`` (results/metrics): ``vit/<run>.json`` for an mtl run
    on the domain it trained on (``domain`` None), ``vit/dg/<domain>/<run>.json`` for an mtl run on
    another domain (DG, and the source-only rows of the transfer tables), and
    ``vit/<protocol>/<target>/<run>.json`` for a transfer run on its target."""
    run = parse_run_id(run_id)
    folder = Path(root) / "vit"
    if run.protocol != PROTOCOL_MTL:
        if domain not in (None, run.target):
            raise ValueError(f"run '{run_id}' is evaluated on its target '{run.target}' only, not '{domain}'")
        return folder / run.protocol / str(run.target) / f"{run_id}.json"
    return folder / f"{run_id}.json" if domain is None else folder / PROTOCOL_DG / domain / f"{run_id}.json"


def vit_evaluation_paths(params: Mapping[str, Any], run: RunSpec, domains: Sequence[str], root: Path = METRICS_DIR
                         ) -> List[Tuple[str, Path]]:
    """[(domain, metrics path)] of a source-2 run's evaluation ``domains`` (``vit_evaluations``)."""
    home = vit_source_domain(params) if run.protocol == PROTOCOL_MTL else run.target
    return [(d, vit_metrics_path(run.id, root, None if d == home else d)) for d in domains]


def metrics_path(run_id: str, protocol: str = PROTOCOL_MTL, domain: str | None = None, root: Path = METRICS_DIR) -> Path:
    """A source-1 run's metrics JSON under ``root`` (results/metrics): ``<run>.json`` for the source
    domain, ``<protocol>/<domain>/<run>.json`` otherwise (e.g. dg/dusk_fog/)."""
    if protocol == PROTOCOL_MTL:
        return Path(root) / f"{run_id}.json"
    return Path(root) / protocol / (domain or "") / f"{run_id}.json"
