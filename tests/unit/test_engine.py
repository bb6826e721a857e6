"""The training engine's parts, each against hand-worked values: sampler, seeds, parameter groups,
per-stage schedule, precision, epoch checkpoints, launcher environments."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtwork.engine import checkpoint as ckpt
from mtwork.engine.distributed import DistEnv, env_from
from mtwork.engine.optim import StageSchedule, build_optimizer, param_groups
from mtwork.engine.precision import Precision, resolve_amp
from mtwork.engine.sampler import GlobalBatchSampler, SeededSamples, epoch_permutation, sample_generator


# ---- sampler --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,batch,accum", [(10, 4, 1), (10, 4, 2), (9, 6, 3), (5, 8, 1)])
def test_every_world_size_sees_the_same_samples_in_the_same_step(n, batch, accum):
    """The union over ranks of each micro-batch, in rank order, is the micro-batch of one process."""
    one = list(GlobalBatchSampler(n, batch, seed=3, accum_steps=accum))
    for world in (2, 3):
        if min(batch, n) // accum // world < 1:
            continue
        ranks = [list(GlobalBatchSampler(n, batch, seed=3, rank=r, world_size=world, accum_steps=accum))
                 for r in range(world)]
        assert all(len(r) == len(one) for r in ranks)
        for i, micro in enumerate(one):
            assert [k for r in ranks for k in r[i]] == micro


def test_global_batches_follow_the_old_drop_last_rule_and_change_with_the_epoch():
    sampler = GlobalBatchSampler(10, 4, seed=0)
    assert sampler.steps_per_epoch == 2 and len(sampler) == 2  # 10 // 4, the incomplete batch dropped
    first = [k for b in sampler for k in b]
    assert len(first) == 8 and len({i for _, i in first}) == 8 and {e for e, _ in first} == {0}
    sampler.set_epoch(1)
    second = [i for b in sampler for _, i in b]
    assert second != [i for _, i in first]
    small = GlobalBatchSampler(3, 8, seed=0)  # fewer samples than a batch: one batch of all of them
    assert small.steps_per_epoch == 1 and sorted(i for _, i in next(iter(small))) == [0, 1, 2]
    with pytest.raises(ValueError, match="cannot be split"):
        GlobalBatchSampler(3, 8, seed=0, world_size=4)
    # the order is a function of (seed, epoch) only
    assert torch.equal(epoch_permutation(10, 0, 1), epoch_permutation(10, 0, 1))
    assert not torch.equal(epoch_permutation(10, 0, 1), epoch_permutation(10, 1, 1))


def test_a_samples_augmentation_depends_on_seed_epoch_and_index_only():
    from mtwork.data.transforms import TrainTransform

    t = TrainTransform((32, 48))
    draw = lambda seed, epoch, index: t.sample_params((64, 96), sample_generator(seed, epoch, index))  # noqa: E731
    assert draw(0, 1, 5) == draw(0, 1, 5)
    assert len({draw(0, 1, i) for i in range(8)}) > 1 and draw(0, 1, 5) != draw(0, 2, 5)

    class Raw:
        def __len__(self):
            return 8

        def raw_sample(self, index):
            return {"index": index}

    calls = []
    samples = SeededSamples(Raw(), lambda s, generator: calls.append((s["index"], torch.rand((), generator=generator))), 0)
    samples[(1, 5)]
    samples[(1, 5)]
    assert calls[0][0] == 5 and calls[0][1] == calls[1][1]


# ---- optimizer --------------------------------------------------------------------------------------

class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight decays, bias does not
        self.norm = nn.GroupNorm(2, 4)  # 1-D weight and bias: no decay
        self.table = nn.Parameter(torch.ones(3, 3))  # listed in no_weight_decay(): no decay
        self.scale = nn.Parameter(torch.ones(1, 1, 1))  # a learned scalar of shape (1,1,1): no decay
        self.shared = self.conv.weight  # the same tensor twice: once in the groups

    def no_weight_decay(self):
        return {"table"}


def test_param_groups_decay_weight_matrices_only():
    model = _Toy()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p for p in decay["params"]] == [model.conv.weight]
    assert {id(p) for p in no_decay["params"]} == {id(model.conv.bias), id(model.norm.weight), id(model.norm.bias),
                                                   id(model.table), id(model.scale)}
    # AdamW with a zero gradient: a decayed weight shrinks by exactly lr * wd, the others do not move
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, _, _ = build_optimizer(model, lr=0.1, weight_decay=0.05, stage_steps=[("train", 10)], warmup_steps=0)
    optimizer.step()
    for name, p in model.named_parameters():
        factor = 1 - 0.1 * 0.05 if p is model.conv.weight else 1.0
        assert torch.allclose(p, before[name] * factor, rtol=0, atol=1e-7), name


def test_each_stage_restarts_warmup_and_cosine():
    schedule = StageSchedule([("adapt", 10), ("finetune", 10)], warmup_steps=2)
    expected = {0: 0.5, 1: 1.0, 2: 1.0, 9: 0.5 * (1 + math.cos(math.pi * 7 / 8)),
                10: 0.5, 11: 1.0,  # the finetune stage warms up again
                15: 0.5 * (1 + math.cos(math.pi * 3 / 8)), 19: 0.5 * (1 + math.cos(math.pi * 7 / 8))}
    for step, value in expected.items():
        assert schedule.factor(step) == pytest.approx(value, abs=1e-12), step
    assert schedule.locate(12) == ("finetune", 2, 10)
    # a stage shorter than the warmup warms up over its own length
    assert StageSchedule([("train", 1)], warmup_steps=5).factor(0) == 1.0


# ---- precision ------------------------------------------------------------------------------------

def test_amp_modes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (resolve_amp("auto", cpu), resolve_amp("auto", cuda), resolve_amp("bf16", cpu)) == ("none", "bf16", "bf16")
    with pytest.raises(ValueError, match="train.amp"):
        resolve_amp("true", cpu)
    fp16 = Precision("fp16", cpu)
    assert fp16.scaler is not None and fp16.state_dict()["scale"] == 65536.0
    assert Precision("bf16", cpu).scaler is None and Precision("none", cpu).state_dict() is None
    with Precision("bf16", cpu).autocast():
        assert nn.Linear(4, 4)(torch.ones(2, 4)).dtype == torch.bfloat16


# ---- epoch checkpoints ----------------------------------------------------------------------------

def _epoch_state(epoch, params_hash="h"):
    return {"format": ckpt.CHECKPOINT_FORMAT, "epoch": epoch, "step": 4 * epoch, "params_hash": params_hash,
            "model": {}, "optimizer": {}, "scheduler": {}, "rng": ckpt.rng_state(), "log_epochs": []}


def test_resume_falls_back_from_a_damaged_newest_file(tmp_path):
    for epoch in (1, 2, 3):
        torch.save(_epoch_state(epoch), ckpt.epoch_file(tmp_path, epoch))
    ckpt.epoch_file(tmp_path, 3).write_bytes(ckpt.epoch_file(tmp_path, 3).read_bytes()[:100])  # truncated
    ckpt.epoch_file(tmp_path, 2).write_bytes(b"")  # empty
    point = ckpt.find_resume(tmp_path, "h")
    assert point.path.name == "epoch_001.pt" and point.state["epoch"] == 1
    assert [name for name, _ in point.damaged] == ["epoch_003.pt", "epoch_002.pt"]
    assert all(name in why for name, why in point.damaged)  # the reason names the file
    assert not point.stale
    assert ckpt.find_resume(tmp_path, "other").stale == ["epoch_001.pt", "epoch_002.pt", "epoch_003.pt"]
    torch.save({"epoch": 1}, ckpt.epoch_file(tmp_path, 4))  # a dict, but not an epoch checkpoint
    with pytest.raises(ckpt.CheckpointError, match="epoch_004.pt: not an epoch checkpoint"):
        ckpt.load(ckpt.epoch_file(tmp_path, 4))


def test_epoch_files_sort_by_number_and_prune_keeps_the_newest(tmp_path):
    for epoch in (9, 10, 100):
        torch.save(_epoch_state(epoch), ckpt.epoch_file(tmp_path, epoch))
    (tmp_path / "epoch_x.pt").write_text("not ours")
    assert [p.name for p in ckpt.epoch_files(tmp_path)] == ["epoch_009.pt", "epoch_010.pt", "epoch_100.pt"]
    ckpt.prune(tmp_path, 2)
    assert [p.name for p in ckpt.epoch_files(tmp_path)] == ["epoch_010.pt", "epoch_100.pt"]


def test_rng_states_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(()))
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(())) == a


# ---- where a process sits in a job ----------------------------------------------------------------

def test_launcher_environments():
    assert env_from({}) == DistEnv()
    elastic = env_from({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "2950"})
    assert (elastic.rank, elastic.world_size, elastic.local_rank, elastic.master_addr, elastic.master_port) == (3, 4, 1, "n1", 2950)
    slurm = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
             "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123"}
    step = env_from(slurm)
    assert (step.rank, step.world_size, step.local_rank, step.master_addr, step.master_port) == (5, 8, 1, "gpu07", 20123)
    # a batch script (no srun step) or a one-task step (Snakemake's job step) is one process
    assert not env_from({k: v for k, v in slurm.items() if k != "SLURM_STEP_ID"}).distributed
    assert not env_from({**slurm, "SLURM_STEP_NUM_TASKS": "1"}).distributed
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        env_from({"RANK": "0", "WORLD_SIZE": "two"})


def test_sync_batchnorm_replaces_plain_batchnorms_only():
    from mtwork.engine.loop import convert_sync_batchnorm
    from mtwork.methods.lora import lock_batchnorm_eval

    torch.manual_seed(0)
    frozen = lock_batchnorm_eval(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))  # LoRA's eval-locked norms
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), frozen)
    with torch.no_grad():
        model[1].running_mean.uniform_()
        model[1].weight.uniform_()
    model[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convert_sync_batchnorm(model)
    assert type(model[1]) is nn.SyncBatchNorm and not model[1].weight.requires_grad
    assert type(model[2][1]) is not nn.SyncBatchNorm and isinstance(model[2][1], nn.BatchNorm2d)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
