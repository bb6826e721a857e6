"""Domain generalization: train on source 2's source domain, evaluate on domains never seen in training
(Taskonomy -> NYUDv2 at paper scale; SynthDrive presets in the embedded default). Nothing trains for it:
every mtl run on the full task set, and every single-task run, is evaluated on each domain of
``vit.dg_domains`` (null: ``data.dg_domains``), and the ``vit_dg`` table compares the methods there, each against the single-task runs evaluated on the same
domain (Δm)."""
from __future__ import annotations

from typing import Any, List, Mapping

from mtwork.plan import vit_dg_domains


def dg_domains(params: Mapping[str, Any]) -> List[str]:
    """The unseen domains every mtl run of source 2 is evaluated on."""
    return vit_dg_domains(params)
