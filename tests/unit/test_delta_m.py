"""delta_m against values worked out by hand, and its per-seed use in the report's long frame."""
import math
import statistics

import pytest

from mtwork.evaluate import delta_m
from mtwork.report.layout import build_table
from mtwork.report.records import summarize
from mtwork.report.tables import mtl_spec, source1_frame
from mtwork.engine.optim import lr_factor

TASKS = ["semseg", "drivable", "det"]


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


def _stat(frame, paradigm, column):
    from mtwork.report.records import ROW

    # the row keys these records fill; every other row key ("" in these records), then the column
    known = {"source": "moco_v2", "tasks": "semseg-drivable-det", "paradigm": paradigm}
    return summarize(frame).loc[tuple(known.get(k, "") for k in ROW) + (column,)]


def test_frame_folds_seeds_and_single_task_runs():
    frame = source1_frame(_records(), TASKS)
    assert set(frame["paradigm"]) == {"single_task", "pretrain_finetune", "pretrain_adapt_finetune"}
    assert _stat(frame, "single_task", "semseg_miou")["mean"] == pytest.approx(41.0)  # 40 and 42
    assert _stat(frame, "single_task", "trainable_params")["mean"] == 300  # three separate single-task models
    assert _stat(frame, "single_task", "train_seconds")["mean"] == pytest.approx(30.0)
    # seed 0: (-10% + 0 - 10%)/3; seed 1: ((38-42)/42 + 0 + (11-12)/12)/3, each against its own seed's baselines
    expected = [100 * (-0.1 - 0.1) / 3, 100 * ((38 - 42) / 42 + (11 - 12) / 12) / 3]
    lines = frame[(frame["paradigm"] == "pretrain_finetune") & (frame["column"] == "delta_m")].sort_values("seed")
    assert list(lines["value"]) == pytest.approx(expected)
    stat = _stat(frame, "pretrain_finetune", "delta_m")
    assert stat["n"] == 2 and stat["mean"] == pytest.approx(statistics.fmean(expected))
    assert stat["std"] == pytest.approx(statistics.stdev(expected))
    # 95 % interval over two seeds: mean ± t(0.975, 1) std / sqrt(2), t(0.975, 1) = 12.706 (t table)
    half = 12.7062 * statistics.stdev(expected) / math.sqrt(2)
    assert stat["ci_low"] == pytest.approx(statistics.fmean(expected) - half, rel=1e-4)
    assert stat["ci_high"] == pytest.approx(statistics.fmean(expected) + half, rel=1e-4)
    assert _stat(frame, "pretrain_adapt_finetune", "adapt_trainable_params")["mean"] == 60
    assert _stat(frame, "pretrain_adapt_finetune", "trainable_params")["mean"] == 160
    # the single-task row is Δm's reference: 0 on every seed with a run of every task
    assert list(frame[(frame["paradigm"] == "single_task") & (frame["column"] == "delta_m")]["value"]) == [0.0, 0.0]


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
    frame = source1_frame(records, TASKS)
    stat = _stat(frame, "pretrain_finetune", "delta_m")
    # one seed undefined -> the row's Δm is undefined (a mean over the other seed would mislead)
    assert stat["undefined"] == 1 and math.isnan(stat["mean"])
    table = build_table(frame, mtl_spec("T", ["moco_v2"], {}))
    column = table.headers.index("Δm (%)")
    assert table.body[1][column][0] == "–"
    assert "'det' map is 0 for seed 1" in table.notes[1]


def test_figures_from_frame_and_logs(tmp_path):
    from PIL import Image

    from mtwork.report.figures import plot_delta_m, plot_training_curves

    frame = source1_frame(_records(), TASKS)
    png = tmp_path / "delta_m.png"
    plot_delta_m(frame, png, "Δm")
    assert Image.open(png).size[0] > 100
    with pytest.raises(ValueError, match="no multi-task rows"):
        plot_delta_m(frame[frame["paradigm"] == "single_task"], tmp_path / "none.png", "Δm")
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
