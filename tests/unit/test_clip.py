"""Tiny CLIP on SynthDrive (captions, training, checkpoint), the CLIP image tower as a backbone, and the
open_clip checkpoint converter."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip
import pytest
import torch

from mtwork.checkpoints.clip_format import convert_open_clip_visual
from mtwork.checkpoints.formats import CheckpointFormatError
from mtwork.data.bdd100k import DET_CATEGORIES, load_det_frames
from mtwork.models.backbones import (
    backbone_channels,
    backbone_strides,
    create_backbone,
    create_features_model,
    expected_state,
    split_arch,
)
from mtwork.models.clip_backbone import (
    MTWORK_TINY_CLIP_NAME,
    CLIPResNetFeatures,
    clip_model_config,
    clip_tokenizer,
    create_clip_model,
    tiny_clip_name,
)
from mtwork.pretrain.captions import SceneLabels, caption_pairs, count_phrase, describe, scene_labels
from mtwork.pretrain.clip import train_tiny_clip

torch.set_num_threads(1)
TINY_ARCH = f"clip:{MTWORK_TINY_CLIP_NAME}"


def _tiny_clip(seed=0):
    torch.manual_seed(seed)
    return create_clip_model(MTWORK_TINY_CLIP_NAME).eval()


# ---------------------------------------------------------------------------------------- config


def test_tiny_config_is_registered_with_open_clip_and_small():
    model = _tiny_clip()
    assert MTWORK_TINY_CLIP_NAME in open_clip.list_models()
    assert isinstance(model.visual, open_clip.modified_resnet.ModifiedResNet)
    n_params = sum(p.numel() for p in model.parameters())
    assert 2e6 < n_params < 12e6, n_params  # "a few M"
    assert clip_model_config(MTWORK_TINY_CLIP_NAME)["embed_dim"] == 128
    assert tiny_clip_name() == tiny_clip_name(128) == MTWORK_TINY_CLIP_NAME
    assert clip_model_config(tiny_clip_name(96))["vision_cfg"]["image_size"] == 96
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny_clip_name(100)


# ---------------------------------------------------------------------------------------- captions


def test_describe_grammar():
    labels = SceneLabels("x.jpg", None, counts={"car": 3, "bus": 1, "pedestrian": 2}, timeofday="dawn/dusk",
                         weather="foggy", scene="city street")
    assert describe(labels) == "a dusk photo of a city street with 2 pedestrians, 3 cars and a bus in fog."
    assert count_phrase("traffic light", 4) == "4 traffic lights" and count_phrase("bus", 2) == "2 buses"
    night = SceneLabels("y.jpg", None, counts={}, semseg=("road", "car", "sky"), drivable=("direct",),
                        timeofday="night", weather="clear", scene="highway")
    assert describe(night) == "a night photo of a highway with no traffic. showing road and sky. drivable area: direct."


def test_captions_reflect_hand_built_labels(bdd_mini_root):
    # Expected captions worked out by hand from the fixture's labels (see tests/conftest.py).
    captions = {path.name: caption for path, caption in caption_pairs(bdd_mini_root, "train")}
    assert captions == {
        # car + traffic light ("other vehicle" is not evaluated), attributes daytime/clear/city street,
        # drivable mask with direct and alternative lanes
        "a.jpg": "a daytime photo of a city street with a car and a traffic light. drivable area: direct and alternative.",
        # a det frame without "labels": an empty street; no attributes, no masks
        "b.jpg": "a photo of a street with no traffic.",
        # pedestrian; semseg: road 1056 px then sky 480 px; drivable all background
        "c.jpg": "a photo of a street with a pedestrian. showing road and sky.",
        # segmentation only: a 4x4 car, the rest ignore -> named without a count
        "d.jpg": "a photo of a street with car.",
        "big.jpg": "a photo of a street with a truck.",
        "e.jpg": "a photo of a street.",  # no label at all
    }


def test_captions_count_synthdrive_objects(synthdrive_tiny):
    frames = load_det_frames(synthdrive_tiny / "labels/det_20/det_train.json")
    labels = {entry.name: entry for entry in scene_labels(synthdrive_tiny, "train")}
    captions = dict((p.name, c) for p, c in caption_pairs(synthdrive_tiny, "train"))
    assert set(frames) <= set(labels) and len(labels) == 8  # 6 det + 4 seg - 2 shared
    for name, boxes in frames.items():
        expected = {DET_CATEGORIES[k]: sum(1 for b in boxes if b[0] == k) for k in range(10)}
        assert labels[name].counts == {c: n for c, n in expected.items() if n}
        for category, n in expected.items():
            if n:
                assert count_phrase(category, n) in captions[name], (name, captions[name])
        assert captions[name].startswith("a daytime photo of a ")  # clear_day frames: daytime, clear
    seg_only = [n for n in labels if n not in frames]
    assert seg_only and all(labels[n].counts is None and labels[n].semseg for n in seg_only)
    assert all("road" in labels[n].semseg for n in seg_only)


# ---------------------------------------------------------------------------------------- training


def test_tiny_clip_trains_and_saves_an_open_clip_checkpoint(synthdrive_tiny, tmp_path):
    out = tmp_path / "clip_tiny.pt"
    result = train_tiny_clip(synthdrive_tiny, out, epochs=6, batch_size=4, lr=1e-3, seed=0, num_threads=1,
                             progress=False)
    assert result["num_images"] == 8 and result["steps"] == 12 and result["model_name"] == MTWORK_TINY_CLIP_NAME
    losses = result["losses"]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) / 2 < losses[0], losses  # the contrastive loss goes down
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["losses"] == losses and log["captions"][0][1].startswith("a ")

    # open_clip's own loader accepts the file and gives the saved model's outputs
    loaded = open_clip.create_model(MTWORK_TINY_CLIP_NAME, pretrained=str(out)).eval()
    state = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    reference = _tiny_clip(seed=123)
    reference.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, 128, 128)
    tokens = open_clip.get_tokenizer(MTWORK_TINY_CLIP_NAME)(["a photo of a street", "a night photo of a car"])
    with torch.no_grad():
        for a, b in zip(loaded(images, tokens), reference(images, tokens)):
            assert torch.equal(a, b)
        # and it is not the initialisation: training moved the weights
        untrained = _tiny_clip(seed=0)
        assert not torch.equal(untrained.encode_text(tokens), loaded.encode_text(tokens))

    # the file is importable as a backbone with the converter
    conversion = convert_open_clip_visual(torch.load(out, map_location="cpu", weights_only=True))
    backbone = create_features_model(TINY_ARCH)
    backbone.load_state_dict(conversion.state_dict, strict=True)


# ---------------------------------------------------------------------------------------- backbone


def test_clip_backbone_gives_four_maps_with_declared_channels_and_strides():
    assert split_arch(TINY_ARCH) == ("clip", MTWORK_TINY_CLIP_NAME)
    assert split_arch("resnet18") == ("timm", "resnet18")
    assert split_arch("hf-hub:timm/resnet18.a1_in1k") == ("timm", "hf-hub:timm/resnet18.a1_in1k")
    torch.manual_seed(0)
    model = create_backbone(TINY_ARCH).eval()
    assert isinstance(model, CLIPResNetFeatures)
    assert backbone_channels(model) == [128, 256, 512, 1024]
    assert backbone_strides(model) == [4, 8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // s, 96 // s) for c, s in zip([128, 256, 512, 1024], [4, 8, 16, 32])]
    assert not any(k.startswith("attnpool") for k in model.state_dict())
    # the timm family is unchanged
    timm_model = create_backbone("resnet18")
    assert backbone_channels(timm_model) == [64, 128, 256, 512] and backbone_strides(timm_model) == [4, 8, 16, 32]
    with pytest.raises(RuntimeError, match="unknown open_clip model"):
        create_features_model("clip:no-such-clip")
    with pytest.raises(RuntimeError, match="ModifiedResNet"):
        create_features_model("clip:ViT-B-32")


def test_clip_backbone_equals_open_clip_image_tower_on_clip_normalised_input():
    clip = _tiny_clip()
    backbone = create_features_model(TINY_ARCH).eval()
    backbone.load_state_dict(convert_open_clip_visual(clip.state_dict()).state_dict, strict=True)
    imagenet = torch.randn(2, 3, 64, 96)  # normalised with ImageNet mean/std, as mtwork batches are
    mean_in, std_in = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    mean_clip, std_clip = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
    pixels = imagenet * std_in.view(1, 3, 1, 1) + mean_in.view(1, 3, 1, 1)
    clip_input = (pixels - mean_clip.view(1, 3, 1, 1)) / std_clip.view(1, 3, 1, 1)
    with torch.no_grad():
        ours = backbone(imagenet)
        theirs = clip.visual.forward_intermediates(clip_input, indices=[1, 2, 3, 4], intermediates_only=True)
    for a, b in zip(ours, theirs["image_intermediates"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------- converter


@pytest.mark.parametrize("layout", ["bare", "wrapped", "ddp_wrapped"])
def test_open_clip_converter_round_trip(layout, tmp_path):
    clip = _tiny_clip()
    source = clip.state_dict()
    state = {("module." + k if layout == "ddp_wrapped" else k): v for k, v in source.items()}
    obj = state if layout == "bare" else {"epoch": 3, "name": MTWORK_TINY_CLIP_NAME, "state_dict": state, "optimizer": {}}
    torch.save(obj, tmp_path / "upstream.pt")
    conversion = convert_open_clip_visual(torch.load(tmp_path / "upstream.pt", map_location="cpu", weights_only=True))

    expected = expected_state(TINY_ARCH)
    assert set(conversion.state_dict) == set(expected)
    prefix = "module." if layout == "ddp_wrapped" else ""
    pool = {prefix + k for k in source if k.startswith("visual.attnpool.")}
    text = {prefix + k for k in source if not k.startswith("visual.")}
    assert pool and {prefix + "token_embedding.weight", prefix + "logit_scale", prefix + "text_projection"} <= text
    top_level = set() if layout == "bare" else {"epoch", "name", "optimizer"}
    assert set(conversion.dropped) == pool | text | top_level
    assert len(conversion.state_dict) + len(pool) + len(text) == len(source)  # every key accounted for
    assert "attention pool dropped" in conversion.notes
    for key, value in conversion.state_dict.items():
        assert torch.equal(value, source["visual." + key])

    # strict load through the backbone's own loader of converted files
    converted = tmp_path / "converted.pt"
    torch.save({"arch": TINY_ARCH, "state_dict": conversion.state_dict, "provenance": {"format": "open_clip"}}, converted)
    backbone = create_backbone(TINY_ARCH, converted)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, source["visual." + key])


def test_open_clip_converter_refuses_other_files():
    with pytest.raises(CheckpointFormatError, match="none was given"):
        convert_open_clip_visual(None)
    resnet = create_backbone("resnet18").state_dict()
    with pytest.raises(CheckpointFormatError, match="image-tower"):
        convert_open_clip_visual(resnet)
    vit_like = {"visual.class_embedding": torch.zeros(8), "visual.conv1.weight": torch.zeros(8, 3, 4, 4),
                "token_embedding.weight": torch.zeros(10, 8)}
    with pytest.raises(CheckpointFormatError, match="Vision-Transformer"):
        convert_open_clip_visual(vit_like)
    visual_only = {k: v for k, v in _tiny_clip().state_dict().items() if k.startswith("visual.")}
    with pytest.raises(CheckpointFormatError, match="text-tower"):
        convert_open_clip_visual(visual_only)


def test_open_clip_import_through_the_importer_and_truncated_refusal(tmp_path):
    from mtwork.checkpoints.importer import CheckpointImportError, import_checkpoint

    source = _tiny_clip().state_dict()
    torch.save({"epoch": 1, "name": MTWORK_TINY_CLIP_NAME, "state_dict": source}, tmp_path / "clip.pt")
    import_checkpoint("open_clip", tmp_path / "clip.pt", tmp_path / "out.pt", arch=TINY_ARCH)
    backbone = create_backbone(TINY_ARCH, tmp_path / "out.pt")
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, source["visual." + key])
    truncated = {k: v for k, v in source.items() if not k.startswith("visual.layer4.0.conv1")}
    torch.save({"state_dict": truncated}, tmp_path / "cut.pt")
    with pytest.raises(CheckpointImportError, match="layer4.0.conv1"):
        import_checkpoint("open_clip", tmp_path / "cut.pt", tmp_path / "cut_out.pt", arch=TINY_ARCH)
    assert not (tmp_path / "cut_out.pt").exists()


# ---------------------------------------------------------------------------------------- QuickGELU


def test_openai_resnet_weights_need_the_quickgelu_config(tmp_path):
    """open_clip's 'RN50' (GELU) and 'RN50-quickgelu' have the same parameters, so OpenAI's weights load
    into either without a word; only the text tower's activation differs. mtwork refuses the first."""
    import math

    from open_clip.transformer import QuickGELU

    from mtwork.checkpoints.catalog import SOURCES, quickgelu_config_for
    from mtwork.methods.lv_adapter import load_text_tower

    torch.manual_seed(0)
    quick = create_clip_model("RN50-quickgelu").eval()  # no weights: random init
    gelu = create_clip_model("RN50").eval()
    assert gelu.load_state_dict(quick.state_dict(), strict=True)  # nothing to tell them apart by keys
    act_q, act_g = quick.transformer.resblocks[0].mlp.gelu, gelu.transformer.resblocks[0].mlp.gelu
    assert isinstance(act_q, QuickGELU) and isinstance(act_g, torch.nn.GELU)
    x = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    # QuickGELU x * sigmoid(1.702 x) (CLIP's) and the exact GELU x * Phi(x), worked out with math
    want_q = torch.tensor([v / (1 + math.exp(-1.702 * v)) for v in x.tolist()])
    want_g = torch.tensor([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()])
    torch.testing.assert_close(act_q(x), want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(act_g(x), want_g, rtol=1e-6, atol=1e-6)
    assert (want_q - want_g).abs().min() > 4e-3  # e.g. 0.8458 vs 0.8413 at x = 1
    tokens = clip_tokenizer("RN50-quickgelu")(["a photo of a car", "drivable road"])
    with torch.no_grad():
        a, b = quick.encode_text(tokens), gelu.encode_text(tokens)
        assert torch.equal(a, quick.encode_text(tokens))  # deterministic: any gap below is the activation
    assert (a - b).abs().max() > 1e-4

    # the GELU name with weights is refused, naming the config to use (file or tag, before any load)
    for pretrained in (tmp_path / "RN50.pt", "openai"):
        with pytest.raises(ValueError, match=r"trained with QuickGELU.*use 'RN50-quickgelu' \(arch clip:RN50-quickgelu\)"):
            create_clip_model("RN50", pretrained)
    with pytest.raises(ValueError, match="use 'RN50-quickgelu'"):
        load_text_tower("RN50", tmp_path / "RN50.pt")  # the LV-Adapter's text tower
    assert quickgelu_config_for("RN50x16") == "RN50x16-quickgelu"
    assert quickgelu_config_for("RN50-quickgelu") is None and quickgelu_config_for(MTWORK_TINY_CLIP_NAME) is None
    for source in SOURCES.values():  # the published CLIP files are catalogued with their QuickGELU config
        if source.format == "clip":
            assert source.arch == "clip:RN50-quickgelu", source.name


def test_clip_resnet_architecture_is_inferred_from_the_file(tmp_path):
    from mtwork.checkpoints.importer import fitting_archs, import_checkpoint

    # an OpenAI-layout RN101 state dict (open_clip's keys), on the meta device: its image tower is
    # recognised as RN101 in its QuickGELU config (the GELU config is no candidate)
    full = open_clip.create_model("RN101-quickgelu", device="meta").state_dict()
    assert fitting_archs(convert_open_clip_visual(full).state_dict) == ["clip:RN101-quickgelu"]
    # an open_clip file of the tiny CLIP imports without an arch
    source = _tiny_clip().state_dict()
    torch.save({"epoch": 1, "name": MTWORK_TINY_CLIP_NAME, "state_dict": source}, tmp_path / "clip.pt")
    report = import_checkpoint("open_clip", tmp_path / "clip.pt", tmp_path / "out.pt")
    assert report.arch == TINY_ARCH and report.arch_from == "inferred from the tensor shapes"
