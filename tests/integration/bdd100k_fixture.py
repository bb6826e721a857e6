"""A tiny data set in BDD100K's real on-disk layout with BDD100K's real frame attributes.

SynthDrive draws the pictures and labels (the BDD100K layout: images/{100k,10k}/, labels/det_20/,
labels/drivable/masks/, labels/sem_seg/masks/), at BDD100K's 720x1280 unless asked otherwise; then every
frame's ``attributes`` are rewritten with the values the official labels use, so that the paper-scale
domains (clear daytime as the source; night, rainy, snowy, foggy for domain generalization) each select
some images of every split, as they do on the real data set.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

#: Frame attributes cycled over each split's images (the official values: weather, timeofday, scene).
BDD_ATTRIBUTES = (
    {"weather": "clear", "timeofday": "daytime", "scene": "city street"},
    {"weather": "overcast", "timeofday": "night", "scene": "highway"},
    {"weather": "rainy", "timeofday": "daytime", "scene": "residential"},
    {"weather": "clear", "timeofday": "daytime", "scene": "highway"},
    {"weather": "snowy", "timeofday": "dawn/dusk", "scene": "city street"},
    {"weather": "foggy", "timeofday": "daytime", "scene": "city street"},
)


def write_bdd100k_fixture(root: Path, image_size: Tuple[int, int] = (720, 1280),
                          counts: Dict[str, Dict[str, int]] | None = None) -> Path:
    """Write the fixture into ``root`` (BDD100K layout) and return it. Per split, image i (sorted by
    name, both image sets) gets ``BDD_ATTRIBUTES[i % 6]``; det_20 frames and the attribute lists agree."""
    from mtwork.data.synthdrive import generate_synthdrive

    counts = counts or {"det": {"train": 6, "val": 6}, "seg": {"train": 4, "val": 4}}
    generate_synthdrive(root, domain="clear_day", seed=1, image_size=image_size, counts=counts, overlap=0.5,
                        progress=False)
    for split in ("train", "val"):
        names = sorted({p.name for s in ("100k", "10k") for p in (root / "images" / s / split).glob("*.jpg")})
        chosen = {name: BDD_ATTRIBUTES[i % len(BDD_ATTRIBUTES)] for i, name in enumerate(names)}
        for path in (root / "labels" / "det_20" / f"det_{split}.json",
                     root / "labels" / "attributes" / f"attributes_{split}.json"):
            frames = json.loads(path.read_text())
            for frame in frames:
                frame["attributes"] = dict(chosen[frame["name"]])
            path.write_text(json.dumps(frames))
    return root
