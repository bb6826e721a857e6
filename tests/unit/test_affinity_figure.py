"""The task-affinity heatmap: writes a PNG atomically; rejects malformed matrices with clear errors."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from mtwork.report.affinity import plot_affinity

# Source 2's published matrix (rows source, columns target; S, D, N, E).
PUBLISHED = [
    [0.946, 0.682, 0.117, 0.822],
    [0.711, 0.913, 0.404, 0.858],
    [0.662, 0.593, 0.932, 0.926],
    [0.429, 0.411, 0.259, 0.985],
]
LABELS = ["S", "D", "N", "E"]


def test_writes_a_png(tmp_path):
    out = plot_affinity(torch.tensor(PUBLISHED), LABELS, tmp_path / "figs" / "affinity.png", title="TROA affinity")
    assert out == tmp_path / "figs" / "affinity.png" and out.is_file()
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    assert [p.name for p in out.parent.iterdir()] == ["affinity.png"]  # no temporary file left behind


def test_values_outside_unit_range_and_lists_accepted(tmp_path):
    out = plot_affinity([[1.0, -0.5], [-0.5, 1.0]], ["semseg", "depth"], tmp_path / "raw.png")
    assert out.is_file()


def test_non_square_matrix_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"must be square \(T, T\), got shape \(2, 3\)"):
        plot_affinity(torch.zeros(2, 3), ["a", "b"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_label_count_and_non_finite_rejected(tmp_path):
    with pytest.raises(ValueError, match="3 task labels for a 2x2"):
        plot_affinity(torch.eye(2), ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-finite"):
        plot_affinity([[1.0, float("nan")], [0.0, 1.0]], ["a", "b"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
