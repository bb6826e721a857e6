"""Source 2's transfer tables: zero-shot task transfer, UDA and domain generalization.

``write_vit_protocol_tables`` renders, from the metrics records under ``results/metrics/vit``
(``mtwork.plan.vit_metrics_path``), with the seed statistics of every table (``mtwork.report.layout``):

* ``vit_zero_shot.{md,tex,csv}`` (``vit.zero_shot``): on the target domain, for each zero-shot paradigm
  the mtl run evaluated there untrained ("source only", ``vit/dg/<target>/``) and the zero-shot run
  (``vit/zeroshot/<target>/``), then the target oracle (the single-task runs trained on the target's
  labels, ``vit/oracle/<target>/``); columns: the finetuned tasks' metrics, then the zero-shot tasks'.
* ``vit_uda.{md,tex,csv}`` (``vit.uda``): on the target, source only, each UDA run, the oracle; columns:
  the UDA task set's metrics.
* ``vit_dg.{md,tex,csv}`` (``vit.dg_domains``): one group of rows per unseen domain, each paradigm's mtl
  run on the full task set and the single-task row, all evaluated there without any training there.

Δm (the Maninis definition of every table) is taken against the single-task runs *evaluated on the same
domain*: the target oracle in the transfer tables (so a row's Δm is its gap to the oracle), the
single-task runs of the source domain evaluated on the unseen domain in the DG table. Marks rank rows
within each setting (source only / transfer / oracle) or domain only. A protocol that is switched off,
or whose records are absent, gets no table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mtwork.evaluate import PRIMARY_METRIC
from mtwork.plan import PROTOCOL_DG, vit_dg_domains, vit_source_domain
from mtwork.report.layout import Column, Table, TableSpec, build_table, delta_m_definition, write_table
from mtwork.report.records import SINGLE_TASK, primary_directions, study_frame
from mtwork.report.vit_tables import (DELTA_DIGITS, VIT_METRIC_COLUMNS, VIT_PARADIGM_LABEL, _canonical,
                                      read_vit_records, task_set_label)

#: Row settings of the transfer tables, in table order, and their labels.
SETTING_LABEL = {
    PROTOCOL_DG: "Source only (no target training)",
    "zeroshot": "Zero-shot transfer",
    "uda": "UDA",
    "oracle": "Target oracle",
}
ORACLE_LABEL = "1-task Swin trained on target labels"


def _label(key: str, value: str) -> str:
    if key == "protocol":
        return SETTING_LABEL.get(value, value)
    if key == "tasks":
        return task_set_label(value)
    if key == "paradigm" and value == SINGLE_TASK:
        return "Single-task"
    return VIT_PARADIGM_LABEL.get(value, value) if key == "paradigm" else value


def _transfer_label(key: str, value: str) -> str:
    # the oracle is the only single-task row of a transfer table
    return ORACLE_LABEL if key == "paradigm" and value == SINGLE_TASK else _label(key, value)


def _order(row: Mapping[str, str]) -> Tuple[Any, ...]:
    settings = list(SETTING_LABEL)
    paradigms = [SINGLE_TASK, *VIT_PARADIGM_LABEL]
    return (row["domain"], settings.index(row["protocol"]) if row["protocol"] in settings else len(settings),
            paradigms.index(row["paradigm"]) if row["paradigm"] in paradigms else len(paradigms), tuple(row.values()))


def metric_columns(tasks: Sequence[str], suffix: Mapping[str, str] | None = None) -> List[Column]:
    """The metric columns of ``tasks`` (VIT_METRIC_COLUMNS order within each task, tasks in the given order),
    headers with ``suffix[task]`` appended."""
    columns = []
    for task in tasks:
        for t, metric, header, higher, digits in VIT_METRIC_COLUMNS:
            if t == task:
                text = f"{header} {suffix[task]}" if suffix and suffix.get(task) else header
                columns.append(Column(f"{t}_{metric}", text, digits, higher=higher, interval=PRIMARY_METRIC[t] == metric))
    return columns


def _spec(title: str, columns: List[Column], delta_header: str, keys, groups, key_text) -> TableSpec:
    columns = columns + [Column("delta_m", delta_header, DELTA_DIGITS, higher=True, interval=True, reference=True)]
    return TableSpec(title, keys=keys, columns=columns, order=_order, key_text=key_text, groups=groups,
                     group_name="setting" if groups == ("protocol",) else "domain", csv_extra=())


def _records(folder: Path, vit: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The source-2 records directly in ``folder`` of the configured source and seeds ([] when none)."""
    if not folder.is_dir() or not any(folder.glob("*.json")):
        return []
    records = read_vit_records(folder, vit.get("source"))
    return [r for r in records if not vit.get("seeds") or int(r["seed"]) in vit["seeds"]]


def _need(records: List[Dict[str, Any]], folder: Path, what: str) -> List[Dict[str, Any]]:
    if not records:
        raise FileNotFoundError(f"{folder}: no metrics record of {what} (of vit.source and vit.seeds); evaluate the "
                                "runs first (snakemake phase_evaluate)")
    return records


def _costs(rec: Mapping[str, Any]) -> Dict[str, Any]:
    return {}


def _transfer_caption(table: Table, title: str, source: str, target: str, tasks_text: str, higher,
                      tasks: Sequence[str]) -> str:
    runs = sorted({run for row_runs in table.runs for run in row_runs})
    return (f"{title}. Trained on {source}, evaluated on the val split of {target}. {tasks_text} {table.n_text}. "
            f"{table.rule_text} {delta_m_definition(tasks, higher)}; here the single-task baselines are the target "
            f"oracle's runs (trained and evaluated on {target}), so Δm is each row's gap to the oracle. Rows: "
            f"source only = each paradigm's multi-task run on {source}, evaluated on {target} untrained; target oracle "
            f"= one single-task Swin per task trained on {target}'s labels. Marks rank rows within each setting. "
            f"Runs: {', '.join(runs)}.")


def zero_shot_table(params: Mapping[str, Any], metrics_dir: Path) -> Optional[Tuple[Table, str]]:
    from mtwork.protocols.zero_shot import finetune_tasks, zero_shot_tasks

    vit = params["vit"]
    spec = vit["zero_shot"]
    if not (vit["enabled"] and spec["enabled"] and spec["paradigms"]):
        return None
    target, tasks = spec["target_domain"], _canonical(vit["tasks"])
    folder = Path(metrics_dir)
    source_only = [r for r in _records(folder / PROTOCOL_DG / target, vit)
                   if r["paradigm"] in spec["paradigms"] and _canonical(r["tasks"]) == tasks]
    transfer = [r for r in _need(_records(folder / "zeroshot" / target, vit), folder / "zeroshot" / target,
                                 "zero-shot runs") if r["paradigm"] in spec["paradigms"]]
    oracle = [r for r in _records(folder / "oracle" / target, vit) if r["tasks"][0] in tasks]
    records = source_only + transfer + oracle
    finetuned, zero_shot = finetune_tasks(params), zero_shot_tasks(params)
    suffix = {**{t: "(FT)" for t in finetuned}, **{t: "(ZS)" for t in zero_shot}}
    title = f"Zero-shot task transfer with a frozen Swin-V2: {vit_source_domain(params)} → {target}"
    table_spec = _spec(title, metric_columns(finetuned + zero_shot, suffix), "Δm vs oracle (%) ↑",
                       (("protocol", "Setting"), ("paradigm", "Method")), ("protocol",), _transfer_label)
    table = build_table(study_frame(records, [tasks], _costs), table_spec)
    tasks_text = (f"Every model has the tasks {task_set_label(tasks)}; the zero-shot runs finetune on {target} with "
                  f"the labels of {', '.join(finetuned)} only (FT columns; shared parts and those tasks' decoders "
                  f"train, {vit['zero_shot']['epochs']} epoch(s)) and never see a label of {', '.join(zero_shot)} "
                  f"there (ZS columns: those decoders stay frozen).")
    return table, _transfer_caption(table, title, vit_source_domain(params), target, tasks_text,
                                    primary_directions(records, tasks), tasks)


def uda_table(params: Mapping[str, Any], metrics_dir: Path) -> Optional[Tuple[Table, str]]:
    vit = params["vit"]
    spec = vit["uda"]
    if not (vit["enabled"] and spec["enabled"] and spec["paradigms"]):
        return None
    target, tasks = spec["target_domain"], _canonical(spec["tasks"])
    folder = Path(metrics_dir)
    source_only = [r for r in _records(folder / PROTOCOL_DG / target, vit)
                   if r["paradigm"] in spec["paradigms"] and _canonical(r["tasks"]) == tasks]
    adapted = [r for r in _need(_records(folder / "uda" / target, vit), folder / "uda" / target, "UDA runs")
               if r["paradigm"] in spec["paradigms"]]
    oracle = [r for r in _records(folder / "oracle" / target, vit) if r["tasks"][0] in tasks]
    records = source_only + adapted + oracle
    title = f"Unsupervised domain adaptation with a frozen Swin-V2: {vit_source_domain(params)} → {target}"
    table_spec = _spec(title, metric_columns(list(tasks)), "Δm vs oracle (%) ↑",
                       (("protocol", "Setting"), ("paradigm", "Method")), ("protocol",), _transfer_label)
    table = build_table(study_frame(records, [tasks], _costs), table_spec)
    pseudo = spec["pseudo_labels"]
    tasks_text = (f"Task set {task_set_label(tasks)}. UDA runs start from the source-only model and train "
                  f"{spec['epochs']} epoch(s) on labelled {vit_source_domain(params)} batches plus as many unlabelled "
                  f"{target} images, with one output-space discriminator per task ({spec['gan_loss']} GAN loss, "
                  f"adversarial weight {spec['adversarial_weight']}"
                  + (f", segmentation pseudo-labels where the max probability is >= {pseudo['threshold']}, weight "
                     f"{pseudo['weight']}" if pseudo else ", no pseudo-labels") + ").")
    return table, _transfer_caption(table, title, vit_source_domain(params), target, tasks_text,
                                    primary_directions(records, tasks), tasks)


def dg_table(params: Mapping[str, Any], metrics_dir: Path) -> Optional[Tuple[Table, str]]:
    vit = params["vit"]
    domains = vit_dg_domains(params)
    if not (vit["enabled"] and domains):
        return None
    tasks = _canonical(vit["tasks"])
    records: List[Dict[str, Any]] = []
    for name in domains:
        folder = Path(metrics_dir) / PROTOCOL_DG / name
        records += [r for r in _need(_records(folder, vit), folder, f"the runs evaluated on {name}")
                    if r["paradigm"] == SINGLE_TASK and r["tasks"][0] in tasks or _canonical(r["tasks"]) == tasks]
    title = f"Domain generalization with a frozen Swin-V2: trained on {vit_source_domain(params)}, unseen domains"
    table_spec = _spec(title, metric_columns(list(tasks)), "Δm (%) ↑", (("domain", "Unseen domain"), ("paradigm", "Method")),
                       ("domain",), _label)
    table = build_table(study_frame(records, [tasks], _costs), table_spec)
    higher = primary_directions(records, tasks)
    return table, (
        f"{title}. Every model trained on {vit_source_domain(params)} only (task set {task_set_label(tasks)}), "
        f"evaluated on the val split of {', '.join(domains)} without any training there. {table.n_text}. "
        f"{table.rule_text} {delta_m_definition(tasks, higher)}; the single-task baselines are the single-task runs "
        "evaluated on the same unseen domain. Marks rank rows within each domain.")


#: table file stem -> builder of (table, caption), None when its protocol is off
PROTOCOL_TABLES = {"vit_zero_shot": zero_shot_table, "vit_uda": uda_table, "vit_dg": dg_table}


def write_vit_protocol_tables(params: Mapping[str, Any], metrics_dir: Path, out_dir: Path) -> List[Path]:
    """Render the tables of the protocols that are on (module docstring); returns the files written.
    FileNotFoundError (naming the folder) when a protocol that is on has no records."""
    written: List[Path] = []
    for stem, build in PROTOCOL_TABLES.items():
        built = build(params, Path(metrics_dir))
        if built is not None:
            written += write_table(built[0], Path(out_dir), stem, built[1])
    if written:
        print(f"[mtwork vit tables] wrote {', '.join(str(p) for p in written)}")
    return written
