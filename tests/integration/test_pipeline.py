"""The real pipeline end to end on a tiny configuration (marked slow: a few minutes on 2 CPU cores).

Runs `snakemake --profile profiles/local results/tables` in a temporary copy of the workflow files
with `--config` overrides that make everything tiny (SynthDrive 8+4 images per set at 64x112,
input 64x96, 2 epochs with 1 adapt epoch, one MoCo epoch on small crops), then checks the tables
(results/tables/mtl.md|.tex|.csv with one row per checkpoint source x paradigm, and the DG table),
the training-curve figure, and that a second run has nothing to do.
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

TINY = [
    "data__synthdrive__counts={det: {train: 8, val: 4}, seg: {train: 8, val: 4}}",
    "data__synthdrive__image_size=[64, 112]",
    "train__input_size=[64, 96]",
    "train__epochs=2",
    "train__adapt_epochs=1",
    "train__batch_size=4",
    "train__seeds=[0]",
    "checkpoints__sources=[random, moco_v2]",
    "checkpoints__pretrain={epochs: 1, batch_size: 8, crop: 32}",
    "checkpoints__catalog__moco_v2__pretrain__queue_size=64",
    "checkpoints__catalog__clip_tiny__pretrain__epochs=1",  # the LV-Adapter's text tower
    "checkpoints__catalog__swin_simmim__pretrain={epochs: 1, batch_size: 8, crop: 64}",
    "checkpoints__catalog__swin_simmim__pretrain__steps=2",  # params.yaml's steps win over epochs
    "evaluate__batch_size=4",
    # source 2: VTAGML with TROA and one ablation on two tasks, against their single-task baselines
    "vit__epochs=1",
    "vit__seeds=[0]",
    "vit__batch_size=4",
    "vit__input_size=[64, 96]",
    "vit__tasks=[semseg, depth]",
    "vit__task_subsets=[]",
    "vit__paradigms=[vtagml, vtagml_no_troa]",
]


def test_tiny_pipeline_end_to_end(workflow_dir: Path, wt):
    wf = workflow_dir
    t0 = time.perf_counter()
    wt.snakemake(wf, "--profile", "profiles/local", "results/tables", "--config", *TINY, timeout=3600)
    elapsed = time.perf_counter() - t0

    params = yaml.safe_load((wf / "params.yaml").read_text())
    sources = ["random", "moco_v2"]
    paradigms = params["train"]["paradigms"]
    tables, figures = wf / "results" / "tables", wf / "results" / "figures"
    for name in ("mtl.md", "mtl.tex", "mtl.csv"):
        assert (tables / name).is_file() and (tables / name).stat().st_size > 0, name

    with open(tables / "mtl.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["source"], r["paradigm"]) for r in rows} == {(s, p) for s in sources for p in paradigms}
    assert len(rows) == len(sources) * len(paradigms)
    metric_columns = [c for c in rows[0] if c.endswith("_mean") and c.split("_")[0] in params["train"]["tasks"]]
    assert metric_columns
    primary = ("semseg_miou_mean", "drivable_miou_mean", "det_map_mean")
    for row in rows:
        assert all(row[c] != "" for c in metric_columns), row
        if row["paradigm"] != "single_task":  # delta_m against the single-task baselines of its source
            baseline = next(r for r in rows if r["source"] == row["source"] and r["paradigm"] == "single_task")
            # a tiny run may leave a single-task baseline at 0 (then delta_m is undefined, shown empty)
            defined = all(float(baseline[c]) != 0.0 for c in primary)
            assert (row["delta_m_mean"] != "") == defined, (row, baseline)

    from mtwork.report.records import PARADIGM_LABEL

    markdown = (tables / "mtl.md").read_text()
    latex = (tables / "mtl.tex").read_text()
    for source in sources:
        for paradigm in paradigms:
            assert f"| {source} | {PARADIGM_LABEL[paradigm]} |" in markdown, (source, paradigm)
        assert source.replace("_", r"\_") in latex
    assert r"\begin{tabular}" in latex
    assert sum(1 for line in latex.splitlines() if line.rstrip().endswith(r"\\")) == 1 + len(rows)
    for domain in params["data"]["dg_domains"]:
        assert (tables / f"dg_{domain}.md").is_file(), domain

    for name in ("training_curves.png", "delta_m.png", "vit_affinity.png", "vit_task_weights.png"):
        png = figures / name
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    vit_md = (tables / "vit_mtl.md").read_text()
    assert "VTAGML" in vit_md and (tables / "vit_params.md").is_file()

    again = wt.snakemake(wf, "--profile", "profiles/local", "results/tables", "--config", *TINY)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    print(f"tiny pipeline: {elapsed:.0f} s")
