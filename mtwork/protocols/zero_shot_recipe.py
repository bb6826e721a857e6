"""The zero-shot transfer run's recipe (protocol ``zeroshot``, ``mtwork.protocols.zero_shot``).

The mtl run's model is finetuned on the target domain with the labels of ``vit.zero_shot.finetune_tasks``
only. What trains: everything the paradigm trains that all tasks share (adapters, TAA/TSN maps, the task
embedding table; the encoder for full finetuning) and the finetuned tasks' decoders. The zero-shot
tasks' decoders are frozen, so those tasks reach the target only through the shared parts. The adapter
file still holds every decoder (the zero-shot ones as loaded), so evaluation builds the model as usual.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

from mtwork.protocols.transfer_recipe import TransferRecipe
from mtwork.protocols.zero_shot import finetune_tasks, zero_shot_tasks


class ZeroShotRecipe(TransferRecipe):
    def train_task_list(self, params: Mapping[str, Any]) -> List[str]:
        return finetune_tasks(params)

    def prepare(self, params: Mapping[str, Any]) -> None:
        super().prepare(params)
        self.zero_shot = zero_shot_tasks(params)
        freeze_decoders(self.model, self.zero_shot)

    def log_header(self) -> Dict[str, Any]:
        return {**super().log_header(), "finetune_tasks": list(self.task_names), "zero_shot_tasks": list(self.zero_shot)}

    def finish(self, log: Dict[str, Any], out_dir: Path) -> None:
        # the adapter file covers what the paradigm trains, zero-shot decoders included (unchanged)
        for task in self.zero_shot:
            self.model.decoders[task].requires_grad_(True)
        try:
            super().finish(log, out_dir)
        finally:
            freeze_decoders(self.model, self.zero_shot)


def freeze_decoders(model: Any, tasks: List[str]) -> None:
    """Freeze the decoders (and heads) of ``tasks``: no gradient, so the optimizer leaves them unchanged."""
    for task in tasks:
        if task not in model.decoders:
            raise KeyError(f"no decoder of task '{task}' (the model has {', '.join(model.decoders)})")
        model.decoders[task].requires_grad_(False)
