"""Per-job start-up of the pipeline's ``mtwork`` commands: what a job pays before (and around) its work.

    python benchmarks/startup.py [--workdir DIR] [--repeat 3] [--json OUT]

Every Snakemake/DVC job is one ``mtwork <verb>`` process (about 120 in the default run), and each pays
Python's start-up, its imports, building its model and data set, and writing its outputs. This script
prepares a workspace (the default SynthDrive domain, random ResNet-18 and Swin-V2 checkpoints; not
timed) and runs each job kind of the pipeline as its own process, ``--repeat``
times, with the default params.yaml (one epoch for the training jobs):

    help                mtwork --help
    generate            a SynthDrive domain
    data_check          mtwork data check
    import_checkpoint   a random ResNet-18 converted and verified
    pretrain            MoCo v2, one epoch
    train               source 1: random__pretrain_finetune__semseg-drivable-det__s0
    evaluate            that run on the domain's val split
    train_vit           source 2: VTAGML on semseg, depth, normals, edges
    evaluate_vit        that run

Per job: ``wall`` (process start to exit, the least disturbed of the repeats), ``work`` (what the job's
own record says it spent training, evaluating or pretraining; 0 where it records nothing: generate,
data check, import-checkpoint, whose start-up is then their whole wall time),
``startup`` = wall - work, ``cpu`` (the process's user + system CPU seconds, least of the repeats: less
disturbed than the wall clock by other load) and ``imports``: the sum of the top-level imports that
``python -X importtime`` reports, from one extra run per job. Run it on an otherwise idle machine; it works on any
commit that has these commands (for before/after comparisons), with ``PYTHONPATH`` choosing the code.
Used for docs/benchmarks.md; never run by the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
RUN = "random__pretrain_finetune__semseg-drivable-det__s0"
VIT_RUN = "swin_simmim__vtagml__semseg-depth-normals-edges__s0"
SETTINGS = ["train.epochs=1", "train.adapt_epochs=0", "vit.epochs=1", "checkpoints.pretrain.epochs=1"]


def mtwork(*args: str) -> List[str]:
    return [sys.executable, "-m", "mtwork.cli", *args]


def with_params(verb: str, *args: str) -> List[str]:
    sets = [x for s in SETTINGS for x in ("--set", s)]
    return mtwork(verb, "--params", str(REPO / "params.yaml"), *sets, *args)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def jobs(work: Path) -> Dict[str, Tuple[List[str], Callable[[], float], Optional[Callable[[], None]]]]:
    """{job: (command, work seconds from its record, clean-up before the next repeat)}."""
    data = work / "data" / "clear_day"
    gen = work / "data" / "generated"
    run_dir, vit_dir = work / "runs" / RUN, work / "vit" / VIT_RUN
    metrics = work / "metrics"
    pretrained = work / "upstream" / "moco_v2.pth.tar"

    def rmtree(path: Path) -> Callable[[], None]:
        return lambda: shutil.rmtree(path, ignore_errors=True)

    return {
        "help": (mtwork("--help"), lambda: 0.0, None),
        "generate": (with_params("generate", "--domain", "dusk_fog", "--out", str(gen)), lambda: 0.0, rmtree(gen)),
        "data_check": (mtwork("data", "check", str(data)), lambda: 0.0, None),
        "import_checkpoint": (mtwork("import-checkpoint", "--format", "random", "--arch", "resnet18", "-",
                                     str(work / "models" / "random_again.pt")), lambda: 0.0, None),
        "pretrain": (with_params("pretrain", "--source", "moco_v2", "--data", str(data), "--out", str(pretrained), "--threads", "1"),
                     lambda: float(_json(pretrained.with_suffix(".json"))["seconds"]), None),
        "train": (with_params("train", "--run", RUN, "--data", str(data), "--checkpoint", str(work / "models" / "random.pt"),
                              "--out", str(run_dir)),
                  lambda: float(_json(run_dir / "log.json")["train_seconds"]), rmtree(run_dir)),
        "evaluate": (with_params("evaluate", "--run-dir", str(run_dir), "--data", str(data), "--metrics-dir", str(metrics)),
                     lambda: float(_json(metrics / f"{RUN}.json")["eval_seconds"]), None),
        "train_vit": (with_params("train", "--run", VIT_RUN, "--data", str(data), "--checkpoint", str(work / "models" / "swin.pt"),
                                  "--out", str(vit_dir)),
                      lambda: float(_json(vit_dir / "log.json")["train_seconds"]), rmtree(vit_dir)),
        "evaluate_vit": (with_params("evaluate", "--run-dir", str(vit_dir), "--data", str(data), "--metrics-dir", str(metrics)),
                         lambda: float(_json(metrics / "vit" / f"{VIT_RUN}.json")["eval_seconds"]), None),
    }


def prepare(work: Path, env: Dict[str, str]) -> None:
    steps = [
        with_params("generate", "--domain", "clear_day", "--out", str(work / "data" / "clear_day")),
        mtwork("import-checkpoint", "--format", "random", "--arch", "resnet18", "-", str(work / "models" / "random.pt")),
        mtwork("import-checkpoint", "--format", "random", "--arch", "swin:mtwork_swinv2_tiny", "-", str(work / "models" / "swin.pt")),
    ]
    for cmd in steps:
        subprocess.run(cmd, check=True, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def import_seconds(stderr: str) -> float:
    """Sum of the cumulative times of the top-level imports in ``-X importtime`` output (seconds)."""
    total = 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|", 2)
            if cumulative.strip().isdigit() and name.startswith(" ") and not name.startswith("  "):
                total += int(cumulative)
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder, removed at the end")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=None, help="job kinds to run (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mtwork-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    prepare(work, env)
    table = jobs(work)
    results: Dict[str, Dict[str, float]] = {}
    for name, (cmd, work_seconds, cleanup) in table.items():
        if args.only and name not in args.only:
            continue
        walls, works, cpus = [], [], []
        for _ in range(args.repeat):
            if cleanup:
                cleanup()
            t0, c0 = time.perf_counter(), _children_cpu()
            subprocess.run(cmd, check=True, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t0)
            cpus.append(_children_cpu() - c0)
            works.append(work_seconds())
        if cleanup:
            cleanup()
        # one more run for the imports (its outputs stay: the next job kinds read them)
        timed = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], check=True, env=env, cwd=work,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        best = min(range(len(walls)), key=lambda i: walls[i] - works[i])
        results[name] = {"wall": walls[best], "work": works[best], "startup": walls[best] - works[best],
                         "cpu": min(cpus), "imports": import_seconds(timed.stderr)}
        r = results[name]
        print(f"{name:18s} wall {r['wall']:6.2f} s  work {r['work']:6.2f} s  start-up {r['startup']:6.2f} s  "
              f"imports {r['imports']:5.2f} s  (process CPU {r['cpu']:6.2f} s)", flush=True)
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "python": platform.python_version(),
              "platform": platform.platform(), "load_average": list(os.getloadavg()), "repeat": args.repeat,
              "command": " ".join(sys.argv), "jobs": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
