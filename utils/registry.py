"""One registry of every external file the book may download, and the code that fetches it.

Explained in the *Getting started* chapter (``notebooks/00_getting_started.ipynb``);
the datasets it lists are described in the *Datasets* chapter.

Each :class:`RemoteFile` names a URL, its SHA-256, its size and its licence. :func:`fetch`
looks for the file in the data directory first (``$CVBOOK_DATA``, a local copy),
then in the cache (``$CVBOOK_CACHE``), and only then downloads it with a progress bar.
Every file it returns has been verified: size first, then SHA-256, computed once and
remembered in a ``<file>.sha256-ok`` marker (digest, size, modification time) so that an
unchanged file is not hashed again and a replaced one is. A corrupt cached copy is reported
and downloaded again; a corrupt copy in the data directory is left alone and raises
:class:`ChecksumError`. Downloads are written to a unique ``.part`` file, verified, and
only then renamed onto the final name, under a lock shared by every process using the cache.
:func:`extract` unpacks beside the destination and moves the result into place, so a
corrupt archive leaves nothing half-extracted. Offline, a missing file is one clear error
that says what is missing and how to get it.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import secrets
import shutil
import sys
import tarfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm  # plain text bar: no ipywidgets needed in notebooks

from . import config

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock; the atomic rename still keeps files whole
    fcntl = None
try:
    from lzma import LZMAError
except ImportError:  # Python built without lzma: tarfile then refuses .xz archives up front
    LZMAError = tarfile.CompressionError

CHUNK = 1 << 20
#: What a truncated or corrupt archive raises while it is unpacked.
UNPACK_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, LZMAError, OSError)
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass(frozen=True)
class RemoteFile:
    """An external file: where it lives, what it must hash to, and under which licence.

    ``size`` is in bytes; 0 means unknown (then only the SHA-256 is checked).
    """

    name: str
    url: str
    sha256: str
    size: int
    licence: str
    filename: str
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")


REGISTRY: dict[str, RemoteFile] = {}


def register(entry: RemoteFile) -> RemoteFile:
    """Add ``entry`` to :data:`REGISTRY`; a second entry with the same name is an error."""
    if entry.name in REGISTRY and REGISTRY[entry.name] != entry:
        raise ValueError(f"registry already holds a different entry called {entry.name!r}")
    REGISTRY[entry.name] = entry
    return entry


class MissingDataError(FileNotFoundError):
    """A file or dataset the run needs is not on disk and could not be downloaded."""


class ChecksumError(RuntimeError):
    """A file does not have the registry's size or SHA-256.

    A download is discarded before it reaches its final name; a copy in the user's data
    directory is never deleted.
    """


class ArchiveError(ValueError):
    """An archive cannot be unpacked: it is not a tar or zip file, or it is truncated or corrupt."""


def lookup(name: str) -> RemoteFile:
    """The registry entry called ``name``; an unknown name raises listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "(none)"
        raise KeyError(f"no registry entry called {name!r}; known entries: {known}") from None


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- verification -----------------------------------------------------------------------------

def _size_problem(entry: RemoteFile, size: int) -> str | None:
    """What is wrong with a file of ``size`` bytes for ``entry``, or None (also when the size is unknown)."""
    if entry.size and size != entry.size:
        return f"has {size} bytes, expected {entry.size}"
    return None


def _digest_problem(entry: RemoteFile, digest: str) -> str | None:
    """What is wrong with a file hashing to ``digest`` for ``entry``, or None."""
    if digest != entry.sha256:
        return f"has sha256 {digest}, expected {entry.sha256}"
    return None


def _stamp(entry: RemoteFile, stat: os.stat_result) -> str:
    """The marker text for a verified file with ``stat``: expected digest, size (bytes), mtime (ns)."""
    return f"{entry.sha256} {stat.st_size} {stat.st_mtime_ns}\n"


def _marker(path: Path) -> Path:
    """Where the verification of the cached file ``path`` is remembered: next to it."""
    return path.with_name(f"{path.name}.sha256-ok")


def _user_marker(path: Path) -> Path | None:
    """Where the verification of ``path`` in the user's data directory is remembered: in the
    cache (the data directory is never written), or None when the cache is unusable."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    try:
        return config.cache_dir() / "verified" / f"{path.name}.{key}.sha256-ok"
    except OSError:
        return None


def _is_remembered(marker: Path | None, stamp: str) -> bool:
    """True when ``marker`` holds ``stamp``: the file, with its current size and mtime, was verified."""
    try:
        return marker is not None and marker.read_text() == stamp
    except OSError:
        return False


def _remember(marker: Path | None, stamp: str) -> None:
    """Write ``stamp`` to ``marker``; best effort, since a missing marker only costs a re-hash."""
    if marker is None:
        return
    with contextlib.suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(stamp)


def _verify(entry: RemoteFile, path: Path, marker: Path | None) -> str | None:
    """None when ``path`` matches ``entry`` (size first, then SHA-256, hashed only when
    ``marker`` does not already vouch for it); otherwise what is wrong."""
    stat = path.stat()
    stamp = _stamp(entry, stat)
    if _is_remembered(marker, stamp):
        return None
    problem = _size_problem(entry, stat.st_size) or _digest_problem(entry, sha256_of(path))
    if problem is None:
        _remember(marker, stamp)
    return problem


# --- the cache folder: lock and atomic writes ---------------------------------------------------

def _unwritable(folder: Path, err: OSError) -> OSError:
    """The error for a cache folder that cannot be written: it names the folder and ``$CVBOOK_CACHE``."""
    return type(err)(f"cannot write to the cache folder {folder} ({err.strerror or err}); "
                     f"set ${config.CACHE_ENV} to a writable folder")


def _unique_sibling(path: Path, suffix: str) -> Path:
    """A fresh name beside ``path``: ``<name>.<pid>.<random hex><suffix>``."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock, shared by every process, on ``.<name>.lock`` beside ``path``.

    Creates the folder; one that cannot be written raises :func:`_unwritable`. Without
    ``fcntl`` (Windows) no lock is taken and only the atomic renames protect the files.
    """
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f".{path.name}.lock", "ab")
    except OSError as err:
        raise _unwritable(folder, err) from err
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process working on {path} ...", file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _part_file(target: Path) -> Iterator[IO[bytes]]:
    """A new, uniquely named ``<target name>.<pid>.<hex>.part`` file beside ``target``, open for writing.

    When the block ends without error the file is closed and renamed onto ``target`` in one
    step (``os.replace``); on any error it is deleted and ``target`` is left as it was.
    """
    part = _unique_sibling(target, ".part")
    try:
        handle = open(part, "xb")
    except OSError as err:
        raise _unwritable(target.parent, err) from err
    try:
        with handle:
            yield handle
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


# --- download -----------------------------------------------------------------------------------

def _got(received: int, total: int | None) -> str:
    """``got N of M bytes`` (``got N bytes`` when the total is unknown)."""
    return f"got {received} of {total} bytes" if total else f"got {received} bytes"


def _expected_size(entry: RemoteFile, response: http.client.HTTPResponse, how: str) -> int | None:
    """Bytes the transfer should deliver: the server's Content-Length, else the registry size.

    A Content-Length that differs from the registry's size raises :class:`ChecksumError`
    before anything is downloaded: the server offers a different file.
    """
    announced = int(response.headers.get("Content-Length") or 0)
    if announced and entry.size and announced != entry.size:
        raise ChecksumError(f"{entry.name}: {entry.url} serves {announced} bytes but the registry records "
                            f"{entry.size} for {entry.filename}; nothing was downloaded; {how}")
    return announced or entry.size or None


def _copy(response: http.client.HTTPResponse, out: IO[bytes], total: int | None, desc: str) -> str:
    """Copy the response body into ``out`` with a progress bar (bytes); the hex SHA-256 of what arrived."""
    digest = hashlib.sha256()
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not config.progress_enabled()) as bar:
        for chunk in iter(lambda: response.read(CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _transfer(entry: RemoteFile, out: IO[bytes], how: str, timeout: float) -> str:
    """Stream ``entry.url`` into ``out``; the hex SHA-256 of the body.

    A refused, broken or short transfer raises :class:`MissingDataError`; the last two say
    how many bytes arrived (``got N of M bytes``). ``timeout`` is in seconds per socket operation.
    """
    try:
        response = urllib.request.urlopen(entry.url, timeout=timeout)
    except (OSError, http.client.HTTPException) as err:
        raise MissingDataError(f"{entry.name}: download failed ({err}); {how}") from err
    with response:
        total = _expected_size(entry, response, how)
        try:
            digest = _copy(response, out, total, entry.filename)
        except (OSError, http.client.HTTPException) as err:
            raise MissingDataError(f"{entry.name}: download of {entry.filename} broke off, "
                                   f"{_got(out.tell(), total)} ({err}); nothing was saved; {how}") from err
    if total and out.tell() < total:
        raise MissingDataError(f"{entry.name}: download of {entry.filename} was cut short, "
                               f"{_got(out.tell(), total)}; nothing was saved, run again to retry or {how}")
    return digest


def _download(entry: RemoteFile, target: Path, how: str, timeout: float) -> None:
    """Download ``entry`` to ``target`` through a ``.part`` file, verified before the rename.

    The size and SHA-256 (computed while streaming) are checked before the file gets its
    final name; a mismatch raises :class:`ChecksumError` and nothing is kept. The verified
    file's digest is remembered, so the next :func:`fetch` does not hash it again.
    """
    with _part_file(target) as out:
        digest = _transfer(entry, out, how, timeout)
        problem = _size_problem(entry, out.tell()) or _digest_problem(entry, digest)
        if problem:
            raise ChecksumError(f"{entry.name}: {entry.filename} {problem}; "
                                f"the download was discarded, try again or {how}")
    _remember(_marker(target), _stamp(entry, target.stat()))


# --- fetch --------------------------------------------------------------------------------------

def _offline_missing(entry: RemoteFile, how: str) -> MissingDataError:
    """The error for a file that is not on disk in an offline run."""
    return MissingDataError(f"{entry.name}: {entry.filename} is not on disk and this run is offline; {how}")


def _user_copy(entry: RemoteFile, path: Path) -> Path:
    """``path`` (in the user's data directory) once verified; a bad copy raises :class:`ChecksumError`
    and is left untouched."""
    problem = _verify(entry, path, _user_marker(path))
    if problem:
        raise ChecksumError(f"{entry.name}: {path} in the data directory {problem}; it was left untouched. "
                            f"Replace it with a good copy from {entry.url} (licence: {entry.licence}), "
                            f"or move it away so that the file is downloaded into the cache")
    return path


def _cached_copy_ok(entry: RemoteFile, target: Path, offline: bool, how: str) -> bool:
    """True when the cached ``target`` is verified, False when there is none.

    A corrupt copy is deleted and reported: a warning before it is downloaded again, or,
    offline, a :class:`MissingDataError` saying so and how to get a good copy.
    """
    if not target.is_file():
        return False
    problem = _verify(entry, target, _marker(target))
    if problem is None:
        return True
    target.unlink()
    if offline:
        raise MissingDataError(f"{entry.name}: the cached copy {target} was corrupt ({problem}) and has been "
                               f"deleted; this run is offline, so {how}")
    warnings.warn(f"{entry.name}: the cached copy {target} was corrupt ({problem}); "
                  "deleted it, downloading a fresh copy", stacklevel=3)
    return False


def fetch(name: str, data_dir: str | os.PathLike | None = None, offline: bool = False,
          timeout: float = 60.0) -> Path:
    """Return a verified local path to the registry file ``name``.

    Order: ``<data_dir>/<filename>`` (a copy the user already has), then the cache,
    then a download (skipped when ``offline``). Every file is checked against the registry's
    size and SHA-256 before it is returned (see the module docstring); ``timeout`` is in
    seconds per network operation. Several processes may fetch the same file at once: one
    downloads, the others wait for it and use its verified copy.
    """
    entry = lookup(name)
    root = config.data_dir(data_dir)
    if root is not None and (root / entry.filename).is_file():
        return _user_copy(entry, root / entry.filename)
    target = config.cache_dir() / "downloads" / entry.filename
    with contextlib.suppress(OSError):  # a missing file has no stat, and is not remembered
        if _is_remembered(_marker(target), _stamp(entry, target.stat())):
            return target
    how = (f"download it from {entry.url} (licence: {entry.licence}) and put it in "
           f"{target.parent} or in the folder named by ${config.DATA_ENV}")
    if offline and not target.is_file():
        raise _offline_missing(entry, how)
    with _locked(target):
        if _cached_copy_ok(entry, target, offline, how):
            return target
        if offline:
            raise _offline_missing(entry, how)
        _download(entry, target, how, timeout)
    return target


# --- extract ------------------------------------------------------------------------------------

def _archive_kind(archive: Path) -> str:
    """``"zip"`` or ``"tar"``: from the name's suffix, else from the content; anything else raises."""
    name = archive.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise ArchiveError(f"{archive}: not a tar or zip archive")


def _unpack(archive: Path, kind: str, folder: Path) -> None:
    """Unpack every member of ``archive`` into ``folder`` (tar members through the ``data`` filter)."""
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(folder)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(folder, filter="data")


def _merge(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``; folders present on both sides are merged entry by entry."""
    if src.is_dir() and dst.is_dir() and not src.is_symlink() and not dst.is_symlink():
        for child in src.iterdir():
            _merge(child, dst / child.name)
    else:
        os.replace(src, dst)


def _move_into_place(staging: Path, dest: Path, marker: Path) -> None:
    """Make ``staging``'s contents appear in ``dest``, the extraction marker last.

    A missing ``dest`` is one rename of the whole folder, marker included; an existing one
    (another archive unpacked there before) receives the entries one by one.
    """
    if not dest.exists():
        (staging / marker.name).touch()
        os.replace(staging, dest)
        return
    for child in staging.iterdir():
        _merge(child, dest / child.name)
    marker.touch()


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a ``.tar*``/``.tgz``/``.zip`` archive into ``dest`` (kept if already there).

    The archive is unpacked into a temporary folder beside ``dest`` and then moved into
    place; the marker ``.extracted-<archive name>`` is written last. A truncated or corrupt
    archive raises :class:`ArchiveError` naming it, and leaves neither new files in ``dest``
    nor a marker, so the next call tries again.
    """
    archive, dest = Path(archive), Path(dest)
    marker = dest / f".extracted-{archive.name}"
    if marker.exists():
        return dest
    kind = _archive_kind(archive)
    with _locked(dest):
        if marker.exists():
            return dest
        staging = _unique_sibling(dest, ".partial")
        try:
            staging.mkdir()
            _unpack(archive, kind, staging)
            _move_into_place(staging, dest, marker)
        except UNPACK_ERRORS as err:
            raise ArchiveError(f"{archive}: cannot be unpacked into {dest} ({type(err).__name__}: {err}); "
                               "nothing was marked as extracted, so the next run tries again. If the "
                               "archive is truncated or corrupt, delete it and fetch it again") from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest
