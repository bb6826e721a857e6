"""``mtwork bench``: what one machine does per second, measured in one run of one process.

Sections (``--sections``, default all three):

``step``   Source 1: one training step of every paradigm of ``mtwork.plan`` (its stages from
           ``RunSpec.stages``; ``single_task`` on the first task), next to the bare timm backbone of the
           same arch: its full-finetune step and its frozen forward. One step is ``batch_to_device`` of a
           collated uint8 batch (normalisation on the device), forward, multi-task loss, backward and
           AdamW, under train.amp's autocast (auto: bf16 on CUDA, fp32 on CPU). Ratios: each step's img/s over
           the bare backbone's train step, and the adapt stages' over the bare frozen forward (what a
           frozen-backbone step can at best approach).
``vit``    Source 2: VTAGML's step (TAA + TSN, TROA's per-task gradient pass every ``vit.troa.every``
           steps, amortised) against its ``full_finetune`` baseline, on the Swin-V2 of ``vit.source``.
``loader`` One loader worker's img/s: ``BDD100KDataset`` + ``TrainTransform`` (random rescale, crop/pad,
           flip) + ``collate``, with semseg, drivable and det labels, from JPEGs of BDD100K's real size
           (1280x720) that the benchmark writes itself with SynthDrive; at every ``--loader-size`` (default
           half the frame, 384x640, and the paper block's 736x1280), on one thread, with the malloc
           settings of a worker (``mtwork.data.memory``), next to decoding alone (PIL, PIL at 1/2 size,
           simplejpeg, torchvision.io). As in training, the image's resize, crop and flip are left to
           the device (``TrainTransform(render_on_device=True)``); that rendering's img/s on this CPU and
           the worker that renders itself are reported beside it. ``--workers N`` also runs a DataLoader
           with N worker processes (img/s in total and per worker, with the inter-process transfer).

Per model: img/s (batch / mean step time: TROA's occasional pass counts), peak memory
(``torch.cuda.max_memory_allocated`` above what was allocated before the model was built; on CPU the
resident set sampled every millisecond during its warm-up, above the resident set before it was built:
approximate, as the allocator keeps freed pages), FLOPs per step (``torch.utils.flop_counter``: matmuls
and convolutions, forward and backward) and MFU = FLOPs / step time / peak, where the peak is a measured
dense matmul (bf16 8192^3 on CUDA, fp32 on CPU at ``--threads``).

Timing: every model gets ``--warmup`` steps alone, then the models take turns, one step each, for
``--steps`` rounds, so a load change on a shared machine hits all of them alike; the loader takes the
best of ``--loader-rounds`` passes over its images (the least disturbed one), after an untimed pass,
and reports the median and the img/s per CPU second of the process too (robust on a shared machine).
Defaults come from the params file (arch, tasks, batch, input size, device, threads, Swin-V2 and its
input); the options (``mtwork bench --help``, defined in ``mtwork.cli``) override them. ``--json OUT`` writes the whole record (machine, date, command,
settings, numbers). Used for docs/benchmarks.md; a test runs it at a tiny size.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from mtwork.errors import UserError

#: Loader sizes (H, W) measured by default: the earlier 384x640 input and the paper's full BDD100K frame
#: (train.input_size at paper scale: 736x1280, the 720x1280 frame letterboxed).
DEFAULT_LOADER_SIZES = ((384, 640), (736, 1280))
#: Names of the bare backbone's cases.
BARE_TRAIN, BARE_FORWARD = "backbone_train", "backbone_forward"


# ---------------------------------------------------------------------------------------------------
# machine and measurement helpers
# ---------------------------------------------------------------------------------------------------


def machine_info(device) -> Dict[str, Any]:
    """Where the numbers come from: CPU model and count, memory, torch, the GPU."""
    import torch

    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _meminfo_gib(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryPeak:
    """Peak memory of a block above the level before ``start``: CUDA's allocator statistics, or the
    resident set polled every millisecond by a thread on CPU."""

    def __init__(self, device):
        self.device = device
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "MemoryPeak":
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.base = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_bytes())

    def stop(self) -> int:
        """Peak bytes above the starting level."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self.base)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        return int(self.peak - self.base)


def matmul_peak_flops(device) -> Dict[str, Any]:
    """Measured dense matmul FLOP/s: bf16 n=8192 on CUDA (the training precision), fp32 n=1024 on CPU
    (at the current thread count); the best of three runs."""
    import torch

    if device.type == "cuda":
        n, dtype, repeats = 8192, torch.bfloat16, 20
    else:
        n, dtype, repeats = 1024, torch.float32, 8
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / repeats)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "flops_per_s": 2 * n**3 / best}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` (torch.utils.flop_counter: matmuls and convolutions, forward and
    backward; elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


class Case:
    """One timed model: a zero-argument ``step`` (one training step, or one forward) on ``batch`` images."""

    def __init__(self, name: str, step: Callable[[], Any], images: int, info: Optional[Dict[str, Any]] = None):
        self.name, self.step, self.images = name, step, images
        self.info = dict(info or {})
        self.times: List[float] = []
        self.memory_bytes = 0
        self.flops = 0


def run_cases(build: Sequence[Tuple[str, Callable[[], Case]]], device, warmup: int, steps: int) -> List[Case]:
    """Build each case (timing its memory from before the build through its warm-up and a FLOP-counting
    step), then time them in interleaved rounds. ``build``: (name, factory) pairs."""
    cases: List[Case] = []
    for name, factory in build:
        memory = MemoryPeak(device).start()
        case = factory()
        for _ in range(warmup):
            case.step()
        case.flops = count_flops(case.step)
        case.memory_bytes = memory.stop()
        cases.append(case)
        print(f"[mtwork bench] built {name}", file=sys.stderr, flush=True)
    for _ in range(steps):
        for case in cases:
            _sync(device)
            t0 = time.perf_counter()
            case.step()
            _sync(device)
            case.times.append(time.perf_counter() - t0)
    return cases


def case_record(case: Case, peak_flops: float) -> Dict[str, Any]:
    mean = statistics.fmean(case.times)
    achieved = case.flops / mean
    return {
        "img_per_s": case.images / mean,
        "step_seconds_mean": mean,
        "step_seconds_median": statistics.median(case.times),
        "steps": len(case.times),
        "batch": case.images,
        "peak_memory_mib": round(case.memory_bytes / 2**20, 1),
        "gflops_per_step": case.flops / 1e9,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak_flops,
        **case.info,
    }


# ---------------------------------------------------------------------------------------------------
# synthetic batches in the collated layout (mtwork.data.batch)
# ---------------------------------------------------------------------------------------------------


def synthetic_batch(tasks: Sequence[str], batch: int, size: Tuple[int, int], seed: int = 0) -> Dict[str, Any]:
    """A collated batch (uint8 image and masks, as the loader makes) with every one of ``tasks``
    labeled: semseg, drivable, det (two boxes), depth (metres), normals (unit vectors), edges."""
    import torch
    import torch.nn.functional as F

    from mtwork.data.batch import collate

    g = torch.Generator().manual_seed(seed)
    h, w = size
    labels = {
        "semseg": lambda: torch.randint(0, 19, (h, w), generator=g, dtype=torch.uint8),
        "drivable": lambda: torch.randint(0, 3, (h, w), generator=g, dtype=torch.uint8),
        "det": lambda: {"boxes": torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.5 * w, 0.3 * h, 0.9 * w, 0.9 * h]]),
                        "labels": torch.tensor([2, 0])},
        "depth": lambda: 1.0 + 50.0 * torch.rand((h, w), generator=g),
        "normals": lambda: F.normalize(torch.randn((3, h, w), generator=g), dim=0),
        "edges": lambda: torch.rand((h, w), generator=g),
    }
    unknown = [t for t in tasks if t not in labels]
    if unknown:
        raise ValueError(f"mtwork bench: no synthetic labels for tasks {unknown} (known: {', '.join(labels)})")
    samples = [{"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), "name": f"bench_{i}.jpg",
                "orig_size": (h, w), **{t: labels[t]() for t in tasks}} for i in range(batch)]
    return collate(samples)


@contextlib.contextmanager
def _quiet_logging():
    """Silence log records up to WARNING for a block (open_clip logs that it built random weights)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _pinned(batch: Dict[str, Any], device) -> Dict[str, Any]:
    """Pin the batch's tensors when feeding a GPU, as a DataLoader with pin_memory does."""
    if device.type != "cuda":
        return batch
    return {k: (v.pin_memory() if hasattr(v, "pin_memory") else v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------
# section "step": source 1
# ---------------------------------------------------------------------------------------------------


def source1_builds(params: Mapping[str, Any], arch: str, tasks: Sequence[str], batch: int,
                   size: Tuple[int, int], device, amp: str) -> List[Tuple[str, Callable[[], Case]]]:
    """(name, factory) of the bare backbone's train step and forward, and each paradigm's stages."""
    import torch

    from mtwork.config import PARADIGMS
    from mtwork.data.batch import batch_to_device
    from mtwork.models.backbones import create_backbone
    from mtwork.models.multitask import build_multitask_model, multitask_loss
    from mtwork.plan import RunSpec
    from mtwork.engine.precision import autocast
    from mtwork.train import model_config

    cpu_batch = _pinned(synthetic_batch(tasks, batch, size), device)

    def bare(train: bool) -> Case:
        torch.manual_seed(0)
        backbone = create_backbone(arch, None).to(device)
        backbone.train(train)
        optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-4) if train else None

        def step() -> None:
            image = batch_to_device(cpu_batch, device)["image"]
            if not train:
                with torch.no_grad(), autocast(device, amp):
                    backbone(image)
                return
            with autocast(device, amp):
                loss = sum(f.float().mean() for f in backbone(image))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        params_n = sum(p.numel() for p in backbone.parameters())
        return Case(BARE_TRAIN if train else BARE_FORWARD, step, batch,
                    {"trainable_params": params_n if train else 0, "total_params": params_n})

    def paradigm_stage(paradigm: str, stage: str) -> Callable[[], Case]:
        def factory() -> Case:
            run_tasks = tuple(tasks[:1]) if paradigm == "single_task" else tuple(tasks)
            source = next(iter(params["checkpoints"]["catalog"]))
            config = model_config(params, RunSpec(source, paradigm, run_tasks, 0))
            config["arch"] = arch
            if "text_encoder_checkpoint" in config:
                config["text_encoder_checkpoint"] = None  # a random text tower: the speed is the same
            torch.manual_seed(0)
            with warnings.catch_warnings(), _quiet_logging():
                warnings.simplefilter("ignore")  # the random text tower's warnings (ours and open_clip's)
                model = build_multitask_model(**config).to(device)
            model.set_stage(stage)
            model.train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            weights = {t: 1.0 for t in run_tasks}

            def step() -> None:
                on_device = batch_to_device(cpu_batch, device)
                with autocast(device, amp):
                    outputs = model(on_device["image"])
                    loss, _ = multitask_loss(model.tasks, outputs, on_device, weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            return Case(f"{paradigm}/{stage}", step, batch, {
                "method": config["method"], "tasks": list(run_tasks),
                "trainable_params": model.count_parameters(trainable_only=True),
                "total_params": model.count_parameters(trainable_only=False)})

        return factory

    builds: List[Tuple[str, Callable[[], Case]]] = [(BARE_TRAIN, lambda: bare(True)), (BARE_FORWARD, lambda: bare(False))]
    for paradigm in PARADIGMS:
        for stage, _ in RunSpec("bench", paradigm, tuple(tasks), 0).stages(2, 1):
            builds.append((f"{paradigm}/{stage}", paradigm_stage(paradigm, stage)))
    return builds


def add_ratios(records: Dict[str, Dict[str, Any]]) -> None:
    """Each record's img/s over the bare backbone's train step; adapt stages also over its forward."""
    train = records.get(BARE_TRAIN, {}).get("img_per_s")
    forward = records.get(BARE_FORWARD, {}).get("img_per_s")
    for name, record in records.items():
        if train:
            record["vs_backbone_train"] = record["img_per_s"] / train
        if forward and (name.endswith("/adapt") or name == BARE_FORWARD):
            record["vs_backbone_forward"] = record["img_per_s"] / forward


# ---------------------------------------------------------------------------------------------------
# section "vit": source 2
# ---------------------------------------------------------------------------------------------------


def vit_builds(params: Mapping[str, Any], arch: str, input_size: Tuple[int, int], batch: int, device,
               amp: str) -> List[Tuple[str, Callable[[], Case]]]:
    """VTAGML (its TROA pass every ``every`` steps included) and its full-finetune baseline, as
    ``mtwork.train_vit`` trains them."""
    import torch

    from mtwork.data.batch import batch_to_device
    from mtwork.methods.loss_balancing import create_balancer
    from mtwork.methods.vtagml import create_vtagml_model
    from mtwork.models.swin import create_swinv2
    from mtwork.plan import RunSpec
    from mtwork.engine.precision import autocast
    from mtwork.tasks import TASKS
    from mtwork.train_vit import _balancer_kwargs, activate, vit_model_config

    vit = params["vit"]
    tasks = tuple(vit["tasks"])
    cpu_batch = _pinned(synthetic_batch(tasks, batch, input_size), device)

    def factory(paradigm: str) -> Callable[[], Case]:
        def build() -> Case:
            config = vit_model_config(params, RunSpec(vit["source"], paradigm, tasks, 0))
            torch.manual_seed(0)
            encoder = create_swinv2(arch, input_size)
            baseline = None if config["model"] == "vtagml" else config["model"]
            model = create_vtagml_model(encoder, dict(config["tasks"]), baseline=baseline, **config["kwargs"]).to(device)
            model.train()
            task_objs = {t: TASKS.create(t) for t in tasks}
            balancer = create_balancer(config["balancer"], list(tasks), **_balancer_kwargs(params, config["balancer"])).to(device)
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            shared = model.shared_adapter_parameters()
            counter = {"step": 0}

            def step() -> None:
                on_device = batch_to_device(cpu_batch, device)
                labeled = on_device["labeled"]
                with autocast(device, amp):
                    outputs = model(on_device["image"], balancer.affinity.to(device))
                    losses = {t: task.loss(activate(task, outputs[t].float()), on_device, labeled[t])
                              for t, task in task_objs.items()}
                if shared:
                    balancer.maybe_update(counter["step"], losses, shared)
                total = balancer.weighted_loss(losses)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                counter["step"] += 1

            return Case(paradigm, step, batch, {
                "balancer": config["balancer"], "tasks": list(tasks),
                "trainable_params": model.count_parameters(trainable_only=True),
                "total_params": model.count_parameters(trainable_only=False)})

        return build

    return [(p, factory(p)) for p in ("full_finetune", "vtagml")]


# ---------------------------------------------------------------------------------------------------
# section "loader"
# ---------------------------------------------------------------------------------------------------


def loader_data(root: Optional[Path], images: int, image_size: Tuple[int, int]) -> Path:
    """SynthDrive images with semseg + drivable + det labels (every image in both image sets), written
    unless ``root`` already holds that many of that size."""
    from mtwork.data.synthdrive import generate_synthdrive

    root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mtwork-bench-")) / "synthdrive"
    meta = root / "synthdrive.json"
    if meta.is_file():
        import json

        summary = json.loads(meta.read_text())
        if list(summary.get("image_size", [])) == list(image_size) and summary.get("images", {}).get("100k", {}).get("train") == images:
            return root
    generate_synthdrive(root, image_size=tuple(image_size), counts={"det": {"train": images, "val": 0}, "seg": {"train": images, "val": 0}},
                        overlap=1.0, progress=False)
    return root


def timed_passes(one_pass: Callable[[], int], rounds: int) -> Dict[str, float]:
    """img/s of ``one_pass()`` (which returns its image count): one untimed pass first (a fresh process
    runs its first passes slower: page faults of new buffers, cold caches), then the best and the
    median of ``rounds`` passes in wall time, and the best in CPU time of this process, which other
    load on a shared machine disturbs much less than the wall clock."""
    one_pass()
    wall, cpu = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        n = one_pass()
        wall.append(n / (time.perf_counter() - t0))
        cpu.append(n / max(time.process_time() - c0, 1e-9))
    return {"img_per_s": max(wall), "img_per_s_median": statistics.median(wall), "img_per_cpu_s": max(cpu)}


def decode_rates(files: Sequence[Path], rounds: int) -> Dict[str, Dict[str, float]]:
    """img/s of decoding a JPEG file alone, one thread: PIL and the loaders' decoder (simplejpeg,
    ``mtwork.data.codecs``), each at full size and at 1/2 size (JPEG DCT scaling), and torchvision.io."""
    import numpy as np
    from PIL import Image
    from torchvision.io import decode_jpeg, read_file

    from mtwork.data.bdd100k import ImageFile

    def pil(path: Path, reduce: int) -> Any:
        with Image.open(path) as img:
            if reduce > 1:
                img.draft("RGB", (img.width // reduce, img.height // reduce))
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))

    def loaders(path: Path, reduce: int) -> Any:
        """The loaders' own path: read, header, decode (simplejpeg through mtwork.data.codecs)."""
        image = ImageFile(path)
        return image.decode((image.size[0] // reduce, image.size[1] // reduce))

    decoders = {
        "pil": lambda p: pil(p, 1),
        "pil_half_size": lambda p: pil(p, 2),
        "simplejpeg (mtwork)": lambda p: loaders(p, 1),
        "simplejpeg_half_size": lambda p: loaders(p, 2),
        "torchvision_io": lambda p: decode_jpeg(read_file(str(p))),
    }

    def all_files(decode: Callable[[Path], Any]) -> int:
        for path in files:
            decode(path)
        return len(files)

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoders (for TorchCodec)
        warnings.simplefilter("ignore", DeprecationWarning)
        return {name: timed_passes(lambda: all_files(decode), rounds) for name, decode in decoders.items()}


def loader_rate(root: Path, size: Tuple[int, int], batch: int, rounds: int) -> Dict[str, Any]:
    """One worker's work on one thread: ``dataset[i]`` (read, decode, labels, TrainTransform) for a batch
    of indices, then ``collate``; img/s per pass over the data set (new augmentation draws each pass).

    Top level: the worker of a training run (``TrainTransform(render_on_device=True)``, as
    ``mtwork.train`` sets it): the image's resize, crop and flip are left to the device. ``render``:
    that rendering (``batch_to_device`` on the collated batches) on this CPU, which a GPU does in
    microseconds; ``in_worker``: the worker when it renders the canvas itself."""
    import torch

    from mtwork.data.batch import batch_to_device, collate
    from mtwork.data.bdd100k import BDD100KDataset
    from mtwork.data.transforms import TrainTransform

    def dataset(render_on_device: bool) -> Any:
        return BDD100KDataset(root, "train", tasks=("semseg", "drivable", "det"), transform=TrainTransform(
            tuple(size), generator=torch.Generator().manual_seed(0), render_on_device=render_on_device))

    deferred, in_worker = dataset(True), dataset(False)
    n = len(deferred)
    chunks = [list(range(i, min(n, i + batch))) for i in range(0, n, batch)]
    batches = [collate([deferred[i] for i in chunk]) for chunk in chunks]
    cpu = torch.device("cpu")

    def one_pass(data: Any) -> Callable[[], int]:
        def run() -> int:
            for chunk in chunks:
                collate([data[i] for i in chunk])
            return n
        return run

    def render() -> int:
        for b in batches:
            batch_to_device(b, cpu)
        return n

    record: Dict[str, Any] = timed_passes(one_pass(deferred), rounds)
    record["render"] = timed_passes(render, rounds)
    record["in_worker"] = timed_passes(one_pass(in_worker), rounds)
    return record


def dataloader_rate(root: Path, size: Tuple[int, int], batch: int, workers: int, passes: int, pin: bool) -> Dict[str, float]:
    """A DataLoader with ``workers`` processes over ``passes`` x the images, timed from its first batch
    (worker start-up excluded); img/s in total and per worker."""
    import torch
    from torch.utils.data import DataLoader

    from mtwork.data.batch import collate
    from mtwork.data.bdd100k import BDD100KDataset
    from mtwork.data.memory import loader_worker_init
    from mtwork.data.transforms import TrainTransform

    dataset = BDD100KDataset(root, "train", tasks=("semseg", "drivable", "det"),
                             transform=TrainTransform(tuple(size), render_on_device=True))  # as in training
    order = list(range(len(dataset))) * max(1, passes)
    loader = DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers, collate_fn=collate,
                        pin_memory=pin, prefetch_factor=4, generator=torch.Generator().manual_seed(0),
                        worker_init_fn=loader_worker_init)
    iterator = iter(loader)
    first = next(iterator)
    images, t0 = 0, time.perf_counter()
    for batch_ in iterator:
        images += len(batch_["names"])
    seconds = time.perf_counter() - t0
    del first
    total = images / seconds if seconds > 0 else float("nan")
    return {"workers": workers, "img_per_s": total, "img_per_s_per_worker": total / workers}


# ---------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------


def run(params: Mapping[str, Any], args: argparse.Namespace, command: str) -> Dict[str, Any]:
    """Run the chosen sections; returns the record (printed as tables by ``main``)."""
    import torch

    from mtwork.engine.precision import resolve_amp
    from mtwork.plan import source_arch
    from mtwork.runtime import resolve_device

    tp = params["train"]
    device = resolve_device(args.device or tp["device"])
    threads = int(args.threads or tp["threads"])
    torch.set_num_threads(max(1, threads))
    amp = tp["amp"]  # train.amp: auto (bf16 on CUDA, none on CPU) | none | bf16 | fp16
    batch = int(args.batch or tp["batch_size"])
    size = tuple(args.input_size or tp["input_size"])
    for name, value in (("--batch", batch), ("--steps", args.steps), ("--threads", threads), ("--loader-rounds", args.loader_rounds)):
        if value < 1:
            raise UserError(f"mtwork bench: {name} must be >= 1, got {value}")
    record: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(device),
        "settings": {"device": str(device), "threads": threads, "amp": resolve_amp(amp, device),
                     "batch": batch, "input_size": list(size), "steps": args.steps, "warmup": args.warmup},
    }
    timed: Dict[str, List[Case]] = {}
    if "step" in args.sections or "vit" in args.sections:
        peak_before = matmul_peak_flops(device)
    if "step" in args.sections:
        arch = args.arch or params["model"]["backbone"]
        tasks = list(args.tasks or tp["tasks"])
        record["settings"].update(arch=arch, tasks=tasks)
        timed["step"] = run_cases(source1_builds(params, arch, tasks, batch, size, device, amp), device, args.warmup, args.steps)
    if "vit" in args.sections:
        vit = params["vit"]
        vit_arch = args.vit_arch or source_arch(params, vit["source"]).split(":", 1)[1]
        vit_size = tuple(args.vit_input_size or vit["input_size"])
        vit_batch = int(args.vit_batch or vit["batch_size"])
        record["settings"].update(vit_arch=vit_arch, vit_input_size=list(vit_size), vit_batch=vit_batch)
        timed["vit"] = run_cases(vit_builds(params, vit_arch, vit_size, vit_batch, device, amp), device, args.warmup, args.steps)
    if timed:
        # the peak is measured before and after the steps and the better kept: a busy moment lowers one
        peak = max(peak_before, matmul_peak_flops(device), key=lambda p: p["flops_per_s"])
        record["matmul_peak"] = peak
        for section, cases in timed.items():
            record[section] = {c.name: case_record(c, peak["flops_per_s"]) for c in cases}
        if "step" in record:
            add_ratios(record["step"])
        if "vit" in record:
            vit_records = record["vit"]
            vit_records["vtagml"]["vs_full_finetune"] = vit_records["vtagml"]["img_per_s"] / vit_records["full_finetune"]["img_per_s"]
    if "loader" in args.sections:
        from mtwork.data.memory import keep_freed_memory

        torch.set_num_threads(1)  # what a DataLoader worker runs with,
        keep_freed_memory()  # and its malloc settings (mtwork.data.memory; this section runs last)
        sizes = [tuple(s) for s in (args.loader_size or DEFAULT_LOADER_SIZES)]
        loader_batch = int(args.loader_batch or batch)
        root = loader_data(args.loader_data, args.loader_images, tuple(args.loader_image_size))
        files = sorted((root / "images" / "100k" / "train").glob("*.jpg"))
        loader: Dict[str, Any] = {
            "image_size_on_disk": list(args.loader_image_size), "images": len(files), "batch": loader_batch,
            "rounds": args.loader_rounds, "decode_only": decode_rates(files, args.loader_rounds), "sizes": {},
        }
        for s in sizes:
            entry = loader_rate(root, s, loader_batch, args.loader_rounds)
            if args.workers > 0:
                entry["dataloader"] = dataloader_rate(root, s, loader_batch, args.workers, passes=max(2, args.loader_rounds),
                                                      pin=device.type == "cuda")
            loader["sizes"][f"{s[0]}x{s[1]}"] = entry
        record["loader"] = loader
        torch.set_num_threads(max(1, threads))
    record["machine"]["process_peak_rss_mib"] = round(_max_rss_bytes() / 2**20, 1)
    return record


def _max_rss_bytes() -> int:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    except (ImportError, OSError):
        return 0


def format_report(record: Mapping[str, Any]) -> str:
    """Human-readable tables of a record."""
    lines = [f"mtwork bench, {record['date']}: {record['command']}",
             f"machine: {record['machine']['cpu']} ({record['machine']['usable_cpus']} usable CPUs, "
             f"{record['machine']['cpu_capability']}), torch {record['machine']['torch']}, device {record['machine']['device']}"
             + (f" ({record['machine']['gpu']})" if "gpu" in record["machine"] else "")]
    settings = record["settings"]
    if "matmul_peak" in record:
        peak = record["matmul_peak"]
        lines.append(f"matmul peak ({peak['dtype']}, n={peak['n']}): {peak['flops_per_s'] / 1e12:.3f} TFLOP/s")
    for section, title, ratio in (("step", f"source 1: {settings.get('arch')} {settings['input_size'][0]}x{settings['input_size'][1]}, "
                                            f"batch {settings['batch']}, {settings['threads']} threads", "vs_backbone_train"),
                                  ("vit", f"source 2: {settings.get('vit_arch')} {settings.get('vit_input_size')}, batch {settings.get('vit_batch')}",
                                   "vs_full_finetune")):
        if section not in record:
            continue
        lines += ["", title, f"  {'model/stage':42s} {'img/s':>9s} {'ratio':>7s} {'GFLOP':>8s} {'MFU':>7s} {'mem MiB':>9s} {'trainable':>11s}"]
        for name, r in record[section].items():
            extra = f"  (x{r['vs_backbone_forward']:.2f} of the frozen forward)" if "vs_backbone_forward" in r and name != BARE_FORWARD else ""
            lines.append(f"  {name:42s} {r['img_per_s']:9.2f} {r.get(ratio, 1.0):7.2f} {r['gflops_per_step']:8.2f} "
                         f"{100 * r['mfu']:6.2f}% {r['peak_memory_mib']:9.1f} {r['trainable_params']:11d}{extra}")
    if "loader" in record:
        loader = record["loader"]
        lines += ["", f"loader: {loader['images']} SynthDrive JPEGs of {loader['image_size_on_disk'][0]}x{loader['image_size_on_disk'][1]}, "
                      f"semseg + drivable + det, batch {loader['batch']}, 1 thread (best of {loader['rounds']}; median; per CPU second)"]
        for name, r in loader["decode_only"].items():
            lines.append(f"  decode only, {name:27s} {r['img_per_s']:8.1f} img/s ({r['img_per_s_median']:.1f}; "
                         f"{r['img_per_cpu_s']:.1f} per CPU second)")
        for name, r in loader["sizes"].items():
            line = (f"  BDD100KDataset + TrainTransform + collate -> {name:9s} {r['img_per_s']:8.1f} img/s "
                    f"({r['img_per_s_median']:.1f}; {r['img_per_cpu_s']:.1f} per CPU second)")
            if "dataloader" in r:
                d = r["dataloader"]
                line += f"; DataLoader, {d['workers']} workers: {d['img_per_s']:.1f} img/s, {d['img_per_s_per_worker']:.1f} per worker"
            lines.append(line)
            for key, what in (("render", "its images' rendering (on the device in training) here"),
                              ("in_worker", "the worker rendering the images itself")):
                if key in r:
                    lines.append(f"    {what + ':':58s} {r[key]['img_per_s']:8.1f} img/s ({r[key]['img_per_s_median']:.1f}; "
                                 f"{r[key]['img_per_cpu_s']:.1f} per CPU second)")
    return "\n".join(lines)


def main(params: Mapping[str, Any], args: argparse.Namespace, argv: Optional[Sequence[str]] = None) -> int:
    """Run, print the tables, write ``args.json``; ``argv``: the command's arguments, for the record."""
    from mtwork.io import write_json

    command = "mtwork bench" + ("" if argv is None else " " + " ".join(argv))
    record = run(params, args, command)
    print(format_report(record), flush=True)
    if args.json is not None:
        write_json(args.json, record)
    return 0
