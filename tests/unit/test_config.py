"""params.yaml loading: overrides, the paper-scale switch, and errors that name the key."""
from pathlib import Path

import pytest

from mtwork.config import ParamsError, load_params, parse_override

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"


def test_default_params_load_and_are_embedded():
    p = load_params(PARAMS)
    assert p["scale"] == "embedded"
    assert p["data"]["dataset"] == "synthdrive"
    assert "paper" not in p  # the overrides block is consumed by resolution


def test_override_parses_yaml_values():
    assert parse_override("train.seeds=[0, 1]") == {"train": {"seeds": [0, 1]}}
    p = load_params(PARAMS, ["train.epochs=3", "train.adapt_epochs=1"])
    assert (p["train"]["epochs"], p["train"]["adapt_epochs"]) == (3, 1)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epoch=3", "train.epoch"),
        ("train.lr=fast", "train.lr"),
        ("train.amp=1", "train.amp"),
        ("train.tasks=[semseg, lanes]", "train.tasks[1]"),
        ("train.adapt_epochs=6", "train.adapt_epochs"),
        ("train.input_size=[100, 224]", "train.input_size"),
        ("checkpoints.sources=[random, swav]", "checkpoints.sources[1]"),
        ("checkpoints.sources=[supervised_imagenet]", "checkpoints.catalog.supervised_imagenet.path"),
        ("scale=huge", "scale"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ParamsError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_params(PARAMS, [override])


def test_paper_scale_switch_merges_overrides(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    p = load_params(
        PARAMS,
        [
            "scale=paper",
            f"data.bdd100k_root={tmp_path}",
            f"checkpoints.catalog.moco_v2.path={weights}",
            f"checkpoints.catalog.supervised_imagenet.path={weights}",
            f"checkpoints.catalog.openclip_rn50.path={weights}",
        ],
    )
    assert p["model"]["backbone"] == "resnet50" and p["model"]["lv"]["clip_source"] == "openclip_rn50"
    assert p["data"]["dataset"] == "bdd100k"
    assert p["train"]["device"] == "cuda"
    assert p["checkpoints"]["sources"] == ["supervised_imagenet", "moco_v2"]


def test_paper_scale_without_data_root_is_refused(tmp_path):
    with pytest.raises(ParamsError, match="path"):
        load_params(PARAMS, ["scale=paper"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="bad.yaml"):
        load_params(bad)


def test_embedded_pretrain_formats_match_the_pretrainers():
    from mtwork.config import EMBEDDED_PRETRAIN_FORMATS
    from mtwork.pretrain import PRETRAINERS

    # the tiny CLIP (open_clip) is trained from images and captions, outside the SSL registry
    assert sorted(EMBEDDED_PRETRAIN_FORMATS) == sorted(PRETRAINERS.names() + ["open_clip"])


def test_a_source_without_file_needs_an_embedded_pretraining():
    with pytest.raises(ParamsError, match="supervised_imagenet.path"):
        load_params(PARAMS, ["checkpoints.sources=[random, supervised_imagenet]"])
    p = load_params(PARAMS, ["checkpoints.sources=[moco_v2, simclr, byol, dino, densecl]"])
    from mtwork.plan import embedded_pretrain_sources

    # then source 2's Swin-V2, pretrained with SimMIM
    assert embedded_pretrain_sources(p) == ["moco_v2", "simclr", "byol", "dino", "densecl", "swin_simmim"]
    p = load_params(PARAMS, ["checkpoints.sources=[moco_v2]", "vit.enabled=false"])
    assert embedded_pretrain_sources(p) == ["moco_v2"]


def test_vit_block_is_checked():
    with pytest.raises(ParamsError, match="vit.source"):
        load_params(PARAMS, ["vit.source=nope"])
    with pytest.raises(ParamsError, match="swin"):
        load_params(PARAMS, ["vit.source=moco_v2"])
    with pytest.raises(ParamsError, match=r"vit.task_subsets\[0\]"):
        load_params(PARAMS, ["vit.task_subsets=[[semseg, drivable]]"])
    with pytest.raises(ParamsError, match="vit.input_size"):
        load_params(PARAMS, ["vit.input_size=[60, 128]"])
    with pytest.raises(ParamsError, match="vit.paradigms"):
        load_params(PARAMS, ["vit.paradigms=[vtagml, lora]"])
    with pytest.raises(ParamsError, match="vit.adapted_blocks"):
        load_params(PARAMS, ["vit.adapted_blocks=[[3]]"])
    assert load_params(PARAMS, ["vit.adapted_blocks=[[3, 0], [3, 1]]"])["vit"]["adapted_blocks"] == [[3, 0], [3, 1]]


def test_vit_paradigms_agree_with_the_plan():
    from mtwork.config import VIT_PARADIGMS
    from mtwork.plan import VIT_PARADIGMS as PLANNED

    assert set(VIT_PARADIGMS) == set(PLANNED) - {"single_task"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "'train.epochs' must be >= 1, got 0"),
        ("train.batch_size=0", "'train.batch_size' must be >= 1"),
        ("train.lr=0", "'train.lr' must be > 0, got 0"),
        ("train.lr=-0.1", "'train.lr' must be > 0"),
        ("train.weight_decay=-1", "'train.weight_decay' must be >= 0"),
        ("train.warmup_epochs=-0.5", "'train.warmup_epochs' must be >= 0"),
        ("train.workers=-1", "'train.workers' must be >= 0"),
        ("train.threads=0", "'train.threads' must be >= 1"),
        ("train.accum_steps=0", "'train.accum_steps' must be >= 1"),
        ("train.accum_steps=16", "'train.accum_steps' \\(16\\) cannot exceed train.batch_size"),
        ("train.loss_weights.det=-1", "'train.loss_weights.det' must be >= 0"),
        ("vit.epochs=0", "'vit.epochs' must be >= 1"),
        ("vit.lr=.nan", "'vit.lr' must be > 0, got nan"),
        ("vit.troa.every=0", "'vit.troa.every' must be >= 1"),
        ("evaluate.batch_size=0", "'evaluate.batch_size' must be >= 1"),
        ("data.synthdrive.overlap=1.5", "'data.synthdrive.overlap' must be in \\[0, 1\\]"),
        ("train.amp=true", "'train.amp' must be one of \\['auto', 'none', 'bf16', 'fp16'\\]"),
    ],
)
def test_numeric_settings_are_range_checked(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(PARAMS, [override])
