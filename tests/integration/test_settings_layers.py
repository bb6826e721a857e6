"""Snakemake's side of the settings layers (params.yaml -> paper block -> the user's values) and of the
number notations, on dry runs of a temporary copy of the workflow (see conftest.py).

Snakemake reads params.yaml and --configfile files with YAML 1.1 (`1e-4` is a string there) and nested
--config values as strings; rules/common.smk re-reads them with mtwork's loader and passes the user's
values to every command as `--set`, which mtwork applies after the paper block. Two dry runs, ~5-10 s each.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import List, Tuple

from mtwork.config import load_params

REPO = Path(__file__).resolve().parents[2]


def _sets(argv: Tuple[str, ...]) -> List[str]:
    return [argv[i + 1] for i, word in enumerate(argv) if word == "--set"]


def _commands(jobs) -> List[Tuple[str, ...]]:
    """argv (without the log redirection) of every job that runs mtwork with the params file."""
    out = []
    for job in jobs:
        if job.cmd:
            words = shlex.split(job.cmd)
            if "--params" in words:
                out.append(tuple(words[: words.index(">")] if ">" in words else words))
    return out


def test_config_numbers_in_every_notation_reach_every_command(workflow_dir: Path, wt):
    params = workflow_dir / "params.yaml"
    text = params.read_text()
    # params.yaml in exponent notation: strings to Snakemake's YAML 1.1, the same numbers to mtwork, so
    # these lines must not turn into overrides
    import re

    # every `warmup_epochs: 0.5` value line (train and vit blocks; a comment may follow) and both blocks'
    # decimal `lr:` values, whatever they are, rewritten in exponent notation
    text, n_warmup = re.subn(r"^(  warmup_epochs: )0\.5\b", r"\g<1>5e-1", text, flags=re.M)
    text, n_lr = re.subn(r"^(  lr: )(0\.\d+)\b", lambda m: f"{m.group(1)}{float(m.group(2)):.0e}", text,
                         flags=re.M)
    assert n_warmup == 2 and n_lr == 2
    assert re.search(r"^  lr: \de-\d\d", text, flags=re.M)
    params.write_text(text)
    jobs = wt.dry_run(workflow_dir, "results/tables", "--config",
                      "train__lr=1e-4",            # top level: Snakemake parses it as a float
                      "vit={lr: 3E-4}",            # nested: Snakemake keeps the string "3E-4"
                      "train__weight_decay=1e-12")  # a float whose JSON text (1e-12) YAML 1.1 reads as a string
    expected = ["train.lr=0.0001", "train.weight_decay=1e-12", "vit.lr=0.0003"]
    commands = _commands(jobs)
    assert len(commands) > 10
    for argv in commands:
        assert _sets(argv) == expected, argv
    p = load_params(params, expected)  # what each command loads
    assert (p["train"]["lr"], p["train"]["weight_decay"], p["vit"]["lr"]) == (1e-4, 1e-12, 3e-4)
    assert p["train"]["warmup_epochs"] == p["vit"]["warmup_epochs"] == 0.5


def _docs_config_file(tmp_path: Path) -> Tuple[Path, Path, Path]:
    """docs/paper_scale.md's paper-scale config file, its /weights and /data paths moved under tmp_path
    (with placeholder files: the dry run only checks that inputs exist)."""
    docs = (REPO / "docs" / "paper_scale.md").read_text()
    match = re.search(r"<!-- example: paper-configfile.*?-->\s*```yaml\n(.*?)```", docs, re.S)
    assert match, "docs/paper_scale.md lost its paper-configfile example"
    weights, bdd = tmp_path / "weights", tmp_path / "bdd100k"
    weights.mkdir()
    bdd.mkdir()
    text = match.group(1).replace("/weights/", f"{weights}/").replace("/data/bdd100k", str(bdd))
    for name in re.findall(rf"{re.escape(str(weights))}/([\w.\-]+)", text):
        (weights / name).write_bytes(b"x")
    path = tmp_path / "my_paper.yaml"
    path.write_text(text)
    return path, weights, bdd


def test_the_users_values_win_over_the_paper_block(workflow_dir: Path, tmp_path: Path, wt):
    config_file, weights, bdd = _docs_config_file(tmp_path)
    jobs = wt.dry_run(workflow_dir, "results/tables", "--configfile", str(config_file), "--config",
                      "train__epochs=3", "train__adapt_epochs=1",
                      "model__backbone=resnet10t")  # equal to params.yaml's value, and still the user's
    # the docs' example: its four sources (not the paper block's two) are imported from its files
    sources = ["supervised_imagenet", "moco_v2", "swav", "dino"]
    imports = {j.outputs[0]: j.inputs for j in jobs if j.rule == "import_checkpoint"}
    assert set(imports) == {f"models/pretrained/{s}.pt" for s in sources}
    assert imports["models/pretrained/swav.pt"] == [str(weights / "swav_800ep_pretrain.pth.tar")]
    assert [j.rule for j in jobs].count("evaluate") == len(sources)
    (check,) = [j for j in jobs if j.rule == "check_data"]
    assert str(bdd) in check.cmd
    commands = [argv for argv in _commands(jobs) if argv[1] == "train"]
    assert commands
    for argv in commands:
        sets = _sets(argv)
        assert {"scale=paper", "model.backbone=resnet10t", "train.epochs=3", "train.adapt_epochs=1",
                f"checkpoints.sources={json.dumps(sources)}"} <= set(sets), sets
    p = load_params(workflow_dir / "params.yaml", _sets(commands[0]))
    assert (p["model"]["backbone"], p["train"]["epochs"], p["checkpoints"]["sources"]) == ("resnet10t", 3, sources)
    paper = load_params(workflow_dir / "params.yaml", ["scale=paper", *(s for s in _sets(commands[0])
                                                                       if not s.startswith("model.backbone"))])
    assert paper["model"]["backbone"] == "resnet50"  # without the user's value, the block's
    assert p["model"]["fpn_channels"] == paper["model"]["fpn_channels"] == 256  # the block where the user is silent
