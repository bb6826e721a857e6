"""``mtwork train --nproc N``: N training processes on this node through torch's elastic launcher.

This is what ``torchrun --standalone --nproc-per-node N`` does, called as an API
(``torch.distributed.launcher.api.elastic_launch``): a c10d rendezvous on a free local port, N workers
started with ``spawn``, each with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set, no
restarts (a failing run fails; a resumed one is the next job's business). Each worker runs the same
``mtwork`` command line without ``--nproc`` and finds its place from those variables
(``mtwork.engine.distributed``). Calling torchrun on ``-m mtwork train --run ...`` instead cannot
work: torchrun's own parser reads ``--run`` as an abbreviation of its ``--run-path``.

Several nodes: start one ``mtwork train`` per GPU with ``srun`` (or ``torchrun`` per node with
``--nnodes``); the processes recognise each other from the environment, no ``--nproc`` needed.
"""
from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import List, Sequence


def strip_nproc(argv: Sequence[str]) -> List[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (what each worker runs)."""
    out: List[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def run_worker(argv: List[str]) -> None:
    """One worker: the mtwork command line ``argv``; a non-zero exit status fails the worker."""
    from mtwork.cli import main

    code = main(argv)
    if code:
        sys.exit(code)


def launch(nproc: int, argv: Sequence[str], debug: bool = False) -> int:
    """Run ``mtwork <argv>`` in ``nproc`` local processes; returns the exit status for the CLI."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from mtwork.engine.distributed import env_from
    from mtwork.errors import UserError

    env = env_from()
    if env.distributed:
        raise UserError(f"--nproc {nproc}: this process is already one of {env.world_size} started by "
                        f"{env.source}; drop --nproc")
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=int(nproc), run_id=f"mtwork-{uuid.uuid4()}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=os.devnull),  # workers write to this process's stdout/stderr
    )
    if not debug:
        # the workers print their own errors (one line, or the traceback of an unexpected one); the
        # agent's traceback of its polling loop would only bury them
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, run_worker)(list(argv))
    except ChildFailedError as exc:
        rank, failure = sorted(exc.failures.items())[0]
        print(f"mtwork train: error: training process {rank} of {nproc} exited with status "
              f"{failure.exitcode} (its message is above); the other processes were stopped", file=sys.stderr)
        return failure.exitcode if 0 < failure.exitcode < 256 else 1
    return 0
