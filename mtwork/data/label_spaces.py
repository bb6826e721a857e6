"""Shared label spaces: the one table from each dataset's own classes to the classes a protocol scores.

Readers take ``label_space="<name>"`` and emit semseg ids of that space (0..N-1, 255 = ignore). A
dataset's own ("native") classes and their on-disk ids live in its reader module; this module only says
which native class becomes which class of which space. A native class a space does not list is ignore.

Driving (the native classes go through Cityscapes' 19 train classes, then a space keeps a subset):

* ``cityscapes19``: the 19 Cityscapes train classes (= BDD100K's semseg classes), in train-id order.
* ``synthia16``: the 16 classes of the standard SYNTHIA -> Cityscapes protocol: cityscapes19 without
  terrain, truck and train (absent or near-absent in SYNTHIA-RAND-CITYSCAPES).
* ``synthetic8``: the 8 classes every one of Virtual KITTI 2, SYNTHIA (16) and Cityscapes has: road,
  building, pole, traffic light, traffic sign, vegetation, sky, car. Source 2 reports VKITTI2 ->
  Cityscapes mIoU over 8 classes without listing them; this is our reading (see docs/datasets.md).

Indoor (Taskonomy <-> NYUDv2):

* ``taskonomy17``: Taskonomy's pseudo-label classes without "uncertain": background + the 16 COCO
  objects of ``coco_selected_classes.txt``.
* ``nyuv2_40``: the 40 NYUDv2 classes of Gupta et al. (the NYUD_MT release's segmentation ids 1..40).
* ``indoor10``: the classes both have: the 9 objects that are one class in each (bed, books, chair,
  sofa, table, toilet, tv, sink, refrigerator) + background. Taskonomy's background means "certainly
  none of its 16 objects", so only NYU classes that can be none of them count as background there
  (wall, floor, ceiling, window, door); NYU's catch-alls (otherprop, otherfurniture, ...) and
  Taskonomy's objects NYU has no class for (bottle, vase, clock, ...) are ignore.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Sequence, Tuple

import numpy as np

from mtwork.data.batch import IGNORE_INDEX
from mtwork.data.bdd100k import SEMSEG_CLASSES
from mtwork.registry import Registry

CITYSCAPES19: Tuple[str, ...] = SEMSEG_CLASSES

# ---------------------------------------------------------------------------------------------
# Native class -> Cityscapes-19 class (driving). Names are exactly the dataset's own names.
# ---------------------------------------------------------------------------------------------

#: Cityscapes label-table names that carry a train id are the 19 classes themselves.
_CITYSCAPES_TO_C19: Dict[str, str] = {name: name for name in CITYSCAPES19}

#: Virtual KITTI 2 colors.txt categories. GuardRail, Misc, Undefined have no Cityscapes train class
#: (Cityscapes' own "guard rail" has train id 255); Cityscapes labels vans as cars.
_VKITTI2_TO_C19: Dict[str, str] = {
    "Terrain": "terrain", "Sky": "sky", "Tree": "vegetation", "Vegetation": "vegetation",
    "Building": "building", "Road": "road", "TrafficSign": "traffic sign", "TrafficLight": "traffic light",
    "Pole": "pole", "Truck": "truck", "Car": "car", "Van": "car",
}

#: SYNTHIA-RAND-CITYSCAPES README classes. Parking-slot, Road-work and Lanemarking have no Cityscapes
#: train class (Cityscapes' "parking" has train id 255; lane markings are part of its road).
_SYNTHIA_TO_C19: Dict[str, str] = {
    "sky": "sky", "Building": "building", "Road": "road", "Sidewalk": "sidewalk", "Fence": "fence",
    "Vegetation": "vegetation", "Pole": "pole", "Car": "car", "Traffic sign": "traffic sign",
    "Pedestrian": "person", "Bicycle": "bicycle", "Motorcycle": "motorcycle", "Traffic light": "traffic light",
    "Terrain": "terrain", "Rider": "rider", "Truck": "truck", "Bus": "bus", "Train": "train", "Wall": "wall",
}

_DRIVING: Dict[str, Dict[str, str]] = {
    "cityscapes": _CITYSCAPES_TO_C19,
    "vkitti2": _VKITTI2_TO_C19,
    "synthia": _SYNTHIA_TO_C19,
}

SYNTHIA16: Tuple[str, ...] = tuple(c for c in CITYSCAPES19 if c not in ("terrain", "truck", "train"))
SYNTHETIC8: Tuple[str, ...] = ("road", "building", "pole", "traffic light", "traffic sign", "vegetation", "sky", "car")

# ---------------------------------------------------------------------------------------------
# Indoor
# ---------------------------------------------------------------------------------------------

TASKONOMY17: Tuple[str, ...] = (
    "background", "bottle", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
)
NYUV2_40: Tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)
INDOOR10: Tuple[str, ...] = (
    "background", "bed", "books", "chair", "sofa", "table", "toilet", "tv", "sink", "refrigerator",
)
_TASKONOMY_TO_INDOOR10: Dict[str, str] = {
    "background": "background", "bed": "bed", "book": "books", "chair": "chair", "couch": "sofa",
    "dining table": "table", "toilet": "toilet", "tv": "tv", "sink": "sink", "refrigerator": "refrigerator",
}
_NYUV2_TO_INDOOR10: Dict[str, str] = {
    "wall": "background", "floor": "background", "ceiling": "background", "window": "background",
    "door": "background", "bed": "bed", "books": "books", "chair": "chair", "sofa": "sofa", "table": "table",
    "toilet": "toilet", "television": "tv", "sink": "sink", "refridgerator": "refrigerator",
}


# ---------------------------------------------------------------------------------------------
# Label spaces
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSpace:
    """Classes of one space (id = index) and, per dataset, {native class name: class of this space}."""

    name: str
    classes: Tuple[str, ...]
    mapping: Mapping[str, Mapping[str, str]] = field(repr=False)
    description: str = ""

    def __post_init__(self):
        for dataset, table in self.mapping.items():
            bad = sorted(set(table.values()) - set(self.classes))
            if bad:
                raise ValueError(f"label space '{self.name}': {dataset} maps to classes it does not have: {bad}")

    @property
    def datasets(self) -> Tuple[str, ...]:
        return tuple(sorted(self.mapping))

    def ids(self, dataset: str) -> Dict[str, int]:
        """{native class name: id in this space} for ``dataset``; names not listed are ignore (255)."""
        if dataset not in self.mapping:
            raise KeyError(f"label space '{self.name}' has no mapping for dataset '{dataset}' "
                           f"(it maps: {', '.join(self.datasets)})")
        index = {c: i for i, c in enumerate(self.classes)}
        return {native: index[cls] for native, cls in self.mapping[dataset].items()}

    def lookup_table(self, dataset: str, native: Mapping[int, str], size: int = 256) -> np.ndarray:
        """(size,) uint8: native on-disk id -> id of this space (255 for ignore and for ids not in ``native``).

        ``native``: {on-disk id: native class name} of the dataset (its reader's table). A name that
        the mapping lists but ``native`` lacks is a programming error and raises.
        """
        ids = self.ids(dataset)
        unknown = sorted(set(ids) - set(native.values()))
        if unknown:
            raise ValueError(f"label space '{self.name}' maps {dataset} classes {unknown} that its reader does not know")
        lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
        for disk_id, name in native.items():
            if name in ids:
                lut[disk_id] = ids[name]
        return lut


LABEL_SPACES = Registry("label space")


def _register(space: LabelSpace) -> LabelSpace:
    LABEL_SPACES.register(space.name)(lambda: space)
    return space


def _subset_of_c19(classes: Sequence[str]) -> Dict[str, Dict[str, str]]:
    keep = set(classes)
    return {ds: {n: c for n, c in table.items() if c in keep} for ds, table in _DRIVING.items()}


_register(LabelSpace("cityscapes19", CITYSCAPES19, _subset_of_c19(CITYSCAPES19),
                     "the 19 Cityscapes train classes"))
_register(LabelSpace("synthia16", SYNTHIA16, _subset_of_c19(SYNTHIA16),
                     "SYNTHIA -> Cityscapes: cityscapes19 without terrain, truck, train"))
_register(LabelSpace("synthetic8", SYNTHETIC8, _subset_of_c19(SYNTHETIC8),
                     "classes common to Virtual KITTI 2, SYNTHIA (16) and Cityscapes"))
_register(LabelSpace("taskonomy17", TASKONOMY17, {"taskonomy": {n: n for n in TASKONOMY17}},
                     "Taskonomy's background + 16 COCO objects ('uncertain' is ignore)"))
_register(LabelSpace("nyuv2_40", NYUV2_40, {"nyuv2": {n: n for n in NYUV2_40}},
                     "the 40 NYUDv2 classes (Gupta et al. 2013)"))
_register(LabelSpace("indoor10", INDOOR10, {"taskonomy": _TASKONOMY_TO_INDOOR10, "nyuv2": _NYUV2_TO_INDOOR10},
                     "classes common to Taskonomy and NYUDv2 + background"))


def get_label_space(name: str) -> LabelSpace:
    """The registered label space ``name`` (KeyError listing the known ones)."""
    return LABEL_SPACES.create(name)


def label_spaces_for(dataset: str) -> Tuple[str, ...]:
    """Names of the label spaces that map ``dataset``."""
    return tuple(n for n in LABEL_SPACES.names() if dataset in get_label_space(n).mapping)


def markdown_table() -> str:
    """The label spaces as a Markdown table (docs/datasets.md embeds it; a test keeps them equal)."""
    lines = ["| label space | classes | datasets | what |", "|---|---|---|---|"]
    for name in LABEL_SPACES.names():
        space = get_label_space(name)
        lines.append(f"| `{name}` | {len(space.classes)}: {', '.join(space.classes)} | "
                     f"{', '.join(space.datasets)} | {space.description} |")
    return "\n".join(lines) + "\n"
