"""Reading metrics records and folding seeds and single-task runs into table rows."""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mtwork.evaluate import PRIMARY_METRIC, delta_m

PARADIGM_ORDER = ("single_task", "pretrain_finetune", "pretrain_adapt_finetune", "pretrain_adapt_finetune_lv", "lora")
PARADIGM_LABEL = {
    "single_task": "single-task",
    "pretrain_finetune": "pretrain-finetune",
    "pretrain_adapt_finetune": "pretrain-adapt-finetune",
    "pretrain_adapt_finetune_lv": "pretrain-adapt-finetune + LV-Adapter",
    "lora": "LoRA (peft)",
}


def read_records(folder: Path) -> List[Dict[str, Any]]:
    """All metrics JSON files directly inside ``folder`` (not recursive), sorted by file name."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return records


@dataclass
class Stat:
    """Mean and sample standard deviation over seeds (std is None with one seed)."""

    values: List[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass
class Row:
    source: str
    paradigm: str
    cells: Dict[Tuple[str, str], Stat] = field(default_factory=dict)  # (task, metric) -> Stat
    delta_m: Optional[Stat] = None
    trainable_params: Optional[int] = None
    adapt_trainable_params: Optional[int] = None
    train_seconds: Optional[Stat] = None
    runs: List[str] = field(default_factory=list)
    delta_m_undefined: bool = False  # some seed's single-task baseline metric was 0


def _directions(records: Sequence[Mapping[str, Any]]) -> Dict[str, bool]:
    directions: Dict[str, bool] = {}
    for rec in records:
        for task, metrics in rec.get("higher_is_better", {}).items():
            directions[task] = metrics[PRIMARY_METRIC[task]]
    return directions


def build_rows(records: Sequence[Mapping[str, Any]], sources: Sequence[str], tasks: Sequence[str]) -> List[Row]:
    """One row per (source, paradigm); the three single-task runs of a source form its single-task row."""
    by_key: Dict[Tuple[str, str, Tuple[str, ...], int], Mapping[str, Any]] = {}
    for rec in records:
        by_key[(rec["source"], rec["paradigm"], tuple(rec["tasks"]), rec["seed"])] = rec
    directions = _directions(records)
    seeds = sorted({rec["seed"] for rec in records})
    rows: List[Row] = []
    for source in sources:
        # single-task baselines per seed: {seed: {task: metrics}}
        baselines: Dict[int, Dict[str, Mapping[str, float]]] = {}
        single = Row(source, "single_task")
        per_seed_time: Dict[int, float] = {}
        params_sum = 0
        for seed in seeds:
            for task in tasks:
                rec = by_key.get((source, "single_task", (task,), seed))
                if rec is None:
                    continue
                baselines.setdefault(seed, {})[task] = rec["metrics"][task]
                single.runs.append(rec["run"])
                per_seed_time[seed] = per_seed_time.get(seed, 0.0) + float(rec["train"]["seconds"] or 0.0)
                if seed == seeds[0]:
                    params_sum += _final_trainable(rec)
                for metric, value in rec["metrics"][task].items():
                    if isinstance(value, (int, float)) and "/" not in metric:
                        single.cells.setdefault((task, metric), Stat([])).values.append(float(value))
        if single.runs:
            single.trainable_params = params_sum
            single.train_seconds = Stat(list(per_seed_time.values()))
            single.delta_m = Stat([0.0] * len(baselines))
            rows.append(single)
        for paradigm in PARADIGM_ORDER[1:]:
            row = Row(source, paradigm)
            for seed in seeds:
                rec = by_key.get((source, paradigm, tuple(tasks), seed))
                if rec is None:
                    continue
                row.runs.append(rec["run"])
                for task, metrics in rec["metrics"].items():
                    for metric, value in metrics.items():
                        if isinstance(value, (int, float)) and "/" not in metric:
                            row.cells.setdefault((task, metric), Stat([])).values.append(float(value))
                if seed in baselines and all(t in baselines[seed] for t in rec["metrics"]):
                    try:
                        dm = delta_m(rec["metrics"], baselines[seed], directions)
                    except ZeroDivisionError:
                        # a single-task baseline scored 0: the relative change is undefined, shown as "–"
                        row.delta_m_undefined = True
                    else:
                        row.delta_m = row.delta_m or Stat([])
                        row.delta_m.values.append(dm)
                row.train_seconds = row.train_seconds or Stat([])
                row.train_seconds.values.append(float(rec["train"]["seconds"] or 0.0))
                row.trainable_params = _final_trainable(rec)
                stages = rec["train"].get("trainable_params") or {}
                row.adapt_trainable_params = stages.get("adapt")
            if row.delta_m_undefined:
                row.delta_m = None  # a mean over only the seeds where it is defined would mislead
            if row.runs:
                rows.append(row)
    return rows


def _final_trainable(rec: Mapping[str, Any]) -> int:
    """Trainable parameters of the run's last stage (the finetune stage trains everything)."""
    stages = rec["train"].get("trainable_params") or {}
    return int(stages.get("finetune", max(stages.values(), default=0)))


def baseline_runs(rows: Sequence[Row]) -> List[str]:
    return [run for row in rows if row.paradigm == "single_task" for run in row.runs]
