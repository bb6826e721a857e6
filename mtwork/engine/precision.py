"""Mixed precision: which autocast a run uses (``train.amp``) and the fp16 gradient scaler.

``train.amp`` (params.yaml):
    auto   bf16 autocast on CUDA, none on CPU (the default; CPU bf16 is slower than fp32 on most CPUs)
    none   fp32 everywhere
    bf16   bf16 autocast on any device (on CPU: what the tests use to catch the dtype errors a GPU run
           would hit); bf16 has fp32's exponent range, so no loss scaling is needed
    fp16   fp16 autocast with ``torch.amp.GradScaler`` (GPUs without bf16, e.g. V100 and T4): the loss
           is scaled before backward so small gradients do not flush to zero in fp16; a step whose
           gradients overflow is skipped and the scale lowered. The scaler's state is part of every
           epoch checkpoint.
Weights, optimizer state and checkpoints stay fp32 in every mode; losses and metrics are computed on
fp32 copies of the outputs.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional

import torch

from mtwork.config import AMP_MODES  # the one list of modes (params.yaml's train.amp)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(mode: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, none elsewhere; other modes as given (none, bf16, fp16)."""
    if mode not in AMP_MODES:
        raise ValueError(f"train.amp must be one of {list(AMP_MODES)}, got {mode!r}")
    if mode == "auto":
        return "bf16" if device.type == "cuda" else "none"
    return mode


def autocast(device: torch.device, mode: str):
    """The autocast context of ``mode`` (resolved with :func:`resolve_amp`) on ``device``."""
    resolved = resolve_amp(mode, device)
    if resolved == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[resolved])


class Precision:
    """Autocast for the forward pass and, for fp16, the gradient scaler around backward and step.

    Use per step: ``with precision.autocast(): loss = ...``; ``precision.backward(loss)``; at the
    accumulation boundary ``precision.step(optimizer)`` (unscales, skips on inf/NaN gradients, updates
    the scale). Without fp16 these are plain ``loss.backward()`` and ``optimizer.step()``.
    """

    def __init__(self, mode: str, device: torch.device):
        self.device = device
        self.mode = resolve_amp(mode, device)
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(device.type) if self.mode == "fp16" else None)

    def autocast(self):
        if self.mode == "none":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.mode])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
