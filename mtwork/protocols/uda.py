"""Unsupervised domain adaptation (protocol ``uda``, block ``vit.uda``).

Source 2 adapts a model trained on Virtual KITTI 2 to Cityscapes without Cityscapes labels, task set
S-D, with per-task output-space discriminators and adversarial losses (the paper's slides); a
source-only row and a "1-task Swin target (Oracle)" row trained on target labels bracket the result.
Here:

* the run ``SOURCE__PARADIGM__<vit.uda.tasks>__uda-<target>__sSEED`` starts from the mtl run of the same
  source, paradigm, tasks and seed (planned when ``vit.task_subsets`` / ``vit.paradigms`` lack it);
* each step takes a labelled batch of the source domain's train split and as many unlabelled images of
  the target's train split; the task losses on the source, an adversarial term per task that pushes
  the target outputs to look like source outputs to that task's discriminator, optionally
  confidence-filtered segmentation pseudo-labels on the target (``mtwork.protocols.uda_recipe``);
* it is evaluated on the target's val split (``vit_uda`` table).
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from mtwork.plan import RunSpec
from mtwork.protocols.base import PROTOCOLS, Keys, RunProtocol, enabled_block, source_domain, transfer_init

NAME = "uda"
BLOCK = "uda"


@PROTOCOLS.register(NAME)
class UdaProtocol(RunProtocol):
    name = NAME
    recipe = "mtwork.protocols.uda_recipe:UdaRecipe"

    def runs(self, params: Mapping[str, Any]) -> List[RunSpec]:
        spec = enabled_block(params, BLOCK)
        if spec is None:
            return []
        vit = params["vit"]
        tasks = tuple(t for t in vit["tasks"] if t in spec["tasks"])  # vit.tasks order, as the mtl subsets
        return [RunSpec(vit["source"], paradigm, tasks, seed, protocol=NAME, target=spec["target_domain"])
                for seed in vit["seeds"] for paradigm in spec["paradigms"]]

    def init_run(self, run: RunSpec) -> Optional[RunSpec]:
        return transfer_init(run)

    def train_domains(self, params: Mapping[str, Any], run: RunSpec) -> Tuple[str, Optional[str]]:
        return source_domain(params), run.target

    def param_keys(self, run: RunSpec) -> Keys:
        return [f"vit.{BLOCK}.{k}" for k in ("epochs", "adversarial_weight", "discriminator_lr", "discriminator_width",
                                             "gan_loss", "pseudo_labels")]

    def epochs(self, params: Mapping[str, Any]) -> int:
        return int(params["vit"][BLOCK]["epochs"])
