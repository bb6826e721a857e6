"""The real pipeline end to end on the smoke configuration (configs/smoke.yaml; marked slow: a few
minutes on 2 CPU cores).

Runs `snakemake --profile profiles/local results/tables --configfile configs/smoke.yaml` in a temporary
copy of the workflow files (SynthDrive 8+8 images per set and preset at 64x112, input 64x96, 2 epochs
with 1 adapt epoch, one MoCo epoch on small crops; source 2 on S-D with its transfer protocols), then
checks the tables (results/tables/mtl.md|.tex|.csv with one row per checkpoint source x paradigm, the DG
table, source 2's tables), the figures, that the finished run is recorded for DVC (`dvc status` clean,
`dvc repro` with nothing to do), and that a second run has nothing to do.
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest

from mtwork.config import read_params_file

pytestmark = pytest.mark.slow

SMOKE: list = []  # the smoke settings are written into the copy's params.yaml (what DVC tracks)


def _smoke_params(wf: Path) -> None:
    """params.yaml of the workflow copy with configs/smoke.yaml merged in: outputs made from params.yaml
    alone are recorded for DVC (with --configfile values they are not: DVC tracks params.yaml)."""
    from mtwork.config import deep_merge, yaml_dump, yaml_load

    smoke = yaml_load((wf / "configs" / "smoke.yaml").read_text())
    params = yaml_load((wf / "params.yaml").read_text())
    (wf / "params.yaml").write_text(yaml_dump(deep_merge(params, smoke)))


def test_tiny_pipeline_end_to_end(workflow_dir: Path, wt):
    wf = workflow_dir
    shutil.copytree(wt.REPO / "configs", wf / "configs")
    _smoke_params(wf)
    t0 = time.perf_counter()
    run = wt.snakemake(wf, "--profile", "profiles/local", "results/tables", *SMOKE, timeout=3600)
    elapsed = time.perf_counter() - t0
    assert "recorded (dvc status is clean)" in run.stderr, run.stderr[-3000:]

    params = read_params_file(wf / "params.yaml")
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
    # the transfer tables: source only, the transfer runs and the target oracle are rows whose values differ
    for stem, transfer in (("vit_zero_shot", "zeroshot"), ("vit_uda", "uda"), ("vit_dg", "dg")):
        with open(tables / f"{stem}.csv", newline="") as fh:
            vit_rows = list(csv.DictReader(fh))
        if stem == "vit_dg":
            # the UDA protocol's mtl run (frozen multi-scale adapter on S-D = vit.tasks) is a method row too
            assert {(r["domain"], r["paradigm"]) for r in vit_rows} == {
                ("dusk_fog", p) for p in ("single_task", "vtagml", "vtagml_no_troa", "frozen_multiscale_adapter")}
        else:
            assert {r["protocol"] for r in vit_rows} == {"dg", transfer, "oracle"}, stem
        values = [(r["semseg_miou_mean"], r["depth_rmse_mean"]) for r in vit_rows]
        assert len(set(values)) == len(values), (stem, values)

    again = wt.snakemake(wf, "--profile", "profiles/local", "results/tables", *SMOKE)
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    # recorded for DVC: nothing changed, nothing to reproduce
    assert json.loads(wt.run(["dvc", "status", "--json"], wf).stdout or "{}") == {}
    repro = wt.run(["dvc", "repro"], wf)
    assert "Running stage" not in repro.stdout, repro.stdout[-3000:]
    print(f"smoke pipeline: {elapsed:.0f} s")
