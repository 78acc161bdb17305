"""Tests that kill mutants of utils.registry which the behaviour tests let survive
(``python -m tools.mutation registry``; results/mutation.md lists what is left).

No network: the files are put on disk by the tests (``fetch`` then only verifies them, and is
called ``offline``), and the archives are built in memory."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import random
import re
import tarfile
import types
import warnings
import zipfile
from pathlib import Path

import pytest

from tests.localhttp import LocalServer
from tests.test_registry_faults import _count_hashing
from utils import registry

PAYLOAD = random.Random(1).randbytes(20_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
OTHER = bytes(len(PAYLOAD))  # same size, other bytes
OTHER_SHA = hashlib.sha256(OTHER).hexdigest()
# A port nothing listens on: the tests never download (files are on disk, fetch is offline).
URL = "http://127.0.0.1:9/file.bin"


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    """An empty registry and no verification remembered in this process."""
    monkeypatch.setattr(registry, "REGISTRY", {})
    monkeypatch.setattr(registry, "_VERIFIED", {})
    monkeypatch.setenv("CVBOOK_PROGRESS", "0")


@pytest.fixture()
def entry() -> registry.RemoteFile:
    """``test-file``: ``file.bin``, :data:`PAYLOAD`'s size and SHA-256."""
    return registry.register(
        registry.RemoteFile(
            name="test-file",
            url=URL,
            sha256=SHA,
            size=len(PAYLOAD),
            licence="CC0",
            filename="file.bin",
        )
    )


def _cached(body: bytes = PAYLOAD) -> Path:
    """``body`` written as the cached copy ``downloads/file.bin``."""
    registry.downloads_dir().mkdir(parents=True, exist_ok=True)
    path = registry.downloads_dir() / "file.bin"
    path.write_bytes(body)
    return path


# --- verify_file ----------------------------------------------------------------------------


def test_verify_file_says_exactly_what_is_wrong(entry, tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(PAYLOAD)
    assert registry.verify_file(entry, path) is None
    assert registry.verify_file(entry, str(path)) is None  # a str path is accepted too
    path.write_bytes(PAYLOAD[:-1])
    assert registry.verify_file(entry, path) == "has 19999 bytes, expected 20000"
    path.write_bytes(OTHER)
    assert (
        registry.verify_file(entry, path) == f"has sha256 {OTHER_SHA}, expected {SHA}"
    )


def test_verify_file_of_an_entry_of_unknown_size_checks_the_digest_only(tmp_path):
    unsized = registry.RemoteFile("u", URL, SHA, 0, "CC0", "u.bin")
    path = tmp_path / "u.bin"
    path.write_bytes(PAYLOAD)
    assert registry.verify_file(unsized, path) is None
    path.write_bytes(PAYLOAD + b"x")
    digest = hashlib.sha256(PAYLOAD + b"x").hexdigest()
    assert registry.verify_file(unsized, path) == f"has sha256 {digest}, expected {SHA}"


def test_verify_file_hashes_again_and_forgets_this_process_verification(
    entry, monkeypatch
):
    path = _cached()
    hashed = _count_hashing(monkeypatch)
    assert registry.fetch("test-file", offline=True) == path
    assert hashed == [path]
    registry._marker(path).unlink()  # only this process now vouches for the file
    assert registry.is_verified(entry, path) is True
    assert registry.verify_file(entry, path) is None
    assert hashed == [path, path]  # hashed in full, though it was remembered
    # ... and forgotten: the next fetch in this process hashes the file again
    assert registry.is_verified(entry, path) is False
    assert registry.fetch("test-file", offline=True) == path
    assert hashed == [path, path, path]


# --- is_verified ----------------------------------------------------------------------------


def test_is_verified_of_a_missing_file_is_false(entry):
    assert registry.is_verified(entry, registry.downloads_dir() / "file.bin") is False


def test_is_verified_of_a_cached_copy_reads_the_marker_beside_it(entry, monkeypatch):
    path = _cached()
    assert registry.is_verified(entry, path) is False  # present, never hashed
    hashed = _count_hashing(monkeypatch)
    registry.fetch("test-file", offline=True)
    assert registry.is_verified(entry, str(path)) is True
    monkeypatch.setattr(registry, "_VERIFIED", {})  # a later process: only the marker
    assert registry._marker(path).is_file()
    assert registry.is_verified(entry, path) is True
    assert hashed == [path]  # is_verified hashes nothing
    registry._marker(path).unlink()
    assert registry.is_verified(entry, path) is False


def test_is_verified_is_false_once_the_file_changes(entry):
    path = _cached()
    registry.fetch("test-file", offline=True)
    assert registry.is_verified(entry, path) is True
    path.write_bytes(OTHER)  # a new ctime (and mtime): the marker no longer matches
    assert registry.is_verified(entry, path) is False


def test_is_verified_of_a_data_directory_copy_reads_the_marker_in_the_cache(
    entry, tmp_path, monkeypatch
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "file.bin").write_bytes(PAYLOAD)
    path = mirror / "file.bin"
    assert registry.is_verified(entry, path) is False
    assert registry.fetch("test-file", data_dir=mirror, offline=True) == path
    monkeypatch.setattr(registry, "_VERIFIED", {})  # a later process: only the marker
    assert registry.is_verified(entry, path) is True
    assert os.listdir(mirror) == ["file.bin"]  # the marker is not beside the copy ...
    assert registry._user_marker(path).is_file()  # ... but in the cache
    registry._user_marker(path).unlink()
    assert registry.is_verified(entry, path) is False


# --- _archive_kind ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind",
    [
        ("data.zip", "zip"),
        ("DATA.ZIP", "zip"),
        ("data.tar", "tar"),
        ("data.tar.gz", "tar"),
        ("Data.TGZ", "tar"),
        ("data.tar.bz2", "tar"),
        ("data.tbz2", "tar"),
        ("data.tar.xz", "tar"),
        ("data.txz", "tar"),
    ],
)
def test_archive_kind_goes_by_the_suffix_in_any_case_without_reading(
    tmp_path, name, kind
):
    archive = tmp_path / name
    archive.write_bytes(b"")  # empty: neither a zip nor a tar by content
    assert registry._archive_kind(archive) == kind


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for arcname, data in members.items():
            zf.writestr(arcname, data)
    return buffer.getvalue()


def _tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tf:
        for arcname, data in members.items():
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


MEMBERS = {"set/a.txt": b"alpha", "set/sub/b.txt": b"beta"}


@pytest.mark.parametrize(
    "body, kind",
    [
        (_zip_bytes(MEMBERS), "zip"),
        (_tar_bytes(MEMBERS), "tar"),
        (_tar_bytes(MEMBERS, "w:gz"), "tar"),
    ],
    ids=["zip", "tar", "tar.gz"],
)
def test_archive_kind_without_a_known_suffix_goes_by_the_content(tmp_path, body, kind):
    archive = tmp_path / "download.bin"
    archive.write_bytes(body)
    assert registry._archive_kind(archive) == kind


def test_archive_kind_of_anything_else_names_the_file(tmp_path):
    archive = tmp_path / "notes.txt"
    archive.write_text("not an archive")
    with pytest.raises(registry.ArchiveError) as raised:
        registry._archive_kind(archive)
    assert str(raised.value) == f"{archive}: not a tar or zip archive"


# --- _unpack ------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the extraction markers: relative path -> bytes."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".extracted-")
    }


@pytest.mark.parametrize(
    "kind, body",
    [("zip", _zip_bytes(MEMBERS)), ("tar", _tar_bytes(MEMBERS, "w:gz"))],
)
def test_unpack_puts_every_member_into_the_folder(tmp_path, monkeypatch, kind, body):
    archive, folder = tmp_path / "archive", tmp_path / "folder"
    archive.write_bytes(body)
    folder.mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    registry._unpack(archive, kind, folder)
    assert _files(folder) == MEMBERS
    assert os.listdir(tmp_path / "cwd") == []


def test_unpack_refuses_a_tar_member_outside_the_folder(tmp_path):
    """The ``data`` filter: a member ``../escape.txt`` is refused, not written beside."""
    archive, folder = tmp_path / "evil.tar", tmp_path / "folder"
    archive.write_bytes(_tar_bytes({"../escape.txt": b"outside"}))
    folder.mkdir()
    with pytest.raises(tarfile.OutsideDestinationError):
        registry._unpack(archive, "tar", folder)
    assert sorted(os.listdir(tmp_path)) == ["evil.tar", "folder"]


def test_extract_of_a_tar_reaching_outside_is_an_archive_error(tmp_path):
    archive, dest = tmp_path / "evil.tar", tmp_path / "out" / "dataset"
    archive.write_bytes(_tar_bytes({"ok.txt": b"fine", "../escape.txt": b"outside"}))
    with pytest.raises(registry.ArchiveError, match="OutsideDestinationError"):
        registry.extract(archive, dest)
    assert os.listdir(dest.parent) == [".dataset.lock"]


# --- _merge -------------------------------------------------------------------------------------


def test_merge_keeps_what_is_there_replaces_same_names_and_moves_new_folders(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for folder, files in (
        (src, {"set/a.txt": b"new a", "set/new/c.txt": b"c", "top.txt": b"top"}),
        (dst, {"set/a.txt": b"old a", "set/old.txt": b"old", "keep.txt": b"keep"}),
    ):
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    for child in sorted(src.iterdir()):
        registry._merge(child, dst / child.name)
    assert _files(dst) == {
        "set/a.txt": b"new a",
        "set/new/c.txt": b"c",
        "set/old.txt": b"old",
        "top.txt": b"top",
        "keep.txt": b"keep",
    }
    assert _files(src) == {}


def test_merge_moves_a_folder_missing_on_the_other_side_whole(tmp_path):
    src, dst = tmp_path / "src" / "new", tmp_path / "dst" / "new"
    (src / "deep").mkdir(parents=True)
    (src / "deep" / "x.txt").write_bytes(b"x")
    dst.parent.mkdir()
    registry._merge(src, dst)
    assert _files(dst) == {"deep/x.txt": b"x"} and not src.exists()


# --- extract ------------------------------------------------------------------------------------


def test_extract_of_a_corrupt_archive_says_what_and_what_to_do(tmp_path):
    archive, dest = tmp_path / "data.tar", tmp_path / "dataset"
    archive.write_bytes(b"")  # named a tar: unpacked as one, which fails
    with pytest.raises(registry.ArchiveError) as raised:
        registry.extract(archive, dest)
    expected = (
        re.escape(f"{archive}: cannot be unpacked into {dest} (ReadError: ")
        + r".*empty file.*"  # tarfile's own words
        + re.escape(
            "); nothing was marked as extracted, so the next run tries again. If the "
            "archive is truncated or corrupt, delete it and fetch it again"
        )
    )
    assert re.fullmatch(expected, str(raised.value), flags=re.DOTALL), raised.value
    assert isinstance(raised.value.__cause__, tarfile.ReadError)


def test_extract_unpacks_in_a_partial_folder_beside_the_destination(
    tmp_path, monkeypatch
):
    archive, dest = tmp_path / "data.zip", tmp_path / "dataset"
    archive.write_bytes(_zip_bytes(MEMBERS))
    seen = []
    real = registry._unpack

    def recording(archive, kind, folder):
        seen.append((kind, folder, sorted(os.listdir(folder))))
        real(archive, kind, folder)

    monkeypatch.setattr(registry, "_unpack", recording)
    assert registry.extract(str(archive), str(dest)) == dest
    [(kind, folder, before)] = seen
    assert kind == "zip" and before == [] and folder.parent == tmp_path
    assert re.fullmatch(r"dataset\.\d+\.[0-9a-f]{8}\.partial", folder.name), folder
    assert not folder.exists()
    assert _files(dest) == MEMBERS and (dest / ".extracted-data.zip").is_file()
    assert sorted(os.listdir(tmp_path)) == [".dataset.lock", "data.zip", "dataset"]


def test_extract_with_its_marker_present_does_not_open_the_archive(tmp_path):
    dest = tmp_path / "dataset"
    dest.mkdir()
    (dest / ".extracted-gone.tar").touch()
    assert registry.extract(tmp_path / "gone.tar", dest) == dest  # no such archive


def test_extract_removes_stale_partial_folders_and_nothing_else(tmp_path):
    archive, dest = tmp_path / "data.tar", tmp_path / "dataset"
    archive.write_bytes(_tar_bytes(MEMBERS))
    stale = tmp_path / "dataset.4242.0badf00d.partial"
    (stale / "set").mkdir(parents=True)
    (stale / "set" / "half.txt").write_bytes(b"half")
    stray = tmp_path / "dataset.4243.0badf00e.partial"
    stray.write_bytes(b"a file, not a folder: rmtree cannot remove it")
    kept = ["dataset.partial", "dataset.1.xyz.partial", "other.4242.0badf00d.partial"]
    for name in kept:
        (tmp_path / name).mkdir()
    assert registry.extract(archive, dest) == dest
    assert _files(dest) == MEMBERS
    assert not stale.exists() and stray.is_file()
    assert sorted(os.listdir(tmp_path)) == sorted(
        [".dataset.lock", "data.tar", "dataset", stray.name, *kept]
    )


def test_extract_without_fcntl_leaves_partial_folders_alone(tmp_path, monkeypatch):
    """Without a lock (Windows) nothing proves a leftover's writer has stopped."""
    monkeypatch.setattr(registry, "fcntl", None)
    archive, dest = tmp_path / "data.tar", tmp_path / "dataset"
    archive.write_bytes(_tar_bytes(MEMBERS))
    other = tmp_path / "dataset.4242.0badf00d.partial"
    other.mkdir()
    (other / "half.txt").write_bytes(b"half")
    assert registry.extract(archive, dest) == dest
    assert _files(dest) == MEMBERS
    assert _files(other) == {"half.txt": b"half"}


# --- the download path (over tests/localhttp.py's server) --------------------------------------


@pytest.fixture()
def httpd():
    """A :class:`tests.localhttp.LocalServer` on 127.0.0.1."""
    with LocalServer() as running:
        yield running


def _served(httpd, body: bytes = PAYLOAD, mirrors=(), **options) -> registry.RemoteFile:
    """``test-file`` served at ``/file.bin`` with ``body`` and ``options``."""
    return registry.register(
        registry.RemoteFile(
            name="test-file",
            url=httpd.serve("/file.bin", body, **options),
            sha256=SHA,
            size=len(PAYLOAD),
            licence="CC0",
            filename="file.bin",
            mirrors=tuple(mirrors),
        )
    )


def _how(entry: registry.RemoteFile) -> str:
    return (
        f"download it from {entry.url} (licence: CC0) and put it in "
        f"{registry.downloads_dir()} or in the folder named by $CVBOOK_DATA"
    )


def _range_headers(httpd, path: str = "/file.bin") -> list[str | None]:
    return [rng for method, p, rng in httpd.log if method == "GET" and p == path]


def _leftover_part(name: str, body: bytes) -> Path:
    registry.downloads_dir().mkdir(parents=True, exist_ok=True)
    part = registry.downloads_dir() / name
    part.write_bytes(body)
    return part


def test_refused_download_names_the_url_the_error_and_how(httpd):
    entry = _served(httpd, status=404)
    with pytest.raises(registry.MissingDataError) as raised:
        registry.fetch("test-file")
    assert str(raised.value) == (
        f"test-file: download failed from {entry.url} (HTTP Error 404: Not Found); "
        + _how(entry)
    )
    assert _range_headers(httpd) == [None]  # asked once, not again from byte 0


def test_refused_resume_is_not_retried_from_the_first_byte(httpd):
    _served(httpd, status=404)
    _leftover_part("file.bin.4242.0badf00d.part", PAYLOAD[:8000])
    with pytest.raises(registry.MissingDataError, match="HTTP Error 404"):
        registry.fetch("test-file")
    assert _range_headers(httpd) == ["bytes=8000-"]


def test_unsatisfiable_range_restarts_from_the_first_byte(httpd):
    """A .part as long as the file: the server answers 416 and the file is fetched whole."""
    _served(httpd)
    _leftover_part("file.bin.4242.0badf00d.part", bytes(len(PAYLOAD)))
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert _range_headers(httpd) == ["bytes=20000-", None]


def test_part_longer_than_the_file_is_not_resumed(httpd):
    _served(httpd)
    _leftover_part("file.bin.4242.0badf00d.part", PAYLOAD + b"more")
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert _range_headers(httpd) == [None]


def test_largest_leftover_is_resumed_and_the_others_deleted(httpd):
    _served(httpd)
    _leftover_part("file.bin.4242.0badf00d.part", PAYLOAD[:12_000])
    _leftover_part("file.bin.4243.0badf00e.part", PAYLOAD[:3000])
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert _range_headers(httpd) == ["bytes=12000-"]
    assert sorted(os.listdir(registry.downloads_dir())) == [
        ".file.bin.lock",
        "file.bin",
        "file.bin.sha256-ok",
    ]


def test_without_fcntl_a_leftover_is_neither_resumed_nor_deleted(httpd, monkeypatch):
    monkeypatch.setattr(registry, "fcntl", None)
    _served(httpd)
    old = _leftover_part("file.bin.4242.0badf00d.part", PAYLOAD[:8000])
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert _range_headers(httpd) == [None]
    assert old.read_bytes() == PAYLOAD[:8000]


def test_server_size_differing_from_the_registry_says_so_exactly(httpd):
    entry = _served(httpd, PAYLOAD + b"extra")
    with pytest.raises(registry.ChecksumError) as raised:
        registry.fetch("test-file")
    assert str(raised.value) == (
        f"test-file: {entry.url} serves 20005 bytes but the registry records 20000 for "
        f"file.bin; nothing was downloaded; " + _how(entry)
    )


def test_stalled_transfer_breaks_off_after_the_timeout(httpd):
    entry = _served(httpd, pieces=2, pause=1.5)
    with pytest.raises(registry.MissingDataError) as raised:
        registry.fetch("test-file", timeout=0.3)
    [part] = registry.downloads_dir().glob("file.bin.*.part")
    assert str(raised.value) == (
        f"test-file: download of file.bin from {entry.url} broke off, got 10000 of 20000 "
        f"bytes (timed out); kept in {part.name} for the next try to resume; "
        + _how(entry)
    )
    assert part.read_bytes() == PAYLOAD[:10_000]


def test_stalled_restart_after_an_unsatisfiable_range_times_out(httpd):
    _served(httpd, pieces=2, pause=1.5)
    _leftover_part("file.bin.4242.0badf00d.part", bytes(len(PAYLOAD)))
    with pytest.raises(
        registry.MissingDataError, match=r"broke off, got 10000 of 20000"
    ):
        registry.fetch("test-file", timeout=0.3)


def test_download_writes_without_a_buffering_warning(httpd):
    _served(httpd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert registry.fetch("test-file").read_bytes() == PAYLOAD


def test_progress_bar_counts_bytes_from_the_resumed_offset(httpd, monkeypatch, capsys):
    monkeypatch.setenv("CVBOOK_PROGRESS", "1")
    _served(httpd)
    _leftover_part("file.bin.4242.0badf00d.part", PAYLOAD[:8000])
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    err = capsys.readouterr().err
    assert re.search(r"file\.bin:  40%\|[^|]*\| 8\.00k/20\.0k \[", err), err
    assert re.search(r"file\.bin: 100%\|[^|]*\| 20\.0k/20\.0k \[.*B/s\]", err), err


def test_no_progress_bar_when_progress_is_off(httpd, capsys):
    _served(httpd)
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert capsys.readouterr().err == ""


def _failing_urls(httpd):
    """``/file.bin`` cut short at 8000, then a mirror serving other bytes, then a 404."""
    wrong = httpd.serve("/wrong/file.bin", OTHER)
    gone = httpd.serve("/gone/file.bin", status=404)
    return _served(httpd, cut_at=8000, mirrors=(wrong, gone)), wrong, gone


def test_every_url_failing_lists_each_failure_exactly(httpd):
    entry, wrong, gone = _failing_urls(httpd)
    with pytest.raises(registry.MissingDataError) as raised:
        registry.fetch("test-file")
    assert type(raised.value) is registry.MissingDataError
    [part] = re.findall(
        r"kept in (file\.bin\.\d+\.[0-9a-f]{8}\.part);", str(raised.value)
    )
    digest = hashlib.sha256(PAYLOAD[:8000] + OTHER[8000:]).hexdigest()
    assert str(raised.value) == (
        f"test-file: none of its 3 URLs delivered file.bin: "
        f"(1) download of file.bin from {entry.url} was cut short, got 8000 of 20000 "
        f"bytes; kept in {part}; "
        f"(2) file.bin has sha256 {digest}, expected {SHA}; the download was discarded "
        f"(served by {wrong}); "
        f"(3) download failed from {gone} (HTTP Error 404: Not Found); " + _how(entry)
    )


def test_every_url_serving_wrong_bytes_is_a_checksum_error(httpd):
    wrong = httpd.serve("/wrong/file.bin", OTHER)
    _served(httpd, OTHER, mirrors=(wrong,))
    with pytest.raises(registry.ChecksumError, match="none of its 2 URLs delivered"):
        registry.fetch("test-file")


def test_downloaded_file_is_remembered_in_this_process(httpd):
    _served(httpd)
    path = registry.fetch("test-file")
    registry._marker(path).unlink()
    assert registry.is_verified(registry.lookup("test-file"), path) is True


# --- _start_of, _prefix_digest, _got, _claim_part, _open_lock -----------------------------------


class _Answer:
    """What :func:`registry._start_of` reads of a response: its status and headers."""

    def __init__(self, status: int, content_range: str | None = None):
        self.status = status
        self.headers = http.client.HTTPMessage()
        if content_range is not None:
            self.headers["Content-Range"] = content_range


@pytest.mark.parametrize(
    "content_range, start",
    [("bytes 8000-19999/20000", 8000), ("bytes 8000-19999/*", 8000)],
)
def test_start_of_a_matching_206_is_the_offset(entry, content_range, start):
    assert registry._start_of(_Answer(206, content_range), 8000, entry) == start


def test_start_of_a_200_is_zero(entry):
    assert registry._start_of(_Answer(200, "bytes 8000-19999/20000"), 8000, entry) == 0


@pytest.mark.parametrize(
    "content_range",
    [None, "bytes 100-19999/20000", "bytes 8000-19999/30000", "items 8000-19999/20000"],
)
def test_start_of_a_206_not_starting_at_the_offset_is_refused(entry, content_range):
    with pytest.raises(registry._RangeIgnored) as raised:
        registry._start_of(_Answer(206, content_range), 8000, entry)
    assert raised.value.args == (content_range,)


def test_prefix_digest_hashes_and_keeps_exactly_the_first_bytes(monkeypatch):
    monkeypatch.setattr(registry, "CHUNK", 3000)
    out = io.BytesIO(PAYLOAD)
    digest = registry._prefix_digest(out, 8000)
    assert digest.hexdigest() == hashlib.sha256(PAYLOAD[:8000]).hexdigest()
    assert out.tell() == 8000 and out.getvalue() == PAYLOAD[:8000]


def test_prefix_digest_of_a_shorter_file_hashes_what_is_there():
    out = io.BytesIO(b"abc")
    assert (
        registry._prefix_digest(out, 10).hexdigest()
        == hashlib.sha256(b"abc").hexdigest()
    )
    assert out.tell() == 10


def test_got_names_the_total_only_when_known():
    assert registry._got(5, 10) == "got 5 of 10 bytes"
    assert registry._got(5, None) == "got 5 bytes"
    assert registry._got(5, 0) == "got 5 bytes"


def test_claim_part_in_a_missing_folder_names_it_and_the_variable(tmp_path):
    folder = tmp_path / "missing"
    with pytest.raises(FileNotFoundError) as raised:
        registry._claim_part(folder / "file.bin")
    assert str(raised.value) == (
        f"cannot write to the cache folder {folder} (No such file or directory); "
        "set $CVBOOK_CACHE to a writable folder"
    )


def test_open_lock_creates_the_missing_folders(tmp_path):
    with registry._open_lock(tmp_path / "a" / "b" / "file.bin") as handle:
        assert Path(handle.name) == tmp_path / "a" / "b" / ".file.bin.lock"
    assert (tmp_path / "a" / "b" / ".file.bin.lock").is_file()


# --- fetch_with_source, fetch ---------------------------------------------------------------


def test_fetch_and_fetch_with_source_wait_60_s_by_default(entry, monkeypatch):
    seen = []

    def record(entry, target, how, timeout):
        seen.append(timeout)
        target.write_bytes(PAYLOAD)
        return entry.url

    monkeypatch.setattr(registry, "_download", record)
    assert registry.fetch_with_source("test-file")[1] == URL
    registry.downloads_dir().joinpath("file.bin").unlink()
    registry.fetch("test-file")
    registry.downloads_dir().joinpath("file.bin").unlink()
    registry.fetch("test-file", timeout=7.5)
    assert seen == [60.0, 60.0, 7.5]


@pytest.mark.parametrize("remembered", ["in this process", "by the marker"])
def test_remembered_cached_copy_is_returned_without_the_lock(entry, remembered):
    path = _cached()
    registry.fetch("test-file", offline=True)
    (registry.downloads_dir() / ".file.bin.lock").unlink()
    if remembered == "in this process":
        registry._marker(path).unlink()
    else:
        registry._VERIFIED.clear()
    assert registry.fetch_with_source("test-file", offline=True) == (path, None)
    assert not (registry.downloads_dir() / ".file.bin.lock").exists()


def test_cached_copy_gone_once_the_lock_is_held_offline_is_missing(entry, monkeypatch):
    path = _cached()
    real = registry._open_lock

    def open_then_lose_the_copy(target):
        path.unlink()  # another process deleted it meanwhile
        return real(target)

    monkeypatch.setattr(registry, "_open_lock", open_then_lose_the_copy)
    with pytest.raises(registry.MissingDataError) as raised:
        registry.fetch("test-file", offline=True)
    assert str(raised.value) == (
        "test-file: file.bin is not on disk and this run is offline; " + _how(entry)
    )


def test_waiting_for_the_lock_names_the_file(entry, monkeypatch, capsys):
    path = _cached()

    def busy(handle, how):
        if how & registry.fcntl.LOCK_NB:
            raise BlockingIOError

    real = registry.fcntl
    monkeypatch.setattr(
        registry,
        "fcntl",
        types.SimpleNamespace(LOCK_EX=real.LOCK_EX, LOCK_NB=real.LOCK_NB, flock=busy),
    )
    assert registry.fetch("test-file", offline=True) == path
    assert (
        capsys.readouterr().err
        == f"waiting for another process working on {path} ...\n"
    )


def _refuse_the_lock_file(monkeypatch) -> None:
    """Make ``registry``'s ``open`` fail with EACCES for lock files (a lock file of another user)."""

    def guarded(file, mode="r", *args, **kwargs):
        if Path(file).name.endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(registry, "open", guarded, raising=False)


def test_unlockable_cache_with_a_bad_copy_says_exactly_why(entry, monkeypatch):
    path = _cached(PAYLOAD[:-1])
    _refuse_the_lock_file(monkeypatch)
    with pytest.raises(registry.ChecksumError) as raised:
        registry.fetch("test-file")
    folder = registry.downloads_dir()
    assert str(raised.value) == (
        f"test-file: {path} has 19999 bytes, expected 20000, and the cache folder cannot be "
        f"written (cannot write to the cache folder {folder} (Permission denied); set "
        f"$CVBOOK_CACHE to a writable folder), so it cannot be replaced; put a good copy "
        f"from {URL} there, or set $CVBOOK_CACHE to a writable folder"
    )


def test_unlockable_cache_with_a_good_copy_still_writes_its_marker(entry, monkeypatch):
    path = _cached()
    _refuse_the_lock_file(monkeypatch)
    assert registry.fetch("test-file") == path
    assert registry._marker(path).read_text() == registry._stamp(entry, path.stat())


def test_corrupt_cached_copy_warning_says_exactly_what(entry, monkeypatch):
    path = _cached(PAYLOAD[:-1])
    monkeypatch.setattr(registry, "_download", _fail_download)
    with pytest.warns(UserWarning) as record, pytest.raises(registry.MissingDataError):
        registry.fetch("test-file")
    [warning] = record
    assert str(warning.message) == (
        f"test-file: the cached copy {path} was corrupt (has 19999 bytes, expected 20000); "
        "deleted it, downloading a fresh copy"
    )


def _fail_download(entry, target, how, timeout):
    raise registry.MissingDataError("no network in this test")


# --- lookup, register -----------------------------------------------------------------------


def test_lookup_of_an_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError) as raised:
        registry.lookup("nope")
    assert raised.value.args == (
        "no registry entry called 'nope'; known entries: (none)",
    )
    for name in ("b", "a"):
        registry.register(registry.RemoteFile(name, URL, SHA, 1, "CC0", name))
    with pytest.raises(KeyError) as raised:
        registry.lookup("nope")
    assert raised.value.args == (
        "no registry entry called 'nope'; known entries: a, b",
    )


def test_register_adds_the_documented_mirrors():
    got = registry.register(
        registry.RemoteFile("pets-images", URL, SHA, 1, "CC0", "i.tgz")
    )
    assert got.urls == (URL, *registry.MIRRORS["pets-images"])


# --- _user_marker, _settle, _remember, _verify ----------------------------------------------


def test_user_marker_is_named_after_the_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    key = hashlib.sha256(str(tmp_path / "file.bin").encode()).hexdigest()[:16]
    expected = registry.config.cache_dir() / "verified" / f"file.bin.{key}.sha256-ok"
    assert registry._user_marker(Path("file.bin")) == expected


@pytest.mark.parametrize(
    "age_ns, sleeps",
    [(10_000_000, [0.04]), (50_000_000 - 1, [1e-9]), (50_000_000, []), (10**9, [])],
)
def test_settle_sleeps_until_the_ctime_is_50_ms_old(monkeypatch, age_ns, sleeps):
    slept = []
    now = 1_700_000_000_000_000_000
    clock = types.SimpleNamespace(time_ns=lambda: now, sleep=slept.append)
    monkeypatch.setattr(registry, "time", clock)
    registry._settle(types.SimpleNamespace(st_ctime_ns=now - age_ns))
    assert slept == sleeps


def test_remember_creates_the_marker_folders_and_survives_an_unwritable_one(tmp_path):
    marker = tmp_path / "a" / "b" / "m.sha256-ok"
    registry._remember(tmp_path / "f", marker, "stamp\n")
    assert (
        marker.read_text() == "stamp\n"
        and registry._VERIFIED[str(tmp_path / "f")] == "stamp\n"
    )
    (tmp_path / "file").write_text("")
    registry._remember(tmp_path / "g", tmp_path / "file" / "m", "other\n")
    assert registry._VERIFIED[str(tmp_path / "g")] == "other\n"


@pytest.mark.parametrize("remembered", ["in this process", "by the marker"])
def test_verify_trusts_what_is_remembered(entry, monkeypatch, remembered):
    path = _cached()
    marker = registry._marker(path)
    assert registry._verify(entry, path, marker) is None
    if remembered == "in this process":
        marker.unlink()
    else:
        registry._VERIFIED.clear()
    hashed = _count_hashing(monkeypatch)
    assert registry._verify(entry, path, marker) is None
    assert hashed == []


def test_verify_never_remembers_a_bad_file_and_forgets_a_changed_one(entry):
    path = _cached()
    marker = registry._marker(path)
    assert registry._verify(entry, path, marker) is None
    path.write_bytes(OTHER)
    problem = f"has sha256 {OTHER_SHA}, expected {SHA}"
    assert registry._verify(entry, path, marker) == problem
    assert str(path) not in registry._VERIFIED
    assert registry._verify(entry, path, marker) == problem


def test_received_bytes_are_on_disk_as_soon_as_they_are_counted(httpd, monkeypatch):
    """The .part file is written unbuffered: a process killed mid-transfer loses nothing."""
    _served(httpd, pieces=20, pause=0.01)
    seen = []

    class Bar:
        def __init__(self, **kwargs):
            self.n = kwargs["initial"]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.n += n
            [part] = registry.downloads_dir().glob("file.bin.*.part")
            seen.append((self.n, part.stat().st_size))

    monkeypatch.setattr(registry, "tqdm", Bar)
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert seen and seen[-1][0] == len(PAYLOAD)
    assert all(counted == on_disk for counted, on_disk in seen), seen


def test_leftover_already_gone_when_it_is_deleted_is_no_error(httpd, monkeypatch):
    _served(httpd)
    _leftover_part("file.bin.4242.0badf00d.part", PAYLOAD[:12_000])
    _leftover_part("file.bin.4243.0badf00e.part", PAYLOAD[:3000])
    real = registry._stale_siblings

    def listed_twice(path, suffix):  # the smaller one is gone by its second deletion
        found = real(path, suffix)
        return [*found, found[-1]]

    monkeypatch.setattr(registry, "_stale_siblings", listed_twice)
    assert registry.fetch("test-file").read_bytes() == PAYLOAD
    assert _range_headers(httpd) == ["bytes=12000-"]
