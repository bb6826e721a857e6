"""Source 1 end to end on a tiny SynthDrive: stages, frozen backbone, resume from a damaged epoch file, evaluation."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mtwork.config import load_params
from mtwork.evaluate import evaluate_run
from mtwork.train import train_run

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
RUN = "random__pretrain_adapt_finetune__semseg-drivable-det__s0"


@pytest.fixture(scope="module")
def tiny_params():
    return load_params(
        PARAMS,
        [
            "train.epochs=2",
            "train.adapt_epochs=1",
            "train.batch_size=4",
            "train.input_size=[64, 96]",
            "train.threads=1",
            "train.keep_epoch_checkpoints=true",  # the tests look at the state after each epoch
            "evaluate.batch_size=4",
        ],
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthdrive_tiny, tiny_params, pretrained):
    out = tmp_path_factory.mktemp("runs") / RUN
    log = train_run(tiny_params, RUN, synthdrive_tiny, pretrained, out)
    return out, log


def _backbone(state):
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


def test_adapt_epoch_leaves_the_backbone_unchanged(trained, pretrained):
    out, _ = trained
    imported = torch.load(pretrained, weights_only=True)["state_dict"]
    after_adapt = _backbone(torch.load(out / "epoch_001.pt", weights_only=False)["model"])
    assert set(after_adapt) == set(imported)
    for key, value in imported.items():  # weights and BatchNorm statistics alike
        assert torch.equal(after_adapt[key], value), key
    after_finetune = _backbone(torch.load(out / "final.pt", weights_only=False)["state_dict"])
    assert any(not torch.equal(after_finetune[k], imported[k]) for k in imported if k.endswith("weight"))


def test_adapter_checkpoint_holds_no_backbone(trained):
    out, _ = trained
    adapt = torch.load(out / "adapt.pt", weights_only=False)
    assert adapt["state_dict"] and not any(k.startswith("backbone.") for k in adapt["state_dict"])
    assert any(k.startswith("adapter.") for k in adapt["state_dict"])


def test_log_records_stages_and_cheaper_trainable_set(trained):
    out, log = trained
    on_disk = json.loads((out / "log.json").read_text())
    assert on_disk["stages"] == [{"stage": "adapt", "epochs": 1}, {"stage": "finetune", "epochs": 1}]
    assert [e["stage"] for e in on_disk["epochs"]] == ["adapt", "finetune"]
    assert on_disk["trainable_params"]["adapt"] < on_disk["trainable_params"]["finetune"] == on_disk["total_params"]
    assert on_disk["train_seconds"] == pytest.approx(sum(e["seconds"] for e in on_disk["epochs"]))
    assert all(e["loss"] > 0 for e in on_disk["epochs"])


def test_resume_skips_a_damaged_epoch_file_and_reaches_the_same_weights(trained, tmp_path, synthdrive_tiny, tiny_params,
                                                                         pretrained, capsys):
    """A truncated newest epoch file (a job killed while the filesystem lost the tail) is named in the
    job's log, resume takes the one before, and the retrained epoch ends on bitwise the weights of the
    uninterrupted run (same process, same threads: every RNG state and the data order come back)."""
    out, _ = trained
    copy = tmp_path / RUN
    shutil.copytree(out, copy)
    for name in ("final.pt", "log.json", "adapt.pt"):
        (copy / name).unlink()
    newest = copy / "epoch_002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    resumed = train_run(tiny_params, RUN, synthdrive_tiny, pretrained, copy)
    printed = capsys.readouterr().out
    assert "epoch_002.pt is damaged" in printed and "resuming after epoch 1 from epoch_001.pt" in printed
    assert resumed["resumed"] == {"from": "epoch_001.pt", "epochs_done": 1, "damaged": ["epoch_002.pt"]}
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    expected = torch.load(out / "final.pt", weights_only=False)["state_dict"]
    got = torch.load(copy / "final.pt", weights_only=False)["state_dict"]
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected), [k for k in expected if not torch.equal(got[k], expected[k])][:5]
    # the epoch file rewritten by the resumed run holds the same state as the original one
    again = torch.load(copy / "epoch_002.pt", weights_only=False)
    assert again["step"] == torch.load(out / "epoch_002.pt", weights_only=False)["step"]


def test_evaluate_writes_metrics_for_every_task(trained, synthdrive_tiny, tiny_params, tmp_path):
    out, _ = trained
    record = evaluate_run(tiny_params, out, synthdrive_tiny, tmp_path / "m.json")
    assert set(record["metrics"]) == {"semseg", "drivable", "det"}
    assert 0.0 <= record["metrics"]["semseg"]["miou"] <= 100.0
    assert record["val_images"]["det"] > 0
    assert json.loads((tmp_path / "m.json").read_text())["run"] == RUN
    # the detections, exported in Scalabel format beside the metrics, score the same with `mtwork score det`
    from mtwork.evaluate import predictions_path
    from mtwork.score import score_det

    export = predictions_path(tmp_path / "m.json", "det")
    assert export == tmp_path / "predictions" / "m.det.scalabel.json"
    frames = json.loads(export.read_text())
    assert len(frames) == record["val_images"]["det"]
    scored = score_det(synthdrive_tiny / "labels/det_20/det_val.json", export)
    assert scored["frames"]["missing_pred"] == 0
    assert scored["AP"] == pytest.approx(record["metrics"]["det"]["map"], abs=1e-3)
    assert scored["AP50"] == pytest.approx(record["metrics"]["det"]["map50"], abs=1e-3)


@pytest.mark.parametrize("paradigm", ["lora", "pretrain_adapt_finetune_lv"])
def test_lora_and_lv_adapter_runs_train_and_evaluate(paradigm, synthdrive_tiny, pretrained, tmp_path):
    """The two methods beyond source 1's plain paradigms run through the same loop and evaluator."""
    import open_clip

    from mtwork.models.clip_backbone import MTWORK_TINY_CLIP_NAME

    clip_file = tmp_path / "clip.pt"  # an untrained tiny CLIP: enough to wire the frozen text tower
    torch.save({"state_dict": open_clip.create_model(MTWORK_TINY_CLIP_NAME).state_dict()}, clip_file)
    params = load_params(
        PARAMS,
        [
            "train.epochs=2",
            "train.adapt_epochs=1",
            "train.batch_size=4",
            "train.input_size=[64, 96]",
            "train.threads=1",
            "evaluate.batch_size=4",
            f"train.paradigms=[single_task, {paradigm}]",
            f"checkpoints.catalog.clip_tiny.path={clip_file}",
            "model.lora.target=all",  # a random ResNet zero-initialises each block's last BN: conv2 alone gets no gradient
        ],
    )
    run = f"random__{paradigm}__semseg-drivable-det__s0"
    log = train_run(params, run, synthdrive_tiny, pretrained, tmp_path / run)
    # a finished run keeps final.pt, not the epoch checkpoints (train.keep_epoch_checkpoints false)
    assert not list((tmp_path / run).glob("epoch_*.pt")) and (tmp_path / run / "adapt.pt").exists() == paradigm.startswith("pretrain_adapt")
    imported = torch.load(pretrained, weights_only=True)["state_dict"]
    final = torch.load(tmp_path / run / "final.pt", weights_only=False)
    if paradigm == "lora":
        assert [s["stage"] for s in log["stages"]] == ["lora"]
        assert log["trainable_params"]["lora"] < log["total_params"]
        lora_keys = [k for k in final["state_dict"] if "lora_" in k]
        assert lora_keys and any(final["state_dict"][k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)
        for key, value in imported.items():  # the base weights never move
            assert torch.equal(final["state_dict"]["backbone." + key], value), key
    else:
        assert [s["stage"] for s in log["stages"]] == ["adapt", "finetune"]
        assert final["model_config"]["text_encoder_checkpoint"] == str(clip_file)
    record = evaluate_run(params, tmp_path / run, synthdrive_tiny, tmp_path / "m.json")
    assert set(record["metrics"]) == {"semseg", "drivable", "det"}


def test_cli_evaluates_several_runs_where_the_plan_puts_their_metrics(trained, synthdrive_tiny, tmp_path, capsys):
    """`mtwork evaluate` with several --run-dir (the workflow's form: one job per checkpoint source)
    writes each run's source-domain and DG metrics at mtwork.plan's paths, identical to one run alone."""
    from mtwork.cli import main
    from mtwork.plan import metrics_path

    out, _ = trained
    twin = tmp_path / "runs" / RUN.replace("__s0", "__s1")  # a second run: the same weights, another id
    shutil.copytree(out, twin)
    sets = ["--set", "train.input_size=[64, 96]", "--set", "evaluate.batch_size=4", "--set", "train.threads=1",
            # a DG domain of every image of the same root (no attribute filter)
            "--set", "data.domains.same_images={dataset: synthdrive}"]
    common = ["--params", str(PARAMS), *sets, "--data", str(synthdrive_tiny), "--protocol", "mtl",
              "--dg-domain", "same_images", "--dg-data", str(synthdrive_tiny)]
    assert main(["evaluate", "--run-dir", str(out), "--run-dir", str(twin), "--metrics-dir", str(tmp_path / "m"), *common]) == 0
    assert main(["evaluate", "--run-dir", str(out), "--metrics-dir", str(tmp_path / "one"), *common]) == 0
    alone = json.loads(metrics_path(RUN, "mtl", None, tmp_path / "one").read_text())["metrics"]
    for run in (RUN, twin.name):
        mtl = json.loads(metrics_path(run, "mtl", None, tmp_path / "m").read_text())
        dg = json.loads(metrics_path(run, "dg", "same_images", tmp_path / "m").read_text())
        assert (mtl["protocol"], dg["protocol"], dg["domain"]) == ("mtl", "dg", "same_images")
        assert mtl["metrics"] == dg["metrics"] == alone
    # a DG domain without its data root is refused with a clear error
    assert main(["evaluate", "--run-dir", str(out), "--metrics-dir", str(tmp_path / "x"), *common, "--dg-domain", "night"]) == 2
    assert "mtwork evaluate: error:" in capsys.readouterr().err
