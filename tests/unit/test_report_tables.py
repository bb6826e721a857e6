"""Source 1's tables (mtwork.report.tables.write_tables) on hand-made records over three seeds.

Every row's values move by the same offsets over the seeds (-1, 0, +1: std 1, n = 3), so Welch's
t-test between two rows is t = diff / sqrt(1/3 + 1/3), df = 4, and a difference exceeds the seed noise at
5 % exactly when it is above t_{0.975, 4} * sqrt(2/3) = 2.776 * 0.816 = 2.27. The 95 % interval of a
cell is mean ± t_{0.975, 2} / sqrt(3) = mean ± 4.303 / 1.732 = mean ± 2.48.
"""
from __future__ import annotations

import csv
import json
import math

import pytest

from mtwork.report.tables import write_tables

TASKS = ["semseg", "drivable", "det"]
SOURCES = ["moco_v2", "simclr"]
PARADIGMS = ["single_task", "pretrain_finetune", "pretrain_adapt_finetune"]
OFFSET = {0: -1.0, 1: 0.0, 2: 1.0}
# (source, paradigm) -> (semseg mIoU, drivable mIoU, det mAP) before the seed offset; det mAP50 = 2 x mAP
BASE = {
    # semseg: moco_v2 adapt 50 is best by 5 > 2.27, simclr adapt 45 beats every row below it by >= 4: bold + underline
    # drivable: every row within 1.5 < 2.27 of the best: no mark
    # det: 10 and 9 cannot be told apart (1 < 2.27), both far above the rest: both share rank 1 (dagger)
    ("moco_v2", "single_task"): (40.0, 70.0, 3.0),
    ("moco_v2", "pretrain_finetune"): (41.0, 70.5, 10.0),
    ("moco_v2", "pretrain_adapt_finetune"): (50.0, 71.0, 2.0),
    ("simclr", "single_task"): (39.0, 71.5, 1.5),
    ("simclr", "pretrain_finetune"): (38.0, 70.2, 9.0),
    ("simclr", "pretrain_adapt_finetune"): (45.0, 70.8, 1.2),
}
HIB = {"semseg": {"miou": True}, "drivable": {"miou": True}, "det": {"map": True, "map50": True}}


def _metrics(task, values, seed):
    semseg, drivable, det = (v + OFFSET[seed] for v in values)
    return {"semseg": {"miou": semseg, "iou/car": 1.0}, "drivable": {"miou": drivable},
            "det": {"map": det, "map50": 2 * det}}[task]


def _record(source, paradigm, tasks, seed):
    run = f"{source}__{paradigm}__{'-'.join(tasks)}__s{seed}"
    stages = {"adapt": 60, "finetune": 160} if "adapt" in paradigm else {"finetune": 150 if len(tasks) > 1 else 100}
    return run, {
        "run": run, "protocol": "mtl", "domain": "clear_day", "source": source, "paradigm": paradigm,
        "tasks": tasks, "seed": seed,
        "metrics": {t: _metrics(t, BASE[(source, paradigm)], seed) for t in tasks},
        "higher_is_better": {t: HIB[t] for t in tasks},
        "train": {"seconds": 10.0 + seed, "trainable_params": stages},
    }


def _params(seeds):
    return {"checkpoints": {"sources": SOURCES}, "data": {"source_domain": "clear_day", "dg_domains": []},
            "train": {"tasks": TASKS, "paradigms": PARADIGMS, "seeds": seeds}}


def _write_study(root, seeds=(0, 1, 2)):
    metrics, runs = root / "metrics", root / "runs"
    metrics.mkdir()
    for source in SOURCES:
        for paradigm in PARADIGMS:
            for seed in seeds:
                for tasks in ([[t] for t in TASKS] if paradigm == "single_task" else [TASKS]):
                    run, rec = _record(source, paradigm, tasks, seed)
                    (metrics / f"{run}.json").write_text(json.dumps(rec))
                    (runs / run).mkdir(parents=True)
                    epochs = [{"epoch": e, "stage": "finetune", "loss": 1.0 / e} for e in (1, 2)]
                    (runs / run / "log.json").write_text(json.dumps(
                        {"run": run, "source": source, "paradigm": paradigm, "tasks": tasks, "epochs": epochs}))
    return metrics, runs


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    metrics, runs = _write_study(root)
    write_tables(_params([0, 1, 2]), metrics, runs, root / "tables", root / "figures")
    assert (root / "figures" / "delta_m.png").is_file() and (root / "figures" / "training_curves.png").is_file()
    return root / "tables"


def _md(path):
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("| ")]
    headers = [c.strip() for c in lines[0].strip("|").split("|")]
    return {tuple(c.strip() for c in ln.strip("|").split("|")[:2]): dict(zip(headers, (c.strip() for c in ln.strip("|").split("|"))))
            for ln in lines[1:]}


def test_cells_give_mean_std_and_interval(tables):
    rows = _md(tables / "mtl.md")
    # 49, 50, 51: mean 50, std 1, interval 50 ± 2.48
    assert rows[("moco_v2", "pretrain-adapt-finetune")]["Seg mIoU"] == "**50.0 ± 1.0 [47.5, 52.5]**"
    # det mAP50 is not a primary metric: mean ± std only
    assert rows[("moco_v2", "pretrain-finetune")]["Det mAP50"] == "20.0 ± 2.0 †"
    assert rows[("moco_v2", "single-task")]["Δm (%)"] == "0 (reference)"
    assert rows[("moco_v2", "single-task")]["Trainable params"] == "0.00 M"  # 3 x 100 parameters
    assert rows[("moco_v2", "pretrain-adapt-finetune")]["Trainable params"] == "0.00 M (adapt 0.00 M)"
    assert rows[("simclr", "pretrain-finetune")]["Train time (s)"] == "11 ± 1"  # 10, 11, 12 s
    assert rows[("simclr", "single-task")]["Train time (s)"] == "33 ± 3"  # three runs of 10, 11, 12 s summed
    md = (tables / "mtl.md").read_text()
    assert "n = 3 seeds per cell (seeds 0, 1, 2)" in md and "| n |" not in md
    assert "Δm (Maninis et al. 2019, single-task baselines, primary metrics: semseg miou, drivable miou, det map)" in md
    assert "same checkpoint source and seed" in md and "moco_v2__single_task__semseg__s2" in md


def test_bold_only_where_welch_says_so(tables):
    rows = _md(tables / "mtl.md")
    seg = {k: v["Seg mIoU"] for k, v in rows.items()}
    assert [k for k, v in seg.items() if v.startswith("**")] == [("moco_v2", "pretrain-adapt-finetune")]
    assert [k for k, v in seg.items() if v.startswith("<u>")] == [("simclr", "pretrain-adapt-finetune")]
    # drivable: the spread of the means (1.5) is below the noise threshold 2.27: nothing marked
    assert all(not v["Drivable mIoU"].startswith(("**", "<u>")) and "†" not in v["Drivable mIoU"] for v in rows.values())
    # det: 10 vs 9 within noise -> no bold, both share rank 1; the others are below beyond noise
    det = {k: v["Det mAP"] for k, v in rows.items()}
    assert sorted(k for k, v in det.items() if v.endswith("†")) == [("moco_v2", "pretrain-finetune"), ("simclr", "pretrain-finetune")]
    assert not any(v.startswith(("**", "<u>")) for v in det.values())
    assert det[("moco_v2", "pretrain-finetune")] == "10.0 ± 1.0 [7.5, 12.5] †"
    signal = [ln for ln in (tables / "mtl.md").read_text().splitlines() if ln.startswith("Signal")][0]
    assert signal.startswith("Signal (n = 3, Welch's t-test at 5 %): ")
    assert "Seg mIoU: moco_v2 pretrain-adapt-finetune is best beyond seed noise, simclr pretrain-adapt-finetune second" in signal
    assert "Det mAP: moco_v2 pretrain-finetune, simclr pretrain-finetune share the best (†), 4 rows below them" in signal
    assert "no difference exceeds seed noise in " in signal and "Drivable mIoU" in signal.split("no difference")[1]


def test_delta_m_marks_agree_with_scipy_welch(tables):
    scipy_stats = pytest.importorskip("scipy.stats")
    with open(tables / "mtl.csv", newline="") as fh:
        table = {(r["source"], r["paradigm"]): r for r in csv.DictReader(fh)}

    def dm(source, paradigm, seed):  # Δm by the definition, from the values above
        multi, single = BASE[(source, paradigm)], [BASE[(source, "single_task")]]
        m = [v + OFFSET[seed] for v in multi]
        b = [v + OFFSET[seed] for v in single[0]]
        return 100 * sum((mi - bi) / bi for mi, bi in zip(m, b)) / 3

    values = {(s, p): [dm(s, p, seed) for seed in (0, 1, 2)] for s in SOURCES for p in PARADIGMS[1:]}
    for key, vals in values.items():
        mean = sum(vals) / 3
        assert float(table[key]["delta_m_mean"]) == pytest.approx(mean, rel=1e-9)
        assert int(table[key]["delta_m_n"]) == 3
    best = max(values, key=lambda k: sum(values[k]))
    others = [k for k in values if k != best]
    separated = [scipy_stats.ttest_ind(values[best], values[k], equal_var=False).pvalue < 0.05 for k in others]
    marks = {k: table[k]["delta_m_mark"] for k in values}
    if all(separated):
        assert marks[best] == "best"
    elif not any(separated):
        assert set(marks.values()) == {""}
    else:
        tied = {best} | {k for k, sep in zip(others, separated) if not sep}
        assert {k for k, m in marks.items() if m == "tied_best"} == tied
    assert table[("moco_v2", "single_task")]["delta_m_mark"] == ""  # the reference is never ranked


def test_csv_raw_numbers(tables):
    with open(tables / "mtl.csv", newline="") as fh:
        table = {(r["source"], r["paradigm"]): r for r in csv.DictReader(fh)}
    assert len(table) == 6
    row = table[("moco_v2", "pretrain_adapt_finetune")]
    assert row["n_seeds"] == "3" and row["seeds"] == "0 1 2" and row["domain"] == "clear_day"
    assert float(row["semseg_miou_mean"]) == 50.0 and float(row["semseg_miou_std"]) == pytest.approx(1.0)
    assert row["semseg_miou_n"] == "3" and row["semseg_miou_mark"] == "best"
    half = 4.302653 / math.sqrt(3)  # t_{0.975, 2} from the t table, to 6 decimals
    assert float(row["semseg_miou_ci_low"]) == pytest.approx(50 - half, abs=1e-5)
    assert float(row["semseg_miou_ci_high"]) == pytest.approx(50 + half, abs=1e-5)
    assert table[("simclr", "pretrain_adapt_finetune")]["semseg_miou_mark"] == "second"
    assert table[("simclr", "pretrain_finetune")]["det_map_mark"] == "tied_best"
    assert float(row["trainable_params_mean"]) == 160 and float(row["adapt_trainable_params_mean"]) == 60
    assert "semseg_iou/car_mean" not in row  # per-class entries are not table columns
    assert row["runs"].split() == [f"moco_v2__pretrain_adapt_finetune__semseg-drivable-det__s{s}" for s in (0, 1, 2)]


def test_latex_form(tables):
    tex = (tables / "mtl.tex").read_text()
    assert tex.isascii(), [c for c in tex if not c.isascii()]
    assert r"\textbf{50.0 $\pm$ 1.0 [47.5, 52.5]}" in tex
    assert r"\underline{45.0 $\pm$ 1.0 [42.5, 47.5]}" in tex
    assert r"10.0 $\pm$ 1.0 [7.5, 12.5]\textsuperscript{\dag}" in tex
    assert r"$\Delta_m$ (Maninis et al. 2019, single-task baselines" in tex
    assert tex.count(r"\textbf{") == 1 and tex.count(r"\underline{") == 1
    # header + 6 rows end in \\; a rule between the two sources
    assert sum(1 for ln in tex.splitlines() if ln.rstrip().endswith(r"\\")) == 7
    assert tex.count(r"\midrule") == 2 and r"{\footnotesize Signal (n = 3" in tex


def test_one_seed_highlights_nothing(tmp_path):
    metrics, runs = _write_study(tmp_path, seeds=(1,))
    write_tables(_params([1]), metrics, runs, tmp_path / "tables", tmp_path / "figures")
    md = (tmp_path / "tables" / "mtl.md").read_text()
    rows = _md(tmp_path / "tables" / "mtl.md")
    assert rows[("moco_v2", "pretrain-adapt-finetune")]["Seg mIoU"] == "50.0"  # no std, no interval
    assert "**" not in md and "<u>" not in md and "†" not in md.split("\n\n")[1]
    assert "One seed (n = 1, seed 1): no std, no 95 % interval, nothing highlighted" in md
    assert "Signal: one seed (n = 1): no difference can be told from seed noise." in md


def test_stale_seeds_left_out_and_uneven_n_shown(tmp_path):
    metrics, runs = _write_study(tmp_path)
    (metrics / "simclr__pretrain_finetune__semseg-drivable-det__s2.json").unlink()
    write_tables(_params([0, 1]), metrics, runs, tmp_path / "t2", tmp_path / "f2")  # seed 2 not configured
    assert "n = 2 seeds per cell (seeds 0, 1)" in (tmp_path / "t2" / "mtl.md").read_text()
    write_tables(_params([0, 1, 2]), metrics, runs, tmp_path / "t3", tmp_path / "f3")
    rows = _md(tmp_path / "t3" / "mtl.md")
    assert rows[("simclr", "pretrain-finetune")]["n"] == "2" and rows[("moco_v2", "pretrain-finetune")]["n"] == "3"
    # 38+-1 over seeds 0, 1 -> 37, 38: mean 37.5, std 0.707, interval 37.5 ± 12.706 * 0.707 / 1.414 = ± 6.35
    assert rows[("simclr", "pretrain-finetune")]["Seg mIoU"] == "37.5 ± 0.7 [31.1, 43.9]"


def test_duplicate_row_and_seed_is_an_error(tmp_path):
    metrics, runs = _write_study(tmp_path)
    _, rec = _record("moco_v2", "pretrain_finetune", TASKS, 0)
    rec["run"] = "moco_v2__pretrain_finetune__semseg-drivable-det__s0__again"
    (metrics / "zz_copy.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="zz_copy.json.*same row.*ROW_KEYS"):
        write_tables(_params([0, 1, 2]), metrics, runs, tmp_path / "t", tmp_path / "f")


def test_a_column_the_same_in_every_row_is_called_out(tmp_path):
    metrics, runs = _write_study(tmp_path)
    for i, path in enumerate(sorted(metrics.glob("*.json"))):
        rec = json.loads(path.read_text())
        if "drivable" in rec["metrics"]:
            # the same for every seed; rows differ only below the digits shown (a constant prediction, say)
            rec["metrics"]["drivable"]["miou"] = 50.0 + 0.001 * (hash(rec["source"] + rec["paradigm"]) % 7)
            path.write_text(json.dumps(rec))
    write_tables(_params([0, 1, 2]), metrics, runs, tmp_path / "tables", tmp_path / "figures")
    rows = _md(tmp_path / "tables" / "mtl.md")
    assert {v["Drivable mIoU"] for v in rows.values()} == {"50.0 ± 0.0 [50.0, 50.0]"}  # no mark on equal-looking cells
    md = (tmp_path / "tables" / "mtl.md").read_text()
    assert "the same value in every row, so the compared models do not differ on: Drivable mIoU (50.0)" in md


def test_row_keys_read_records_and_an_unshown_key_that_varies_becomes_a_column(tmp_path):
    from mtwork.report.layout import build_table
    from mtwork.report.records import RowKey
    from mtwork.report.tables import mtl_spec, source1_frame

    rec = {"train": {"placement": ["s3", "s4"], "blocks": None}, "paradigm": "lora"}
    assert RowKey("placement", "train.placement").read(rec) == "s3-s4"
    assert RowKey("blocks", "train.blocks", default="all").read(rec) == "all"  # older records lack the field
    assert RowKey("paradigm").read(rec) == "lora" and RowKey("missing").read(rec) == ""

    records = [_record(s, p, tasks, seed)[1] for s in SOURCES for p in PARADIGMS for seed in (0, 1, 2)
               for tasks in ([[t] for t in TASKS] if p == "single_task" else [TASKS])]
    for rec in records:
        if rec["source"] == "simclr":
            rec["domain"] = "dusk_fog"
    table = build_table(source1_frame(records, TASKS), mtl_spec("T", SOURCES, {}))
    assert table.headers[:3] == ["Checkpoint", "Paradigm", "domain"]
    assert [row[2][0] for row in table.body] == ["clear_day"] * 3 + ["dusk_fog"] * 3

    # a key filled only where it applies (one adapter placement, "" for the other paradigms) tells no rows
    # apart that the shown keys do not: no column; two placements of one paradigm: a column
    records = [_record(s, p, tasks, seed)[1] for s in SOURCES for p in PARADIGMS for seed in (0, 1)
               for tasks in ([[t] for t in TASKS] if p == "single_task" else [TASKS])]
    for rec in records:
        rec["adapter_placement"] = "outputs" if rec["paradigm"] == "pretrain_adapt_finetune" else None
    table = build_table(source1_frame(records, TASKS), mtl_spec("T", SOURCES, {}))
    assert "adapter_placement" not in table.headers
    stages = [dict(r, adapter_placement="stages", run=r["run"] + "-stages") for r in records
              if r["adapter_placement"] == "outputs"]
    table = build_table(source1_frame(records + stages, TASKS), mtl_spec("T", SOURCES, {}))
    assert table.headers[2] == "adapter_placement"
