"""Source 2's report: ViT adapters (TAA, TSN, TROA) on a frozen Swin-V2, dense tasks on SynthDrive.

``write_vit_tables`` renders, from the metrics records in ``results/metrics/vit`` and the run logs in
``models/vit/<run>/log.json``:

* ``vit_mtl.{md,tex,csv}``: one group of rows per task set present (S-D, S-D-N, S-D-N-E): the
  single-task row (each task's metrics from its own single-task run), then every paradigm of
  ``mtwork.plan.VIT_PARADIGMS`` present on that task set (the ablations and balancers are rows of the
  S-D-N-E group). Mean ± std over seeds; per column and group the best value is bold and the second
  underlined (direction respected; Δm ranked among the multi-task rows only).
* ``vit_params.{md,tex,csv}``: total / trainable parameters, train time per epoch and adapter checkpoint
  size of every method on the full task set (the single-task row sums its per-task runs).
  Checkpoint sizes are in MB = 10^6 bytes (SI), not MiB.
* ``<figures_dir>/vit_affinity.png`` and ``vit_task_weights.png``: TROA's final affinity matrix and its
  task weights per epoch, from the VTAGML run(s) on the full task set (mean over seeds); skipped (no file)
  when there is no such run.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from mtwork.evaluate import PRIMARY_METRIC, delta_m
from mtwork.io import atomic_path, write_text
from mtwork.plan import VIT_PARADIGMS
from mtwork.report.records import Stat
from mtwork.report.tables import format_stat, render_latex, render_markdown

#: Source 2's tasks in table order, with the initials used for task-set labels.
VIT_TASKS: Sequence[str] = ("semseg", "depth", "normals", "edges")
TASK_INITIAL = {"semseg": "S", "depth": "D", "normals": "N", "edges": "E"}

VIT_PARADIGM_LABEL = {
    "single_task": "Single-task",
    "full_finetune": "Full finetuning",
    "frozen_multiscale_adapter": "Frozen + multi-scale adapter (source 1)",
    "vtagml": "VTAGML (TAA+TSN+TROA)",
    "vtagml_no_taa": "– TAA",
    "vtagml_no_tsn": "– TSN",
    "vtagml_no_troa": "– TROA (equal weights)",
    "vtagml_uncertainty": "Uncertainty weighting",
    "vtagml_dwa": "DWA",
}

# (task, metric, header, higher is better, digits)
VIT_METRIC_COLUMNS: Sequence[Tuple[str, str, str, bool, int]] = (
    ("semseg", "miou", "Seg mIoU ↑", True, 1),
    ("depth", "rmse", "Depth RMSE ↓", False, 3),
    ("depth", "delta1", "Depth δ<1.25 ↑", True, 1),
    ("normals", "mean_angle", "Normals mean ° ↓", False, 1),
    ("normals", "within_11_25", "Normals <11.25° ↑", True, 1),
    ("edges", "edge_l1", "Edge L1 ↓", False, 4),
)
DELTA_HEADER = "Δm (%) ↑"
DELTA_DIGITS = 2
MB = 1e6  # adapter checkpoint sizes: MB = 10^6 bytes

MTL_TITLE = "Multi-task dense prediction on SynthDrive with a frozen Swin-V2"
PARAMS_TITLE = "Parameters, training cost and checkpoint size on SynthDrive with a frozen Swin-V2"


@dataclass
class VitRow:
    task_set: Tuple[str, ...]
    paradigm: str
    cells: Dict[Tuple[str, str], Stat] = field(default_factory=dict)  # (task, metric) -> Stat over seeds
    delta_m: Optional[Stat] = None
    delta_m_note: str = ""  # why delta_m is undefined ("" when defined)
    trainable_params: Optional[int] = None
    total_params: Optional[int] = None
    seconds_per_epoch: Optional[Stat] = None
    adapter_bytes: Optional[Stat] = None
    runs: List[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return VIT_PARADIGM_LABEL[self.paradigm]


def task_set_label(tasks: Sequence[str]) -> str:
    return "-".join(TASK_INITIAL.get(t, t[:1].upper()) for t in tasks)


def _canonical(tasks: Sequence[str]) -> Tuple[str, ...]:
    return tuple(sorted(tasks, key=VIT_TASKS.index))


# ---- reading ------------------------------------------------------------------------------------


def read_vit_records(metrics_dir: Path, source: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every ``*.json`` record directly in ``metrics_dir``, validated; each gets a ``_path`` key.

    Raises FileNotFoundError when the folder holds none, ValueError naming the file for invalid JSON, an
    unknown paradigm or task, another source than ``source`` (when given), or a duplicate run.
    """
    metrics_dir = Path(metrics_dir)
    paths = sorted(metrics_dir.glob("*.json")) if metrics_dir.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"no source-2 (vit) metrics records (*.json) in {metrics_dir}")
    records: List[Dict[str, Any]] = []
    seen: Dict[Tuple[str, Tuple[str, ...], int], Path] = {}
    for path in paths:
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        for key in ("run", "source", "paradigm", "tasks", "seed", "metrics", "higher_is_better", "train"):
            if key not in rec:
                raise ValueError(f"{path}: metrics record has no '{key}'")
        if rec["paradigm"] not in VIT_PARADIGMS:
            raise ValueError(f"{path}: unknown source-2 paradigm '{rec['paradigm']}' (known: {', '.join(VIT_PARADIGMS)})")
        unknown = [t for t in rec["tasks"] if t not in VIT_TASKS]
        if unknown or not rec["tasks"]:
            raise ValueError(f"{path}: tasks {rec['tasks']} are not source-2 tasks ({', '.join(VIT_TASKS)})")
        if rec["paradigm"] == "single_task" and len(rec["tasks"]) != 1:
            raise ValueError(f"{path}: a single_task run must have exactly one task, got {rec['tasks']}")
        if source is not None and rec["source"] != source:
            raise ValueError(f"{path}: source '{rec['source']}' is not the vit source '{source}'")
        missing = [t for t in rec["tasks"] if t not in rec["metrics"] or t not in rec["higher_is_better"]]
        if missing:
            raise ValueError(f"{path}: no metrics / higher_is_better for tasks {missing}")
        key = (rec["paradigm"], _canonical(rec["tasks"]), int(rec["seed"]))
        if key in seen:
            raise ValueError(f"{path}: duplicate run (paradigm, tasks, seed) = {key}, also in {seen[key]}")
        seen[key] = path
        rec["_path"] = str(path)
        records.append(rec)
    return records


def _trainable(rec: Mapping[str, Any]) -> int:
    stages = rec["train"].get("trainable_params") or {}
    if isinstance(stages, (int, float)):
        return int(stages)
    if not stages:
        raise ValueError(f"{rec['_path']}: train.trainable_params is empty")
    return int(stages.get("train", max(stages.values())))


def _numeric_metrics(metrics: Mapping[str, Any]):
    for metric, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield metric, float(value)


# ---- rows ---------------------------------------------------------------------------------------


def _task_sets(records: Sequence[Mapping[str, Any]]) -> List[Tuple[str, ...]]:
    """Multi-task task sets present, smallest first (S-D, S-D-N, S-D-N-E); with no multi-task run at all,
    the set of tasks the single-task runs cover."""
    sets = {_canonical(r["tasks"]) for r in records if r["paradigm"] != "single_task"}
    if not sets:
        sets = {_canonical({t for r in records for t in r["tasks"]})}
    return sorted(sets, key=lambda s: (len(s), [VIT_TASKS.index(t) for t in s]))


def _single_task_row(task_set: Tuple[str, ...], singles: Mapping[Tuple[str, int], Mapping[str, Any]],
                     seeds: Sequence[int]) -> Optional[VitRow]:
    row = VitRow(task_set, "single_task")
    dms, per_epoch, sizes = [], [], []
    for seed in seeds:
        recs = [singles.get((t, seed)) for t in task_set]
        for task, rec in zip(task_set, recs):
            if rec is None:
                continue
            row.runs.append(rec["run"])
            for metric, value in _numeric_metrics(rec["metrics"][task]):
                row.cells.setdefault((task, metric), Stat([])).values.append(value)
        if all(r is not None for r in recs):  # costs summed over the tasks, for seeds with every task
            dms.append(0.0)
            per_epoch.append(sum(float(r["train"]["seconds_per_epoch"]) for r in recs))
            sizes.append(sum(float(r["train"]["adapter_bytes"]) for r in recs))
            if row.trainable_params is None:
                row.trainable_params = sum(_trainable(r) for r in recs)
                row.total_params = sum(int(r["train"]["total_params"]) for r in recs)
    if not row.runs:
        return None
    row.delta_m = Stat(dms) if dms else None
    row.seconds_per_epoch = Stat(per_epoch) if per_epoch else None
    row.adapter_bytes = Stat(sizes) if sizes else None
    if not dms:
        row.delta_m_note = "no seed has a single-task run of every task"
    return row


def _multi_task_row(task_set: Tuple[str, ...], paradigm: str, recs: Sequence[Mapping[str, Any]],
                    singles: Mapping[Tuple[str, int], Mapping[str, Any]]) -> VitRow:
    row = VitRow(task_set, paradigm)
    dms: List[float] = []
    for rec in sorted(recs, key=lambda r: r["seed"]):
        seed = int(rec["seed"])
        row.runs.append(rec["run"])
        for task in task_set:
            for metric, value in _numeric_metrics(rec["metrics"][task]):
                row.cells.setdefault((task, metric), Stat([])).values.append(value)
        missing = [t for t in task_set if (t, seed) not in singles]
        if missing:
            row.delta_m_note = row.delta_m_note or f"no single-task run of {', '.join(missing)} for seed {seed}"
        else:
            metrics = {t: rec["metrics"][t] for t in task_set}
            baselines = {t: singles[(t, seed)]["metrics"][t] for t in task_set}
            directions = {t: bool(rec["higher_is_better"][t][PRIMARY_METRIC[t]]) for t in task_set}
            try:
                dms.append(delta_m(metrics, baselines, directions))
            except ZeroDivisionError as exc:
                row.delta_m_note = row.delta_m_note or str(exc)
        row.seconds_per_epoch = row.seconds_per_epoch or Stat([])
        row.seconds_per_epoch.values.append(float(rec["train"]["seconds_per_epoch"]))
        row.adapter_bytes = row.adapter_bytes or Stat([])
        row.adapter_bytes.values.append(float(rec["train"]["adapter_bytes"]))
        if row.trainable_params is None:  # first seed's counts (identical across seeds)
            row.trainable_params = _trainable(rec)
            row.total_params = int(rec["train"]["total_params"])
    # a mean over only the seeds where delta_m is defined would mislead: undefined for one seed -> "–"
    row.delta_m = None if row.delta_m_note else Stat(dms)
    return row


def build_vit_rows(records: Sequence[Mapping[str, Any]]) -> List[VitRow]:
    """Rows grouped by task set (smallest first); in a group the single-task row, then VIT_PARADIGMS order."""
    singles = {(r["tasks"][0], int(r["seed"])): r for r in records if r["paradigm"] == "single_task"}
    seeds = sorted({int(r["seed"]) for r in records})
    rows: List[VitRow] = []
    for task_set in _task_sets(records):
        single = _single_task_row(task_set, singles, seeds)
        if single is not None:
            rows.append(single)
        for paradigm in VIT_PARADIGMS:
            if paradigm == "single_task":
                continue
            recs = [r for r in records if r["paradigm"] == paradigm and _canonical(r["tasks"]) == task_set]
            if recs:
                rows.append(_multi_task_row(task_set, paradigm, recs, singles))
    return rows


# ---- rendering ----------------------------------------------------------------------------------


def _rank(values: Sequence[Optional[float]], higher: bool, digits: int) -> List[str]:
    """'best' / 'second' / '' per value; compared at the displayed precision, ties share a rank."""
    shown = [None if v is None else round(v, digits) for v in values]
    distinct = sorted({v for v in shown if v is not None}, reverse=higher)
    marks = []
    for v in shown:
        if v is not None and v == distinct[0]:
            marks.append("best")
        elif v is not None and len(distinct) > 1 and v == distinct[1]:
            marks.append("second")
        else:
            marks.append("")
    return marks


def _group_marks(rows: Sequence[VitRow], value: Callable[[VitRow], Optional[float]], higher: bool,
                 digits: int) -> List[str]:
    """Marks computed within each task-set group separately."""
    marks = [""] * len(rows)
    for task_set in dict.fromkeys(r.task_set for r in rows):
        idx = [i for i, r in enumerate(rows) if r.task_set == task_set]
        for i, mark in zip(idx, _rank([value(rows[i]) for i in idx], higher, digits)):
            marks[i] = mark
    return marks


def _mean(stat: Optional[Stat]) -> Optional[float]:
    return stat.mean if stat is not None and stat.values else None


def _params_text(n: Optional[int]) -> str:
    return "–" if n is None else f"{n / 1e6:.2f} M"


def mtl_cells(rows: Sequence[VitRow]) -> Tuple[List[str], List[List[Tuple[str, str]]]]:
    headers = ["Tasks", "Method"] + [h for _, _, h, _, _ in VIT_METRIC_COLUMNS] + [DELTA_HEADER, "Trainable params"]
    columns: List[Tuple[Callable[[VitRow], Optional[Stat]], bool, int, bool]] = [
        ((lambda r, t=t, m=m: r.cells.get((t, m))), higher, digits, False)
        for t, m, _, higher, digits in VIT_METRIC_COLUMNS
    ]
    columns.append(((lambda r: r.delta_m), True, DELTA_DIGITS, True))
    marks = [
        _group_marks(rows, lambda r, g=get, d=is_delta: None if d and r.paradigm == "single_task" else _mean(g(r)),
                     higher, digits)
        for get, higher, digits, is_delta in columns
    ]
    body = []
    for i, row in enumerate(rows):
        cells = [(task_set_label(row.task_set), ""), (row.label, "")]
        for (get, _, digits, _), column_marks in zip(columns, marks):
            cells.append((format_stat(get(row), digits), column_marks[i]))
        cells.append((_params_text(row.trainable_params), ""))
        body.append(cells)
    return headers, body


def delta_m_definition() -> str:
    terms = ", ".join(
        f"{t} {PRIMARY_METRIC[t]} (l_t = {0 if higher else 1})"
        for t, higher in (("semseg", True), ("depth", False), ("normals", False), ("edges", False))
    )
    return (
        "Δm (Maninis et al., 2019) = mean over the row's tasks of (-1)^l_t (M_t - M_single,t) / M_single,t x 100, "
        f"with one primary metric per task: {terms}; l_t = 1 when lower is better, so a lower error than the "
        "single-task run counts as a gain. Each run is measured against the single-task runs of the same "
        "checkpoint source and seed, then averaged over seeds"
    )


def mtl_caption(rows: Sequence[VitRow], seeds: Sequence[int]) -> str:
    baselines = sorted({run for r in rows if r.paradigm == "single_task" for run in r.runs})
    notes = [f"{task_set_label(r.task_set)} {r.label}: {r.delta_m_note}" for r in rows
             if r.delta_m_note and r.paradigm != "single_task"]
    text = (
        f"{MTL_TITLE}. Mean ± std over seeds {list(seeds)}. {delta_m_definition()}. "
        f"Single-task (baseline) runs: {', '.join(baselines) or 'none'}. "
        "The single-task row takes each task's metrics from its own run. Task sets: S = semantic segmentation, "
        "D = depth, N = surface normals, E = edges; '–': the task is not in the row's task set. "
        "Per column and task set, bold: best; underlined: second best (Δm ranked among the multi-task rows only)."
    )
    if notes:
        text += " Δm '–': " + "; ".join(notes) + "."
    return text


def mtl_csv(rows: Sequence[VitRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["task_set", "paradigm", "method", "n_runs"]
    for task, metric, _, _, _ in VIT_METRIC_COLUMNS:
        header += [f"{task}_{metric}_mean", f"{task}_{metric}_std"]
    header += ["delta_m_mean", "delta_m_std", "trainable_params", "runs"]
    writer.writerow(header)
    for row in rows:
        line: List[Any] = [task_set_label(row.task_set), row.paradigm, row.label, len(row.runs)]
        for task, metric, _, _, _ in VIT_METRIC_COLUMNS:
            stat = row.cells.get((task, metric))
            line += [_num(_mean(stat)), _num(stat.std if stat else None)]
        line += [_num(_mean(row.delta_m)), _num(row.delta_m.std if row.delta_m else None),
                 "" if row.trainable_params is None else row.trainable_params, " ".join(row.runs)]
        writer.writerow(line)
    return buf.getvalue()


def _num(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.6g}"


PARAMS_HEADERS = ["Tasks", "Method", "Total params", "Trainable params", "Train time / epoch (s)", "Adapter ckpt (MB)"]


def params_cells(rows: Sequence[VitRow]) -> Tuple[List[str], List[List[Tuple[str, str]]]]:
    """Lower is better for trainable params, time and checkpoint size: bold the least, underline the next."""
    trainable = _rank([None if r.trainable_params is None else float(r.trainable_params) for r in rows], False, 0)
    seconds = _rank([_mean(r.seconds_per_epoch) for r in rows], False, 1)
    sizes = _rank([None if _mean(r.adapter_bytes) is None else _mean(r.adapter_bytes) / MB for r in rows], False, 2)
    body = []
    for i, row in enumerate(rows):
        size = None if row.adapter_bytes is None else Stat([b / MB for b in row.adapter_bytes.values])
        body.append([
            (task_set_label(row.task_set), ""), (row.label, ""),
            (_params_text(row.total_params), ""), (_params_text(row.trainable_params), trainable[i]),
            (format_stat(row.seconds_per_epoch, 1), seconds[i]), (format_stat(size, 2), sizes[i]),
        ])
    return PARAMS_HEADERS, body


def params_caption(rows: Sequence[VitRow], seeds: Sequence[int]) -> str:
    return (
        f"{PARAMS_TITLE}. Every method on the task set {task_set_label(rows[0].task_set)}; the single-task row sums "
        "its per-task runs (one model per task). Parameters in millions (M = 10^6), counted on the first seed's "
        f"run; train time per epoch and adapter checkpoint size (MB = 10^6 bytes) as mean ± std over seeds {list(seeds)}. "
        "Bold: least; underlined: second least."
    )


def params_csv(rows: Sequence[VitRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["task_set", "paradigm", "method", "total_params", "trainable_params",
                     "seconds_per_epoch_mean", "seconds_per_epoch_std", "adapter_bytes_mean", "adapter_mb_mean", "runs"])
    for row in rows:
        size = _mean(row.adapter_bytes)
        writer.writerow([
            task_set_label(row.task_set), row.paradigm, row.label,
            "" if row.total_params is None else row.total_params,
            "" if row.trainable_params is None else row.trainable_params,
            _num(_mean(row.seconds_per_epoch)), _num(row.seconds_per_epoch.std if row.seconds_per_epoch else None),
            _num(size), _num(None if size is None else size / MB), " ".join(row.runs),
        ])
    return buf.getvalue()


# Unicode and math characters render_latex passes through; replaced in order ("^" first: the
# degree sign's replacement brings one in).
_LATEX_SYMBOLS = (
    ("^", r"\textasciicircum{}"),
    ("δ", r"$\delta$"),
    ("<", r"\textless{}"),
    ("°", r"$^\circ$"),
    ("↑", r"$\uparrow$"),
    ("↓", r"$\downarrow$"),
)


def latex_symbols(tex: str) -> str:
    """Make the rendered table compile under pdflatex: arrows, degrees, delta, '<' and '^' as LaTeX."""
    for char, replacement in _LATEX_SYMBOLS:
        tex = tex.replace(char, replacement)
    return tex


def _write_set(out_dir: Path, stem: str, title: str, headers, body, text_caption: str, csv_text: str) -> List[Path]:
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.tex", out_dir / f"{stem}.csv"]
    write_text(paths[0], f"## {title}\n\n" + render_markdown(headers, body, text_caption))
    write_text(paths[1], latex_symbols(render_latex(headers, body, text_caption, f"tab:{stem}")))
    write_text(paths[2], csv_text)
    return paths


# ---- figures ------------------------------------------------------------------------------------


def _read_log(runs_dir: Path, run_id: str) -> Dict[str, Any]:
    path = Path(runs_dir) / run_id / "log.json"
    if not path.is_file():
        raise FileNotFoundError(f"training log missing for run '{run_id}': {path}")
    return json.loads(path.read_text())


def plot_task_weights(logs: Sequence[Mapping[str, Any]], out_png: Path, title: str) -> Path:
    """TROA's task weights per epoch, one line per task (mean over seeds; band min..max when several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(logs[0]["tasks"])
    length = min(len(log["epochs"]) for log in logs)
    if length == 0:
        raise ValueError(f"no epochs in the training logs of {[log.get('run') for log in logs]}")
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for k, task in enumerate(tasks):
        curves = [[float(log["epochs"][e]["task_weights"][k]) for e in range(length)] for log in logs]
        epochs = [int(logs[0]["epochs"][e]["epoch"]) for e in range(length)]
        mean = [statistics.fmean(c[e] for c in curves) for e in range(length)]
        line, = ax.plot(epochs, mean, "-o", ms=3, label=f"{TASK_INITIAL.get(task, task)} ({task})")
        if len(curves) > 1:
            ax.fill_between(epochs, [min(c[e] for c in curves) for e in range(length)],
                            [max(c[e] for c in curves) for e in range(length)], color=line.get_color(), alpha=0.15)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("task weight")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out_png)


def write_vit_figures(records: Sequence[Mapping[str, Any]], runs_dir: Path, figures_dir: Path,
                      full_set: Tuple[str, ...]) -> List[Path]:
    """The affinity heatmap and task-weight curves of the VTAGML run(s) on ``full_set``; [] when none exists."""
    from mtwork.report.affinity import plot_affinity

    recs = sorted((r for r in records if r["paradigm"] == "vtagml" and _canonical(r["tasks"]) == full_set),
                  key=lambda r: r["seed"])
    if not recs:
        return []
    logs = [_read_log(runs_dir, r["run"]) for r in recs]
    tasks = list(logs[0]["tasks"])
    for log, rec in zip(logs, recs):
        if list(log["tasks"]) != tasks:
            raise ValueError(f"run '{rec['run']}': task order {log['tasks']} differs from {tasks} of '{recs[0]['run']}'")
        if "balancer_state" not in log or "affinity" not in log["balancer_state"]:
            raise ValueError(f"{Path(runs_dir) / rec['run'] / 'log.json'}: no balancer_state.affinity")
    matrices = [log["balancer_state"]["affinity"] for log in logs]
    n = len(tasks)
    mean = [[statistics.fmean(float(m[i][j]) for m in matrices) for j in range(n)] for i in range(n)]
    seeds = [int(r["seed"]) for r in recs]
    which = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean over seeds {seeds}"
    labels = [TASK_INITIAL.get(t, t) for t in tasks]
    figures_dir = Path(figures_dir)
    affinity_png = plot_affinity(mean, labels, figures_dir / "vit_affinity.png",
                                 f"TROA task affinity, VTAGML {task_set_label(full_set)} ({which})")
    weights_png = plot_task_weights(logs, figures_dir / "vit_task_weights.png",
                                    f"TROA task weights per epoch\nVTAGML {task_set_label(full_set)} ({which})")
    return [affinity_png, weights_png]


# ---- entry point --------------------------------------------------------------------------------


def write_vit_tables(params: Mapping[str, Any], metrics_dir: Path, runs_dir: Path, out_dir: Path,
                     figures_dir: Path) -> List[Path]:
    """Render source 2's tables and figures (see the module docstring); returns the files written.

    ``params``: the project params; ``params['vit']['source']`` (when present) is the only source allowed in
    the records. Raises FileNotFoundError when ``metrics_dir`` holds no records or a needed run log is
    missing, ValueError (naming the file) for a record with an unknown paradigm or other inconsistency.
    """
    metrics_dir, runs_dir, out_dir, figures_dir = Path(metrics_dir), Path(runs_dir), Path(out_dir), Path(figures_dir)
    vit = (params or {}).get("vit") or {}
    records = read_vit_records(metrics_dir, vit.get("source"))
    seeds = sorted({int(r["seed"]) for r in records})
    rows = build_vit_rows(records)
    written = _write_set(out_dir, "vit_mtl", MTL_TITLE, *mtl_cells(rows), mtl_caption(rows, seeds), mtl_csv(rows))

    configured = _canonical(vit["tasks"]) if vit.get("tasks") else None
    present = _task_sets(records)
    full_set = configured if configured in present else present[-1]
    params_rows = [r for r in rows if r.task_set == full_set]
    written += _write_set(out_dir, "vit_params", PARAMS_TITLE, *params_cells(params_rows),
                          params_caption(params_rows, seeds), params_csv(params_rows))
    written += write_vit_figures(records, runs_dir, figures_dir, full_set)
    print(f"[mtwork vit tables] wrote {', '.join(str(p) for p in written)}")
    return written
