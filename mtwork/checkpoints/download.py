"""Download upstream checkpoints of ``mtwork.checkpoints.catalog``.

The transfer itself (temporary file beside the target, checksums, atomic rename, ``DownloadError``
with nothing left behind) is ``mtwork.download.download``, shared with the dataset downloads; it is
re-exported here under its old names. ``fetch_source(name, dest_dir)`` downloads a source of the
catalog to ``dest_dir / file_name`` with the checksums the publisher gives.
"""
from __future__ import annotations

import os
from pathlib import Path

from mtwork.checkpoints.catalog import get_source
from mtwork.download import CHUNK, DownloadError, download, expected_digests, hash_file, mismatches, show_digest

__all__ = ["CHUNK", "DownloadError", "download", "fetch_source"]


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
    expected = expected_digests(**checks)
    if not dest.is_file():
        raise DownloadError(
            f"source '{name}' has no direct download URL: get '{source.file_name}' from {source.page} and put it "
            f"at {dest} ({source.notes})", source.page, dest, expected)
    digests = hash_file(dest)
    wrong = mismatches(expected, digests)
    if wrong:
        raise DownloadError(f"{dest} does not match the published checksums of '{name}': "
                            + "; ".join(f"expected {a} {show_digest(w, a)}, got {digests[a]}" for a, w in wrong.items()),
                            source.page, dest, expected, digests)
    return dest
