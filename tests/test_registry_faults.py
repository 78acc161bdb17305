"""The registry under faults: broken and resumed transfers, mirrors, killed processes, concurrent
fetches, corrupt copies, bad archives, read-only and unwritable caches. Files are served by a
local HTTP server (tests/localhttp.py) that can cut a transfer short, ignore Range requests,
answer 404, pause between pieces or look at the cache folder in the middle of a transfer."""
from __future__ import annotations

import errno
import hashlib
import io
import multiprocessing
import os
import random
import re
import signal
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

import utils.data  # noqa: F401  (registers the real entries)
from tests.localhttp import LocalServer
from utils import registry, synthetic

#: The real entries, taken before any test empties the registry.
REAL_REGISTRY = dict(registry.REGISTRY)

PAYLOAD = random.Random(0).randbytes(20_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def server():
    """A :class:`LocalServer` on 127.0.0.1."""
    with LocalServer() as httpd:
        yield httpd


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    """Each test registers its own entries; no progress bars in the captured output."""
    monkeypatch.setattr(registry, "REGISTRY", {})
    monkeypatch.setattr(registry, "_VERIFIED", {}, raising=False)
    monkeypatch.setenv("CVBOOK_PROGRESS", "0")


def _register(server, body: bytes = PAYLOAD, size: int = len(PAYLOAD), mirrors: tuple[str, ...] = (),
              **options) -> registry.RemoteFile:
    """Register ``test-file`` (``file.bin``, PAYLOAD's SHA-256, ``size`` bytes) served at
    ``/file.bin`` with ``body`` and ``options`` (see :class:`tests.localhttp.Resource`)."""
    url = server.serve("/file.bin", body, **options)
    extra = {"mirrors": mirrors} if mirrors else {}
    return registry.register(registry.RemoteFile(
        name="test-file", url=url, sha256=SHA, size=size, licence="CC0", filename="file.bin", **extra))


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

def _parts() -> list[Path]:
    """The partial downloads of file.bin in the downloads folder."""
    return sorted(_downloads().glob("file.bin.*.part"))


def _gets(server, path: str = "/file.bin") -> list[str | None]:
    """The Range header of each GET of ``path`` (None: no Range)."""
    return [rng for method, p, rng in server.log if method == "GET" and p == path]


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "registry-size"])
def test_interrupted_transfer_keeps_its_bytes_and_resumes_with_a_range_request(server, length):
    _register(server, cut_at=8000, length=length)
    with pytest.raises(registry.MissingDataError, match=r"got 8000 of 20000 bytes; kept in file\.bin\..*\.part"):
        registry.fetch("test-file")
    assert [p.stat().st_size for p in _parts()] == [8000]
    server.serve("/file.bin", PAYLOAD, length=length)
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert _gets(server) == [None, "bytes=8000-"]
    assert _leftovers() == ["file.bin", "file.bin.sha256-ok"]


def test_server_ignoring_ranges_restarts_from_the_first_byte(server):
    _register(server, cut_at=8000, ranges=False)
    with pytest.raises(registry.MissingDataError, match="got 8000 of 20000 bytes"):
        registry.fetch("test-file")
    server.serve("/file.bin", PAYLOAD, ranges=False)
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert _gets(server) == [None, "bytes=8000-"]  # asked to resume, got a 200 and the whole file
    assert _leftovers() == ["file.bin", "file.bin.sha256-ok"]


def test_resumed_file_is_verified_whole(server):
    """A partial download whose first bytes are wrong: the resumed file fails the SHA-256 check,
    is discarded, and the next fetch starts from zero."""
    _register(server)
    _downloads().mkdir(parents=True)
    (_downloads() / "file.bin.4242.0badf00d.part").write_bytes(bytes(8000))
    with pytest.raises(registry.ChecksumError, match=r"file\.bin has sha256 [0-9a-f]{64}, expected " + SHA):
        registry.fetch("test-file")
    assert _leftovers() == []
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert _gets(server) == ["bytes=8000-", None]


def _fetch_then_report(path_out) -> None:
    """Child process: fetch ``test-file`` (it is killed before it finishes)."""
    registry.fetch("test-file")


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_download_killed_by_sigkill_is_resumed_by_the_next_fetch(server):
    _register(server, pieces=50, pause=0.2)  # 10 s to kill it in, however busy the machine
    child = multiprocessing.get_context("fork").Process(target=_fetch_then_report, args=(None,))
    child.start()
    deadline = time.monotonic() + 20
    while not any(p.stat().st_size >= 3000 for p in _parts()) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    kept = [p.stat().st_size for p in _parts()]
    assert len(kept) == 1 and 3000 <= kept[0] < len(PAYLOAD)
    server.serve("/file.bin", PAYLOAD)
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert _gets(server) == [None, f"bytes={kept[0]}-"]
    assert _leftovers() == ["file.bin", "file.bin.sha256-ok"]


# --- mirrors ------------------------------------------------------------------------------------

def test_second_mirror_serves_the_file_when_the_first_url_is_404(server, capsys):
    mirror = server.serve("/mirror/file.bin", PAYLOAD)
    _register(server, status=404, mirrors=(mirror,))
    path, source = registry.fetch_with_source("test-file")
    assert path.read_bytes() == PAYLOAD and source == mirror
    assert f"test-file: downloaded file.bin from the mirror {mirror}" in capsys.readouterr().err
    assert _leftovers() == ["file.bin", "file.bin.sha256-ok"]


def test_mirror_serving_different_bytes_fails_the_check_and_the_next_url_is_tried(server):
    wrong = server.serve("/wrong/file.bin", bytes(len(PAYLOAD)))  # same size, other bytes
    good = server.serve("/good/file.bin", PAYLOAD)
    _register(server, status=404, mirrors=(wrong, good))
    assert registry.fetch_with_source("test-file")[1] == good
    assert (_downloads() / "file.bin").read_bytes() == PAYLOAD
    assert _gets(server, "/good/file.bin") == [None]  # the wrong bytes were not resumed from


def test_every_url_failing_lists_each_failure(server):
    wrong = server.serve("/wrong/file.bin", bytes(len(PAYLOAD)))
    _register(server, status=404, mirrors=(wrong,))
    with pytest.raises(registry.MissingDataError, match=r"none of its 2 URLs delivered file\.bin: \(1\) .*404.*"
                                                        r"\(2\) .*file\.bin has sha256") as raised:
        registry.fetch("test-file")
    assert _leftovers() == []
    message = str(raised.value)  # one short line per URL; the name and the advice said once
    assert message.count("download it from") == 1 and message.count("test-file:") == 1, message


def test_broken_transfer_is_resumed_from_the_next_mirror(server):
    mirror = server.serve("/mirror/file.bin", PAYLOAD)
    _register(server, cut_at=12_000, mirrors=(mirror,))
    assert registry.fetch_with_source("test-file")[1] == mirror
    assert _gets(server) == [None] and _gets(server, "/mirror/file.bin") == ["bytes=12000-"]


def test_entries_with_one_url_and_the_registered_mirrors():
    entry = registry.RemoteFile("x", "http://a/x", "a" * 64, 1, "CC0", "x")
    assert entry.urls == ("http://a/x",) and entry.mirrors == ()
    twice = registry.RemoteFile("y", "http://a/y", "a" * 64, 1, "CC0", "y", mirrors=("http://a/y", "http://b/y"))
    assert twice.urls == ("http://a/y", "http://b/y")
    with pytest.raises(TypeError, match="tuple of URLs"):
        registry.RemoteFile("z", "http://a/z", "a" * 64, 1, "CC0", "z", mirrors="http://b/z")


def test_real_entries_carry_their_documented_mirrors():
    entries = REAL_REGISTRY
    assert entries["voc2012-trainval"].urls[0].startswith("http://host.robots.ox.ac.uk/")
    assert len(entries["voc2012-trainval"].urls) == 4
    assert entries["pets-images"].urls[1].endswith("/pets/data/images.tar.gz")
    assert all(len(entries[f"mnist-{s}"].urls) == 2 for s in ("train-images", "train-labels", "t10k-images",
                                                               "t10k-labels"))
    assert entries["mvtec-ad"].urls == (entries["mvtec-ad"].url,)
    assert set(registry.MIRRORS) <= set(entries)


def test_download_reaches_its_final_name_only_when_complete(server):
    """Mutation guard: in the middle of the transfer the bytes go to a .part file, not file.bin."""
    seen = {}

    def look():
        seen["final exists"] = (_downloads() / "file.bin").exists()
        seen["parts"] = [p.name for p in _downloads().glob("file.bin.*.part")]

    _register(server, pieces=2, midway=look)
    path = registry.fetch("test-file")
    assert seen["final exists"] is False and len(seen["parts"]) == 1
    assert path.read_bytes() == PAYLOAD
    assert _leftovers() == ["file.bin", "file.bin.sha256-ok"]


def test_server_size_differing_from_the_registry_is_refused(server):
    _register(server, PAYLOAD + b"extra")
    with pytest.raises(registry.ChecksumError, match="serves 20005 bytes but the registry records 20000"):
        registry.fetch("test-file")
    assert _leftovers() == []


def test_oversized_download_without_content_length_is_discarded(server):
    _register(server, PAYLOAD + b"extra", length=False)
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
    _register(server, pieces=4, pause=0.1)
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
    assert server.hits("/file.bin") == 1
    assert _leftovers() == ["file.bin", "file.bin.sha256-ok"]


# --- the cache ----------------------------------------------------------------------------------

def test_truncated_cached_copy_is_reported_and_downloaded_again(server):
    _register(server)
    path = registry.fetch("test-file")
    path.write_bytes(PAYLOAD[:5000])
    with pytest.warns(UserWarning, match=r"cached copy .*file\.bin was corrupt \(has 5000 bytes, expected 20000\)"):
        assert registry.fetch("test-file") == path
    assert path.read_bytes() == PAYLOAD and server.hits("/file.bin") == 2


def test_digest_is_remembered_until_the_file_changes(server, monkeypatch):
    _register(server)
    hashed = _count_hashing(monkeypatch)
    path = registry.fetch("test-file")
    registry.fetch("test-file")
    assert hashed == []
    _rewrite_later(path, bytes(len(PAYLOAD)))
    with pytest.warns(UserWarning, match=r"was corrupt \(has sha256 [0-9a-f]{64}, expected " + SHA):
        registry.fetch("test-file")
    assert hashed == [path] and path.read_bytes() == PAYLOAD
    registry.fetch("test-file")
    assert hashed == [path] and server.hits("/file.bin") == 2


def _corrupt_keeping_size_and_mtime(path: Path) -> None:
    """Overwrite bytes in the middle of ``path`` in place and put its mtime back."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(stat.st_size // 2)
        handle.write(b"\x00" * 64)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_cached_copy_corrupted_in_place_with_size_and_mtime_kept_is_not_served(server, monkeypatch):
    _register(server)
    path = registry.fetch("test-file")
    _corrupt_keeping_size_and_mtime(path)
    monkeypatch.setattr(registry, "_VERIFIED", {}, raising=False)  # a later run: only the marker remembers
    with pytest.warns(UserWarning, match=r"was corrupt \(has sha256 [0-9a-f]{64}, expected " + SHA):
        assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert server.hits("/file.bin") == 2


def test_data_directory_copy_corrupted_in_place_is_not_served(server, tmp_path, monkeypatch):
    _register(server)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "file.bin").write_bytes(PAYLOAD)
    assert registry.fetch("test-file", data_dir=mirror) == mirror / "file.bin"
    _corrupt_keeping_size_and_mtime(mirror / "file.bin")
    monkeypatch.setattr(registry, "_VERIFIED", {}, raising=False)
    with pytest.raises(registry.ChecksumError, match="in the data directory has sha256"):
        registry.fetch("test-file", data_dir=mirror)


def test_offline_corrupt_cached_copy_is_a_clear_error(server):
    _register(server)
    path = registry.fetch("test-file")
    path.write_bytes(PAYLOAD[:100])
    with pytest.raises(registry.MissingDataError,
                       match=r"cached copy .*file\.bin was corrupt \(has 100 bytes.*offline, so download it from http"):
        registry.fetch("test-file", offline=True)
    assert not path.exists() and server.hits("/file.bin") == 1


def test_cache_folder_that_cannot_be_created_names_it_and_the_variable(server):
    _register(server)
    _downloads().write_bytes(b"a file where the downloads folder should be")
    with pytest.raises(OSError, match=rf"cannot write to the cache folder {re.escape(str(_downloads()))} .*"
                                      r"set \$CVBOOK_CACHE to a writable folder"):
        registry.fetch("test-file")
    assert server.hits("/file.bin") == 0


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
    _register(server)
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
    assert server.hits("/file.bin") == 0
    assert os.listdir(_downloads()) == []


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_read_only_cache_accepts_a_good_file_placed_by_hand(server, monkeypatch, offline):
    _register(server)
    _downloads().mkdir(parents=True)
    (_downloads() / "file.bin").write_bytes(PAYLOAD)
    _refuse_writes_under(_downloads(), monkeypatch)
    hashed = _count_hashing(monkeypatch)
    for _ in range(2):
        assert registry.fetch("test-file", offline=offline) == _downloads() / "file.bin"
    assert hashed == [_downloads() / "file.bin"]  # once per process, though no marker could be written
    assert server.hits("/file.bin") == 0


def test_read_only_cache_with_a_bad_file_placed_by_hand_says_so(server, monkeypatch):
    _register(server)
    _downloads().mkdir(parents=True)
    (_downloads() / "file.bin").write_bytes(PAYLOAD[:-1])
    _refuse_writes_under(_downloads(), monkeypatch)
    with pytest.raises(registry.ChecksumError, match=r"file\.bin has 19999 bytes, expected 20000, and the cache "
                                                     r"folder cannot be written .*set \$CVBOOK_CACHE"):
        registry.fetch("test-file")
    assert (_downloads() / "file.bin").read_bytes() == PAYLOAD[:-1]


def test_generated_set_on_a_read_only_cache_names_the_folder_and_the_variable(monkeypatch):
    folder = registry.config.cache_dir() / "synthetic"
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self == folder or folder in self.parents:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(PermissionError, match=rf"cannot write the generated dataset into {re.escape(str(folder))}"
                                              r".*set \$CVBOOK_CACHE to a writable folder"):
        synthetic.make_anomaly_set(0)


# --- the data directory -------------------------------------------------------------------------

@pytest.mark.parametrize("body, problem", [(PAYLOAD[:-1], "has 19999 bytes, expected 20000"),
                                           (bytes(len(PAYLOAD)), "has sha256 ")], ids=["short", "same-size"])
def test_corrupt_copy_in_the_data_directory_raises_and_is_kept(server, tmp_path, monkeypatch, body, problem):
    _register(server)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "file.bin").write_bytes(body)
    monkeypatch.setenv("CVBOOK_DATA", str(mirror))
    with pytest.raises(registry.ChecksumError,
                       match=re.escape(f"{mirror / 'file.bin'} in the data directory {problem}") + ".*left untouched"):
        registry.fetch("test-file")
    assert (mirror / "file.bin").read_bytes() == body and os.listdir(mirror) == ["file.bin"]
    assert server.hits("/file.bin") == 0


def test_good_data_directory_copy_is_hashed_once_and_its_folder_not_written(server, tmp_path, monkeypatch):
    _register(server)
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


def _extract_until_killed(archive: Path, dest: Path, ready) -> None:
    """Child process: start extracting ``archive``, unpack one file, tell the parent, then hang."""
    def unpack_slowly(archive, kind, folder):
        (folder / "half.bin").write_bytes(b"x" * 1000)
        ready.set()
        time.sleep(60)

    registry._unpack = unpack_slowly
    registry.extract(archive, dest)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_partial_folder_of_a_killed_extraction_is_removed_by_the_next_one(tmp_path):
    archive, dest = tmp_path / "data.tar.gz", tmp_path / "dataset"
    archive.write_bytes(_archive_bytes(archive.name))
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_extract_until_killed, args=(archive, dest, ready))
    child.start()
    assert ready.wait(timeout=20)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=10)
    assert len(list(tmp_path.glob("dataset.*.partial"))) == 1
    registry.extract(archive, dest)
    assert list(tmp_path.glob("dataset.*.partial")) == []
    assert all((dest / arcname).read_bytes() == data for arcname, data in MEMBERS.items())
