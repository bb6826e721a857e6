"""Protocol ``mtl``: source 2's multi-task runs, trained on its source domain (``vit.source_domain``),
evaluated there and, untrained, on every domain of ``vit.dg_domains`` (``mtwork.protocols.dg``): the runs
on the full task set ``vit.tasks`` and the single-task runs, which the ``vit_dg`` table compares."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from mtwork.plan import PROTOCOL_MTL, RunSpec
from mtwork.protocols.base import PROTOCOLS, RunProtocol, source_domain
from mtwork.protocols.dg import dg_domains


@PROTOCOLS.register(PROTOCOL_MTL)
class MtlProtocol(RunProtocol):
    name = PROTOCOL_MTL

    def train_domains(self, params: Mapping[str, Any], run: RunSpec) -> Tuple[str, Optional[str]]:
        return source_domain(params), None

    def eval_domains(self, params: Mapping[str, Any], run: RunSpec) -> List[str]:
        # the DG table shows the full task set and its single-task baselines: only those go to the unseen domains
        shown = run.paradigm == "single_task" or set(run.tasks) == set(params["vit"]["tasks"])
        return [source_domain(params), *(dg_domains(params) if shown else [])]
