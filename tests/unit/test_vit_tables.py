"""Source 2's report tables and figures (mtwork.report.vit_tables) on hand-made records and logs."""
from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from mtwork.report.vit_tables import write_vit_tables

SOURCE = "swin_simmim"
ALL = ["semseg", "depth", "normals", "edges"]
PARAMS = {"vit": {"source": SOURCE, "tasks": ALL, "seeds": [0, 1]}}
HIB = {
    "semseg": {"miou": True, "pixel_acc": True},
    "depth": {"rmse": False, "abs_rel": False, "delta1": True},
    "normals": {"mean_angle": False, "median_angle": False, "within_11_25": True, "within_22_5": True, "within_30": True},
    "edges": {"edge_l1": False},
}
# primary metrics per seed: single-task baselines
SINGLE = {
    0: {"semseg": 50.0, "depth": 4.0, "normals": 20.0, "edges": 0.10},
    1: {"semseg": 52.0, "depth": 4.2, "normals": 22.0, "edges": 0.12},
}
MULTI = {  # (paradigm, task set) -> seed -> primary metrics
    ("vtagml", "SDNE"): {0: {"semseg": 55.0, "depth": 3.6, "normals": 22.0, "edges": 0.09},    # +10 +10 -10 +10 -> 5.0
                         1: {"semseg": 52.0, "depth": 4.2, "normals": 22.0, "edges": 0.132}},  # 0 0 0 -10 -> -2.5
    ("vtagml_no_taa", "SDNE"): {s: dict(SINGLE[s]) for s in (0, 1)},                        # 0 -> 0.0
    ("full_finetune", "SDNE"): {0: {"semseg": 45.0, "depth": 4.4, "normals": 18.0, "edges": 0.10},  # -10 -10 +10 0
                                1: {"semseg": 46.8, "depth": 4.62, "normals": 19.8, "edges": 0.12}},
    ("vtagml", "SD"): {0: {"semseg": 51.0, "depth": 3.8}, 1: {"semseg": 53.0, "depth": 4.0}},
}
TRAIN = {  # paradigm -> (trainable, total, seconds_per_epoch, adapter_bytes)
    "vtagml": (2_000_000, 28_000_000, 6.0, 2_500_000),
    "vtagml_no_taa": (1_500_000, 27_500_000, 5.0, 2_000_000),
    "full_finetune": (26_000_000, 26_000_000, 9.0, 104_000_000),
}
SINGLE_TRAIN = {"semseg": 2.0, "depth": 3.0, "normals": 4.0, "edges": 5.0}  # seconds per epoch


def _metrics(task, primary):
    return {
        "semseg": lambda: {"miou": primary, "pixel_acc": 90.0},
        "depth": lambda: {"rmse": primary, "abs_rel": 0.2, "delta1": 70.0 + primary},
        "normals": lambda: {"mean_angle": primary, "median_angle": primary - 2, "within_11_25": 40.0 - primary,
                            "within_22_5": 60.0, "within_30": 70.0},
        "edges": lambda: {"edge_l1": primary},
    }[task]()


def _record(folder, paradigm, tasks, seed, primaries, trainable, total, spe, nbytes):
    run = f"{SOURCE}__{paradigm}__{'-'.join(tasks)}__s{seed}"
    rec = {
        "run": run, "source": SOURCE, "paradigm": paradigm, "method": paradigm, "tasks": tasks, "seed": seed,
        "metrics": {t: _metrics(t, primaries[t]) for t in tasks},
        "higher_is_better": {t: HIB[t] for t in tasks},
        "train": {"seconds": spe * 3, "seconds_per_epoch": spe, "trainable_params": {"train": trainable},
                  "total_params": total, "adapter_bytes": nbytes},
    }
    (folder / f"{run}.json").write_text(json.dumps(rec))
    return run


def _log(runs_dir, run, tasks, seed):
    n = len(tasks)
    epochs = [{"epoch": e + 1, "loss": 1.0 / (e + 1), "task_loss": {t: 0.5 for t in tasks},
               "task_weights": [1.0 + 0.1 * k * e for k in range(n)],
               "affinity": [[1.0 if i == j else 0.3 for j in range(n)] for i in range(n)]} for e in range(3)]
    affinity = [[1.0 if i == j else 0.2 + 0.1 * seed + 0.05 * i for j in range(n)] for i in range(n)]
    log = {"run": run, "tasks": tasks, "paradigm": "vtagml", "source": SOURCE, "epochs": epochs,
           "balancer_state": {"weights": epochs[-1]["task_weights"], "affinity": affinity}}
    (runs_dir / run).mkdir(parents=True)
    (runs_dir / run / "log.json").write_text(json.dumps(log))


@pytest.fixture()
def study(tmp_path):
    metrics_dir, runs_dir = tmp_path / "metrics", tmp_path / "runs"
    metrics_dir.mkdir()
    runs_dir.mkdir()
    for seed in (0, 1):
        for task in ALL:
            _record(metrics_dir, "single_task", [task], seed, SINGLE[seed], 10_000_000, 30_000_000,
                    SINGLE_TRAIN[task], 1_000_000)
        for (paradigm, tset), per_seed in MULTI.items():
            tasks = ALL if tset == "SDNE" else ["semseg", "depth"]
            run = _record(metrics_dir, paradigm, tasks, seed, per_seed[seed], *TRAIN[paradigm])
            if paradigm == "vtagml":
                _log(runs_dir, run, tasks, seed)
    return tmp_path, metrics_dir, runs_dir


def _write(tmp_path, metrics_dir, runs_dir):
    return write_vit_tables(PARAMS, metrics_dir, runs_dir, tmp_path / "tables", tmp_path / "figures")


def _md_rows(path: Path):
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("| ")]
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[(cells[0], cells[1])] = dict(zip(headers, cells))
    return rows


def test_files_written(study):
    tmp_path, metrics_dir, runs_dir = study
    written = _write(tmp_path, metrics_dir, runs_dir)
    names = {p.name for p in written}
    assert names == {f"{s}.{e}" for s in ("vit_mtl", "vit_params") for e in ("md", "tex", "csv")} | {
        "vit_affinity.png", "vit_task_weights.png"}
    for p in written:
        assert p.is_file() and p.stat().st_size > 0
    assert (tmp_path / "figures" / "vit_affinity.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "tables" / "vit_mtl.md").read_text()
    assert md.startswith("## Multi-task dense prediction on SynthDrive with a frozen Swin-V2")
    assert "Maninis" in md and "same checkpoint source and seed" in md
    assert f"{SOURCE}__single_task__semseg__s0" in md  # caption names the baseline runs
    tex = (tmp_path / "tables" / "vit_mtl.tex").read_text()
    assert r"\textbf{" in tex and r"\underline{" in tex and r"\label{tab:vit_mtl}" in tex
    assert not list((tmp_path / "tables").glob(".*.tmp"))


def test_delta_m_and_order(study):
    tmp_path, metrics_dir, runs_dir = study
    _write(tmp_path, metrics_dir, runs_dir)
    rows = _md_rows(tmp_path / "tables" / "vit_mtl.md")
    keys = list(rows)
    assert keys == [("S-D", "Single-task"), ("S-D", "VTAGML (TAA+TSN+TROA)"), ("S-D-N-E", "Single-task"),
                    ("S-D-N-E", "Full finetuning"), ("S-D-N-E", "VTAGML (TAA+TSN+TROA)"), ("S-D-N-E", "– TAA")]
    dm = "Δm (%) ↑"
    # S-D-N-E vtagml: seed 0 (+10 +10 -10 +10)/4 = 5.0 (lower rmse/angle/L1 is a gain), seed 1 (0+0+0-10)/4 = -2.5
    vt = [5.0, -2.5]
    assert rows[("S-D-N-E", "VTAGML (TAA+TSN+TROA)")][dm] == f"**{statistics.fmean(vt):.2f} ± {statistics.stdev(vt):.2f}**"
    assert rows[("S-D-N-E", "VTAGML (TAA+TSN+TROA)")][dm] == "**1.25 ± 5.30**"
    assert rows[("S-D-N-E", "– TAA")][dm] == "<u>0.00 ± 0.00</u>"
    assert rows[("S-D-N-E", "Full finetuning")][dm] == "-2.50 ± 0.00"
    assert rows[("S-D-N-E", "Single-task")][dm] == "0.00 ± 0.00"  # not ranked
    # S-D vtagml: seed 0 (51-50)/50 and -(3.8-4)/4; seed 1 (53-52)/52 and -(4-4.2)/4.2
    sd = [100 * (1 / 50 + 0.2 / 4) / 2, 100 * (1 / 52 + 0.2 / 4.2) / 2]
    assert rows[("S-D", "VTAGML (TAA+TSN+TROA)")][dm] == f"**{statistics.fmean(sd):.2f} ± {statistics.stdev(sd):.2f}**"
    with open(tmp_path / "tables" / "vit_mtl.csv", newline="") as fh:
        csv_rows = {(r["task_set"], r["paradigm"]): r for r in csv.DictReader(fh)}
    assert float(csv_rows[("S-D-N-E", "vtagml")]["delta_m_mean"]) == pytest.approx(1.25)
    assert float(csv_rows[("S-D", "vtagml")]["delta_m_mean"]) == pytest.approx(statistics.fmean(sd), rel=1e-5)


def test_marks_and_missing_tasks(study):
    tmp_path, metrics_dir, runs_dir = study
    _write(tmp_path, metrics_dir, runs_dir)
    rows = _md_rows(tmp_path / "tables" / "vit_mtl.md")
    full = {k[1]: v for k, v in rows.items() if k[0] == "S-D-N-E"}
    seg, rmse, angle, edge = "Seg mIoU ↑", "Depth RMSE ↓", "Normals mean ° ↓", "Edge L1 ↓"
    # mIoU (higher): vtagml 53.5 best; single-task and -TAA tie at 51.0, both second; finetune 45.9 unmarked
    assert full["VTAGML (TAA+TSN+TROA)"][seg] == "**53.5 ± 2.1**"
    assert full["Single-task"][seg] == full["– TAA"][seg] == "<u>51.0 ± 1.4</u>"
    assert full["Full finetuning"][seg] == "45.9 ± 1.3"
    # RMSE (lower): vtagml 3.900 best, 4.100 second, finetune 4.510 last
    assert full["VTAGML (TAA+TSN+TROA)"][rmse].startswith("**3.900")
    assert full["Single-task"][rmse].startswith("<u>4.100")
    assert full["Full finetuning"][rmse] == "4.510 ± 0.156"
    # normals mean angle (lower): finetune 18.9 best, single/-TAA 21.0 second, vtagml 22.0 unmarked
    assert full["Full finetuning"][angle].startswith("**18.9")
    assert full["VTAGML (TAA+TSN+TROA)"][angle] == "22.0 ± 0.0"
    # edge L1 (lower): finetune/single/-TAA tie at 0.1100 best, vtagml 0.1110 second
    assert full["Full finetuning"][edge].startswith("**0.1100")
    assert full["VTAGML (TAA+TSN+TROA)"][edge].startswith("<u>0.1110")
    # S-D group: ranked separately; normals/edges absent -> "–"
    sd = {k[1]: v for k, v in rows.items() if k[0] == "S-D"}
    assert sd["VTAGML (TAA+TSN+TROA)"][seg] == "**52.0 ± 1.4**" and sd["Single-task"][seg] == "<u>51.0 ± 1.4</u>"
    for row in sd.values():
        assert row[angle] == row[edge] == row["Normals <11.25° ↑"] == "–"
    assert full["Single-task"]["Trainable params"] == "40.00 M"  # 4 single-task models summed
    assert full["VTAGML (TAA+TSN+TROA)"]["Trainable params"] == "2.00 M"


def test_params_table(study):
    tmp_path, metrics_dir, runs_dir = study
    _write(tmp_path, metrics_dir, runs_dir)
    rows = {k[1]: v for k, v in _md_rows(tmp_path / "tables" / "vit_params.md").items()}
    assert list(rows) == ["Single-task", "Full finetuning", "VTAGML (TAA+TSN+TROA)", "– TAA"]
    single = rows["Single-task"]
    assert single["Total params"] == "120.00 M" and single["Trainable params"] == "40.00 M"
    assert single["Train time / epoch (s)"] == "14.0 ± 0.0"  # 2 + 3 + 4 + 5
    assert single["Adapter ckpt (MB)"] == "4.00 ± 0.00"  # 4 x 10^6 bytes, MB = 10^6 bytes
    assert rows["VTAGML (TAA+TSN+TROA)"]["Adapter ckpt (MB)"] == "<u>2.50 ± 0.00</u>"
    assert rows["– TAA"]["Trainable params"] == "**1.50 M**"
    assert rows["– TAA"]["Adapter ckpt (MB)"] == "**2.00 ± 0.00**"
    assert rows["Full finetuning"]["Adapter ckpt (MB)"] == "104.00 ± 0.00"
    assert rows["Full finetuning"]["Total params"] == "26.00 M"
    assert "MB = 10^6 bytes" in (tmp_path / "tables" / "vit_params.md").read_text()
    with open(tmp_path / "tables" / "vit_params.csv", newline="") as fh:
        csv_rows = {r["paradigm"]: r for r in csv.DictReader(fh)}
    assert int(csv_rows["single_task"]["trainable_params"]) == 40_000_000
    assert float(csv_rows["vtagml"]["adapter_mb_mean"]) == pytest.approx(2.5)


def test_figures_skipped_without_vtagml(study):
    tmp_path, metrics_dir, runs_dir = study
    for path in metrics_dir.glob(f"{SOURCE}__vtagml__*"):
        path.unlink()
    written = _write(tmp_path, metrics_dir, runs_dir)
    assert not any(p.suffix == ".png" for p in written)
    assert not (tmp_path / "figures" / "vit_affinity.png").exists()
    assert not (tmp_path / "figures" / "vit_task_weights.png").exists()


def test_missing_log_is_an_error(study):
    tmp_path, metrics_dir, runs_dir = study
    (runs_dir / f"{SOURCE}__vtagml__semseg-depth-normals-edges__s1" / "log.json").unlink()
    with pytest.raises(FileNotFoundError, match="log.json"):
        _write(tmp_path, metrics_dir, runs_dir)


def test_empty_folder_is_an_error(tmp_path):
    empty = tmp_path / "vit_metrics"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="vit_metrics"):
        write_vit_tables(PARAMS, empty, tmp_path / "runs", tmp_path / "t", tmp_path / "f")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_vit_tables(PARAMS, tmp_path / "nowhere", tmp_path / "runs", tmp_path / "t", tmp_path / "f")


def test_unknown_paradigm_is_an_error(study):
    tmp_path, metrics_dir, runs_dir = study
    bad = _record(metrics_dir, "vtagml_magic", ALL, 0, SINGLE[0], 1, 1, 1.0, 1)
    with pytest.raises(ValueError, match=f"{bad}.json.*vtagml_magic"):
        _write(tmp_path, metrics_dir, runs_dir)
    assert not (tmp_path / "tables" / "vit_mtl.md").exists()


def test_latex_has_no_raw_symbols(study):
    tmp_path, metrics_dir, runs_dir = study
    _write(tmp_path, metrics_dir, runs_dir)
    for stem in ("vit_mtl", "vit_params"):
        tex = (tmp_path / "tables" / f"{stem}.tex").read_text()
        for char in "↑↓°δ<^±–Δ":
            assert char not in tex.replace(r"$^\circ$", ""), (stem, char)
    tex = (tmp_path / "tables" / "vit_mtl.tex").read_text()
    assert r"Depth $\delta$\textless{}1.25 $\uparrow$" in tex and r"Normals mean $^\circ$ $\downarrow$" in tex
    assert tex.count(r"\midrule") == 2  # after the header, and between the S-D and S-D-N-E groups
