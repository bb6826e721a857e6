"""Loader workers keep the memory they free (mtwork.data.memory), checked with glibc's own accounting
(``mallinfo2``) in a process of its own, since malloc settings are process-wide. Page-fault counts
would not do: with transparent huge pages a fresh 48 MiB mapping takes only ~25 faults."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

_PROBE = r"""
import ctypes, json, sys
import numpy as np

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    from mtwork.data.memory import keep_freed_memory
    assert keep_freed_memory()
record = []
for _ in range(3):
    buffer = np.empty(48 << 20, np.uint8)  # above glibc's largest automatic mmap threshold (32 MiB)
    buffer.fill(1)
    held = libc.mallinfo2()
    del buffer
    freed = libc.mallinfo2()
    record.append({"mmapped_while_held": held.hblkhd, "heap_free_after": freed.fordblks, "mmapped_after": freed.hblkhd})
print(json.dumps(record))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_freed_buffers_stay_in_the_heap_for_the_next_sample():
    size = 48 << 20

    def run(mode):
        out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    # glibc's default: each 48 MiB buffer is a mapping of its own, handed back to the kernel when freed
    for r in run("default"):
        assert r["mmapped_while_held"] >= size and r["heap_free_after"] < size, r
    # kept: the buffer comes from the heap and stays there, free, for the next one
    for r in run("keep"):
        assert r["mmapped_while_held"] < size and r["heap_free_after"] >= size and r["mmapped_after"] < size, r


def test_keep_freed_memory_is_harmless_where_it_cannot_act(monkeypatch):
    from mtwork.data import memory

    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert memory.keep_freed_memory() is False
