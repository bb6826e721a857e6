"""Every task loss under data parallelism is its share of the global batch's loss.

Two gloo processes each take half of a batch of 4 samples; rank 1's half holds no sample labeled for
the task in the "one rank unlabeled" cases. With the losses normalised by global counts
(``mtwork.engine.distributed``), the mean of the two ranks' losses must be the loss of the whole batch
computed in one process, and each rank's input gradient divided by 2 (DDP averages gradients) the
whole batch's gradient of those inputs. Tolerance: the two sides sum the same float32 terms in a
different order (per half, then across processes), a few ulp on means of ~10^3 terms: rtol 1e-5,
atol 1e-7 (gradients of single pixels are ~1e-4).
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

B, H, W = 4, 16, 24
FH, FW = 64, 96  # the detection head's input size (its coarsest level is FH/32 x FW/32)


def _inputs():
    """Deterministic predictions and labels for every loss (the same in every process)."""
    g = torch.Generator().manual_seed(0)
    seg_target = torch.randint(0, 5, (B, H, W), generator=g)
    seg_target[:, :4] = 255  # ignored rows
    depth = torch.rand(B, H, W, generator=g) * 40
    depth[:, :, :5] = 0  # invalid pixels
    normals = torch.nn.functional.normalize(torch.randn(B, 3, H, W, generator=g), dim=1)
    normals[:, :, 3:6] = 0
    edges = torch.rand(B, H, W, generator=g)
    edges[:, -2:] = -1
    return {
        "seg_logits": torch.randn(B, 5, H, W, generator=g), "seg_target": seg_target,
        "depth_pred": torch.rand(B, 1, H, W, generator=g) * 40, "depth": depth,
        "normals_pred": torch.randn(B, 3, H, W, generator=g), "normals": normals,
        "edges_pred": torch.rand(B, 1, H, W, generator=g), "edges": edges,
        "features": [torch.randn(B, 8, FH // s, FW // s, generator=g) for s in (4, 8, 16, 32)],
        "boxes": [torch.tensor([[2.0, 3.0, 44.0, 40.0], [10.0, 1.0, 93.0, 60.0]]), torch.tensor([[5.0, 5.0, 29.0, 19.0]]),
                  torch.zeros((0, 4)), torch.tensor([[0.0, 4.0, 70.0, 56.0]])],
        "box_labels": [torch.tensor([0, 2]), torch.tensor([1]), torch.zeros((0,), dtype=torch.long), torch.tensor([3])],
    }


CASES = {
    "all ranks labeled": torch.tensor([True, True, True, True]),
    "one rank unlabeled": torch.tensor([True, True, False, False]),
    "one sample per rank": torch.tensor([False, True, True, False]),
}


def _losses(x, labeled, rows):
    """{loss name: (loss, [leaf inputs])} over the samples ``rows`` (a slice) of the batch ``x``."""
    from mtwork.tasks import TASKS
    from mtwork.tasks.base import FeatureSpec
    from mtwork.tasks.depth import depth_loss
    from mtwork.tasks.edges import edges_loss
    from mtwork.tasks.normals import normals_loss
    from mtwork.tasks.segmentation import segmentation_loss

    lab = labeled[rows]
    out = {}
    seg = x["seg_logits"][rows].clone().requires_grad_()
    out["segmentation"] = (segmentation_loss(seg, x["seg_target"][rows], lab), seg)
    for kind in ("berhu", "l1"):
        pred = x["depth_pred"][rows].clone().requires_grad_()
        out[f"depth {kind}"] = (depth_loss(pred[lab], x["depth"][rows][lab], kind), pred)
    pred = x["normals_pred"][rows].clone().requires_grad_()
    out["normals"] = (normals_loss(pred[lab], x["normals"][rows][lab]), pred)
    pred = x["edges_pred"][rows].clone().requires_grad_()
    out["edges"] = (edges_loss(pred[lab], x["edges"][rows][lab]), pred)
    from mtwork.methods.lv_adapter import AlignmentLoss

    score = x["seg_logits"][rows, :, ::2, ::2].clone().requires_grad_()  # score maps at half the label size
    batch = {"labeled": {"semseg": lab}, "semseg": x["seg_target"][rows]}
    out["lv alignment"] = (AlignmentLoss("semseg", score).loss(batch, required=True), score)
    torch.manual_seed(1)  # the same FCOS head weights in every process
    det = TASKS.create("det")
    head = det.build_head(FeatureSpec(channels=8, strides=(4, 8, 16, 32)))
    feats = [f[rows].clone().requires_grad_() for f in x["features"]]
    outputs = head(feats, (FH, FW))
    batch = {"det": [{"boxes": b, "labels": l} for b, l in zip(x["boxes"][rows], x["box_labels"][rows])]}
    out["fcos"] = (det.loss(outputs, batch, lab), feats[1])
    return out


def _grads(losses):
    return {name: torch.autograd.grad(loss, [leaf], allow_unused=True)[0] for name, (loss, leaf) in losses.items()}


def _worker(rank, world, port, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        x = _inputs()
        per = B // world
        rows = slice(rank * per, (rank + 1) * per)
        out = {}
        for case, labeled in CASES.items():
            losses = _losses(x, labeled, rows)
            grads = _grads(losses)
            values = torch.stack([loss.detach() for loss, _ in losses.values()])
            dist.all_reduce(values)
            out[case] = {"loss": dict(zip(losses, (values / world).tolist())),
                         "grad": {n: (g / world if g is not None else None) for n, g in grads.items()}}
        torch.save(out, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_losses_of_two_ranks_average_to_the_loss_of_the_whole_batch(tmp_path):
    torch.set_num_threads(1)
    x = _inputs()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "r")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"r.{r}", weights_only=False) for r in range(2)]
    for case, labeled in CASES.items():
        whole = _losses(x, labeled, slice(0, B))
        grads = _grads(whole)
        for name, (loss, _) in whole.items():
            assert ranks[0][case]["loss"][name] == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-7), (case, name)
            got = [r[case]["grad"][name] for r in ranks]
            if grads[name] is None:
                assert all(g is None for g in got), (case, name)
                continue
            got = torch.cat([g if g is not None else torch.zeros_like(grads[name][:B // 2]) for g in got])
            assert torch.allclose(got, grads[name], rtol=1e-5, atol=1e-7), (case, name, float((got - grads[name]).abs().max()))
