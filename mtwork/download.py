"""Checksummed, optionally resumable downloads: the one fetch implementation for checkpoints and datasets.

``download(url, dest, sha256=..., sha256_prefix=..., md5_prefix=..., resume=False)`` either leaves a
complete file whose checksums match at ``dest`` or raises :class:`DownloadError`; ``dest`` itself is only
ever written by an atomic rename of a verified file. Failures it turns into ``DownloadError``: HTTP
errors, unreachable hosts, timeouts (``timeout`` seconds for the connection and for each read), bodies
shorter or longer than their ``Content-Length``, and checksum mismatches. ``file://`` URLs work too.

Two modes for what a failure leaves behind:

* ``resume=False`` (checkpoints): the body goes to a uniquely named temporary file beside ``dest``;
  any failure removes it and every folder the call created, so nothing at all is left.
* ``resume=True`` (dataset archives, gigabytes): the body goes to ``<dest>.part``. When a transfer
  breaks off (connection closed early, timeout, truncated body, server error) the bytes received so far
  stay in that file and the error says so; the next call asks the server for the rest with an HTTP
  ``Range: bytes=N-`` request and appends (a server that answers 200 instead of 206 ignores ranges: the
  file is then fetched from the start). A checksum mismatch deletes the ``.part`` file: a corrupt body is
  never resumed. The digests cover the kept bytes plus the appended ones.

``opener`` lets a caller bring its own ``urllib`` opener (e.g. one with a cookie jar for a site that
needs a login session); ``headers`` are added to the request.
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

from mtwork.errors import UserError
from typing import BinaryIO, Dict, List, Mapping, Optional

from tqdm import tqdm

import mtwork

CHUNK = 1 << 20  # bytes per read: large enough for speed, small enough for a smooth progress bar
PART_SUFFIX = ".part"
_HEX = re.compile(r"[0-9a-f]+")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_FULL = {"sha256": 64, "md5": 32}


class DownloadError(UserError, RuntimeError):
    """A download or a checksum check failed; nothing was written at ``dest``.

    ``expected`` and ``actual`` are ``{"sha256": hex, "md5": hex}`` (the expected values may be
    prefixes); ``actual`` is empty when no body was read. ``partial`` is the ``.part`` file a resumable
    download kept for the next try (None when nothing was kept).
    """

    def __init__(self, message: str, url: str, dest: Path, expected: Optional[Dict[str, str]] = None,
                 actual: Optional[Dict[str, str]] = None, partial: Optional[Path] = None):
        super().__init__(message)
        self.url = url
        self.dest = dest
        self.expected = dict(expected or {})
        self.actual = dict(actual or {})
        self.partial = partial


def part_path(dest: str | os.PathLike) -> Path:
    """Where a resumable download of ``dest`` keeps its bytes until they verify."""
    dest = Path(dest)
    return dest.with_name(dest.name + PART_SUFFIX)


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: Optional[str] = None,
    sha256_prefix: Optional[str] = None,
    timeout: float = 60,
    progress: bool = True,
    md5_prefix: Optional[str] = None,
    *,
    resume: bool = False,
    opener: Optional[urllib.request.OpenerDirector] = None,
    headers: Optional[Mapping[str, str]] = None,
) -> Path:
    """Fetch ``url`` to ``dest`` and return ``dest``.

    ``sha256`` is a full hex digest; ``sha256_prefix`` and ``md5_prefix`` are leading hex digits (as
    torchvision and MoCo publish them; a full 32-digit md5 is a prefix too); every one given must match.
    An existing ``dest`` whose checksums match (or, with no checksum given, any existing ``dest``) is
    returned without downloading; one that does not match is downloaded again and replaced only once the
    new file verifies. ``progress`` shows a tqdm bar sized by ``Content-Length``. ``resume``: see the
    module docstring.
    """
    dest = Path(dest)
    expected = expected_digests(sha256, sha256_prefix, md5_prefix)
    if dest.is_file():
        if not expected:
            return dest
        if not mismatches(expected, hash_file(dest)):
            return dest
    elif dest.exists():
        raise DownloadError(f"cannot download {url}: {dest} exists and is not a file", url, dest, expected)
    fetch = _Fetch(url, dest, expected, timeout, progress, opener, headers)
    return fetch.resumable() if resume else fetch.once()


# --------------------------------------------------------------------------- checksum helpers


def expected_digests(sha256: Optional[str], sha256_prefix: Optional[str], md5_prefix: Optional[str]) -> Dict[str, str]:
    """{"sha256": prefix-or-digest, "md5": prefix}, checked for hex and consistency (ValueError)."""
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


def show_digest(value: str, algo: str) -> str:
    """A digest as written in messages: a prefix ends in '...'."""
    return value if len(value) == _FULL[algo] else value + "..."


def mismatches(expected: Dict[str, str], digests: Dict[str, str]) -> Dict[str, str]:
    """The expected digests (by algorithm) that ``digests`` do not start with."""
    return {algo: want for algo, want in expected.items() if not digests[algo].startswith(want)}


def describe_mismatch(expected: Dict[str, str], digests: Dict[str, str]) -> str:
    return "; ".join(f"expected {a} {show_digest(w, a)}, got {digests[a]}" for a, w in mismatches(expected, digests).items())


def hash_file(path: Path) -> Dict[str, str]:
    """{"sha256": hex, "md5": hex} of a file, read in chunks."""
    hashers = _Hashers()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            hashers.update(block)
    return hashers.digests()


class _Hashers:
    def __init__(self):
        self.sha, self.md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        self.size = 0

    def update(self, block: bytes) -> None:
        self.sha.update(block)
        self.md5.update(block)
        self.size += len(block)

    def digests(self) -> Dict[str, str]:
        return {"sha256": self.sha.hexdigest(), "md5": self.md5.hexdigest()}


def _missing_parents(folder: Path) -> List[Path]:
    """The folders from the first missing ancestor of ``folder`` down to ``folder`` (empty if it exists)."""
    missing: List[Path] = []
    folder = folder.absolute()
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return list(reversed(missing))


def _remove_folders(created: List[Path]) -> None:
    for folder in reversed(created):  # deepest first; only folders this call created, only if empty
        try:
            folder.rmdir()
        except OSError:
            break


# --------------------------------------------------------------------------- the transfer


class _Failed(Exception):
    """A transfer failure; ``reason`` goes into the DownloadError message."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Fetch:
    def __init__(self, url, dest: Path, expected, timeout, progress, opener, headers):
        self.url, self.dest, self.expected = url, dest, expected
        self.timeout, self.progress = timeout, progress
        self.open = (opener or urllib.request.build_opener()).open
        self.headers = {"User-Agent": f"mtwork/{mtwork.__version__}", **dict(headers or {})}

    # -- one-shot: unique temporary file, nothing left on any failure --------------------------
    def once(self) -> Path:
        created = _missing_parents(self.dest.parent)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.dest.name}.", suffix=PART_SUFFIX, dir=self.dest.parent)
        tmp = Path(tmp_name)
        hashers = _Hashers()
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    self._transfer(out, hashers, offset=0)
                except _Failed as exc:
                    raise self._error(exc.reason, hashers) from exc.__cause__
                _sync(out)
            self._verify_and_move(tmp, hashers.digests())
        except BaseException:
            tmp.unlink(missing_ok=True)
            _remove_folders(created)
            raise
        return self.dest

    # -- resumable: <dest>.part survives a broken transfer ------------------------------------
    def resumable(self) -> Path:
        part = part_path(self.dest)
        created = _missing_parents(self.dest.parent)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._resume_into(part, allow_restart=True)
        except BaseException:
            if not part.exists():
                _remove_folders(created)
            raise

    def _resume_into(self, part: Path, allow_restart: bool) -> Path:
        hashers = _Hashers()
        if part.is_file():
            with open(part, "rb") as handle:  # the digests must cover the kept bytes too
                for block in iter(lambda: handle.read(CHUNK), b""):
                    hashers.update(block)
        offset = hashers.size
        try:
            with open(part, "ab") as out:
                try:
                    done = self._transfer(out, hashers, offset=offset)
                finally:
                    _sync(out)
        except _Failed as exc:
            if hashers.size == 0:
                part.unlink(missing_ok=True)
                raise self._error(exc.reason, hashers) from exc.__cause__
            raise self._error(exc.reason, hashers, partial=part) from exc.__cause__
        if done == "restart":  # the server ignored the range or the part did not fit: start over
            part.unlink(missing_ok=True)
            if not allow_restart:
                raise self._error("the server did not honour the range request twice in a row", _Hashers())
            return self._resume_into(part, allow_restart=False)
        try:
            self._verify_and_move(part, hashers.digests())
        except DownloadError:
            part.unlink(missing_ok=True)  # a corrupt body is never resumed
            raise
        return self.dest

    # -- shared --------------------------------------------------------------------------------
    def _transfer(self, out: BinaryIO, hashers: _Hashers, offset: int) -> str:
        """Write the body (from byte ``offset``) to ``out``; "ok", or "restart" when the server sent
        something else than the requested range. Raises _Failed on any transfer failure."""
        headers = dict(self.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(self.url, headers=headers)
        try:
            with self.open(request, timeout=self.timeout) as response:
                status = getattr(response, "status", None) or response.getcode() or 200
                length = response.headers.get("Content-Length")
                remaining = int(length) if length is not None and length.strip().isdigit() else None
                total = None if remaining is None else offset + remaining
                if offset:
                    if status != 206:
                        return "restart"  # 200: the whole body again, from byte 0
                    match = _CONTENT_RANGE.fullmatch((response.headers.get("Content-Range") or "").strip())
                    if match is None or int(match.group(1)) != offset:
                        return "restart"
                    if match.group(3) != "*":
                        total = int(match.group(3))
                with tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=self.dest.name, disable=not self.progress, leave=False) as bar:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        out.write(block)
                        hashers.update(block)
                        bar.update(len(block))
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                return "restart"  # nothing left to send for that range: the part is stale or too long
            raise _Failed(f"HTTP {exc.code} {exc.reason}") from exc
        except http.client.IncompleteRead as exc:
            raise _Failed(f"connection closed early: received {hashers.size + len(exc.partial)} of {total} bytes") from exc
        except (socket.timeout, TimeoutError) as exc:
            raise _Failed(f"timed out after {self.timeout} s ({hashers.size} bytes received)") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise _Failed(f"timed out after {self.timeout} s (connecting)") from exc
            raise _Failed(f"cannot open: {exc.reason}") from exc
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise _Failed(f"{type(exc).__name__}: {exc}") from exc
        if total is not None and hashers.size != total:
            raise _Failed(f"truncated body: received {hashers.size} of {total} bytes (Content-Length)")
        return "ok"

    def _verify_and_move(self, tmp: Path, digests: Dict[str, str]) -> None:
        if mismatches(self.expected, digests):
            raise DownloadError(f"checksum mismatch for {self.url}: {describe_mismatch(self.expected, digests)} "
                                f"(nothing written to {self.dest})", self.url, self.dest, self.expected, digests)
        os.replace(tmp, self.dest)

    def _error(self, reason: str, hashers: _Hashers, partial: Optional[Path] = None) -> DownloadError:
        actual = hashers.digests() if hashers.size else {}
        digest = f"; sha256 of the {hashers.size} bytes received {actual['sha256']}" if actual and partial is None else ""
        want = (f"; expected {', '.join(f'{a} {show_digest(v, a)}' for a, v in self.expected.items())}"
                if self.expected else "")
        if partial is not None:
            tail = (f" (nothing written to {self.dest}; the {hashers.size} bytes received so far are kept in "
                    f"{partial}: run the same command again to resume)")
        else:
            tail = f" (nothing written to {self.dest})"
        return DownloadError(f"download failed: {self.url}: {reason}{want}{digest}{tail}",
                             self.url, self.dest, self.expected, actual, partial)


def _sync(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())
