"""The target oracle (protocol ``oracle``): the paper's "1-task Swin target (Oracle)", a single-task Swin
(paradigm ``single_task``: the whole encoder trains) trained on the target domain's labels with source
2's schedule (``vit.epochs``), one run per task of each transfer protocol whose block says ``oracle:
true``. The transfer tables show it as their upper row; being single-task runs on the target, they are
also the Δm baselines of the rows evaluated there."""
from __future__ import annotations

from typing import Any, List, Mapping

from mtwork.plan import RunSpec
from mtwork.protocols.base import PROTOCOLS, RunProtocol, enabled_block
from mtwork.protocols.uda import BLOCK as UDA_BLOCK

NAME = "oracle"


def oracle_tasks(params: Mapping[str, Any], block: str) -> List[str]:
    """The tasks of protocol block ``block`` (zero_shot: all of vit.tasks; uda: vit.uda.tasks)."""
    vit = params["vit"]
    return [t for t in vit["tasks"] if block != UDA_BLOCK or t in vit[UDA_BLOCK]["tasks"]]


@PROTOCOLS.register(NAME)
class OracleProtocol(RunProtocol):
    name = NAME

    def runs(self, params: Mapping[str, Any]) -> List[RunSpec]:
        vit = params["vit"]
        runs: List[RunSpec] = []
        for block in ("zero_shot", UDA_BLOCK):
            spec = enabled_block(params, block)
            if spec is None or not spec["oracle"]:
                continue
            runs.extend(RunSpec(vit["source"], "single_task", (task,), seed, protocol=NAME, target=spec["target_domain"])
                        for seed in vit["seeds"] for task in oracle_tasks(params, block))
        return list(dict.fromkeys(runs))
