"""Source 2's transfer protocols end to end on a two-preset SynthDrive (clear_day source, night target),
tiny Swin at 64x96, one epoch: a multi-task run, then a zero-shot and a UDA run through `mtwork train`,
all evaluated through `mtwork evaluate` where the plan says, the transfer tables from those records, and
an exact resume of a UDA run (discriminators included)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mtwork.config import load_params
from mtwork.errors import UserError
from mtwork.train_vit import create_vit_recipe, train_vit_run

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
TASKS = "semseg-depth-normals"
MTL = f"swin_simmim__vtagml__{TASKS}__s0"
ZS = f"swin_simmim__vtagml__{TASKS}__zeroshot-night__s0"
UDA = f"swin_simmim__vtagml__{TASKS}__uda-night__s0"
OVERRIDES = ["vit.epochs=1", "vit.batch_size=4", "vit.input_size=[64, 96]", "train.threads=1", "evaluate.batch_size=4",
             "vit.seeds=[0]", "vit.tasks=[semseg, depth, normals]", "vit.task_subsets=[]", "vit.paradigms=[vtagml]",
             "vit.dg_domains=[night]", "vit.zero_shot.paradigms=[vtagml]", "vit.zero_shot.finetune_tasks=[semseg, depth]",
             "vit.uda.paradigms=[vtagml]", "vit.uda.tasks=[semseg, depth, normals]", "vit.uda.discriminator_width=8",
             "vit.uda.adversarial_weight=0.01", "vit.uda.pseudo_labels={threshold: 0.2, weight: 1.0}"]


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory) -> Path:
    from mtwork.data.synthdrive import generate_synthdrive

    root = tmp_path_factory.mktemp("synthdrive2") / "root"
    generate_synthdrive(root, domains=["clear_day", "night"], seed=0, image_size=(64, 112),
                        counts={"det": {"train": 2, "val": 1}, "seg": {"train": 4, "val": 2}}, overlap=0.5, progress=False)
    return root


@pytest.fixture(scope="module")
def params():
    return load_params(PARAMS, OVERRIDES)


@pytest.fixture(scope="module")
def mtl_run(tmp_path_factory, params, two_domains, swin_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("runs") / MTL
    train_vit_run(params, MTL, two_domains, swin_checkpoint, out)
    return out


def _mtwork(wt, *args):
    cmd = [*wt.mtwork_command(), *args[:1], "--params", str(PARAMS), *[a for o in OVERRIDES for a in ("--set", o)], *args[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=wt.tool_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _state(path: Path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_zero_shot_and_uda_train_and_evaluate_through_the_cli(wt, mtl_run, two_domains, swin_checkpoint, tmp_path):
    runs = mtl_run.parent
    _mtwork(wt, "train", "--run", ZS, "--data", str(two_domains), "--domain", "night", "--checkpoint",
            str(swin_checkpoint), "--out", str(runs / ZS), "--init", str(mtl_run))
    _mtwork(wt, "train", "--run", UDA, "--data", str(two_domains), "--domain", "clear_day", "--checkpoint",
            str(swin_checkpoint), "--out", str(runs / UDA), "--init", str(mtl_run), "--target-data", str(two_domains))

    zs_log = json.loads((runs / ZS / "log.json").read_text())
    mtl_log = json.loads((mtl_run / "log.json").read_text())
    assert zs_log["trained_tasks"] == ["semseg", "depth"] and zs_log["zero_shot_tasks"] == ["normals"]
    assert zs_log["domain"] == "night" and zs_log["init_run"] == MTL
    assert zs_log["trainable_params"]["train"] < mtl_log["trainable_params"]["train"]
    assert zs_log["balancer_state"]["affinity"] == mtl_log["balancer_state"]["affinity"]  # TROA's, kept fixed
    before, after = _state(mtl_run / "final.pt"), _state(runs / ZS / "final.pt")
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not {k for k in changed if k.startswith("decoders.normals.")}  # the zero-shot decoder: as trained on clear_day
    assert {k for k in changed if k.startswith("decoders.semseg.")} and {k for k in changed if k.startswith("adapters.")}

    uda_log = json.loads((runs / UDA / "log.json").read_text())
    assert uda_log["domain"] == "clear_day" and uda_log["target_domain"] == "night" and uda_log["init_run"] == MTL
    aux = uda_log["epochs"][0]["aux_loss"]
    assert {f"{k}_{t}" for k in ("adv", "disc") for t in ("semseg", "depth", "normals")} <= set(aux)
    assert 0 <= aux["pseudo_semseg_share"] <= 1 and "pseudo_semseg" in aux
    assert uda_log["trained_tasks"] == ["semseg", "depth", "normals"]

    metrics = tmp_path / "metrics"
    _mtwork(wt, "evaluate", *[a for r in (MTL, ZS, UDA) for a in ("--run-dir", str(runs / r))], "--data",
            str(two_domains), "--domain", "clear_day", "--dg-domain", "night", "--dg-data", str(two_domains),
            "--metrics-dir", str(metrics))
    files = {
        ("mtl", "clear_day"): metrics / "vit" / f"{MTL}.json",
        ("dg", "night"): metrics / "vit" / "dg" / "night" / f"{MTL}.json",  # the source-only row
        ("zeroshot", "night"): metrics / "vit" / "zeroshot" / "night" / f"{ZS}.json",
        ("uda", "night"): metrics / "vit" / "uda" / "night" / f"{UDA}.json",
    }
    records = {}
    for (protocol, domain), path in files.items():
        rec = json.loads(path.read_text())
        assert (rec["protocol"], rec["domain"]) == (protocol, domain), path
        assert set(rec["metrics"]) == {"semseg", "depth", "normals"}
        records[protocol] = rec
    assert records["zeroshot"]["trained_tasks"] == ["semseg", "depth"] and records["uda"]["trained_on"] == "clear_day"
    assert records["zeroshot"]["metrics"]["normals"] != records["dg"]["metrics"]["normals"]  # shared parts moved

    from mtwork.report.vit_protocol_tables import write_vit_protocol_tables

    params = load_params(PARAMS, OVERRIDES)
    written = write_vit_protocol_tables(params, metrics / "vit", tmp_path / "tables")
    # night is the transfers' target and the DG domain: the mtl run's record there is the source-only row
    # of both transfer tables and its row of the DG table
    assert sorted(p.name for p in written) == sorted(
        f"{s}.{e}" for s in ("vit_zero_shot", "vit_uda", "vit_dg") for e in ("md", "tex", "csv"))
    text = (tmp_path / "tables" / "vit_zero_shot.md").read_text()
    assert "Source only" in text and "Zero-shot transfer" in text and "Normals mean ° ↓ (ZS)" in text


def test_transfer_runs_need_the_run_they_start_from(params, two_domains, swin_checkpoint, mtl_run):
    with pytest.raises(UserError, match=f"starts from run '{MTL}'.*--init"):
        create_vit_recipe(params, ZS, two_domains, swin_checkpoint)
    with pytest.raises(UserError, match="--target-data"):
        create_vit_recipe(params, UDA, two_domains, swin_checkpoint, init_dir=mtl_run)
    with pytest.raises(UserError, match="no --init"):
        create_vit_recipe(params, MTL, two_domains, swin_checkpoint, init_dir=mtl_run)
    from mtwork.protocols.transfer_recipe import read_init_log

    with pytest.raises(UserError, match="holds run"):
        read_init_log(mtl_run, "swin_simmim__vtagml__semseg__s0")


def test_a_resumed_uda_run_ends_on_the_same_weights(params, mtl_run, two_domains, swin_checkpoint, tmp_path):
    """Two epochs with every epoch file kept; the second epoch redone from the first epoch's file (its
    discriminators, their Adam state and every RNG state come back) ends bitwise on the same final.pt."""
    p = load_params(PARAMS, OVERRIDES + ["vit.uda.epochs=2", "train.keep_epoch_checkpoints=true"])
    out = tmp_path / UDA
    train_vit_run(p, UDA, two_domains, swin_checkpoint, out, init_dir=mtl_run, target_data=two_domains)
    epoch1 = torch.load(out / "epoch_001.pt", weights_only=False)
    assert set(epoch1["recipe"]["discriminators"]) == {"nets", "optimizer"}
    copy = tmp_path / "resumed" / UDA
    shutil.copytree(out, copy)
    for name in ("final.pt", "log.json", "epoch_002.pt"):
        (copy / name).unlink()
    log = train_vit_run(p, UDA, two_domains, swin_checkpoint, copy, init_dir=mtl_run, target_data=two_domains)
    assert log["resumed"]["from"] == "epoch_001.pt"
    expected, got = _state(out / "final.pt"), _state(copy / "final.pt")
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    d_expected = torch.load(out / "epoch_002.pt", weights_only=False)["recipe"]["discriminators"]["nets"]
    d_got = torch.load(copy / "epoch_002.pt", weights_only=False)["recipe"]["discriminators"]["nets"]
    assert all(torch.equal(d_got[k], d_expected[k]) for k in d_expected)
