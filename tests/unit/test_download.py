"""Checkpoint download against a real HTTP server on 127.0.0.1, and the upstream catalog's well-formedness."""
import hashlib
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from mtwork.checkpoints import catalog
from mtwork.checkpoints.catalog import SOURCES, UpstreamSource, markdown_table
from mtwork.checkpoints.download import DownloadError, download, fetch_source
from mtwork.config import read_params_file

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = os.urandom(3 * (1 << 20) + 12345)  # > one read chunk, not a multiple of it
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
WRONG_SHA256 = hashlib.sha256(b"something else").hexdigest()
# The checkpoint formats the catalog may name (some converters are still being written: the registry is
# consulted only for the names it already has).
KNOWN_FORMATS = ("moco", "moco_v3", "simclr", "byol", "swav", "dino", "densecl", "pixpro", "detco", "torchvision", "clip")


class _Handler(BaseHTTPRequestHandler):
    hits: dict = {}

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        type(self).hits[self.path] = type(self).hits.get(self.path, 0) + 1
        try:
            if self.path == "/weights.pth":
                self._headers(200, len(PAYLOAD))
                self.wfile.write(PAYLOAD)
            elif self.path == "/redirect.pth":
                self.send_response(302)
                self.send_header("Location", "/weights.pth")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/short.pth":  # promises the whole payload, sends half, closes
                self._headers(200, len(PAYLOAD))
                self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif self.path == "/slow.pth":  # headers, then silence longer than the client's timeout
                self._headers(200, len(PAYLOAD))
                self.wfile.flush()
                time.sleep(1.5)
                self.wfile.write(PAYLOAD)
            else:
                self.send_error(404, "Not Found")
        except (BrokenPipeError, ConnectionResetError):  # the client gave up first (timeout test)
            pass

    def _headers(self, code, length):
        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _files(folder: Path):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_download_verifies_and_writes_only_dest(server, tmp_path):
    dest = tmp_path / "a" / "b" / "resnet50-0676ba61.pth"
    out = download(f"{server}/weights.pth", dest, sha256=SHA256, sha256_prefix=SHA256[:8], md5_prefix=MD5[:8],
                   progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert _files(tmp_path) == ["a", "a/b", "a/b/resnet50-0676ba61.pth"]  # no temporary file left
    redirected = download(f"{server}/redirect.pth", tmp_path / "r.pth", sha256_prefix=SHA256[:8], progress=False)
    assert redirected.read_bytes() == PAYLOAD


def test_checksum_mismatch_fails_cleanly(server, tmp_path):
    url = f"{server}/weights.pth"
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "new" / "w.pth", sha256=WRONG_SHA256, progress=False)
    message = str(info.value)
    assert url in message and WRONG_SHA256 in message and SHA256 in message
    assert info.value.actual["sha256"] == SHA256 and info.value.expected == {"sha256": WRONG_SHA256}
    assert _files(tmp_path) == []  # no dest, no temporary file, not even the folder it created
    with pytest.raises(DownloadError, match=r"expected md5 00000000\.\.\., got " + MD5):
        download(url, tmp_path / "w.pth", md5_prefix="00000000", progress=False)
    assert _files(tmp_path) == []


@pytest.mark.parametrize(
    "path,reason",
    [("/missing.pth", "HTTP 404"), ("/short.pth", "truncated body|connection closed early")],
)
def test_http_error_and_truncated_body_fail_cleanly(server, tmp_path, path, reason):
    url = f"{server}{path}"
    with pytest.raises(DownloadError, match=reason) as info:
        download(url, tmp_path / "w.pth", sha256_prefix=SHA256[:8], progress=False)
    assert url in str(info.value) and SHA256[:8] in str(info.value)
    assert _files(tmp_path) == []


def test_timeout_and_unreachable_host_fail_cleanly(server, tmp_path):
    with pytest.raises(DownloadError, match="timed out"):
        download(f"{server}/slow.pth", tmp_path / "w.pth", timeout=0.3, progress=False)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot open"):
        download(f"http://127.0.0.1:{port}/w.pth", tmp_path / "w.pth", progress=False)
    assert _files(tmp_path) == []


def test_valid_dest_is_not_downloaded_again_and_a_bad_one_is_replaced(server, tmp_path):
    url = f"{server}/weights.pth"
    dest = tmp_path / "w.pth"
    download(url, dest, sha256=SHA256, progress=False)
    hits = _Handler.hits.get("/weights.pth", 0)
    stamp = dest.stat().st_mtime_ns
    assert download(url, dest, sha256=SHA256, progress=False) == dest
    assert download(url, dest, progress=False) == dest  # no checksum: an existing file is kept
    assert _Handler.hits["/weights.pth"] == hits and dest.stat().st_mtime_ns == stamp
    dest.write_bytes(b"corrupt")
    download(url, dest, sha256_prefix=SHA256[:8], progress=False)
    assert _Handler.hits["/weights.pth"] == hits + 1 and dest.read_bytes() == PAYLOAD
    assert _files(tmp_path) == ["w.pth"]


def test_file_urls(tmp_path):
    src = tmp_path / "src" / "weights.pth"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    out = download(src.as_uri(), tmp_path / "dst" / "w.pth", sha256=SHA256, progress=False)
    assert out.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="cannot open"):
        download((tmp_path / "nope.pth").as_uri(), tmp_path / "dst" / "x.pth", progress=False)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(src.as_uri(), tmp_path / "dst" / "y.pth", sha256=WRONG_SHA256, progress=False)
    assert _files(tmp_path / "dst") == ["w.pth"]


def test_bad_checksum_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sha256 digest"):
        download("file:///x", tmp_path / "w", sha256="abc")
    with pytest.raises(ValueError, match="md5 prefix"):
        download("file:///x", tmp_path / "w", md5_prefix="xyz")
    with pytest.raises(ValueError, match="contradict"):
        download("file:///x", tmp_path / "w", sha256=SHA256, sha256_prefix="ffffffff" if SHA256[0] != "f" else "00000000")
    assert _files(tmp_path) == []


def test_fetch_source_downloads_or_verifies_a_manual_file(server, tmp_path, monkeypatch):
    monkeypatch.setitem(SOURCES, "local", UpstreamSource(
        name="local", format="torchvision", arch="resnet50", file_name="local-%s.pth" % SHA256[:8],
        url=f"{server}/weights.pth", page="test", sha256_prefix=SHA256[:8]))
    monkeypatch.setitem(SOURCES, "manual", UpstreamSource(
        name="manual", format="pixpro", arch="resnet50", file_name="manual.pth", url=None,
        page="https://example.invalid/page", md5_prefix=MD5[:8], notes="by hand"))
    assert fetch_source("local", tmp_path).read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match=r"no direct download URL.*example\.invalid/page"):
        fetch_source("manual", tmp_path)
    (tmp_path / "manual.pth").write_bytes(b"not it")
    with pytest.raises(DownloadError, match="does not match"):
        fetch_source("manual", tmp_path)
    (tmp_path / "manual.pth").write_bytes(PAYLOAD)
    assert fetch_source("manual", tmp_path) == tmp_path / "manual.pth"
    with pytest.raises(KeyError, match="unknown checkpoint source"):
        fetch_source("nope", tmp_path)


# --------------------------------------------------------------------------- the catalog


def test_catalog_entries_are_well_formed():
    from mtwork.checkpoints.formats import CHECKPOINT_FORMATS

    assert {"moco_v2", "moco_v3", "swav", "dino", "densecl", "pixpro", "detco", "simclr", "byol",
            "supervised_imagenet", "clip_rn50"} <= set(SOURCES)
    assert set(KNOWN_FORMATS) == {s.format for s in SOURCES.values()}
    for name, s in SOURCES.items():
        assert s.name == name and s.format in KNOWN_FORMATS and s.page and s.file_name
        if s.format in CHECKPOINT_FORMATS:  # formats still being added are checked by name only
            assert callable(CHECKPOINT_FORMATS.get(s.format))
        if s.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", s.sha256)
        for prefix in (s.sha256_prefix, s.md5_prefix):
            assert prefix is None or re.fullmatch(r"[0-9a-f]{8,64}", prefix)
        if s.url is None:
            assert s.notes, f"{name}: say why there is no URL"
            continue
        parsed = urlparse(s.url)
        assert parsed.scheme == "https" and parsed.netloc and " " not in s.url
        assert parsed.path.endswith(s.file_name) or s.notes, f"{name}: URL does not end in the file name"
        # publishers that put the sha256 (prefix) in the name or the path: the recorded one must be it
        named = re.search(r"-([0-9a-f]{8})\.(?:pth|pt)$", s.file_name)
        if named and s.format in ("torchvision", "byol", "clip"):
            assert s.sha256_prefix == named.group(1)
        if "openaipublic" in s.url:
            assert s.sha256 == parsed.path.split("/")[-2]


def test_torchvision_entries_match_the_installed_torchvision():
    from torchvision.models import ResNet50_Weights

    assert SOURCES["supervised_imagenet"].url == ResNet50_Weights.IMAGENET1K_V1.url
    assert SOURCES["supervised_imagenet_v2"].url == ResNet50_Weights.IMAGENET1K_V2.url


def test_params_yaml_sources_agree_with_the_catalog():
    params = read_params_file(REPO / "params.yaml")
    for name, entry in params["checkpoints"]["catalog"].items():
        if name in SOURCES:
            assert SOURCES[name].format == entry["format"], name


def test_docs_table_is_the_catalog():
    assert markdown_table() in (REPO / "docs" / "paper_scale.md").read_text()
    assert catalog.source_names() == list(SOURCES)
