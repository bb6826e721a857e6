"""The paper-scale path on a tiny data set in BDD100K's real layout, with BDD100K's real frame attributes
(tests/integration/bdd100k_fixture.py): the data check, the plan Snakemake makes at scale=paper (its
attribute domains: clear daytime as the source, night / rainy / snowy / foggy for DG), the DG tables of
that plan run for real with the sizes shrunk, and one training run of the paper's own shape (ResNet-50,
the full 720x1280 frame padded to 736x1280, 2 steps) on the CPU.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtwork.config import load_params

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DG = ["bdd_night", "bdd_rainy", "bdd_snowy", "bdd_foggy"]


@pytest.fixture(scope="module")
def bdd(tmp_path_factory) -> Path:
    from tests.integration.bdd100k_fixture import write_bdd100k_fixture

    # 5 distinct train images (4 det + 2 seg, 1 shared): 2 of them clear daytime (the paper's source domain)
    return write_bdd100k_fixture(tmp_path_factory.mktemp("bdd") / "BDD 100K",
                                 counts={"det": {"train": 4, "val": 6}, "seg": {"train": 2, "val": 4}})


def _paper_sets(bdd: Path):
    return ["scale=paper", f"data.datasets.bdd100k.root={bdd}"]


def test_the_fixture_passes_the_data_check_and_every_paper_domain_selects_images(bdd, tmp_path):
    from mtwork.data.registry import open_domain

    report = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "mtwork.cli", "data", "check", "--format", "bdd100k", str(bdd),
                           "--json", str(report)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    params = load_params(REPO / "params.yaml", _paper_sets(bdd) + [
        f"checkpoints.catalog.{s}.path=/w/{s}.pth" for s in ("moco_v2", "supervised_imagenet", "openclip_rn50")])
    assert params["data"]["dg_domains"] == DG
    source = params["data"]["source_domain"]
    for domain, split in [(source, "train"), (source, "val"), *((d, "val") for d in DG)]:
        if True:
            dataset = open_domain(params, domain, split, ("semseg", "drivable", "det"))
            assert len(dataset) > 0, (domain, split)
            attrs = params["data"]["domains"][domain]["attributes"]
            for i in range(len(dataset)):
                got = dataset.attributes_of(i)
                assert all(got[k] in (v if isinstance(v, list) else [v]) for k, v in attrs.items()), (domain, got)


def test_paper_scale_plan_on_the_fixture(bdd, tmp_path, workflow_dir, wt):
    files = {name: tmp_path / f"{name}.pth" for name in ("moco_v2", "supervised_imagenet", "openclip_rn50")}
    for path in files.values():
        path.write_bytes(b"x")
    jobs = wt.dry_run(workflow_dir, "results/tables", "--config", "scale=paper",
                      f"data__datasets__bdd100k__root={bdd}",
                      *[f"checkpoints__catalog__{name}__path={path}" for name, path in files.items()])
    rules = [j.rule for j in jobs]
    train = load_params(REPO / "params.yaml")["train"]
    seeds = train["seeds"]
    runs = len(train["tasks"]) + len(train["paradigms"]) - 1  # per source and seed: 3 single-task + the others
    assert rules.count("check_data") == 1 and rules.count("import_checkpoint") == 2
    assert rules.count("train") == 2 * len(seeds) * runs and rules.count("evaluate") == 2
    assert "generate_synthdrive" not in rules and "download" not in rules and "pretrain" not in rules
    for job in (j for j in jobs if j.rule == "evaluate"):  # the source domain and the 4 DG domains
        assert len(job.outputs) == 5 * runs * len(seeds)
        assert {Path(o).parent.name for o in job.outputs if "/dg/" in o} == set(DG)


def test_dg_tables_at_paper_scale_shape(bdd, workflow_dir, wt):
    """The paper-scale plan run for real (sizes shrunk): one DG table per attribute domain."""
    wt.snakemake(workflow_dir, "--cores", "2", "results/tables", "--config", "scale=paper",
                 f"data__datasets__bdd100k__root={bdd}",
                 "checkpoints__sources=[random]", "train__paradigms=[single_task, pretrain_finetune]",
                 "train__seeds=[0]", "train__epochs=1", "train__adapt_epochs=0", "train__batch_size=2",
                 "train__input_size=[64, 128]", "train__device=cpu", "train__workers=0", "train__threads=1",
                 "model__backbone=resnet18", "model__fpn_channels=32", "evaluate__batch_size=4",
                 "vit__enabled=false", timeout=1800)
    tables = workflow_dir / "results" / "tables"
    for domain in DG:
        with open(tables / f"dg_{domain}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {(r["source"], r["paradigm"]) for r in rows} == {("random", "single_task"), ("random", "pretrain_finetune")}
        assert domain in (tables / f"dg_{domain}.md").read_text()
    metrics = json.loads((workflow_dir / "results/metrics/dg/bdd_night/random__pretrain_finetune__semseg-drivable-det__s0.json").read_text())
    assert metrics["domain"] == "bdd_night" and set(metrics["metrics"]) == {"semseg", "drivable", "det"}


def test_a_training_run_of_the_papers_shape(bdd, tmp_path):
    """ResNet-50 with 256-channel FPN at 736x1280 (the 720x1280 frame, letterboxed), 2 steps of one image
    on the CPU (a step of this shape takes ~20-60 s of CPU time on a 2-core machine)."""
    env_sets = _paper_sets(bdd) + ["checkpoints.sources=[random]", "train.paradigms=[single_task, pretrain_finetune]",
                                   "train.epochs=1", "train.adapt_epochs=0",
                                   "train.batch_size=1", "train.device=cpu", "train.amp=none", "train.workers=0",
                                   "train.threads=2", "vit.enabled=false"]
    params = load_params(REPO / "params.yaml", env_sets)
    assert params["model"]["backbone"] == "resnet50" and params["train"]["input_size"] == [736, 1280]
    ckpt = tmp_path / "random_r50.pt"
    cli = [sys.executable, "-m", "mtwork.cli"]
    subprocess.run([*cli, "import-checkpoint", "--format", "random", "--arch", "resnet50", "-", str(ckpt)],
                   check=True, capture_output=True)
    run = "random__pretrain_finetune__semseg-drivable-det__s0"
    sets = [w for s in env_sets for w in ("--set", s)]
    proc = subprocess.run([*cli, "train", "--params", str(REPO / "params.yaml"), *sets, "--run", run,
                           "--data", str(bdd), "--domain", "bdd_clear_daytime", "--checkpoint", str(ckpt),
                           "--out", str(tmp_path / run)], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = json.loads((tmp_path / run / "log.json").read_text())
    assert log["model_config"]["arch"] == "resnet50" and log["model_config"]["fpn_channels"] == 256
    assert log["train_images"] == 2 and log["steps_per_epoch"] == 2
    assert all(e["loss"] == e["loss"] for e in log["epochs"])  # finite (JSON has no NaN)
