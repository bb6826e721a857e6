"""Source 2's paper-scale configurations (configs/paper_*.yaml) as Snakemake dry runs on the readers'
fixtures: each names datasets in their real layouts (written by tests/unit/dense_layouts.py, which
`mtwork data check` passes), plans the multi-task, transfer and oracle runs on the right domains with
the right inputs, and nothing of source 1."""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import dense_layouts as dl  # noqa: E402

from mtwork.data.check import run_check_cli  # noqa: E402

CONFIGS = {  # config -> (source dataset, target dataset, writers, label space, transfer protocols on)
    "paper_vkitti2_cityscapes": ("vkitti2", "cityscapes", (dl.write_vkitti2, dl.write_cityscapes), "synthetic8", True),
    "paper_synthia_cityscapes": ("synthia", "cityscapes", (dl.write_synthia, dl.write_cityscapes), "synthia16", True),
    "paper_taskonomy_nyuv2": ("taskonomy", "nyuv2", (dl.write_taskonomy, dl.write_nyuv2), "indoor10", False),
}


def _argv(cmd: str):
    words = shlex.split(cmd)
    return words[:-3] if words[-3:-1] == [">", words[-2]] and words[-1] == "2>&1" else words


def _opt(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.mark.parametrize("name", list(CONFIGS))
def test_paper_config_plans_source_2_on_its_datasets(name, workflow_dir: Path, tmp_path: Path, wt, capsys):
    source, target, writers, space, transfers = CONFIGS[name]
    shutil.copytree(wt.REPO / "configs", workflow_dir / "configs")
    roots = {}
    for dataset, write in zip((source, target), writers):
        roots[dataset] = write(tmp_path / f"{dataset} data")  # a space: paths must be quoted
        assert run_check_cli(roots[dataset], fmt=dataset) == 0, capsys.readouterr().out
    weights = tmp_path / "swinv2_base_window16_256.bin"
    weights.write_bytes(b"x")
    jobs = wt.dry_run(workflow_dir, "results/tables", "--configfile", f"configs/{name}.yaml", "--config",
                      *[f"data__datasets__{d}__root={r}" for d, r in roots.items()],
                      f"checkpoints__catalog__swinv2_base_256__path={weights}")
    rules = [j.rule for j in jobs]
    # source 2 only: nothing generated, downloaded or pretrained, no source-1 evaluation
    assert not {"generate_synthdrive", "download", "pretrain", "evaluate"} & set(rules)
    checks = {_opt(_argv(j.cmd), "--format"): _argv(j.cmd)[-3] for j in jobs if j.rule == "check_data"}
    assert checks == {source: str(roots[source]), target: str(roots[target])}
    (imp,) = [j for j in jobs if j.rule == "import_checkpoint"]
    assert imp.outputs == ["models/pretrained/swinv2_base_256.pt"] and imp.inputs == [str(weights)]

    trains = {_opt(_argv(j.cmd), "--run"): _argv(j.cmd) for j in jobs if j.rule == "train"}
    assert all(j.resources.get("gpu") == "1" for j in jobs if j.rule in ("train", "evaluate_vit"))
    mtl = [r for r in trains if "__zeroshot-" not in r and "__uda-" not in r and "__oracle-" not in r]
    for run in mtl:
        argv = trains[run]
        assert (_opt(argv, "--domain"), _opt(argv, "--data")) == (source, str(roots[source])) and "--init" not in argv
        assert f"vit.label_space={space}" in [argv[i + 1] for i, w in enumerate(argv) if w == "--set"]
    zs = [r for r in trains if f"__zeroshot-{target}__" in r]
    uda = [r for r in trains if f"__uda-{target}__" in r]
    oracles = [r for r in trains if f"__oracle-{target}__" in r]
    assert bool(zs) == bool(uda) == bool(oracles) == transfers
    for run in zs:  # finetuned on the target, from the multi-task run of its paradigm
        argv = trains[run]
        init = run.replace(f"__zeroshot-{target}", "")
        assert (_opt(argv, "--domain"), _opt(argv, "--data"), _opt(argv, "--init")) == (
            target, str(roots[target]), f"models/runs/{init}") and init in trains
    for run in uda:  # labelled source, unlabelled target, from the S-D run of its paradigm
        argv = trains[run]
        assert run.split("__")[2] == "semseg-depth"
        assert (_opt(argv, "--domain"), _opt(argv, "--data"), _opt(argv, "--target-data")) == (
            source, str(roots[source]), str(roots[target]))
        assert _opt(argv, "--init").split("/")[-1] in trains
    for run in oracles:
        assert (_opt(trains[run], "--domain"), _opt(trains[run], "--data")) == (target, str(roots[target]))
    (ev,) = [j for j in jobs if j.rule == "evaluate_vit"]
    argv = _argv(ev.cmd)
    assert (_opt(argv, "--domain"), _opt(argv, "--data")) == (source, str(roots[source]))
    assert (_opt(argv, "--dg-domain"), _opt(argv, "--dg-data")) == (target, str(roots[target]))
    outputs = set(ev.outputs)
    if transfers:
        assert {f"results/metrics/vit/zeroshot/{target}/{r}.json" for r in zs} <= outputs
        assert {f"results/metrics/vit/dg/{target}/{r.replace(f'__uda-{target}', '')}.json" for r in uda} <= outputs
    else:  # DG: the full task set's runs and the single-task runs evaluated on the unseen domain
        full = max(len(r.split("__")[2].split("-")) for r in mtl)
        dg = [r for r in mtl if len(r.split("__")[2].split("-")) in (1, full)]
        assert {f"results/metrics/vit/dg/{target}/{r}.json" for r in dg} <= outputs
        assert not any(f"/dg/{target}/" in o for o in outputs if o.split("/")[-1][:-5] not in dg)


def test_full_study_config_plans_every_embedded_source_both_placements_and_task_subsets(workflow_dir: Path, wt):
    """configs/full_study.yaml: the default's schedule with every source that has an embedded pretraining
    (plus the `random` control), one run per adapter placement, and source 2's S-D and S-D-N runs."""
    shutil.copytree(wt.REPO / "configs", workflow_dir / "configs")
    jobs = wt.dry_run(workflow_dir, "results/tables", "--configfile", "configs/full_study.yaml")
    trains = [_opt(_argv(j.cmd), "--run") for j in jobs if j.rule == "train"]
    sources = {"random", "moco_v2", "simclr", "byol", "dino", "densecl", "clip_tiny"}
    imports = {Path(j.outputs[0]).stem for j in jobs if j.rule == "import_checkpoint"}
    assert imports == sources | {"swin_simmim"}
    assert len([j for j in jobs if j.rule == "pretrain"]) == len(sources - {"random"}) + 1  # + SimMIM
    assert len([j for j in jobs if j.rule == "evaluate"]) == len(sources)
    for source in sources:
        for paradigm in ("pretrain_adapt_finetune", "pretrain_adapt_finetune_lv"):
            # the first placement keeps the default's run id, the others carry theirs
            for run_paradigm in (paradigm, f"{paradigm}-stages"):
                assert f"{source}__{run_paradigm}__semseg-drivable-det__s0" in trains
    for tasks in ("semseg-depth", "semseg-depth-normals", "semseg-depth-normals-edges"):
        assert f"swin_simmim__vtagml__{tasks}__s1" in trains
