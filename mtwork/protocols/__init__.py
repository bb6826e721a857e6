"""Source 2's protocols: which tasks train on which domain, from which run, and what is evaluated where.

A run's protocol is the segment of its run id (``mtwork.plan.RunSpec.protocol``); each is a
:class:`RunProtocol` registered in ``PROTOCOLS`` by one module of this package:

    mtl        (mtl.py)        the multi-task runs on source 2's source domain (``vit.source_domain``)
    zeroshot   (zero_shot.py)  zero-shot task transfer: an mtl run finetuned on the target domain with
                               the labels of ``vit.zero_shot.finetune_tasks``; the other tasks untrained
    uda        (uda.py)        unsupervised domain adaptation: an mtl run adapted with labelled source and
                               unlabelled target batches, per-task output-space discriminators
    oracle     (oracle.py)     a single-task Swin trained on the target domain's labels (the upper row)

Domain generalization (dg.py) trains nothing of its own: every mtl run is evaluated on the unseen
domains of ``vit.dg_domains``, and the mtl runs a transfer starts from are also evaluated on its
target untrained (the tables' "source only" rows).

Everything here is plain data (no torch): Snakemake plans from it. The training recipes live beside
(``zero_shot_recipe.py``, ``uda_recipe.py``) and are imported only when a run trains.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from mtwork.plan import RunSpec
from mtwork.protocols.base import PROTOCOLS, RunProtocol

# registration: importing the modules registers their protocol
from mtwork.protocols import mtl as _mtl  # noqa: E402,F401  (isort: keep the registry first)
from mtwork.protocols import oracle as _oracle  # noqa: E402,F401
from mtwork.protocols import uda as _uda  # noqa: E402,F401
from mtwork.protocols import zero_shot as _zero_shot  # noqa: E402,F401

__all__ = ["PROTOCOLS", "RunProtocol", "create_protocol", "protocol_of", "plan_protocol_runs", "evaluation_domains"]


def create_protocol(name: str) -> RunProtocol:
    """The registered protocol ``name`` (a KeyError lists the known ones)."""
    return PROTOCOLS.create(name)


def protocol_of(run: RunSpec) -> RunProtocol:
    return create_protocol(run.protocol)


def plan_protocol_runs(params: Mapping[str, Any]) -> List[RunSpec]:
    """Every transfer run the settings ask for (zeroshot, uda, oracle; in that order)."""
    runs: List[RunSpec] = []
    for name in ("zeroshot", "uda", "oracle"):
        runs.extend(create_protocol(name).runs(params))
    return list(dict.fromkeys(runs))


def evaluation_domains(params: Mapping[str, Any], runs: List[RunSpec]) -> Dict[RunSpec, List[str]]:
    """{run: the domains it is evaluated on, its training domain first} for source 2's ``runs`` (the
    whole plan): a protocol run on its target; an mtl run on the source domain, every DG domain, and the
    target of each transfer run that starts from it (untrained there: the "source only" rows)."""
    out: Dict[RunSpec, List[str]] = {run: list(protocol_of(run).eval_domains(params, run)) for run in runs}
    for run in runs:
        init: Optional[RunSpec] = protocol_of(run).init_run(run)
        if init is not None and init in out and run.target not in out[init]:
            out[init].append(run.target)
    return out
