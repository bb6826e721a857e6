"""LoRA through peft: identity at init, only LoRA trains, hand-computed parameter count, adapter round trip."""
import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a stray pretrained=True fails fast instead of retrying

import pytest
import torch
from torch import nn

from mtwork.methods import create_method
from mtwork.methods.lora import (
    LORA_TARGETS,
    apply_lora,
    is_lora_key,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    lora_target_modules,
)
from mtwork.models.backbones import create_features_model

INPUT = (2, 3, 32, 48)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _backbone(arch="resnet18", seed=0):
    """A randomly initialised backbone made to look pretrained: timm zero-initialises the last
    BatchNorm scale of every block (``zero_init_last``), which would mute whatever feeds it (LoRA on
    ``conv2`` of a BasicBlock included), so every BatchNorm gets non-trivial scales and statistics."""
    torch.manual_seed(seed)
    model = create_features_model(arch)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model


def _buffers(module):
    return {k: v.clone() for k, v in module.named_buffers()}


def test_identity_at_init_same_forward_feature_info_and_keys():
    plain = _backbone().eval()
    wrapped = apply_lora(_backbone(), rank=4, alpha=8)
    x = torch.randn(*INPUT)
    wrapped.train()  # BatchNorm must still use the frozen statistics
    out, ref = wrapped(x), plain(x)
    assert isinstance(out, list) and len(out) == 4
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    assert type(wrapped) is type(plain)  # still timm's FeatureListNet, not a peft wrapper
    assert wrapped.feature_info.channels() == plain.feature_info.channels()
    assert wrapped.feature_info.reduction() == plain.feature_info.reduction()
    plain_keys, keys = set(plain.state_dict()), set(wrapped.state_dict())
    assert keys - plain_keys == {k for k in keys if is_lora_key(k)}
    assert plain_keys <= keys  # original key layout kept: no '.base_layer.' names
    assert not any(".base_layer." in k for k in keys)
    assert "layer1.0.conv2.lora_A.default.weight" in keys and "layer1.0.conv2.weight" in keys
    # a converted backbone file (original keys) loads into the wrapped backbone
    other = _backbone(seed=1).state_dict()
    result = wrapped.load_state_dict(other, strict=False)
    assert not result.unexpected_keys and all(is_lora_key(k) for k in result.missing_keys)
    assert torch.equal(wrapped.layer1[0].conv2.base_layer.weight, other["layer1.0.conv2.weight"])


def test_only_lora_parameters_change_after_optimizer_steps():
    model = apply_lora(_backbone(), rank=4, alpha=8)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and trainable == {n for n, _ in model.named_parameters() if is_lora_key(n)}
    assert len(lora_parameters(model)) == len(trainable)
    params0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers0 = _buffers(model)
    # every parameter goes to the optimizer: freezing must hold even then
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    torch.manual_seed(1)
    for _ in range(2):  # B starts at zero, so A gets a gradient only from the second step on
        opt.zero_grad()
        loss = sum(f.square().mean() for f in model(torch.randn(*INPUT)))
        loss.backward()
        opt.step()
    for name, param in model.named_parameters():
        if is_lora_key(name):
            assert not torch.equal(param, params0[name]), f"LoRA parameter {name} did not train"
        else:
            assert param.grad is None and torch.equal(param, params0[name]), f"frozen {name} changed"
    for name, buf in model.named_buffers():  # BatchNorm running stats and counters: bit-identical
        assert torch.equal(buf, buffers0[name]), f"buffer {name} changed"
    assert all(not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize(
    "arch,target,count",
    [("resnet18", "conv2", 8), ("resnet18", "block", 16), ("resnet18", "all", 20),
     ("resnet50", "conv2", 16), ("resnet50", "block", 48)],
)
def test_trainable_count_is_the_hand_computed_sum(arch, target, count):
    rank = 4
    model = _backbone(arch)
    names = set(lora_target_modules(model, target))
    convs = {name: (m.in_channels, m.out_channels, m.kernel_size) for name, m in model.named_modules() if name in names}
    assert len(convs) == count
    apply_lora(model, rank=rank, alpha=8, target=target)
    expected = 0
    modules = dict(model.named_modules())
    for name, (cin, cout, (kh, kw)) in convs.items():
        # peft's shapes: A (r, in, k, k) with the conv's kernel, B (out, r, 1, 1)
        assert modules[f"{name}.lora_A.default"].weight.shape == (rank, cin, kh, kw)
        assert modules[f"{name}.lora_B.default"].weight.shape == (cout, rank, 1, 1)
        assert modules[f"{name}.lora_A.default"].bias is None and modules[f"{name}.lora_B.default"].bias is None
        expected += rank * cin * kh * kw + rank * cout
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_resnet18_conv2_count_by_hand():
    # 8 BasicBlock conv2 (3x3, in = out = C) for C = 64, 64, 128, 128, 256, 256, 512, 512; r = 8:
    # each 8*C*9 + 8*C = 80*C -> 80 * 1920 = 153600
    model = apply_lora(_backbone(), rank=8, alpha=16)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 153600


def test_lora_state_dict_round_trip_and_refusals():
    source = apply_lora(_backbone(), rank=4, alpha=8)
    with torch.no_grad():
        for param in lora_parameters(source):
            param.normal_(0, 0.05)  # a trained adapter: B no longer zero
    state = lora_state_dict(source)
    assert state and all(is_lora_key(k) for k in state)
    assert len(state) == 2 * len(lora_target_modules(_backbone(), "conv2"))
    full = sum(v.numel() for v in source.state_dict().values())
    assert sum(v.numel() for v in state.values()) < full / 10  # the adapter, not the model

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    target = apply_lora(_backbone(), rank=4, alpha=8)  # same base weights, fresh LoRA init
    x = torch.randn(*INPUT)
    assert not torch.equal(target(x)[-1], source(x)[-1])
    load_lora_state_dict(target, loaded)
    assert all(torch.equal(a, b) for a, b in zip(target(x), source(x)))

    key = next(iter(loaded))
    with pytest.raises(ValueError, match="missing LoRA keys"):
        load_lora_state_dict(target, {k: v for k, v in loaded.items() if k != key})
    load_lora_state_dict(target, {key: loaded[key]}, strict=False)
    with pytest.raises(ValueError, match="non-LoRA keys"):
        load_lora_state_dict(target, {**loaded, "conv1.weight": source.state_dict()["conv1.weight"]})
    with pytest.raises(ValueError, match="shape mismatches"):
        load_lora_state_dict(target, lora_state_dict(apply_lora(_backbone(), rank=2, alpha=4)))
    with pytest.raises(ValueError, match="no LoRA parameters"):
        lora_state_dict(_backbone())


def test_refuses_bad_targets_and_double_injection():
    with pytest.raises(ValueError, match="unknown LoRA target"):
        apply_lora(_backbone(), target="conv9")
    with pytest.raises(ValueError, match="not nn.Conv2d"):
        apply_lora(_backbone(), target=["layer1.0.bn1"])
    with pytest.raises(ValueError, match="rank"):
        apply_lora(_backbone(), rank=0)
    model = _backbone()
    model.layer1[0].conv2.dilation = (2, 2)
    with pytest.raises(ValueError, match="dilation"):
        apply_lora(model)
    model = apply_lora(_backbone(), target=["layer4.1.conv2"])
    assert {n.split(".lora_")[0] for n, _ in model.named_parameters() if is_lora_key(n)} == {"layer4.1.conv2"}
    with pytest.raises(ValueError, match="already holds LoRA"):
        apply_lora(model)
    assert set(LORA_TARGETS) == {"conv2", "block", "all"}


def test_lora_method_is_registered_and_adds_no_module():
    assert create_method("lora", [64, 128, 256, 512], reduction=4) is None
