"""Loader processes keep the memory they free (glibc malloc settings for DataLoader workers).

A loader worker allocates and frees the same large buffers for every sample: the decoded JPEG
(2.7 MB at 1280x720), two decoded masks (0.9 MB each), the resized image (up to 4.3 MB), the canvas and
the batch. glibc's malloc hands a freed chunk back to the kernel when it was mmap-allocated (above
``M_MMAP_THRESHOLD``, which glibc raises on its own only up to 32 MiB, and only after a first free)
or when the free space at the top of the heap exceeds ``M_TRIM_THRESHOLD``; the next sample's buffer of
the same size is then faulted in again, one 4 KiB page at a time, and each fault costs more on a
virtual machine. Measured with ``BDD100KDataset`` + ``TrainTransform((736, 1280))`` in one process on
the 2-vCPU VM of docs/benchmarks.md (2026-12-06): 50-930 page faults per sample and 58-77 img/s
as glibc's state drifted, against 0 faults and 77-80 img/s with the thresholds below; over 40
alternated passes of the same code with and without them, 1.10x (median ratio).

This is what PyTorch's performance guide gets by preloading jemalloc or tcmalloc, done with
``mallopt`` from inside the process: a worker's memory stays at its high-water mark (a few batches)
instead of shrinking between samples. Only glibc has ``mallopt`` with these meanings; elsewhere
(musl, macOS) nothing changes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

#: ``mallopt`` parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Chunks up to this size come from the heap (and are reused), larger ones from mmap.
MMAP_THRESHOLD_BYTES = 256 << 20
#: The heap's free top is returned to the kernel only above this.
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Set this process's glibc malloc to reuse freed memory (module docstring); True when it did,
    False where the C library is not glibc or refused a setting. Affects this process only (a
    DataLoader worker calls it through ``loader_worker_init``)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; a fixed M_MMAP_THRESHOLD also turns glibc's own adjustment off
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def loader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of the training and evaluation DataLoaders: ``keep_freed_memory()``.

    Nothing random is seeded here: the augmentations draw from per-sample generators
    (``mtwork.engine.sampler``), so results do not depend on the worker.
    """
    keep_freed_memory()
