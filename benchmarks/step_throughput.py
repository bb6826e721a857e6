"""Training-step throughput of the multi-task model per stage, as ratios measured in one run.

    python benchmarks/step_throughput.py [--arch resnet18] [--size 128 224] [--batch 16] [--threads 2]

One step = forward + multi-task loss + backward + AdamW, on random images with every task labeled.
Reports img/s for pretrain-finetune (no adapters, all trainable), and for pretrain-adapt-finetune in
its adapt stage (backbone frozen, no backward through it) and its finetune stage, plus the ratios.
Used for docs/benchmarks.md; never run by the tests.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mtwork.models.multitask import build_multitask_model, multitask_loss


def _batch(batch: int, height: int, width: int, device: torch.device):
    torch.manual_seed(0)
    boxes = torch.tensor([[10.0, 10.0, 60.0, 50.0], [80.0, 20.0, 120.0, 90.0]])
    return {
        "image": torch.randn(batch, 3, height, width, device=device),
        "semseg": torch.randint(0, 19, (batch, height, width), device=device),
        "drivable": torch.randint(0, 3, (batch, height, width), device=device),
        "labeled": {t: torch.ones(batch, dtype=torch.bool, device=device) for t in ("semseg", "drivable", "det")},
        "det": [{"boxes": boxes.to(device), "labels": torch.tensor([2, 0], device=device)} for _ in range(batch)],
    }


def measure(arch: str, method: str, stage: str, batch: dict, steps: int, warmup: int, device: torch.device) -> float:
    tasks = ["semseg", "drivable", "det"]
    model = build_multitask_model(arch, tasks, method=method).to(device)
    model.set_stage(stage)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outputs = model(batch["image"])
            loss, _ = multitask_loss(model.tasks, outputs, batch, {t: 1.0 for t in tasks})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch["image"].shape[0] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 224), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = _batch(args.batch, *args.size, device)
    finetune = measure(args.arch, "finetune", "finetune", batch, args.steps, args.warmup, device)
    adapt = measure(args.arch, "multiscale_adapter", "adapt", batch, args.steps, args.warmup, device)
    adapted_finetune = measure(args.arch, "multiscale_adapter", "finetune", batch, args.steps, args.warmup, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"{args.arch} {args.size[0]}x{args.size[1]} batch {args.batch} on {name} (torch {torch.__version__})")
    print(f"  pretrain-finetune step          {finetune:8.1f} img/s")
    print(f"  adapt stage step (frozen)       {adapt:8.1f} img/s   x{adapt / finetune:.2f} of pretrain-finetune")
    print(f"  finetune stage step (+adapters) {adapted_finetune:8.1f} img/s   x{adapted_finetune / finetune:.2f}")


if __name__ == "__main__":
    main()
