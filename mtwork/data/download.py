"""Dataset downloads: the catalog of public archives, login and by-hand fetching, extraction into the
layout each reader expects.

``fetch_dataset(name, dest)`` (the ``mtwork download --dataset NAME --dest DIR`` command):

1. ``dest`` already holding data: with ``check`` (default) the format's ``mtwork data check`` runs on it;
   a clean root is returned as is, a broken one is an error (nothing is touched).
2. Every archive of the dataset is made present and verified in the archive cache (default
   ``<dest's parent>/.downloads/<name>/``), through the dataset's access kind:

   * ``public``: fetched from the URL the dataset's site publishes, resumably
     (``mtwork.download``, ``<archive>.part`` is resumed with an HTTP Range request) and checked
     against the catalog's checksum. An archive whose checksum the publisher does not give is
     refused unless ``allow_unverified`` (``--allow-unverified``) says to take it as it comes.
   * ``cityscapes``: Cityscapes' own login API, as ``cityscapesscripts``' csDownload uses it
     (POST /login, GET /downloads/?list, /md5-sum/?packageID=N, /file-handling/?packageID=N), with
     ``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD`` from the environment; the md5 the site gives
     is checked. Without credentials: a message saying what to fetch, from where, and where to put it.
   * ``manual``: sites behind a registration form or a file host without direct links (BDD100K,
     NYUD_MT on Google Drive, Taskonomy's own download tool): a message saying exactly what to fetch,
     from where and where to put it; once the file is there, a rerun verifies and extracts it.
3. The archives are extracted into a fresh folder beside ``dest`` (members with absolute paths, ``..``
   or links are refused; a leading folder listed in ``strip_prefix`` is dropped so the files land in
   the reader's layout), the format's data check runs on it (``check``), and only a clean result is
   renamed to ``dest``. Any failure removes that folder: ``dest`` is never left half-written.

Nothing here contacts a server unless ``fetch_dataset`` is called for a dataset that needs it.
"""
from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from mtwork.download import (
    DownloadError,
    describe_mismatch,
    download,
    expected_digests,
    hash_file,
    mismatches,
    part_path,
)
from mtwork.errors import UserError
from mtwork.registry import Registry


class UnverifiedArchiveError(DownloadError):
    """An archive has no published checksum and the caller did not allow unverified downloads."""


class ManualDownloadRequired(DownloadError):
    """The dataset cannot be fetched automatically: the message says what to fetch, from where, where to put it."""


class ExtractError(UserError, RuntimeError):
    """An archive could not be extracted (corrupt, unsafe member paths, no tool for its format)."""


@dataclass(frozen=True)
class Archive:
    """One file of a dataset. ``url`` None: not fetched by URL (login API or by hand)."""

    file_name: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    md5: Optional[str] = None
    #: Leading folders dropped on extraction when a member starts with one (e.g. "RAND_CITYSCAPES").
    strip_prefix: Tuple[str, ...] = ()
    #: Size as published, for messages only.
    size: str = ""


@dataclass(frozen=True)
class DatasetSource:
    """A dataset's download recipe; ``access`` names the fetcher (``FETCHERS``)."""

    name: str
    page: str
    access: str
    archives: Tuple[Archive, ...]
    #: What the user must do by hand (manual access) or without credentials (login access).
    instructions: str = ""
    terms: str = ""
    login_url: str = ""
    checksum_source: str = ""


_CITYSCAPES = "https://www.cityscapes-dataset.com"
_VKITTI2 = "https://download.europe.naverlabs.com//virtual_kitti_2.0.3"

#: The catalog. URLs as the datasets' sites publish them; checksums only where the publisher gives them.
DATASET_SOURCES: Dict[str, DatasetSource] = {
    "cityscapes": DatasetSource(
        name="cityscapes", page=f"{_CITYSCAPES}/downloads/", access="cityscapes", login_url=_CITYSCAPES,
        archives=(Archive("gtFine_trainvaltest.zip", size="241 MB"),
                  Archive("leftImg8bit_trainvaltest.zip", size="11 GB"),
                  Archive("disparity_trainvaltest.zip", size="3.5 GB"),
                  Archive("camera_trainvaltest.zip", size="2 MB")),
        instructions=f"create an account at {_CITYSCAPES}/register/ and set CITYSCAPES_USERNAME and "
                     "CITYSCAPES_PASSWORD, or log in at the downloads page and save the packages by hand",
        terms="Cityscapes license: non-commercial research and teaching only",
        checksum_source="md5 served by the site after login (/md5-sum/?packageID=N)"),
    "vkitti2": DatasetSource(
        name="vkitti2", page="https://europe.naverlabs.com/proxy-virtual-worlds-vkitti-2/", access="public",
        archives=(
            Archive("vkitti_2.0.3_rgb.tar", f"{_VKITTI2}/vkitti_2.0.3_rgb.tar",
                    md5="1e00a143a397c2c53aa9720a868fe34a", strip_prefix=("vkitti_2.0.3_rgb",), size="7.0 GB"),
            Archive("vkitti_2.0.3_depth.tar", f"{_VKITTI2}/vkitti_2.0.3_depth.tar",
                    md5="1d34a96f870fc5d33b482df87844f5e4", strip_prefix=("vkitti_2.0.3_depth",), size="1.3 GB"),
            Archive("vkitti_2.0.3_classSegmentation.tar", f"{_VKITTI2}/vkitti_2.0.3_classSegmentation.tar",
                    md5="e8658ab49250e61f1caa174625563263", strip_prefix=("vkitti_2.0.3_classSegmentation",),
                    size="0.4 GB"),
            Archive("vkitti_2.0.3_textgt.tar.gz", f"{_VKITTI2}/vkitti_2.0.3_textgt.tar.gz",
                    md5="855f7f37746e5508f094e522c9cf41f4", strip_prefix=("vkitti_2.0.3_textgt",), size="23 MB"),
        ),
        terms="CC BY-NC-SA 3.0",
        checksum_source=f"{_VKITTI2}/vkitti_2.0.3_md5_checksums.txt"),
    "synthia": DatasetSource(
        name="synthia", page="http://synthia-dataset.net/downloads/", access="public",
        archives=(Archive("SYNTHIA_RAND_CITYSCAPES.rar", "http://synthia-dataset.cvc.uab.cat/SYNTHIA_RAND_CITYSCAPES.rar",
                          strip_prefix=("RAND_CITYSCAPES",), size="20 GB"),),
        terms="CC BY-NC-SA 3.0", checksum_source="none published (--allow-unverified)"),
    "nyuv2": DatasetSource(
        name="nyuv2", page="https://drive.google.com/file/d/14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw/view", access="manual",
        archives=(Archive("NYUD_MT.tgz", strip_prefix=("NYUD_MT",)),),
        instructions="download NYUD_MT.tgz there with a browser (the multi-task NYUDv2 release of "
                     "https://github.com/SimonVandenhende/Multi-Task-Learning-PyTorch; Google Drive has no direct link)",
        terms="NYU Depth V2 terms", checksum_source="none published (--allow-unverified)"),
    "taskonomy": DatasetSource(
        name="taskonomy", page="https://github.com/StanfordVL/taskonomy/tree/master/data", access="manual",
        archives=(),
        instructions="install the Omnidata tools (pip install omnidata-tools; needs aria2) and run "
                     "`omnitools.download rgb normal depth_zbuffer segment_semantic point_info --components taskonomy "
                     "--subset tiny --dest {dest} --agree_all` (it writes the layout the reader expects straight into "
                     "{dest}; accepting the Taskonomy terms)",
        terms="Taskonomy terms of use (accepted by the download tool)"),
    "bdd100k": DatasetSource(
        name="bdd100k", page="https://bdd-data.berkeley.edu/portal.html#download", access="manual",
        archives=(Archive("bdd100k_images_100k.zip", strip_prefix=("bdd100k",)),
                  Archive("bdd100k_images_10k.zip", strip_prefix=("bdd100k",)),
                  Archive("bdd100k_det_20_labels_trainval.zip", strip_prefix=("bdd100k",)),
                  Archive("bdd100k_drivable_labels_trainval.zip", strip_prefix=("bdd100k",)),
                  Archive("bdd100k_sem_seg_labels_trainval.zip", strip_prefix=("bdd100k",))),
        instructions="register and log in at https://bdd-data.berkeley.edu/ and download the packages '100K Images', "
                     "'10K Images', 'Detection 2020 Labels', 'Drivable Area' and 'Semantic Segmentation' "
                     "(the site has no download API)",
        terms="BDD100K license (registration)", checksum_source="none published (--allow-unverified)"),
}


def get_source(name: str) -> DatasetSource:
    if name not in DATASET_SOURCES:
        raise UserError(f"unknown dataset '{name}' (known: {', '.join(sorted(DATASET_SOURCES))})")
    return DATASET_SOURCES[name]


def default_cache(dest: Path, name: str) -> Path:
    """Where archives wait: beside ``dest``, never inside it (``dest`` holds only the extracted layout)."""
    return Path(dest).absolute().parent / ".downloads" / name


# ---------------------------------------------------------------------------------------------
# Fetchers: make every archive present and verified in the cache
# ---------------------------------------------------------------------------------------------


@dataclass
class FetchContext:
    source: DatasetSource
    dest: Path
    cache: Path
    allow_unverified: bool
    timeout: float
    progress: bool
    env: Mapping[str, str]


def _rerun_hint(ctx: FetchContext) -> str:
    return f"mtwork download --dataset {ctx.source.name} --dest {ctx.dest}" + \
        (f" --cache {ctx.cache}" if ctx.cache != default_cache(ctx.dest, ctx.source.name) else "")


def _verify_present(ctx: FetchContext, archive: Archive, path: Path) -> None:
    """A file placed by hand: check it against the catalog checksum, or require the opt-in."""
    expected = expected_digests(archive.sha256, None, archive.md5)
    if not expected:
        if not ctx.allow_unverified:
            raise UnverifiedArchiveError(
                f"{path}: no checksum is published for {archive.file_name}, so it cannot be verified; rerun with "
                f"--allow-unverified to extract it as it is", archive.url or ctx.source.page, path)
        return
    digests = hash_file(path)
    if mismatches(expected, digests):
        raise DownloadError(f"{path} does not match the published checksum of {archive.file_name}: "
                            f"{describe_mismatch(expected, digests)} (delete it and fetch it again)",
                            archive.url or ctx.source.page, path, expected, digests)


#: access kind -> fetcher(ctx) -> the verified archive paths, in catalog order.
FETCHERS = Registry("dataset access")


@FETCHERS.register("public")
def _fetch_public(ctx: FetchContext) -> List[Path]:
    paths = []
    missing_checksum = [a.file_name for a in ctx.source.archives if not (a.sha256 or a.md5)]
    if missing_checksum and not ctx.allow_unverified:
        first = ctx.source.archives[0]
        raise UnverifiedArchiveError(
            f"{ctx.source.name}: no checksum is published for {', '.join(missing_checksum)} ({ctx.source.checksum_source}); "
            f"nothing was downloaded. Rerun with --allow-unverified to fetch it without verification",
            first.url or ctx.source.page, ctx.cache / first.file_name)
    for archive in ctx.source.archives:
        path = ctx.cache / archive.file_name
        download(archive.url, path, sha256=archive.sha256, md5_prefix=archive.md5, timeout=ctx.timeout,
                 progress=ctx.progress, resume=True)
        paths.append(path)
    return paths


def _manual_message(ctx: FetchContext, missing: Sequence[Archive], why: str) -> str:
    files = "\n".join(f"  - {a.file_name}" + (f" ({a.size})" if a.size else "") for a in missing)
    return (f"{ctx.source.name} cannot be downloaded automatically ({why}).\n"
            f"What:\n{files}\nFrom where: {ctx.source.page}: {ctx.source.instructions.format(dest=ctx.dest)}\n"
            f"Where to put it: {ctx.cache}/ (the archive files themselves, not unpacked)\n"
            f"Then run again: {_rerun_hint(ctx)}"
            + (" --allow-unverified (no checksum is published)" if any(not (a.sha256 or a.md5) for a in missing) else "")
            + (f"\nTerms: {ctx.source.terms}" if ctx.source.terms else ""))


@FETCHERS.register("manual")
def _fetch_manual(ctx: FetchContext) -> List[Path]:
    if not ctx.source.archives:  # a download tool writes the layout itself
        raise ManualDownloadRequired(
            f"{ctx.source.name} is fetched with its own tool, not by mtwork: {ctx.source.instructions.format(dest=ctx.dest)}. "
            f"Then check it with: mtwork data check --format {ctx.source.name} {ctx.dest}"
            + (f"\nTerms: {ctx.source.terms}" if ctx.source.terms else ""), ctx.source.page, ctx.dest)
    missing = [a for a in ctx.source.archives if not (ctx.cache / a.file_name).is_file()]
    if missing:
        raise ManualDownloadRequired(_manual_message(ctx, missing, "its site needs a login or a browser"),
                                     ctx.source.page, ctx.cache / missing[0].file_name)
    paths = []
    for archive in ctx.source.archives:
        path = ctx.cache / archive.file_name
        _verify_present(ctx, archive, path)
        paths.append(path)
    return paths


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Cityscapes answers a good login, and a request without a session, with a redirect: surface it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


@FETCHERS.register("cityscapes")
def _fetch_cityscapes(ctx: FetchContext) -> List[Path]:
    user, password = ctx.env.get("CITYSCAPES_USERNAME"), ctx.env.get("CITYSCAPES_PASSWORD")
    archives = ctx.source.archives
    if not user or not password:
        missing = [a for a in archives if not (ctx.cache / a.file_name).is_file()]
        if missing:
            raise ManualDownloadRequired(_manual_message(
                ctx, missing, "CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD are not set; the site needs a login")
                + " (or set the two variables and rerun)", ctx.source.page, ctx.cache / missing[0].file_name)
        if not ctx.allow_unverified:
            raise UnverifiedArchiveError(
                f"cityscapes: the archives in {ctx.cache} can only be verified against the md5 the site serves after "
                "a login: set CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD, or rerun with --allow-unverified",
                ctx.source.page, ctx.cache)
        return [ctx.cache / a.file_name for a in archives]
    base = ctx.source.login_url.rstrip("/")
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect)

    def get(url: str, data: Optional[bytes] = None):
        request = urllib.request.Request(url, data=data, headers={"User-Agent": "mtwork"})
        try:
            with opener.open(request, timeout=ctx.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise DownloadError(f"cityscapes: cannot reach {url}: {getattr(exc, 'reason', exc)}", url, ctx.cache) from exc

    status, _ = get(f"{base}/login")
    if status != 200:
        raise DownloadError(f"cityscapes: GET {base}/login answered HTTP {status}", f"{base}/login", ctx.cache)
    form = urllib.parse.urlencode({"username": user, "password": password, "submit": "Login"}).encode()
    status, _ = get(f"{base}/login", form)
    if status != 302:  # the site redirects after a good login and shows the form again otherwise
        raise DownloadError(f"cityscapes: login as '{user}' failed (HTTP {status}, no redirect): check "
                            "CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD", f"{base}/login", ctx.cache)
    status, body = get(f"{base}/downloads/?list")
    try:
        packages = {p["name"]: p["packageID"] for p in json.loads(body)} if status == 200 else None
    except (ValueError, KeyError, TypeError):
        packages = None
    if packages is None:
        raise DownloadError(f"cityscapes: {base}/downloads/?list did not return the package list (HTTP {status})",
                            f"{base}/downloads/?list", ctx.cache)
    paths = []
    for archive in archives:
        if archive.file_name not in packages:
            raise DownloadError(f"cityscapes: package {archive.file_name} is not available to '{user}' "
                                f"(available: {', '.join(sorted(packages))})", ctx.source.page, ctx.cache)
        package_id = packages[archive.file_name]
        status, body = get(f"{base}/md5-sum/?packageID={package_id}")
        md5 = body.decode("utf-8", "replace").split()[0].lower() if status == 200 and body.split() else ""
        if len(md5) != 32:
            raise DownloadError(f"cityscapes: no md5 for {archive.file_name} from {base}/md5-sum/?packageID={package_id} "
                                f"(HTTP {status})", ctx.source.page, ctx.cache)
        path = ctx.cache / archive.file_name
        download(f"{base}/file-handling/?packageID={package_id}", path, md5_prefix=md5, timeout=ctx.timeout,
                 progress=ctx.progress, resume=True, opener=opener)
        paths.append(path)
    return paths




# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------


def _target(staging: Path, archive: Path, name: str, strip: Sequence[str]) -> Optional[Path]:
    """Where member ``name`` goes under ``staging`` (None: nothing to write, e.g. the stripped folder)."""
    posix = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in posix.parts if p not in ("", ".")]
    if posix.is_absolute() or ".." in parts or (parts and ":" in parts[0]):
        raise ExtractError(f"{archive}: refusing member with an unsafe path {name!r}")
    for prefix in strip:
        prefix_parts = PurePosixPath(prefix).parts
        if tuple(parts[: len(prefix_parts)]) == prefix_parts:
            parts = parts[len(prefix_parts):]
            break
    return staging.joinpath(*parts) if parts else None


def _extract_tar(archive: Path, staging: Path, strip: Sequence[str]) -> int:
    count = 0
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            target = _target(staging, archive, member.name, strip)
            if member.isdir():
                if target is not None:
                    target.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise ExtractError(f"{archive}: refusing member {member.name!r} (links and special files are not extracted)")
            if target is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            with source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            count += 1
    return count


def _extract_zip(archive: Path, staging: Path, strip: Sequence[str]) -> int:
    count = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = _target(staging, archive, info.filename, strip)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise ExtractError(f"{archive}: refusing symbolic link member {info.filename!r}")
            if info.is_dir():
                if target is not None:
                    target.mkdir(parents=True, exist_ok=True)
                continue
            if target is None:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            count += 1
    return count


#: External tools that extract RAR archives (Python's standard library has no RAR reader).
RAR_TOOLS = (("unrar", ["unrar", "x", "-o+", "-idq", "{archive}", "{out}/"]),
             ("7z", ["7z", "x", "-y", "-bd", "-o{out}", "{archive}"]),
             ("bsdtar", ["bsdtar", "-xf", "{archive}", "-C", "{out}"]))


def _extract_rar(archive: Path, staging: Path, strip: Sequence[str]) -> int:
    tool = next(((name, cmd) for name, cmd in RAR_TOOLS if shutil.which(name)), None)
    if tool is None:
        raise ExtractError(f"{archive}: a RAR archive needs one of {', '.join(n for n, _ in RAR_TOOLS)} on PATH "
                           "(e.g. apt-get install unrar or p7zip-full)")
    with tempfile.TemporaryDirectory(dir=staging.parent, prefix=".rar-") as raw:
        cmd = [part.format(archive=archive, out=raw) for part in tool[1]]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ExtractError(f"{archive}: {tool[0]} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")
        count = 0
        for path in sorted(Path(raw).rglob("*")):
            if path.is_symlink():
                raise ExtractError(f"{archive}: refusing symbolic link member {path.relative_to(raw)}")
            if not path.is_file():
                continue
            target = _target(staging, archive, path.relative_to(raw).as_posix(), strip)
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                count += 1
    return count


#: File name ending -> extractor.
EXTRACTORS: Tuple[Tuple[str, Callable[[Path, Path, Sequence[str]], int]], ...] = (
    (".zip", _extract_zip), (".rar", _extract_rar), (".tar", _extract_tar), (".tar.gz", _extract_tar),
    (".tgz", _extract_tar), (".tar.bz2", _extract_tar), (".tar.xz", _extract_tar),
)


def extract_archive(archive: Path, staging: Path, strip: Sequence[str] = ()) -> int:
    """Extract ``archive`` (.zip, .tar[.gz|.bz2|.xz], .tgz, .rar) into ``staging``; the number of files."""
    name = archive.name.lower()
    extractor = next((fn for ending, fn in EXTRACTORS if name.endswith(ending)), None)
    if extractor is None:
        raise ExtractError(f"{archive}: unknown archive type (expected one of {', '.join(e for e, _ in EXTRACTORS)})")
    try:
        return extractor(archive, staging, strip)
    except ExtractError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise ExtractError(f"{archive}: corrupt or unreadable archive ({type(exc).__name__}: {exc})") from exc


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _check(fmt: str, root: Path, progress: bool):
    from mtwork.data.check import check_dataset

    return check_dataset(fmt, root, progress=progress)


def _problems_text(report, limit: int = 10) -> str:
    shown = [f"  [{p.kind}] {p.path}: {p.message}" for p in report.problems[:limit]]
    more = f"\n  ... and {len(report.problems) - limit} more" if len(report.problems) > limit else ""
    return "\n".join(shown) + more


def fetch_dataset(name: str, dest: str | os.PathLike, cache: Optional[str | os.PathLike] = None,
                  allow_unverified: bool = False, check: bool = True, delete_archives: bool = False,
                  timeout: float = 60, progress: bool = True, env: Optional[Mapping[str, str]] = None) -> Path:
    """Download (or take from the cache), verify and extract dataset ``name`` into ``dest``; see the
    module docstring. Returns ``dest``. Raises ``DownloadError`` (``ManualDownloadRequired``,
    ``UnverifiedArchiveError``) or ``ExtractError`` with a message that says what to do."""
    source = get_source(name)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} exists and is not a folder", source.page, dest)
    if dest.is_dir() and any(dest.iterdir()):
        if check:
            report = _check(name, dest, progress)
            if not report.ok:
                raise DownloadError(f"{dest} already holds data that fails `mtwork data check --format {name}` "
                                    f"({len(report.problems)} problem(s)); fix it or remove the folder to download "
                                    f"again:\n{_problems_text(report)}", source.page, dest)
        return dest
    ctx = FetchContext(source, dest, Path(cache) if cache is not None else default_cache(dest, name),
                       allow_unverified, timeout, progress, os.environ if env is None else env)
    ctx.cache.mkdir(parents=True, exist_ok=True)
    archives = FETCHERS.get(source.access)(ctx)

    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        for archive, entry in zip(archives, source.archives):
            extract_archive(archive, staging, entry.strip_prefix)
        if check:
            report = _check(name, staging, progress)
            if not report.ok:
                raise DownloadError(f"{name}: the extracted archives fail `mtwork data check --format {name}` "
                                    f"({len(report.problems)} problem(s); nothing was written to {dest}, the "
                                    f"extracted copy {staging} is removed):\n{_problems_text(report)}", source.page, dest)
        if dest.is_dir():
            dest.rmdir()  # empty (checked above)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if delete_archives:
        for archive in archives:
            archive.unlink(missing_ok=True)
    return dest


def catalog_markdown() -> str:
    """The catalog as a Markdown table, one row per archive (docs/datasets.md embeds it; a test keeps
    them equal). Checksum: ``md5:<hex>`` / ``sha256:<hex>`` as published, else where it comes from."""
    lines = ["| dataset | access | archive | URL | checksum |", "|---|---|---|---|---|"]
    for name in sorted(DATASET_SOURCES):
        s = DATASET_SOURCES[name]
        for a in s.archives or (None,):
            if a is None:
                lines.append(f"| `{name}` | {s.access} | (written by its own download tool) | {s.page} | - |")
                continue
            checksum = f"sha256:{a.sha256}" if a.sha256 else f"md5:{a.md5}" if a.md5 else (s.checksum_source or "none")
            lines.append(f"| `{name}` | {s.access} | `{a.file_name}` | {a.url or s.page} | {checksum} |")
    return "\n".join(lines) + "\n"


__all__ = ["Archive", "DATASET_SOURCES", "DatasetSource", "ExtractError", "FETCHERS", "ManualDownloadRequired",
           "UnverifiedArchiveError", "catalog_markdown", "extract_archive", "fetch_dataset", "get_source", "part_path"]
