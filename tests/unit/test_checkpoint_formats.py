"""Checkpoint converters and the importer, on files written here in each upstream's published layout.

Every format registered in ``CHECKPOINT_FORMATS`` must have an upstream-file builder in ``BUILDERS``
(checked below), so the round-trip and refusal tests cover new formats by construction.
"""
from __future__ import annotations

import argparse
import fractions
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Set

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a stray pretrained=True fails fast instead of retrying

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mtwork.checkpoints.formats import CHECKPOINT_FORMATS, CheckpointFormatError, convert
from mtwork.checkpoints.importer import CheckpointImportError, import_checkpoint
from mtwork.models.backbones import create_backbone, create_features_model, expected_state

ARCH = "resnet18"
DIM = 128  # MoCo's projection dimension
PROBE = "layer4.1.conv2.weight"  # a backbone key the refusal tests remove or reshape


# --------------------------------------------------------------------------- upstream files


@dataclass
class Upstream:
    """One upstream checkpoint object, what importing it must give, and where its weights live.

    ``reference``: the backbone state (timm keys) the import must reproduce exactly.
    ``weights``: the dict inside ``obj`` holding tensors (mutated by the refusal tests).
    ``key``: backbone key -> the key of the same tensor in ``weights``.
    ``dropped``: upstream keys the report must list as dropped.
    """

    obj: Optional[dict]
    reference: Dict[str, torch.Tensor]
    weights: Optional[dict] = None
    key: Callable[[str], str] = lambda k: k
    dropped: Set[str] = field(default_factory=set)
    # Tensors the import must NOT reproduce (e.g. MoCo's key encoder), by backbone key.
    decoys: Dict[str, torch.Tensor] = field(default_factory=dict)

    def fresh(self) -> "Upstream":
        """A copy whose dicts can be edited (tensors are shared: the tests replace, never modify them)."""
        if self.weights is None:
            return replace(self)
        weights = dict(self.weights)
        if self.obj is self.weights:
            obj = weights
        else:
            obj = {k: (weights if v is self.weights else v) for k, v in self.obj.items()}
        return replace(self, obj=obj, weights=weights)


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Give BN buffers distinct values: fresh models all hold zeros/ones, which would hide a mix-up."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
    return model


def _backbone_part(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def moco_encoder(seed: int, mlp: bool = True) -> nn.Module:
    """As facebookresearch/moco ``moco/builder.py``: base_encoder(num_classes=dim), fc -> MLP for v2."""
    torch.manual_seed(seed)
    encoder = timm.create_model(ARCH, pretrained=False, num_classes=DIM)
    if mlp:
        width = encoder.fc.weight.shape[1]
        encoder.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), encoder.fc)
    return _randomise_bn(encoder, seed)


def build_moco(mlp: bool = True, prefix: str = "module.", queue: int = 64, optimizer_steps: int = 1) -> Upstream:
    """``main_moco.py``'s checkpoint from two different encoders (query seed 1, key seed 2).

    ``optimizer_steps=0`` leaves the optimizer state without momentum buffers (a smaller file).
    """
    enc_q, enc_k = moco_encoder(1, mlp), moco_encoder(2, mlp)
    optimizer = torch.optim.SGD(list(enc_q.parameters()) + list(enc_k.parameters()), lr=0.03, momentum=0.9)
    for _ in range(optimizer_steps):  # a step fills the momentum buffers, as in a real checkpoint
        for param in enc_q.parameters():
            param.grad = torch.ones_like(param)
        optimizer.step()  # moves enc_q; every snapshot below is taken after it
    state = {f"{prefix}queue": F.normalize(torch.randn(DIM, queue), dim=0),
             f"{prefix}queue_ptr": torch.zeros(1, dtype=torch.long)}
    state.update({f"{prefix}encoder_q.{k}": v.clone() for k, v in enc_q.state_dict().items()})
    state.update({f"{prefix}encoder_k.{k}": v.clone() for k, v in enc_k.state_dict().items()})
    obj = {"epoch": 200, "arch": ARCH, "state_dict": state, "optimizer": optimizer.state_dict()}
    head = [f"{prefix}encoder_q.{k}" for k in enc_q.state_dict() if k.startswith("fc.")]
    return Upstream(
        obj=obj,
        reference=_backbone_part(enc_q.state_dict()),
        weights=state,
        key=lambda k: f"{prefix}encoder_q.{k}",
        dropped={f"{prefix}queue", f"{prefix}queue_ptr", "optimizer", "epoch", "arch", *head,
                 *(f"{prefix}encoder_k.{k}" for k in enc_k.state_dict())},
        decoys=_backbone_part(enc_k.state_dict()),
    )


def build_torchvision() -> Upstream:
    torch.manual_seed(3)
    model = _randomise_bn(torchvision.models.resnet18(), 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return Upstream(obj=state, reference=_backbone_part(state), weights=state, dropped={"fc.weight", "fc.bias"})


def build_timm() -> Upstream:
    torch.manual_seed(4)
    model = _randomise_bn(timm.create_model(ARCH, pretrained=False), 4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return Upstream(obj=state, reference=_backbone_part(state), weights=state, dropped={"fc.weight", "fc.bias"})


def build_random(seed: int = 5) -> Upstream:
    # The documented meaning of "random": timm's init of the feature model under torch.manual_seed(seed).
    torch.manual_seed(seed)
    return Upstream(obj=None, reference=create_features_model(ARCH).state_dict())


BUILDERS: Dict[str, Callable[[], Upstream]] = {
    "moco": build_moco,
    "torchvision": build_torchvision,
    "timm": build_timm,
    "random": build_random,
}
SOURCED = [name for name in CHECKPOINT_FORMATS.names() if name != "random"]


@functools.lru_cache(maxsize=None)
def _cached(fmt: str) -> Upstream:
    return BUILDERS[fmt]()


def upstream(fmt: str, optimizer: bool = True) -> Upstream:
    """The upstream object of ``fmt`` (built once per session), safe to edit.

    ``optimizer=False`` leaves out a top-level optimizer state: the refusal tests do not need its
    tens of megabytes on disk.
    """
    up = _cached(fmt).fresh()
    if not optimizer and isinstance(up.obj, dict) and "optimizer" in up.obj and up.obj is not up.weights:
        up.obj = {k: v for k, v in up.obj.items() if k != "optimizer"}
    return up


def _save(obj, path: Path) -> Optional[Path]:
    if obj is None:
        return None
    torch.save(obj, path)
    return path


def _import(fmt: str, up: Upstream, tmp_path: Path, **kwargs):
    src = _save(up.obj, tmp_path / "upstream.pth")
    out = tmp_path / "out" / f"{fmt}.pt"
    seed = kwargs.pop("seed", 5 if fmt == "random" else 0)
    return src, out, import_checkpoint(fmt, src, out, ARCH, seed=seed, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Copies and inits here are memory-bound; 2 threads on busy shared cores only add spin-waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """fmt -> (upstream, src, out, report) of one successful import per format, shared by tests."""
    done = {}

    def get(fmt: str):
        if fmt not in done:
            up = upstream(fmt)
            done[fmt] = (up, *_import(fmt, up, tmp_path_factory.mktemp(fmt)))
        return done[fmt]

    return get


def _assert_state_equal(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for key in want:
        assert got[key].shape == want[key].shape, key
        assert torch.equal(got[key], want[key]), key


# --------------------------------------------------------------------------- every format


def test_every_registered_format_has_an_upstream_builder():
    assert set(BUILDERS) == set(CHECKPOINT_FORMATS.names())


def test_backbone_keys_are_the_torchvision_resnet_keys_without_fc():
    # The converters' promise ("torchvision/timm ResNet keys, no fc") is what the backbone loads.
    want = [k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")]
    assert list(expected_state(ARCH)) == want


@pytest.mark.parametrize("fmt", CHECKPOINT_FORMATS.names())
def test_import_round_trip(fmt, imported):
    up, src, out, report = imported(fmt)

    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["arch"] == ARCH
    _assert_state_equal(saved["state_dict"], up.reference)
    _assert_state_equal(create_backbone(ARCH, out).state_dict(), up.reference)
    for key, decoy in up.decoys.items():
        if decoy.is_floating_point():
            assert not torch.equal(saved["state_dict"][key], decoy), f"{key} came from the wrong encoder"

    prov = saved["provenance"]
    assert prov["format"] == fmt and prov["arch"] == ARCH
    assert prov["mtwork_version"] and prov["created_utc"].endswith("+00:00")
    if src is None:
        assert prov["source_file"] is None and prov["sha256"] is None and prov["seed"] == 5
    else:
        assert prov["source_file"] == str(src) and prov["seed"] is None
        assert prov["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert set(report.dropped) == up.dropped
    assert prov["dropped_keys"]["count"] == len(up.dropped)

    written = json.loads(out.with_suffix(".json").read_text())
    assert written["counts"] == {"kept": len(up.reference), "dropped": len(up.dropped), "missing": 0,
                                 "unexpected": 0, "mismatched": 0, "filled": 0}
    assert set(written["dropped"]) == up.dropped and written["kept"] == list(up.reference)
    assert sorted(p.name for p in out.parent.iterdir()) == [f"{fmt}.json", f"{fmt}.pt"]  # no temp files
    assert f"kept {len(up.reference)}" in report.to_text()


@pytest.mark.parametrize("fmt", SOURCED)
def test_truncated_checkpoint_is_refused_and_nothing_written(fmt, tmp_path):
    up = upstream(fmt, optimizer=False)
    del up.weights[up.key(PROBE)]
    with pytest.raises(CheckpointImportError) as info:
        _import(fmt, up, tmp_path)
    message = str(info.value)
    assert PROBE in message and str(tmp_path / "upstream.pth") in message and "missing 1 " in message
    assert info.value.report.missing == [PROBE]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("fmt", SOURCED)
def test_reshaped_tensor_is_refused(fmt, tmp_path):
    up = upstream(fmt, optimizer=False)
    up.weights[up.key(PROBE)] = up.weights[up.key(PROBE)].reshape(512, 512, 9)
    with pytest.raises(CheckpointImportError, match=r"layer4\.1\.conv2\.weight \(512, 512, 9\) vs expected \(512, 512, 3, 3\)"):
        _import(fmt, up, tmp_path)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("fmt", SOURCED)
def test_extra_backbone_key_is_refused(fmt, tmp_path):
    up = upstream(fmt, optimizer=False)
    up.weights[up.key("layer5.0.conv1.weight")] = torch.zeros(1)
    with pytest.raises(CheckpointImportError, match=r"unexpected 1 keys: layer5\.0\.conv1\.weight"):
        _import(fmt, up, tmp_path)


# --------------------------------------------------------------------------- MoCo


def test_moco_v2_keeps_query_encoder_and_drops_the_rest(imported):
    _, _, _, report = imported("moco")
    dropped = set(report.dropped)
    assert {"module.queue", "module.queue_ptr", "optimizer"} <= dropped
    assert {f"module.encoder_q.fc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")} <= dropped
    assert "module.encoder_k.conv1.weight" in dropped and "module.encoder_k.layer4.1.bn2.running_var" in dropped
    assert "v2 MLP head" in report.notes and "epoch=200" in report.notes
    text = report.to_text()
    assert "module.encoder_k (120)" in text and "module.encoder_q.fc (4)" in text


def test_moco_v1_linear_head_is_dropped(tmp_path):
    up = build_moco(mlp=False, optimizer_steps=0)
    _, out, report = _import("moco", up, tmp_path)
    assert {"module.encoder_q.fc.weight", "module.encoder_q.fc.bias"} <= set(report.dropped)
    assert "v1 linear head" in report.notes
    _assert_state_equal(torch.load(out, weights_only=True)["state_dict"], up.reference)


def test_moco_single_process_save_without_module_prefix(tmp_path):
    up = build_moco(prefix="", optimizer_steps=0)
    _, out, report = _import("moco", up, tmp_path)
    _assert_state_equal(torch.load(out, weights_only=True)["state_dict"], up.reference)
    assert {"queue", "queue_ptr", "encoder_q.fc.0.weight"} <= set(report.dropped)


def test_moco_converter_refuses_a_plain_resnet_state_dict():
    with pytest.raises(CheckpointFormatError, match="encoder_q"):
        convert("moco", torchvision.models.resnet18().state_dict())


def test_moco_import_of_a_resnet34_file_into_resnet18_is_refused(tmp_path):
    torch.manual_seed(0)
    state = {f"module.encoder_q.{k}": v for k, v in timm.create_model("resnet34").state_dict().items()}
    torch.save({"epoch": 1, "arch": "resnet34", "state_dict": state}, tmp_path / "r34.pth")
    with pytest.raises(CheckpointImportError, match=r"unexpected \d+ keys: layer1\.2\.") as info:
        import_checkpoint("moco", tmp_path / "r34.pth", tmp_path / "o.pt", ARCH)
    assert "arch=resnet34" in str(info.value)  # the upstream note explains the mismatch
    assert not (tmp_path / "o.pt").exists() and not (tmp_path / "o.json").exists()


# --------------------------------------------------------------------------- other formats


def test_torchvision_reference_training_checkpoint(tmp_path):
    # references/classification/train.py saves {"model", "optimizer", "lr_scheduler", "epoch", "args"}.
    up = upstream("torchvision")
    wrapped = {"model": up.obj, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {},
               "epoch": 89, "args": argparse.Namespace(lr=0.1, model="resnet18")}
    up = Upstream(obj=wrapped, reference=up.reference)
    _, out, report = _import("torchvision", up, tmp_path)
    assert set(report.dropped) == {"fc.weight", "fc.bias", "optimizer", "lr_scheduler", "epoch", "args"}
    assert torch.load(out, weights_only=True)["provenance"]["loaded_with"] == "weights_only"


def test_timm_train_checkpoint_uses_state_dict_not_ema(tmp_path):
    up = upstream("timm")
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in up.obj.items()}
    wrapped = {"epoch": 3, "arch": ARCH, "state_dict": up.obj, "state_dict_ema": ema, "version": 2}
    _, out, report = _import("timm", Upstream(obj=wrapped, reference=up.reference), tmp_path)
    _assert_state_equal(torch.load(out, weights_only=True)["state_dict"], up.reference)
    assert "state_dict_ema" in report.dropped


def test_ddp_prefixed_torchvision_state_dict(tmp_path):
    up = upstream("torchvision")
    prefixed = {f"module.{k}": v for k, v in up.obj.items()}
    _, out, report = _import("torchvision", Upstream(obj=prefixed, reference=up.reference), tmp_path)
    assert set(report.dropped) == {"module.fc.weight", "module.fc.bias"}
    assert "prefix stripped" in report.notes


def test_missing_num_batches_tracked_is_filled_and_reported(tmp_path):
    # Checkpoints saved before PyTorch 0.4.1 have no BN step counters.
    up = upstream("timm")
    old = {k: v for k, v in up.obj.items() if not k.endswith("num_batches_tracked")}
    _, out, report = _import("timm", Upstream(obj=old, reference=up.reference), tmp_path)
    assert len(report.filled) == 20 and "bn1.num_batches_tracked" in report.filled
    assert int(torch.load(out, weights_only=True)["state_dict"]["bn1.num_batches_tracked"]) == 0


def test_random_is_reproducible_per_seed_and_takes_no_file(tmp_path, imported):
    torch.manual_seed(123)
    for name in ("a.pt", "b.pt"):
        import_checkpoint("random", None, tmp_path / name, ARCH, seed=0)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1)), "importing must leave the global RNG alone"
    a, b = (torch.load(tmp_path / name, weights_only=True)["state_dict"] for name in ("a.pt", "b.pt"))
    _assert_state_equal(a, b)
    seed5 = torch.load(imported("random")[2], weights_only=True)["state_dict"]
    assert not torch.equal(a["conv1.weight"], seed5["conv1.weight"])
    torch.save({}, tmp_path / "x.pth")
    with pytest.raises(CheckpointImportError, match="takes no upstream file"):
        import_checkpoint("random", tmp_path / "x.pth", tmp_path / "d.pt", ARCH)


# --------------------------------------------------------------------------- loading and errors


def test_foreign_python_objects_need_allow_pickle(tmp_path):
    up = upstream("timm")
    src = tmp_path / "odd.pth"
    torch.save({"state_dict": up.obj, "meta": fractions.Fraction(1, 3)}, src)
    with pytest.raises(CheckpointImportError, match=r"fractions\.Fraction.*allow_pickle=True"):
        import_checkpoint("timm", src, tmp_path / "o.pt", ARCH)
    assert not (tmp_path / "o.pt").exists()
    import_checkpoint("timm", src, tmp_path / "o.pt", ARCH, allow_pickle=True)
    assert torch.load(tmp_path / "o.pt", weights_only=True)["provenance"]["loaded_with"] == "pickle"


def test_unknown_format_missing_file_and_non_torch_file(tmp_path):
    with pytest.raises(CheckpointImportError, match=r"unknown checkpoint format 'simclr' \(known: moco, random"):
        import_checkpoint("simclr", None, tmp_path / "o.pt", ARCH)
    with pytest.raises(CheckpointImportError, match="cannot build backbone 'resnet999'"):
        import_checkpoint("random", None, tmp_path / "o.pt", "resnet999")
    with pytest.raises(CheckpointImportError, match="not found: .*nope.pth"):
        import_checkpoint("timm", tmp_path / "nope.pth", tmp_path / "o.pt", ARCH)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointImportError, match="text.pth: cannot be read as a torch checkpoint"):
        import_checkpoint("timm", tmp_path / "text.pth", tmp_path / "o.pt", ARCH)
    with pytest.raises(CheckpointImportError, match="'timm' converts an upstream file, but none was given"):
        import_checkpoint("timm", None, tmp_path / "o.pt", ARCH)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.pth"]


def test_converters_do_not_modify_their_input():
    up = upstream("moco")
    keys = list(up.obj["state_dict"])
    convert("moco", up.obj)
    assert list(up.obj["state_dict"]) == keys and "optimizer" in up.obj
