"""What the zero-shot and UDA recipes share: start from an mtl run's final.pt, and keep its affinity.

A transfer run rebuilds its mtl run's model (same paradigm, tasks and settings: ``load_adapter``
refuses any other configuration or backbone), loads that run's trained weights, and keeps the task
affinity the mtl run ended with (``log.json`` ``balancer_state.affinity``) fixed: the zero-shot tasks get
no loss on the target, so TROA could not measure their relations there, and the model's task embeddings
(TAA/TSN) stay those it was trained with. The task losses of a step are summed with ``vit.loss_weights``
(``FixedAffinity``: equal balancing, the fixed affinity). Identity for the paradigms without TROA.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Sequence

import torch

from mtwork.errors import UserError
from mtwork.io import sha256_file
from mtwork.methods.loss_balancing import LossBalancer
from mtwork.train_vit import VitRecipe, backbone_info


class FixedAffinity(LossBalancer):
    """Equal loss weights and a fixed (T, T) affinity (rows source, columns target), e.g. the one an mtl
    run's TROA ended with. Nothing is learned or updated."""

    def __init__(self, task_names: Sequence[str], affinity: torch.Tensor):
        super().__init__(task_names)
        affinity = torch.as_tensor(affinity, dtype=torch.float32)
        if tuple(affinity.shape) != (self.num_tasks, self.num_tasks):
            raise ValueError(f"affinity must be ({self.num_tasks}, {self.num_tasks}) for tasks {self.task_names}, "
                             f"got {tuple(affinity.shape)}")
        self.register_buffer("fixed_affinity", affinity.clone())

    @property
    def affinity(self) -> torch.Tensor:
        return self.fixed_affinity.detach().float().cpu()


class TransferRecipe(VitRecipe):
    """A source-2 run that starts from the final weights of the mtl run in ``init_dir``."""

    def __init__(self, params: Mapping[str, Any], run, data_root, checkpoint, domain=None, *, init_dir: Path):
        self.init_dir = Path(init_dir)
        self.init_log = read_init_log(self.init_dir, self.protocol_init_id(run))
        self.init_sha256 = sha256_file(self.init_dir / "final.pt")
        super().__init__(params, run, data_root, checkpoint, domain)

    @staticmethod
    def protocol_init_id(run) -> str:
        from mtwork.protocols import protocol_of

        return protocol_of(run).init_run(run).id

    def hash_extra(self) -> Dict[str, Any]:
        # a retrained mtl run makes the epoch files of this run stale
        return {"init": self.init_sha256}

    def prepare(self, params: Mapping[str, Any]) -> None:
        if self.init_log["model_config"] != json.loads(json.dumps(self.config)):
            raise UserError(f"run '{self.run_id}': the model of {self.init_dir} was built as "
                            f"{self.init_log['model_config']}, this run's settings build {self.config}: retrain "
                            f"'{self.init_log['run']}' with the current settings first")
        self.model.load_adapter(self.init_dir / "final.pt", backbone_info(self.config, self.checkpoint, self.run.source))

    def make_balancer(self, params: Mapping[str, Any]) -> LossBalancer:
        return FixedAffinity(list(self.run.tasks), torch.tensor(self.init_log["balancer_state"]["affinity"]))

    def log_header(self) -> Dict[str, Any]:
        return {**super().log_header(), "init_run": self.init_log["run"], "init_sha256": self.init_sha256}


def read_init_log(init_dir: Path, expected_run: str) -> Dict[str, Any]:
    """The log.json of the run a transfer starts from; it must be ``expected_run`` and finished."""
    path = Path(init_dir) / "log.json"
    if not path.is_file() or not (Path(init_dir) / "final.pt").is_file():
        raise FileNotFoundError(f"{init_dir}: no finished run (log.json and final.pt) to start from; train "
                                f"'{expected_run}' first")
    log = json.loads(path.read_text())
    if log.get("run") != expected_run:
        raise UserError(f"{path}: holds run '{log.get('run')}', this transfer starts from '{expected_run}'")
    if "balancer_state" not in log or "model_config" not in log:
        raise UserError(f"{path}: no model_config / balancer_state (not a source-2 run's log)")
    return log
