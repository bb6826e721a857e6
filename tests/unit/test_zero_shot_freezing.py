"""Zero-shot transfer: which parameters train. The zero-shot tasks' decoders are frozen, everything else the
paradigm trains (shared adapters, task embeddings, the finetuned tasks' decoders) still trains, and one
optimizer step over the engine's parameter groups leaves the frozen decoders bit for bit unchanged."""
from __future__ import annotations

import pytest
import torch

from mtwork.engine.optim import build_optimizer
from mtwork.methods.vtagml import create_vtagml_model
from mtwork.models.swin import create_swinv2
from mtwork.protocols.zero_shot_recipe import freeze_decoders

TASKS = {"semseg": 5, "depth": 1, "normals": 3}
DEC = dict(decoder_dims=[32, 32, 16, 16], decoder_heads=[1, 1, 1, 1])


@pytest.mark.parametrize("baseline", [None, "full_finetune"])
def test_only_the_zero_shot_decoders_stop_training(baseline):
    torch.manual_seed(0)
    encoder = create_swinv2("mtwork_swinv2_tiny", (32, 64))
    kwargs = dict(task_embed_dim=8) if baseline is None else {}
    model = create_vtagml_model(encoder, TASKS, baseline=baseline, **DEC, **kwargs)
    before = {n for n, p in model.named_parameters() if p.requires_grad}
    freeze_decoders(model, ["normals"])
    after = {n for n, p in model.named_parameters() if p.requires_grad}
    assert before - after == {n for n in before if n.startswith("decoders.normals.")} != set()
    assert any(n.startswith("decoders.semseg.") for n in after) and any(n.startswith("decoders.depth.") for n in after)
    shared = {id(p) for p in model.shared_adapter_parameters()}
    assert shared and all(p.requires_grad for p in model.parameters() if id(p) in shared)
    if baseline is None:
        assert "task_embedding" in after  # the embedding table is shared by all tasks
    else:
        assert any(n.startswith("encoder.") for n in after)  # full finetuning: the encoder trains

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("decoders.normals.")}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("decoders.semseg.")}
    optimizer, _, _ = build_optimizer(model, 1e-2, 0.05, [("train", 1)], 0)
    model.train()
    out = model(torch.randn(2, 3, 32, 64))
    # the zero-shot task's output takes part in the graph (as a shared parameter's loss would reach it),
    # yet its decoder receives no gradient
    (out["semseg"].square().mean() + out["depth"].mean() + 0.0 * out["normals"].sum()).backward()
    optimizer.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())  # neither gradient nor weight decay
    assert any(not torch.equal(params[n], v) for n, v in trained.items())


def test_freezing_an_unknown_task_is_an_error():
    torch.manual_seed(0)
    model = create_vtagml_model(create_swinv2("mtwork_swinv2_tiny", (32, 64)), {"semseg": 5, "depth": 1}, **DEC,
                                task_embed_dim=8)
    with pytest.raises(KeyError, match="edges"):
        freeze_decoders(model, ["edges"])
