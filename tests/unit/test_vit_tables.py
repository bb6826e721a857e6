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
    assert r"\label{tab:vit_mtl}" in tex
    # two seeds, every difference within the seed noise: nothing is highlighted, and the table says so
    assert r"\textbf{" not in tex and r"\underline{" not in tex and r"\dag" not in tex.split(r"\toprule")[1]
    assert "Signal (n = 2, Welch's t-test at 5 %): no difference exceeds seed noise in any column." in md
    assert "n = 2 seeds per cell (seeds 0, 1)" in md
    params_tex = (tmp_path / "tables" / "vit_params.tex").read_text()
    assert r"\textbf{" in params_tex and r"\underline{" in params_tex
    assert not list((tmp_path / "tables").glob(".*.tmp"))


def test_delta_m_and_order(study):
    tmp_path, metrics_dir, runs_dir = study
    _write(tmp_path, metrics_dir, runs_dir)
    rows = _md_rows(tmp_path / "tables" / "vit_mtl.md")
    keys = list(rows)
    assert keys == [("S-D", "Single-task"), ("S-D", "VTAGML (TAA+TSN+TROA)"), ("S-D-N-E", "Single-task"),
                    ("S-D-N-E", "Full finetuning"), ("S-D-N-E", "VTAGML (TAA+TSN+TROA)"), ("S-D-N-E", "– TAA")]
    dm = "Δm (%) ↑"
    # S-D-N-E vtagml: seed 0 (+10 +10 -10 +10)/4 = 5.0 (lower rmse/angle/L1 is a gain), seed 1 (0+0+0-10)/4 = -2.5;
    # mean 1.25, std 5.303, 95 % interval 1.25 ± 12.706 x 5.303 / sqrt(2) = 1.25 ± 47.65
    vt = [5.0, -2.5]
    assert statistics.fmean(vt) == 1.25 and statistics.stdev(vt) == pytest.approx(5.303, abs=1e-3)
    assert rows[("S-D-N-E", "VTAGML (TAA+TSN+TROA)")][dm] == "1.25 ± 5.30 [-46.40, 48.90]"
    assert rows[("S-D-N-E", "– TAA")][dm] == "0.00 ± 0.00 [0.00, 0.00]"
    assert rows[("S-D-N-E", "Full finetuning")][dm] == "-2.50 ± 0.00 [-2.50, -2.50]"
    assert rows[("S-D-N-E", "Single-task")][dm] == "0 (reference)"  # not ranked
    # S-D vtagml: seed 0 (51-50)/50 and -(3.8-4)/4; seed 1 (53-52)/52 and -(4-4.2)/4.2
    sd = [100 * (1 / 50 + 0.2 / 4) / 2, 100 * (1 / 52 + 0.2 / 4.2) / 2]
    assert rows[("S-D", "VTAGML (TAA+TSN+TROA)")][dm].startswith(f"{statistics.fmean(sd):.2f} ± {statistics.stdev(sd):.2f} [")
    with open(tmp_path / "tables" / "vit_mtl.csv", newline="") as fh:
        csv_rows = {(r["tasks"], r["paradigm"]): r for r in csv.DictReader(fh)}
    full = "semseg-depth-normals-edges"
    assert float(csv_rows[(full, "vtagml")]["delta_m_mean"]) == pytest.approx(1.25)
    assert float(csv_rows[(full, "vtagml")]["delta_m_std"]) == pytest.approx(statistics.stdev(vt))
    assert float(csv_rows[(full, "vtagml")]["delta_m_ci_low"]) == pytest.approx(1.25 - 12.7062 * statistics.stdev(vt) / 2 ** 0.5, rel=1e-4)
    assert csv_rows[(full, "vtagml")]["delta_m_n"] == "2" and csv_rows[(full, "vtagml")]["delta_m_mark"] == ""
    assert float(csv_rows[("semseg-depth", "vtagml")]["delta_m_mean"]) == pytest.approx(statistics.fmean(sd), rel=1e-9)
    # every numeric metric of the records is in the CSV, not only the table's columns
    assert float(csv_rows[(full, "vtagml")]["semseg_pixel_acc_mean"]) == 90.0


def test_cells_and_missing_tasks(study):
    tmp_path, metrics_dir, runs_dir = study
    _write(tmp_path, metrics_dir, runs_dir)
    rows = _md_rows(tmp_path / "tables" / "vit_mtl.md")
    full = {k[1]: v for k, v in rows.items() if k[0] == "S-D-N-E"}
    seg, rmse, angle, edge = "Seg mIoU ↑", "Depth RMSE ↓", "Normals mean ° ↓", "Edge L1 ↓"
    # mIoU 55, 52: mean 53.5, std 2.12, interval 53.5 ± 12.706 x 2.121 / 1.414 = ± 19.06
    assert full["VTAGML (TAA+TSN+TROA)"][seg] == "53.5 ± 2.1 [34.4, 72.6]"
    assert full["Single-task"][seg] == full["– TAA"][seg] == "51.0 ± 1.4 [38.3, 63.7]"
    assert full["Full finetuning"][rmse] == "4.510 ± 0.156 [3.112, 5.908]"
    assert full["VTAGML (TAA+TSN+TROA)"][angle] == "22.0 ± 0.0 [22.0, 22.0]"
    assert full["VTAGML (TAA+TSN+TROA)"]["Normals <11.25° ↑"] == "18.0 ± 0.0"  # not a primary metric: no interval
    assert full["Full finetuning"][edge].startswith("0.1100 ± 0.0141 [")
    # S-D group: normals/edges absent -> "–"
    sd = {k[1]: v for k, v in rows.items() if k[0] == "S-D"}
    assert sd["VTAGML (TAA+TSN+TROA)"][seg] == "52.0 ± 1.4 [39.3, 64.7]"
    for row in sd.values():
        assert row[angle] == row[edge] == row["Normals <11.25° ↑"] == "–"
    assert full["Single-task"]["Trainable params"] == "40.00 M"  # 4 single-task models summed
    assert full["VTAGML (TAA+TSN+TROA)"]["Trainable params"] == "2.00 M"


def test_marks_within_each_task_set(tmp_path):
    """Three seeds (semseg offsets -1, 0, +1: std 1; a gap above 2.27 exceeds the noise, see
    test_report_tables); the other metrics are the same for every seed and row."""
    metrics_dir, runs_dir = tmp_path / "metrics", tmp_path / "runs"
    metrics_dir.mkdir()
    runs_dir.mkdir()
    seg = {("single_task", "SDNE"): 30.0, ("vtagml", "SD"): 60.0, ("full_finetune", "SDNE"): 50.0,
           ("vtagml", "SDNE"): 40.0}
    for seed, offset in ((0, -1.0), (1, 0.0), (2, 1.0)):
        rest = {"depth": 4.0, "normals": 20.0, "edges": 0.1}
        for task in ALL:
            _record(metrics_dir, "single_task", [task], seed, {"semseg": 30.0 + offset, **rest}, 1, 1, 1.0, 1)
        for (paradigm, tset), value in seg.items():
            if paradigm == "single_task":
                continue
            tasks = ALL if tset == "SDNE" else ["semseg", "depth"]
            run = _record(metrics_dir, paradigm, tasks, seed, {"semseg": value + offset, **rest}, *TRAIN[paradigm])
            if paradigm == "vtagml":
                _log(runs_dir, run, tasks, seed)
    write_vit_tables({"vit": {"source": SOURCE, "tasks": ALL, "seeds": [0, 1, 2]}}, metrics_dir, runs_dir,
                     tmp_path / "tables", tmp_path / "figures")
    rows = _md_rows(tmp_path / "tables" / "vit_mtl.md")
    column = "Seg mIoU ↑"
    # S-D: 60 is far above the single-task 30: bold; no row below the runner-up, so nothing underlined
    assert rows[("S-D", "VTAGML (TAA+TSN+TROA)")][column] == "**60.0 ± 1.0 [57.5, 62.5]**"
    assert rows[("S-D", "Single-task")][column] == "30.0 ± 1.0 [27.5, 32.5]"
    # S-D-N-E ranked on its own: finetuning's 50 is bold though S-D's 60 is higher; 40 beats 30: underlined
    assert rows[("S-D-N-E", "Full finetuning")][column] == "**50.0 ± 1.0 [47.5, 52.5]**"
    assert rows[("S-D-N-E", "VTAGML (TAA+TSN+TROA)")][column] == "<u>40.0 ± 1.0 [37.5, 42.5]</u>"
    assert rows[("S-D-N-E", "Single-task")][column] == "30.0 ± 1.0 [27.5, 32.5]"
    md = (tmp_path / "tables" / "vit_mtl.md").read_text()
    assert "n = 3 seeds per cell (seeds 0, 1, 2)" in md and "within each task set" in md
    assert "Seg mIoU ↑ (S-D-N-E): Full finetuning is best beyond seed noise, VTAGML (TAA+TSN+TROA) second" in md
    # depth RMSE is 4.0 in every row and seed: the table says the rows do not differ on it
    assert "the same value in every row, so the compared models do not differ on: Depth RMSE ↓ (S-D 4.000; S-D-N-E 4.000)" in md


def test_one_seed_from_vit_seeds(study):
    tmp_path, metrics_dir, runs_dir = study
    write_vit_tables({"vit": {"source": SOURCE, "tasks": ALL, "seeds": [1]}}, metrics_dir, runs_dir,
                     tmp_path / "tables", tmp_path / "figures")
    md = (tmp_path / "tables" / "vit_mtl.md").read_text()
    rows = _md_rows(tmp_path / "tables" / "vit_mtl.md")
    assert rows[("S-D-N-E", "VTAGML (TAA+TSN+TROA)")]["Δm (%) ↑"] == "-2.50"  # seed 1 only, no std, no interval
    assert "One seed (n = 1, seed 1): no std, no 95 % interval, nothing highlighted" in md
    assert "**" not in md and "<u>" not in md
    assert "__s0" not in md  # seed 0's runs are not vit.seeds


def test_params_table(study):
    tmp_path, metrics_dir, runs_dir = study
    _write(tmp_path, metrics_dir, runs_dir)
    rows = {k[1]: v for k, v in _md_rows(tmp_path / "tables" / "vit_params.md").items()}
    assert list(rows) == ["Single-task", "Full finetuning", "VTAGML (TAA+TSN+TROA)", "– TAA"]
    single = rows["Single-task"]
    assert single["Total params"] == "120.00 M" and single["Trainable params"] == "40.00 M"
    assert single["Train time / epoch (s)"] == "14.0 ± 0.0"  # 2 + 3 + 4 + 5
    assert single["Adapter ckpt (MB)"] == "4.00 ± 0.00"  # 4 x 10^6 bytes, MB = 10^6 bytes
    # identical over seeds (std 0): the smallest differs from every other row deterministically -> bold
    assert rows["VTAGML (TAA+TSN+TROA)"]["Adapter ckpt (MB)"] == "<u>2.50 ± 0.00</u>"
    assert rows["– TAA"]["Trainable params"] == "**1.50 M**"
    assert rows["– TAA"]["Adapter ckpt (MB)"] == "**2.00 ± 0.00**"
    assert rows["Full finetuning"]["Adapter ckpt (MB)"] == "104.00 ± 0.00"
    assert rows["Full finetuning"]["Total params"] == "26.00 M"
    assert "MB = 10^6 bytes" in (tmp_path / "tables" / "vit_params.md").read_text()
    with open(tmp_path / "tables" / "vit_params.csv", newline="") as fh:
        csv_rows = {r["paradigm"]: r for r in csv.DictReader(fh)}
    assert float(csv_rows["single_task"]["trainable_params_mean"]) == 40_000_000
    assert float(csv_rows["vtagml"]["adapter_bytes_mean"]) == 2_500_000
    assert csv_rows["vtagml_no_taa"]["adapter_bytes_mark"] == "best" and csv_rows["vtagml"]["adapter_bytes_mark"] == "second"


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
        assert tex.isascii(), (stem, [c for c in tex if not c.isascii()])
    tex = (tmp_path / "tables" / "vit_mtl.tex").read_text()
    assert r"Depth $\delta$\textless{}1.25 $\uparrow$" in tex and r"Normals mean $^\circ$ $\downarrow$" in tex
    assert tex.count(r"\midrule") == 2  # after the header, and between the S-D and S-D-N-E groups


def test_params_table_shows_both_readings_of_adapted_block_training(study):
    """A VTAGML run records its trainable parameters under both settings of vit.adapted_block_training
    (the same model counted twice): both appear in the parameter table, '–' for the baselines."""
    tmp_path, metrics_dir, runs_dir = study
    for path in metrics_dir.glob("*__vtagml__semseg-depth-normals-edges__s*.json"):
        rec = json.loads(path.read_text())
        rec["train"]["parameter_budget"] = {"frozen": 2_000_000, "full": 9_500_000}
        path.write_text(json.dumps(rec))
    _write(tmp_path, metrics_dir, runs_dir)
    rows = {k[1]: v for k, v in _md_rows(tmp_path / "tables" / "vit_params.md").items()}
    vtagml = rows["VTAGML (TAA+TSN+TROA)"]
    assert vtagml["Trainable, adapted blocks frozen"].strip("*<u>/") == "2.00 M"
    assert vtagml["Trainable, adapted blocks trained (released code)"].strip("*<u>/") == "9.50 M"
    assert rows["Full finetuning"]["Trainable, adapted blocks frozen"] == "–"
    assert "as the released code" in (tmp_path / "tables" / "vit_params.md").read_text()
