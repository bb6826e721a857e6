"""The interface of a run protocol (``RunProtocol``) and its registry; see the package docstring."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from mtwork.plan import PROTOCOL_MTL, RunSpec, vit_source_domain
from mtwork.registry import Registry

PROTOCOLS = Registry("run protocol")

#: The settings a transfer run reads beyond those of every source-2 run (``mtwork.workflow``).
Keys = List[str]


class RunProtocol:
    """What a protocol says about its runs. Subclasses set ``name`` (the run-id segment), ``recipe``
    ("module:Class" of the training recipe, imported when a run trains) and override what differs."""

    name: str = ""
    recipe: str = "mtwork.train_vit:VitRecipe"

    def runs(self, params: Mapping[str, Any]) -> List[RunSpec]:
        """The runs of this protocol the settings ask for (not the mtl runs they start from)."""
        return []

    def init_run(self, run: RunSpec) -> Optional[RunSpec]:
        """The run whose final weights ``run`` starts from (None: the pretrained Swin)."""
        return None

    def train_domains(self, params: Mapping[str, Any], run: RunSpec) -> Tuple[str, Optional[str]]:
        """(the domain whose labels ``run`` trains with, the domain of its unlabelled images or None)."""
        return run.target, None

    def eval_domains(self, params: Mapping[str, Any], run: RunSpec) -> List[str]:
        """Where ``run`` is evaluated (first: where it trained); the mtl runs the transfer runs start
        from are added by ``mtwork.protocols.evaluation_domains``."""
        return [run.target]

    def param_keys(self, run: RunSpec) -> Keys:
        """Settings of the protocol's own block that shape ``run`` (dotted keys)."""
        return []

    def epochs(self, params: Mapping[str, Any]) -> int:
        return int(params["vit"]["epochs"])


def transfer_init(run: RunSpec) -> RunSpec:
    """The mtl run of the same source, paradigm, tasks and seed (what zero-shot and UDA runs start from)."""
    return RunSpec(run.source, run.paradigm, run.tasks, run.seed, run.placement, PROTOCOL_MTL, None)


def enabled_block(params: Mapping[str, Any], block: str) -> Optional[Mapping[str, Any]]:
    """``vit.<block>`` when source 2 and the protocol are on (enabled, some paradigm), else None."""
    vit = params["vit"]
    spec = vit[block]
    return spec if vit["enabled"] and spec["enabled"] and spec["paradigms"] else None


def source_domain(params: Mapping[str, Any]) -> str:
    return vit_source_domain(params)
