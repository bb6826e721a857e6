"""SynthDrive: determinism, the BDD100K layout it writes, partial labels and the renderer's geometry."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtwork.data.bdd100k import DET_CATEGORIES, IGNORE_INDEX, SEMSEG_INDEX, decode_drivable
from mtwork.data.synthdrive import DOMAINS, generate_synthdrive, get_domain
from mtwork.data.synthdrive.render import render_scene
from mtwork.data.synthdrive.scene import Camera, Obj, Road, Scene, Segment
from mtwork.data.synthdrive.writer import _Item, image_name, render_item

H, W = 64, 112  # the size of the synthdrive_tiny fixture


@pytest.fixture
def generate(synthdrive_tiny_args):
    """generate_synthdrive with the tiny fixture's arguments, overridable per call."""

    def run(root: Path, **kwargs) -> dict:
        return generate_synthdrive(root, **{**synthdrive_tiny_args, **kwargs})

    return run


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_other_seed_differs(synthdrive_tiny, tmp_path, generate):
    generate(tmp_path / "again")
    reference, again = _files(synthdrive_tiny), _files(tmp_path / "again")
    assert sorted(reference) == sorted(again)
    assert [k for k in reference if reference[k] != again[k]] == []
    generate(tmp_path / "other", seed=1)
    other = _files(tmp_path / "other")
    assert len(other) == len(reference)
    assert set(reference).isdisjoint(k for k in other if k.startswith("images/"))  # names depend on the seed
    ref_images = sorted(v for k, v in reference.items() if k.startswith("images/10k/train"))
    other_images = sorted(v for k, v in other.items() if k.startswith("images/10k/train"))
    assert all(a != b for a, b in zip(ref_images, other_images))


def test_changing_counts_keeps_the_other_images(synthdrive_tiny, tmp_path, generate):
    counts = {"det": {"train": 8, "val": 3}, "seg": {"train": 4, "val": 2}}
    generate(tmp_path / "more", counts=counts)
    reference, more = _files(synthdrive_tiny), _files(tmp_path / "more")
    shared = [k for k in reference if k.startswith("images/") and k in more]
    assert len(shared) == len([k for k in reference if k.startswith("images/")])
    assert all(reference[k] == more[k] for k in shared)
    assert len([k for k in more if k.startswith("images/100k/train/")]) == 8


def test_layout_and_file_formats(synthdrive_tiny):
    root = synthdrive_tiny
    h, w = H, W
    for split, n_det, n_seg in (("train", 6, 4), ("val", 3, 2)):
        det_images = sorted((root / "images/100k" / split).iterdir())
        seg_images = sorted((root / "images/10k" / split).iterdir())
        assert len(det_images) == n_det and len(seg_images) == n_seg
        for path in det_images[:2] + seg_images[:2]:
            assert path.suffix == ".jpg" and len(path.stem) == 17 and path.stem[8] == "-"
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.mode == "RGB" and img.size == (w, h)
        for task, directory, n, mode in (
            ("drivable", root / "labels/drivable/masks" / split, n_det, "L"),
            ("semseg", root / "labels/sem_seg/masks" / split, n_seg, "L"),
        ):
            masks = sorted(directory.glob("*.png"))
            assert len(masks) == n
            for path in masks:
                with Image.open(path) as img:
                    assert img.mode == mode and img.size == (w, h)
                    values = set(np.unique(np.asarray(img)).tolist())
                allowed = {0, 1, 2} if task == "drivable" else set(range(19)) | {IGNORE_INDEX}
                assert values <= allowed, (path, values)
        depth = sorted((root / "labels/depth" / split).glob("*.png"))
        assert len(depth) == n_det + n_seg - (2 if split == "train" else 1)
        semseg_path = root / "labels/sem_seg/masks" / split / depth[0].name
        with Image.open(depth[0]) as img:
            assert img.mode == "I;16"
            stored = np.asarray(img)
        if semseg_path.exists():  # sky has no depth; everything else some, in 1/256 m up to 140 m
            semseg = np.asarray(Image.open(semseg_path))
            assert (stored[semseg == SEMSEG_INDEX["sky"]] == 0).all()
            assert (stored[semseg == SEMSEG_INDEX["road"]] > 0).all()
        assert stored.max() <= 140 * 256
        frames = json.loads((root / "labels/det_20" / f"det_{split}.json").read_text())
        assert sorted(f["name"] for f in frames) == [p.name for p in det_images]
    meta = json.loads((root / "synthdrive.json").read_text())
    assert meta["domain"] == "clear_day" and meta["seed"] == 0 and meta["image_size"] == [h, w]
    assert "1/256" in meta["units"]["depth"] and meta["label_ids"]["drivable_on_disk"]["background"] == 2
    with Image.open(root / "contact_sheet.png") as sheet:
        # val has 3 det + 2 seg images, 1 shared: 4 rows of three image-wide panels
        assert sheet.size == (3 * w + 4, 4 * (h + 2))


def test_overlap_images_carry_all_labels_with_the_same_bytes(synthdrive_tiny):
    root = synthdrive_tiny
    for split, n_shared in (("train", 2), ("val", 1)):
        seg = {p.name for p in (root / "images/10k" / split).iterdir()}
        det = {p.name for p in (root / "images/100k" / split).iterdir()}
        shared = seg & det
        assert len(shared) == n_shared
        assert {image_name("clear_day", 0, "10k", split, i) for i in range(n_shared)} == shared
        frames = {f["name"] for f in json.loads((root / f"labels/det_20/det_{split}.json").read_text())}
        for name in shared:
            stem = Path(name).stem
            assert (root / "images/10k" / split / name).read_bytes() == (root / "images/100k" / split / name).read_bytes()
            assert name in frames
            assert (root / "labels/drivable/masks" / split / f"{stem}.png").exists()
            assert (root / "labels/sem_seg/masks" / split / f"{stem}.png").exists()
        for name in seg - det:  # segmentation-only images: no det frame, no drivable mask
            assert name not in frames
            assert not (root / "labels/drivable/masks" / split / f"{Path(name).stem}.png").exists()
        for name in det - seg:
            assert not (root / "labels/sem_seg/masks" / split / f"{Path(name).stem}.png").exists()


def test_det_json_has_the_bdd100k_edge_cases(synthdrive_tiny):
    frames = []
    for split in ("train", "val"):
        split_frames = json.loads((synthdrive_tiny / f"labels/det_20/det_{split}.json").read_text())
        ids = [lab["id"] for f in split_frames for lab in f.get("labels", [])]
        assert len(ids) == len(set(ids))  # unique within a file
        frames += split_frames
    h, w = H, W
    empty = [f for f in frames if "labels" not in f]
    # det-set index 1 of each split is an empty street on the fixed schedule
    assert {f["name"] for f in empty} >= {image_name("clear_day", 0, "100k", s, 1) for s in ("train", "val")}
    labels = [lab for f in frames for lab in f.get("labels", [])]
    assert all(f.get("labels") != [] for f in frames)  # empty frames leave the key out
    categories = {lab["category"] for lab in labels}
    assert "trailer" in categories and categories <= set(DET_CATEGORIES) | {"trailer"}
    for f in frames:
        assert set(f["attributes"]) == {"weather", "timeofday", "scene"} and f["timestamp"] == 10000
    for lab in labels:
        box = lab["box2d"]
        assert 0 <= box["x1"] < box["x2"] <= w - 1 and 0 <= box["y1"] < box["y2"] <= h - 1
        assert isinstance(lab["attributes"]["occluded"], bool) and isinstance(lab["attributes"]["truncated"], bool)


def test_trailer_is_ignore_in_semseg_and_boxes_match_visible_pixels():
    item = _Item("10k", "train", 2, "x.jpg", ("10k",))  # index 2: a truck towing a trailer
    rendered = render_item(item, get_domain("clear_day"), 0, (128, 224))
    trailers = [lab for lab in rendered.labels if lab["category"] == "trailer"]
    assert len(trailers) == 1
    box = trailers[0]["box2d"]
    region = rendered.semseg[int(box["y1"]) : int(box["y2"]) + 1, int(box["x1"]) : int(box["x2"]) + 1]
    assert (region == IGNORE_INDEX).mean() > 0.5
    for lab in rendered.labels:  # every labelled box encloses at least its visible pixel count
        b = lab["box2d"]
        assert (b["x2"] - b["x1"] + 1) * (b["y2"] - b["y1"] + 1) >= lab["visible_pixels"]


def test_min_box_pixels_drops_the_small_boxes_and_nothing_else():
    """An object needs ``min_box_pixels`` visible pixels for a box; the image and masks do not change."""
    from mtwork.data.synthdrive.render import default_min_box_pixels

    assert default_min_box_pixels((96, 160)) == 10 and default_min_box_pixels((720, 1280)) == 92
    domain = get_domain("clear_day")
    kept = dropped = 0
    for index in range(6):
        item = _Item("100k", "train", index, "x.jpg", ("100k",))
        default = render_item(item, domain, 0, (128, 224))
        strict = render_item(item, domain, 0, (128, 224), min_box_pixels=80)
        assert np.array_equal(default.image, strict.image) and np.array_equal(default.semseg, strict.semseg)
        assert all(lab["visible_pixels"] >= 10 for lab in default.labels)
        expected = [lab for lab in default.labels if lab["visible_pixels"] >= 80]
        assert [lab["box2d"] for lab in strict.labels] == [lab["box2d"] for lab in expected]
        kept, dropped = kept + len(expected), dropped + len(default.labels) - len(expected)
    assert kept > 0 and dropped > 0  # the threshold falls inside the range of object sizes
    with pytest.raises(ValueError, match="min_box_pixels"):
        generate_synthdrive(Path("unused"), min_box_pixels=0)


def _hand_scene(objects):
    """64x112 image, focal 100 px, horizon at row 20, camera 1.5 m up in the middle of lane 1 of 3."""
    camera = Camera(size=(64, 112), focal=100.0, cx=56.0, horizon=20.0, height=1.5)
    road = Road(scene="highway", lanes=3, lane_width=3.5, oncoming=0, ego_lane=1, cam_offset=5.25,
                curvature=0.0, sidewalk=(0.0, 0.0), curb=0.0, z_end=100.0, dash_period=10.0,
                dash_length=3.0, dash_phase=0.0, tracks=False)
    backdrop = [Segment(-500.0, 500.0, "vegetation", 10.0, 0, 1.0, (3.0, 3.0))]
    return Scene(camera=camera, road=road, planes=[], backdrop=backdrop, objects=objects,
                 palette_choice={k: 0 for k in ("road", "sidewalk", "terrain", "vegetation", "wall", "fence", "pole")},
                 hood=None, empty=False)


def _car(r, z):
    return Obj("car", r, z, {"oncoming": False, "colour": (200, 30, 30), "style": 0, "width": 1.8, "height": 1.5})


def test_renderer_geometry_matches_hand_worked_projection():
    # A car 1.8 m wide, 1.5 m tall, 10 m ahead in our lane: 100/10 = 10 px per metre, centred on
    # column 56, standing on row 20 + 100 * 1.5 / 10 = 35. A second car 20 m ahead in the same lane is
    # 9 px wide and 7.5 px tall and hides completely behind it (painter's order).
    out = render_scene(_hand_scene([_car(5.25, 20.0), _car(5.25, 10.0)]), get_domain("clear_day"),
                       np.random.default_rng(0))
    assert [lab["category"] for lab in out.labels] == ["car"]
    box = out.labels[0]["box2d"]
    assert (box["x1"], box["x2"], box["y2"]) == (47.0, 64.0, 34.0)
    assert abs(box["y1"] - 20.0) <= 1
    assert out.semseg[30, 56] == SEMSEG_INDEX["car"] and out.depth[30, 56] == pytest.approx(10.0)
    # Ground: z = focal * height / (row centre - horizon), e.g. row 40 -> 150 / 20.5 = 7.317 m.
    assert out.depth[40, 10] == pytest.approx(150 / 20.5, rel=1e-5) and out.semseg[40, 10] == SEMSEG_INDEX["road"]
    # Row 30 lies 14.29 m ahead; column 31 is 3.5 m to the left there: lane 0, an alternative lane.
    assert out.depth[30, 31] == pytest.approx(150 / 10.5, rel=1e-5)
    assert out.drivable[30, 31] == 2 and out.drivable[50, 56] == 1
    assert out.semseg[0, 5] == SEMSEG_INDEX["sky"] and out.depth[0, 5] == 0.0
    assert out.depth[15, 5] == pytest.approx(100.0)  # the backdrop's trees at z_end


def test_partly_hidden_object_gets_its_visible_box_and_occluded_flag():
    # The far car moves 2 m right: columns 56 + 10 +- 4.5 -> 62..70, partly behind the near car.
    out = render_scene(_hand_scene([_car(7.25, 20.0), _car(5.25, 10.0)]), get_domain("clear_day"),
                       np.random.default_rng(0))
    far = [lab for lab in out.labels if lab["box2d"]["x2"] == 70.0]
    assert len(far) == 1 and far[0]["occluded"] is True
    assert 62.0 <= far[0]["box2d"]["x1"] <= 65.0


def test_domains_registry_and_their_effect():
    assert {"clear_day", "dusk_fog"} <= set(DOMAINS.names())
    with pytest.raises(KeyError, match="clear_day"):
        get_domain("moon_base")
    item = _Item("100k", "val", 5, "x.jpg", ("100k",))
    day = render_item(item, get_domain("clear_day"), 0, (64, 112))
    dusk = render_item(item, get_domain("dusk_fog"), 0, (64, 112))
    # Same street (the layout ignores the domain), dimmer and foggier image, higher camera.
    assert day.scene == dusk.scene
    assert dusk.image.mean() < 0.8 * day.image.mean()
    lo, hi = get_domain("dusk_fog").camera_height
    assert lo > get_domain("clear_day").camera_height[0]


def test_bad_arguments_and_foreign_directories_are_refused(tmp_path, generate):
    with pytest.raises(ValueError, match="seed"):
        generate(tmp_path / "a", seed=-1)
    with pytest.raises(ValueError, match="counts"):
        generate(tmp_path / "a", counts={"det": {"train": -1}})
    with pytest.raises(ValueError, match="overlap"):
        generate(tmp_path / "a", overlap=1.5)
    with pytest.raises(KeyError, match="domain"):
        generate(tmp_path / "a", domain="nope")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="refusing"):
        generate(foreign)
    assert (foreign / "precious.txt").read_text() == "keep"


def test_regeneration_replaces_a_previous_synthdrive_root(tmp_path, generate):
    root = tmp_path / "sd"
    small = {"det": {"train": 2, "val": 1}, "seg": {"train": 1, "val": 1}}
    generate(root, counts={"det": {"train": 4, "val": 1}, "seg": {"train": 1, "val": 1}})
    summary = generate(root, counts=small, overlap=0.0)
    assert len(list((root / "images/100k/train").iterdir())) == 2  # no stale images left behind
    assert summary["images"] == {"100k": {"train": 2, "val": 1}, "10k": {"train": 1, "val": 1}}
    assert not list(tmp_path.glob(".sd.*"))  # temporary directories are gone
    assert decode_drivable(np.asarray(Image.open(next((root / "labels/drivable/masks/train").iterdir())))).max() <= 2


def test_camera_files_hold_the_rendered_pinhole_and_give_back_the_road_plane(synthdrive_tiny):
    from mtwork.data.bdd100k import read_camera
    from mtwork.data.synthdrive.writer import _render, camera_json
    from mtwork.tasks.dense_labels import normals_from_depth

    for split in ("train", "val"):
        stems = {p.stem for d in ("100k", "10k") for p in (synthdrive_tiny / "images" / d / split).iterdir()}
        cameras = {p.stem for p in (synthdrive_tiny / "labels/camera" / split).glob("*.json")}
        assert cameras == stems  # one camera file per image, like the depth PNGs
    # the file is the scene's camera in the OpenCV convention: the renderer's pixel centres are i + 0.5
    item = _Item("10k", "train", 0, image_name("clear_day", 0, "10k", "train", 0), ("10k", "100k"))
    rendered, camera = _render(item, get_domain("clear_day"), 0, (H, W))
    path = synthdrive_tiny / "labels/camera/train" / f"{Path(item.name).stem}.json"
    data = json.loads(path.read_text())
    assert data == camera_json(camera)
    assert data["intrinsic"]["u0"] == camera.cx - 0.5 and data["intrinsic"]["v0"] == camera.horizon - 0.5
    assert data["extrinsic"]["z"] == camera.height and data["extrinsic"]["pitch"] == 0.0
    # back-projecting the rendered depth with these intrinsics puts the road on the plane y = height,
    # whose normal faces straight up: (0, -1, 0) in the camera frame (y down)
    normals = normals_from_depth(rendered.depth, read_camera(path))
    road = (rendered.semseg == SEMSEG_INDEX["road"]) & (np.linalg.norm(normals, axis=-1) > 0)
    assert road.sum() > 500
    # (a road pixel touching an object's contact row may take its vertical difference on the object)
    exact = np.abs(normals[road] - [0, -1, 0]).max(axis=-1) < 1e-3
    assert exact.mean() > 0.9


def test_every_image_is_listed_with_its_domain_attributes(synthdrive_tiny):
    from mtwork.data.bdd100k import ATTRIBUTE_VALUES

    for name in DOMAINS.names():  # every preset names valid BDD100K attribute values
        domain = get_domain(name)
        assert domain.weather in ATTRIBUTE_VALUES["weather"] and domain.timeofday in ATTRIBUTE_VALUES["timeofday"]
    for split in ("train", "val"):
        listed = json.loads((synthdrive_tiny / f"labels/attributes/attributes_{split}.json").read_text())
        images = {p.name for s in ("100k", "10k") for p in (synthdrive_tiny / "images" / s / split).iterdir()}
        assert [f["name"] for f in listed] == sorted(images)  # both sets, the shared ones once
        det = {f["name"]: f["attributes"] for f in json.loads((synthdrive_tiny / f"labels/det_20/det_{split}.json").read_text())}
        for frame in listed:
            assert frame["attributes"]["weather"] == "clear" and frame["attributes"]["timeofday"] == "daytime"
            assert frame["attributes"]["scene"] in ("city street", "residential", "highway")
            assert det.get(frame["name"], frame["attributes"]) == frame["attributes"]


def test_several_domains_in_one_root(tmp_path, generate):
    from mtwork.data.bdd100k import BDD100KDataset

    counts = {"det": {"train": 2, "val": 2}, "seg": {"train": 2, "val": 1}}
    root = tmp_path / "multi"
    summary = generate(root, domains=["clear_day", "dusk_fog"], counts=counts, overlap=0.5)
    assert summary["domain"] is None and summary["domains"] == ["clear_day", "dusk_fog"]
    per = summary["images_per_domain"]
    assert per["clear_day"] == per["dusk_fog"] == {"100k": {"train": 2, "val": 2}, "10k": {"train": 2, "val": 1}}
    assert summary["images"] == {"100k": {"train": 4, "val": 4}, "10k": {"train": 4, "val": 2}}
    meta = json.loads((root / "synthdrive.json").read_text())
    assert meta["domains"] == ["clear_day", "dusk_fog"] and set(meta["domains_params"]) == {"clear_day", "dusk_fog"}
    # the one-domain form writes the same files for its domain: names hash the domain, so they are unique
    single = tmp_path / "dusk"
    generate(single, domain="dusk_fog", counts=counts, overlap=0.5)
    dusk_names = {p.name for p in (single / "images/10k/val").iterdir()}
    assert dusk_names < {p.name for p in (root / "images/10k/val").iterdir()}
    for name in dusk_names:
        assert (single / "images/10k/val" / name).read_bytes() == (root / "images/10k/val" / name).read_bytes()
    # each domain is an attribute filter on the one root, for every task
    tasks = ("semseg", "drivable", "det", "depth")
    fog = BDD100KDataset(root, "val", tasks=tasks, attributes={"weather": "foggy", "timeofday": "dawn/dusk"})
    assert set(fog.names) == {p.name for s in ("100k", "10k") for p in (single / "images" / s / "val").iterdir()}
    assert fog.filter_counts == {"kept": len(fog), "other_attributes": len(fog), "unattributed": 0}
    assert fog.labeled_counts()["semseg"] == 1
    with pytest.raises(ValueError, match="distinct"):
        generate(tmp_path / "x", domains=["night", "night"])
    with pytest.raises(ValueError, match="not both"):
        generate(tmp_path / "x", domain="night", domains=["clear_day"])
