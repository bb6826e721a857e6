"""The run plan: ids round-trip, paradigms have equal total epochs, baselines are found."""
from pathlib import Path

import pytest

from mtwork.config import load_params
from mtwork.plan import RunSpec, parse_run_id, plan_runs, single_task_baseline

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_plan_has_single_task_and_multitask_runs_per_source():
    p = load_params(PARAMS)
    runs = plan_runs(p)
    n_sources, n_tasks = len(p["checkpoints"]["sources"]), len(p["train"]["tasks"])
    n_multitask = len([q for q in p["train"]["paradigms"] if q != "single_task"])
    assert len(runs) == n_sources * (n_tasks + n_multitask) * len(p["train"]["seeds"])
    assert len({r.id for r in runs}) == len(runs)
    for run in runs:
        assert parse_run_id(run.id) == run


def test_paradigms_have_the_same_total_epochs():
    a = RunSpec("moco_v2", "pretrain_adapt_finetune", ("semseg", "det"), 0)
    f = RunSpec("moco_v2", "pretrain_finetune", ("semseg", "det"), 0)
    assert a.stages(6, 2) == [("adapt", 2), ("finetune", 4)]
    assert f.stages(6, 2) == [("finetune", 6)]
    assert sum(n for _, n in a.stages(6, 2)) == sum(n for _, n in f.stages(6, 2))
    assert a.method == "multiscale_adapter" and f.method == "finetune"


def test_baseline_is_same_source_and_seed():
    run = RunSpec("moco_v2", "pretrain_finetune", ("semseg", "det"), 3)
    assert single_task_baseline(run, "det").id == "moco_v2__single_task__det__s3"


@pytest.mark.parametrize("bad", ["moco", "a__b__c__sX", "a__nope__semseg__s0"])
def test_bad_run_ids_are_refused(bad):
    with pytest.raises(ValueError, match="run id"):
        parse_run_id(bad)
