"""Atomic writes (mode from the umask, strict JSON) and how the CLI reports expected and unexpected
errors."""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest

from mtwork import cli
from mtwork.errors import UserError
from mtwork.io import atomic_path, current_umask, nan_to_none, save_torch, write_json, write_text

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)
        return mask

    old = os.umask(0o022)
    os.umask(old)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_files_get_the_mode_of_the_umask(umask, tmp_path, mask, mode):
    umask(mask)
    assert current_umask() == mask
    write_json(tmp_path / "a.json", {"x": 1})
    write_text(tmp_path / "b.txt", "x")
    save_torch(tmp_path / "c.pt", {"x": 1})
    for name in ("a.json", "b.txt", "c.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "c.pt"]  # no temporaries left


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_json_refuses_non_finite_numbers_and_names_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.json: refusing to write a non-finite number at 'epochs\.1\.loss'"):
        write_json(tmp_path / "bad.json", {"epochs": [{"loss": 1.0}, {"loss": math.nan}]})
    assert not (tmp_path / "bad.json").exists()
    metrics = {"det": {"map": math.nan, "ar100": 1.5}, "list": [math.inf, 2.0]}
    write_json(tmp_path / "ok.json", nan_to_none(metrics))
    assert json.loads((tmp_path / "ok.json").read_text()) == {"det": {"map": None, "ar100": 1.5}, "list": [None, 2.0]}


def test_expected_errors_are_one_line_and_unexpected_ones_keep_their_traceback(capsys, monkeypatch):
    # an invalid run id and a bad parameter: one line each, exit status 2
    base = ["train", "--params", str(PARAMS), "--data", "d", "--checkpoint", "c", "--out", "o"]
    assert cli.main([*base, "--run", "not-a-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mtwork train: error: run id 'not-a-run' is not of the form") and "Traceback" not in err
    assert cli.main([*base, "--run", "random__lora__semseg__s0", "--set", "train.epochs=0"]) == 2
    assert "'train.epochs' must be >= 1" in capsys.readouterr().err

    def crash(args):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    parser_build = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser_build(), crash))
    assert cli.main([*base, "--run", "random__lora__semseg__s0"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "CUDA out of memory" in err
    assert err.rstrip().endswith("mtwork train: unexpected error (traceback above)")

    def user_error(args):
        raise UserError("bad thing in x.yaml")

    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser_build(), user_error))
    assert cli.main([*base, "--run", "r", "--debug"]) == 2  # --debug: the traceback of an expected error too
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("mtwork train: error: bad thing in x.yaml")


def _with_func(parser, func):
    """The real parser with `train` bound to ``func`` (a stand-in command that fails)."""
    parser._subparsers._group_actions[0].choices["train"].set_defaults(func=func)
    return parser
