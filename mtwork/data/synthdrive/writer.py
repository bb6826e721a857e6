"""Write a SynthDrive data set in the BDD100K layout (see ``mtwork.data.bdd100k``).

Per split, the 100k (detection) set carries det + drivable labels and the 10k (segmentation) set
carries semseg labels; every image also gets a depth PNG and a camera JSON (SynthDrive extras, from
which the reader derives surface normals). A fraction
``overlap`` of each split's 10k images is *also* written into the 100k set under the same name and
with the same bytes, with det + drivable labels, so those images carry every label (as BDD100K's two
image sets overlap). ``counts`` are the numbers of files per image set: with counts
{"det": {"train": 240}, "seg": {"train": 160}} and overlap 0.1, images/100k/train holds 240 images,
16 of which are the shared ones, and images/10k/train holds 160.

Frame attributes: every det frame carries the BDD100K ``attributes`` weather / timeofday (the
domain's, ``mtwork.data.synthdrive.domains``) and scene (the image's street type), and
``labels/attributes/attributes_<split>.json`` lists {name, attributes} for *every* image of the split
(both sets), so attribute domains (``BDD100KDataset(attributes=...)``) select the segmentation-only
images too.

Several domains in one root: ``generate_synthdrive(root, domains=["clear_day", "night", ...])``
writes each domain's ``counts`` images into the one BDD100K-layout root (file names hash the domain,
so they are unique across domains; each domain's frames carry its attributes), e.g. a source domain
and the DG domains as attribute filters on one data set. ``domain="clear_day"`` is the one-domain form.

Determinism: image i of (image set, split) draws everything from
``numpy.random.default_rng([seed, set_code, split_code, i])``, so the same seed writes byte-identical
files and changing a count adds or removes images without changing the others. Edge cases come on a
fixed schedule so that even a tiny generation has them: image indices with i % 20 == 1 are empty
streets (their det frame has no "labels" key) and i % 8 == 2 have a truck towing a trailer (labelled
"trailer", an ignore region of truck in the official detection protocol; 255 in semseg).

The whole data set is written into a temporary sibling directory and renamed into place at the end,
so an interrupted generation never leaves a half-written ROOT.

Camera files (``labels/camera/<split>/<stem>.json``, Cityscapes style, see ``mtwork.data.bdd100k``):
the renderer's camera is a pinhole with a horizontal optical axis (pitch 0) whose principal point
sits on the horizon row, in pixel-centre coordinates i + 0.5. The file holds it in the OpenCV
convention (pixel centres at integers): fx = fy = focal, u0 = cx - 0.5, v0 = horizon - 0.5, so that
back-projecting the depth PNG with these intrinsics gives back the rendered geometry exactly.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from mtwork.data.bdd100k import (
    DET_CATEGORIES,
    DRIVABLE_CLASSES,
    DRIVABLE_DISK_IDS,
    SEMSEG_CLASSES,
    SPLITS,
    attributes_json_path,
    det_json_path,
    encode_drivable,
    camera_dir,
    image_dir,
    mask_dir,
    metres_to_depth,
)
from mtwork.data.synthdrive.domains import Domain, get_domain
from mtwork.data.synthdrive.render import Rendered, default_min_box_pixels, render_scene
from mtwork.data.synthdrive.scene import Camera, sample_scene
from mtwork.io import write_json

GENERATOR_VERSION = "1.0.0"
DEFAULT_COUNTS: Dict[str, Dict[str, int]] = {"det": {"train": 240, "val": 60}, "seg": {"train": 160, "val": 40}}
JPEG_QUALITY = 90
#: PNG zlib level: 1 is several times faster than the default 6 for ~10 % larger masks.
PNG_COMPRESS_LEVEL = 1
EMPTY_EVERY, EMPTY_AT = 20, 1
TRAILER_EVERY, TRAILER_AT = 8, 2
TIMESTAMP = 10000  # BDD100K det_20 frames carry this constant
METADATA_NAME = "synthdrive.json"
CONTACT_SHEET_NAME = "contact_sheet.png"

_SET_CODE = {"100k": 1, "10k": 2}
_SPLIT_CODE = {"train": 1, "val": 2}
_COUNT_SET = {"det": "100k", "seg": "10k"}

DEPTH_UNIT_DOC = (
    "labels/depth/<split>/<stem>.png: uint16 z-depth in 1/256 m (value / 256 = metres along the "
    "optical axis), 0 = invalid (sky, ego-vehicle bonnet); at most 255.996 m"
)

CAMERA_DOC = (
    "labels/camera/<split>/<stem>.json: Cityscapes-style camera file; intrinsic fx, fy, u0, v0 in pixels "
    "of the image on disk, pixel centres at integers (OpenCV); extrinsic z = camera height above the road "
    "(m), pitch/roll/yaw 0 (rad)"
)


@dataclass(frozen=True)
class _Item:
    """One image to render: its own (set, split, index) stream; ``sets`` it is written into."""

    image_set: str
    split: str
    index: int
    name: str
    sets: Tuple[str, ...]
    domain: str = ""


def image_name(domain: str, seed: int, image_set: str, split: str, index: int) -> str:
    """A BDD100K-like file name ("0a1b2c3d-4e5f6a7b.jpg"), a pure function of its arguments."""
    digest = hashlib.sha1(f"synthdrive/{domain}/{seed}/{image_set}/{split}/{index}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:16]}.jpg"


def _validate_counts(counts: Mapping[str, Any]) -> Dict[str, Dict[str, int]]:
    if not isinstance(counts, Mapping) or set(counts) - set(_COUNT_SET):
        raise ValueError(f"counts must be a mapping with keys 'det' and/or 'seg', got {counts!r}")
    out: Dict[str, Dict[str, int]] = {}
    for key in _COUNT_SET:
        per_split = counts.get(key, {})
        if not isinstance(per_split, Mapping) or set(per_split) - set(SPLITS):
            raise ValueError(f"counts['{key}'] must map 'train'/'val' to image counts, got {per_split!r}")
        out[key] = {}
        for split in SPLITS:
            n = per_split.get(split, 0)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"counts['{key}']['{split}'] must be a non-negative integer, got {n!r}")
            out[key][split] = n
    return out


def plan_items(
    domain: str, seed: int, counts: Mapping[str, Mapping[str, int]], overlap: float
) -> Dict[str, List[_Item]]:
    """{split: images to render}: the seg set (its first ``round(overlap * n_seg)`` also go into the
    100k set) followed by the det set's own images."""
    plan: Dict[str, List[_Item]] = {}
    for split in SPLITS:
        n_seg, n_det = counts["seg"][split], counts["det"][split]
        n_shared = min(int(round(overlap * n_seg)), n_det)
        items = [
            _Item("10k", split, i, image_name(domain, seed, "10k", split, i),
                  ("10k", "100k") if i < n_shared else ("10k",), domain)
            for i in range(n_seg)
        ]
        items += [
            _Item("100k", split, i, image_name(domain, seed, "100k", split, i), ("100k",), domain)
            for i in range(n_det - n_shared)
        ]
        plan[split] = items
    return plan


def _render(item: _Item, domain: Domain, seed: int, image_size: Tuple[int, int],
            min_box_pixels: Optional[int] = None) -> Tuple[Rendered, Camera]:
    rng = np.random.default_rng([seed, _SET_CODE[item.image_set], _SPLIT_CODE[item.split], item.index])
    empty = item.index % EMPTY_EVERY == EMPTY_AT
    trailer = not empty and item.index % TRAILER_EVERY == TRAILER_AT
    scene = sample_scene(rng, image_size, domain, empty=empty, trailer=trailer)
    return render_scene(scene, domain, rng, min_box_pixels), scene.camera


def render_item(item: _Item, domain: Domain, seed: int, image_size: Tuple[int, int],
                min_box_pixels: Optional[int] = None) -> Rendered:
    """Render one planned image from its own random stream."""
    return _render(item, domain, seed, image_size, min_box_pixels)[0]


def camera_json(camera: Camera) -> Dict[str, Any]:
    """The camera file of one image (module docstring): Cityscapes keys, OpenCV pixel convention.

    The renderer's pixel i has centre coordinate i + 0.5, hence the 0.5 shift of the principal point.
    """
    return {
        "extrinsic": {"x": 0.0, "y": 0.0, "z": float(camera.height), "pitch": 0.0, "roll": 0.0, "yaw": 0.0},
        "intrinsic": {
            "fx": float(camera.focal),
            "fy": float(camera.focal),
            "u0": float(camera.cx) - 0.5,
            "v0": float(camera.horizon) - 0.5,
        },
    }


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(array).save(buf, "JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(array).save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def frame_attributes(rendered: Rendered, domain: Domain) -> Dict[str, str]:
    """The BDD100K frame attributes of one image: the domain's weather and time of day, its scene."""
    return {"weather": domain.weather, "timeofday": domain.timeofday, "scene": rendered.scene}


def _frame(name: str, rendered: Rendered, domain: Domain) -> Dict[str, Any]:
    frame: Dict[str, Any] = {
        "name": name,
        "attributes": frame_attributes(rendered, domain),
        "timestamp": TIMESTAMP,
    }
    labels = []
    for lab in rendered.labels:
        attributes = {"occluded": lab["occluded"], "truncated": lab["truncated"], "trafficLightColor": "NA"}
        attributes.update(lab["attributes"])
        labels.append({"category": lab["category"], "attributes": attributes, "box2d": lab["box2d"]})
    if labels:  # BDD100K leaves the key out for frames without objects
        frame["labels"] = labels
    return frame


def _prepare_root(out_root: Path) -> None:
    if out_root.exists():
        if not out_root.is_dir():
            raise FileExistsError(f"{out_root}: exists and is not a directory")
        if any(out_root.iterdir()) and not (out_root / METADATA_NAME).exists():
            raise FileExistsError(
                f"{out_root}: not empty and not a SynthDrive data set (no {METADATA_NAME}); "
                "refusing to replace it"
            )


def generate_synthdrive(
    out_root: str | os.PathLike,
    domain: str = "clear_day",
    seed: int = 0,
    image_size: Tuple[int, int] = (256, 448),
    counts: Optional[Mapping[str, Mapping[str, int]]] = None,
    overlap: float = 0.1,
    progress: bool = True,
    domains: Optional[Sequence[str]] = None,
    min_box_pixels: Optional[int] = None,
) -> Dict[str, Any]:
    """Generate SynthDrive into ``out_root`` (BDD100K layout); returns a summary dict.

    min_box_pixels: visible pixels an object needs to get a box (None: 10, or 1e-4 of the image when
    that is more); a run that shrinks the images (a smaller network input) raises it so that no box is
    labelled that would be under ~10 pixels at the input.

    domain: a name in ``DOMAINS``; domains: several names instead (one root holding all of them, each
    with ``counts`` images; module docstring); image_size: (H, W) pixels; counts: images per image set
    and split (per domain), {"det": {"train": n, "val": n}, "seg": {...}}; overlap: fraction of each
    split's seg images also in the det set. A previous SynthDrive data set at ``out_root`` is
    replaced; any other non-empty directory is refused. Summary keys: root, domain (the name, or None
    for several), domains, seed, image_size, images ({set: {split: n}}), images_per_domain ({domain:
    {set: {split: n}}}), shared ({split: n}), objects ({category: n}), non_evaluated ({category: n}:
    the ignore-region categories), empty_frames, seconds.
    """
    out_root = Path(out_root)
    if domains is not None:
        if isinstance(domains, str) or not domains or len(set(domains)) != len(domains):
            raise ValueError(f"domains must be a non-empty list of distinct domain names, got {domains!r}")
        if domain != "clear_day" and list(domains) != [domain]:
            raise ValueError(f"give domain={domain!r} or domains={list(domains)!r}, not both")
    doms = [get_domain(d) for d in (domains if domains is not None else [domain])]
    dom = doms[0]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if len(image_size) != 2 or any(not isinstance(s, int) or s < 16 for s in image_size):
        raise ValueError(f"image_size must be (H, W) integers >= 16, got {image_size!r}")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap must be in [0, 1], got {overlap!r}")
    if min_box_pixels is not None and (isinstance(min_box_pixels, bool) or not isinstance(min_box_pixels, int)
                                       or min_box_pixels < 1):
        raise ValueError(f"min_box_pixels must be a positive integer or None, got {min_box_pixels!r}")
    counts_v = _validate_counts(DEFAULT_COUNTS if counts is None else counts)
    _prepare_root(out_root)
    plans = {d.name: plan_items(d.name, seed, counts_v, overlap) for d in doms}
    plan = {split: [item for d in doms for item in plans[d.name][split]] for split in SPLITS}
    by_name = {d.name: d for d in doms}
    image_size = (int(image_size[0]), int(image_size[1]))

    start = time.perf_counter()
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_root.parent / f".{out_root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    objects: Counter = Counter()
    non_evaluated: Counter = Counter()
    empty_frames = 0
    try:
        for split in SPLITS:
            for sub in (image_dir(tmp, "100k", split), image_dir(tmp, "10k", split),
                        attributes_json_path(tmp, split).parent,
                        mask_dir(tmp, "semseg", split), mask_dir(tmp, "drivable", split),
                        mask_dir(tmp, "depth", split), camera_dir(tmp, split)):
                sub.mkdir(parents=True, exist_ok=True)
        total = sum(len(items) for items in plan.values())
        bar = tqdm(total=total, desc=f"SynthDrive {'+'.join(d.name for d in doms)}", unit="img",
                   file=sys.stderr, disable=not progress)
        for split, items in plan.items():
            frames: List[Dict[str, Any]] = []
            attribute_frames: List[Dict[str, Any]] = []
            for item in items:
                item_domain = by_name[item.domain]
                rendered, camera = _render(item, item_domain, seed, image_size, min_box_pixels)
                attribute_frames.append({"name": item.name, "attributes": frame_attributes(rendered, item_domain)})
                stem = Path(item.name).stem
                jpeg = _encode(rendered.image, "JPEG")
                for image_set in item.sets:
                    (image_dir(tmp, image_set, split) / item.name).write_bytes(jpeg)
                (mask_dir(tmp, "depth", split) / f"{stem}.png").write_bytes(
                    _encode(metres_to_depth(rendered.depth), "PNG"))
                (camera_dir(tmp, split) / f"{stem}.json").write_text(
                    json.dumps(camera_json(camera), indent=2) + "\n")
                if "10k" in item.sets:
                    (mask_dir(tmp, "semseg", split) / f"{stem}.png").write_bytes(
                        _encode(rendered.semseg, "PNG"))
                if "100k" in item.sets:
                    (mask_dir(tmp, "drivable", split) / f"{stem}.png").write_bytes(
                        _encode(encode_drivable(rendered.drivable), "PNG"))
                    frames.append(_frame(item.name, rendered, item_domain))
                bar.update(1)
            frames.sort(key=lambda f: f["name"])
            next_id = 0
            for frame in frames:
                if "labels" not in frame:
                    empty_frames += 1
                if "labels" in frame:  # ids unique within the file, "id" first as in BDD100K
                    frame["labels"] = [{"id": str(next_id + k), **lab} for k, lab in enumerate(frame["labels"])]
                    next_id += len(frame["labels"])
                for label in frame.get("labels", []):
                    target = objects if label["category"] in DET_CATEGORIES else non_evaluated
                    target[label["category"]] += 1
            path = det_json_path(tmp, split)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(frames, indent=None, separators=(",", ":")) + "\n")
            attribute_frames.sort(key=lambda f: f["name"])
            attributes_json_path(tmp, split).write_text(
                json.dumps(attribute_frames, indent=None, separators=(",", ":")) + "\n")
        bar.close()

        images = {s: {sp: sum(s in it.sets for it in plan[sp]) for sp in SPLITS} for s in ("100k", "10k")}
        per_domain = {d.name: {s: {sp: sum(s in it.sets for it in plans[d.name][sp]) for sp in SPLITS}
                               for s in ("100k", "10k")} for d in doms}
        shared = {sp: sum(len(it.sets) == 2 for it in plan[sp]) for sp in SPLITS}
        one = len(doms) == 1
        metadata = {
            "generator": "synthdrive",
            "version": GENERATOR_VERSION,
            "domain": dom.name if one else None,
            "domains": [d.name for d in doms],
            # one domain: its parameters (what e.g. the caption writer reads); several: per domain
            **({"domain_params": asdict(dom)} if one else {"domains_params": {d.name: asdict(d) for d in doms}}),
            "images_per_domain": per_domain,
            "seed": seed,
            "image_size": list(image_size),
            "min_box_pixels": default_min_box_pixels(image_size) if min_box_pixels is None else min_box_pixels,
            "counts": counts_v,
            "overlap": overlap,
            "images": images,
            "shared_images": shared,
            "objects": dict(sorted(objects.items())),
            "non_evaluated": dict(sorted(non_evaluated.items())),
            "empty_frames": empty_frames,
            "schedule": {
                "empty_street": f"image index % {EMPTY_EVERY} == {EMPTY_AT}",
                "trailer": f"image index % {TRAILER_EVERY} == {TRAILER_AT}",
            },
            "units": {
                "depth": DEPTH_UNIT_DOC,
                "camera": CAMERA_DOC,
                "box2d": "inclusive pixel indices (Scalabel): x2 is the last covered column",
                "attributes": "labels/attributes/attributes_<split>.json: Scalabel frames {name, attributes "
                              "{weather, timeofday, scene}} of every image of the split (both image sets)",
                "jpeg_quality": JPEG_QUALITY,
            },
            "label_ids": {
                "semseg": list(SEMSEG_CLASSES),
                "drivable_on_disk": dict(DRIVABLE_DISK_IDS),
                "drivable_training": list(DRIVABLE_CLASSES),
                "det": list(DET_CATEGORIES),
            },
        }
        write_json(tmp / METADATA_NAME, metadata)
        from mtwork.data.synthdrive.contact_sheet import make_contact_sheet

        sheet_split = "val" if images["100k"]["val"] + images["10k"]["val"] else "train"
        if images["100k"][sheet_split] + images["10k"][sheet_split]:
            make_contact_sheet(tmp, tmp / CONTACT_SHEET_NAME, split=sheet_split)
        _swap_into_place(tmp, out_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "root": str(out_root),
        "domain": dom.name if len(doms) == 1 else None,
        "domains": [d.name for d in doms],
        "seed": seed,
        "image_size": list(image_size),
        "images": images,
        "images_per_domain": per_domain,
        "shared": shared,
        "objects": dict(sorted(objects.items())),
        "non_evaluated": dict(sorted(non_evaluated.items())),
        "empty_frames": empty_frames,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _swap_into_place(tmp: Path, out_root: Path) -> None:
    """Replace ``out_root`` by the finished ``tmp`` with renames (the old one is removed after)."""
    old: Optional[Path] = None
    if out_root.exists():
        old = out_root.parent / f".{out_root.name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(out_root, old)
    os.replace(tmp, out_root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
