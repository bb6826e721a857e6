"""The method registry: how a backbone is adapted, as the extra modules a method inserts.

A method factory takes the backbone's per-scale channels and its own explicit options and returns the
module applied to the backbone's list of maps before the neck, or None when the method adds nothing
(``finetune``: the backbone itself is trained, or frozen in the adapt stage).
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from mtwork.registry import Registry

METHODS = Registry("method")


def create_method(name: str, channels: Sequence[int], **kwargs: Any) -> nn.Module | None:
    """Build method ``name`` for a backbone with per-scale ``channels``; None when it adds no module."""
    return METHODS.create(name, list(channels), **kwargs)


@METHODS.register("finetune")
def finetune(channels: Sequence[int], reduction: int | None = None) -> None:
    """No extra modules. ``reduction`` (the adapters' option) is accepted and unused so that one call
    site can build any method with the same options, without swallowing unknown keywords."""
    return None
