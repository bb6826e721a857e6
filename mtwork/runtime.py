"""Run-time plumbing shared by training, evaluation and pretraining: seeding, device, threads, hashing.

Mixed precision lives in ``mtwork.engine.precision``; data parallelism in ``mtwork.engine.distributed``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Any, Mapping

import numpy as np
import torch

from mtwork.errors import UserError


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch.Generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for 'cuda' without a GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is visible (set train.device: auto or cpu)")
    return torch.device(name)


def set_threads(threads: int) -> None:
    # Snakemake runs several jobs side by side; each job keeps to its share of the cores.
    torch.set_num_threads(max(1, threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, threads)))


def params_hash(obj: Mapping[str, Any]) -> str:
    """A short stable hash of (a subset of) resolved parameters, recorded with every run."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

