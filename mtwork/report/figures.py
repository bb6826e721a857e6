"""Figures: training curves (loss per epoch, per task) of every run."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from mtwork.io import atomic_path


def plot_training_curves(runs_dir: Path, run_ids: Sequence[str], out_png: Path) -> None:
    """One panel per run: total and per-task training loss per epoch; the adapt stage is shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = []
    for run_id in run_ids:
        path = Path(runs_dir) / run_id / "log.json"
        if not path.is_file():
            raise FileNotFoundError(f"training log missing for run '{run_id}': {path}")
        logs.append(json.loads(path.read_text()))
    cols = min(4, max(1, len(logs)))
    rows = math.ceil(len(logs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, log in zip(axes.flat, logs):
        epochs = [e["epoch"] for e in log["epochs"]]
        ax.plot(epochs, [e["loss"] for e in log["epochs"]], "k-o", ms=3, label="total")
        for task in log["tasks"]:
            values = [e["task_loss"].get(task) for e in log["epochs"]]
            ax.plot(epochs, [v if v is not None else float("nan") for v in values], "-", label=task)
        adapt = [e["epoch"] for e in log["epochs"] if e["stage"] == "adapt"]
        if adapt:
            ax.axvspan(min(adapt) - 0.5, max(adapt) + 0.5, color="tab:blue", alpha=0.08, label="adapt stage")
        ax.set_title(log["run"].replace("__", "\n", 1), fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(logs):]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
