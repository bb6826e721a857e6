"""Download upstream checkpoints: stream to a temporary file beside the target, verify, then rename.

``download(url, dest, sha256=..., sha256_prefix=..., md5_prefix=...)`` either leaves a complete file
whose checksums match at ``dest`` or raises :class:`DownloadError` and leaves nothing behind: no
temporary file, no ``dest``, and no folder it created. Failures it turns into ``DownloadError``: HTTP
errors, unreachable hosts, timeouts (``timeout`` seconds for the connection and for each read), bodies
shorter or longer than their ``Content-Length``, and checksum mismatches. ``file://`` URLs work too.

``fetch_source(name, dest_dir)`` downloads a source of ``mtwork.checkpoints.catalog`` to
``dest_dir / file_name`` with the checksums the publisher gives.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from tqdm import tqdm

import mtwork
from mtwork.checkpoints.catalog import get_source
from mtwork.errors import UserError

CHUNK = 1 << 20  # bytes per read: large enough for speed, small enough for a smooth progress bar
_HEX = re.compile(r"[0-9a-f]+")


class DownloadError(UserError, RuntimeError):
    """A download or a checksum check failed; nothing was written at ``dest``.

    ``expected`` and ``actual`` are ``{"sha256": hex, "md5": hex}`` (the expected values may be
    prefixes); ``actual`` is empty when no body was read.
    """

    def __init__(self, message: str, url: str, dest: Path, expected: Optional[Dict[str, str]] = None,
                 actual: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.url = url
        self.dest = dest
        self.expected = dict(expected or {})
        self.actual = dict(actual or {})


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: Optional[str] = None,
    sha256_prefix: Optional[str] = None,
    timeout: float = 60,
    progress: bool = True,
    md5_prefix: Optional[str] = None,
) -> Path:
    """Fetch ``url`` to ``dest`` and return ``dest``.

    ``sha256`` is a full hex digest; ``sha256_prefix`` and ``md5_prefix`` are leading hex digits (as
    torchvision and MoCo publish them); every one given must match. An existing ``dest`` whose
    checksums match (or, with no checksum given, any existing ``dest``) is returned without
    downloading; one that does not match is downloaded again and replaced only once the new file
    verifies. ``progress`` shows a tqdm bar sized by ``Content-Length``.
    """
    dest = Path(dest)
    expected = _expected(sha256, sha256_prefix, md5_prefix)
    if dest.is_file():
        if not expected:
            return dest
        digests = _hash_file(dest)
        if not _mismatches(expected, digests):
            return dest
    elif dest.exists():
        raise DownloadError(f"cannot download {url}: {dest} exists and is not a file", url, dest, expected)

    created = _missing_parents(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digests = _stream(url, out, dest, expected, timeout, progress)
            out.flush()
            os.fsync(out.fileno())
        wrong = _mismatches(expected, digests)
        if wrong:
            detail = "; ".join(f"expected {algo} {_show(want, algo)}, got {digests[algo]}" for algo, want in wrong.items())
            raise DownloadError(f"checksum mismatch for {url}: {detail} (nothing written to {dest})",
                                url, dest, expected, digests)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in reversed(created):  # deepest first; only folders this call created, only if empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return dest


def fetch_source(name: str, dest_dir: str | os.PathLike, timeout: float = 60, progress: bool = True) -> Path:
    """Download catalog source ``name`` to ``dest_dir / file_name`` (checked against the published
    checksums) and return that path.

    Sources without a direct URL (Google Drive pages, TensorFlow conversions) are not fetched: a file
    the user placed at that path is verified and returned, otherwise ``DownloadError`` says where the
    file is published and where to put it.
    """
    source = get_source(name)
    dest = Path(dest_dir) / source.file_name
    checks = dict(sha256=source.sha256, sha256_prefix=source.sha256_prefix, md5_prefix=source.md5_prefix)
    if source.url is not None:
        return download(source.url, dest, timeout=timeout, progress=progress, **checks)
    expected = _expected(**checks)
    if not dest.is_file():
        raise DownloadError(
            f"source '{name}' has no direct download URL: get '{source.file_name}' from {source.page} and put it "
            f"at {dest} ({source.notes})", source.page, dest, expected)
    digests = _hash_file(dest)
    wrong = _mismatches(expected, digests)
    if wrong:
        raise DownloadError(f"{dest} does not match the published checksums of '{name}': "
                            + "; ".join(f"expected {a} {_show(w, a)}, got {digests[a]}" for a, w in wrong.items()),
                            source.page, dest, expected, digests)
    return dest


# --------------------------------------------------------------------------- helpers

_FULL = {"sha256": 64, "md5": 32}


def _expected(sha256: Optional[str], sha256_prefix: Optional[str], md5_prefix: Optional[str]) -> Dict[str, str]:
    """{"sha256": prefix-or-digest, "md5": prefix}, checked for hex and consistency."""
    out: Dict[str, str] = {}
    for algo, value, full in (("sha256", sha256, True), ("sha256", sha256_prefix, False), ("md5", md5_prefix, False)):
        if value is None:
            continue
        value = value.strip().lower()
        if not _HEX.fullmatch(value) or len(value) > _FULL[algo] or (full and len(value) != _FULL[algo]):
            kind = "digest" if full else "prefix"
            raise ValueError(f"not a {algo} {kind}: {value!r}")
        if algo in out and not (out[algo].startswith(value) or value.startswith(out[algo])):
            raise ValueError(f"sha256 {out[algo]} and sha256_prefix {value} contradict each other")
        if algo not in out or len(value) > len(out[algo]):
            out[algo] = value
    return out


def _show(value: str, algo: str) -> str:
    """A digest as written in messages: a prefix ends in '...'."""
    return value if len(value) == _FULL[algo] else value + "..."


def _mismatches(expected: Dict[str, str], digests: Dict[str, str]) -> Dict[str, str]:
    return {algo: want for algo, want in expected.items() if not digests[algo].startswith(want)}


def _hash_file(path: Path) -> Dict[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            sha.update(block)
            md5.update(block)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def _missing_parents(folder: Path) -> List[Path]:
    """The folders from the first missing ancestor of ``folder`` down to ``folder`` (empty if it exists)."""
    missing: List[Path] = []
    folder = folder.absolute()
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return list(reversed(missing))


def _stream(url: str, out, dest: Path, expected: Dict[str, str], timeout: float, progress: bool) -> Dict[str, str]:
    """Copy the body of ``url`` into ``out`` and return its digests; DownloadError on any failure."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    received = 0
    total: Optional[int] = None

    def fail(reason: str) -> DownloadError:
        actual = {"sha256": sha.hexdigest(), "md5": md5.hexdigest()} if received else {}
        digest = f"; sha256 of the {received} bytes received {actual['sha256']}" if actual else ""
        want = f"; expected {', '.join(f'{a} {_show(v, a)}' for a, v in expected.items())}" if expected else ""
        return DownloadError(f"download failed: {url}: {reason}{want}{digest} (nothing written to {dest})",
                             url, dest, expected, actual)

    request = urllib.request.Request(url, headers={"User-Agent": f"mtwork/{mtwork.__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.strip().isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                      disable=not progress, leave=False) as bar:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    sha.update(block)
                    md5.update(block)
                    received += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        raise fail(f"HTTP {exc.code} {exc.reason}") from exc
    except http.client.IncompleteRead as exc:
        raise fail(f"connection closed early: received {received + len(exc.partial)} of {total} bytes") from exc
    except (socket.timeout, TimeoutError) as exc:
        raise fail(f"timed out after {timeout} s ({received} bytes received)") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise fail(f"timed out after {timeout} s (connecting)") from exc
        raise fail(f"cannot open: {reason}") from exc
    except (http.client.HTTPException, ConnectionError, OSError) as exc:
        raise fail(f"{type(exc).__name__}: {exc}") from exc
    if total is not None and received != total:
        raise fail(f"truncated body: received {received} of {total} bytes (Content-Length)")
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}

