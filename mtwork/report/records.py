"""Metrics records -> one long pandas DataFrame (a line per table row, seed and value) -> seed statistics.

Both lines of work read their metrics JSON records (``results/metrics/...``, one per run and domain) into
the same long frame, built by ``study_frame``:

    columns: *ROW (the row keys: source, domain, tasks, paradigm, ...), seed, run, column, value, note

``column`` names what ``value`` is: ``<task>_<metric>`` for every numeric metric of the record (per-class
entries such as ``iou/car`` are left out), ``delta_m`` (Δm of the run against the single-task runs of the
same source, domain and seed; 0 on the single-task row, NaN with a ``note`` where it is undefined), and
the cost columns the caller's ``costs`` function reads from the record. The single-task runs of a source
form one row per task set: each task's metrics come from its own run, costs are summed over the task
set's runs of a seed (only for seeds with a run of every task). ``stats.summarize`` then aggregates over
seeds: group by ``ROW + ("column",)`` -> mean, std, n, 95 % interval.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from mtwork.evaluate import PRIMARY_METRIC, delta_m
from mtwork.report import stats

PARADIGM_ORDER = ("single_task", "pretrain_finetune", "pretrain_adapt_finetune", "pretrain_adapt_finetune_lv", "lora")
PARADIGM_LABEL = {
    "single_task": "single-task",
    "pretrain_finetune": "pretrain-finetune",
    "pretrain_adapt_finetune": "pretrain-adapt-finetune",
    "pretrain_adapt_finetune_lv": "pretrain-adapt-finetune + LV-Adapter",
    "lora": "LoRA (peft)",
}
SINGLE_TASK = "single_task"


@dataclass(frozen=True)
class RowKey:
    """A record field that identifies a table row: records that differ in it are never averaged together.

    ``path``: where the field sits in the metrics record, dotted for nested keys (default: ``name``);
    records without it read ``default``, so older records stay readable when a key is added. Lists are
    joined with "-", other non-scalar values written as JSON, so every key value is hashable text.
    """

    name: str
    path: Optional[str] = None
    default: str = ""

    def read(self, rec: Mapping[str, Any]) -> str:
        value: Any = rec
        for part in (self.path or self.name).split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            return self.default
        if isinstance(value, (list, tuple)):
            return "-".join(str(v) for v in value)
        if isinstance(value, Mapping):
            return json.dumps(value, sort_keys=True)
        return str(value)


#: The one list of the fields that identify a table row, for both lines of work. A new design axis of
#: the runs (e.g. which blocks the adapted stage trains, where adapters sit) is one more RowKey here;
#: a row key that takes several values within one table is shown as a column of its own.
ROW_KEYS: Tuple[RowKey, ...] = (
    RowKey("source"),
    RowKey("domain"),
    RowKey("tasks"),  # a single-task run counts towards the single-task row of every task set holding its task
    RowKey("paradigm"),
    # where source 1's multi-scale adapters sit ("" for methods without them): a column when a table
    # compares both placements (model.adapter_placement: [outputs, stages])
    RowKey("adapter_placement"),
    # what the record measures (source 2's transfer tables): mtl, dg (a run evaluated where it never
    # trained: also the "source only" rows), zeroshot, uda, oracle (mtwork.protocols)
    RowKey("protocol"),
)
ROW: Tuple[str, ...] = tuple(k.name for k in ROW_KEYS)
#: What a multi-task run shares with the single-task runs that are its Δm baselines (besides the seed).
BASELINE_KEYS: Tuple[str, ...] = ("source", "domain")
DELTA_M = "delta_m"
FRAME_COLUMNS = ROW + ("seed", "run", "column", "value", "note")


def read_records(folder: Path) -> List[Dict[str, Any]]:
    """All metrics JSON files directly inside ``folder`` (not recursive), sorted by file name.

    Each record gets a ``_path`` key (its file) for error messages.
    """
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        for key in ("run", "source", "paradigm", "tasks", "seed", "metrics", "higher_is_better", "train"):
            if key not in rec:
                raise ValueError(f"{path}: metrics record has no '{key}'")
        rec["_path"] = str(path)
        records.append(rec)
    return records


def task_metrics(rec: Mapping[str, Any], task: str) -> Iterator[Tuple[str, float]]:
    """(column, value) of every numeric metric of ``task`` in the record (per-class entries left out)."""
    for metric, value in rec["metrics"][task].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and "/" not in metric:
            yield f"{task}_{metric}", float(value)


def metric_directions(records: Sequence[Mapping[str, Any]]) -> Dict[str, bool]:
    """{'<task>_<metric>': higher is better} as the records declare it (from each task's metric definitions)."""
    out: Dict[str, bool] = {}
    for rec in records:
        for task, metrics in rec.get("higher_is_better", {}).items():
            for metric, higher in metrics.items():
                out[f"{task}_{metric}"] = bool(higher)
    return out


def primary_directions(records: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> Dict[str, bool]:
    """{task: its primary metric is higher-is-better} (True where no record says)."""
    directions = metric_directions(records)
    return {t: directions.get(f"{t}_{PRIMARY_METRIC[t]}", True) for t in tasks}


def _where(rec: Mapping[str, Any]) -> str:
    return rec.get("_path") or f"run '{rec.get('run')}'"


def study_frame(
    records: Sequence[Mapping[str, Any]],
    task_sets: Sequence[Sequence[str]],
    costs: Callable[[Mapping[str, Any]], Mapping[str, Optional[float]]],
    primary: Mapping[str, str] = PRIMARY_METRIC,
) -> pd.DataFrame:
    """The long frame (module docstring) of ``records`` for the rows of ``task_sets``.

    ``task_sets``: the multi-task task sets the tables show (each one group of rows); a multi-task
    record whose tasks are none of them, and a single-task record whose task is in none, is left out.
    ``costs(rec)``: the record's cost columns ({column: value or None}); None values are skipped.
    Raises ValueError naming the files for two records of the same row and seed, or for a single-task
    baseline that more than one record could be.
    """
    lines: List[Tuple[Any, ...]] = []

    def emit(key: Mapping[str, str], seed: int, run: str, column: str, value: float, note: str = "") -> None:
        lines.append(tuple(key[k] for k in ROW) + (seed, run, column, value, note))

    sets = [tuple(s) for s in task_sets]
    by_set = {frozenset(s): s for s in sets}
    singles: Dict[Tuple[Tuple[str, ...], str, int], Mapping[str, Any]] = {}  # (baseline key, task, seed) -> rec
    single_rows: Dict[Tuple[Tuple[str, ...], int], List[Mapping[str, Any]]] = {}  # (row key, seed) -> records
    seen: Dict[Tuple[Tuple[str, ...], int], Mapping[str, Any]] = {}
    multis: List[Tuple[Dict[str, str], Mapping[str, Any]]] = []
    for rec in records:
        key = {k.name: k.read(rec) for k in ROW_KEYS}
        seed = int(rec["seed"])
        ident = (tuple(key[k] for k in ROW), seed)
        if ident in seen:
            raise ValueError(f"{_where(rec)} and {_where(seen[ident])}: two records of the same row "
                             f"({', '.join(f'{k}={key[k]}' for k in ROW)}) and seed {seed}; if they differ in "
                             "another field, add it to ROW_KEYS in mtwork/report/records.py")
        seen[ident] = rec
        if rec["paradigm"] == SINGLE_TASK:
            if len(rec["tasks"]) != 1:
                raise ValueError(f"{_where(rec)}: a single_task run must have exactly one task, got {rec['tasks']}")
            task = rec["tasks"][0]
            base = (tuple(key[k] for k in BASELINE_KEYS), task, seed)
            if base in singles:
                raise ValueError(f"{_where(rec)} and {_where(singles[base])}: two single-task runs could be the "
                                 f"Δm baseline of task '{task}', seed {seed}")
            singles[base] = rec
            for task_set in sets:
                if task in task_set:
                    row = dict(key, tasks="-".join(task_set))
                    single_rows.setdefault((tuple(row[k] for k in ROW), seed), []).append(rec)
        elif frozenset(rec["tasks"]) in by_set:
            multis.append((dict(key, tasks="-".join(by_set[frozenset(rec["tasks"])])), rec))

    for (row_id, seed), recs in single_rows.items():
        key = dict(zip(ROW, row_id))
        task_set = key["tasks"].split("-")
        for rec in recs:
            for column, value in task_metrics(rec, rec["tasks"][0]):
                emit(key, seed, rec["run"], column, value)
        if {r["tasks"][0] for r in recs} == set(task_set):  # Δm and costs only where the row is complete
            emit(key, seed, recs[0]["run"], DELTA_M, 0.0)
            summed: Dict[str, float] = {}
            for rec in recs:
                for column, value in costs(rec).items():
                    if value is not None:
                        summed[column] = summed.get(column, 0.0) + float(value)
            for column, value in summed.items():
                emit(key, seed, recs[0]["run"], column, value)

    for key, rec in multis:
        seed = int(rec["seed"])
        task_set = key["tasks"].split("-")
        for task in task_set:
            if task not in rec["metrics"]:
                raise ValueError(f"{_where(rec)}: no metrics for task '{task}'")
            for column, value in task_metrics(rec, task):
                emit(key, seed, rec["run"], column, value)
        base_key = tuple(key[k] for k in BASELINE_KEYS)
        missing = [t for t in task_set if (base_key, t, seed) not in singles]
        if missing:
            emit(key, seed, rec["run"], DELTA_M, float("nan"), f"no single-task run of {', '.join(missing)} for seed {seed}")
        else:
            try:
                directions = {t: bool(rec["higher_is_better"][t][primary[t]]) for t in task_set}
            except KeyError as exc:
                raise ValueError(f"{_where(rec)}: higher_is_better has no entry {exc} for a primary metric") from None
            baselines = {t: singles[(base_key, t, seed)]["metrics"][t] for t in task_set}
            unscored = [t for t in task_set
                        if rec["metrics"][t].get(primary[t]) is None or baselines[t].get(primary[t]) is None]
            if unscored:  # a domain without labels of a task: its score, and so Δm, is undefined
                emit(key, seed, rec["run"], DELTA_M, float("nan"),
                     f"no {', '.join(unscored)} score on this domain for seed {seed}")
                continue
            try:
                value = delta_m({t: rec["metrics"][t] for t in task_set}, baselines, directions, primary)
                emit(key, seed, rec["run"], DELTA_M, value)
            except ZeroDivisionError as exc:  # a baseline scored 0: the relative change is undefined
                emit(key, seed, rec["run"], DELTA_M, float("nan"), f"{exc} for seed {seed}")
        for column, value in costs(rec).items():
            if value is not None:
                emit(key, seed, rec["run"], column, float(value))
    return pd.DataFrame(lines, columns=list(FRAME_COLUMNS))


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Seed statistics of the long frame: one line per (row, column); see ``stats.summarize``."""
    return stats.summarize(frame, ROW + ("column",))


def row_runs(frame: pd.DataFrame) -> Dict[Tuple[str, ...], List[str]]:
    """Every row's runs (first-appearance order) keyed by its ``ROW`` values."""
    return {k: list(dict.fromkeys(g["run"])) for k, g in frame.groupby(list(ROW), sort=False)}


def row_seeds(frame: pd.DataFrame) -> Dict[Tuple[str, ...], List[int]]:
    """Every row's seeds (sorted) keyed by its ``ROW`` values."""
    return {k: sorted(set(int(s) for s in g["seed"])) for k, g in frame.groupby(list(ROW), sort=False)}


def row_notes(frame: pd.DataFrame) -> Dict[Tuple[str, ...], str]:
    """Why Δm is undefined, per row that has such a seed (the first reason)."""
    noted = frame[frame["note"] != ""]
    return {k: g["note"].iloc[0] for k, g in noted.groupby(list(ROW), sort=False)}
