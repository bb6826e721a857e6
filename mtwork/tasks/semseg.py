"""Task ``semseg``: BDD100K/Cityscapes semantic segmentation, 19 train ids (0..18), 255 = ignore.

``classes``: another label space's class list (``mtwork.data.label_spaces``, e.g. the 8 classes common
to Virtual KITTI 2 and Cityscapes), whose ids 0..K-1 the readers emit when given that space."""
from __future__ import annotations

from typing import Sequence

from mtwork.tasks.base import TASKS
from mtwork.tasks.segmentation import SegmentationTask


@TASKS.register("semseg")
class SemsegTask(SegmentationTask):
    name = "semseg"

    def __init__(self, head_channels: int | None = None, norm: str = "gn", classes: Sequence[str] | None = None):
        super().__init__(head_channels, norm)
        if classes is not None:
            if not classes or len(set(classes)) != len(classes):
                raise ValueError(f"semseg classes must be a non-empty list of distinct names, got {list(classes)}")
            self.class_names = list(classes)
            self.num_classes = len(self.class_names)

    @staticmethod
    def _class_names() -> Sequence[str]:
        # imported lazily: the dataset module is the one place the class list lives
        from mtwork.data.bdd100k import SEMSEG_CLASSES

        return SEMSEG_CLASSES
