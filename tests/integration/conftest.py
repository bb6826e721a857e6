"""Shared helpers of the workflow tests: a throw-away copy of the workflow files, the environment the
tools run in, Snakemake runs and dry-run parsing, and a stand-in `mtwork` for fast execution tests.

Every test works in a temporary copy of the workflow (Snakefile, rules/, params.yaml, dvc.yaml,
DVC config, profiles/, envs/), so the real data/, models/ and results/ are never touched.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # snakemake, dvc and mtwork console scripts live here
WORKFLOW_FILES = ["Snakefile", "rules", "envs", "params.yaml", "dvc.yaml", ".dvcignore", "profiles"]


def tool_env(extra_path: Sequence[Path] = ()) -> Dict[str, str]:
    """The environment for snakemake/dvc subprocesses: the venv's scripts first on PATH, offline hubs."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([*map(str, extra_path), str(VENV_BIN), env.get("PATH", "")])
    env["HF_HUB_OFFLINE"] = "1"  # a wrong `pretrained=True` fails in seconds instead of retrying
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow definition into ``dest`` and make it a git-free DVC repository."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    (dest / ".dvc").mkdir(exist_ok=True)
    config = (REPO / ".dvc" / "config").read_text() if (REPO / ".dvc" / "config").exists() else ""
    # the copy has no git: DVC needs core.no_scm (the repository's own config must not say so)
    if "[core]" in config:
        config = config.replace("[core]", "[core]\n    no_scm = true", 1)
    else:
        config += "\n[core]\n    no_scm = true\n"
    (dest / ".dvc" / "config").write_text(config)
    return dest


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")


def run(cmd: Sequence[str], cwd: Path, env: Dict[str, str] | None = None, timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(map(str, cmd)), cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def snakemake(cwd: Path, *args: str, env: Dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", *args], cwd, env=env, **kw)


@dataclass
class Job:
    rule: str
    fields: Dict[str, str] = field(default_factory=dict)
    cmd: str | None = None

    @property
    def outputs(self) -> List[str]:
        return [s.strip() for s in self.fields.get("output", "").split(",") if s.strip()]

    @property
    def inputs(self) -> List[str]:
        return [s.strip() for s in self.fields.get("input", "").split(",") if s.strip()]

    @property
    def resources(self) -> Dict[str, str]:
        items = (s.strip().split("=", 1) for s in self.fields.get("resources", "").split(",") if "=" in s)
        return {k: v for k, v in items}


_RULE = re.compile(r"^(?:local)?rule (\w+):$")
_FIELD = re.compile(r"^    (\w+): (.*)$")


def parse_dry_run(text: str) -> List[Job]:
    """Jobs of `snakemake -n -p` output (one 'rule X:' block per job, 'Shell command: ...' on one line)."""
    jobs: List[Job] = []
    for line in text.splitlines():
        if m := _RULE.match(line):
            jobs.append(Job(m.group(1)))
        elif jobs and (m := _FIELD.match(line)):
            jobs[-1].fields[m.group(1)] = m.group(2)
        elif jobs and line.startswith("Shell command: "):
            cmd = line[len("Shell command: "):].strip()
            jobs[-1].cmd = None if cmd == "None" else cmd
    return jobs


def dry_run(cwd: Path, *args: str, env: Dict[str, str] | None = None) -> List[Job]:
    proc = snakemake(cwd, "-n", "-p", "--cores", "1", *args, env=env)
    return parse_dry_run(proc.stdout + "\n" + proc.stderr)


# ---- a stand-in mtwork: validates its params, records the call, writes its outputs ---------------

FAKE_MTWORK = '''\
#!{python}
"""Stand-in for the mtwork console script (tests only): loads the params with the --set overrides
(as mtwork does), checks that its inputs exist, records argv, and writes the outputs it is asked for
with fresh random content (so downstream DVC stages see changed dependencies)."""
import json
import os
import sys
import uuid
from pathlib import Path

argv = sys.argv[1:]
with open(os.environ["FAKE_MTWORK_LOG"], "a") as fh:
    fh.write(json.dumps(argv) + "\\n")


def opt(name):
    return argv[argv.index(name) + 1] if name in argv else None


def need(path):
    if not Path(path).exists():
        sys.exit(f"fake mtwork {{argv[0]}}: input {{path}} does not exist")


def write(path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(uuid.uuid4().hex)


params = None
if "--params" in argv:
    from mtwork.config import load_params

    params = load_params(opt("--params"), [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
verb = argv[0]
if verb == "generate":
    write(Path(opt("--out")) / "images" / "placeholder.txt")
elif verb == "data":
    need(argv[argv.index("bdd100k") + 1])
    write(opt("--json"))
elif verb == "pretrain":
    need(opt("--data"))
    write(opt("--out"))
elif verb == "import-checkpoint":
    write(argv[-1])
elif verb == "train":
    need(opt("--data")), need(opt("--checkpoint"))
    if opt("--init"):  # source 2's transfer runs start from a finished run
        need(Path(opt("--init")) / "final.pt")
    if opt("--target-data"):
        need(opt("--target-data"))
    out = Path(opt("--out"))
    for name in ("final.pt", "log.json", "epoch_000.pt"):
        write(out / name)
elif verb == "evaluate":
    need(opt("--data"))
    run_dirs = [Path(argv[i + 1]) for i, a in enumerate(argv) if a == "--run-dir"]
    dg_domains = [argv[i + 1] for i, a in enumerate(argv) if a == "--dg-domain"]
    for i, word in enumerate(argv):
        if word == "--dg-data":
            need(argv[i + 1])
    for run_dir in run_dirs:
        need(run_dir / "final.pt")
    from mtwork.plan import is_vit_run, metrics_path, parse_run_id, vit_evaluation_paths, vit_evaluations

    root = Path(opt("--metrics-dir"))  # the files go where mtwork.plan puts them
    for run_dir in run_dirs:
        run = parse_run_id(run_dir.name)
        if is_vit_run(params, run):  # every domain the plan evaluates it on
            for _, path in vit_evaluation_paths(params, run, vit_evaluations(params)[run], root):
                write(path)
            continue
        write(metrics_path(run_dir.name, "mtl", None, root))
        for domain in dg_domains:
            write(metrics_path(run_dir.name, "dg", domain, root))
elif verb == "tables":
    need(opt("--metrics"))
    for name in ("mtl.md", "mtl.tex", "mtl.csv"):
        write(Path(opt("--out")) / name)
    write(Path(opt("--figures")) / "training_curves.png")
else:
    sys.exit(f"fake mtwork: unknown command {{argv}}")
'''


@dataclass
class FakeMtwork:
    bin_dir: Path
    log: Path

    @property
    def env(self) -> Dict[str, str]:
        env = tool_env(extra_path=[self.bin_dir])
        env["FAKE_MTWORK_LOG"] = str(self.log)
        return env

    def calls(self) -> List[List[str]]:
        import json

        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def reset(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def wt():
    """These helpers as a module (tests use `wt.dry_run(...)`: importing `conftest` by name is
    ambiguous once another test folder has a conftest.py of its own)."""
    return sys.modules[__name__]


@pytest.fixture
def fake_mtwork(tmp_path: Path) -> FakeMtwork:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "mtwork"
    script.write_text(textwrap.dedent(FAKE_MTWORK.format(python=sys.executable)))
    script.chmod(0o755)
    return FakeMtwork(bin_dir, tmp_path / "mtwork-calls.jsonl")


# ---- trained-model inputs shared by the training tests (session-scoped: made once) ---------------

@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """A converted randomly initialised backbone of params.yaml's model.backbone (``mtwork
    import-checkpoint --format random``): the training tests run on the default's settings."""
    from mtwork.checkpoints.importer import import_checkpoint
    from mtwork.config import yaml_load

    out = tmp_path_factory.mktemp("pretrained") / "random.pt"
    arch = yaml_load((REPO / "params.yaml").read_text())["model"]["backbone"]
    import_checkpoint("random", None, out, arch=arch, seed=0)
    return out


@pytest.fixture(scope="session")
def swin_checkpoint(tmp_path_factory) -> Path:
    """A timm-layout Swin-V2 file (what the SimMIM run writes) imported through the converter."""
    import torch

    from mtwork.checkpoints.importer import import_checkpoint
    from mtwork.models.swin import create_swinv2

    folder = tmp_path_factory.mktemp("swin")
    torch.manual_seed(0)
    torch.save({"state_dict": create_swinv2("mtwork_swinv2_tiny", (64, 96)).state_dict(), "arch": "swin:mtwork_swinv2_tiny",
                "pretrain": {"method": "simmim"}}, folder / "swin_simmim.pth.tar")
    import_checkpoint("simmim", folder / "swin_simmim.pth.tar", folder / "swin_simmim.pt", arch="swin:mtwork_swinv2_tiny")
    return folder / "swin_simmim.pt"


def mtwork_command() -> List[str]:
    """How tests start a real `mtwork` process: the venv's console script (it imports mtwork from
    PYTHONPATH first, so a checkout under test runs its own code)."""
    script = VENV_BIN / "mtwork"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mtwork.cli"]
