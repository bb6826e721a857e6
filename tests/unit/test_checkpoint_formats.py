"""Checkpoint converters and the importer, on files written here in each upstream's published layout.

Every format registered in ``CHECKPOINT_FORMATS`` must have an upstream-file builder in ``BUILDERS``
(checked below), so the round-trip and refusal tests cover new formats by construction. The builders of
the self-supervised releases (MoCo v3, SimCLR, BYOL, SwAV, DINO, DenseCL, PixPro, DetCo) live in
``upstream_layouts.py``.
"""
from __future__ import annotations

import argparse
import fractions
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a stray pretrained=True fails fast instead of retrying

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mtwork.checkpoints import importer as importer_module
from mtwork.checkpoints.formats import CHECKPOINT_FORMATS, CheckpointFormatError, convert, declared_arch
from mtwork.checkpoints.importer import CheckpointImportError, fitting_archs, import_checkpoint
from mtwork.models.backbones import create_backbone, create_features_model, expected_state

# A helper beside this file (tests/ has no __init__.py, so pytest puts this directory on sys.path).
import upstream_layouts as layouts
from upstream_layouts import ARCH, Upstream, randomise_bn

DIM = 128  # MoCo's projection dimension
PROBE = "layer4.1.conv2.weight"  # a backbone key the refusal tests remove or reshape


# --------------------------------------------------------------------------- upstream files


def _backbone_part(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def moco_encoder(seed: int, mlp: bool = True) -> nn.Module:
    """As facebookresearch/moco ``moco/builder.py``: base_encoder(num_classes=dim), fc -> MLP for v2."""
    torch.manual_seed(seed)
    encoder = timm.create_model(ARCH, pretrained=False, num_classes=DIM)
    if mlp:
        width = encoder.fc.weight.shape[1]
        encoder.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), encoder.fc)
    return randomise_bn(encoder, seed)


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
    model = randomise_bn(torchvision.models.resnet18(), 3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return Upstream(obj=state, reference=_backbone_part(state), weights=state, dropped={"fc.weight", "fc.bias"})


def build_timm() -> Upstream:
    torch.manual_seed(4)
    model = randomise_bn(timm.create_model(ARCH, pretrained=False), 4)
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
    **layouts.BUILDERS,  # the self-supervised releases (moco_v3, simclr, byol, swav, dino, densecl, ...)
}
# The CLIP image tower is a backbone family of its own (arch clip:<name>), so its converter is tested
# in tests/unit/test_clip.py; every ResNet format is tested here.
OWN_FAMILY = {"open_clip": "tests/unit/test_clip.py",
              # the Swin-V2 file of the embedded SimMIM run (timm keys): tests/unit/test_simmim.py and
              # test_timm_swinv2_imports_as_the_swin_family below
              "simmim": "tests/unit/test_simmim.py"}
RESNET_FORMATS = [name for name in CHECKPOINT_FORMATS.names() if name not in OWN_FAMILY]
SOURCED = [name for name in RESNET_FORMATS if name != "random"]


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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def expected_state_once_per_arch():
    """The importer builds a model per import only to read its keys, shapes and dtypes (never its random
    values); with ~60 imports here, building it once per arch saves a third of this file's time."""
    cache: Dict[str, Dict[str, torch.Tensor]] = {}

    def cached(arch: str) -> Dict[str, torch.Tensor]:
        if arch not in cache:
            cache[arch] = expected_state(arch)
        return dict(cache[arch])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importer_module, "expected_state", cached)
        yield


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
    assert set(BUILDERS) | set(OWN_FAMILY) == set(CHECKPOINT_FORMATS.names())


def test_backbone_keys_are_the_torchvision_resnet_keys_without_fc():
    # The converters' promise ("torchvision/timm ResNet keys, no fc") is what the backbone loads.
    want = [k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")]
    assert list(expected_state(ARCH)) == want


@pytest.mark.parametrize("fmt", RESNET_FORMATS)
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
    assert prov["mtwork_version"] and "created_utc" not in prov  # the time lives in the report only
    assert json.loads(out.with_suffix(".json").read_text())["created_utc"].endswith("+00:00")
    # the same upstream file imports to the same bytes (nothing time-dependent in the weights file)
    again = out.parent.parent / "again" / out.name
    import_checkpoint(fmt, src, again, ARCH, seed=5 if fmt == "random" else 0)
    assert again.read_bytes() == out.read_bytes()
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


def test_moco_file_declaring_resnet34_contradicts_a_resnet18_request(tmp_path):
    torch.manual_seed(0)
    state = {f"module.encoder_q.{k}": v for k, v in timm.create_model("resnet34").state_dict().items()}
    obj = {"epoch": 1, "arch": "resnet34", "state_dict": state}
    torch.save(obj, tmp_path / "r34.pth")
    with pytest.raises(CheckpointImportError, match=r"r34\.pth: the requested arch is 'resnet18' but the file "
                                                    r"declares arch 'resnet34' \(its 'arch' field\)"):
        import_checkpoint("moco", tmp_path / "r34.pth", tmp_path / "o.pt", ARCH)
    # Without the declaration the key comparison refuses it, and says which network the shapes are.
    del obj["arch"]
    torch.save(obj, tmp_path / "r34.pth")
    with pytest.raises(CheckpointImportError, match=r"unexpected \d+ keys: layer1\.2\.") as info:
        import_checkpoint("moco", tmp_path / "r34.pth", tmp_path / "o.pt", ARCH)
    assert "its tensor shapes fit 'resnet34'" in str(info.value)
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
    with pytest.raises(CheckpointImportError, match=r"unknown checkpoint format 'nosuch' \(known: byol, ") as info:
        import_checkpoint("nosuch", None, tmp_path / "o.pt", ARCH)
    assert all(name in str(info.value) for name in CHECKPOINT_FORMATS.names())
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


@pytest.mark.parametrize("fmt", SOURCED)
def test_converters_do_not_modify_their_input(fmt):
    up = _cached(fmt)
    top, keys = list(up.obj), list(up.weights)
    convert(fmt, up.obj)
    assert list(up.obj) == top and list(up.weights) == keys


# --------------------------------------------------------------------------- self-supervised releases

SSL = ["moco", *layouts.BUILDERS]
# MoCo v2 and the MoCo-style DetCo layout share their shape ('state_dict' with 'module.encoder_q.*'), so each
# converter accepts the other's file: a DetCo file read as 'moco' keeps DetCo's heads, which the importer
# refuses as unexpected keys; a MoCo file read as 'detco' gives MoCo's query encoder.
LOOKALIKES = {("moco", "detco"), ("detco", "moco")}


@pytest.mark.parametrize("fmt", SSL)
def test_ssl_converter_refuses_the_other_layouts_naming_their_top_level_keys(fmt):
    for other in SSL:
        if other == fmt or (fmt, other) in LOOKALIKES:
            continue
        obj = _cached(other).obj
        with pytest.raises(CheckpointFormatError, match="expected ") as info:
            convert(fmt, obj)
        first_key = next(iter(obj))
        assert f"the file's top-level keys are ['{first_key}'" in str(info.value), (other, str(info.value))


@pytest.mark.parametrize("fmt", SSL)
def test_ssl_converter_refuses_no_file_and_non_dicts(fmt):
    with pytest.raises(CheckpointFormatError, match=f"'{fmt}' converts an upstream file, but none was given"):
        convert(fmt, None)
    with pytest.raises(CheckpointFormatError, match="the file holds a list, not a dict"):
        convert(fmt, [torch.zeros(1)])


# What each converter must drop, by family, as the upstream layouts (converter docstrings) name them.
DROPPED_FAMILIES = {
    "moco_v3": {"module.base_encoder.fc.0.weight", "module.base_encoder.fc.4.running_var",
                "module.momentum_encoder.conv1.weight", "module.momentum_encoder.fc.3.weight",
                "module.predictor.1.bias", "scaler", "optimizer", "epoch", "arch"},
    "simclr": {"fc.weight", "fc.bias"},
    "byol": {"neck.fc0.weight", "neck.bn0.running_mean", "head.predictor.fc1.weight", "target_net.steps",
             "target_net.module.0.layer4.1.conv2.weight", "target_net.module.1.fc0.bias", "meta",
             "message_hub", "param_schedulers", "optimizer"},
    "swav": {"module.projection_head.0.weight", "module.projection_head.1.running_var",
             "module.projection_head.3.bias", "module.prototypes.weight"},
    "dino": {"module.head.mlp.0.weight", "module.head.last_layer.weight_g", "module.head.last_layer.weight_v",
             "student", "optimizer", "epoch", "args", "dino_loss"},
    "densecl": {"queue", "queue_ptr", "queue2", "queue2_ptr", "encoder_q.0.conv1.weight",
                "encoder_q.1.mlp.0.weight", "encoder_q.1.mlp2.2.bias", "encoder_k.0.layer4.1.conv2.weight",
                "encoder_k.1.mlp2.0.weight", "meta", "optimizer"},
    "pixpro": {"module.encoder_k.conv1.weight", "module.projector.linear1.weight", "module.projector.bn1.running_var",
               "module.projector_k.linear2.bias", "module.value_transform.weight", "opt", "optimizer",
               "scheduler", "epoch", "amp"},
    "detco": {"module.queue", "module.queue_ptr", "module.encoder_q.layers.3.1.conv2.weight",
              "module.encoder_q.global_mlps.0.mlp.0.weight", "module.encoder_q.local_mlps.3.mlp.2.bias",
              "module.encoder_k.conv1.weight", "module.encoder_k.local_mlps.0.mlp.0.weight", "optimizer"},
}


def test_dropped_families_cover_every_ssl_builder():
    assert set(DROPPED_FAMILIES) == set(layouts.BUILDERS)


@pytest.mark.parametrize("fmt", sorted(DROPPED_FAMILIES))
def test_ssl_converter_keeps_the_encoder_and_drops_heads_momentum_encoders_and_state(fmt):
    up = _cached(fmt)
    conversion = convert(fmt, up.obj)
    _assert_state_equal(conversion.state_dict, up.reference)
    assert DROPPED_FAMILIES[fmt] <= set(conversion.dropped)
    assert set(conversion.dropped) == up.dropped and len(conversion.dropped) == len(up.dropped)


def test_moco_v3_single_process_checkpoint():
    up = layouts.build_moco_v3(prefix="")
    conversion = convert("moco_v3", up.obj)
    _assert_state_equal(conversion.state_dict, up.reference)
    assert set(conversion.dropped) == up.dropped and "predictor.0.weight" in conversion.dropped
    assert conversion.notes == "MoCo v3 checkpoint (arch=resnet18, epoch=300); encoder 'base_encoder.*'"


def test_moco_v3_refuses_a_moco_v2_checkpoint_naming_what_it_found():
    with pytest.raises(CheckpointFormatError) as info:
        convert("moco_v3", _cached("moco").obj)
    message = str(info.value)
    assert "'module.base_encoder.*'" in message and "'state_dict'" in message
    assert "module.encoder_q." in message or "module.queue" in message  # the state dict's first keys


def test_simclr_v1_file_holds_only_state_dict():
    up = upstream("simclr")
    with pytest.raises(CheckpointFormatError, match="only 'state_dict' belongs at the top level"):
        convert("simclr", {**up.obj, "optimizer": {}})


def test_simclr_v2_renamed_weights_compute_what_separius_resnet_computes():
    # A bottleneck ResNet in Separius's module tree with random weights and BN statistics; after renaming,
    # torchvision's ResNet must load it and produce the same features (BN swaps would show in eval mode).
    torch.manual_seed(0)
    separius = randomise_bn(layouts.SimCLRv2ResNet(layers=(1, 1, 1, 1)), 0).eval()
    conversion = convert("simclr", layouts.simclr_v2_file(separius))
    assert set(conversion.dropped) == {"fc.weight", "fc.bias", "head"}
    assert "SimCLR v2 (Separius/SimCLRv2-Pytorch)" in conversion.notes
    resnet = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1]).eval()
    missing, unexpected = resnet.load_state_dict(conversion.state_dict, strict=False)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []
    trunk = nn.Sequential(*list(resnet.children())[:-2])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trunk(x), separius(x))


def test_simclr_v2_resnet50_keys_and_shapes_are_torchvisions():
    with torch.device("meta"):
        separius = layouts.SimCLRv2ResNet(layers=(3, 4, 6, 3))
        resnet50 = torchvision.models.resnet50()
    conversion = convert("simclr", layouts.simclr_v2_file(separius))
    want = {k: v.shape for k, v in resnet50.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in conversion.state_dict.items()} == want


def test_simclr_v2_selective_kernel_model_is_refused():
    with torch.device("meta"):
        obj = layouts.simclr_v2_file(layouts.SimCLRv2ResNet(layers=(1, 1, 1, 1)))
    resnet = obj["resnet"]
    del resnet["net.1.blocks.0.net.2.weight"]  # sk1 replaces the 3x3 conv by a selective kernel
    resnet["net.1.blocks.0.net.2.main_conv.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointFormatError, match=r"1 keys have no torchvision ResNet name: "
                                                    r"\['net\.1\.blocks\.0\.net\.2\.main_conv\.0\.weight'\]"):
        convert("simclr", obj)


def test_simclr_v2_truncated_file_is_refused_by_the_importer(tmp_path):
    # timm's resnet26 is the bottleneck ResNet with 2 blocks per stage: Separius's tree with layers (2, 2, 2, 2).
    torch.manual_seed(0)
    obj = layouts.simclr_v2_file(layouts.SimCLRv2ResNet(layers=(2, 2, 2, 2)))
    del obj["resnet"]["net.4.blocks.1.net.4.weight"]
    torch.save(obj, tmp_path / "r26_1x_sk0.pth")
    with pytest.raises(CheckpointImportError, match=r"missing 1 backbone keys: layer4\.1\.conv3\.weight"):
        import_checkpoint("simclr", tmp_path / "r26_1x_sk0.pth", tmp_path / "o.pt", "resnet26")
    assert not (tmp_path / "o.pt").exists()


def test_byol_openselfsup_layout():
    up = layouts.build_byol_openselfsup()
    conversion = convert("byol", up.obj)
    _assert_state_equal(conversion.state_dict, up.reference)
    assert set(conversion.dropped) == up.dropped and "online_net.0.conv1.weight" in conversion.dropped


def test_swav_main_swav_checkpoint_and_plain_resnet_refusal():
    up = upstream("swav")
    wrapped = {"epoch": 800, "state_dict": up.obj, "optimizer": layouts.optimizer_state()}
    conversion = convert("swav", wrapped)
    _assert_state_equal(conversion.state_dict, up.reference)
    assert set(conversion.dropped) == up.dropped | {"epoch", "optimizer"}
    plain = {f"module.{k}": v for k, v in up.reference.items()}
    with pytest.raises(CheckpointFormatError, match=r"no 'projection_head\*' or 'prototypes\*' keys"):
        convert("swav", plain)


def test_dino_backbone_release_is_a_bare_torchvision_state_dict():
    reference = layouts.encoder()
    conversion = convert("dino", dict(reference))
    _assert_state_equal(conversion.state_dict, reference)
    assert conversion.dropped == [] and conversion.notes.startswith("DINO backbone release")
    assert convert("dino", _cached("dino").obj).notes.startswith("DINO checkpoint, teacher (epoch=800)")


def test_densecl_release_and_its_author_tag():
    reference = layouts.encoder()
    conversion = convert("densecl", {"state_dict": reference, "author": "DenseCL"})
    _assert_state_equal(conversion.state_dict, reference)
    assert conversion.dropped == ["author"]
    # Without the tag the file reads as a training checkpoint, whose 'backbone.*' keys it lacks.
    expected = (r"the DenseCL release: .*'author': 'DenseCL'.* or a DenseCL training checkpoint"
                r".*no ResNet keys under 'module\.backbone\.\*'")
    with pytest.raises(CheckpointFormatError, match=expected):
        convert("densecl", {"state_dict": reference})


def test_timm_swinv2_imports_as_the_swin_family(tmp_path):
    """A timm Swin-V2 state dict (as timm writes it, with classifier and, from older timm versions,
    derived buffers) imports for arch swin:NAME with head and buffers dropped, and loads strictly."""
    from mtwork.models.swin import create_swinv2, encoder_maps

    model = create_swinv2("mtwork_swinv2_tiny", (64, 112))
    state = {**model.state_dict(), "head.fc.weight": torch.zeros(10, 256), "head.fc.bias": torch.zeros(10),
             "layers.0.blocks.0.attn.relative_position_index": torch.zeros(16, 16, dtype=torch.long)}
    torch.save({"state_dict": state}, tmp_path / "swin.pth")
    report = import_checkpoint("timm", tmp_path / "swin.pth", tmp_path / "swin.pt", "swin:mtwork_swinv2_tiny")
    assert sorted(report.dropped) == ["head.fc.bias", "head.fc.weight", "layers.0.blocks.0.attn.relative_position_index"]
    backbone = create_backbone("swin:mtwork_swinv2_tiny", tmp_path / "swin.pt").eval()
    image = torch.randn(1, 3, 224, 224)
    model224 = create_swinv2("mtwork_swinv2_tiny", (224, 224)).eval()
    model224.load_state_dict(model.state_dict())
    with torch.no_grad():
        for got, want in zip(backbone(image), encoder_maps(model224, image)):
            torch.testing.assert_close(got, want)
    del state["layers.3.blocks.1.mlp.fc2.weight"]
    torch.save(state, tmp_path / "truncated.pth")
    with pytest.raises(CheckpointImportError, match="layers.3.blocks.1.mlp.fc2.weight"):
        import_checkpoint("timm", tmp_path / "truncated.pth", tmp_path / "t.pt", "swin:mtwork_swinv2_tiny")
    assert not (tmp_path / "t.pt").exists()


# --------------------------------------------------------------------------- the architecture a file holds


def test_declared_arch_is_read_from_the_fields_each_upstream_writes():
    # moco/detco/moco-v3 main_moco.py: top-level arch; DINO: args (argparse) .arch; PixPro: opt.arch;
    # torchvision references/classification/train.py: args.model. OpenMMLab and bare state dicts: none.
    assert declared_arch(_cached("moco").obj) == (ARCH, "arch")
    assert declared_arch(_cached("moco_v3").obj) == (ARCH, "arch")
    assert declared_arch(_cached("detco").obj) == (ARCH, "arch")
    assert declared_arch(_cached("dino").obj) == (ARCH, "args.arch")
    assert declared_arch(_cached("pixpro").obj) == (ARCH, "opt.arch")
    reference = {"model": {}, "args": argparse.Namespace(model="resnet101", lr=0.1)}
    assert declared_arch(reference) == ("resnet101", "args.model")
    for fmt in ("byol", "densecl", "swav", "torchvision", "timm"):
        assert declared_arch(_cached(fmt).obj) == (None, None), fmt
    assert declared_arch(None) == (None, None) and declared_arch([1]) == (None, None)


def _moco_v2_resnet50(tmp_path: Path):
    enc = layouts.constant_encoder("resnet50")
    src = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(layouts.build_moco_v2_file(enc, "resnet50"), src)
    return enc, src


def test_moco_v2_resnet50_release_imports_as_the_arch_it_declares(tmp_path):
    """The issue's case: moco_v2_800ep_pretrain.pth.tar (arch 'resnet50') without --arch."""
    enc, src = _moco_v2_resnet50(tmp_path)
    report = import_checkpoint("moco", src, tmp_path / "moco_v2.pt")
    assert report.arch == "resnet50" and report.arch_from == "the file's 'arch' field"
    assert "import moco -> resnet50 (the file's 'arch' field)" in report.to_text()
    saved = torch.load(tmp_path / "moco_v2.pt", weights_only=True)
    assert saved["arch"] == "resnet50" and saved["provenance"]["arch_from"] == "the file's 'arch' field"
    assert list(saved["state_dict"]) == list(enc)  # torchvision's resnet50 keys, in order
    for key, value in enc.items():  # every tensor under its own name (key i holds i + 1)
        assert saved["state_dict"][key].shape == value.shape and torch.equal(saved["state_dict"][key], value), key
    assert json.loads((tmp_path / "moco_v2.json").read_text())["arch_from"] == "the file's 'arch' field"


def test_arch_that_contradicts_the_file_is_an_error_naming_both(tmp_path, capsys):
    from mtwork.cli import main

    _, src = _moco_v2_resnet50(tmp_path)
    out = tmp_path / "out" / "moco.pt"
    assert main(["import-checkpoint", "--format", "moco", "--arch", "resnet18", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "--arch is 'resnet18' but the file declares arch 'resnet50' (its 'arch' field)" in err
    assert "leave out --arch to use the file's" in err
    # the same spelling with a timm pretrained tag is no contradiction (checked before any model is built)
    from mtwork.checkpoints.importer import same_arch

    assert same_arch("resnet50.a1_in1k", "resnet50") and not same_arch("resnet18", "resnet50")
    assert same_arch("swin:mtwork_swinv2_tiny", "mtwork_swinv2_tiny")
    # The pipeline form: the architecture comes from model.backbone (no catalog arch) and must agree too.
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    argv = ["import-checkpoint", "--params", str(params), "--set", f"checkpoints.catalog.moco_v2.path={src}",
            "--set", "model.backbone=resnet18", "--source", "moco_v2", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.backbone is 'resnet18' but the file declares arch 'resnet50'" in err
    assert "set model.backbone: resnet50" in err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_arch_is_inferred_from_the_shapes_when_the_file_declares_none(tmp_path, capsys):
    from mtwork.cli import main

    up = upstream("torchvision")  # a bare torchvision resnet18 state dict: no arch anywhere
    src = _save(up.obj, tmp_path / "resnet18-f37072fd.pth")
    out = tmp_path / "r18.pt"
    assert main(["import-checkpoint", "--format", "torchvision", str(src), str(out)]) == 0
    assert "import torchvision -> resnet18 (inferred from the tensor shapes)" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    assert saved["arch"] == ARCH and saved["provenance"]["arch_from"] == "inferred from the tensor shapes"
    _assert_state_equal(saved["state_dict"], up.reference)


def test_a_declared_name_mtwork_does_not_know_yields_to_the_requested_arch(tmp_path):
    up = upstream("moco", optimizer=False)
    up.obj["arch"] = "resnet18w2"  # an upstream's own naming (SwAV-style), no timm model
    src = _save(up.obj, tmp_path / "moco.pth")
    with pytest.raises(CheckpointImportError, match=r"cannot build backbone 'resnet18w2'.*\(arch from the file's "
                                                    r"'arch' field; give the mtwork arch with --arch\)"):
        import_checkpoint("moco", src, tmp_path / "o.pt")
    report = import_checkpoint("moco", src, tmp_path / "o.pt", ARCH, arch_origin="--arch")
    assert report.arch == ARCH and report.arch_from == "--arch (the file's 'arch' field says 'resnet18w2', no mtwork arch)"
    _assert_state_equal(torch.load(tmp_path / "o.pt", weights_only=True)["state_dict"], up.reference)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
                                  "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"])
def test_every_torchvision_resnet_is_recognised_by_its_shapes(name):
    # torchvision's own network (the reference), on the meta device: its trunk fits exactly one arch.
    with torch.device("meta"):
        state = {k: v for k, v in getattr(torchvision.models, name)().state_dict().items() if not k.startswith("fc.")}
    assert fitting_archs(state) == [name]
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # pre-0.4.1 files
    assert fitting_archs(old) == [name]


def test_known_architectures_have_distinct_shapes_or_ask_for_the_arch():
    """Shapes identify every known architecture but Swin-V2 configs that differ only in window and input
    size (their continuous position bias has no size-dependent parameter): those are ambiguous and need
    the arch named, never guessed."""
    from mtwork.checkpoints.importer import INFERABLE_ARCHS, _arch_shapes, fitting_archs
    from mtwork.models.swin import SWIN_CONFIGS

    groups = {}
    for arch in INFERABLE_ARCHS:
        groups.setdefault(tuple(_arch_shapes(arch).items()), []).append(arch)
    for archs in (g for g in groups.values() if len(g) > 1):
        assert all(a.startswith("swin:") for a in archs), archs
        configs = [dict(SWIN_CONFIGS[a.split(":", 1)[1]]) for a in archs]
        for cfg in configs:
            for key in ("window_size", "img_size", "pretrained_window_sizes"):
                cfg.pop(key, None)
        assert all(cfg == configs[0] for cfg in configs), archs
        state = {k: torch.zeros(shape) for k, shape in _arch_shapes(archs[0]).items()}
        assert sorted(fitting_archs(state)) == sorted(archs)  # -> "fit N architectures: give the arch"


def test_ambiguous_or_unknown_shapes_ask_for_the_arch(tmp_path, monkeypatch):
    from mtwork.checkpoints import importer

    src = _save(layouts.constant_encoder("resnet50"), tmp_path / "r50.pth")  # a bare state dict, no arch
    # timm's anti-aliased resnetaa50 has resnet50's parameter shapes (its pools have none): the shapes
    # cannot tell them apart, which is why INFERABLE_ARCHS leaves it out.
    monkeypatch.setattr(importer, "INFERABLE_ARCHS", ("resnet18", "resnet50", "resnetaa50"))
    with pytest.raises(CheckpointImportError, match=r"r50\.pth: declares no architecture and its tensor shapes fit "
                                                    r"2 architectures \(resnet50, resnetaa50\): give the arch"):
        import_checkpoint("torchvision", src, tmp_path / "o.pt")
    monkeypatch.setattr(importer, "INFERABLE_ARCHS", ("resnet18", "resnet34"))
    with pytest.raises(CheckpointImportError, match=r"fit none of the known ones \(resnet18, resnet34\)"):
        import_checkpoint("torchvision", src, tmp_path / "o.pt")
    with pytest.raises(CheckpointImportError, match="format 'random' has no upstream file to read the architecture"):
        import_checkpoint("random", None, tmp_path / "o.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r50.pth"]
