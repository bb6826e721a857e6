"""Figure: a task-affinity matrix (TROA's, ``mtwork.methods.troa``) as an annotated heatmap.

Laid out as source 2's affinity figure: rows are source tasks, columns target tasks (TROA's ``A[s, t]``
is target t's weight on source s, so each column is one target's weight vector), each cell annotated
with its value to 2 decimals, a colorbar beside. Written atomically (temporary file, then rename).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from mtwork.io import atomic_path

# Cells darker than this fraction of the colour range get white text so the value stays readable.
DARK_CELL = 0.6


def plot_affinity(matrix, task_labels: Sequence[str], out_path: str | Path, title: str = "Task affinity") -> Path:
    """Write ``matrix`` (T, T; tensor, array or nested lists; rows source, columns target) as a PNG.

    ``task_labels``: T names, in row/column order. The colour scale is [0, 1] when all values lie in it
    (TROA's affinities do), else the data range. Raises ``ValueError`` for a non-square or non-finite
    matrix or a label count that does not match. Returns ``out_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = _as_array(matrix)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"affinity matrix must be square (T, T), got shape {tuple(values.shape)}")
    if not np.all(np.isfinite(values)):
        raise ValueError("affinity matrix has non-finite values")
    labels = [str(t) for t in task_labels]
    if len(labels) != values.shape[0]:
        raise ValueError(f"{len(labels)} task labels for a {values.shape[0]}x{values.shape[0]} affinity matrix")

    low, high = (0.0, 1.0) if values.min() >= 0 and values.max() <= 1 else (float(values.min()), float(values.max()))
    if high == low:
        high = low + 1.0
    size = max(3.2, 0.9 * len(labels) + 1.8)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    image = ax.imshow(values, cmap="viridis", vmin=low, vmax=high)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="affinity")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("target task (column: its weights over sources)")
    ax.set_ylabel("source task")
    ax.set_title(title)
    for row in range(values.shape[0]):
        for col in range(values.shape[1]):
            shade = (values[row, col] - low) / (high - low)
            ax.text(col, row, f"{values[row, col]:.2f}", ha="center", va="center", fontsize=9,
                    color="black" if shade > DARK_CELL else "white")
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out_path


def _as_array(matrix) -> np.ndarray:
    if hasattr(matrix, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        matrix = matrix.detach().cpu().numpy()
    return np.asarray(matrix, dtype=np.float64)
