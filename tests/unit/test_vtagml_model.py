"""VTAGML model: adapter blocks equal the timm blocks at init, tasks enter only through TAA/TSN, one
backbone pass per image, frozen encoder, adapter files, per-task Swin decoders and the baselines."""
from __future__ import annotations

import math

import pytest
import torch

from mtwork.methods.vtagml import VTAGMLAdapterBlock, VTAGMLModel, create_vtagml_model, default_adapted_blocks
from mtwork.models.swin import create_swinv2, stage_blocks
from mtwork.models.swin_decoder import SwinDecoder

ARCH = "mtwork_swinv2_tiny"
SIZE = (32, 56)  # stage maps 8x14, 4x7, 2x4, 1x2 tokens
TASKS = {"semseg": 5, "depth": 1, "normals": 3, "edges": 1}
INFO = {"arch": ARCH, "sha256": "a" * 64}
# small decoders keep the tests fast; the default decoder is exercised in test_output_shapes_and_affinity
DEC = dict(decoder_dims=[32, 32, 16, 16], decoder_heads=[1, 1, 1, 1])


def _encoder(seed=0, size=SIZE):
    """A tiny Swin-V2 with random, non-trivial weights (timm zero-inits the post-norms, which would make
    every block the identity and every test below vacuous)."""
    torch.manual_seed(seed)
    enc = create_swinv2(ARCH, size)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("logit_scale"):
                p.uniform_(math.log(5.0), 5.0)
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0.0, 0.1)
    return enc


def _perturb(params, std=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("stage,block", [(0, 0), (0, 1), (2, 1)])  # non-shifted, shifted (padded), clipped
@pytest.mark.parametrize("use_taa,use_tsn", [(True, True), (False, False)])
def test_adapter_block_equals_timm_block_at_init(stage, block, use_taa, use_tsn):
    enc = _encoder().eval()
    blk = stage_blocks(enc)[stage][block]
    assert stage != 0 or any(blk.shift_size) == bool(block % 2)
    ad = VTAGMLAdapterBlock(blk, task_embed_dim=8, prev_hidden_dim=5, use_taa=use_taa, use_tsn=use_tsn)
    h, w = enc.layers[stage].output_resolution
    x = torch.randn(2, h, w, blk.dim)
    hidden = torch.randn(2, h + 1, w + 1, 5)  # the skip from a previous adapter (resampled)
    with torch.no_grad():
        ref = blk(x)
        y, hid = ad(x, torch.randn(8), hidden)
    assert torch.allclose(y, ref, atol=1e-5)
    assert hid.shape == (2, h, w, ad.hidden_dim)


def test_default_adapted_blocks():
    assert default_adapted_blocks((2, 2, 18, 2)) == [(2, 14), (2, 15), (2, 16), (2, 17), (3, 0), (3, 1)]
    assert default_adapted_blocks((2, 2, 4, 2)) == [(2, 0), (2, 1), (2, 2), (2, 3), (3, 0), (3, 1)]
    with pytest.raises(ValueError):
        default_adapted_blocks((2, 2, 2, 2))


def test_output_shapes_and_affinity():
    model = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8).eval()
    image = torch.randn(2, 3, *SIZE)
    published = torch.tensor([[0.946, 0.682, 0.117, 0.822], [0.711, 0.913, 0.404, 0.858],
                              [0.662, 0.593, 0.932, 0.926], [0.429, 0.411, 0.259, 0.985]])
    for affinity in (None, published):
        with torch.no_grad():
            out = model(image, affinity)
        assert list(out) == list(TASKS)
        assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, c, *SIZE) for k, c in TASKS.items()}
    assert torch.allclose(model.task_embeddings(published), published @ model.task_embedding)
    with pytest.raises(ValueError, match="affinity"):
        model(image, torch.eye(3))


def test_tasks_differ_only_through_taa_and_tsn():
    image = torch.randn(2, 3, *SIZE)
    off = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, use_taa=False, use_tsn=False, **DEC).eval()
    _perturb(off.shared_adapter_parameters())  # adapters away from identity, still task-blind
    feats = off.encode(image)
    for name in TASKS:
        assert all(torch.equal(a, b) for a, b in zip(feats[name], feats["semseg"]))
    assert not torch.allclose(feats["semseg"][3], off.encoder.layers[3](off.encoder.layers[2](
        off.encoder.layers[1](off.encoder.layers[0](off.encoder.patch_embed(image))))).permute(0, 3, 1, 2))

    on = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, **DEC).eval()
    _perturb(on.shared_adapter_parameters())
    feats = on.encode(image)
    for name in ("depth", "normals", "edges"):
        # stages before the first adapted block are shared; the adapted stages depend on the task
        assert feats[name][0] is feats["semseg"][0] and feats[name][1] is feats["semseg"][1]
        assert not torch.allclose(feats[name][2], feats["semseg"][2])
        assert not torch.allclose(feats[name][3], feats["semseg"][3])
    # TAA alone and TSN alone each make the tasks differ
    for taa, tsn in ((True, False), (False, True)):
        m = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, use_taa=taa, use_tsn=tsn, **DEC).eval()
        _perturb(m.shared_adapter_parameters())
        f = m.encode(image)
        assert not torch.allclose(f["depth"][3], f["semseg"][3])


@pytest.mark.parametrize("tasks", [{"semseg": 5}, TASKS])
def test_one_backbone_pass_per_image(tasks):
    # adapt only stage-3 blocks 2, 3 and stage 4: stage-3 blocks 0, 1 are frozen prefix blocks too
    model = VTAGMLModel(_encoder(), tasks, adapted_blocks=[(2, 2), (2, 3), (3, 0), (3, 1)], task_embed_dim=8, **DEC)
    enc = model.encoder
    calls = {"patch_embed": 0, "stage2_last": 0, "stage3_block1": 0, "stage4_merge": 0}
    hooked = {"patch_embed": enc.patch_embed, "stage2_last": enc.layers[1].blocks[-1],
              "stage3_block1": enc.layers[2].blocks[1], "stage4_merge": enc.layers[3].downsample}
    for key, module in hooked.items():
        module.register_forward_hook(lambda mod, inp, out, key=key: calls.__setitem__(key, calls[key] + 1))
    model(torch.randn(3, 3, *SIZE))
    assert calls == {"patch_embed": 1, "stage2_last": 1, "stage3_block1": 1, "stage4_merge": len(tasks)}


def test_frozen_encoder_gets_no_grads_and_stays_eval():
    model = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, **DEC).train()
    assert not model.encoder.training and all(not m.training for m in model.encoder.modules())
    assert model.decoders.training and model.adapters["s2_b0"].taa.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    out = model(torch.randn(2, 3, *SIZE))
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.task_embedding.grad is not None
    shared = model.shared_adapter_parameters()
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    assert shared and all(p.requires_grad and id(p) not in encoder_ids for p in shared)
    assert any(p is model.adapters["s2_b0"].taa.A for p in shared)
    assert all(p.grad is not None for p in shared)
    assert model.count_parameters(trainable_only=True) < model.count_parameters()


def test_adapter_save_load_round_trip_and_refusal(tmp_path):
    image = torch.randn(1, 3, *SIZE)
    trained = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, **DEC).eval()
    _perturb([p for p in trained.parameters() if p.requires_grad], std=0.05)
    path = trained.save_adapter(tmp_path / "adapt.pt", INFO)
    blob = torch.load(path, weights_only=True)
    assert not any(k.startswith("encoder.") for k in blob["state_dict"])
    assert set(blob["state_dict"]) == set(trained.trainable_state_dict())
    assert blob["backbone"] == INFO

    fresh = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, **DEC).eval()
    with torch.no_grad():
        fresh.task_embedding.copy_(torch.randn_like(fresh.task_embedding))
    fresh.load_adapter(path, INFO)
    with torch.no_grad():
        a, b = trained(image), fresh(image)
    assert all(torch.equal(a[k], b[k]) for k in TASKS)

    with pytest.raises(ValueError, match="sha256='b+'.*sha256='a+'|sha256='a+'.*sha256='b+'"):
        fresh.load_adapter(path, {**INFO, "sha256": "b" * 64})
    with pytest.raises(ValueError, match="swinv2_base_window12_192"):
        fresh.load_adapter(path, {**INFO, "arch": "swinv2_base_window12_192"})
    other = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, use_tsn=False, **DEC)
    with pytest.raises(ValueError, match="configured"):
        other.load_adapter(path, INFO)
    with pytest.raises(ValueError, match="sha256"):
        trained.save_adapter(tmp_path / "x.pt", {"arch": ARCH})


@pytest.mark.parametrize("baseline", ["full_finetune", "multiscale_adapter"])
def test_baselines(baseline, tmp_path):
    model = create_vtagml_model(_encoder(), {"semseg": 5, "depth": 1}, baseline=baseline, **DEC).train()
    out = model(torch.randn(2, 3, *SIZE))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"semseg": (2, 5, *SIZE), "depth": (2, 1, *SIZE)}
    sum(v.mean() for v in out.values()).backward()
    encoder_grads = [p.grad is not None for p in model.encoder.parameters()]
    if baseline == "full_finetune":
        assert model.encoder.training and any(encoder_grads)
    else:
        assert not model.encoder.training and not any(encoder_grads)
        assert all(p.grad is not None for p in model.shared_adapter_parameters())
    model.save_adapter(tmp_path / "a.pt", INFO)
    model.load_adapter(tmp_path / "a.pt", INFO)
    with pytest.raises(ValueError, match="baseline"):
        create_vtagml_model(_encoder(), {"semseg": 5}, baseline="lora")


def test_swin_decoder_shapes_and_checks():
    dec = SwinDecoder([32, 64, 128, 256], [(16, 28), (8, 14), (4, 7), (2, 4)], out_channels=3,
                      heads=[8, 4, 2, 1], window_size=4)
    maps = [torch.randn(2, c, h, w) for c, (h, w) in zip([32, 64, 128, 256], [(16, 28), (8, 14), (4, 7), (2, 4)])]
    assert dec(maps).shape == (2, 3, 64, 112)
    assert dec(maps, out_size=(60, 100)).shape == (2, 3, 60, 100)
    with pytest.raises(ValueError, match="size"):
        dec([maps[0][..., :-1]] + maps[1:])
    with pytest.raises(ValueError, match="divisible"):
        SwinDecoder([32, 64, 128, 256], [(16, 28), (8, 14), (4, 7), (2, 4)], 3, heads=[48, 24, 12, 6])
