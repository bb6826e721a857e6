"""Multi-scale adapters: identity at initialisation, registry, parameter count."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from mtwork.methods import METHODS, create_method
from mtwork.methods.multiscale_adapter import BottleneckAdapter, MultiScaleAdapter
from mtwork.models.multitask import build_multitask_model

CHANNELS = [64, 128, 256, 512]


def test_bottleneck_adapter_is_identity_at_init_and_learns_a_residual():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(16, reduction=4)
    x = torch.randn(2, 16, 5, 7)
    assert torch.equal(adapter(x), x)
    with torch.no_grad():
        adapter.up.weight.normal_()
    assert not torch.allclose(adapter(x), x)


def test_bottleneck_adapter_parameter_count():
    # C=64, r=4 -> hidden 16: down 64*16+16, depthwise 16*9+16, up 16*64+64
    adapter = BottleneckAdapter(64, reduction=4)
    assert sum(p.numel() for p in adapter.parameters()) == (64 * 16 + 16) + (16 * 9 + 16) + (16 * 64 + 64)
    assert adapter.dwconv.groups == 16


@pytest.mark.parametrize("name", METHODS.names())
def test_every_registered_method_maps_features_to_same_shapes(name):
    torch.manual_seed(0)
    module = create_method(name, CHANNELS, reduction=4)
    feats = [torch.randn(1, c, 16 // 2**i, 24 // 2**i) for i, c in enumerate(CHANNELS)]
    if module is None:
        return
    out = module(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]


def test_create_method_registry():
    assert create_method("finetune", CHANNELS) is None
    adapter = create_method("multiscale_adapter", CHANNELS, reduction=8)
    assert isinstance(adapter, MultiScaleAdapter)
    assert [a.down.out_channels for a in adapter.adapters] == [8, 16, 32, 64]
    with pytest.raises(KeyError, match="finetune"):
        create_method("no_such_method", CHANNELS)
    with pytest.raises(TypeError):
        create_method("multiscale_adapter", CHANNELS, redution=8)  # misspelt keywords are not swallowed


def test_model_with_adapters_equals_model_without_at_init():
    torch.manual_seed(0)
    plain = build_multitask_model("resnet18", ["semseg", "drivable", "det"], fpn_channels=32)
    adapted = build_multitask_model("resnet18", ["semseg", "drivable", "det"], fpn_channels=32,
                                    method="multiscale_adapter", adapter_reduction=4)
    missing, unexpected = adapted.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(key.startswith("adapter.") for key in missing)
    plain.eval()
    adapted.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out_plain, out_adapted = plain(x), adapted(x)
    for task in ("semseg", "drivable"):
        torch.testing.assert_close(out_adapted[task], out_plain[task], rtol=0, atol=1e-6)
    for key in ("cls", "box", "ctr"):
        for a, b in zip(out_adapted["det"][key], out_plain["det"][key]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # the check is not vacuous: a non-zero adapter changes the output
    with torch.no_grad():
        adapted.adapter.adapters[3].up.bias.fill_(1.0)
        assert not torch.allclose(adapted(x)["semseg"], out_plain["semseg"], atol=1e-3)
