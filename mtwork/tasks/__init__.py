"""Tasks: importing this package registers every task in ``TASKS`` (see ``mtwork.tasks.base``)."""
from mtwork.tasks import depth, det, drivable, edges, normals, semseg  # noqa: F401  (imported for registration)
from mtwork.tasks.base import TASKS, FeatureSpec, Metric, Task, create_task

__all__ = ["TASKS", "FeatureSpec", "Metric", "Task", "create_task"]
