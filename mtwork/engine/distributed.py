"""Data parallelism: which process this is, the process group, and the reductions losses need.

A training run is one process, or N processes of one data-parallel job (DDP). Where the N come from
(first match wins):

* ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (+ ``MASTER_ADDR``/``MASTER_PORT``): set by torch's
  elastic launcher, i.e. ``mtwork train --nproc N`` (``mtwork.engine.launch``) or ``torchrun``;
* ``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS`` (or ``SLURM_NTASKS``) / ``SLURM_LOCALID`` inside an
  ``srun`` step: srun started one process per task (several nodes: ``srun --ntasks-per-node=G mtwork
  train ...``); the rendezvous address is
  ``MASTER_ADDR`` when set, else the first host of ``SLURM_JOB_NODELIST``; the port ``MASTER_PORT``,
  else one derived from the job id;
* nothing (or one Slurm task): one process, no process group.

The backend is NCCL on CUDA and gloo on CPU. Every helper below is the identity in one process (no
collective, no extra work per step), so the default single-process pipeline pays nothing for DDP.

**Losses normalised by global counts.** DDP averages gradients over the W processes. For the result
to be the gradient of the loss of the *global* batch (what one process computes), each process's
loss must be ``W * (sum of its terms) / N_global``, where ``N_global`` is the number of valid pixels,
labelled samples or positives summed over all processes: then the mean of the W gradients is the
gradient of ``sum_all_terms / N_global``. :func:`global_mean` and :func:`rank_normaliser` do this
for the task losses (``mtwork.tasks``) and the LV-Adapter's alignment loss; :func:`global_max` is
for batch statistics such as berHu's threshold. Every process must call them in the same order: a
loss is computed on every rank for every task labelled on *some* rank (the engine passes that set),
with a graph-connected zero where a rank holds no labelled sample.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job: global ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: Optional[str] = None
    master_port: Optional[int] = None
    source: str = "single process"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={environ[key]!r} is not an integer") from None


def _first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list ("gpu[01-04],cpu1" -> "gpu01"), via scontrol when present."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = nodelist.split(",")[0]
    if "[" in head:  # "gpu[01-04]" -> "gpu01" without scontrol
        prefix, rest = head.split("[", 1)
        head = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def env_from(environ: Mapping[str, str] = os.environ) -> DistEnv:
    """The process's place in the job, read from the launcher's environment variables (module doc)."""
    if "WORLD_SIZE" in environ and "RANK" in environ:
        world = _int(environ, "WORLD_SIZE")
        rank = _int(environ, "RANK")
        local = _int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else rank
        port = environ.get("MASTER_PORT")
        return DistEnv(rank, world, local, environ.get("MASTER_ADDR"), int(port) if port else None,
                       "torch elastic (torchrun or mtwork train --nproc)")
    # only inside an srun step (SLURM_STEP_ID): a batch script also sees SLURM_NTASKS of its allocation
    in_step = "SLURM_PROCID" in environ and ("SLURM_STEP_ID" in environ or "SLURM_STEPID" in environ)
    step_tasks = environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))
    if in_step and int(step_tasks) > 1:
        world = int(step_tasks)
        rank = _int(environ, "SLURM_PROCID")
        local = _int(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else 0
        addr = environ.get("MASTER_ADDR") or _first_slurm_host(environ.get("SLURM_JOB_NODELIST",
                                                                           environ.get("SLURM_NODELIST", "localhost")))
        port = environ.get("MASTER_PORT")
        # a port per job, so two jobs sharing a node do not collide
        port_num = int(port) if port else 20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000
        return DistEnv(rank, world, local, addr, port_num, "srun (one process per Slurm task)")
    return DistEnv()


def init(env: DistEnv, device: torch.device) -> torch.device:
    """Join the process group of ``env`` (no-op in one process) and return this process's device:
    ``cuda:LOCAL_RANK`` on GPU (each process its own GPU; ``cuda:0`` when the launcher already gave each
    process one visible GPU, as ``srun --gpus-per-task=1`` does), else ``device`` unchanged."""
    if not env.distributed:
        return device
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if env.local_rank < visible:
            device = torch.device("cuda", env.local_rank)
        elif visible == 1:
            device = torch.device("cuda", 0)
        else:
            raise RuntimeError(f"local rank {env.local_rank} but {visible} CUDA devices are visible: give each "
                               "process its own GPU (one visible GPU per process, or all of the node's GPUs)")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if env.master_addr:
            os.environ.setdefault("MASTER_ADDR", env.master_addr)
        if env.master_port:
            os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank, world_size=env.world_size,
                                device_id=device if device.type == "cuda" else None)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files (rank 0; the only one in a single-process run)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a new tensor; ``tensor`` itself in one process)."""
    if world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over processes (a new tensor; ``tensor`` itself in one process)."""
    if world_size() == 1:
        return tensor
    return all_reduce_sum(tensor) / world_size()


def global_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise max over processes (detached); ``tensor`` itself in one process."""
    if world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every process (pickled); ``obj`` itself in one process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank_normaliser(count: torch.Tensor, minimum: float = 0.0) -> torch.Tensor:
    """The divisor that makes this rank's loss *sum* a term of the global mean.

    ``count``: this rank's count (scalar or a vector of several counts). Returns
    ``max(N_global, minimum) / W`` with ``N_global`` the sum of ``count`` over the W processes (a
    detached float tensor); in one process ``count`` clamped to ``minimum``, unchanged otherwise.
    ``loss = local_sum / rank_normaliser(local_count)`` is then ``W * local_sum / N_global``.
    """
    if world_size() == 1:
        return count.clamp(min=minimum) if minimum else count
    total = all_reduce_sum(count.detach().double())
    return (total.clamp(min=minimum) / world_size()).to(torch.float32)


def global_mean(local_mean: torch.Tensor, local_count: torch.Tensor | int) -> torch.Tensor:
    """A loss that is a mean over this rank's ``local_count`` elements, rescaled to its share of the
    mean over all ranks' elements: ``W * local_mean * local_count / N_global``. ``local_mean`` must be
    a graph-connected zero when ``local_count`` is 0. In one process: ``local_mean`` itself (no work).
    """
    if world_size() == 1:
        return local_mean
    count = torch.as_tensor(local_count, device=local_mean.device)
    normaliser = rank_normaliser(count, minimum=1.0).to(local_mean.device)
    return local_mean * (count.to(local_mean.dtype) / normaliser.to(local_mean.dtype))


def present_anywhere(flags: Sequence[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of per-task flags over processes (one small all-reduce; none in one process)."""
    if world_size() == 1:
        return [bool(f) for f in flags]
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    return [bool(v > 0) for v in global_max(t).tolist()]


def mean_reducer() -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """``all_reduce_mean`` under DDP (what loss balancers take as ``all_reduce``), None in one process."""
    return all_reduce_mean if world_size() > 1 else None
