"""Source 2's report: ViT adapters (TAA, TSN, TROA) on a frozen Swin-V2, dense tasks on SynthDrive.

``write_vit_tables`` renders, from the metrics records in ``results/metrics/vit`` and the run logs in
``models/runs/<run>/log.json`` (source 2's runs):

* ``vit_mtl.{md,tex,csv}``: one group of rows per task set present (S-D, S-D-N, S-D-N-E): the
  single-task row (each task's metrics from its own single-task run), then every paradigm of
  ``mtwork.plan.VIT_PARADIGMS`` present on that task set (the ablations and balancers are rows of the
  S-D-N-E group). Mean ± std over the seeds of ``vit.seeds``, the 95 % interval for Δm and the primary
  metrics; marks within each task-set group only where a difference exceeds the seed noise
  (``mtwork.report.layout``; Δm ranked among the multi-task rows only).
* ``vit_params.{md,tex,csv}``: total / trainable parameters, train time per epoch and adapter checkpoint
  size of every method on the full task set (the single-task row sums its per-task runs).
  Checkpoint sizes are in MB = 10^6 bytes (SI), not MiB.
* ``<figures_dir>/vit_affinity.png`` and ``vit_task_weights.png``: TROA's final affinity matrix and its
  task weights per epoch, from the VTAGML run(s) on the full task set (mean over seeds); skipped (no file)
  when there is no such run.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from mtwork.evaluate import PRIMARY_METRIC
from mtwork.io import atomic_path
from mtwork.plan import VIT_PARADIGMS
from mtwork.report.layout import Column, Table, TableSpec, build_table, delta_m_definition, write_table
from mtwork.report.records import DELTA_M, SINGLE_TASK, primary_directions, read_records, study_frame

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


def task_set_label(tasks: Sequence[str] | str) -> str:
    """'S-D-N-E' for ('semseg', 'depth', 'normals', 'edges') or 'semseg-depth-normals-edges'."""
    if isinstance(tasks, str):
        tasks = tasks.split("-")
    return "-".join(TASK_INITIAL.get(t, t[:1].upper()) for t in tasks)


def _canonical(tasks: Sequence[str]) -> Tuple[str, ...]:
    return tuple(sorted(tasks, key=VIT_TASKS.index))


# ---- reading ------------------------------------------------------------------------------------


def read_vit_records(metrics_dir: Path, source: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every ``*.json`` record directly in ``metrics_dir``, validated; each gets a ``_path`` key.

    Raises FileNotFoundError when the folder holds none, ValueError naming the file for invalid JSON, a
    missing key, an unknown paradigm or task, or another source than ``source`` (when given).
    """
    metrics_dir = Path(metrics_dir)
    records = read_records(metrics_dir) if metrics_dir.is_dir() else []
    if not records:
        raise FileNotFoundError(f"no source-2 (vit) metrics records (*.json) in {metrics_dir}")
    for rec in records:
        path = rec["_path"]
        if rec["paradigm"] not in VIT_PARADIGMS:
            raise ValueError(f"{path}: unknown source-2 paradigm '{rec['paradigm']}' (known: {', '.join(VIT_PARADIGMS)})")
        unknown = [t for t in rec["tasks"] if t not in VIT_TASKS]
        if unknown or not rec["tasks"]:
            raise ValueError(f"{path}: tasks {rec['tasks']} are not source-2 tasks ({', '.join(VIT_TASKS)})")
        if rec["paradigm"] == SINGLE_TASK and len(rec["tasks"]) != 1:
            raise ValueError(f"{path}: a single_task run must have exactly one task, got {rec['tasks']}")
        if source is not None and rec["source"] != source:
            raise ValueError(f"{path}: source '{rec['source']}' is not the vit source '{source}'")
        missing = [t for t in rec["tasks"] if t not in rec["metrics"] or t not in rec["higher_is_better"]]
        if missing:
            raise ValueError(f"{path}: no metrics / higher_is_better for tasks {missing}")
    return records


def _trainable(rec: Mapping[str, Any]) -> int:
    stages = rec["train"].get("trainable_params") or {}
    if isinstance(stages, (int, float)):
        return int(stages)
    if not stages:
        raise ValueError(f"{rec['_path']}: train.trainable_params is empty")
    return int(stages.get("train", max(stages.values())))


def vit_costs(rec: Mapping[str, Any]) -> Dict[str, Any]:
    """Cost columns of a source-2 record: parameters, train time per epoch (s), adapter checkpoint (bytes),
    and for VTAGML the trainable parameters under both readings of what trains in the adapted blocks
    (``vit.adapted_block_training``: frozen = mtwork's default, full = as the released code trains them),
    counted on the run's own model whichever of the two it trained with."""
    train = rec["train"]
    budget = train.get("parameter_budget") or {}
    return {"trainable_params": _trainable(rec), "total_params": train.get("total_params"),
            "seconds_per_epoch": train.get("seconds_per_epoch"), "adapter_bytes": train.get("adapter_bytes"),
            "trainable_blocks_frozen": budget.get("frozen"), "trainable_blocks_full": budget.get("full")}


# ---- rows ---------------------------------------------------------------------------------------


def _task_sets(records: Sequence[Mapping[str, Any]]) -> List[Tuple[str, ...]]:
    """Multi-task task sets present, smallest first (S-D, S-D-N, S-D-N-E); with no multi-task run at all,
    the set of tasks the single-task runs cover."""
    sets = {_canonical(r["tasks"]) for r in records if r["paradigm"] != SINGLE_TASK}
    if not sets:
        sets = {_canonical({t for r in records for t in r["tasks"]})}
    return sorted(sets, key=lambda s: (len(s), [VIT_TASKS.index(t) for t in s]))


def vit_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The long frame (``mtwork.report.records``) of source 2: one group of rows per task set present."""
    return study_frame(records, _task_sets(records), vit_costs)


def _order(row: Mapping[str, str]) -> Tuple[Any, ...]:
    tasks = row["tasks"].split("-")
    paradigms = list(VIT_PARADIGMS)
    return (len(tasks), [VIT_TASKS.index(t) for t in tasks], paradigms.index(row["paradigm"]), tuple(row.values()))


def _key_text(key: str, value: str) -> str:
    if key == "tasks":
        return task_set_label(value)
    return VIT_PARADIGM_LABEL.get(value, value) if key == "paradigm" else value


def _params(digits: int = 2, **kw) -> Dict[str, Any]:
    return dict(digits=digits, spread=False, scale=1e6, unit=" M", **kw)


def mtl_spec() -> TableSpec:
    columns = [Column(f"{t}_{m}", header, digits, higher=higher, interval=PRIMARY_METRIC[t] == m)
               for t, m, header, higher, digits in VIT_METRIC_COLUMNS]
    columns += [Column(DELTA_M, DELTA_HEADER, DELTA_DIGITS, higher=True, interval=True, reference=True),
                Column("trainable_params", "Trainable params", **_params())]
    return TableSpec(MTL_TITLE, keys=(("tasks", "Tasks"), ("paradigm", "Method")), columns=columns, order=_order,
                     key_text=_key_text, groups=("tasks",), group_name="task set")


def params_spec() -> TableSpec:
    columns = [
        Column("total_params", "Total params", **_params()),
        Column("trainable_params", "Trainable params", **_params(higher=False)),
        Column("seconds_per_epoch", "Train time / epoch (s)", 1, higher=False),
        Column("adapter_bytes", "Adapter ckpt (MB)", 2, higher=False, scale=MB),
        Column("trainable_blocks_frozen", "Trainable, adapted blocks frozen", **_params(higher=False)),
        Column("trainable_blocks_full", "Trainable, adapted blocks trained (released code)", **_params(higher=False)),
    ]
    return TableSpec(PARAMS_TITLE, keys=(("tasks", "Tasks"), ("paradigm", "Method")), columns=columns, order=_order,
                     key_text=_key_text, groups=("tasks",), group_name="task set", csv_extra=())


def mtl_caption(table: Table, higher: Mapping[str, bool]) -> str:
    baselines = sorted({run for row, runs in zip(table.rows, table.runs) if row["paradigm"] == SINGLE_TASK for run in runs})
    notes = [f"{table.labels[i]} ({task_set_label(table.rows[i]['tasks'])}): {note}"
             for i, note in enumerate(table.notes) if note and table.rows[i]["paradigm"] != SINGLE_TASK]
    text = (
        f"{MTL_TITLE}. {table.n_text}. {table.rule_text} {delta_m_definition(VIT_TASKS, higher)}. "
        f"Single-task (baseline) runs: {', '.join(baselines) or 'none'}. "
        "The single-task row takes each task's metrics from its own run. Task sets: S = semantic segmentation, "
        "D = depth, N = surface normals, E = edges; '–': the task is not in the row's task set."
    )
    if notes:
        text += " Δm '–': " + "; ".join(notes) + "."
    return text


def params_caption(table: Table) -> str:
    return (
        f"{PARAMS_TITLE}. Every method on the task set {task_set_label(table.rows[0]['tasks'])}; the single-task "
        "row sums its per-task runs (one model per task). Parameters in millions (M = 10^6), the same for every "
        f"seed; train time per epoch as mean ± std over seeds; adapter checkpoint size in MB = 10^6 bytes. "
        "The last two columns give VTAGML's trainable parameters under both readings of what trains in the "
        "adapted Swin blocks (vit.adapted_block_training: frozen, mtwork's default, keeps the replaced "
        "blocks' qkv, MLP and norms frozen; full trains them and the patch embedding as the released code "
        "does), counted on the same model; 'Trainable params' is the setting the run trained with. "
        f"{table.n_text}. {table.rule_text} Lower is better in every ranked column."
    )


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
    ax.set_ylabel("task weight" + ("\nline: mean, band: min-max over seeds" if len(logs) > 1 else ""), fontsize=8)
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
    the records, ``params['vit']['seeds']`` (when present) the seeds tabulated (records of other seeds, left
    from an earlier configuration, are left out). Raises FileNotFoundError when ``metrics_dir`` holds no
    records or a needed run log is missing, ValueError (naming the file) for a record with an unknown
    paradigm or other inconsistency.
    """
    metrics_dir, runs_dir, out_dir, figures_dir = Path(metrics_dir), Path(runs_dir), Path(out_dir), Path(figures_dir)
    vit = (params or {}).get("vit") or {}
    records = read_vit_records(metrics_dir, vit.get("source"))
    if vit.get("seeds"):
        records = [r for r in records if int(r["seed"]) in vit["seeds"]]
        if not records:
            raise ValueError(f"{metrics_dir}: no source-2 record of the seeds vit.seeds = {vit['seeds']}")
    frame = vit_frame(records)
    mtl = build_table(frame, mtl_spec())
    written = write_table(mtl, out_dir, "vit_mtl", mtl_caption(mtl, primary_directions(records, VIT_TASKS)))

    configured = _canonical(vit["tasks"]) if vit.get("tasks") else None
    present = _task_sets(records)
    full_set = configured if configured in present else present[-1]
    params_table = build_table(frame[frame["tasks"] == "-".join(full_set)], params_spec())
    written += write_table(params_table, out_dir, "vit_params", params_caption(params_table))
    written += write_vit_figures(records, runs_dir, figures_dir, full_set)
    print(f"[mtwork vit tables] wrote {', '.join(str(p) for p in written)}")
    return written
