"""LV-Adapter: zero-init visual path, frozen text tower with trainable context, the language path reaches
the segmentation and detection outputs, alignment loss over labeled samples only, both backbone families."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from mtwork.checkpoints.clip_format import convert_open_clip_visual
from mtwork.data.bdd100k import DET_CATEGORIES, SEMSEG_CLASSES
from mtwork.methods import METHODS
from mtwork.methods.lv_adapter import AlignmentLoss, FrozenTextTower, LVAdapter
from mtwork.models.clip_backbone import MTWORK_TINY_CLIP_NAME, clip_tokenizer, create_clip_model
from mtwork.models.multitask import AUX_OUTPUTS, build_multitask_model, multitask_loss

torch.set_num_threads(1)
TASKS = ["semseg", "drivable", "det"]
H, W = 64, 96
TINY_ARCH = f"clip:{MTWORK_TINY_CLIP_NAME}"


def _save_clip(path, seed):
    torch.manual_seed(seed)
    model = create_clip_model(MTWORK_TINY_CLIP_NAME)
    torch.save({"epoch": 0, "name": MTWORK_TINY_CLIP_NAME, "state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    return _save_clip(tmp_path_factory.mktemp("clip") / "tiny_clip.pt", seed=0)


@pytest.fixture(scope="module")
def other_clip_file(tmp_path_factory):
    return _save_clip(tmp_path_factory.mktemp("clip_other") / "tiny_clip.pt", seed=1)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return {
        "image": torch.randn(2, 3, H, W),
        "labeled": {"semseg": torch.tensor([True, False]), "drivable": torch.tensor([False, True]),
                    "det": torch.tensor([True, True])},
        "semseg": torch.randint(0, 19, (2, H, W)),
        "drivable": torch.randint(0, 3, (2, H, W)),
        "det": [{"boxes": torch.tensor([[4.0, 4.0, 60.0, 40.0]]), "labels": torch.tensor([2])},
                {"boxes": torch.tensor([[10.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([0])}],
    }


def _lv(clip_file, arch="resnet18", tasks=TASKS, seed=0, weights=None, **lv_kwargs):
    torch.manual_seed(seed)
    return build_multitask_model(arch, tasks, weights=weights, fpn_channels=32, method="lv_adapter",
                                 text_encoder_checkpoint=str(clip_file), lv_kwargs=lv_kwargs or None)


def _outputs(model, image):
    model.eval()
    with torch.no_grad():
        return model(image)


def test_lv_adapter_is_registered_with_the_options_build_passes():
    assert "lv_adapter" in METHODS and getattr(METHODS.get("lv_adapter"), "uses_language", False)


def test_visual_path_at_init_equals_the_path_without_cross_attention(clip_file, batch):
    model = _lv(clip_file).eval()
    adapter = model.adapter
    assert isinstance(adapter, LVAdapter)
    with torch.no_grad():
        features = model.backbone(batch["image"])
        text = adapter.encode_prompts()
        with_language = model.neck(adapter(features, text))
        without = model.neck(adapter.adapters(features))  # multi-scale adapters only
        for a, b in zip(with_language, without):
            assert torch.equal(a, b)
        # not vacuous: a non-zero output projection changes the visual path
        adapter.cross_attention[1].out.bias.fill_(1.0)
        assert not torch.allclose(model.neck(adapter(features, text))[1], without[1], atol=1e-3)


def test_text_tower_is_frozen_outside_the_model_and_context_trains(clip_file, batch):
    model = _lv(clip_file)
    tower = model.adapter.text_tower
    tower_ids = {id(p) for p in tower.parameters()}
    assert tower_ids and not tower_ids & {id(p) for p in model.parameters()}  # never seen by an optimizer
    assert not any("token_embedding" in k or "transformer.resblocks" in k for k in model.state_dict())
    assert "adapter.text_tower_fingerprint" in model.state_dict()

    for stage in ("adapt", "finetune"):
        model = _lv(clip_file)
        tower = model.adapter.text_tower
        model.set_stage(stage)
        model.train()
        assert not tower.training and not any(p.requires_grad for p in tower.parameters())
        before_tower = {k: v.clone() for k, v in tower.state_dict().items()}
        before_context = {t: p.detach().clone() for t, p in model.adapter.prompts.context.items()}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
        total, _ = multitask_loss(model.tasks, model(batch["image"]), batch)
        total.backward()
        assert all(p.grad is None for p in tower.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter.prompts.context.values())
        optimizer.step()
        for key, value in tower.state_dict().items():
            assert torch.equal(value, before_tower[key]), (stage, key)
        for task, value in model.adapter.prompts.context.items():
            assert not torch.equal(value, before_context[task]), (stage, task)
        if stage == "adapt":
            assert all(p.grad is None for p in model.backbone.parameters())


def test_changing_the_prompts_changes_segmentation_and_detection_outputs(clip_file, batch):
    image = batch["image"]
    model = _lv(clip_file)
    reference = _outputs(model, image)

    # 1) the learnable context (a random change: a constant shift of a vector is removed by the text
    #    transformer's LayerNorms)
    with torch.no_grad():
        for task in ("semseg", "det"):
            context = model.adapter.prompts.context[task]
            context.add_(0.5 * torch.randn(context.shape, generator=torch.Generator().manual_seed(1)))
    changed = _outputs(model, image)
    assert not torch.allclose(changed["semseg"], reference["semseg"], atol=1e-5)
    assert not torch.allclose(changed["det"]["cls"][0], reference["det"]["cls"][0], atol=1e-5)
    torch.testing.assert_close(changed["drivable"], reference["drivable"], rtol=0, atol=0)  # its prompts did not change

    # 2) the class names (same seed, so every weight is the same; only the prompt words differ)
    renamed = _lv(clip_file, class_names={"semseg": list(reversed(SEMSEG_CLASSES)), "det": list(reversed(DET_CATEGORIES))})
    for key, value in _lv(clip_file).state_dict().items():
        assert torch.equal(value, renamed.state_dict()[key]), key
    other = _outputs(renamed, image)
    assert not torch.allclose(other["semseg"], reference["semseg"], atol=1e-5)
    assert not torch.allclose(other["det"]["cls"][0], reference["det"]["cls"][0], atol=1e-5)


def test_alignment_loss_only_over_labeled_samples(clip_file, batch):
    model = _lv(clip_file)
    outputs = model(batch["image"])
    aux = outputs[AUX_OUTPUTS]
    assert set(aux) == {"lv_align_semseg", "lv_align_drivable"}
    term = aux["lv_align_semseg"]
    assert isinstance(term, AlignmentLoss) and term.weight == pytest.approx(0.4)
    assert term.logits.shape == (2, 19, H // 4, W // 4)

    # sample 0 carries semseg labels, sample 1 does not
    hand = F.cross_entropy(F.interpolate(term.logits[:1], size=(H, W), mode="bilinear", align_corners=False),
                           batch["semseg"][:1], ignore_index=255)
    torch.testing.assert_close(term.loss(batch), hand)
    scrambled = {**batch, "semseg": batch["semseg"].clone()}
    scrambled["semseg"][1] = (scrambled["semseg"][1] + 7) % 19  # labels of the unlabeled sample do not count
    torch.testing.assert_close(term.loss(scrambled), hand)
    nothing = {**batch, "labeled": {**batch["labeled"], "semseg": torch.tensor([False, False])}}
    assert term.loss(nothing) is None

    # multitask_loss adds weight * alignment, and reports it apart from the task losses
    aux_values = {}
    total, values = multitask_loss(model.tasks, outputs, batch, aux_values=aux_values)
    assert set(values) == set(TASKS) and set(aux_values) == {"lv_align_semseg", "lv_align_drivable"}
    expected = sum(values.values()) + 0.4 * sum(aux_values.values())
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total_nothing, _ = multitask_loss(model.tasks, outputs, nothing)
    # without semseg labels only the drivable alignment term remains
    assert total_nothing.item() == pytest.approx(total.item() - values["semseg"] - 0.4 * aux_values["lv_align_semseg"], rel=1e-5)

    silent = _lv(clip_file, align_weight=0.0)
    assert AUX_OUTPUTS not in silent(batch["image"]) and len(silent.adapter.score_logit_scale) == 0


def test_builds_on_the_clip_image_tower_with_its_own_weights(clip_file, batch, tmp_path):
    conversion = convert_open_clip_visual(torch.load(clip_file, map_location="cpu", weights_only=True))
    converted = tmp_path / "clip_backbone.pt"
    torch.save({"arch": TINY_ARCH, "state_dict": conversion.state_dict, "provenance": {}}, converted)
    model = _lv(clip_file, arch=TINY_ARCH, weights=str(converted))
    assert model.adapter.text_dim == 128
    model.set_stage("adapt")
    model.train()
    outputs = model(batch["image"])
    assert outputs["semseg"].shape == (2, 19, H, W) and outputs["drivable"].shape == (2, 3, H, W)
    assert [m.shape[1] for m in outputs["det"]["cls"]] == [10, 10, 10]
    total, _ = multitask_loss(model.tasks, outputs, batch)
    total.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.adapter.prompts.context["det"].grad is not None


@pytest.mark.parametrize("tasks", [["det"], ["semseg"], ["drivable", "det"]])
def test_subsets_of_tasks(clip_file, batch, tasks):
    model = _lv(clip_file, tasks=tasks)
    outputs = _outputs(model, batch["image"])
    assert set(outputs) - {AUX_OUTPUTS} == set(tasks)
    assert set(model.adapter.prompts.tasks) == set(tasks)
    assert (AUX_OUTPUTS in outputs) == any(t in ("semseg", "drivable") for t in tasks)


def test_saved_weights_reload_and_refuse_another_text_tower(clip_file, other_clip_file, batch):
    model = _lv(clip_file)
    with torch.no_grad():
        model.adapter.prompts.context["semseg"].normal_()
        model.adapter.cross_attention[0].out.weight.normal_()
    state = model.state_dict()
    rebuilt = _lv(clip_file, seed=5)  # as evaluate.py does: rebuild from model_config, then load
    rebuilt.load_state_dict(state, strict=True)
    reference, again = _outputs(model, batch["image"]), _outputs(rebuilt, batch["image"])
    torch.testing.assert_close(again["semseg"], reference["semseg"], rtol=0, atol=0)
    torch.testing.assert_close(again["det"]["cls"][2], reference["det"]["cls"][2], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="different CLIP text tower"):
        _lv(other_clip_file).load_state_dict(state)


def test_text_tower_follows_model_to_and_matches_open_clip_encode_text(clip_file):
    model = _lv(clip_file, tasks=["semseg"]).double()
    tower = model.adapter.text_tower
    assert all(p.dtype == torch.float64 for p in tower.parameters())
    assert model.adapter.text_tower_fingerprint.dtype == torch.long
    clip = create_clip_model(MTWORK_TINY_CLIP_NAME, clip_file).eval()
    tokens = clip_tokenizer(MTWORK_TINY_CLIP_NAME)(["a photo of a road.", "a dusk photo of a city street with 3 cars."])
    ours = FrozenTextTower(clip)(clip.token_embedding(tokens), tokens)  # cut after end-of-text: exact
    with torch.no_grad():
        torch.testing.assert_close(ours, clip.encode_text(tokens), rtol=1e-5, atol=1e-6)


def test_language_options_are_checked(clip_file):
    with pytest.raises(ValueError, match="no language options"):
        build_multitask_model("resnet18", TASKS, method="multiscale_adapter", lv_kwargs={"num_context": 4})
    with pytest.raises(ValueError, match="names"):
        _lv(clip_file, class_names={"semseg": ["road", "sky"]})
    with pytest.raises(KeyError, match="dett"):
        _lv(clip_file, class_names={"dett": ["car"]})
    with pytest.raises(TypeError):
        _lv(clip_file, num_contxt=4)  # misspelt options are not swallowed
