"""Figures: training curves of every run, and Δm (with its 95 % interval over seeds) by checkpoint source and paradigm."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pandas as pd

from mtwork.io import atomic_path
from mtwork.report.records import DELTA_M, PARADIGM_LABEL, PARADIGM_ORDER, SINGLE_TASK, summarize


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
        several = any(len(curves) > 1 for curves in panels[key].values())
        ax.set_ylabel("train loss" + ("\nline: mean, band: min-max over seeds" if several else ""), fontsize=8)
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, out_png)
    plt.close(fig)


def plot_delta_m(frame: pd.DataFrame, out_png: Path, title: str) -> None:
    """Grouped bars of Δm (%) per checkpoint source (groups) and multi-task paradigm (bars).

    ``frame``: the long frame of ``mtwork.report.records.study_frame`` (one domain). Bars are the mean over
    seeds, error bars the 95 % interval of the mean over seeds (Student t; none with one seed), as the
    y-axis label says; a paradigm whose Δm is undefined for a source (a single-task baseline scored 0
    or is missing) is an empty slot marked "n/a". Raises ValueError when no row has a multi-task paradigm.
    """
    summary = summarize(frame[frame["column"] == DELTA_M]).reset_index()
    multi = summary[summary["paradigm"] != SINGLE_TASK]
    if multi.empty:
        raise ValueError("no multi-task rows to plot delta_m for")
    plt = _pyplot()
    sources = list(dict.fromkeys(multi["source"]))
    present = set(multi["paradigm"])
    paradigms = [p for p in PARADIGM_ORDER[1:] if p in present] + sorted(present - set(PARADIGM_ORDER))
    by_key = {(r["source"], r["paradigm"]): r for r in multi.to_dict("records")}
    width = 0.8 / len(paradigms)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(sources) + 2), 3.8))
    for j, paradigm in enumerate(paradigms):
        xs, means, low, high = [], [], [], []
        for i, source in enumerate(sources):
            row = by_key.get((source, paradigm))
            x = i - 0.4 + width * (j + 0.5)
            if row is None:
                continue
            if row["undefined"] > 0 or math.isnan(row["mean"]):
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=6, rotation=90)
                continue
            xs.append(x)
            means.append(row["mean"])
            several = row["n"] >= 2  # no interval from one seed
            low.append(row["mean"] - row["ci_low"] if several else 0.0)
            high.append(row["ci_high"] - row["mean"] if several else 0.0)
        ax.bar(xs, means, width=width, yerr=[low, high], capsize=2, label=PARADIGM_LABEL.get(paradigm, paradigm))
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(sources)))
    ax.set_xticklabels(sources, rotation=20)
    n = sorted(set(int(v) for v in multi["n"]))
    seeds = f"n = {n[0]}" if len(n) == 1 else f"n = {n[0]}-{n[-1]}"
    ax.set_ylabel("Δm vs single-task (%)\n" + ("bars: mean, one seed, no interval" if n[-1] < 2 else
                                               f"bars: mean, whiskers: 95 % CI over seeds ({seeds})"), fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, len(paradigms)))
    fig.tight_layout()
    _save(fig, out_png)
    plt.close(fig)
