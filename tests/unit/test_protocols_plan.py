"""Source 2's transfer protocols in the plan: run ids, the runs they start from, where each is evaluated,
the settings each training job reads, and the checks of the protocol blocks."""
from __future__ import annotations

from pathlib import Path

import pytest

from mtwork.config import LABEL_SPACES, ParamsError, load_params
from mtwork.plan import (RunSpec, parse_run_id, plan_vit_runs, planned_domains, vit_evaluation_paths, vit_evaluations,
                         vit_init_run, vit_metrics_path, vit_train_domains)
from mtwork.workflow import job_param_keys

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
S = "swin_simmim"
SMALL = ["vit.tasks=[semseg, depth, normals]", "vit.task_subsets=[[semseg, depth]]", "vit.paradigms=[vtagml]",
         "vit.seeds=[0, 1]", "vit.zero_shot.paradigms=[vtagml]", "vit.zero_shot.finetune_tasks=[semseg]",
         "vit.uda.paradigms=[vtagml, full_finetune]"]


def _ids(runs):
    return [r.id for r in runs]


def test_protocol_runs_their_ids_and_the_runs_they_start_from():
    p = load_params(PARAMS, SMALL)
    ids = _ids(plan_vit_runs(p))
    zs = f"{S}__vtagml__semseg-depth-normals__zeroshot-night__s1"
    uda = f"{S}__full_finetune__semseg-depth__uda-night__s0"
    assert zs in ids and uda in ids
    assert parse_run_id(zs) == RunSpec(S, "vtagml", ("semseg", "depth", "normals"), 1, protocol="zeroshot", target="night")
    # each transfer starts from the mtl run of its source, paradigm, tasks and seed, planned before it;
    # full finetuning on S-D is not an mtl run of the vit lists: the UDA protocol adds it
    assert vit_init_run(parse_run_id(zs)).id == f"{S}__vtagml__semseg-depth-normals__s1"
    init = f"{S}__full_finetune__semseg-depth__s0"
    assert vit_init_run(parse_run_id(uda)).id == init and ids.index(init) < ids.index(uda)
    # the oracle: one single-task run per task on the target, shared by both protocols (same target)
    oracles = [i for i in ids if "__oracle-" in i]
    assert oracles == [f"{S}__single_task__{t}__oracle-night__s{s}" for s in (0, 1) for t in ("semseg", "depth", "normals")]
    assert vit_init_run(parse_run_id(oracles[0])) is None
    assert len(ids) == len(set(ids))


def test_where_each_run_trains_and_is_evaluated():
    p = load_params(PARAMS, SMALL)
    run = lambda i: parse_run_id(i)  # noqa: E731
    assert vit_train_domains(p, run(f"{S}__vtagml__semseg-depth__s0")) == ("clear_day", None)
    assert vit_train_domains(p, run(f"{S}__vtagml__semseg-depth-normals__zeroshot-night__s0")) == ("night", None)
    assert vit_train_domains(p, run(f"{S}__vtagml__semseg-depth__uda-night__s0")) == ("clear_day", "night")
    assert vit_train_domains(p, run(f"{S}__single_task__depth__oracle-night__s0")) == ("night", None)
    ev = {r.id: d for r, d in vit_evaluations(p).items()}
    # mtl runs: source, DG domain, and the target of the transfers that start from them (source only)
    assert ev[f"{S}__vtagml__semseg-depth-normals__s0"] == ["clear_day", "dusk_fog", "night"]
    # a subset's run goes to the target of the UDA run that starts from it, not to the DG domain (the
    # DG table shows the full task set and the single-task runs)
    assert ev[f"{S}__vtagml__semseg-depth__s0"] == ["clear_day", "night"]
    assert ev[f"{S}__single_task__depth__s0"] == ["clear_day", "dusk_fog"]
    assert ev[f"{S}__vtagml__semseg-depth__uda-night__s0"] == ["night"]
    mtl = run(f"{S}__vtagml__semseg-depth__s0")
    assert vit_evaluation_paths(p, mtl, ev[mtl.id], Path("m")) == [
        ("clear_day", Path(f"m/vit/{mtl.id}.json")), ("night", Path(f"m/vit/dg/night/{mtl.id}.json"))]
    full = run(f"{S}__vtagml__semseg-depth-normals__s0")
    assert vit_evaluation_paths(p, full, ev[full.id], Path("m"))[1] == ("dusk_fog", Path(f"m/vit/dg/dusk_fog/{full.id}.json"))
    uda = f"{S}__vtagml__semseg-depth__uda-night__s0"
    assert vit_metrics_path(uda, Path("m")) == Path(f"m/vit/uda/night/{uda}.json")
    with pytest.raises(ValueError, match="target 'night' only"):
        vit_metrics_path(uda, Path("m"), "dusk_fog")
    assert planned_domains(p) == ["clear_day", "dusk_fog", "night"]


def test_each_training_job_reads_its_protocols_settings_and_domains():
    p = load_params(PARAMS, SMALL)
    keys = job_param_keys(p, "train", {"run": f"{S}__vtagml__semseg-depth__uda-night__s0"})
    assert {"vit.uda.adversarial_weight", "vit.uda.pseudo_labels", "vit.epochs", "vit.label_space"} <= set(keys)
    assert {"data.domains.clear_day", "data.domains.night"} <= set(keys) and "vit.zero_shot.epochs" not in keys
    keys = job_param_keys(p, "train", {"run": f"{S}__vtagml__semseg-depth-normals__zeroshot-night__s0"})
    assert {"vit.zero_shot.finetune_tasks", "vit.zero_shot.epochs", "data.domains.night"} <= set(keys)
    assert "data.domains.clear_day" not in keys and not any(k.startswith("vit.uda") for k in keys)
    keys = job_param_keys(p, "train", {"run": f"{S}__vtagml__semseg-depth__s0"})
    assert not any(k.startswith(("vit.uda", "vit.zero_shot")) for k in keys) and "data.domains.clear_day" in keys


def test_protocols_switch_off():
    p = load_params(PARAMS, SMALL + ["vit.zero_shot.enabled=false", "vit.uda.paradigms=[]"])
    ids = _ids(plan_vit_runs(p))
    assert not any("__zeroshot-" in i or "__uda-" in i or "__oracle-" in i for i in ids)
    assert f"{S}__full_finetune__semseg-depth__s0" not in ids
    p = load_params(PARAMS, SMALL + ["vit.uda.oracle=false", "vit.zero_shot.oracle=false"])
    assert not any("__oracle-" in i for i in _ids(plan_vit_runs(p)))
    assert plan_vit_runs(load_params(PARAMS, SMALL + ["vit.enabled=false"])) == []


def test_own_domains_of_source_2():
    p = load_params(PARAMS, SMALL + ["vit.source_domain=dusk_fog", "vit.dg_domains=[clear_day]",
                                     "vit.uda.target_domain=clear_day"])
    ev = {r.id: d for r, d in vit_evaluations(p).items()}
    assert ev[f"{S}__vtagml__semseg-depth-normals__s0"] == ["dusk_fog", "clear_day", "night"]  # zero-shot to night
    assert ev[f"{S}__vtagml__semseg-depth__s0"] == ["dusk_fog", "clear_day"]  # UDA to clear_day
    assert vit_train_domains(p, parse_run_id(f"{S}__vtagml__semseg-depth__uda-clear_day__s0")) == ("dusk_fog", "clear_day")
    # oracles of two targets
    ids = _ids(plan_vit_runs(p))
    assert f"{S}__single_task__semseg__oracle-clear_day__s0" in ids and f"{S}__single_task__normals__oracle-night__s0" in ids
    assert f"{S}__single_task__normals__oracle-clear_day__s0" not in ids  # UDA's task set is S-D


@pytest.mark.parametrize("override, message", [
    ("vit.zero_shot.target_domain=clear_day", "vit.zero_shot.target_domain' is source 2's source domain"),
    ("vit.uda.target_domain=mars", "vit.uda.target_domain': domain 'mars' is not in data.domains"),
    ("vit.zero_shot.finetune_tasks=[semseg, depth, normals, edges]", "no task would be evaluated zero-shot"),
    ("vit.zero_shot.finetune_tasks=[drivable]", "vit.zero_shot.finetune_tasks"),
    ("vit.uda.tasks=[semseg, semseg]", "vit.uda.tasks"),
    ("vit.uda.pseudo_labels={threshold: 1.5, weight: 1}", "threshold' must be in"),
    ("vit.uda.pseudo_labels={threshold: 0.9}", "vit.uda.pseudo_labels' must be null or"),
    ("vit.uda.gan_loss=hinge", "vit.uda.gan_loss"),
    ("vit.uda.discriminator_lr=0", "vit.uda.discriminator_lr' must be > 0"),
    ("vit.dg_domains=[clear_day]", "lists source 2's source domain"),
    ("vit.dg_domains=[moon]", r"vit.dg_domains\[0\]"),
    ("vit.source_domain=moon", "vit.source_domain"),
    ("vit.label_space=coco", "vit.label_space"),
    ("vit.zero_shot.paradigms=[vtagml, vtagml]", "lists a paradigm twice"),
])
def test_protocol_settings_are_checked(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(PARAMS, [override])


def test_a_switched_off_protocol_is_not_checked():
    load_params(PARAMS, ["vit.uda.enabled=false", "vit.uda.target_domain=clear_day"])


def test_label_spaces_agree_with_the_registry():
    from mtwork.data.label_spaces import LABEL_SPACES as REGISTRY

    assert sorted(LABEL_SPACES) == REGISTRY.names()
