"""Source 1's tables (Markdown, LaTeX booktabs, CSV) of the multi-task transfer study, and its figures.

Rows are checkpoint source x paradigm; the single-task row of a source combines its three single-task
runs. Columns: semseg mIoU, drivable mIoU, det mAP, det mAP50, Δm, trainable parameters, train time,
each as mean ± std over seeds (``train.seeds``), with the 95 % interval for Δm and the primary metrics.
Marks follow ``mtwork.report.layout``: only where a difference exceeds the seed noise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import pandas as pd

from mtwork.evaluate import PRIMARY_METRIC
from mtwork.report.layout import Column, Stat, Table, TableSpec, build_table, delta_m_definition, write_table
from mtwork.report.records import (DELTA_M, PARADIGM_LABEL, PARADIGM_ORDER, SINGLE_TASK, metric_directions,
                                   primary_directions, read_records, study_frame)

# (task, metric, header, digits) of the metric columns, in table order
METRIC_COLUMNS: Sequence[Tuple[str, str, str, int]] = (
    ("semseg", "miou", "Seg mIoU", 1),
    ("drivable", "miou", "Drivable mIoU", 1),
    ("det", "map", "Det mAP", 1),
    ("det", "map50", "Det mAP50", 1),
)
DELTA_HEADER = "Δm (%)"


def source1_costs(rec: Mapping[str, Any]) -> Dict[str, Any]:
    """Cost columns of a source-1 record: train time (s) and trainable parameters (last stage; adapt stage)."""
    stages = rec["train"].get("trainable_params") or {}
    return {
        "train_seconds": rec["train"].get("seconds"),
        # the last stage's count: the finetune stage of an adapt paradigm trains everything
        "trainable_params": stages.get("finetune", max(stages.values(), default=None)),
        "adapt_trainable_params": stages.get("adapt"),
    }


def _params_text(row: Mapping[str, Stat]) -> str:
    stat = row.get("trainable_params")
    if stat is None:
        return "–"
    text = f"{stat['mean'] / 1e6:.2f} M"
    adapt = row.get("adapt_trainable_params")
    if adapt is not None:
        text += f" (adapt {adapt['mean'] / 1e6:.2f} M)"
    return text


def mtl_spec(title: str, sources: Sequence[str], directions: Mapping[str, bool]) -> TableSpec:
    columns = [
        Column(f"{t}_{m}", header, digits, higher=directions.get(f"{t}_{m}"), interval=PRIMARY_METRIC.get(t) == m)
        for t, m, header, digits in METRIC_COLUMNS
    ]
    columns += [
        Column(DELTA_M, DELTA_HEADER, 2, higher=True, interval=True, reference=True),
        Column("trainable_params", "Trainable params", render=_params_text),
        Column("train_seconds", "Train time (s)", 0),
    ]
    source_rank = {s: i for i, s in enumerate(sources)}
    paradigm_rank = {p: i for i, p in enumerate(PARADIGM_ORDER)}
    return TableSpec(
        title=title,
        keys=(("source", "Checkpoint"), ("paradigm", "Paradigm")),
        columns=columns,
        order=lambda row: (source_rank.get(row["source"], len(source_rank)), row["source"],
                           paradigm_rank.get(row["paradigm"], len(paradigm_rank)), tuple(row.values())),
        key_text=lambda key, value: PARADIGM_LABEL.get(value, value) if key == "paradigm" else value,
    )


def caption(table: Table, tasks: Sequence[str], higher: Mapping[str, bool]) -> str:
    baselines = [run for row, runs in zip(table.rows, table.runs) if row["paradigm"] == SINGLE_TASK for run in runs]
    notes = [f"{label}: {note}" for label, note in zip(table.labels, table.notes) if note]
    text = (
        f"{table.spec.title}. {table.n_text}. {table.rule_text} {delta_m_definition(tasks, higher)}. "
        f"Single-task runs: {', '.join(baselines) or 'none'}. Trainable parameters are those of the last stage "
        "(the adapt stage's in parentheses); train time is the wall-clock time of all training epochs."
    )
    if notes:
        text += " Δm '–': " + "; ".join(notes) + "."
    return text


def select(records: Sequence[Mapping[str, Any]], sources: Sequence[str], paradigms: Sequence[str],
           seeds: Sequence[int]) -> List[Mapping[str, Any]]:
    """The records of the configured study (stale records of other sources, paradigms or seeds left out)."""
    return [r for r in records if r["source"] in sources and r["paradigm"] in paradigms and int(r["seed"]) in seeds]


def source1_frame(records: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> pd.DataFrame:
    """The long frame (``mtwork.report.records``) of source 1: one group of rows, the task set ``tasks``."""
    return study_frame(records, [tuple(tasks)], source1_costs)


def write_tables(
    params: Mapping[str, Any], metrics_dir: Path, runs_dir: Path, out_dir: Path, figures_dir: Path
) -> List[Path]:
    """Render every source-1 table and figure; returns the files written."""
    from mtwork.report.figures import plot_delta_m, plot_training_curves

    metrics_dir, out_dir, figures_dir = Path(metrics_dir), Path(out_dir), Path(figures_dir)
    sources = params["checkpoints"]["sources"]
    train = params["train"]
    tasks = train["tasks"]
    all_records = read_records(metrics_dir)
    if not all_records:
        raise FileNotFoundError(f"no metrics JSON files in {metrics_dir}")
    records = select(all_records, sources, train["paradigms"], train["seeds"])
    if not records:
        raise ValueError(f"{metrics_dir}: no metrics record of the configured sources {list(sources)}, paradigms "
                         f"{list(train['paradigms'])} and seeds {list(train['seeds'])}")
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    domain = params["data"]["source_domain"]
    higher = primary_directions(records, tasks)
    frame = source1_frame(records, tasks)
    title = f"Multi-task transfer on {domain} (val)"
    table = build_table(frame, mtl_spec(title, sources, metric_directions(records)))
    written = write_table(table, out_dir, "mtl", caption(table, tasks, higher))
    figures = [figures_dir / "training_curves.png"]
    if (frame["paradigm"] != SINGLE_TASK).any():
        figures.append(figures_dir / "delta_m.png")
        plot_delta_m(frame, figures[-1], f"Δm by checkpoint source and paradigm ({domain} val)")
    for dg_domain in params["data"]["dg_domains"]:
        dg_records = select(read_records(metrics_dir / "dg" / dg_domain), sources, train["paradigms"], train["seeds"])
        if not dg_records:
            raise FileNotFoundError(f"data.dg_domains lists '{dg_domain}' but {metrics_dir / 'dg' / dg_domain} holds "
                                    "no metrics of the configured study (dvc.yaml evaluates only the first DG domain: "
                                    "run more through Snakemake)")
        dg_title = f"Domain generalization: trained on {domain}, evaluated on {dg_domain} without training there"
        dg_spec = mtl_spec(dg_title, sources, metric_directions(dg_records))
        dg_table = build_table(source1_frame(dg_records, tasks), dg_spec)
        written += write_table(dg_table, out_dir, f"dg_{dg_domain}", caption(dg_table, tasks, higher))
    plot_training_curves(Path(runs_dir), [r["run"] for r in records], figures[0])
    print(f"[mtwork tables] wrote {', '.join(p.name for p in written)} and {', '.join(str(f) for f in figures)}")
    return written
