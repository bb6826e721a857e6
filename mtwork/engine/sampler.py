"""Which samples each process reads, and with which augmentation, independent of the world size.

**Order.** ``train.batch_size`` is the *global* batch: the samples of one optimizer step over all
processes. Epoch ``e`` visits ``perm = randperm(n)`` drawn from a generator seeded by
``(seed, e)`` alone, cut into global batches of ``batch_size`` (the last, incomplete one dropped when
there is more than one batch, as before); with gradient accumulation each global batch is cut again
into ``accum_steps`` contiguous micro-batches. Rank ``r`` of ``W`` takes the ``r``-th of ``W``
contiguous slices of every micro-batch (``torch.tensor_split``: sizes differ by at most one when
``W`` does not divide it). One process and ``W`` processes therefore see the same samples in the same
optimizer steps.

**Augmentation.** Each sample's random draws (``TrainTransform``: scale, crop, flip) come from a
``torch.Generator`` seeded by ``(seed, epoch, sample index)``, made where the sample is loaded. They
do not depend on the process, on the DataLoader worker or on how many workers there are
(``train.workers`` changes speed, not results), and an epoch can be replayed exactly after a resume:
the "state" of the loader and the augmentations is ``(seed, epoch)``, which every epoch checkpoint
records.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

#: Keys of the seed sequence, so the data order and the augmentations draw from unrelated streams.
_ORDER, _AUGMENT = 0, 1


def derived_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer ``keys`` (numpy's SeedSequence: well mixed, stable across
    platforms and versions), e.g. ``derived_seed(seed, epoch, index)``."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 ^ int(state[1])) & ((1 << 63) - 1)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of sample ``index``'s augmentation in ``epoch`` of a run seeded ``seed``."""
    return torch.Generator().manual_seed(derived_seed(seed, _AUGMENT, epoch, index))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """(n,) int64: the order of epoch ``epoch`` (the same in every process and world size)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, _ORDER, epoch)))


class GlobalBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Yields this rank's micro-batches of one epoch as lists of ``(epoch, sample index)`` keys.

    Args:
        n: dataset size; batch_size: the global batch (all ranks, all micro-batches of a step);
        seed: the run's seed; rank, world_size: this process's place; accum_steps: micro-batches per
        optimizer step. ``set_epoch(e)`` before iterating. ``len()`` is micro-batches per epoch;
        ``steps_per_epoch`` is optimizer steps per epoch.
    Raises ValueError when a slice would be empty (fewer samples in a micro-batch than processes).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, accum_steps: int = 1):
        if n < 1:
            raise ValueError("the training set is empty")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.rank, self.world_size, self.accum_steps = int(rank), int(world_size), int(accum_steps)
        self.epoch = 0
        # the previous loop's rule: drop the incomplete last batch unless it is the only one
        self.drop_last = self.n > self.batch_size
        self.steps_per_epoch = self.n // self.batch_size if self.drop_last else 1
        smallest = min(self.batch_size, self.n) // self.accum_steps // self.world_size
        if smallest < 1:
            raise ValueError(
                f"a global batch of {min(self.batch_size, self.n)} samples cannot be split into {self.accum_steps} "
                f"micro-batches x {self.world_size} processes (raise train.batch_size or lower accum_steps/--nproc)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accum_steps

    def global_batches(self) -> List[torch.Tensor]:
        """The epoch's global batches (each a 1-D tensor of sample indices), the same on every rank."""
        perm = epoch_permutation(self.n, self.seed, self.epoch)
        size = self.batch_size if self.drop_last else self.n
        return [perm[i * size:(i + 1) * size] for i in range(self.steps_per_epoch)]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for batch in self.global_batches():
            for micro in torch.tensor_split(batch, self.accum_steps):
                mine = torch.tensor_split(micro, self.world_size)[self.rank]
                yield [(self.epoch, int(i)) for i in mine.tolist()]


class SeededSamples(Dataset):
    """``dataset`` read with a per-sample seeded ``transform``: item ``(epoch, index)`` is
    ``transform(dataset.raw_sample(index), generator=sample_generator(seed, epoch, index))``.

    ``dataset`` needs ``raw_sample(index)`` (the untransformed sample) and ``__len__``; ``transform``
    takes a ``generator`` keyword (``mtwork.data.transforms.TrainTransform``). When the transform takes
    an encoded image (``TAKES_ENCODED_IMAGE``) and the reader can hand one (``raw_sample(index,
    encoded_image=True)``, BDD100K), the JPEG is decoded at the reduced size the draw allows: the same
    pixels as decoding it whole and resizing, at a fraction of the cost (docs/benchmarks.md).
    """

    def __init__(self, dataset: Any, transform: Callable[..., Dict[str, Any]], seed: int):
        import inspect

        self.dataset = dataset
        self.transform = transform
        self.seed = int(seed)
        self.encoded = bool(getattr(transform, "TAKES_ENCODED_IMAGE", False)) and (
            "encoded_image" in inspect.signature(dataset.raw_sample).parameters)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]) -> Dict[str, Any]:
        epoch, index = key
        sample = self.dataset.raw_sample(index, encoded_image=True) if self.encoded else self.dataset.raw_sample(index)
        return self.transform(sample, generator=sample_generator(self.seed, epoch, index))


def train_loader(samples: SeededSamples, sampler: GlobalBatchSampler, collate: Callable, workers: int,
                 pin_memory: bool, seed: int) -> torch.utils.data.DataLoader:
    """The DataLoader over ``samples`` in ``sampler``'s micro-batches. Its own generator keeps the
    loader from drawing torch's global RNG state (which the model may use) when it starts workers;
    its workers keep the memory they free (``mtwork.data.memory``)."""
    from mtwork.data.memory import loader_worker_init

    return torch.utils.data.DataLoader(
        samples, batch_sampler=sampler, num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(derived_seed(seed, 2)),
        worker_init_fn=loader_worker_init,
    )

