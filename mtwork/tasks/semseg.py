"""Task ``semseg``: BDD100K/Cityscapes semantic segmentation, 19 train ids (0..18), 255 = ignore."""
from __future__ import annotations

from typing import Sequence

from mtwork.tasks.base import TASKS
from mtwork.tasks.segmentation import SegmentationTask


@TASKS.register("semseg")
class SemsegTask(SegmentationTask):
    name = "semseg"

    @staticmethod
    def _class_names() -> Sequence[str]:
        # imported lazily: the dataset module is the one place the class list lives
        from mtwork.data.bdd100k import SEMSEG_CLASSES

        return SEMSEG_CLASSES
