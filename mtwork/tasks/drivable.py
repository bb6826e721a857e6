"""Task ``drivable``: BDD100K drivable area, 3 labels (0 background, 1 direct, 2 alternative)."""
from __future__ import annotations

from typing import Sequence

from mtwork.tasks.base import TASKS
from mtwork.tasks.segmentation import SegmentationTask


@TASKS.register("drivable")
class DrivableTask(SegmentationTask):
    name = "drivable"

    @staticmethod
    def _class_names() -> Sequence[str]:
        # imported lazily: the dataset module is the one place the class list lives
        from mtwork.data.bdd100k import DRIVABLE_CLASSES

        return DRIVABLE_CLASSES
