"""The registry under faults: broken transfers, concurrent fetches, corrupt copies, bad archives,
an unwritable cache. Files are served by a local HTTP server whose routes can cut a transfer
short, pause between pieces or look at the cache folder in the middle of a transfer."""
from __future__ import annotations

import collections
import errno
import hashlib
import http.server
import io
import multiprocessing
import os
import random
import re
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from utils import registry

PAYLOAD = random.Random(0).randbytes(20_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
Route = Callable[[http.server.BaseHTTPRequestHandler], None]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers GET with the server's route for the path (404 for none) and counts the requests."""

    def do_GET(self) -> None:
        self.server.hits[self.path] += 1
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
        else:
            route(self)

    def log_message(self, *args) -> None:
        pass


def serve(body: bytes, length: int | None, pieces: int = 1, pause: float = 0.0,
          midway: Callable[[], None] | None = None) -> Route:
    """A route sending ``body`` in ``pieces`` with ``pause`` seconds after each, announcing
    ``length`` as Content-Length (none when None) and calling ``midway`` after the first piece."""
    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        if length is not None:
            handler.send_header("Content-Length", str(length))
        handler.end_headers()
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            handler.wfile.write(body[start:start + step])
            handler.wfile.flush()
            if start == 0 and midway is not None:
                midway()
            time.sleep(pause)
    return route


@pytest.fixture()
def server():
    """A threaded HTTP server on 127.0.0.1 with ``routes`` (path -> route), ``hits`` and ``url``."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.hits = {}, collections.Counter()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    """Each test registers its own entries; no progress bars in the captured output."""
    monkeypatch.setattr(registry, "REGISTRY", {})
    monkeypatch.setenv("CVBOOK_PROGRESS", "0")


def _register(server, route: Route, size: int = len(PAYLOAD)) -> registry.RemoteFile:
    """Register ``test-file`` (``file.bin``, PAYLOAD's SHA-256, ``size`` bytes) served by ``route``."""
    server.routes["/file.bin"] = route
    return registry.register(registry.RemoteFile(
        name="test-file", url=f"{server.url}/file.bin", sha256=SHA, size=size, licence="CC0",
        filename="file.bin"))


def _downloads() -> Path:
    """The cache folder that downloads go to."""
    return registry.config.cache_dir() / "downloads"


def _leftovers() -> list[str]:
    """Names in the downloads folder other than the lock file."""
    return sorted(p.name for p in _downloads().iterdir() if p.name != ".file.bin.lock")


def _count_hashing(monkeypatch) -> list[Path]:
    """Make :func:`registry.sha256_of` record each path it hashes; returns that record."""
    calls: list[Path] = []
    real = registry.sha256_of

    def counted(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(registry, "sha256_of", counted)
    return calls


def _rewrite_later(path: Path, body: bytes) -> None:
    """Overwrite ``path`` with ``body`` and move its mtime 1 s on, as an edit made later would."""
    before = path.stat().st_mtime_ns
    path.write_bytes(body)
    os.utime(path, ns=(before + 10**9, before + 10**9))


# --- transfers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [len(PAYLOAD), None], ids=["content-length", "registry-size"])
def test_interrupted_transfer_says_how_much_arrived_and_keeps_nothing(server, length):
    _register(server, serve(PAYLOAD[:8000], length))
    with pytest.raises(registry.MissingDataError, match="got 8000 of 20000 bytes"):
        registry.fetch("test-file")
    assert _leftovers() == []
    server.routes["/file.bin"] = serve(PAYLOAD, len(PAYLOAD))
    assert registry.fetch("test-file").read_bytes() == PAYLOAD


def test_download_reaches_its_final_name_only_when_complete(server):
    """Mutation guard: in the middle of the transfer the bytes go to a .part file, not file.bin."""
    seen = {}

    def look():
        seen["final exists"] = (_downloads() / "file.bin").exists()
        seen["parts"] = [p.name for p in _downloads().glob("file.bin.*.part")]

    _register(server, serve(PAYLOAD, len(PAYLOAD), pieces=2, midway=look))
    path = registry.fetch("test-file")
    assert seen["final exists"] is False and len(seen["parts"]) == 1
    assert path.read_bytes() == PAYLOAD
    assert _leftovers() == ["file.bin", "file.bin.sha256-ok"]


def test_server_size_differing_from_the_registry_is_refused(server):
    _register(server, serve(PAYLOAD + b"extra", len(PAYLOAD) + 5))
    with pytest.raises(registry.ChecksumError, match="serves 20005 bytes but the registry records 20000"):
        registry.fetch("test-file")
    assert _leftovers() == []


def test_oversized_download_without_content_length_is_discarded(server):
    _register(server, serve(PAYLOAD + b"extra", None))
    with pytest.raises(registry.ChecksumError, match="file.bin has 20005 bytes, expected 20000; the download was discarded"):
        registry.fetch("test-file")
    assert _leftovers() == []


def _fetch_in_child(barrier, results) -> None:
    """Child process: wait for the sibling, fetch ``test-file``, report (path, SHA-256) or the error."""
    barrier.wait(timeout=10)
    try:
        path = registry.fetch("test-file")
        results.put((str(path), registry.sha256_of(path)))
    except Exception as err:  # reported to the parent, which fails the test with it
        results.put(("error", repr(err)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_two_processes_fetching_at_once_share_one_verified_download(server):
    _register(server, serve(PAYLOAD, len(PAYLOAD), pieces=4, pause=0.1))
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    children = [ctx.Process(target=_fetch_in_child, args=(barrier, results)) for _ in range(2)]
    for child in children:
        child.start()
    answers = [results.get(timeout=20) for _ in children]
    for child in children:
        child.join(timeout=10)
    expected = (str(_downloads() / "file.bin"), SHA)
    assert answers == [expected, expected]
    assert server.hits["/file.bin"] == 1
    assert _leftovers() == ["file.bin", "file.bin.sha256-ok"]


# --- the cache ----------------------------------------------------------------------------------

def test_truncated_cached_copy_is_reported_and_downloaded_again(server):
    _register(server, serve(PAYLOAD, len(PAYLOAD)))
    path = registry.fetch("test-file")
    path.write_bytes(PAYLOAD[:5000])
    with pytest.warns(UserWarning, match=r"cached copy .*file\.bin was corrupt \(has 5000 bytes, expected 20000\)"):
        assert registry.fetch("test-file") == path
    assert path.read_bytes() == PAYLOAD and server.hits["/file.bin"] == 2


def test_digest_is_remembered_until_the_file_changes(server, monkeypatch):
    _register(server, serve(PAYLOAD, len(PAYLOAD)))
    hashed = _count_hashing(monkeypatch)
    path = registry.fetch("test-file")
    registry.fetch("test-file")
    assert hashed == []
    _rewrite_later(path, bytes(len(PAYLOAD)))
    with pytest.warns(UserWarning, match=r"was corrupt \(has sha256 [0-9a-f]{64}, expected " + SHA):
        registry.fetch("test-file")
    assert hashed == [path] and path.read_bytes() == PAYLOAD
    registry.fetch("test-file")
    assert hashed == [path] and server.hits["/file.bin"] == 2


def test_offline_corrupt_cached_copy_is_a_clear_error(server):
    _register(server, serve(PAYLOAD, len(PAYLOAD)))
    path = registry.fetch("test-file")
    path.write_bytes(PAYLOAD[:100])
    with pytest.raises(registry.MissingDataError,
                       match=r"cached copy .*file\.bin was corrupt \(has 100 bytes.*offline, so download it from http"):
        registry.fetch("test-file", offline=True)
    assert not path.exists() and server.hits["/file.bin"] == 1


def test_cache_folder_that_cannot_be_created_names_it_and_the_variable(server):
    _register(server, serve(PAYLOAD, len(PAYLOAD)))
    _downloads().write_bytes(b"a file where the downloads folder should be")
    with pytest.raises(OSError, match=rf"cannot write to the cache folder {re.escape(str(_downloads()))} .*"
                                      r"set \$CVBOOK_CACHE to a writable folder"):
        registry.fetch("test-file")
    assert server.hits["/file.bin"] == 0


def _refuse_writes_under(folder: Path, monkeypatch) -> None:
    """Make ``registry``'s ``open`` fail with EACCES for files in ``folder``, as a read-only folder
    does for a normal user (root ignores the permission bits, so this is how the test runs as root)."""
    def guarded_open(file, mode="r", *args, **kwargs):
        if Path(file).parent == folder and set(mode) & set("wax+"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return open(file, mode, *args, **kwargs)
    monkeypatch.setattr(registry, "open", guarded_open, raising=False)


@pytest.mark.parametrize("how", ["permissions", "simulated"])
def test_read_only_cache_folder_names_it_and_the_variable(server, monkeypatch, how):
    if how == "permissions" and hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root ignores file permissions (the 'simulated' case covers it)")
    _register(server, serve(PAYLOAD, len(PAYLOAD)))
    _downloads().mkdir()
    if how == "permissions":
        _downloads().chmod(0o555)
    else:
        _refuse_writes_under(_downloads(), monkeypatch)
    try:
        with pytest.raises(PermissionError, match=rf"cannot write to the cache folder {re.escape(str(_downloads()))} "
                                                  r".*set \$CVBOOK_CACHE"):
            registry.fetch("test-file")
    finally:
        _downloads().chmod(0o755)
    assert server.hits["/file.bin"] == 0
    assert os.listdir(_downloads()) == []


# --- the data directory -------------------------------------------------------------------------

@pytest.mark.parametrize("body, problem", [(PAYLOAD[:-1], "has 19999 bytes, expected 20000"),
                                           (bytes(len(PAYLOAD)), "has sha256 ")], ids=["short", "same-size"])
def test_corrupt_copy_in_the_data_directory_raises_and_is_kept(server, tmp_path, monkeypatch, body, problem):
    _register(server, serve(PAYLOAD, len(PAYLOAD)))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "file.bin").write_bytes(body)
    monkeypatch.setenv("CVBOOK_DATA", str(mirror))
    with pytest.raises(registry.ChecksumError,
                       match=re.escape(f"{mirror / 'file.bin'} in the data directory {problem}") + ".*left untouched"):
        registry.fetch("test-file")
    assert (mirror / "file.bin").read_bytes() == body and os.listdir(mirror) == ["file.bin"]
    assert server.hits["/file.bin"] == 0


def test_good_data_directory_copy_is_hashed_once_and_its_folder_not_written(server, tmp_path, monkeypatch):
    _register(server, serve(PAYLOAD, len(PAYLOAD)))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "file.bin").write_bytes(PAYLOAD)
    hashed = _count_hashing(monkeypatch)
    assert registry.fetch("test-file", data_dir=mirror) == mirror / "file.bin"
    assert registry.fetch("test-file", data_dir=mirror) == mirror / "file.bin"
    assert hashed == [mirror / "file.bin"] and os.listdir(mirror) == ["file.bin"]


# --- extract ------------------------------------------------------------------------------------

MEMBERS = {f"set/part{i}.bin": random.Random(i).randbytes(30_000) for i in range(3)}


def _archive_bytes(name: str) -> bytes:
    """A zip or (gzipped) tar of :data:`MEMBERS`, by ``name``'s suffix."""
    buffer = io.BytesIO()
    if name.endswith(".zip"):
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for arcname, data in MEMBERS.items():
                zf.writestr(arcname, data)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz" if name.endswith(".gz") else "w") as tf:
            for arcname, data in MEMBERS.items():
                info = tarfile.TarInfo(arcname)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["data.tar.gz", "data.tar", "data.zip"])
def test_truncated_archive_is_a_clear_error_and_a_retry_works(tmp_path, name):
    archive, dest = tmp_path / name, tmp_path / "out" / "dataset"
    good = _archive_bytes(name)
    archive.write_bytes(good[: len(good) // 2])
    with pytest.raises(registry.ArchiveError, match=re.escape(f"{archive}: cannot be unpacked into {dest}")):
        registry.extract(archive, dest)
    assert not dest.exists()
    assert os.listdir(dest.parent) == [".dataset.lock"]
    archive.write_bytes(good)
    assert registry.extract(archive, dest) == dest
    assert all((dest / arcname).read_bytes() == data for arcname, data in MEMBERS.items())
    assert (dest / f".extracted-{name}").is_file()


def test_failed_extract_into_a_filled_folder_adds_nothing_and_a_retry_merges(tmp_path):
    archive, dest = tmp_path / "data.tar.gz", tmp_path / "dataset"
    (dest / "set").mkdir(parents=True)
    (dest / "set" / "old.txt").write_text("from an earlier archive")
    (dest / ".extracted-old.tar").touch()
    before = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    good = _archive_bytes(archive.name)
    archive.write_bytes(good[:-100])
    with pytest.raises(registry.ArchiveError, match=re.escape(str(archive))):
        registry.extract(archive, dest)
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == before
    archive.write_bytes(good)
    registry.extract(archive, dest)
    assert (dest / "set" / "old.txt").read_text() == "from an earlier archive"
    assert all((dest / arcname).read_bytes() == data for arcname, data in MEMBERS.items())
    assert (dest / ".extracted-data.tar.gz").is_file() and (dest / ".extracted-old.tar").is_file()
    assert sorted(os.listdir(tmp_path)) == [".dataset.lock", "data.tar.gz", "dataset"]
