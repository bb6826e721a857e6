"""params.yaml loading: overrides, the paper-scale switch, and errors that name the key."""
from pathlib import Path

import re

import pytest

REPO = Path(__file__).resolve().parents[2]

import math

from mtwork.config import (
    ParamsError,
    load_params,
    merge_layers,
    parse_override,
    read_params_file,
    resolve,
    yaml_dump,
    yaml_load,
)

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"


def test_default_params_load_and_are_embedded():
    p = load_params(PARAMS)
    assert p["scale"] == "embedded"
    assert p["data"]["datasets"]["synthdrive"]["generate"] and p["data"]["source_domain"] == "clear_day"
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
        ("train.adapt_epochs=99", "train.adapt_epochs"),
        ("train.input_size=[100, 224]", "train.input_size"),
        ("checkpoints.sources=[random, swav]", "checkpoints.sources[1]"),
        ("checkpoints.sources=[supervised_imagenet]", "checkpoints.catalog.supervised_imagenet.path"),
        ("scale=huge", "scale"),
        # OpenAI's RN50 weights were trained with QuickGELU: open_clip's plain RN50 config is refused
        ("checkpoints.catalog.openclip_rn50.arch=clip:RN50", "checkpoints.catalog.openclip_rn50.arch"),
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
            f"data.datasets.bdd100k.root={tmp_path}",
            f"checkpoints.catalog.moco_v2.path={weights}",
            f"checkpoints.catalog.supervised_imagenet.path={weights}",
            f"checkpoints.catalog.openclip_rn50.path={weights}",
        ],
    )
    assert p["model"]["backbone"] == "resnet50" and p["model"]["lv"]["clip_source"] == "openclip_rn50"
    assert p["data"]["domains"][p["data"]["source_domain"]]["dataset"] == "bdd100k"
    assert p["data"]["dg_domains"] == ["bdd_night", "bdd_rainy", "bdd_snowy", "bdd_foggy"]
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


# ---- the order of the layers: params file -> paper block (at paper scale) -> the user's overrides ----


def _paper_files(tmp_path):
    """--set overrides that give the paper scale every file it needs (placeholders: nothing reads them)."""
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    return [f"data.datasets.bdd100k.root={tmp_path}"] + [
        f"checkpoints.catalog.{name}.path={weights}" for name in ("moco_v2", "supervised_imagenet", "openclip_rn50")]


def test_user_overrides_win_over_the_paper_block(tmp_path):
    raw = read_params_file(PARAMS)
    paper = raw["paper"]
    assert paper["train"]["epochs"] == 36 and paper["model"]["backbone"] == "resnet50"  # what the block sets
    p = resolve(raw, ["scale=paper", *_paper_files(tmp_path), "train.epochs=3", "train.adapt_epochs=1",
                      "model.backbone=resnet18",  # the embedded default's value: it still wins
                      "checkpoints.sources=[moco_v2]",  # a list replaces the block's list
                      "data.dg_domains=[bdd_night, bdd_rainy]"])
    assert (p["train"]["epochs"], p["train"]["adapt_epochs"], p["model"]["backbone"]) == (3, 1, "resnet18")
    assert p["checkpoints"]["sources"] == ["moco_v2"] and p["data"]["dg_domains"] == ["bdd_night", "bdd_rainy"]
    # everything the user did not set still comes from the block
    assert p["model"]["fpn_channels"] == paper["model"]["fpn_channels"] == 256
    assert p["train"]["lr"] == paper["train"]["lr"] and p["data"]["source_domain"] == "bdd_clear_daytime"
    # a user override of a key inside a mapping the block sets leaves the block's siblings alone
    p = merge_layers(raw, ["scale=paper", "model={lv: {num_context: 4}}"])
    assert p["model"]["lv"] == {**raw["model"]["lv"], **paper["model"]["lv"], "num_context": 4}


def test_scale_paper_from_an_override_or_the_file_applies_the_block(tmp_path):
    raw = read_params_file(PARAMS)
    from_override = merge_layers(raw, ["scale=paper", "train.epochs=3"])
    edited = dict(raw, scale="paper")  # what `dvc exp run -S scale=paper` leaves in params.yaml
    from_file = merge_layers(edited, ["train.epochs=3"])
    assert from_override == from_file
    assert from_file["scale"] == "paper" and from_file["train"]["batch_size"] == raw["paper"]["train"]["batch_size"]
    # `paper.*` overrides edit the block itself: used at paper scale, ignored at embedded scale
    assert merge_layers(raw, ["scale=paper", "paper.train.batch_size=2"])["train"]["batch_size"] == 2
    assert merge_layers(raw, ["paper.train.batch_size=2"])["train"]["batch_size"] == raw["train"]["batch_size"]
    assert "paper" not in merge_layers(raw, ["paper.train.batch_size=2"])
    with pytest.raises(ParamsError, match="'paper' must be a mapping"):
        merge_layers(raw, ["paper=3"])


def test_overrides_at_embedded_scale_leave_the_paper_block_out():
    raw = read_params_file(PARAMS)
    p = resolve(raw, ["train.epochs=40", "checkpoints.sources=[moco_v2]", "model.fpn_channels=48"])
    assert (p["train"]["epochs"], p["model"]["fpn_channels"], p["model"]["backbone"]) == (
        40, 48, raw["model"]["backbone"])
    assert p["checkpoints"]["sources"] == ["moco_v2"] and p["train"]["batch_size"] == raw["train"]["batch_size"]
    # later overrides win over earlier ones, dicts merge, lists replace
    p = merge_layers(raw, ["train.seeds=[0, 1, 2]", "train.seeds=[5]", "train={epochs: 7}", "train.lr=0.1"])
    assert p["train"]["seeds"] == [5] and (p["train"]["epochs"], p["train"]["lr"]) == (7, 0.1)


# ---- numbers in every common notation --------------------------------------------------------------

NOTATIONS = ["1e-4", "3E5", "1.0e12", "-2e-3", ".5", "1.e5", "+1E+2", "2.5e-1", "0.0002", "1.0e-4"]


@pytest.mark.parametrize("text", NOTATIONS)
def test_numbers_in_every_notation_are_floats(text, tmp_path):
    want = float(text)  # Python's float() is the reference reading
    value = yaml_load(text)
    assert isinstance(value, float) and value == want
    assert parse_override(f"train.lr={text}") == {"train": {"lr": want}}
    if want < 0:  # read as a number, then refused by the range check (which names the key and value)
        with pytest.raises(ParamsError, match=r"'train.weight_decay' must be >= 0, got -0.002"):
            load_params(PARAMS, [f"train.weight_decay={text}"])
    else:
        assert load_params(PARAMS, [f"train.weight_decay={text}"])["train"]["weight_decay"] == want
    # in a params file, at both levels of the paper switch
    import re

    path = tmp_path / "params.yaml"
    text_file = PARAMS.read_text()
    # the train block's and the paper block's lr lines, written as a user would (comments kept)
    train_lr = re.compile(r"^(train:\n(?:(?:  .*)?\n)*?  lr: )[^ #\n]+", re.M)
    paper_lr = re.compile(r"^(paper:\n(?:(?:  .*)?\n)*?  train:\n(?:(?:    .*)?\n)*?    lr: )[^ #\n]+", re.M)
    text_file, n_train = train_lr.subn(lambda m: m.group(1) + text, text_file, count=1)
    text_file, n_paper = paper_lr.subn(lambda m: m.group(1) + text, text_file, count=1)
    assert n_train == n_paper == 1, "params.yaml has no train.lr / paper.train.lr line"
    path.write_text(text_file)
    assert read_params_file(path)["train"]["lr"] == want and read_params_file(path)["paper"]["train"]["lr"] == want
    assert merge_layers(read_params_file(path))["train"]["lr"] == want
    assert merge_layers(read_params_file(path), ["scale=paper"])["train"]["lr"] == want


def test_integers_strings_and_round_trips_keep_their_types():
    assert yaml_load("3") == 3 and isinstance(yaml_load("-12"), int) and yaml_load("0x1F") == 31
    assert yaml_load("1e") == "1e" and yaml_load("e5") == "e5" and yaml_load("v1.0e3") == "v1.0e3"
    assert yaml_load("'1e-4'") == "1e-4"  # quoted: a string
    assert math.isinf(yaml_load(".inf"))
    tricky = {"a": "1e-4", "b": 1e-12, "c": 0.0002, "d": "3", "e": "yes", "f": None, "g": [1, "2E5", 2.5e-7],
              "h": "null", "i": 3e5, "j": "-2e-3"}
    assert yaml_load(yaml_dump(tricky)) == tricky


def test_values_that_dvc_writes_into_params_yaml_read_as_numbers(tmp_path):
    """`dvc exp run -S` writes the file with its own YAML dumper (1e-12 without a dot): mtwork reads it."""
    hydra = pytest.importorskip("dvc.utils.hydra")
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.read_text())
    hydra.apply_overrides(str(path), ["train.lr=1e-12", "train.weight_decay=3E-5", "vit.lr=1.0e-4"])
    written = path.read_text()
    assert "lr: 1e-12" in written  # YAML 1.1 (PyYAML's safe_load) would read this as a string
    p = load_params(path)
    assert (p["train"]["lr"], p["train"]["weight_decay"], p["vit"]["lr"]) == (1e-12, 3e-5, 1e-4)


# ---- mtwork params ----------------------------------------------------------------------------------


def test_mtwork_params_prints_the_check_of_the_issue(capsys):
    from mtwork.cli import main

    rc = main(["params", "--params", str(PARAMS), "--set", "scale=paper", "--set", "train.epochs=3"])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "  epochs: 3" in lines and "  backbone: resnet50" in lines
    printed = yaml_load(out)
    assert printed["train"]["epochs"] == 3 and printed["model"]["backbone"] == "resnet50" and "paper" not in printed
    # printed although incomplete: the paper block's 12 adapt epochs do not fit 3 epochs, and the data is missing
    assert rc == 1 and "would be refused" in err and "train.adapt_epochs" in err


@pytest.mark.parametrize("scale", ["embedded", "paper"])
def test_mtwork_params_output_is_a_params_file_of_the_same_settings(scale, tmp_path, capsys):
    from mtwork.cli import main

    overrides = ["train.lr=1e-4", "train.seeds=[3]"]
    if scale == "paper":
        overrides += ["scale=paper", *_paper_files(tmp_path), "train.epochs=4", "train.adapt_epochs=2"]
    argv = ["params", "--params", str(PARAMS)] + [w for o in overrides for w in ("--set", o)]
    assert main(argv) == 0
    printed = tmp_path / "resolved.yaml"
    printed.write_text(capsys.readouterr().out)
    resolved = load_params(PARAMS, overrides)
    assert load_params(printed) == resolved  # the paper block is applied already; the file has none
    assert resolved["train"]["lr"] == 1e-4 and resolved["scale"] == scale


def test_dvc_experiment_values_win_over_the_paper_block(tmp_path, monkeypatch):
    """`dvc exp run -S train.epochs=3` writes 3 into params.yaml; compared with the experiment's baseline
    revision it is the user's value and beats the paper block's 36, as --set does."""
    import subprocess

    from mtwork.config import DVC_EXP_BASELINE_ENV, experiment_overrides, load_params

    repo = tmp_path / "repo"
    repo.mkdir()
    params = repo / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    for cmd in (["git", "init", "-q"], ["git", "add", "params.yaml"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=repo, check=True)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    text = params.read_text().replace("\nscale: embedded", "\nscale: paper", 1)
    text, n = re.subn(r"^(train:\n(?:  .*\n|\s*#.*\n)*?  epochs: )\d+", r"\g<1>3", text, count=1, flags=re.M)
    assert n == 1  # train.epochs, as DVC's -S would set it
    params.write_text(text)
    assert experiment_overrides(params) == []  # outside an experiment: params.yaml is the base layer
    monkeypatch.setenv(DVC_EXP_BASELINE_ENV, rev)
    assert experiment_overrides(params) == ["scale=paper", "train.epochs=3"]
    paths = ["train.adapt_epochs=1", "data.datasets.bdd100k.root=/d/bdd100k", "checkpoints.catalog.moco_v2.path=/w/m.pth",
             "checkpoints.catalog.supervised_imagenet.path=/w/r50.pth", "checkpoints.catalog.openclip_rn50.path=/w/c.pt"]
    resolved = load_params(params, experiment_overrides(params) + paths)
    assert resolved["train"]["epochs"] == 3 and resolved["model"]["backbone"] == "resnet50"
    monkeypatch.setenv(DVC_EXP_BASELINE_ENV, "0" * 40)  # a baseline git does not know: a clear error
    with pytest.raises(ParamsError, match="baseline"):
        experiment_overrides(params)


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
