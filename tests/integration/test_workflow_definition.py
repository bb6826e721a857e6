"""The two DAG definitions agree, and the workflow reruns what it should.

Snakemake (Snakefile + rules/*.smk) is the execution engine and dvc.yaml drives DVC; both list the
same `mtwork` commands. These tests prove they plan the same jobs (command line + outputs, and each
job's params keys), that `snakemake --lint` is clean, that `--config` overrides reach every command
and switch to the paper-scale plan, and, with a stand-in `mtwork` that only writes placeholder
outputs, that a changed parameter reruns exactly the jobs that read it, in both engines.

Everything runs in a temporary copy of the workflow files (see conftest.py): the real data/,
models/ and results/ are never touched. The dry runs take ~10 s in all; the two stand-in executions
(~35-70 s together on 2 shared cores) are marked `slow`.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Dict, FrozenSet, List, Set, Tuple

import pytest
import yaml

from mtwork.config import yaml_dump, yaml_load


# dvc.yaml stage (before "@") -> the Snakemake rule that makes the same outputs
DVC_STAGE_RULE = {
    "generate_synthdrive": "generate_synthdrive",
    "generate_synthdrive_dg": "generate_synthdrive",
    "check_data": "check_data",
    "check_data_dg": "check_data",
    "pretrain": "pretrain",
    "import_checkpoint": "import_checkpoint",
    "train": "train",
    "train_single_task": "train",
    "evaluate": "evaluate",
    "evaluate_single_task": "evaluate",
    "import_checkpoint_vit": "import_checkpoint",
    "train_vit": "train_vit",
    "evaluate_vit": "evaluate_vit",
    "tables": "tables",
}

Key = Tuple[str, Tuple[str, ...], FrozenSet[str]]  # (rule, argv, outputs)


def _argv(cmd: str) -> Tuple[str, ...]:
    """A command as argv, without Snakemake's `> LOG 2>&1` redirection."""
    words = shlex.split(cmd)
    if len(words) >= 3 and words[-1] == "2>&1" and words[-3] == ">":
        words = words[:-3]
    return tuple(words)


def per_run(rule: str, argv: Tuple[str, ...], outputs: FrozenSet[str]) -> List[Key]:
    """An `mtwork evaluate` of several runs (Snakemake: one job per checkpoint source) as the commands
    of one --run-dir each that dvc.yaml spells, each with the metrics files named after its run."""
    where = [i for i, word in enumerate(argv) if word == "--run-dir"]
    if argv[:2] != ("mtwork", "evaluate") or len(where) < 2:
        return [(rule, argv, outputs)]
    rest = [w for i, w in enumerate(argv) if i not in where and i - 1 not in where]
    keys = []
    for i in where:
        run = Path(argv[i + 1]).name
        mine = frozenset(o for o in outputs if Path(o).stem == run)
        assert mine, f"no output of {run} among {sorted(outputs)}"
        keys.append((rule, tuple(rest[: where[0]] + ["--run-dir", argv[i + 1]] + rest[where[0]:]), mine))
    assert frozenset().union(*(k[2] for k in keys)) == outputs, "outputs that belong to no run"
    return keys


def snakemake_plan(jobs: List["Job"]) -> Set[Key]:
    return {key for j in jobs if j.rule != "all" for key in per_run(j.rule, _argv(j.cmd), frozenset(j.outputs))}


def dvc_stages(repo_dir: Path):
    from dvc.repo import Repo

    with Repo(str(repo_dir)) as repo:
        return list(repo.index.stages)


def dvc_plan(repo_dir: Path) -> Set[Key]:
    plan = set()
    for stage in dvc_stages(repo_dir):
        rule = DVC_STAGE_RULE[stage.name.split("@")[0]]
        plan.add((rule, _argv(stage.cmd), frozenset(str(o.def_path) for o in stage.outs)))
    return plan


def _diff(a: Set[Key], b: Set[Key]) -> str:
    fmt = lambda keys: "\n".join(f"  {r}: {' '.join(argv)} -> {sorted(outs)}" for r, argv, outs in sorted(keys))
    return f"only in Snakemake:\n{fmt(a - b)}\nonly in dvc.yaml:\n{fmt(b - a)}"


def _edit_params(wf: Path, edit) -> None:
    path = wf / "params.yaml"
    params = yaml_load(path.read_text())
    edit(params)
    path.write_text(yaml_dump(params))


def small_plan(wf: Path) -> None:
    """Shrink the plan of a workflow copy (params.yaml and dvc.yaml's vars alike) so that tests that
    run every job through the stand-in mtwork stay fast: 3 sources x 3 paradigms, 1 seed, 3 ViT runs.
    clip_tiny stays: dvc.yaml's multi-task stages depend on the LV-Adapter's text tower file."""
    from mtwork.config import resolve
    from mtwork.plan import embedded_pretrain_sources, plan_vit_runs

    def edit(params):
        params["checkpoints"]["sources"] = ["random", "moco_v2", "clip_tiny"]
        params["train"]["paradigms"] = ["single_task", "pretrain_finetune", "pretrain_adapt_finetune_lv"]
        params["train"]["seeds"] = [0]
        params["vit"]["tasks"] = ["semseg", "depth"]
        params["vit"]["task_subsets"] = []
        params["vit"]["paradigms"] = ["vtagml"]

    _edit_params(wf, edit)
    params = resolve(yaml_load((wf / "params.yaml").read_text()))
    dvc_path = wf / "dvc.yaml"
    dvc = yaml.safe_load(dvc_path.read_text())
    for entry in dvc["vars"]:
        if "embedded_pretrain" in entry:
            entry["embedded_pretrain"] = embedded_pretrain_sources(params)
        if "multitask" in entry:
            entry["multitask"]["paradigms"] = [p for p in params["train"]["paradigms"] if p != "single_task"]
        if "vit_runs" in entry:
            entry["vit_runs"] = [r.id for r in plan_vit_runs(params)]
    dvc_path.write_text(yaml.safe_dump(dvc, sort_keys=False))


def _with_more_runs(params):
    params["train"]["seeds"] = [0, 1, 2]
    params["data"]["dg_domains"] = ["night"]  # dvc.yaml spells one DG domain: data.dg_domains[0]
    # the same sources in another order (vars.embedded_pretrain lists those the default plans)
    params["checkpoints"]["sources"] = list(reversed(params["checkpoints"]["sources"]))


# ---- the plans agree ------------------------------------------------------------------------------


def test_snakemake_lint_is_clean(workflow_dir: Path, wt):
    proc = wt.snakemake(workflow_dir, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out


@pytest.mark.parametrize("variant", ["default", "more_runs"])
def test_snakemake_and_dvc_plan_the_same_jobs(workflow_dir: Path, variant: str, wt):
    if variant == "more_runs":  # templating must follow params.yaml, not the values it was written with
        _edit_params(workflow_dir, _with_more_runs)
    jobs = wt.dry_run(workflow_dir, "results/tables")
    smk = snakemake_plan(jobs)
    dvc = dvc_plan(workflow_dir)
    assert smk == dvc, _diff(smk, dvc)
    params = yaml_load((workflow_dir / "params.yaml").read_text())
    n_runs = len(params["checkpoints"]["sources"]) * len(params["train"]["seeds"]) * (
        len(params["train"]["tasks"]) + len(params["train"]["paradigms"]) - 1
    )
    rules = [j.rule for j in jobs]
    n_sources = len(params["checkpoints"]["sources"])
    assert rules.count("train") == n_runs and rules.count("evaluate") == n_sources
    evaluate = [j for j in jobs if j.rule == "evaluate"]
    # one job per source evaluates each of its runs on the source domain and every DG domain
    assert all(len(j.outputs) == (n_runs // n_sources) * (1 + len(params["data"]["dg_domains"])) for j in evaluate)
    assert rules.count("generate_synthdrive") == 1 + len(params["data"]["dg_domains"])
    from mtwork.config import resolve
    from mtwork.plan import embedded_pretrain_sources, plan_vit_runs

    resolved = resolve(params)
    assert rules.count("pretrain") == len(embedded_pretrain_sources(resolved)) and rules.count("tables") == 1
    assert rules.count("train_vit") == len(plan_vit_runs(resolved)) > 0 and rules.count("evaluate_vit") == 1


def _snakemake_param_keys(wf: Path, monkeypatch) -> Dict[str, List[str]]:
    """PARAM_KEYS of rules/common.smk (plain Python by design: functions and values, no rules)."""
    monkeypatch.chdir(wf)
    namespace = {"config": yaml.safe_load((wf / "params.yaml").read_text()), "ancient": lambda p: p}
    path = wf / "rules" / "common.smk"
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace["PARAM_KEYS"]


def test_each_stage_tracks_the_params_its_rule_tracks(workflow_dir: Path, monkeypatch):
    from dvc.dependency.param import ParamsDependency

    keys = _snakemake_param_keys(workflow_dir, monkeypatch)
    for stage in dvc_stages(workflow_dir):
        base, _, item = stage.name.partition("@")
        rule = DVC_STAGE_RULE[base]
        if base == "import_checkpoint_vit":  # one stage, its source from vit.source
            item = yaml_load((workflow_dir / "params.yaml").read_text())["vit"]["source"]
        tracked = {k for d in stage.deps if isinstance(d, ParamsDependency) for k in d.params}
        expected = {k.format(source=item) for k in keys[rule]}
        assert tracked - {"scale"} == expected, f"{stage.name}: dvc.yaml {sorted(tracked)}, Snakemake {sorted(expected)}"
        if base != "check_data" and base != "check_data_dg":
            assert "scale" in tracked, stage.name


def test_dvc_vars_match_params(workflow_dir: Path):
    """dvc.yaml's `vars` spell what templating cannot compute: keep them equal to params.yaml."""
    dvc = yaml.safe_load((workflow_dir / "dvc.yaml").read_text())
    params = yaml_load((workflow_dir / "params.yaml").read_text())
    multitask = next(v["multitask"] for v in dvc["vars"] if isinstance(v, dict) and "multitask" in v)
    assert multitask["tasks"] == "-".join(params["train"]["tasks"])
    assert multitask["paradigms"] == [p for p in params["train"]["paradigms"] if p != "single_task"]
    embedded = next(v["embedded_pretrain"] for v in dvc["vars"] if isinstance(v, dict) and "embedded_pretrain" in v)
    from mtwork.config import resolve
    from mtwork.plan import embedded_pretrain_sources

    assert embedded == embedded_pretrain_sources(resolve(params))
    vit_runs = next(v["vit_runs"] for v in dvc["vars"] if isinstance(v, dict) and "vit_runs" in v)
    from mtwork.plan import plan_vit_runs

    assert vit_runs == [run.id for run in plan_vit_runs(resolve(params))]


# ---- overrides --------------------------------------------------------------------------------------


def _mtwork_commands(jobs) -> List[Tuple[str, ...]]:
    return [_argv(j.cmd) for j in jobs if j.cmd]


def _sets(argv: Tuple[str, ...]) -> List[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]


def test_config_overrides_reach_every_command(workflow_dir: Path, wt):
    jobs = wt.dry_run(workflow_dir, "results/tables", "--config", "train__lr=0.001", "data={dg_domains: [night]}")
    expected = ["data.dg_domains=[\"night\"]", "train.lr=0.001"]
    for argv in _mtwork_commands(jobs):
        assert argv[0] == "mtwork"
        if "--params" in argv:
            assert _sets(argv) == expected, argv
        else:
            assert argv[1:3] == ("data", "check") and not _sets(argv)
    dg = {out for j in jobs if j.rule == "evaluate" for out in j.outputs if out.startswith("results/metrics/dg/")}
    assert dg and all(out.startswith("results/metrics/dg/night/") for out in dg)
    assert {j.outputs[0] for j in jobs if j.rule == "generate_synthdrive"} == {"data/synthdrive/clear_day", "data/synthdrive/night"}


def test_paper_scale_dry_run(workflow_dir: Path, tmp_path: Path, wt):
    bdd = tmp_path / "BDD 100K"  # a space: paths must be quoted in every command
    bdd.mkdir()
    moco, r50 = tmp_path / "moco_v2_800ep.pth.tar", tmp_path / "resnet50-0676ba61.pth"
    clip = tmp_path / "RN50-openai.pt"
    for path in (moco, r50, clip):
        path.write_bytes(b"x")
    jobs = wt.dry_run(
        workflow_dir,
        "results/tables",  # targets before --config, which takes all following words
        "--config",
        "scale=paper",
        f"data__bdd100k_root={bdd}",
        f"checkpoints__catalog__moco_v2__path={moco}",
        f"checkpoints__catalog__openclip_rn50__path={clip}",
        # the nested-YAML form works as well
        f"checkpoints={{catalog: {{supervised_imagenet: {{path: {r50}}}}}}}",
    )
    rules = [j.rule for j in jobs]
    assert "generate_synthdrive" not in rules and "pretrain" not in rules and "train_vit" not in rules
    # no DG domain at paper scale: one metrics file per run, 7 runs per source and seed
    seeds = yaml_load((workflow_dir / "params.yaml").read_text())["train"]["seeds"]
    assert all(len(j.outputs) == 7 * len(seeds) for j in jobs if j.rule == "evaluate")
    imports = {j.outputs[0]: j for j in jobs if j.rule == "import_checkpoint"}
    assert set(imports) == {"models/pretrained/supervised_imagenet.pt", "models/pretrained/moco_v2.pt"}
    assert imports["models/pretrained/moco_v2.pt"].inputs == [str(moco)]
    assert imports["models/pretrained/supervised_imagenet.pt"].inputs == [str(r50)]
    (check,) = [j for j in jobs if j.rule == "check_data"]
    assert _argv(check.cmd) == ("mtwork", "data", "check", "--format", "bdd100k", str(bdd), "--json", "data/checks/bdd100k.json")
    trains = [j for j in jobs if j.rule == "train"]
    assert len(trains) == 2 * len(seeds) * (3 + 4)  # 2 sources x seeds x (3 single-task + 4 multi-task paradigms)
    expected_sets = sorted([
        f"checkpoints.catalog.openclip_rn50.path={clip}",
        f"checkpoints.catalog.moco_v2.path={moco}",
        f"checkpoints.catalog.supervised_imagenet.path={r50}",
        f"data.bdd100k_root={bdd}",
        "scale=paper",
    ])
    for job in trains:
        assert job.resources.get("gpu") == "1", job.fields
        argv = _argv(job.cmd)
        assert sorted(_sets(argv)) == expected_sets, argv
        assert argv[argv.index("--data") + 1] == str(bdd)
    assert {j.rule for j in jobs if j.resources.get("gpu") == "1"} == {"train", "evaluate"}
    assert rules.count("evaluate") == 2 and rules.count("tables") == 1  # one evaluation job per source


def test_embedded_scale_asks_for_no_gpu(workflow_dir: Path, wt):
    jobs = wt.dry_run(workflow_dir, "results/tables")
    assert all(j.resources.get("gpu", "0") == "0" for j in jobs)


# ---- execution with a stand-in mtwork: complete, nothing to redo, and targeted reruns ------------


def _rules_to_run(jobs) -> Set[str]:
    return {j.rule for j in jobs} - {"all"}


@pytest.mark.slow  # ~10-20 s: 38 stand-in jobs
def test_snakemake_reruns_exactly_what_a_parameter_reaches(workflow_dir: Path, fake_mtwork, wt):
    small_plan(workflow_dir)
    env = fake_mtwork.env
    wt.snakemake(workflow_dir, "--cores", "2", "results/tables", env=env, timeout=900)
    assert (workflow_dir / "results/tables/mtl.md").exists()
    again = wt.snakemake(workflow_dir, "--cores", "2", "results/tables", env=env)
    assert "Nothing to be done" in again.stdout + again.stderr

    # a training hyperparameter: training, evaluation and tables; not data, pretraining, import
    jobs = wt.dry_run(workflow_dir, "--config", "train__lr=0.001", env=env)
    assert _rules_to_run(jobs) == {"train", "evaluate", "tables"}
    for job in jobs:  # training because of its params; the rest because their input is retrained
        why = "Params have changed" if job.rule == "train" else "Input files updated by another job"
        assert job.rule == "all" or job.fields.get("reason", "").startswith(why), (job.rule, job.fields)
    # an evaluation setting: evaluation and tables only
    assert _rules_to_run(wt.dry_run(workflow_dir, "--config", "evaluate__batch_size=4", env=env)) == {
        "evaluate", "evaluate_vit", "tables"}
    # the embedded pretraining's settings: pretraining, import of moco_v2, and the moco_v2 runs only
    jobs = wt.dry_run(workflow_dir, "--config", "checkpoints__catalog__moco_v2__pretrain__lr=0.01", env=env)
    assert _rules_to_run(jobs) == {"pretrain", "import_checkpoint", "train", "evaluate", "tables"}
    assert all("random" not in out for j in jobs if j.rule != "tables" for out in j.outputs)
    # an execution setting that no rule tracks (threads are a resource): nothing to do
    assert _rules_to_run(wt.dry_run(workflow_dir, "--config", "train__threads=2", env=env)) == set()


@pytest.mark.slow  # ~25-50 s: three `dvc repro` of 38 stand-in stages
def test_dvc_reruns_exactly_what_a_parameter_reaches(workflow_dir: Path, fake_mtwork, wt):
    small_plan(workflow_dir)
    env = fake_mtwork.env
    wt.run(["dvc", "repro"], workflow_dir, env=env, timeout=900)
    assert (workflow_dir / "results/tables/mtl.md").exists()
    again = wt.run(["dvc", "repro"], workflow_dir, env=env)
    assert not re.findall(r"Running stage", again.stdout), again.stdout

    # what `dvc exp run -S train.lr=0.001` does in its temporary copy: edit params.yaml, reproduce
    _edit_params(workflow_dir, lambda p: p["train"].update(lr=0.001))
    fake_mtwork.reset()
    proc = wt.run(["dvc", "repro"], workflow_dir, env=env, timeout=900)
    ran = {name.split("@")[0] for name in re.findall(r"Running stage '([^']+)'", proc.stdout)}
    assert ran == {"train", "train_single_task", "evaluate", "evaluate_single_task", "tables"}, proc.stdout
    assert {call[0] for call in fake_mtwork.calls()} == {"train", "evaluate", "tables"}


@pytest.mark.slow  # ~30-60 s: a `dvc repro` and a `dvc exp run` of the stand-in stages in a git repository
def test_dvc_exp_run_reruns_training_and_not_data(workflow_dir: Path, fake_mtwork, wt):
    small_plan(workflow_dir)
    env = fake_mtwork.env
    config = workflow_dir / ".dvc" / "config"
    config.write_text(config.read_text().replace("no_scm = true", ""))  # experiments need git
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.name", "mtwork tests"],  # this repository only, never global
        ["git", "config", "user.email", "tests@mtwork.invalid"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "workflow"],
    ):
        wt.run(cmd, workflow_dir, env=env)
    wt.run(["dvc", "repro"], workflow_dir, env=env, timeout=900)
    wt.run(["git", "add", "-A"], workflow_dir, env=env)
    wt.run(["git", "commit", "-qm", "baseline"], workflow_dir, env=env)
    fake_mtwork.reset()
    wt.run(["dvc", "exp", "run", "-S", "train.lr=0.001"], workflow_dir, env=env, timeout=900)
    verbs = {call[0] for call in fake_mtwork.calls()}
    assert verbs == {"train", "evaluate", "tables"}, fake_mtwork.calls()
    shown = wt.run(["dvc", "exp", "show", "--csv"], workflow_dir, env=env)
    assert "0.001" in shown.stdout


def test_a_fresh_clone_has_the_whole_chain_to_run(tmp_path: Path, wt):
    """Pipeline outputs must not be in git: a committed results/tables would look up to date to
    Snakemake in a fresh clone, and the README's quick start would run nothing."""
    import shutil
    import subprocess

    proc = subprocess.run(["git", "ls-files", "-z"], cwd=wt.REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = [p for p in proc.stdout.split("\0") if p]
    outputs = [p for p in tracked if p.startswith(("results/", "data/", "models/")) and p != "results/README.md"]
    assert not outputs, f"pipeline outputs tracked in git: {outputs}"
    clone = tmp_path / "clone"
    for rel in tracked:
        if (wt.REPO / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(wt.REPO / rel, clone / rel)
    out = wt.snakemake(clone, "-n", "--cores", "2", "results/tables").stdout
    assert "Nothing to be done" not in out
    assert re.search(r"^tables\s+1\b", out, re.M) and re.search(r"^generate_synthdrive\s+\d", out, re.M), out[-3000:]
