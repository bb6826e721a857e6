"""Dataset downloads against a local HTTP server on 127.0.0.1 (never the internet): a good archive set
(downloaded, verified, extracted, reader check passes), a corrupt one, an interrupted one (resumed with
a Range request), one without a checksum (refused unless opted in), Cityscapes' login API, and the
datasets that must be fetched by hand."""
from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

import dense_layouts as dl
from mtwork.cli import main
from mtwork.data import download as dd
from mtwork.data.check import check_dataset
from mtwork.data.download import (
    Archive,
    DatasetSource,
    ExtractError,
    ManualDownloadRequired,
    UnverifiedArchiveError,
    catalog_markdown,
    extract_archive,
    fetch_dataset,
)
from mtwork.download import DownloadError, download, part_path

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- archives


def tar_gz(folder: Path, members, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in members:
            tar.add(path, arcname=f"{prefix}{path.relative_to(folder).as_posix()}", recursive=False)
    return buffer.getvalue()


def zip_bytes(folder: Path, members, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in members:
            zf.write(path, f"{prefix}{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def vkitti2_archives(tmp_path_factory):
    """The vkitti2 fixture as two archives: rgb + text files in a tar.gz under the release's
    ``vkitti_2.0.3_rgb/`` folder, depth + segmentation in a zip without a leading folder."""
    root = dl.write_vkitti2(tmp_path_factory.mktemp("src") / "vkitti2")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    first = [p for p in files if "/rgb/" in p.as_posix() or p.suffix == ".txt"]
    second = [p for p in files if p not in first]
    return tar_gz(root, first, "vkitti_2.0.3_rgb/"), zip_bytes(root, second)


# --------------------------------------------------------------------------- the server


class Handler(BaseHTTPRequestHandler):
    files: dict = {}  # path -> bytes
    flaky: set = set()  # paths whose next GET sends half the body and hangs up
    log: list = []  # (path, Range header or None, status)
    users = {"ada": "lovelace"}

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path.startswith("/cs/"):
            return self._cityscapes(url)
        rng = self.headers.get("Range")
        data = self.files.get(url.path)
        if data is None:
            type(self).log.append((url.path, rng, 404))
            return self._send(404, b"not found")
        self._serve(url.path, data, rng)

    def _serve(self, key, data, rng):
        if key in self.flaky:
            self.flaky.discard(key)
            type(self).log.append((key, rng, "cut"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match:
            start = int(match.group(1))
            if start >= len(data):
                type(self).log.append((key, rng, 416))
                return self._send(416)
            type(self).log.append((key, rng, 206))
            return self._send(206, data[start:], [("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")])
        type(self).log.append((key, rng, 200))
        self._send(200, data)

    # Cityscapes' login API, as cityscapesscripts' downloader talks to it
    def _cityscapes(self, url):
        logged_in = "session=ok" in (self.headers.get("Cookie") or "")
        query = parse_qs(url.query)
        if url.path == "/cs/login":
            return self._send(200, b"<form>")
        if not logged_in:
            return self._send(302, b"", [("Location", "/cs/login")])
        packages = self.server.cityscapes_packages  # name -> (id, bytes)
        if url.path == "/cs/downloads/" and "list" in url.query:
            body = "[" + ",".join(f'{{"name": "{n}", "packageID": "{i}", "size": "1 MB", "thirdparty": "0"}}'
                                  for n, (i, _) in packages.items()) + "]"
            return self._send(200, body.encode())
        by_id = {i: (n, data) for n, (i, data) in packages.items()}
        package = by_id.get(query.get("packageID", [""])[0])
        if package is None:
            return self._send(404)
        if url.path == "/cs/md5-sum/":
            return self._send(200, f"{hashlib.md5(package[1]).hexdigest()}  {package[0]}".encode())
        if url.path == "/cs/file-handling/":
            return self._serve(url.path + package[0], package[1], self.headers.get("Range"))
        self._send(404)

    def do_POST(self):
        if self.path != "/cs/login":
            return self._send(404)
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        user, password = form.get("username", [""])[0], form.get("password", [""])[0]
        if form.get("submit") == ["Login"] and self.users.get(user) == password:
            return self._send(302, b"", [("Location", "/cs/"), ("Set-Cookie", "session=ok; Path=/")])
        self._send(200, b"<form>bad credentials</form>")


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.cityscapes_packages = {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def vkitti2_source(server, vkitti2_archives, monkeypatch):
    """The vkitti2 catalog entry pointed at the local server, with the archives' real checksums."""
    httpd, base = server
    first, second = vkitti2_archives
    Handler.files = {"/v/rgb.tar.gz": first, "/v/labels.zip": second}
    Handler.flaky, Handler.log = set(), []
    source = DatasetSource("vkitti2", page=f"{base}/v/", access="public", archives=(
        Archive("rgb.tar.gz", f"{base}/v/rgb.tar.gz", sha256=sha256(first), strip_prefix=("vkitti_2.0.3_rgb",)),
        Archive("labels.zip", f"{base}/v/labels.zip", sha256=sha256(second))))
    monkeypatch.setitem(dd.DATASET_SOURCES, "vkitti2", source)
    return source


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- the four cases


def test_good_archives_are_downloaded_verified_extracted_and_checked(vkitti2_source, tmp_path):
    dest = tmp_path / "data" / "vkitti2"
    assert fetch_dataset("vkitti2", dest, progress=False) == dest
    assert check_dataset("vkitti2", dest, progress=False).ok
    assert (dest / "Scene01/clone/frames/rgb/Camera_0/rgb_00000.jpg").is_file()  # the release folder was dropped
    assert (dest / "Scene01/clone/colors.txt").is_file() and (dest / "Scene02/clone/frames/depth").is_dir()
    cache = tmp_path / "data" / ".downloads" / "vkitti2"
    assert _leftovers(cache) == ["labels.zip", "rgb.tar.gz"]  # verified archives, no .part
    assert _leftovers(tmp_path / "data") == [".downloads", "vkitti2"]  # no extraction folder left
    # a second run finds a clean root and fetches nothing
    requests = len(Handler.log)
    assert fetch_dataset("vkitti2", dest, progress=False) == dest and len(Handler.log) == requests


def test_corrupt_archive_fails_clearly_and_writes_nothing(vkitti2_source, vkitti2_archives, tmp_path):
    Handler.files["/v/labels.zip"] = vkitti2_archives[1][:-40] + b"x" * 40  # same length, wrong bytes
    dest = tmp_path / "data" / "vkitti2"
    with pytest.raises(DownloadError, match=r"checksum mismatch for .*/v/labels.zip: expected sha256 "
                                            + vkitti2_source.archives[1].sha256) as info:
        fetch_dataset("vkitti2", dest, progress=False)
    assert info.value.partial is None
    assert not dest.exists() and _leftovers(tmp_path / "data") == [".downloads"]
    assert _leftovers(tmp_path / "data/.downloads/vkitti2") == ["rgb.tar.gz"]  # the corrupt body is not kept


def test_unverified_garbage_and_failing_contents_write_nothing(vkitti2_source, vkitti2_archives, tmp_path, monkeypatch):
    # a body that is no archive at all, accepted without checksum: the extraction fails cleanly
    Handler.files["/v/labels.zip"] = b"<html>not a zip</html>"
    monkeypatch.setitem(dd.DATASET_SOURCES, "vkitti2", DatasetSource(
        "vkitti2", "p", "public", (vkitti2_source.archives[0], Archive("labels.zip", vkitti2_source.archives[1].url))))
    dest = tmp_path / "data" / "vkitti2"
    with pytest.raises(ExtractError, match="labels.zip: corrupt or unreadable archive"):
        fetch_dataset("vkitti2", dest, allow_unverified=True, progress=False)
    assert _leftovers(tmp_path / "data") == [".downloads"]
    # good archives whose contents fail the reader check (a segmentation file is missing)
    root = tmp_path / "src"
    dl.write_vkitti2(root)
    missing = root / "Scene01/clone/frames/classSegmentation/Camera_0/classgt_00001.png"
    missing.unlink()
    Handler.files["/v/labels.zip"] = zip_bytes(root, sorted(p for p in root.rglob("*") if p.is_file()))
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(DownloadError, match=r"(?s)fail `mtwork data check --format vkitti2`.*classgt_00001.png"):
        fetch_dataset("vkitti2", dest, allow_unverified=True, progress=False)
    assert _leftovers(tmp_path / "data") == [".downloads"]


def test_interrupted_download_is_resumed_with_a_range_request(vkitti2_source, vkitti2_archives, tmp_path):
    first = vkitti2_archives[0]
    Handler.flaky = {"/v/rgb.tar.gz"}
    dest = tmp_path / "data" / "vkitti2"
    with pytest.raises(DownloadError, match="run the same command again to resume") as info:
        fetch_dataset("vkitti2", dest, progress=False)
    part = tmp_path / "data/.downloads/vkitti2/rgb.tar.gz.part"
    assert info.value.partial == part and part.read_bytes() == first[: len(first) // 2]
    assert not dest.exists()
    fetch_dataset("vkitti2", dest, progress=False)
    assert ("/v/rgb.tar.gz", f"bytes={len(first) // 2}-", 206) in Handler.log  # resumed, not restarted
    assert [entry for entry in Handler.log if entry[0] == "/v/rgb.tar.gz"][-1][2] == 206
    assert not part.exists() and check_dataset("vkitti2", dest, progress=False).ok


def test_resume_falls_back_to_a_full_download(server, tmp_path):
    """A stale .part longer than the file gets 416 and a server that ignores Range gets 200: both restart."""
    _, base = server
    body = bytes(range(256)) * 50
    Handler.files = {"/f.bin": body}
    Handler.log = []
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"x" * (len(body) + 10))
    assert download(f"{base}/f.bin", dest, sha256=sha256(body), resume=True, progress=False).read_bytes() == body
    assert [s for _, _, s in Handler.log] == [416, 200]
    (tmp_path / "g").mkdir()
    src = tmp_path / "g" / "src.bin"
    src.write_bytes(body)
    dest2 = tmp_path / "g.bin"
    part_path(dest2).write_bytes(body[:100])  # file:// answers every request with the whole body
    assert download(src.as_uri(), dest2, sha256=sha256(body), resume=True, progress=False).read_bytes() == body


def test_archive_without_checksum_is_refused_unless_opted_in(vkitti2_source, tmp_path, monkeypatch):
    first, second = vkitti2_source.archives
    monkeypatch.setitem(dd.DATASET_SOURCES, "vkitti2", DatasetSource(
        "vkitti2", "p", "public", (first, Archive("labels.zip", second.url)), checksum_source="none published"))
    dest = tmp_path / "data" / "vkitti2"
    with pytest.raises(UnverifiedArchiveError, match=r"no checksum is published for labels.zip.*--allow-unverified"):
        fetch_dataset("vkitti2", dest, progress=False)
    assert Handler.log == [] and not dest.exists()  # refused before any request
    assert main(["download", "--dataset", "vkitti2", "--dest", str(dest), "--allow-unverified"]) == 0
    assert check_dataset("vkitti2", dest, progress=False).ok


# --------------------------------------------------------------------------- login and by hand


def test_cityscapes_login_api(server, tmp_path, monkeypatch):
    httpd, base = server
    root = dl.write_cityscapes(tmp_path / "src")
    packages = {}
    for i, (name, top) in enumerate((("gtFine_trainvaltest.zip", "gtFine"), ("leftImg8bit_trainvaltest.zip", "leftImg8bit"),
                                     ("disparity_trainvaltest.zip", "disparity"), ("camera_trainvaltest.zip", "camera")), 1):
        packages[name] = (str(i), zip_bytes(root, sorted(p for p in (root / top).rglob("*") if p.is_file())))
    httpd.cityscapes_packages = packages
    monkeypatch.setitem(dd.DATASET_SOURCES, "cityscapes",
                        DatasetSource(**{**dd.DATASET_SOURCES["cityscapes"].__dict__, "login_url": f"{base}/cs"}))
    dest = tmp_path / "data" / "cityscapes"
    with pytest.raises(ManualDownloadRequired, match=r"(?s)CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD are not set.*"
                                                     r"gtFine_trainvaltest.zip.*Where to put it: .*\.downloads/cityscapes"):
        fetch_dataset("cityscapes", dest, progress=False, env={})
    with pytest.raises(DownloadError, match="login as 'ada' failed"):
        fetch_dataset("cityscapes", dest, progress=False, env={"CITYSCAPES_USERNAME": "ada", "CITYSCAPES_PASSWORD": "x"})
    env = {"CITYSCAPES_USERNAME": "ada", "CITYSCAPES_PASSWORD": "lovelace"}
    assert fetch_dataset("cityscapes", dest, progress=False, env=env) == dest
    assert check_dataset("cityscapes", dest, progress=False).ok
    assert (dest / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png").is_file()


def test_manual_datasets_say_what_where_and_how(synthdrive_tiny, tmp_path):
    dest = tmp_path / "data" / "bdd100k"
    with pytest.raises(ManualDownloadRequired) as info:
        fetch_dataset("bdd100k", dest, progress=False)
    message = str(info.value)
    cache = tmp_path / "data" / ".downloads" / "bdd100k"
    for part in ("bdd100k_images_100k.zip", "bdd100k_sem_seg_labels_trainval.zip", "https://bdd-data.berkeley.edu/",
                 f"Where to put it: {cache}/", f"mtwork download --dataset bdd100k --dest {dest}", "--allow-unverified"):
        assert part in message
    # the user puts the five packages there (SynthDrive in the BDD100K layout, zipped as the site's packages)
    groups = {"bdd100k_images_100k.zip": "images/100k", "bdd100k_images_10k.zip": "images/10k",
              "bdd100k_det_20_labels_trainval.zip": "labels/det_20", "bdd100k_drivable_labels_trainval.zip": "labels/drivable",
              "bdd100k_sem_seg_labels_trainval.zip": "labels"}
    for name, top in groups.items():
        files = sorted(p for p in (synthdrive_tiny / top).rglob("*") if p.is_file())
        if name.startswith("bdd100k_sem_seg"):
            files = [p for p in files if not any(p.is_relative_to(synthdrive_tiny / g) for g in
                                                 ("labels/det_20", "labels/drivable"))]
        (cache / name).write_bytes(zip_bytes(synthdrive_tiny, files, "bdd100k/"))
    with pytest.raises(UnverifiedArchiveError, match="--allow-unverified"):
        fetch_dataset("bdd100k", dest, progress=False)
    assert fetch_dataset("bdd100k", dest, allow_unverified=True, progress=False) == dest
    assert check_dataset("bdd100k", dest, progress=False).ok


def test_taskonomy_points_to_its_tool_and_cli_errors(tmp_path, capsys):
    dest = tmp_path / "taskonomy"
    assert main(["download", "--dataset", "taskonomy", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "omnitools.download rgb normal depth_zbuffer segment_semantic" in err and f"--dest {dest}" in err
    dl.write_taskonomy(dest)  # what the tool writes: then the command only checks it
    assert main(["download", "--dataset", "taskonomy", "--dest", str(dest)]) == 0
    assert main(["download", "--dataset", "kitti", "--dest", str(dest)]) == 2
    assert "unknown dataset 'kitti'" in capsys.readouterr().err


def test_unsafe_members_are_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    archive = tmp_path / "bad.tar"
    archive.write_bytes(buffer.getvalue())
    (tmp_path / "out").mkdir()
    with pytest.raises(ExtractError, match="unsafe path '../evil.txt'"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_rar_archives_go_through_an_external_tool(tmp_path, monkeypatch):
    """A stand-in `unrar` on PATH (the real one is not installed here): the archive's RAND_CITYSCAPES/
    folder is dropped, and a failing tool is a clear error."""
    tree = tmp_path / "tree" / "RAND_CITYSCAPES" / "RGB"
    tree.mkdir(parents=True)
    (tree / "0000000.png").write_bytes(b"png")
    tool = tmp_path / "bin" / "unrar"
    tool.parent.mkdir()
    tool.write_text('#!/bin/sh\n[ -n "$FAIL" ] && { echo "CRC failed" >&2; exit 3; }\ncp -r "$TREE"/. "$5"\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:/usr/bin:/bin")
    monkeypatch.setenv("TREE", str(tmp_path / "tree"))
    (tmp_path / "out").mkdir()
    archive = tmp_path / "SYNTHIA_RAND_CITYSCAPES.rar"
    archive.write_bytes(b"Rar!")
    assert extract_archive(archive, tmp_path / "out", ("RAND_CITYSCAPES",)) == 1
    assert (tmp_path / "out" / "RGB" / "0000000.png").read_bytes() == b"png"
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(ExtractError, match="unrar failed \\(exit 3\\): CRC failed"):
        extract_archive(archive, tmp_path / "out")


def test_catalog_is_well_formed_and_documented():
    for name, source in dd.DATASET_SOURCES.items():
        assert source.name == name and source.access in dd.FETCHERS
        for archive in source.archives:
            if source.access == "public":
                assert archive.url and urlparse(archive.url).scheme in ("http", "https")
                assert archive.url.endswith(archive.file_name)
            assert archive.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", archive.sha256)
            assert archive.md5 is None or re.fullmatch(r"[0-9a-f]{32}", archive.md5)
        if source.access != "public":
            assert source.instructions
    assert catalog_markdown() in (REPO / "docs" / "datasets.md").read_text()
