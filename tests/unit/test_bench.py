"""`mtwork bench` at a tiny size: every section runs, the record holds what docs/benchmarks.md quotes,
and the FLOP counts agree with the published ResNet-18 figure."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mtwork.cli import main  # noqa: E402

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
SOURCE1_CASES = [
    "backbone_train", "backbone_forward", "single_task/finetune", "pretrain_finetune/finetune",
    "pretrain_adapt_finetune/adapt", "pretrain_adapt_finetune/finetune",
    "pretrain_adapt_finetune_lv/adapt", "pretrain_adapt_finetune_lv/finetune", "lora/lora",
]


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--params", str(PARAMS), "--device", "cpu", "--threads", "1", "--batch", "2",
            "--input-size", "32", "64", "--steps", "1", "--warmup", "0", "--vit-input-size", "64", "64",
            "--vit-batch", "1", "--loader-size", "32", "56", "--loader-images", "2", "--loader-image-size", "64", "112",
            "--loader-rounds", "1", "--loader-data", str(out / "synthdrive"), "--json", str(out / "bench.json")]
    assert main(argv) == 0
    return json.loads((out / "bench.json").read_text())


def test_record_names_machine_date_and_settings(record):
    assert record["date"] and record["command"].startswith("mtwork bench")
    assert record["machine"]["device"] == "cpu" and record["machine"]["torch"] == torch.__version__
    assert record["settings"]["input_size"] == [32, 64] and record["settings"]["batch"] == 2
    assert record["matmul_peak"]["dtype"] == "float32" and record["matmul_peak"]["flops_per_s"] > 0


def test_every_source1_paradigm_stage_is_measured_against_the_bare_backbone(record):
    step = record["step"]
    assert list(step) == SOURCE1_CASES
    for name, r in step.items():
        assert r["img_per_s"] == pytest.approx(r["batch"] / r["step_seconds_mean"]), name
        assert r["vs_backbone_train"] == pytest.approx(r["img_per_s"] / step["backbone_train"]["img_per_s"]), name
        assert 0 < r["mfu"] and r["gflops_per_step"] > 0 and r["peak_memory_mib"] >= 0
    assert step["backbone_train"]["vs_backbone_train"] == 1.0
    assert "vs_backbone_forward" in step["pretrain_adapt_finetune/adapt"]
    assert step["backbone_forward"]["trainable_params"] == 0
    # the adapt stage trains the adapters, neck and heads only; single_task has one head
    adapt, finetune = step["pretrain_adapt_finetune/adapt"], step["pretrain_adapt_finetune/finetune"]
    assert adapt["trainable_params"] < finetune["trainable_params"] == finetune["total_params"]
    assert step["single_task/finetune"]["tasks"] == ["semseg"]
    # a train step is the forward plus a backward of about twice its FLOPs (the first convolution
    # computes no input gradient, ~6 % of ResNet-18's forward, hence a bit under 3x)
    ratio = step["backbone_train"]["gflops_per_step"] / step["backbone_forward"]["gflops_per_step"]
    assert 2.8 < ratio <= 3.0


def test_vtagml_is_measured_against_full_finetuning(record):
    vit = record["vit"]
    assert list(vit) == ["full_finetune", "vtagml"]
    assert vit["vtagml"]["vs_full_finetune"] == pytest.approx(vit["vtagml"]["img_per_s"] / vit["full_finetune"]["img_per_s"])
    assert vit["vtagml"]["balancer"] == "troa" and vit["full_finetune"]["balancer"] == "equal"
    assert vit["vtagml"]["trainable_params"] < vit["vtagml"]["total_params"]


def test_loader_reads_the_jpegs_it_wrote(record):
    loader = record["loader"]
    assert loader["image_size_on_disk"] == [64, 112] and loader["images"] == 2
    assert set(loader["decode_only"]) == {"pil", "pil_half_size", "simplejpeg (mtwork)", "simplejpeg_half_size", "torchvision_io"}
    entry = loader["sizes"]["32x56"]
    assert entry["img_per_s"] > 0 and entry["render"]["img_per_s"] > 0 and entry["in_worker"]["img_per_s"] > 0


def test_flop_count_matches_the_published_resnet18_figure():
    from mtwork.bench import count_flops
    from mtwork.models.backbones import create_backbone

    backbone = create_backbone("resnet18").eval()
    with torch.no_grad():
        flops = count_flops(lambda: backbone(torch.zeros(1, 3, 224, 224)))
    # ResNet-18 at 224x224: 1.814 G multiply-adds (torchvision's model card: 1.81 GFLOPS counted as
    # MACs); FlopCounterMode counts 2 FLOPs per multiply-add; the classifier (0.5 M) is not in features_only
    assert flops == pytest.approx(2 * 1.814e9, rel=0.01)
