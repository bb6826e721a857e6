"""Source 2's transfer tables (vit_zero_shot, vit_uda, vit_dg) from hand-made metrics records; the
expected means and Δm values are worked out by hand in the comments."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mtwork.report.vit_protocol_tables import write_vit_protocol_tables

SOURCE = "swin_simmim"
TASKS = ["semseg", "depth", "normals"]
HIB = {"semseg": {"miou": True, "pixel_acc": True}, "depth": {"rmse": False, "delta1": True},
       "normals": {"mean_angle": False, "within_11_25": True}}


def _params(**vit):
    base = {"enabled": True, "source": SOURCE, "tasks": TASKS, "seeds": [0, 1], "source_domain": "clear_day",
            "dg_domains": [],
            "zero_shot": {"enabled": True, "target_domain": "night", "finetune_tasks": ["semseg", "depth"],
                          "paradigms": ["full_finetune", "vtagml"], "epochs": 1, "oracle": True},
            "uda": {"enabled": False, "target_domain": "night", "tasks": ["semseg", "depth"], "paradigms": ["vtagml"],
                    "epochs": 1, "adversarial_weight": 0.001, "gan_loss": "bce", "pseudo_labels": None, "oracle": True}}
    base.update(vit)
    return {"vit": base, "data": {"source_domain": "clear_day", "dg_domains": []}}


def _record(metrics_dir: Path, protocol: str, domain: str, paradigm: str, tasks, seed: int, primaries):
    target = "" if protocol in ("mtl", "dg") else f"__{protocol}-{domain}"
    run = f"{SOURCE}__{paradigm}__{'-'.join(tasks)}{target}__s{seed}"
    folder = metrics_dir / "vit" / (protocol if protocol != "mtl" else "") / (domain if protocol != "mtl" else "")
    folder.mkdir(parents=True, exist_ok=True)
    values = {"semseg": lambda v: {"miou": v, "pixel_acc": 80.0}, "depth": lambda v: {"rmse": v, "delta1": 50.0},
              "normals": lambda v: {"mean_angle": v, "within_11_25": 10.0}}
    rec = {"run": run, "protocol": protocol, "domain": domain, "source": SOURCE, "paradigm": paradigm,
           "method": paradigm, "tasks": list(tasks), "seed": seed,
           "metrics": {t: values[t](primaries[t]) for t in tasks}, "higher_is_better": {t: HIB[t] for t in tasks},
           "train": {"seconds": 1.0, "seconds_per_epoch": 1.0, "trainable_params": {"train": 10}, "total_params": 20,
                     "adapter_bytes": 100}}
    (folder / f"{run}.json").write_text(json.dumps(rec))


# oracle (single-task on night, per seed): semseg mIoU 40 / 42, depth RMSE 5, normals 30 degrees
ORACLE = {0: {"semseg": 40.0, "depth": 5.0, "normals": 30.0}, 1: {"semseg": 42.0, "depth": 5.0, "normals": 30.0}}
ROWS = {  # (protocol, paradigm) -> seed -> primaries
    ("dg", "vtagml"): {0: {"semseg": 20.0, "depth": 10.0, "normals": 60.0}, 1: {"semseg": 22.0, "depth": 10.0, "normals": 60.0}},
    ("zeroshot", "vtagml"): {0: {"semseg": 36.0, "depth": 6.0, "normals": 45.0}, 1: {"semseg": 38.0, "depth": 6.0, "normals": 45.0}},
    ("dg", "full_finetune"): {0: {"semseg": 10.0, "depth": 12.0, "normals": 70.0}, 1: {"semseg": 12.0, "depth": 12.0, "normals": 70.0}},
    ("zeroshot", "full_finetune"): {0: {"semseg": 30.0, "depth": 7.0, "normals": 66.0}, 1: {"semseg": 31.0, "depth": 7.5, "normals": 69.0}},
}


@pytest.fixture()
def zero_shot_study(tmp_path):
    metrics = tmp_path / "metrics"
    for seed, values in ORACLE.items():
        for task in TASKS:
            _record(metrics, "oracle", "night", "single_task", [task], seed, values)
    for (protocol, paradigm), seeds in ROWS.items():
        for seed, values in seeds.items():
            _record(metrics, protocol, "night", paradigm, TASKS, seed, values)
    # an mtl run of another task set evaluated on night, and a seed outside vit.seeds: both left out
    _record(metrics, "dg", "night", "vtagml", ["semseg", "depth"], 0, ORACLE[0])
    _record(metrics, "zeroshot", "night", "vtagml", TASKS, 7, ORACLE[0])
    return metrics


def _csv(path: Path):
    return {(r["protocol"], r["paradigm"]): r for r in csv.DictReader(path.open())}


def test_zero_shot_table_rows_columns_and_delta_m_against_the_oracle(zero_shot_study, tmp_path):
    out = tmp_path / "tables"
    written = write_vit_protocol_tables(_params(), zero_shot_study / "vit", out)
    assert sorted(p.name for p in written) == ["vit_zero_shot.csv", "vit_zero_shot.md", "vit_zero_shot.tex"]
    rows = _csv(out / "vit_zero_shot.csv")
    assert list(rows) == [("dg", "full_finetune"), ("dg", "vtagml"), ("zeroshot", "full_finetune"),
                          ("zeroshot", "vtagml"), ("oracle", "single_task")]
    zs = rows[("zeroshot", "vtagml")]
    assert float(zs["semseg_miou_mean"]) == pytest.approx(37.0) and zs["seeds"] == "0 1"
    # Δm vs the oracle, seed 0: ((36-40)/40 - (6-5)/5 - (45-30)/30) / 3 = -0.8 / 3 -> -26.667 %;
    # seed 1: ((38-42)/42 - 0.2 - 0.5) / 3 = -26.508 %; mean -26.587 %
    assert float(zs["delta_m_mean"]) == pytest.approx((-0.8 / 3 + (-4 / 42 - 0.7) / 3) / 2 * 100, rel=1e-6)
    # source only, seed 0: (-0.5 - 1 - 1) / 3; seed 1: (-20/42 - 2) / 3
    src = rows[("dg", "vtagml")]
    assert float(src["delta_m_mean"]) == pytest.approx(((-2.5) / 3 + (-20 / 42 - 2) / 3) / 2 * 100, rel=1e-6)
    assert float(rows[("oracle", "single_task")]["delta_m_mean"]) == 0.0
    assert float(rows[("oracle", "single_task")]["normals_mean_angle_mean"]) == pytest.approx(30.0)
    md = (out / "vit_zero_shot.md").read_text()
    assert "| Setting | Method | Seg mIoU ↑ (FT) |" in md and "Normals mean ° ↓ (ZS)" in md
    for text in ("Source only (no target training)", "Zero-shot transfer", "Target oracle",
                 "1-task Swin trained on target labels", "clear_day → night", "seeds 0, 1",
                 "never see a label of normals", "labels of semseg, depth only"):
        assert text in md, text
    # the method rows differ: every zero-shot row's primary metrics differ from the others'
    assert len({(r["semseg_miou_mean"], r["normals_mean_angle_mean"]) for r in rows.values()}) == len(rows)
    assert "\\begin{tabular}" in (out / "vit_zero_shot.tex").read_text()


def test_uda_table_takes_its_task_set_and_its_own_records(zero_shot_study, tmp_path):
    metrics = zero_shot_study
    for seed in (0, 1):
        _record(metrics, "dg", "night", "vtagml", ["semseg", "depth"], seed, {"semseg": 20.0, "depth": 9.0})
        _record(metrics, "uda", "night", "vtagml", ["semseg", "depth"], seed, {"semseg": 30.0 + seed, "depth": 7.0})
    params = _params(zero_shot={**_params()["vit"]["zero_shot"], "enabled": False})
    params["vit"]["uda"]["enabled"] = True
    out = tmp_path / "tables"
    written = write_vit_protocol_tables(params, metrics / "vit", out)
    assert sorted(p.name for p in written) == ["vit_uda.csv", "vit_uda.md", "vit_uda.tex"]
    rows = _csv(out / "vit_uda.csv")
    assert list(rows) == [("dg", "vtagml"), ("uda", "vtagml"), ("oracle", "single_task")]
    assert "normals_mean_angle_mean" not in next(iter(rows.values()))
    # UDA seed 0: ((30-40)/40 - (7-5)/5) / 2 = -0.325; seed 1: ((31-42)/42 - 0.4) / 2
    assert float(rows[("uda", "vtagml")]["delta_m_mean"]) == pytest.approx((-0.325 + (-11 / 42 - 0.4) / 2) / 2 * 100)
    md = (out / "vit_uda.md").read_text()
    assert "UDA" in md and "bce GAN loss" in md and "no pseudo-labels" in md


def test_dg_table_groups_rows_by_unseen_domain(tmp_path):
    metrics = tmp_path / "metrics"
    for domain, shift in (("dusk_fog", 0.0), ("night", 10.0)):
        for seed in (0, 1):
            for task, value in (("semseg", 50.0 - shift), ("depth", 4.0), ("normals", 20.0)):
                _record(metrics, "dg", domain, "single_task", [task], seed, {task: value})
            _record(metrics, "dg", domain, "vtagml", TASKS, seed, {"semseg": 55.0 - shift, "depth": 4.0, "normals": 20.0})
            _record(metrics, "dg", domain, "full_finetune", TASKS, seed, {"semseg": 45.0 - shift, "depth": 4.4, "normals": 20.0})
    params = _params(dg_domains=["dusk_fog", "night"], zero_shot={**_params()["vit"]["zero_shot"], "enabled": False})
    out = tmp_path / "tables"
    write_vit_protocol_tables(params, metrics / "vit", out)
    rows = list(csv.DictReader((out / "vit_dg.csv").open()))
    assert [(r["domain"], r["paradigm"]) for r in rows] == [
        (d, p) for d in ("dusk_fog", "night") for p in ("single_task", "full_finetune", "vtagml")]
    by = {(r["domain"], r["paradigm"]): r for r in rows}
    # Δm against the single-task runs evaluated on the same domain: dusk_fog (+10 % + 0 + 0) / 3;
    # night ((45-40)/40 + 0 + 0) / 3 = 12.5 / 3 %
    assert float(by[("dusk_fog", "vtagml")]["delta_m_mean"]) == pytest.approx(10 / 3)
    assert float(by[("night", "vtagml")]["delta_m_mean"]) == pytest.approx(12.5 / 3)
    assert float(by[("night", "full_finetune")]["delta_m_mean"]) == pytest.approx((-5 / 40 - 0.1) / 3 * 100)
    md = (out / "vit_dg.md").read_text()
    assert "trained on clear_day" in md and "dusk_fog, night" in md and "| Unseen domain | Method |" in md


def test_a_protocol_that_is_on_needs_its_records(tmp_path):
    (tmp_path / "vit").mkdir()
    with pytest.raises(FileNotFoundError, match="zeroshot/night: no metrics record of zero-shot runs"):
        write_vit_protocol_tables(_params(), tmp_path / "vit", tmp_path / "tables")
    off = _params(zero_shot={**_params()["vit"]["zero_shot"], "paradigms": []})
    assert write_vit_protocol_tables(off, tmp_path / "vit", tmp_path / "tables") == []
