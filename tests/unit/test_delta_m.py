"""delta_m against values worked out by hand, and the tables built from metrics records."""
import csv
import io

import pytest

from mtwork.evaluate import delta_m
from mtwork.report.records import build_rows
from mtwork.report.tables import render_csv, render_latex, render_markdown, table_cells, caption
from mtwork.engine.optim import lr_factor


def test_delta_m_hand_computed():
    metrics = {"semseg": {"miou": 55.0}, "drivable": {"miou": 80.0}, "det": {"map": 18.0}}
    base = {"semseg": {"miou": 50.0}, "drivable": {"miou": 80.0}, "det": {"map": 20.0}}
    up = {"semseg": True, "drivable": True, "det": True}
    # (+10% + 0% - 10%) / 3 = 0
    assert delta_m(metrics, base, up) == pytest.approx(0.0)
    metrics["det"]["map"] = 22.0
    assert delta_m(metrics, base, up) == pytest.approx(100 * (0.1 + 0 + 0.1) / 3)


def test_delta_m_lower_is_better_flips_sign():
    primary = {"depth": "rmse"}
    assert delta_m({"depth": {"rmse": 4.0}}, {"depth": {"rmse": 5.0}}, {"depth": False}, primary) == pytest.approx(20.0)


def test_delta_m_missing_baseline_is_an_error():
    with pytest.raises(KeyError, match="det"):
        delta_m({"det": {"map": 1.0}}, {}, {"det": True})


def _record(source, paradigm, tasks, seed, values, seconds, trainable):
    metrics = {t: {"miou": values[t]} if t != "det" else {"map": values[t], "map50": 2 * values[t]} for t in tasks}
    return {
        "run": f"{source}__{paradigm}__{'-'.join(tasks)}__s{seed}",
        "source": source,
        "paradigm": paradigm,
        "tasks": list(tasks),
        "seed": seed,
        "metrics": metrics,
        "higher_is_better": {t: ({"miou": True} if t != "det" else {"map": True, "map50": True}) for t in tasks},
        "train": {"seconds": seconds, "trainable_params": trainable},
    }


def _records():
    tasks = ("semseg", "drivable", "det")
    out = []
    for seed, bump in ((0, 0.0), (1, 2.0)):
        for t, v in (("semseg", 40.0), ("drivable", 70.0), ("det", 10.0)):
            out.append(_record("moco_v2", "single_task", (t,), seed, {t: v + bump}, 10.0, {"finetune": 100}))
        out.append(_record("moco_v2", "pretrain_finetune", tasks, seed, {"semseg": 36.0 + bump, "drivable": 70.0 + bump, "det": 9.0 + bump}, 20.0, {"finetune": 150}))
        out.append(_record("moco_v2", "pretrain_adapt_finetune", tasks, seed, {"semseg": 44.0 + bump, "drivable": 70.0 + bump, "det": 11.0 + bump}, 18.0, {"adapt": 60, "finetune": 160}))
    return out


def test_rows_fold_seeds_and_single_task_runs():
    rows = build_rows(_records(), ["moco_v2"], ["semseg", "drivable", "det"])
    assert [r.paradigm for r in rows] == ["single_task", "pretrain_finetune", "pretrain_adapt_finetune"]
    single, ft, adapt = rows
    assert single.cells[("semseg", "miou")].mean == pytest.approx(41.0)
    assert single.trainable_params == 300  # three separate single-task models
    assert single.train_seconds.mean == pytest.approx(30.0)
    # seed 0: (-10% + 0 - 10%)/3; seed 1: ((38-42)/42 + 0 + (11-12)/12)/3
    expected = [100 * (-0.1 - 0.1) / 3, 100 * ((38 - 42) / 42 + (11 - 12) / 12) / 3]
    assert ft.delta_m.values == pytest.approx(expected)
    assert adapt.adapt_trainable_params == 60 and adapt.trainable_params == 160


def test_rendered_tables_mark_best_and_second():
    rows = build_rows(_records(), ["moco_v2"], ["semseg", "drivable", "det"])
    headers, body = table_cells(rows)
    md = render_markdown(headers, body, caption("T", rows, [0, 1]))
    seg_col = headers.index("Seg mIoU")
    assert body[2][seg_col][1] == "best" and body[0][seg_col][1] == "second"
    assert "**45.0 ± 1.4**" in md and "<u>41.0 ± 1.4</u>" in md
    delta_col = headers.index("Δm (%)")
    assert body[0][delta_col][1] == ""  # single-task rows are the reference, never ranked on delta_m
    assert {body[1][delta_col][1], body[2][delta_col][1]} == {"best", "second"}
    assert "moco_v2__single_task__semseg__s0" in md and "Maninis" in md
    tex = render_latex(headers, body, "cap", "tab:x")
    assert r"\toprule" in tex and r"\textbf{45.0 $\pm$ 1.4}" in tex and r"\underline{" in tex
    table = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert float(table[2]["semseg_miou_mean"]) == pytest.approx(45.0)


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)


def test_delta_m_is_undefined_when_a_baseline_scores_zero():
    records = _records()
    for rec in records:
        if rec["paradigm"] == "single_task" and rec["tasks"] == ["det"] and rec["seed"] == 1:
            rec["metrics"]["det"]["map"] = 0.0
    rows = build_rows(records, ["moco_v2"], ["semseg", "drivable", "det"])
    assert rows[1].delta_m is None and rows[1].delta_m_undefined
    headers, body = table_cells(rows)
    assert body[1][headers.index("Δm (%)")][0] == "–"


def test_figures_from_rows_and_logs(tmp_path):
    from PIL import Image

    from mtwork.report.figures import plot_delta_m, plot_training_curves

    rows = build_rows(_records(), ["moco_v2"], ["semseg", "drivable", "det"])
    png = tmp_path / "delta_m.png"
    plot_delta_m(rows, png, "Δm")
    assert Image.open(png).size[0] > 100
    with pytest.raises(ValueError, match="no multi-task rows"):
        plot_delta_m([r for r in rows if r.paradigm == "single_task"], tmp_path / "none.png", "Δm")
    assert not (tmp_path / "none.png").exists()
    runs = tmp_path / "runs"
    for rec in _records():
        (runs / rec["run"]).mkdir(parents=True)
        epochs = [{"epoch": e, "stage": "adapt" if e == 1 and "adapt" in rec["paradigm"] else "finetune",
                   "loss": 2.0 / e, "task_loss": {}} for e in (1, 2, 3)]
        log = {"run": rec["run"], "source": rec["source"], "paradigm": rec["paradigm"], "tasks": rec["tasks"], "epochs": epochs}
        (runs / rec["run"] / "log.json").write_text(__import__("json").dumps(log))
    curves = tmp_path / "curves.png"
    plot_training_curves(runs, [r["run"] for r in _records()], curves)
    assert curves.is_file()
    with pytest.raises(FileNotFoundError, match="missing_run"):
        plot_training_curves(runs, ["missing_run"], tmp_path / "x.png")
