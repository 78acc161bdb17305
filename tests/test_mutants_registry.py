"""Tests that kill mutants of utils.registry which the behaviour tests let survive
(``python -m tools.mutation registry``; results/mutation.md lists what is left).

No network: the files are put on disk by the tests (``fetch`` then only verifies them, and is
called ``offline``), and the archives are built in memory."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

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


def _count_hashing(monkeypatch) -> list[Path]:
    """Make :func:`registry.sha256_of` record each path it hashes; returns that record."""
    calls: list[Path] = []
    real = registry.sha256_of

    def counted(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(registry, "sha256_of", counted)
    return calls


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
