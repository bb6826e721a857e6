"""The dataset registry: one reader per on-disk format, created by name.

    create_dataset("cityscapes", root, "val", tasks=("semseg", "depth"), transform=EvalTransform(...),
                   label_space="synthetic8")

Registered formats: ``bdd100k`` (``mtwork.data.bdd100k.BDD100KDataset``, Cityscapes-19 semseg plus
drivable and detection) and the dense-label readers ``cityscapes``, ``vkitti2``, ``synthia``,
``taskonomy``, ``nyuv2`` (``mtwork.data.dense.DenseDataset`` subclasses). Each reader module registers
itself; they are imported on first use so that importing this module stays cheap.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from mtwork.registry import Registry

DATASETS = Registry("dataset")

#: Modules whose import registers a reader.
READER_MODULES = (
    "mtwork.data.cityscapes",
    "mtwork.data.vkitti2",
    "mtwork.data.synthia",
    "mtwork.data.taskonomy",
    "mtwork.data.nyuv2",
)
_loaded = False


def _load_readers() -> None:
    global _loaded
    if not _loaded:
        for module in READER_MODULES:
            importlib.import_module(module)
        _loaded = True


@DATASETS.register("bdd100k")
def _bdd100k(root: str | os.PathLike, split: str, tasks: Optional[Sequence[str]] = None,
             transform: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
             label_space: Optional[str] = None, attributes: Optional[Mapping[str, Any]] = None):
    from mtwork.data.bdd100k import BDD100KDataset

    if label_space not in (None, "cityscapes19"):
        raise ValueError(f"bdd100k: semseg masks are Cityscapes-19 train ids; label_space must be "
                         f"'cityscapes19' or None, got '{label_space}'")
    if tasks is None:
        return BDD100KDataset(root, split, transform=transform, attributes=attributes)
    return BDD100KDataset(root, split, tasks=tuple(tasks), transform=transform, attributes=attributes)


def create_dataset(name: str, root: str | os.PathLike, split: str, tasks: Optional[Sequence[str]] = None,
                   transform: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None, **kwargs: Any):
    """The reader of format ``name`` for ``split`` of ``root``; ``kwargs`` go to the reader
    (``label_space``, ``strict`` and the format's own options, see its docstring)."""
    _load_readers()
    return DATASETS.create(name, root, split, tasks=tasks, transform=transform, **kwargs)


def open_domain(params: Mapping[str, Any], domain: str, split: str, tasks: Optional[Sequence[str]] = None,
                transform: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None,
                root: str | os.PathLike | None = None, **kwargs: Any):
    """The reader of a domain of ``params`` (data.domains): its dataset's format, folder (``root`` when
    given, e.g. the path the workflow passed, else the dataset's) and attribute filter; ``split``,
    ``tasks``, ``transform`` and ``kwargs`` as for ``create_dataset``. An unknown domain is a ParamsError
    naming the known ones."""
    from mtwork.config import ParamsError
    from mtwork.plan import domain as domain_spec

    if domain not in params["data"]["domains"]:
        raise ParamsError(f"domain '{domain}' is not in data.domains (known: {', '.join(params['data']['domains'])})")
    spec = domain_spec(params, domain)
    if spec.attributes is not None:
        kwargs["attributes"] = spec.attributes
    return create_dataset(spec.format, spec.root if root is None else root, split, tasks=tasks, transform=transform,
                          **kwargs)


def dataset_names() -> list[str]:
    """Names of every registered format."""
    _load_readers()
    return DATASETS.names()


def get_reader(name: str):
    """The registered factory (a ``DenseDataset`` subclass for the dense formats)."""
    _load_readers()
    return DATASETS.get(name)
