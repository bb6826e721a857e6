"""Captions for CLIP pretraining, generated from a BDD100K-layout data set's own labels.

SynthDrive (and real BDD100K) images carry labels, not captions. A caption is written from what the
labels say about an image:

* **objects and counts** from the det_20 JSON (instance labels: "3 cars, a bus and 2 pedestrians");
  images without a det frame but with a semantic mask name the object classes visible in it, without
  counts (a semantic mask cannot separate touching instances);
* **surfaces and structures present** in the semantic mask (road, sidewalk, building, ..., the
  largest first; the object classes of the mask are named with the objects);
* **drivable area** classes present in the drivable mask (direct, alternative);
* **time of day, weather and scene type** from the frame's Scalabel attributes, and for images without
  a det frame from the SynthDrive domain in ``synthdrive.json`` (real BDD100K: omitted).

Example: ``"a dusk photo of a city street with 3 cars, a bus and 2 pedestrians in fog. showing road,
building, sky and sidewalk. drivable area: direct and alternative."``

The class words are exactly the task class names of ``mtwork.data.bdd100k`` (plurals for counted
objects), so the text tower learns the words the LV-Adapter's prompts later use.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mtwork.data.bdd100k import (
    DET_CATEGORIES,
    DRIVABLE_CLASSES,
    IMAGE_SETS,
    SEMSEG_CLASSES,
    DatasetError,
    decode_drivable,
    det_json_path,
    image_dir,
    list_images,
    list_masks,
    load_frame_attributes,
    mask_dir,
    parse_det_frames,
    read_mask,
)

#: Plural of each detection category (counted objects).
PLURALS: Dict[str, str] = {
    "pedestrian": "pedestrians", "rider": "riders", "car": "cars", "truck": "trucks", "bus": "buses",
    "train": "trains", "motorcycle": "motorcycles", "bicycle": "bicycles",
    "traffic light": "traffic lights", "traffic sign": "traffic signs",
}
#: Scalabel ``timeofday`` -> the word in "a ... photo"; unknown values are left out.
TIMEOFDAY_WORDS: Dict[str, str] = {"daytime": "daytime", "dawn/dusk": "dusk", "night": "night"}
#: Scalabel ``weather`` -> the phrase ending the first sentence ("clear" says nothing).
WEATHER_PHRASES: Dict[str, str] = {
    "clear": "", "foggy": "in fog", "rainy": "in rain", "snowy": "in snow",
    "overcast": "under an overcast sky", "partly cloudy": "under a partly cloudy sky",
}
#: Scalabel ``scene`` -> the noun after "a photo of a" (unknown values: "street").
SCENE_NOUNS: Dict[str, str] = {
    "city street": "city street", "residential": "residential street", "highway": "highway",
    "parking lot": "parking lot", "tunnel": "tunnel", "gas stations": "gas station",
}
#: A class is "present" in a mask when it covers at least this fraction of the labeled pixels.
MIN_FRACTION = 0.001
#: At most this many mask classes are named (the largest first), to keep captions within the text
#: tower's context.
MAX_MASK_CLASSES = 8

_SEMSEG_THINGS = frozenset(("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
                            "traffic light", "traffic sign"))


@dataclass(frozen=True)
class SceneLabels:
    """What the labels say about one image (every field optional: images carry some labels only).

    counts: {detection category: number of boxes} when the image has a det frame (empty dict: an
        empty street), None without one.
    semseg: semantic classes present in the mask, largest area first; () without a mask.
    drivable: drivable classes other than background present in the mask; () without a mask.
    timeofday, weather, scene: Scalabel attribute values (None when unknown).
    """

    name: str
    image: Path
    counts: Optional[Dict[str, int]] = None
    semseg: Tuple[str, ...] = ()
    drivable: Tuple[str, ...] = ()
    timeofday: Optional[str] = None
    weather: Optional[str] = None
    scene: Optional[str] = None


def count_phrase(category: str, n: int) -> str:
    """"a car", "an X", "3 cars"."""
    if n == 1:
        article = "an" if category[0] in "aeiou" else "a"
        return f"{article} {category}"
    return f"{n} {PLURALS.get(category, category + 's')}"


def join_words(words: Sequence[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def describe(labels: SceneLabels) -> str:
    """The caption of one image (see the module docstring for the grammar)."""
    tod = TIMEOFDAY_WORDS.get(labels.timeofday or "")
    head = f"a {tod} photo of a" if tod else "a photo of a"
    head += " " + SCENE_NOUNS.get(labels.scene or "", "street")
    if labels.counts is not None:
        objects = [count_phrase(c, labels.counts[c]) for c in DET_CATEGORIES if labels.counts.get(c)]
        head += f" with {join_words(objects)}" if objects else " with no traffic"
    elif labels.semseg:
        things = [c for c in labels.semseg if c in _SEMSEG_THINGS]
        if things:
            head += f" with {join_words(things)}"
    weather = WEATHER_PHRASES.get(labels.weather or "", "")
    sentences = [head + (f" {weather}" if weather else "") + "."]
    stuff = [c for c in labels.semseg if c not in _SEMSEG_THINGS]  # objects are named above
    if stuff:
        sentences.append(f"showing {join_words(stuff[:MAX_MASK_CLASSES])}.")
    if labels.drivable:
        sentences.append(f"drivable area: {join_words(labels.drivable)}.")
    return " ".join(sentences)


def mask_classes(mask: np.ndarray, class_names: Sequence[str], min_fraction: float = MIN_FRACTION) -> Tuple[str, ...]:
    """Classes (training ids = index into ``class_names``) covering >= ``min_fraction`` of the mask's
    labeled pixels, largest first (ties in class order); ignore (255) pixels are not counted."""
    counts = np.bincount(mask.reshape(-1), minlength=256)[: len(class_names)]
    total = counts.sum()
    if total == 0:
        return ()
    order = sorted(range(len(class_names)), key=lambda k: (-counts[k], k))
    return tuple(class_names[k] for k in order if counts[k] > 0 and counts[k] >= min_fraction * total)


def _read_det_json(root: Path, split: str) -> Tuple[Dict[str, list], Dict[str, Mapping[str, str]]]:
    """({name: boxes}, {name: attributes}) of the split's det_20 file ({} when it does not exist)."""
    path = det_json_path(root, split)
    if not path.is_file():
        return {}, {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise DatasetError(f"{path}: not valid JSON ({err})") from None

    def fail(message: str) -> None:
        raise DatasetError(message)

    frames = parse_det_frames(data, str(path), fail, Counter())
    attributes = {
        f["name"]: f.get("attributes") or {}
        for f in data if isinstance(f, dict) and isinstance(f.get("name"), str)
    }
    return frames, attributes


def scene_labels(root: str | os.PathLike, split: str = "train", min_fraction: float = MIN_FRACTION) -> List[SceneLabels]:
    """SceneLabels of every image of ``split`` (both image sets, one entry per file name, sorted).

    An image in both sets (same name) combines its det frame, drivable mask and semantic mask.
    """
    root = Path(root)
    images: Dict[str, Path] = {}
    for image_set in reversed(IMAGE_SETS):  # the 100k file wins, as in BDD100KDataset
        images.update(list_images(image_dir(root, image_set, split)))
    if not images:
        raise DatasetError(f"no images found under {root}/images/*/{split}")
    frames, _ = _read_det_json(root, split)
    semseg_masks = list_masks(mask_dir(root, "semseg", split))
    drivable_masks = list_masks(mask_dir(root, "drivable", split))
    # every image's weather / time of day / scene: its det frame's, else the frame list SynthDrive writes
    # for every image (segmentation-only ones too, and several visual presets in one root)
    attributes = load_frame_attributes(root)

    out: List[SceneLabels] = []
    for name in sorted(images):
        stem = Path(name).stem
        counts = None
        if name in frames:
            counts = dict(Counter(DET_CATEGORIES[label] for label, *_ in frames[name]))
        semseg: Tuple[str, ...] = ()
        if stem in semseg_masks:
            semseg = mask_classes(read_mask(semseg_masks[stem]), SEMSEG_CLASSES, min_fraction)
        drivable: Tuple[str, ...] = ()
        if stem in drivable_masks:
            present = mask_classes(decode_drivable(read_mask(drivable_masks[stem]).astype(np.uint8)),
                                   DRIVABLE_CLASSES, min_fraction)
            drivable = tuple(c for c in DRIVABLE_CLASSES[1:] if c in present)  # class order, no background
        attrs = {k: v for k, v in attributes.get(name, {}).items() if isinstance(v, str)}
        out.append(SceneLabels(
            name=name, image=images[name], counts=counts, semseg=semseg, drivable=drivable,
            timeofday=attrs.get("timeofday"), weather=attrs.get("weather"), scene=attrs.get("scene"),
        ))
    return out


def caption_pairs(root: str | os.PathLike, split: str = "train", min_fraction: float = MIN_FRACTION) -> List[Tuple[Path, str]]:
    """[(image path, caption)] for every image of ``split``, sorted by file name."""
    return [(labels.image, describe(labels)) for labels in scene_labels(root, split, min_fraction)]
