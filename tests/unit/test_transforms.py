"""Joint transforms: boxes and masks of the same object stay aligned; output follows batch.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtwork.data.batch import (IMAGE_PAD_UINT8, IMAGENET_MEAN, IMAGENET_STD, batch_to_device, boxes_to_orig,
                               collate, dense_to_orig, normalize_images)
from mtwork.data.transforms import AugParams, EvalTransform, TrainTransform, letterbox_size

H, W = 64, 112


def _sample(with_depth: bool = False):
    """A car occupying rows 10..19 and cols 20..39: red in the image, class 13 in semseg,
    drivable 1, box (20, 10, 40, 20) in pixel edges; plus a 1-px-wide sign box at the far left."""
    image = np.zeros((H, W, 3), np.uint8)
    image[10:20, 20:40] = (255, 0, 0)
    semseg = np.zeros((H, W), np.uint8)
    semseg[10:20, 20:40] = 13
    drivable = np.zeros((H, W), np.uint8)
    drivable[10:20, 20:40] = 1
    sample = {
        "image": image,
        "name": "x.jpg",
        "orig_size": (H, W),
        "semseg": semseg,
        "drivable": drivable,
        "det": {"boxes": np.array([[20, 10, 40, 20], [0, 30, 3, 50]], np.float32), "labels": np.array([2, 9])},
    }
    if with_depth:
        sample["depth"] = np.full((H, W), 7.5, np.float32)
    return sample


def _normalised(out):
    """The sample's image as the model sees it: normalised, padding outside image_box set to 0."""
    box = torch.tensor(out["image_box"]) if "image_box" in out else None
    return normalize_images(out["image"], box)


def _extent(mask: torch.Tensor, value: int):
    ys, xs = torch.nonzero(mask == value, as_tuple=True)
    return xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1  # pixel edges


def test_flip_after_half_scale_keeps_box_and_mask_aligned():
    t = TrainTransform((32, 56))
    out = t.apply(_sample(), AugParams(scale=0.5, resized=(32, 56), crop=(0, 0), flip=True))
    # Hand-worked: scale 0.5 -> box (10, 5, 20, 10); flip in a 56-wide canvas -> x = 56 - x.
    assert out["det"]["boxes"][0].tolist() == [36.0, 5.0, 46.0, 10.0]
    assert _extent(out["semseg"], 13) == (36, 5, 46, 10)
    assert _extent(out["drivable"], 1) == (36, 5, 46, 10)
    red = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    image = _normalised(out)
    assert image[0, 7, 40].item() == pytest.approx(red, abs=0.05)  # inside the car
    assert image[0, 7, 20].item() < 0  # outside: black
    # The sign box (0..3 px wide) becomes 1.5 px wide at half scale: dropped with its label.
    assert out["det"]["labels"].tolist() == [2]


def test_crop_shifts_and_clips_box_like_the_mask():
    t = TrainTransform((32, 56))
    out = t.apply(_sample(), AugParams(scale=1.0, resized=(64, 112), crop=(8, 30), flip=False))
    # Hand-worked: (20, 10, 40, 20) - (30, 8) = (-10, 2, 10, 12) -> clipped to (0, 2, 10, 12).
    assert out["det"]["boxes"].tolist() == [[0.0, 2.0, 10.0, 12.0]]
    assert _extent(out["semseg"], 13) == (0, 2, 10, 12)
    assert out["semseg"].shape == (32, 56) and out["image"].shape == (3, 32, 56)


def test_padding_uses_ignore_for_masks_and_zero_for_the_normalised_image():
    t = TrainTransform((64, 112))
    out = t.apply(_sample(with_depth=True), AugParams(scale=0.5, resized=(32, 56), crop=(0, 0), flip=False))
    assert out["semseg"].shape == (64, 112)
    assert (out["semseg"][32:] == 255).all() and (out["semseg"][:, 56:] == 255).all()
    assert (out["drivable"][:32, :56] != 255).all()
    assert (out["depth"][32:] == 0).all() and out["depth"][0, 0].item() == 7.5
    # The image is padded with the mean colour: uint8 in the sample, exactly 0 once normalised.
    assert out["image_box"] == (0, 0, 56, 32)
    assert (out["image"][:, 32:] == torch.tensor(IMAGE_PAD_UINT8, dtype=torch.uint8).view(3, 1, 1)).all()
    image = _normalised(out)
    assert (image[:, 32:] == 0).all() and (image[:, :, 56:] == 0).all()
    assert image[0, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[0] / IMAGENET_STD[0], abs=1e-5)
    assert out["det"]["boxes"][0].tolist() == [10.0, 5.0, 20.0, 10.0]
    # Flipped, the padding moves to the left and the box follows the content.
    out = t.apply(_sample(), AugParams(scale=0.5, resized=(32, 56), crop=(0, 0), flip=True))
    assert out["image_box"] == (56, 0, 112, 32)
    assert (_normalised(out)[:, :, :56] == 0).all() and (out["semseg"][:, :56] == 255).all()
    assert out["det"]["boxes"][0].tolist() == [92.0, 5.0, 102.0, 10.0]
    assert _extent(out["semseg"], 13) == (92, 5, 102, 10)


def test_random_draws_are_seeded_and_in_range():
    def draws(seed):
        t = TrainTransform((32, 56), scale_range=(0.8, 1.25), generator=torch.Generator().manual_seed(seed))
        return [t.sample_params((H, W)) for _ in range(20)]

    first, again, other = draws(0), draws(0), draws(1)
    assert first == again and first != other
    for p in first:
        assert 0.5 * 0.8 - 1e-9 <= p.scale <= 0.5 * 1.25 + 1e-9  # fit scale is 0.5 here
        assert p.resized == (round(H * p.scale), round(W * p.scale))
        assert 0 <= p.crop[0] <= max(0, p.resized[0] - 32) and 0 <= p.crop[1] <= max(0, p.resized[1] - 56)
    assert {p.flip for p in first} == {True, False}


def test_random_transform_keeps_box_on_the_mask_rectangle():
    t = TrainTransform((48, 80), scale_range=(1.0, 2.0), generator=torch.Generator().manual_seed(3))
    for _ in range(10):
        out = t(_sample())
        assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 48, 80)
        assert out["semseg"].dtype == torch.uint8 and out["det"]["labels"].dtype == torch.int64
        assert out["orig_size"] == (H, W)
        cars = out["det"]["labels"] == 2
        if (out["semseg"] == 13).any() and cars.any():
            x1, y1, x2, y2 = out["det"]["boxes"][cars][0].tolist()
            ex1, ey1, ex2, ey2 = _extent(out["semseg"], 13)
            # Nearest-neighbour masks can differ from the exact box by under one pixel per edge.
            assert abs(x1 - ex1) < 1 and abs(x2 - ex2) < 1 and abs(y1 - ey1) < 1 and abs(y2 - ey2) < 1


def test_eval_transform_resizes_only_the_image():
    out = EvalTransform((32, 56))(_sample())
    assert out["image"].shape == (3, 32, 56) and out["orig_size"] == (H, W) and out["image_box"] == (0, 0, 56, 32)
    assert out["semseg"].shape == (H, W) and out["semseg"].dtype == torch.uint8
    assert out["det"]["boxes"].tolist() == [[20, 10, 40, 20], [0, 30, 3, 50]]
    # The red car, halved: thresholding the red channel at mid-grey gives the halved box exactly.
    image = _normalised(out)
    mid = (0.5 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert _extent(image[0] > mid, True) == (10, 5, 20, 10)
    assert image[0, 7, 15].item() == pytest.approx((1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], abs=0.02)
    batch = collate([out, EvalTransform((32, 56))({k: v for k, v in _sample().items() if k != "semseg"})])
    assert batch["labeled"]["semseg"].tolist() == [True, False] and (batch["semseg"][1] == 255).all()
    # on the device: int64 class ids, the image normalised; no padding, so nothing is zeroed
    on_device = batch_to_device(batch, torch.device("cpu"))
    assert on_device["semseg"].dtype == torch.int64 and torch.equal(on_device["semseg"][0], out["semseg"].long())
    torch.testing.assert_close(on_device["image"][0], image)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="size"):
        TrainTransform((32,))
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform((32, 32), scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="hflip_prob"):
        TrainTransform((32, 32), hflip_prob=2)
    bad = _sample()
    bad["semseg"] = bad["semseg"][:10]
    with pytest.raises(ValueError, match="semseg"):
        TrainTransform((32, 56))(bad)


def test_dense_regression_labels_and_camera_follow_the_geometry():
    sample = _sample(with_depth=True)
    sample["edges"] = np.full((H, W), 0.5, np.float32)
    normals = np.zeros((H, W, 3), np.float32)
    normals[..., :] = (0.6, -0.8, 0.0)
    sample["normals"] = normals
    sample["camera"] = np.array([100.0, 90.0, 55.5, 20.0])
    t = TrainTransform((40, 80))
    # half scale -> 32x56, padded to 40x80 at the bottom/right, then flipped
    out = t.apply(sample, AugParams(scale=0.5, resized=(32, 56), crop=(0, 0), flip=True))
    assert out["normals"].shape == (3, 40, 80) and out["normals"].dtype == torch.float32
    # flipped: x negated where there is a label; padding (now on the left) is the zero vector
    torch.testing.assert_close(out["normals"][:, 0, -1], torch.tensor([-0.6, -0.8, 0.0]))
    assert not out["normals"][:, :, : 80 - 56].any() and not out["normals"][:, 32:].any()
    assert (out["edges"][:32, 80 - 56 :] == 0.5).all() and (out["edges"][32:] == -1).all()
    assert (out["edges"][:, : 80 - 56] == -1).all() and (out["depth"][:32, 80 - 56 :] == 7.5).all()
    # fx, fy halve; u0 = (55.5 + 0.5) * 0.5 - 0.5 = 27.5, v0 = 20.5 * 0.5 - 0.5 = 9.75; flip in 80 px
    torch.testing.assert_close(out["camera"], torch.tensor([50.0, 45.0, 80 - 1 - 27.5, 9.75]))
    # evaluation keeps the labels, and so the camera, in the on-disk frame
    ev = EvalTransform((32, 56))(sample)
    assert ev["normals"].shape == (3, H, W) and ev["edges"].shape == (H, W)
    torch.testing.assert_close(ev["camera"], torch.tensor([100.0, 90.0, 55.5, 20.0]))
    batch = collate([out, t.apply(_sample(), AugParams(scale=0.5, resized=(32, 56), crop=(0, 0), flip=False))])
    assert batch["labeled"]["normals"].tolist() == [True, False]
    assert torch.isnan(batch["camera"][1]).all() and not batch["normals"][1].any()
    assert (batch["edges"][1] == -1).all() and (batch["depth"][1] == 0).all()


def test_eval_letterboxes_like_training_and_predictions_map_back_exactly():
    """64x112 into 32x80: scale min(32/64, 80/112) = 0.5, valid 32x56, 24 padded columns on the right
    (TrainTransform with scale factor 1, no crop, no flip). Hand-worked mapping back: x2 per axis."""
    assert letterbox_size((H, W), (32, 80)) == (32, 56)
    assert letterbox_size((720, 1280), (384, 640)) == (360, 640)  # BDD100K frames at the paper's input
    out = EvalTransform((32, 80))(_sample())
    train = TrainTransform((32, 80)).apply(_sample(), AugParams(scale=0.5, resized=(32, 56), crop=(0, 0), flip=False))
    torch.testing.assert_close(out["image"], train["image"])  # the same pixels the network trained on
    assert out["image_box"] == (0, 0, 56, 32)
    pad = torch.tensor(IMAGE_PAD_UINT8, dtype=torch.uint8).view(3, 1, 1)
    assert (out["image"][:, :, 56:] == pad).all()  # the mean colour: exactly 0 once normalised
    assert (batch_to_device(collate([out]), torch.device("cpu"))["image"][0, :, :, 56:] == 0).all()
    assert out["semseg"].shape == (H, W)  # labels stay on disk's frame

    batch = collate([out])
    assert batch["valid_size"].tolist() == [[32, 56]] and batch["orig_size"].tolist() == [[H, W]]
    # a box found in the input frame on the halved car, and one reaching into the padding
    boxes = boxes_to_orig(torch.tensor([[10.0, 5.0, 20.0, 10.0], [50.0, 0.0, 70.0, 4.0]]), batch, 0)
    assert boxes.tolist() == [[20.0, 10.0, 40.0, 20.0], [100.0, 0.0, 112.0, 8.0]]  # clipped at W = 112
    # logits of the car class on the halved car (rows 5..9, cols 10..19) and, as garbage that must
    # not leak in, everywhere in the padding; bilinear x2 + arg-max gives the on-disk mask exactly
    logits = torch.zeros(19, 32, 80)
    logits[0] = 1.0
    logits[13, 5:10, 10:20] = 2.0
    logits[13, :, 56:] = 5.0
    pred = dense_to_orig(logits, batch, 0).max(dim=0).indices
    assert pred.shape == (H, W)
    assert torch.equal(pred, out["semseg"].long())
    # the stretch to the whole input (what evaluation did before) would misplace it
    stretched = dense_to_orig(logits, {k: v for k, v in batch.items() if k != "valid_size"}, 0).max(dim=0).indices
    assert not torch.equal(stretched, out["semseg"].long())


def test_eval_letterbox_pads_the_bottom_of_a_tall_image_and_no_size_keeps_it():
    sample = {k: (np.ascontiguousarray(np.swapaxes(v, 0, 1)) if k in ("image", "semseg") else v)
              for k, v in _sample().items() if k not in ("det", "drivable")}
    sample["orig_size"] = (W, H)
    out = EvalTransform((32, 56))(sample)  # 112x64 into 32x56: scale 32/112, valid 32x18
    assert out["image_box"] == (0, 0, 18, 32) and round(64 * 32 / 112) == 18
    assert (out["image"][:, :, 18:] == torch.tensor(IMAGE_PAD_UINT8, dtype=torch.uint8).view(3, 1, 1)).all()
    same = EvalTransform(None)(_sample())
    assert same["image_box"] == (0, 0, W, H) and same["image"].shape == (3, H, W)


def test_ignore_regions_follow_the_boxes_through_the_transforms():
    sample = _sample()
    sample["det"]["ignore_boxes"] = np.array([[60, 0, 80, 20]], np.float32)
    sample["det"]["ignore_labels"] = np.array([3])
    out = TrainTransform((32, 56)).apply(sample, AugParams(scale=0.5, resized=(32, 56), crop=(0, 0), flip=True))
    # half scale -> (30, 0, 40, 10); flipped in 56 px -> (16, 0, 26, 10)
    assert out["det"]["ignore_boxes"].tolist() == [[16.0, 0.0, 26.0, 10.0]] and out["det"]["ignore_labels"].tolist() == [3]
    assert out["det"]["boxes"][0].tolist() == [36.0, 5.0, 46.0, 10.0]  # the objects as before
    ev = EvalTransform((32, 56))(sample)
    assert ev["det"]["ignore_boxes"].tolist() == [[60.0, 0.0, 80.0, 20.0]]  # on-disk frame
    assert "ignore_boxes" not in TrainTransform((32, 56)).apply(
        _sample(), AugParams(scale=0.5, resized=(32, 56), crop=(0, 0), flip=False))["det"]


@pytest.mark.parametrize("src,dst", [((64, 112), (32, 56)), ((64, 112), (41, 77)), ((72, 128), (90, 160)), ((60, 100), (60, 37))])
def test_image_resize_matches_pil_bilinear(src, dst):
    from PIL import Image

    from mtwork.data.transforms import resize_image

    image = np.random.default_rng(0).integers(0, 256, (*src, 3), dtype=np.uint8)
    reference = np.asarray(Image.fromarray(image).resize(dst[::-1], Image.BILINEAR)).astype(int)
    out = resize_image(image, dst)
    assert out.dtype == torch.uint8 and out.shape == (3, *dst)
    # the same filter and sampling; the two fixed-point implementations round apart by a level or two
    diff = np.abs(out.permute(1, 2, 0).numpy().astype(int) - reference)
    assert diff.max() <= 2 and diff.mean() < 0.1


def test_nearest_indices_sample_pixel_centres_exactly():
    from mtwork.data.transforms import nearest_indices

    # out pixel i <- in floor((i + 0.5) * n_in / n_out)
    assert nearest_indices(4, 2).tolist() == [1, 3]  # 1.0, 3.0: exact ties, not 0.999...
    assert nearest_indices(3, 2).tolist() == [0, 2]  # 0.75, 2.25
    assert nearest_indices(2, 5).tolist() == [0, 0, 1, 1, 1]  # 0.2, 0.6, 1.0, 1.4, 1.8
    assert nearest_indices(720, 450, start=2, count=3).tolist() == [4, 5, 7]  # 4.0, 5.6, 7.2
    assert nearest_indices(10, 10).tolist() == list(range(10))


def test_batch_to_device_normalises_and_zeroes_the_padding():
    t = TrainTransform((64, 112))
    padded = t.apply(_sample(), AugParams(scale=0.5, resized=(32, 56), crop=(0, 0), flip=True))
    full = t.apply(_sample(), AugParams(scale=1.0, resized=(64, 112), crop=(0, 0), flip=False))
    batch = collate([padded, full])
    assert batch["image"].dtype == torch.uint8 and batch["image_box"].tolist() == [[56, 0, 112, 32], [0, 0, 112, 64]]
    image = batch_to_device(batch, torch.device("cpu"))["image"]
    assert image.dtype == torch.float32
    # sample 0: image in columns 56.. of rows ..32, the mean colour (exactly 0) elsewhere
    assert (image[0, :, 32:] == 0).all() and (image[0, :, :, :56] == 0).all()
    black = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    torch.testing.assert_close(image[0, :, 0, 56], black)  # top-left of the (flipped) content: black
    torch.testing.assert_close(image[1, :, 0, 0], black)  # no padding in sample 1
    red = torch.tensor([(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1],
                        -IMAGENET_MEAN[2] / IMAGENET_STD[2]])
    torch.testing.assert_close(image[1, :, 15, 30], red)  # inside the car
    with pytest.raises(ValueError, match="uint8"):
        collate([{**full, "image": full["image"].float()}])


def _render_both(samples_and_params, size):
    """The batch as the model gets it, with the image drawn in the transform and on the device."""
    batches = []
    for deferred in (False, True):
        t = TrainTransform(size, render_on_device=deferred)
        batches.append(batch_to_device(collate([t.apply(s, p) for s, p in samples_and_params]), torch.device("cpu")))
    return batches


def test_rendering_on_the_device_gives_the_pixels_of_the_transform():
    """TrainTransform(render_on_device=True) hands over the decoded frame and its CanvasGeometry;
    batch_to_device draws the canvas with the same function: identical tensors on the CPU, for crops,
    padding, flips and frames of different sizes (reduced decodes) in one batch."""
    small = _sample()
    small["image"] = np.ascontiguousarray(small["image"][::2, ::2])  # a 32x56 frame of the same scene
    for key in ("semseg", "drivable"):
        small[key] = np.ascontiguousarray(small[key][::2, ::2])
    small["orig_size"] = (32, 56)
    cases = [
        (_sample(), AugParams(scale=0.5, resized=(32, 56), crop=(0, 0), flip=True)),  # padded, flipped
        (_sample(), AugParams(scale=1.3, resized=(83, 146), crop=(7, 21), flip=False)),  # cropped
        (_sample(with_depth=True), AugParams(scale=1.0, resized=(64, 112), crop=(0, 0), flip=True)),  # no resize
        (small, AugParams(scale=1.2, resized=(38, 67), crop=(0, 5), flip=True)),
    ]
    in_transform, on_device = _render_both(cases, (48, 84))
    assert in_transform.keys() == on_device.keys()
    for key in ("image", "image_box", "valid_size", "semseg", "drivable", "depth"):
        assert torch.equal(in_transform[key], on_device[key]), key
    for a, b in zip(in_transform["det"], on_device["det"]):
        assert torch.equal(a["boxes"], b["boxes"])
    # random draws through __call__, the path training takes
    for seed in range(6):
        draws = [(s, TrainTransform((40, 72)).sample_params((64, 112), torch.Generator().manual_seed(seed * 3 + i)))
                 for i, s in enumerate((_sample(), _sample(), _sample()))]
        a, b = _render_both(draws, (40, 72))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["semseg"], b["semseg"])


def test_deferred_samples_collate_to_frames_and_mixing_is_refused():
    t = TrainTransform((48, 84), render_on_device=True)
    out = t.apply(_sample(), AugParams(scale=1.3, resized=(83, 146), crop=(7, 21), flip=False))
    assert out["image"].shape == (64, 112, 3) and out["image"].dtype == torch.uint8
    assert out["image_geometry"].tolist() == [83, 146, 7, 21, 48, 84, 48, 84, 0, 0]
    batch = collate([out, out])
    assert "image" not in batch and len(batch["frames"]) == 2 and batch["image_geometry"].shape == (2, 10)
    assert batch["semseg"].shape == (2, 48, 84)
    canvas = TrainTransform((48, 84)).apply(_sample(), AugParams(scale=1.3, resized=(83, 146), crop=(7, 21), flip=False))
    with pytest.raises(ValueError, match="image_geometry"):
        collate([out, canvas])
    other = TrainTransform((40, 84), render_on_device=True).apply(_sample(), AugParams(1.0, (64, 112), (0, 0), False))
    with pytest.raises(ValueError, match="canvases differ"):
        collate([out, other])


class _Samples(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.transform(_sample(), generator=torch.Generator().manual_seed(i))


def test_a_loader_worker_sends_frames_in_shared_memory():
    """In a DataLoader worker, collate builds the batch in shared memory (the frames too), so it is
    sent as a handle; the canvases drawn from it equal those of a batch collated in this process."""
    from torch.utils.data import DataLoader

    from mtwork.data.memory import loader_worker_init

    dataset = _Samples(TrainTransform((48, 84), render_on_device=True))
    local = collate([dataset[i] for i in range(4)])
    (worker,) = list(DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=collate, worker_init_fn=loader_worker_init))
    assert all(f.is_shared() for f in worker["frames"]) and worker["semseg"].is_shared()
    a, b = (batch_to_device(x, torch.device("cpu")) for x in (local, worker))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["semseg"], b["semseg"])


@pytest.mark.parametrize("src,dst", [((64, 112), (32, 56)), ((72, 128), (90, 160)), ((60, 100), (60, 37))])
def test_the_float_resize_used_off_the_cpu_is_within_a_grey_level(src, dst):
    """CUDA has no uint8 antialiased kernel: there the frame is resized in float32 and rounded. The
    same filter as the CPU's fixed-point kernel, so at most one level apart (here run on the CPU)."""
    from mtwork.data.transforms import resize_uint8, resize_uint8_in_float

    frame = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (*src, 3), dtype=np.uint8))
    exact, rounded = resize_uint8(frame, dst), resize_uint8_in_float(frame, dst)
    assert rounded.dtype == torch.uint8 and rounded.shape == exact.shape == (3, *dst)
    assert (exact.int() - rounded.int()).abs().max() <= 1
