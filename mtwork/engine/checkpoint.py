"""Epoch checkpoints: everything needed to continue a run as if it had never stopped.

``epoch_NNN.pt`` (NNN = epochs done, 1-based), written atomically by rank 0 after every epoch::

    format         CHECKPOINT_FORMAT
    epoch          epochs done (0-based index of the last finished epoch + 1 = NNN)
    step           optimizer steps done
    params_hash    the run's hash: a file written under other parameters is never resumed from
    model          the model's full state_dict
    optimizer      AdamW state (moments, step counts) of both parameter groups
    scheduler      the LambdaLR state (its step counter; the schedule itself is rebuilt from params)
    scaler         the fp16 GradScaler state, or None
    recipe         what the line of work keeps besides the model (source 2: the loss balancer)
    rng            python ``random``, numpy and torch (CPU, and every CUDA device) generator states
    data           {"seed", "epoch"}: the data order and each sample's augmentation are derived from
                   these (``mtwork.engine.sampler``), so they are the loader's and augmentations' state
    log_epochs     the log entries of the epochs done

Resume looks at the newest file first. A file that cannot be read (truncated, empty, not a
checkpoint) is reported by name and the one before is tried; a file with another ``params_hash`` is
stale, and all epoch files are then removed (the run starts over).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

CHECKPOINT_FORMAT = 1
_EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.pt$")
REQUIRED_KEYS = ("format", "epoch", "step", "params_hash", "model", "optimizer", "scheduler", "rng", "log_epochs")


def epoch_file(out_dir: Path, epochs_done: int) -> Path:
    return Path(out_dir) / f"epoch_{epochs_done:03d}.pt"


def epoch_files(out_dir: Path) -> List[Path]:
    """The run directory's epoch files, oldest first (by the number in the name)."""
    found = [(int(m.group(1)), p) for p in Path(out_dir).glob("epoch_*.pt") if (m := _EPOCH_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune(out_dir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` epoch files."""
    for old in epoch_files(out_dir)[:-keep] if keep > 0 else epoch_files(out_dir):
        old.unlink(missing_ok=True)


def rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(ValueError):
    """An epoch file that cannot be used; the message names it."""


def load(path: Path) -> Dict[str, Any]:
    """Read and check one epoch file (on CPU); CheckpointError naming the file when it is unusable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn file fails in many ways: zip errors, EOF, unpickling errors
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an epoch checkpoint (a {type(state).__name__}, not a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not an epoch checkpoint of this mtwork (missing {', '.join(missing)})")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']}, this mtwork reads {CHECKPOINT_FORMAT}")
    return state


@dataclass
class ResumePoint:
    """What resume found: the state to continue from (None: start over) and what it passed over."""

    state: Optional[Dict[str, Any]] = None
    path: Optional[Path] = None
    damaged: List[Tuple[str, str]] = field(default_factory=list)  # (file name, why)
    stale: List[str] = field(default_factory=list)


def find_resume(out_dir: Path, params_hash: str) -> ResumePoint:
    """The newest usable epoch file of ``out_dir`` written under ``params_hash`` (module docstring).

    Stale files (another hash) are listed in ``stale`` for the caller to remove; damaged ones in
    ``damaged`` with the reason. Only reads files.
    """
    point = ResumePoint()
    for path in reversed(epoch_files(out_dir)):
        try:
            state = load(path)
        except CheckpointError as exc:
            point.damaged.append((path.name, str(exc)))
            continue
        if state["params_hash"] != params_hash:
            point.stale = [p.name for p in epoch_files(out_dir)]
            return ResumePoint(damaged=point.damaged, stale=point.stale)
        point.state, point.path = state, path
        return point
    return point
