"""Figures: training curves of every run, and delta_m by checkpoint source and paradigm."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from mtwork.io import atomic_path
from mtwork.report.records import PARADIGM_LABEL, PARADIGM_ORDER, Row


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png: Path) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def _read_logs(runs_dir: Path, run_ids: Sequence[str]) -> List[dict]:
    logs = []
    for run_id in run_ids:
        path = Path(runs_dir) / run_id / "log.json"
        if not path.is_file():
            raise FileNotFoundError(f"training log missing for run '{run_id}': {path}")
        logs.append(json.loads(path.read_text()))
    return logs


def plot_training_curves(runs_dir: Path, run_ids: Sequence[str], out_png: Path) -> None:
    """Total training loss per epoch, one panel per (paradigm, task set), one line per checkpoint source.

    With several seeds the line is the mean over seeds and the band spans min..max, so the figure stays
    readable however many runs there are. The adapt stage (when a paradigm has one) is shaded.
    """
    plt = _pyplot()
    logs = _read_logs(runs_dir, run_ids)
    # (paradigm, tasks) -> source -> list of per-epoch loss lists
    panels: Dict[Tuple[str, str], Dict[str, List[List[float]]]] = {}
    adapt_epochs: Dict[Tuple[str, str], List[int]] = {}
    for log in logs:
        key = (log["paradigm"], "+".join(log["tasks"]))
        panels.setdefault(key, {}).setdefault(log["source"], []).append([e["loss"] for e in log["epochs"]])
        adapt_epochs[key] = [e["epoch"] for e in log["epochs"] if e["stage"] == "adapt"]
    order = {p: i for i, p in enumerate(PARADIGM_ORDER)}
    keys = sorted(panels, key=lambda k: (order.get(k[0], len(order)), k[1]))
    cols = min(4, max(1, len(keys)))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for source, curves in panels[key].items():
            length = min(len(c) for c in curves)
            epochs = list(range(1, length + 1))
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(length)]
            line, = ax.plot(epochs, mean, "-o", ms=3, label=source)
            if len(curves) > 1:
                ax.fill_between(epochs, [min(c[i] for c in curves) for i in range(length)],
                                [max(c[i] for c in curves) for i in range(length)], color=line.get_color(), alpha=0.15)
        if adapt_epochs[key]:
            ax.axvspan(min(adapt_epochs[key]) - 0.5, max(adapt_epochs[key]) + 0.5, color="tab:blue", alpha=0.08)
        ax.set_title(f"{PARADIGM_LABEL.get(key[0], key[0])}: {key[1]}", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, out_png)
    plt.close(fig)


def plot_delta_m(rows: Sequence[Row], out_png: Path, title: str) -> None:
    """Grouped bars of delta_m (%) per checkpoint source (groups) and multi-task paradigm (bars).

    Bars are the mean over seeds, error bars the sample standard deviation (none with one seed); a
    paradigm whose delta_m is undefined for a source (a single-task baseline scored 0) is drawn as
    an empty slot marked "n/a". Raises ValueError when no row has a multi-task paradigm.
    """
    plt = _pyplot()
    multi = [r for r in rows if r.paradigm != "single_task"]
    if not multi:
        raise ValueError("no multi-task rows to plot delta_m for")
    sources = list(dict.fromkeys(r.source for r in multi))
    paradigms = [p for p in PARADIGM_ORDER[1:] if any(r.paradigm == p for r in multi)]
    by_key = {(r.source, r.paradigm): r for r in multi}
    width = 0.8 / len(paradigms)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(sources) + 2), 3.6))
    for j, paradigm in enumerate(paradigms):
        xs, means, errs = [], [], []
        for i, source in enumerate(sources):
            row = by_key.get((source, paradigm))
            x = i - 0.4 + width * (j + 0.5)
            if row is None:
                continue
            if row.delta_m is None:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
                continue
            xs.append(x)
            means.append(row.delta_m.mean)
            errs.append(row.delta_m.std or 0.0)
        ax.bar(xs, means, width=width, yerr=errs, capsize=2, label=PARADIGM_LABEL.get(paradigm, paradigm))
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(sources)))
    ax.set_xticklabels(sources, rotation=20)
    ax.set_ylabel("Δm vs single-task (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, len(paradigms)))
    fig.tight_layout()
    _save(fig, out_png)
    plt.close(fig)
