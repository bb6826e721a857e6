"""Source 2: training-step throughput of VTAGML with one backbone pass per image vs one per (image, task).

    python benchmarks/vit_shared_pass.py [--device cpu] [--arch mtwork_swinv2_tiny] [--input 64 128] [--batch 8] [--steps 5]
                                         [--warmup 1] [--threads 2] [--tasks 2 4] [--json OUT]

Model: ``VTAGMLModel`` (TAA + TSN + adapters, the paper's adapted blocks) on the tiny Swin-V2
``mtwork_swinv2_tiny`` (random weights; throughput does not depend on them), tasks with out channels
19, 1, 3, 1 (semseg, depth, normals, edges); T = 2 uses the first two. One step = forward + per-task
losses (cross-entropy for the 19-class map, L1 for the rest, random targets) + backward + AdamW on the
trainable parameters; the throughput counts *unique* images per second (batch / median step time).

Two modes, same weights, same batch:

(a) ``shared``: mtwork's ``model(images)``. The frozen, task-independent prefix of the encoder (patch
    embedding up to the first adapted block) runs once per batch; the adapted part and the decoders
    run once per task.
(b) ``per_task``: the released code's way. It stacks every image T times (once per task) and sends the
    stacked batch through the *whole* encoder, so the frozen prefix runs once per (image, task).
    ``PerTaskPrefixVTAGML`` reproduces that on the same model: ``--emulation duplicate`` (default)
    runs the prefix once on the T-times-repeated batch (T*B images, as the released code's batch) and
    gives task t its own slice; ``--emulation loop`` recomputes the prefix once per task on the B
    images. Either way only the prefix changes: the task-conditioned part already runs per task in
    mode (a), so the difference between (a) and (b) is exactly the duplicated frozen work. Both modes
    run the prefix under ``torch.no_grad``, as mtwork does.

The two modes' steps are interleaved (a, b, a, b, ...) so that other load on the machine hits both
alike. The frozen prefix is also timed alone (forward, no_grad) once per step pair: its share of an (a)
step predicts the ratio, ``(t_a + (T - 1) t_prefix) / t_a``, more steadily than two noisy step times.
How large the ratio can be depends on how much of the encoder lies before the first adapted block:
in ``mtwork_swinv2_tiny`` (depths 2, 2, 4, 2) that is stages 1-2 only (stage 3 is all adapted), while
in Swin-V2-B (depths 2, 2, 18, 2) it is stages 1-2 and 14 of stage 3's 18 blocks. On a CPU shared with
other jobs use ``--threads 1``: oversubscribed threads made steps erratic (see docs/benchmarks.md).

Before timing, both modes are checked to give the same outputs and the same gradients for the same
batch (they must: the prefix does not depend on the task); trainable parameters are first perturbed
away from their zero initialisation so that TAA, TSN and the adapters actually act.

Used for docs/benchmarks.md; never run by the tests.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from mtwork.methods.vtagml import VTAGMLModel
from mtwork.models.swin import SWIN_CONFIGS, create_swinv2

ARCH = "mtwork_swinv2_tiny"
ALL_TASKS = {"semseg": 19, "depth": 1, "normals": 3, "edges": 1}


class PerTaskPrefixVTAGML(VTAGMLModel):
    """``VTAGMLModel`` whose frozen prefix runs once per task, as in the released code (see the module
    docstring). Same parameters and state-dict keys as ``VTAGMLModel``; only ``encode`` differs."""

    emulation = "duplicate"

    def encode(self, image: torch.Tensor, affinity: Optional[torch.Tensor] = None) -> Dict[str, List[torch.Tensor]]:
        emb = self.task_embeddings(affinity)
        num, b = len(self.task_names), image.shape[0]
        if self.emulation == "duplicate":
            # every image once per task, one batch of T*B images through the prefix (task-major order)
            x_all, maps_all = self._shared_prefix(image.repeat(num, 1, 1, 1))
            per_task = [(x_all[t * b:(t + 1) * b], [m[t * b:(t + 1) * b] for m in maps_all]) for t in range(num)]
        elif self.emulation == "loop":
            per_task = [self._shared_prefix(image) for _ in range(num)]
        else:
            raise ValueError(f"unknown emulation {self.emulation!r} (duplicate or loop)")
        return {name: self._task_part(per_task[t][0], per_task[t][1], emb[t])
                for t, name in enumerate(self.task_names)}


def build(cls, tasks: Dict[str, int], size, arch: str = ARCH, seed: int = 0) -> VTAGMLModel:
    torch.manual_seed(seed)
    encoder = create_swinv2(arch, size)
    return cls(encoder, tasks, task_embed_dim=32, adapter_reduction=4, decoder_depth=2)


def make_batch(tasks: Dict[str, int], batch: int, size, device: torch.device):
    g = torch.Generator().manual_seed(1)
    h, w = size
    images = torch.randn(batch, 3, h, w, generator=g)
    targets = {}
    for name, ch in tasks.items():
        if name == "semseg":
            targets[name] = torch.randint(0, ch, (batch, h, w), generator=g)
        else:
            targets[name] = torch.rand(batch, ch, h, w, generator=g)
    return images.to(device), {k: v.to(device) for k, v in targets.items()}


def total_loss(outputs: Dict[str, torch.Tensor], targets: Dict[str, torch.Tensor]) -> torch.Tensor:
    terms = []
    for name, out in outputs.items():
        out = out.float()
        if name == "semseg":
            terms.append(F.cross_entropy(out, targets[name]))
        else:
            terms.append(F.l1_loss(out, targets[name]))
    return torch.stack(terms).sum()


def perturb(model: VTAGMLModel, scale: float = 0.02) -> None:
    """Move every trainable parameter off its (often zero) initialisation, deterministically."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g).to(p) * scale)


def check_equal(shared: VTAGMLModel, per_task: VTAGMLModel, images, targets, affinity) -> Dict[str, float]:
    """Max abs differences of outputs and of trainable gradients between the two modes."""
    diffs = {"outputs": 0.0, "gradients": 0.0}
    grads = []
    outs = []
    for model in (shared, per_task):
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(images, affinity)
        total_loss(out, targets).backward()
        outs.append({k: v.detach() for k, v in out.items()})
        grads.append({n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                      for n, p in model.named_parameters() if p.requires_grad})
        model.zero_grad(set_to_none=True)
    for k in outs[0]:
        diffs["outputs"] = max(diffs["outputs"], float((outs[0][k] - outs[1][k]).abs().max()))
    for n in grads[0]:
        diffs["gradients"] = max(diffs["gradients"], float((grads[0][n] - grads[1][n]).abs().max()))
    diffs["output_scale"] = max(float(o.abs().max()) for o in outs[0].values())
    diffs["gradient_scale"] = max(float(g.abs().max()) for g in grads[0].values())
    return diffs


def _step(model, optimizer, images, targets, affinity, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        outputs = model(images, affinity)
    loss = total_loss(outputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(models, images, targets, affinity, steps: int, warmup: int, device: torch.device) -> List[float]:
    """Unique images/s of each model (median step). Steps of the models are interleaved (a, b, a, b, ...)
    so that load from other processes on the machine affects both modes alike."""
    optimizers = []
    for model in models:
        model.train()
        optimizers.append(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4))
    times: List[List[float]] = [[] for _ in models]
    prefix: List[float] = []
    for i in range(warmup + steps):
        for j, (model, optimizer) in enumerate(zip(models, optimizers)):
            seconds = _step(model, optimizer, images, targets, affinity, device)
            if i >= warmup:
                times[j].append(seconds)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        models[0]._shared_prefix(images)  # the frozen prefix alone (no_grad), for its share of a step
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            prefix.append(time.perf_counter() - t0)
    return [images.shape[0] / statistics.median(t) for t in times] + [statistics.median(prefix)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--arch", default=ARCH, choices=sorted(SWIN_CONFIGS),
                        help="Swin-V2 config (swinv2_base_window12_192 wants --input 192 192 and a GPU)")
    parser.add_argument("--input", type=int, nargs=2, default=(64, 128), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", type=int, nargs="+", default=(2, 4), help="numbers of tasks T (1..4)")
    parser.add_argument("--emulation", default="duplicate", choices=("duplicate", "loop"),
                        help="how mode (b) repeats the prefix (see the module docstring)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = tuple(args.input)
    name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}), {args.threads} threads"
    print(f"VTAGML on {args.arch} {size[0]}x{size[1]}, batch {args.batch}, {args.steps} timed steps after "
          f"{args.warmup} warm-up, emulation '{args.emulation}', on {name} (torch {torch.__version__})")
    results = []
    for num in args.tasks:
        if not 1 <= num <= len(ALL_TASKS):
            raise SystemExit(f"--tasks: T must be 1..{len(ALL_TASKS)}, got {num}")
        tasks = dict(list(ALL_TASKS.items())[:num])
        shared = build(VTAGMLModel, tasks, size, args.arch)
        perturb(shared)
        per_task = build(PerTaskPrefixVTAGML, tasks, size, args.arch)
        per_task.emulation = args.emulation
        per_task.load_state_dict(shared.state_dict())
        shared, per_task = shared.to(device), per_task.to(device)
        images, targets = make_batch(tasks, args.batch, size, device)
        # a non-trivial affinity, as TROA would give after some updates
        affinity = (torch.eye(num) * 0.7 + 0.3).to(device)
        diffs = check_equal(shared, per_task, images, targets, affinity)
        a, b, prefix_s = measure([shared, per_task], images, targets, affinity, args.steps, args.warmup, device)
        step_a = args.batch / a
        # what recomputing the prefix T-1 more times should cost, from the prefix's own time
        expected = (step_a + (num - 1) * prefix_s) / step_a
        row = {"tasks": num, "task_names": list(tasks), "shared_img_s": a, "per_task_img_s": b, "ratio": a / b,
               "prefix_seconds": prefix_s, "prefix_share_of_shared_step": prefix_s / step_a,
               "expected_ratio_from_prefix_time": expected,
               "max_abs_diff_outputs": diffs["outputs"], "max_abs_diff_gradients": diffs["gradients"],
               "output_scale": diffs["output_scale"], "gradient_scale": diffs["gradient_scale"],
               "trainable_params": shared.count_parameters(trainable_only=True),
               "total_params": shared.count_parameters()}
        results.append(row)
        print(f"  T={num} ({', '.join(tasks)}): (a) shared prefix {a:7.2f} img/s | (b) prefix per task {b:7.2f} img/s"
              f" | (a)/(b) x{a / b:.2f} (prefix {100 * prefix_s / step_a:.0f}% of an (a) step,"
              f" expected x{expected:.2f}) | max |diff| outputs {diffs['outputs']:.1e} (scale {diffs['output_scale']:.1e}),"
              f" gradients {diffs['gradients']:.1e} (scale {diffs['gradient_scale']:.1e})", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "arch": args.arch, "input": list(size), "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
            "threads": args.threads, "device": name, "torch": torch.__version__, "emulation": args.emulation,
            "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
