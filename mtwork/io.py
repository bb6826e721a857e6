"""Atomic file writing: every output is written to a temporary file beside it, then renamed.

A crash or a failed check therefore never leaves a half-written file at the final path. The file is
flushed to disk (``fsync``) before the rename and the directory after it, so a power loss or a killed
node cannot leave a renamed but empty file either. ``tempfile.mkstemp`` creates files readable by the
owner only (0600); the final file gets the mode a plain ``open(path, "w")`` would give (0666 minus
the process's umask), so others on a shared cluster can read results when the umask lets them.

JSON is written strictly (``allow_nan=False``): NaN and infinity are not JSON, and a reader in another
language would fail on them. Values that are legitimately undefined (a metric with nothing to score)
go through :func:`nan_to_none` first and are written as ``null``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def current_umask() -> int:
    """The process's umask, read without changing it where /proc allows (no window in which another
    thread would create files with a wrong mode), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some filesystems (and Windows) cannot open a directory: nothing to sync there
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success give it the umask's mode, fsync
    it, rename it to ``path`` and fsync the directory. On failure the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        _fsync_path(tmp_path)
        os.replace(tmp_path, path)
        _fsync_path(path.parent, directory=True)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def nan_to_none(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every NaN or infinite float replaced by None (null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def _first_non_finite(obj: Any, where: str = "") -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "<top level>"
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON; a NaN or infinity anywhere is an error naming the file and key."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False)
    except ValueError as exc:
        key = _first_non_finite(obj)
        if key is None:
            raise
        raise ValueError(f"{path}: refusing to write a non-finite number at '{key}' (not valid JSON)") from exc
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch_to(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` through a file handle: given a path, torch names the archive's inner folder after
    the file, and a temporary file's random name would make equal objects give different bytes."""
    import torch

    with open(path, "wb") as handle:
        torch.save(obj, handle)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        save_torch_to(tmp, obj)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
