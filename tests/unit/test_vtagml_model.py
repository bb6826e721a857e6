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
    # rows source, columns target: target t mixes the table with its column, e'_t = sum_s A[s, t] E[s]
    assert torch.allclose(model.task_embeddings(published), published.T @ model.task_embedding)
    with pytest.raises(ValueError, match="affinity"):
        model(image, torch.eye(3))


def test_affinity_orientation_rows_source_columns_target():
    """Target "normals" (column 2) takes all of its weight from source "semseg" (row 0) and target
    "semseg" (column 0) from source "edges" (row 3): their embeddings are those sources' table rows."""
    model = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, **DEC)
    table = model.task_embedding.detach()
    affinity = torch.eye(4)
    affinity[:, 2] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    affinity[:, 0] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    emb = model.task_embeddings(affinity).detach()
    assert torch.equal(emb[2], table[0]) and torch.equal(emb[0], table[3])
    assert torch.equal(emb[1], table[1]) and torch.equal(emb[3], table[3])
    # a column mixing two sources half and half gives the mean of their rows
    affinity[:, 1] = torch.tensor([0.5, 0.0, 0.0, 0.5])
    assert torch.allclose(model.task_embeddings(affinity)[1], (table[0] + table[3]) / 2)


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


def _swin_v2_block_params(c: int, heads: int) -> int:
    """Parameters of one timm Swin-V2 block of width C with h heads, by hand:
    qkv C x 3C (no bias) + q_bias C + v_bias C; logit_scale h; cpb_mlp Linear(2, 512) 2*512 + 512,
    Linear(512, h, no bias) 512 h; proj C x C + C; norm1, norm2 2C each; mlp C x 4C + 4C, 4C x C + C.
    = 12 C^2 + 12 C + 513 h + 1536."""
    return 12 * c * c + 12 * c + 513 * heads + 1536


def test_adapted_block_training_full_trains_the_replaced_blocks_and_patch_embedding():
    frozen = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, **DEC)
    full = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, adapted_block_training="full", **DEC)
    # tiny Swin (embed 32, depths 2-2-4-2, heads 1-2-4-8): adapted stage-3 blocks are C=128, h=4 (x4),
    # stage-4 blocks C=256, h=8 (x2); patch embedding Conv2d(3, 32, 4, stride 4) 3*32*16 + 32 plus its
    # LayerNorm 2*32 = 1632
    extra = 4 * _swin_v2_block_params(128, 4) + 2 * _swin_v2_block_params(256, 8) + 1632
    assert extra == 4 * 201732 + 2 * 795144 + 1632 == 2398848
    n_frozen = frozen.count_parameters(trainable_only=True)
    assert full.count_parameters(trainable_only=True) == n_frozen + extra
    assert frozen.parameter_budget() == full.parameter_budget() == {"frozen": n_frozen, "full": n_frozen + extra}
    assert frozen._config()["adapted_block_training"] == "frozen"
    assert full._config()["adapted_block_training"] == "full"

    # same weights, same outputs: the setting changes only what trains
    image = torch.randn(2, 3, *SIZE)
    full.load_state_dict(frozen.state_dict())
    with torch.no_grad():
        a, b = frozen.eval()(image), full.eval()(image)
    assert all(torch.equal(a[k], b[k]) for k in TASKS)

    full.train()
    out = full(image)
    sum(v.square().mean() for v in out.values()).backward()
    enc = full.encoder
    trained = [enc.patch_embed.proj.weight, enc.layers[2].blocks[0].attn.qkv.weight, enc.layers[2].blocks[0].mlp.fc1.weight,
               enc.layers[3].blocks[1].norm2.weight, enc.layers[3].blocks[1].attn.cpb_mlp[0].weight]
    assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    untouched = [enc.layers[0].blocks[0].attn.qkv.weight, enc.layers[1].downsample.reduction.weight, enc.norm.weight]
    assert all(not p.requires_grad and p.grad is None for p in untouched)
    # TROA sees the newly trainable shared parameters as well
    shared_ids = {id(p) for p in full.shared_adapter_parameters()}
    assert all(id(p) in shared_ids for p in trained)
    assert len(shared_ids) == len(full.shared_adapter_parameters())
    with pytest.raises(ValueError, match="adapted_block_training"):
        VTAGMLModel(_encoder(), TASKS, adapted_block_training="partial")


def test_adapter_file_of_full_training_holds_the_trained_blocks(tmp_path):
    full = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, adapted_block_training="full", **DEC)
    path = full.save_adapter(tmp_path / "full.pt", INFO)
    keys = set(torch.load(path, weights_only=True)["state_dict"])
    assert "encoder.patch_embed.proj.weight" in keys and "encoder.layers.2.blocks.0.attn.qkv.weight" in keys
    assert "encoder.layers.0.blocks.0.attn.qkv.weight" not in keys and "encoder.norm.weight" not in keys
    frozen = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, **DEC)
    with pytest.raises(ValueError, match="configured"):
        frozen.load_adapter(path, INFO)


def test_paper_scale_swin_v2_b_256_configuration():
    """The documented 256 px configuration is timm's registered swinv2_base_window16_256 (same keys and
    shapes), and VTAGML adapts its stage-3 blocks 15-18 and both stage-4 blocks."""
    import timm

    from mtwork.models.swin import swin_config

    assert swin_config("swinv2_base_window16_256") == dict(embed_dim=128, depths=(2, 2, 18, 2),
                                                           num_heads=(4, 8, 16, 32), window_size=16)
    torch.manual_seed(0)
    enc = create_swinv2("swinv2_base_window16_256", (256, 256))
    reference = timm.create_model("swinv2_base_window16_256", pretrained=False, num_classes=0)
    ours = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    # token maps 64, 32, 16, 8: windows of 16 except the last stage, clamped by timm to its 8x8 map
    assert [tuple(layer.blocks[0].attn.window_size) for layer in enc.layers] == [(16, 16)] * 3 + [(8, 8)]
    model = VTAGMLModel(enc, {"semseg": 5, "depth": 1}, task_embed_dim=8, **DEC)
    assert model.adapted_blocks == [(2, 14), (2, 15), (2, 16), (2, 17), (3, 0), (3, 1)]
    assert model.adapters["s2_b14"].taa.A.shape == (16, 256, 256) and model.adapters["s3_b0"].taa.A.shape == (32, 64, 64)
    budget = model.parameter_budget()
    # full adds 4 stage-3 blocks (C=512, h=16) + 2 stage-4 blocks (C=1024, h=32) + patch embedding
    # (Conv2d(3, 128, 4, stride 4) 3*128*16 + 128 and LayerNorm 2*128 = 6528)
    blocks = 4 * _swin_v2_block_params(512, 16) + 2 * _swin_v2_block_params(1024, 32)
    assert budget["full"] - budget["frozen"] == blocks + 6528
    assert budget["frozen"] == model.count_parameters(trainable_only=True)


def test_task_embeddings_start_at_unit_scale():
    from mtwork.methods.vtagml import TASK_EMBED_INIT_STD

    assert TASK_EMBED_INIT_STD == 1.0  # nn.Embedding's N(0, 1), as the released code's lookup table
    torch.manual_seed(0)
    model = VTAGMLModel(_encoder(), TASKS, task_embed_dim=32, **DEC)
    table = model.task_embedding.detach()
    # 128 draws of N(0, 1): the sample std is within 0.31 (5 standard errors) of 1
    assert abs(float(table.std()) - 1.0) < 0.31 and abs(float(table.mean())) < 0.45


def test_modulation_effects_zero_at_init_and_equal_to_the_ablations():
    image = torch.randn(2, 3, *SIZE)
    model = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, **DEC)
    effects = model.modulation_effects(image)
    assert list(effects) == list(TASKS)
    for entry in effects.values():  # FiLM maps and A start at zero: TAA and TSN do nothing yet
        assert entry["taa_logit_ratio"] == 0 and entry["taa_feature"] == 0
        # TSN computes LN(x) * w + b as layer_norm without affine, then the affine: fp32 rounding only
        assert entry["tsn_feature"] < 1e-5
        assert entry["tsn_gamma"] == 0 and entry["tsn_beta"] == 0
    weights = [n.norm.weight for blk in model.adapters.values() for n in (blk.norm1, blk.norm2)]
    assert abs(effects["depth"]["tsn_weight"] - float(torch.stack([w.abs().mean() for w in weights]).mean())) < 1e-6

    _perturb(model.shared_adapter_parameters())
    with torch.no_grad():
        for blk in model.adapters.values():
            for norm in (blk.norm1, blk.norm2):
                norm.gamma.weight.zero_()
                norm.gamma.bias.fill_(-0.25)  # gamma(e) = -0.25 for every channel and task
    assert model.training
    effects = model.modulation_effects(image)
    assert model.training  # restored
    for entry in effects.values():
        assert abs(entry["tsn_gamma"] - 0.25) < 1e-6
        assert entry["taa_logit_ratio"] > 0
    # "taa/tsn off" is exactly the ablated model with the same weights: build it and compare
    state = {k: v for k, v in model.state_dict().items()}
    feats = model.eval().encode(image)
    for use_taa, use_tsn, key in ((False, True, "taa_feature"), (True, False, "tsn_feature")):
        ablated = VTAGMLModel(_encoder(), TASKS, task_embed_dim=8, use_taa=use_taa, use_tsn=use_tsn, **DEC).eval()
        ablated.load_state_dict({k: v for k, v in state.items() if k in ablated.state_dict()})
        reference = ablated.encode(image)
        for name in TASKS:
            f, g = feats[name][3], reference[name][3]
            expected = float((f - g).norm() / f.norm())
            assert expected > 1e-3
            assert abs(effects[name][key] - expected) < 1e-5
