"""model.adapter_placement: multi-scale adapters on the backbone's outputs or between its stages.

Identity at init under both placements (the plain backbone's outputs, ResNet and the CLIP image tower),
the "stages" adapters change what later stages see and get gradients through the frozen later stages in
the adapt stage (the backbone none), LV-Adapter and LoRA keep working, unsupported backbones are refused
with the combination named, and the run's model config carries the placement.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
from torch import nn

from mtwork.config import ADAPTER_PLACEMENTS as CONFIG_PLACEMENTS
from mtwork.config import load_params
from mtwork.methods.multiscale_adapter import MultiScaleAdapter
from mtwork.models.backbones import create_backbone, forward_stages
from mtwork.models.clip_backbone import MTWORK_TINY_CLIP_NAME, create_clip_model
from mtwork.models.multitask import ADAPTER_PLACEMENTS, MultiTaskModel, build_multitask_model
from mtwork.models.necks import FPN
from mtwork.models.swin import SwinV2Features

torch.set_num_threads(1)
TASKS = ["semseg", "drivable"]
SIZE = (64, 96)
PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
ARCHS = ["resnet18", f"clip:{MTWORK_TINY_CLIP_NAME}"]


def _build(arch, placement, method="multiscale_adapter", seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_multitask_model(arch, TASKS, fpn_channels=16, method=method, adapter_reduction=4,
                                 adapter_placement=placement, **kwargs).eval()


def _image(seed=1):
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _neck_input(model, image):
    """The 4 maps the FPN gets: adapted after the backbone ("outputs") or inside it ("stages", where the
    adapter's own forward passes the maps through)."""
    return model.adapter(model.backbone_features(image))


def _perturb_adapter(model, index, value=0.5):
    with torch.no_grad():
        model.adapter.adapters[index].up.weight.fill_(value / model.adapter.adapters[index].up.weight.shape[1])


def test_placement_choices_agree_with_the_params_schema():
    assert tuple(ADAPTER_PLACEMENTS) == tuple(CONFIG_PLACEMENTS) == ("outputs", "stages")


@pytest.mark.parametrize("arch", ARCHS)
def test_both_placements_equal_the_plain_backbone_at_init(arch):
    plain = _build(arch, "outputs", method="finetune")
    image = _image()
    with torch.no_grad():
        ref_maps = plain.backbone(image)
        ref = plain(image)
    for placement in ADAPTER_PLACEMENTS:
        adapted = _build(arch, placement)
        missing, unexpected = adapted.load_state_dict(plain.state_dict(), strict=False)
        assert unexpected == [] and all(k.startswith("adapter.") for k in missing)
        with torch.no_grad():
            maps = _neck_input(adapted, image)
            out = adapted(image)
        # zero-initialised up-projections: the adapters add exactly 0, so equality is exact
        assert all(torch.equal(a, b) for a, b in zip(maps, ref_maps))
        assert all(torch.equal(out[t], ref[t]) for t in TASKS)


@pytest.mark.parametrize("arch", ARCHS)
def test_stage_adapters_change_what_later_stages_see(arch):
    image = _image()
    changed = {}
    for placement in ADAPTER_PLACEMENTS:
        base = _build(arch, placement)
        with torch.no_grad():
            before = _neck_input(base, image)
            _perturb_adapter(base, 0)
            after = _neck_input(base, image)
        changed[placement] = [not torch.allclose(a, b) for a, b in zip(before, after)]
    # outputs: only the stride-4 map moves; stages: the adapted stride-4 map feeds stages 2..4
    assert changed["outputs"] == [True, False, False, False]
    assert changed["stages"] == [True, True, True, True]


@pytest.mark.parametrize("arch", ARCHS)
def test_adapt_stage_gradients_reach_the_adapters_through_frozen_later_stages(arch):
    grads = {}
    for placement in ADAPTER_PLACEMENTS:
        model = _build(arch, placement).set_stage("adapt").train()
        _perturb_adapter(model, 3, 0.1)  # a non-zero up-projection, so gradients reach every layer of it
        # a loss on the last stage's map only: stage 1's adapter can reach it only through stages 2..4
        _neck_input(model, _image())[3].square().mean().backward()
        assert all(p.grad is None for p in model.backbone.parameters())
        assert not any(p.requires_grad for p in model.backbone.parameters())
        first = model.adapter.adapters[0].up.weight.grad
        grads[placement] = None if first is None else float(first.abs().sum())
        assert model.adapter.adapters[3].down.weight.grad.abs().sum() > 0
    assert grads["outputs"] is None
    assert grads["stages"] is not None and grads["stages"] > 0


def test_whole_model_trains_the_adapters_in_the_adapt_stage_with_stages_placement():
    model = _build("resnet18", "stages").set_stage("adapt").train()
    out = model(_image())
    sum(v.float().square().mean() for v in out.values()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(a.up.weight.grad is not None and a.up.weight.grad.abs().sum() > 0 for a in model.adapter.adapters)
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))


def test_swin_features_forward_stages_is_its_forward_with_identity_hooks():
    torch.manual_seed(0)
    swin = SwinV2Features("mtwork_swinv2_tiny", img_size=(32, 64)).eval()
    image = torch.randn(1, 3, 32, 64)
    seen = []
    with torch.no_grad():
        ref = swin(image)
        maps = forward_stages(swin, image, lambda i, x: seen.append((i, tuple(x.shape))) or x)
        shifted = forward_stages(swin, image, lambda i, x: x + 1.0 if i == 0 else x)
    assert all(torch.equal(a, b) for a, b in zip(maps, ref))
    assert seen == [(i, tuple(m.shape)) for i, m in enumerate(ref)]
    assert not torch.allclose(shifted[1], ref[1])  # the hooked stage-1 map is what stage 2 consumed


def test_lv_adapter_works_under_both_placements(tmp_path):
    torch.manual_seed(0)
    clip = create_clip_model(MTWORK_TINY_CLIP_NAME)
    torch.save({"epoch": 0, "name": MTWORK_TINY_CLIP_NAME, "state_dict": clip.state_dict()}, tmp_path / "clip.pt")
    models = {p: _build("resnet18", p, method="lv_adapter", text_encoder_checkpoint=str(tmp_path / "clip.pt"))
              for p in ADAPTER_PLACEMENTS}
    models["stages"].load_state_dict(models["outputs"].state_dict())
    image = _image()
    with torch.no_grad():
        out = {p: m(image) for p, m in models.items()}
    assert all(torch.equal(out["outputs"][t], out["stages"][t]) for t in TASKS)
    assert models["stages"].adapter.adapters.placement == "stages"
    with torch.no_grad():
        for m in models.values():
            m.adapter.adapters.adapters[0].up.bias.fill_(0.5)
        maps = {p: m.adapter.adapters(m.backbone_features(image)) for p, m in models.items()}
    # the same non-zero adapters: equal on the stride-4 map, but only "stages" changes the later ones
    assert torch.equal(maps["outputs"][0], maps["stages"][0])
    assert not torch.allclose(maps["outputs"][3], maps["stages"][3])


def test_lora_is_the_same_model_under_either_placement():
    image = _image()
    lora = {p: _build("resnet18", p, method="lora", lora_kwargs={"rank": 2, "alpha": 4}) for p in ADAPTER_PLACEMENTS}
    lora["stages"].load_state_dict(lora["outputs"].state_dict())
    with torch.no_grad():
        a, b = lora["outputs"](image), lora["stages"](image)
    assert all(torch.equal(a[t], b[t]) for t in TASKS)


def test_unsupported_backbone_and_unknown_placement_are_refused():
    class Opaque(nn.Module):
        def forward(self, x):
            return [x, x, x, x]

    adapter = MultiScaleAdapter([3, 3, 3, 3])
    with pytest.raises(ValueError, match="'stages'.*MultiScaleAdapter.*Opaque"):
        MultiTaskModel(Opaque(), FPN([3, 3, 3, 3], 8), {}, adapter, adapter_placement="stages")
    MultiTaskModel(Opaque(), FPN([3, 3, 3, 3], 8), {}, None, adapter_placement="stages")  # nothing to place
    with pytest.raises(ValueError, match="Opaque"):
        forward_stages(Opaque(), torch.zeros(1, 3, 8, 8), lambda i, x: x)
    with pytest.raises(ValueError, match="adapter_placement.*'between'"):
        build_multitask_model("resnet18", TASKS, method="multiscale_adapter", adapter_placement="between")
    with pytest.raises(ValueError, match="placement"):
        MultiScaleAdapter([4], placement="everywhere")


def test_timm_forward_stages_matches_features_only_forward():
    torch.manual_seed(0)
    net = create_backbone("resnet18").eval()
    image = _image()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(forward_stages(net, image, lambda i, x: x), net(image)))


def test_run_model_config_carries_the_placement():
    from mtwork.plan import parse_run_id, plan_runs
    from mtwork.train import model_config

    params = load_params(PARAMS, ["model.adapter_placement=stages"])
    run = parse_run_id("moco_v2__pretrain_adapt_finetune-stages__semseg-drivable__s0")
    assert run.placement == "stages" and run.id == "moco_v2__pretrain_adapt_finetune-stages__semseg-drivable__s0"
    config = model_config(params, run)
    assert config["adapter_placement"] == "stages"
    # both placements compared: a run of each adapter paradigm per placement; the others once
    both = load_params(PARAMS, ["model.adapter_placement=[outputs, stages]", "checkpoints.sources=[moco_v2]",
                                "train.seeds=[0]"])
    ids = [r.id for r in plan_runs(both)]
    assert "moco_v2__pretrain_adapt_finetune__semseg-drivable-det__s0" in ids
    assert "moco_v2__pretrain_adapt_finetune-stages__semseg-drivable-det__s0" in ids
    assert "moco_v2__pretrain_adapt_finetune_lv-stages__semseg-drivable-det__s0" in ids
    assert sum("pretrain_finetune" in i for i in ids) == 1 and not any("lora-" in i for i in ids)
    with pytest.raises(ValueError, match="no adapter placement"):
        parse_run_id("moco_v2__lora-stages__semseg__s0")
    model = build_multitask_model(weights=None, **config)
    assert model.adapter_placement == "stages" and model.adapter.placement == "stages"
    assert load_params(PARAMS)["model"]["adapter_placement"] == "outputs"
    with pytest.raises(ValueError, match="model.adapter_placement"):
        load_params(PARAMS, ["model.adapter_placement=between"])
    with pytest.raises(ValueError, match="model.adapter_placement"):
        load_params(PARAMS, ["model.adapter_placement=[stages, stages]"])
