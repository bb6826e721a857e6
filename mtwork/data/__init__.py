"""Datasets: one reader per on-disk format (``mtwork.data.registry``), transforms, collate, checks, downloads."""
from mtwork.data.registry import DATASETS, create_dataset, dataset_names

__all__ = ["DATASETS", "create_dataset", "dataset_names"]
