"""Zero-shot task transfer (protocol ``zeroshot``, block ``vit.zero_shot``).

Source 2 trains every task on dataset A (Virtual KITTI 2), then on a similar dataset B (Cityscapes,
SYNTHIA) finetunes with the labels of some tasks only and evaluates the others, which never saw B's
labels (e.g. S-D-N trained on VKITTI2, S and D finetuned on Cityscapes, N evaluated zero-shot; the paper
uses surface normals as the zero-shot task). Here:

* the run ``SOURCE__PARADIGM__<vit.tasks>__zeroshot-<target>__sSEED`` starts from the mtl run of the
  same source, paradigm, tasks and seed (its ``final.pt``);
* it trains ``vit.zero_shot.epochs`` epochs on the target's train split, with the labels of
  ``finetune_tasks`` only: what the paradigm trains that is shared by all tasks (adapters, task
  embeddings; the encoder for full finetuning) and the finetuned tasks' decoders; the zero-shot tasks'
  decoders stay frozen (``mtwork.protocols.zero_shot_recipe``);
* it is evaluated on the target's val split for every task; the ``vit_zero_shot`` table sets it between
  the mtl run evaluated on the target untrained (source only) and the target oracle.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

from mtwork.plan import RunSpec
from mtwork.protocols.base import PROTOCOLS, Keys, RunProtocol, enabled_block, transfer_init

NAME = "zeroshot"
BLOCK = "zero_shot"


def finetune_tasks(params: Mapping[str, Any]) -> List[str]:
    """The tasks whose target labels a zero-shot run trains with (vit.tasks order)."""
    wanted = set(params["vit"][BLOCK]["finetune_tasks"])
    return [t for t in params["vit"]["tasks"] if t in wanted]


def zero_shot_tasks(params: Mapping[str, Any]) -> List[str]:
    """The tasks evaluated on the target without ever training with its labels: the rest of vit.tasks."""
    wanted = set(params["vit"][BLOCK]["finetune_tasks"])
    return [t for t in params["vit"]["tasks"] if t not in wanted]


@PROTOCOLS.register(NAME)
class ZeroShotProtocol(RunProtocol):
    name = NAME
    recipe = "mtwork.protocols.zero_shot_recipe:ZeroShotRecipe"

    def runs(self, params: Mapping[str, Any]) -> List[RunSpec]:
        spec = enabled_block(params, BLOCK)
        if spec is None:
            return []
        vit = params["vit"]
        return [RunSpec(vit["source"], paradigm, tuple(vit["tasks"]), seed, protocol=NAME, target=spec["target_domain"])
                for seed in vit["seeds"] for paradigm in spec["paradigms"]]

    def init_run(self, run: RunSpec) -> Optional[RunSpec]:
        return transfer_init(run)

    def param_keys(self, run: RunSpec) -> Keys:
        return [f"vit.{BLOCK}.finetune_tasks", f"vit.{BLOCK}.epochs"]

    def epochs(self, params: Mapping[str, Any]) -> int:
        return int(params["vit"][BLOCK]["epochs"])
