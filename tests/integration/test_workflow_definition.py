"""The workflow definition: Snakemake plans the jobs, DVC's pipeline is generated from the same rules,
and both rerun what they should.

Snakemake (Snakefile + rules/*.smk) is the execution engine; dvc.yaml is generated from
mtwork/workflow.py (`mtwork plan --dvc`), one stage per phase that runs Snakemake up to its rules.
These tests prove that dvc.yaml is the generated one, that every rule belongs to exactly one stage
and writes only into that stage's folders, that each stage tracks the keys its jobs read, that
`snakemake --lint` is clean, that `--config` overrides reach every command and switch to the
paper-scale plan, and, with a stand-in `mtwork` that only writes placeholder outputs, that a changed
parameter reruns exactly the jobs that read it, that a finished Snakemake run leaves DVC clean, and
that `dvc push` / `dvc pull` / `dvc exp run -S` work.

Everything runs in a temporary copy of the workflow files (see conftest.py): the real data/,
models/ and results/ are never touched. The dry runs take ~10 s in all; the stand-in executions are
marked `slow`.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest
import yaml

from mtwork import workflow
from mtwork.config import yaml_dump, yaml_load


def _argv(cmd: str) -> Tuple[str, ...]:
    """A command as argv, without Snakemake's `> LOG 2>&1` redirection."""
    words = shlex.split(cmd)
    if len(words) >= 3 and words[-1] == "2>&1" and words[-3] == ">":
        words = words[:-3]
    return tuple(words)


def _stage_of(rule: str) -> workflow.DvcStage:
    (stage,) = [s for s in workflow.DVC_STAGES if rule in s.rules]
    return stage


def _under(path: str, folders) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def _covered(key: str, tracked: List[str]) -> bool:
    """``key`` is tracked itself or through an ancestor ("train" covers "train.lr")."""
    return any(key == t or key.startswith(t + ".") for t in tracked)


def _edit_params(wf: Path, edit) -> None:
    path = wf / "params.yaml"
    params = yaml_load(path.read_text())
    edit(params)
    path.write_text(yaml_dump(params))


def small_plan(wf: Path) -> None:
    """Shrink the plan of a workflow copy so that tests that run every job through the stand-in
    mtwork stay fast: 3 sources x 3 paradigms, 1 seed, 7 ViT runs (2 single-task, VTAGML, its zero-shot
    and UDA runs, 2 target oracles)."""

    def edit(params):
        params["checkpoints"]["sources"] = ["random", "moco_v2", "clip_tiny"]
        params["train"]["paradigms"] = ["single_task", "pretrain_finetune", "pretrain_adapt_finetune_lv"]
        params["train"]["seeds"] = [0]
        params["vit"]["tasks"] = ["semseg", "depth"]
        params["vit"]["task_subsets"] = []
        params["vit"]["paradigms"] = ["vtagml"]
        # one zero-shot and one UDA run (and the target oracles): every kind of source-2 job
        params["vit"]["zero_shot"].update(finetune_tasks=["semseg"], paradigms=["vtagml"])
        params["vit"]["uda"].update(paradigms=["vtagml"])

    _edit_params(wf, edit)


def _with_more_runs(params):
    params["train"]["seeds"] = [0, 1, 2]
    params["data"]["dg_domains"] = ["night", "dusk_fog"]
    # the same sources in another order (vars.embedded_pretrain lists those the default plans)
    params["checkpoints"]["sources"] = list(reversed(params["checkpoints"]["sources"]))


# ---- one plan, two engines ----------------------------------------------------------------------


def test_snakemake_lint_is_clean(workflow_dir: Path, wt):
    proc = wt.snakemake(workflow_dir, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out


def test_dvc_yaml_is_the_generated_pipeline(wt):
    diff = workflow.check_dvc_yaml(wt.REPO / "dvc.yaml")
    assert diff is None, f"dvc.yaml is stale: run `mtwork plan --dvc`\n{diff}"


def test_every_rule_belongs_to_exactly_one_dvc_stage(workflow_dir: Path, wt):
    listed = wt.snakemake(workflow_dir, "--list-rules").stdout.split()
    in_stages = workflow.rules_in_stages()
    assert len(in_stages) == len(set(in_stages)), in_stages
    assert set(listed) - {"all"} - {f"phase_{s.name}" for s in workflow.DVC_STAGES} == set(in_stages)
    outs = [o for s in workflow.DVC_STAGES for o in s.outs]
    assert not [(a, b) for a in outs for b in outs if a != b and _under(a, [b])], "overlapping stage outputs"
    names = [s.name for s in workflow.DVC_STAGES]
    for i, stage in enumerate(workflow.DVC_STAGES):  # deps are the outputs of earlier stages only
        earlier = [o for s in workflow.DVC_STAGES[:i] for o in s.outs]
        assert set(stage.deps) <= set(earlier), (names[i], stage.deps)


@pytest.mark.parametrize("variant", ["default", "more_runs"])
def test_jobs_write_into_their_stage_and_read_earlier_stages(workflow_dir: Path, variant: str, wt):
    if variant == "more_runs":
        _edit_params(workflow_dir, _with_more_runs)
    jobs = [j for j in wt.dry_run(workflow_dir, "results/tables") if j.rule != "all"]
    for stage in workflow.DVC_STAGES:  # each phase target builds exactly the jobs of its rules
        phase = wt.dry_run(workflow_dir, workflow.stage_target(stage))
        earlier = {r for s in workflow.DVC_STAGES[: workflow.DVC_STAGES.index(stage)] for r in s.rules}
        planned = {j.rule for j in jobs}  # a rule without a job in this plan (download here) runs in no phase
        assert {j.rule for j in phase} - {"all", f"phase_{stage.name}"} == (set(stage.rules) | earlier) & planned, stage.name
    producer = {out: j.rule for j in jobs for out in j.outputs}
    for job in jobs:
        stage = _stage_of(job.rule)
        for out in job.outputs:
            assert _under(out, stage.outs), (job.rule, out, stage.outs)
        for path in job.inputs:
            if path in producer and _stage_of(producer[path]) is not stage:
                assert _under(path, stage.deps), (job.rule, path, stage.deps)
    params = yaml_load((workflow_dir / "params.yaml").read_text())
    from mtwork.config import resolve
    from mtwork.plan import embedded_pretrain_sources, plan_runs, plan_vit_runs

    resolved = resolve(params)
    rules = [j.rule for j in jobs]
    n_sources = len(params["checkpoints"]["sources"])
    assert rules.count("train") == len(plan_runs(resolved)) + len(plan_vit_runs(resolved))
    assert rules.count("evaluate") == n_sources and rules.count("evaluate_vit") == 1
    n_runs = len(plan_runs(resolved)) // n_sources
    for job in (j for j in jobs if j.rule == "evaluate"):  # each of a source's runs, source domain + DG domains
        assert len(job.outputs) == n_runs * (1 + len(params["data"]["dg_domains"]))
    assert rules.count("generate_synthdrive") == rules.count("check_data") == 1  # one SynthDrive root, all domains
    # every planned source with an embedded pretraining, and the LV-Adapter's text tower where an LV run
    # needs it (a pretraining of its own when it is not among the sources)
    pretrained = set(embedded_pretrain_sources(resolved))
    if "pretrain_adapt_finetune_lv" in resolved["train"]["paradigms"]:
        pretrained.add(resolved["model"]["lv"]["clip_source"])
    assert {Path(j.outputs[0]).name.split(".")[0] for j in jobs if j.rule == "pretrain"} == pretrained
    assert rules.count("pretrain") == len(pretrained) and rules.count("tables") == 1


def test_each_stage_tracks_the_keys_its_jobs_read(workflow_dir: Path, wt):
    """Every key a planned job reads (and every key deciding which jobs exist) is a param of its stage."""
    from mtwork.config import resolve

    params = resolve(yaml_load((workflow_dir / "params.yaml").read_text()))
    pipeline = yaml.safe_load((workflow_dir / "dvc.yaml").read_text())["stages"]
    for job in wt.dry_run(workflow_dir, "results/tables"):
        if job.rule == "all":
            continue
        wildcards = dict(kv.split("=", 1) for kv in job.fields.get("wildcards", "").split(", ") if "=" in kv)
        keys = [k.format(**wildcards) for k in workflow.job_param_keys(params, job.rule, wildcards)]
        keys += workflow.RULE_PLAN_KEYS[job.rule] + ["scale"]
        tracked = pipeline[_stage_of(job.rule).name]["params"]
        assert all(_covered(k, tracked) for k in keys), (job.rule, [k for k in keys if not _covered(k, tracked)])


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
    # one SynthDrive root holds every visual preset; the domains are attribute filters on it
    assert [j.outputs[0] for j in jobs if j.rule == "generate_synthdrive"] == ["data/synthdrive"]
    (evaluate, *_) = [j for j in jobs if j.rule == "evaluate"]
    argv = _argv(evaluate.cmd)
    assert argv[argv.index("--domain") + 1] == "clear_day" and argv[argv.index("--dg-domain") + 1] == "night"
    assert argv[argv.index("--dg-data") + 1] == argv[argv.index("--data") + 1] == "data/synthdrive"


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
        f"data__datasets__bdd100k__root={bdd}",
        f"checkpoints__catalog__moco_v2__path={moco}",
        f"checkpoints__catalog__openclip_rn50__path={clip}",
        # the nested-YAML form works as well
        f"checkpoints={{catalog: {{supervised_imagenet: {{path: {r50}}}}}}}",
    )
    rules = [j.rule for j in jobs]
    assert "generate_synthdrive" not in rules and "pretrain" not in rules and "evaluate_vit" not in rules
    # DG on BDD100K's attribute domains (night, rainy, snowy, foggy): 5 metrics files per run; per source
    # and seed 3 single-task runs and one run per other paradigm, all read from the one BDD100K folder
    train = yaml_load((workflow_dir / "params.yaml").read_text())["train"]
    runs = len(train["tasks"]) + len(train["paradigms"]) - 1
    assert all(len(j.outputs) == 5 * runs * len(train["seeds"]) for j in jobs if j.rule == "evaluate")
    for job in (j for j in jobs if j.rule == "evaluate"):
        argv = _argv(job.cmd)
        assert [argv[i + 1] for i, w in enumerate(argv) if w == "--dg-domain"] == ["bdd_night", "bdd_rainy", "bdd_snowy", "bdd_foggy"]
        assert {argv[i + 1] for i, w in enumerate(argv) if w in ("--data", "--dg-data")} == {str(bdd)}
    imports = {j.outputs[0]: j for j in jobs if j.rule == "import_checkpoint"}
    assert set(imports) == {"models/pretrained/supervised_imagenet.pt", "models/pretrained/moco_v2.pt"}
    assert imports["models/pretrained/moco_v2.pt"].inputs == [str(moco)]
    assert imports["models/pretrained/supervised_imagenet.pt"].inputs == [str(r50)]
    (check,) = [j for j in jobs if j.rule == "check_data"]
    assert _argv(check.cmd) == ("mtwork", "data", "check", "--format", "bdd100k", str(bdd), "--json", "data/checks/bdd100k.json")
    trains = [j for j in jobs if j.rule == "train"]
    assert len(trains) == 2 * len(train["seeds"]) * runs  # the paper block's 2 sources x seeds x runs
    expected_sets = sorted([
        f"checkpoints.catalog.openclip_rn50.path={clip}",
        f"checkpoints.catalog.moco_v2.path={moco}",
        f"checkpoints.catalog.supervised_imagenet.path={r50}",
        f"data.datasets.bdd100k.root={bdd}",
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


def _git_repo(wf: Path, wt, env) -> None:
    """Make the workflow copy a git repository (DVC experiments and clones need one)."""
    config = wf / ".dvc" / "config"
    config.write_text(config.read_text().replace("no_scm = true", ""))
    (wf / ".gitignore").write_text((wt.REPO / ".gitignore").read_text())
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.name", "mtwork tests"],  # this repository only, never global
        ["git", "config", "user.email", "tests@mtwork.invalid"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "workflow"],
    ):
        wt.run(cmd, wf, env=env)


def _dvc_changed_stages(wf: Path, wt, env) -> Set[str]:
    status = json.loads(wt.run(["dvc", "status", "--json"], wf, env=env).stdout or "{}")
    return set(status)


# key edited in params.yaml -> the DVC stages it must make out of date (a stage whose params changed;
# the stages after it see their deps change only once it has rerun)
KEY_STAGES = [
    (("train", "lr"), 1e-4, {"train"}),
    (("model", "lora", "rank"), 4, {"train"}),
    (("vit", "troa", "step_size"), 0.2, {"train"}),
    (("train", "paradigms"), ["single_task", "pretrain_finetune"], {"train", "evaluate", "tables"}),
    (("checkpoints", "catalog", "moco_v2", "pretrain", "lr"), 0.01, {"checkpoints"}),
    (("data", "synthdrive", "seed"), 3, {"data"}),
    (("evaluate", "batch_size"), 4, {"evaluate"}),
    (("data", "dg_domains"), ["night"], {"data", "evaluate", "tables"}),
    # a domain's definition: every stage that tracks data.domains (the data checks and the tables plan from it too)
    (("data", "domains", "clear_day", "attributes", "timeofday"), "night",
     {"data", "checkpoints", "train", "evaluate", "tables"}),
    (("scale",), "paper", {"data", "checkpoints", "train", "evaluate", "tables"}),
]


def _set_key(params, path, value):
    node = params
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@pytest.mark.slow  # ~1-2 min: a stand-in Snakemake run, then `dvc status` per key
def test_a_finished_snakemake_run_leaves_dvc_clean(workflow_dir: Path, fake_mtwork, wt):
    small_plan(workflow_dir)
    env = fake_mtwork.env
    proc = wt.snakemake(workflow_dir, "--cores", "2", "results/tables", env=env, timeout=900)
    assert "recorded (dvc status is clean)" in proc.stderr, proc.stderr[-3000:]
    assert _dvc_changed_stages(workflow_dir, wt, env) == set()
    fake_mtwork.reset()
    again = wt.run(["dvc", "repro"], workflow_dir, env=env, timeout=900)
    assert "Running stage" not in again.stdout and fake_mtwork.calls() == [], again.stdout
    original = (workflow_dir / "params.yaml").read_text()
    for path, value, expected in KEY_STAGES:
        _edit_params(workflow_dir, lambda p: _set_key(p, path, value))
        assert _dvc_changed_stages(workflow_dir, wt, env) == expected, ".".join(path)
        (workflow_dir / "params.yaml").write_text(original)


@pytest.mark.slow  # ~1-2 min: three `dvc repro` passes through Snakemake with the stand-in mtwork
def test_dvc_repro_runs_the_pipeline_and_reruns_what_a_parameter_reaches(workflow_dir: Path, fake_mtwork, wt):
    small_plan(workflow_dir)
    env = fake_mtwork.env
    wt.run(["dvc", "repro"], workflow_dir, env=env, timeout=900)
    assert (workflow_dir / "results/tables/mtl.md").exists()
    again = wt.run(["dvc", "repro"], workflow_dir, env=env)
    assert "Running stage" not in again.stdout, again.stdout
    # what `dvc exp run -S model.lora.rank=4` does in its copy: edit params.yaml, reproduce. No lora
    # run is planned (small_plan), so DVC reruns the train stage and Snakemake trains nothing.
    _edit_params(workflow_dir, lambda p: p["model"]["lora"].update(rank=4))
    fake_mtwork.reset()
    proc = wt.run(["dvc", "repro"], workflow_dir, env=env, timeout=900)
    assert re.findall(r"Running stage '([^']+)'", proc.stdout) == ["train"], proc.stdout
    assert fake_mtwork.calls() == []
    # a training hyperparameter every run reads: training, evaluation and tables; data untouched
    _edit_params(workflow_dir, lambda p: p["train"].update(lr=0.001))
    fake_mtwork.reset()
    proc = wt.run(["dvc", "repro"], workflow_dir, env=env, timeout=900)
    assert re.findall(r"Running stage '([^']+)'", proc.stdout) == ["train", "evaluate", "tables"], proc.stdout
    assert {call[0] for call in fake_mtwork.calls()} == {"train", "evaluate", "tables"}


@pytest.mark.slow  # ~1-2 min: `dvc exp run` of the stand-in pipeline in a git repository
def test_dvc_exp_run_runs_exactly_the_paradigms_asked_for(workflow_dir: Path, fake_mtwork, wt):
    small_plan(workflow_dir)
    env = fake_mtwork.env
    _git_repo(workflow_dir, wt, env)
    wt.run(["dvc", "exp", "run", "-S", "train.paradigms=[single_task,pretrain_finetune]"], workflow_dir, env=env,
           timeout=900)
    trained = [Path(c[c.index("--run") + 1]).name for c in fake_mtwork.calls() if c[0] == "train"]
    paradigms = {run.split("__")[1] for run in trained if not run.startswith("swin_simmim")}
    assert paradigms == {"single_task", "pretrain_finetune"}, trained
    assert (workflow_dir / "results/tables/mtl.md").exists()
    shown = wt.run(["dvc", "exp", "show", "--csv"], workflow_dir, env=env)
    assert "pretrain_finetune" in shown.stdout


@pytest.mark.slow  # ~1-2 min: a stand-in run, `dvc push` to a local remote, a clone, `dvc pull`
def test_dvc_push_and_pull_restore_a_finished_run_in_a_fresh_clone(workflow_dir: Path, fake_mtwork, tmp_path, wt):
    small_plan(workflow_dir)
    env = fake_mtwork.env
    _git_repo(workflow_dir, wt, env)
    wt.snakemake(workflow_dir, "--cores", "2", "results/tables", env=env, timeout=900)
    remote = tmp_path / "dvc-remote"
    wt.run(["dvc", "remote", "add", "-d", "store", str(remote)], workflow_dir, env=env)
    wt.run(["git", "add", "-A"], workflow_dir, env=env)
    wt.run(["git", "commit", "-qm", "results"], workflow_dir, env=env)
    wt.run(["dvc", "push"], workflow_dir, env=env, timeout=600)
    clone = tmp_path / "clone"
    wt.run(["git", "clone", "-q", str(workflow_dir), str(clone)], tmp_path, env=env)
    assert not (clone / "models").exists()
    wt.run(["dvc", "pull"], clone, env=env, timeout=600)
    for name in ("results/tables/mtl.md", "models/pretrained/moco_v2.pt", "data/checks/synthdrive.json"):
        assert (clone / name).read_bytes() == (workflow_dir / name).read_bytes(), name
    out = wt.snakemake(clone, "-n", "results/tables", env=env)
    assert "Nothing to be done" in out.stdout + out.stderr, out.stdout[-3000:]
    assert _dvc_changed_stages(clone, wt, env) == set()


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
