"""One registry of every external file the book may download, and the code that fetches it.

Explained in the *Getting started* chapter (``notebooks/00_getting_started.ipynb``);
the datasets it lists are described in the *Datasets* chapter, and ``python -m
tools.fetch_data --plan`` lists what the full profile needs.

Each :class:`RemoteFile` names one or more URLs for the same bytes (the first is the
official host, the others mirrors tried in order), its SHA-256, its size and its licence.
:func:`fetch` looks for the file in the data directory first (``$CVBOOK_DATA``, a local
copy), then in the cache (``$CVBOOK_CACHE``), and only then downloads it with a progress bar.
Every file it returns has been verified: size first, then SHA-256, computed once and
remembered in a ``<file>.sha256-ok`` marker. The marker holds the file's size, mtime,
inode and ctime; a file rewritten in place changes its ctime even when its size and mtime
are put back, so it is hashed again (the marker is written only once the file's ctime is
older than the clock's tick, so a change right after it still shows). ``tools.fetch_data
--check`` re-hashes everything regardless. A corrupt cached copy is reported and downloaded
again; a corrupt copy in the data directory is left alone and raises :class:`ChecksumError`;
a good copy placed by hand in a read-only cache is verified and used.

Downloads go to a ``.part`` file under a lock shared by every process using the cache, and
reach their final name only once the whole file has the registry's size and SHA-256. A
transfer that breaks off keeps its ``.part``; the next fetch (in this process or a later one,
after a crash or a kill) resumes it with an HTTP ``Range`` request when the server answers
``206``, and starts again when it answers ``200``. A mirror's bytes are trusted only after
that check: a mirror serving different bytes fails it, its file is discarded and the next
URL is tried. :func:`extract` unpacks beside the destination and moves the result into
place, so a corrupt archive leaves nothing half-extracted; the ``.partial`` folder of a
killed extraction is removed by the next one. Offline, a missing file is one clear error
that says what is missing and how to get it.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import secrets
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
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
#: A file's ctime must be this much older than the clock (ns) before its verification is
#: written down: file timestamps advance in coarse ticks (a few ms), and a change made within
#: the same tick as the verification would otherwise keep the recorded ctime.
SETTLE_NS = 50_000_000

# Mirrors of the registry's datasets: other URLs documented to serve the same file, tried in
# order after an entry's own URL. A mirror's bytes are trusted only once they pass the entry's
# size and SHA-256 check; a mirror serving anything else fails it and the next URL is tried.
MIRRORS: dict[str, tuple[str, ...]] = {
    # torchvision's OxfordIIITPet (torchvision 0.29, datasets/oxford_iiit_pet.py) downloads the
    # same two archives from the Oxford VGG group's older path. (fastai's oxford-iiit-pet.tgz is
    # a different, repacked archive: not a mirror.)
    "pets-images": ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",),
    "pets-annotations": ("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",),
    # torchvision's VOC datasets (torchvision 0.29, datasets/voc.py) download the 2012 train+val
    # tar from thor.robots.ox.ac.uk; darknet/YOLO's VOC scripts and d2l (sha1 4e443f8a...) use
    # the copies at pjreddie.com and on d2l's S3 bucket, under the same file name.
    "voc2012-trainval": (
        "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",
        "https://d2l-data.s3-accelerate.amazonaws.com/VOCtrainval_11-May-2012.tar",
    ),
    # MNIST: torchvision's first MNIST mirror (torchvision 0.29, datasets/mnist.py).
    **{f"mnist-{stem}": (f"https://ossci-datasets.s3.amazonaws.com/mnist/{stem}-idx{dims}-ubyte.gz",)
       for stem, dims in (("train-images", 3), ("train-labels", 1), ("t10k-images", 3), ("t10k-labels", 1))},
    # MVTec AD: no mirror found that serves the same archive. anomalib uses the registry's
    # mydrive.ch URL; Hugging Face's MVTec/mvtec-ad holds one archive per category (different
    # files), and MVTec's own page hands out per-visitor links.
}


@dataclass(frozen=True)
class RemoteFile:
    """An external file: where it lives, what it must hash to, and under which licence.

    ``url`` is the official location; ``mirrors`` are further URLs for the same bytes, tried
    in order (see :attr:`urls`). ``size`` is in bytes; 0 means unknown (then only the SHA-256
    is checked).
    """

    name: str
    url: str
    sha256: str
    size: int
    licence: str
    filename: str
    description: str = ""
    mirrors: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        if isinstance(self.mirrors, str):
            raise TypeError(f"{self.name}: mirrors must be a tuple of URLs, not one string")

    @property
    def urls(self) -> tuple[str, ...]:
        """Every URL for this file, the official one first, without repeats."""
        return tuple(dict.fromkeys((self.url, *self.mirrors)))


REGISTRY: dict[str, RemoteFile] = {}


def register(entry: RemoteFile) -> RemoteFile:
    """Add ``entry`` to :data:`REGISTRY`, with the mirrors :data:`MIRRORS` lists for its name,
    and return it; a second, different entry with the same name is an error."""
    known = MIRRORS.get(entry.name, ())
    if known:
        entry = replace(entry, mirrors=tuple(dict.fromkeys((*entry.mirrors, *known))))
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

#: Stamps verified in this process, keyed by path: a read-only cache or data directory, where no
#: marker can be written, is hashed once per process rather than on every fetch.
_VERIFIED: dict[str, str] = {}


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
    """The marker text for a verified file with ``stat``: expected digest, size (bytes), mtime,
    inode and ctime (ns). Writing to a file changes its ctime, which no program can set back."""
    return f"{entry.sha256} {stat.st_size} {stat.st_mtime_ns} {stat.st_ino} {stat.st_ctime_ns}\n"


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


def _is_remembered(path: Path, marker: Path | None, stamp: str) -> bool:
    """True when ``path`` with ``stamp`` was verified: in this process, or as ``marker`` records."""
    if _VERIFIED.get(str(path)) == stamp:
        return True
    try:
        return marker is not None and marker.read_text() == stamp
    except OSError:
        return False


def _settle(stat: os.stat_result) -> None:
    """Wait until ``stat``'s ctime is :data:`SETTLE_NS` in the past, so that any later change to
    the file gets a ctime different from the one about to be recorded (at most 50 ms, after a
    download or a copy made just now; files written earlier pass at once)."""
    wait = SETTLE_NS - (time.time_ns() - stat.st_ctime_ns)
    if wait > 0:
        time.sleep(wait / 1e9)


def _remember(path: Path, marker: Path | None, stamp: str) -> None:
    """Record that ``path`` with ``stamp`` is verified: in this process, and in ``marker`` (best
    effort, since a missing marker only costs a re-hash in the next process)."""
    _VERIFIED[str(path)] = stamp
    if marker is None:
        return
    with contextlib.suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(stamp)


def _verify(entry: RemoteFile, path: Path, marker: Path | None) -> str | None:
    """None when ``path`` matches ``entry`` (size first, then SHA-256, hashed only when
    ``marker`` or this process does not already vouch for it); otherwise what is wrong."""
    stat = path.stat()
    stamp = _stamp(entry, stat)
    if _is_remembered(path, marker, stamp):
        return None
    _VERIFIED.pop(str(path), None)
    _settle(stat)
    problem = _size_problem(entry, stat.st_size) or _digest_problem(entry, sha256_of(path))
    if problem is None and _stamp(entry, path.stat()) == stamp:  # unchanged while it was hashed
        _remember(path, marker, stamp)
    return problem


def verify_file(entry: RemoteFile, path: str | os.PathLike) -> str | None:
    """Hash ``path`` in full and compare it with ``entry`` (size, then SHA-256), ignoring any
    remembered verification; None when it matches, else what is wrong. Used by ``--check``."""
    path = Path(path)
    _VERIFIED.pop(str(path), None)
    return _size_problem(entry, path.stat().st_size) or _digest_problem(entry, sha256_of(path))


def is_verified(entry: RemoteFile, path: str | os.PathLike) -> bool:
    """True when ``path`` exists and a verification of it, with its current size, mtime, inode
    and ctime, is remembered; hashes nothing (``tools.fetch_data --plan`` uses it)."""
    path = Path(path)
    try:
        stamp = _stamp(entry, path.stat())
    except OSError:
        return False
    marker = _marker(path) if downloads_dir() in path.parents else _user_marker(path)
    return _is_remembered(path, marker, stamp)


# --- the cache folder: lock, partial downloads ---------------------------------------------------

def downloads_dir() -> Path:
    """The cache folder that downloads go to: ``$CVBOOK_CACHE/downloads``."""
    return config.cache_dir() / "downloads"


def _unwritable(folder: Path, err: OSError) -> OSError:
    """The error for a cache folder that cannot be written: it names the folder and ``$CVBOOK_CACHE``."""
    return type(err)(f"cannot write to the cache folder {folder} ({err.strerror or err}); "
                     f"set ${config.CACHE_ENV} to a writable folder")


def _unique_sibling(path: Path, suffix: str) -> Path:
    """A fresh name beside ``path``: ``<name>.<pid>.<random hex><suffix>``."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _stale_siblings(path: Path, suffix: str) -> list[Path]:
    """Leftovers ``<name>.<pid>.<hex><suffix>`` beside ``path``. Called under :func:`_locked`,
    so their writers have stopped: each took the same lock, which a killed process releases."""
    pattern = re.compile(re.escape(path.name) + r"\.\d+\.[0-9a-f]{8}" + re.escape(suffix))
    with contextlib.suppress(OSError):
        return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))
    return []


def _open_lock(path: Path) -> IO[bytes]:
    """Open (creating the folder) the lock file ``.<name>.lock`` beside ``path``; a folder that
    cannot be written raises :func:`_unwritable`."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / f".{path.name}.lock", "ab")
    except OSError as err:
        raise _unwritable(folder, err) from err


@contextlib.contextmanager
def _hold(handle: IO[bytes], path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the open lock file ``handle`` (for ``path``) until the block
    ends, then close it. Without ``fcntl`` (Windows) no lock is taken and only the atomic
    renames protect the files."""
    with handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another process working on {path} ...", file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock, shared by every process, on ``.<name>.lock`` beside ``path``."""
    with _hold(_open_lock(path), path):
        yield


def _claim_part(target: Path) -> Path:
    """Under the lock: a ``.part`` file of this process for ``target``, holding the bytes of the
    largest partial download a stopped process left (renamed, so it is resumed) or empty; the
    other leftovers are deleted. Without ``fcntl`` (Windows) there is no lock to prove that a
    leftover's writer has stopped, so leftovers are neither reused nor deleted."""
    leftovers = _stale_siblings(target, ".part") if fcntl is not None else []
    part = _unique_sibling(target, ".part")
    keep = max(leftovers, key=lambda p: p.stat().st_size, default=None)
    for old in leftovers:
        if old != keep:
            old.unlink(missing_ok=True)
    try:
        if keep is not None:
            os.replace(keep, part)
        else:
            open(part, "xb").close()
    except OSError as err:
        raise _unwritable(target.parent, err) from err
    return part


# --- download -----------------------------------------------------------------------------------

class _RangeIgnored(Exception):
    """A ``206`` answer whose ``Content-Range`` does not start where the ``.part`` file ends."""


def _got(received: int, total: int | None) -> str:
    """``got N of M bytes`` (``got N bytes`` when the total is unknown)."""
    return f"got {received} of {total} bytes" if total else f"got {received} bytes"


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """GET ``url``, asking for the bytes from ``offset`` on when ``offset`` > 0."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _start_of(response: http.client.HTTPResponse, offset: int, entry: RemoteFile) -> int:
    """Where ``response``'s body starts in the file: ``offset`` for a ``206`` whose
    ``Content-Range`` says so (and whose total is the registry's size), 0 for a ``200``."""
    if response.status != 206:
        return 0
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match or int(match[1]) != offset or (match[2] != "*" and entry.size and int(match[2]) != entry.size):
        raise _RangeIgnored(response.headers.get("Content-Range"))
    return offset


def _connect(entry: RemoteFile, url: str, offset: int, how: str,
             timeout: float) -> tuple[http.client.HTTPResponse, int]:
    """The response for ``url`` and where its body starts: resumed at ``offset`` when the
    server honours the range, else from byte 0. Refused requests raise :class:`MissingDataError`."""
    try:
        try:
            response = _open(url, offset, timeout)
            try:
                return response, _start_of(response, offset, entry)
            except _RangeIgnored:
                response.close()
        except urllib.error.HTTPError as err:
            if not (offset and err.code == 416):  # 416: the range is not satisfiable; start again
                raise
        return _open(url, 0, timeout), 0
    except (OSError, http.client.HTTPException) as err:
        raise MissingDataError(f"{entry.name}: download failed from {url} ({err}); {how}") from err


def _check_announced(entry: RemoteFile, url: str, response: http.client.HTTPResponse,
                     start: int, how: str) -> int | None:
    """Bytes the whole file should have: ``start`` plus the server's Content-Length, else the
    registry size. A total that differs from the registry's size raises :class:`ChecksumError`
    before the body is read: the server offers a different file."""
    announced = int(response.headers.get("Content-Length") or 0)
    total = start + announced if announced else 0
    if total and entry.size and total != entry.size:
        raise ChecksumError(f"{entry.name}: {url} serves {total} bytes but the registry records "
                            f"{entry.size} for {entry.filename}; nothing was downloaded; {how}")
    return total or entry.size or None


def _prefix_digest(out: IO[bytes], start: int) -> hashlib._Hash:
    """SHA-256 state over the first ``start`` bytes of ``out``, which is left positioned at ``start``
    and cut there (bytes past it are dropped)."""
    digest = hashlib.sha256()
    out.seek(0)
    remaining = start
    while remaining:
        chunk = out.read(min(CHUNK, remaining))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)
    out.seek(start)
    out.truncate(start)
    return digest


def _copy(response: http.client.HTTPResponse, out: IO[bytes], digest: hashlib._Hash,
          total: int | None, desc: str) -> None:
    """Append the response body to ``out`` and ``digest``, with a progress bar (bytes) that
    starts at what ``out`` already holds."""
    with tqdm(total=total, initial=out.tell(), unit="B", unit_scale=True, desc=desc,
              disable=not config.progress_enabled()) as bar:
        for chunk in iter(lambda: response.read1(CHUNK), b""):  # what has arrived, up to 1 MiB
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))


def _transfer(entry: RemoteFile, url: str, part: Path, how: str, timeout: float) -> None:
    """Bring ``part`` to the whole file from ``url``, resuming from its current length when the
    server honours a ``Range`` request, and check size and SHA-256 of the whole file.

    A refused, broken or short transfer raises :class:`MissingDataError` and keeps what
    arrived in ``part`` (the last two say ``got N of M bytes``); a wrong size or digest raises
    :class:`ChecksumError` (the caller then discards ``part``). ``timeout`` is in seconds per
    socket operation.
    """
    offset = part.stat().st_size
    if entry.size and offset > entry.size:
        offset = 0
    response, start = _connect(entry, url, offset, how, timeout)
    with response, open(part, "r+b", buffering=0) as out:  # unbuffered: a kill loses nothing received
        total = _check_announced(entry, url, response, start, how)
        digest = _prefix_digest(out, start)
        try:
            _copy(response, out, digest, total, entry.filename)
        except (OSError, http.client.HTTPException) as err:
            raise MissingDataError(f"{entry.name}: download of {entry.filename} from {url} broke off, "
                                   f"{_got(out.tell(), total)} ({err}); kept in {part.name} for the next "
                                   f"try to resume; {how}") from err
        received = out.tell()
    if total and received < total:
        raise MissingDataError(f"{entry.name}: download of {entry.filename} from {url} was cut short, "
                               f"{_got(received, total)}; kept in {part.name}, run again to resume or {how}")
    problem = _size_problem(entry, received) or _digest_problem(entry, digest.hexdigest())
    if problem:
        raise ChecksumError(f"{entry.name}: {entry.filename} {problem}; the download was discarded "
                            f"(served by {url}), try again or {how}")


def _all_failed(entry: RemoteFile, failures: list[Exception], how: str) -> Exception:
    """One error for a file that no URL delivered: the only failure itself, or a list of them
    (a :class:`ChecksumError` when every URL served wrong bytes)."""
    if len(failures) == 1:
        return failures[0]
    def short(err: Exception) -> str:  # each failure without the name and the advice repeated
        text = str(err).removeprefix(f"{entry.name}: ")
        return text.replace(f", run again to resume or {how}", "").replace(f", try again or {how}", "") \
            .replace(f"; {how}", "")

    listed = "; ".join(f"({i}) {short(err)}" for i, err in enumerate(failures, 1))
    kind = ChecksumError if all(isinstance(e, ChecksumError) for e in failures) else MissingDataError
    return kind(f"{entry.name}: none of its {len(failures)} URLs delivered {entry.filename}: {listed}; {how}")


def _download(entry: RemoteFile, target: Path, how: str, timeout: float) -> str:
    """Download ``entry`` to ``target``, trying its URLs in order; returns the one that served it.

    Under the lock (held by the caller): the bytes go to a ``.part`` file (one a stopped process
    left is resumed), which gets the final name only once the whole file has the registry's
    size and SHA-256. A URL that breaks off leaves its bytes for the next URL or the next run
    to resume; one that serves wrong bytes has them discarded. The verified file's digest is
    remembered, so the next :func:`fetch` does not hash it again.
    """
    part = _claim_part(target)
    failures: list[Exception] = []
    try:
        for url in entry.urls:
            try:
                _transfer(entry, url, part, how, timeout)
            except ChecksumError as err:
                part.write_bytes(b"")
                failures.append(err)
            except MissingDataError as err:
                failures.append(err)
            else:
                os.replace(part, target)
                _settle(target.stat())
                _remember(target, _marker(target), _stamp(entry, target.stat()))
                return url
    finally:
        if part.exists() and part.stat().st_size == 0:
            part.unlink()
    raise _all_failed(entry, failures, how)


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


def _read_only_copy(entry: RemoteFile, target: Path, err: OSError) -> Path:
    """``target`` in a cache folder that cannot be written (``err``), once verified; a bad copy
    raises :class:`ChecksumError`, since it can be neither deleted nor replaced there."""
    problem = _verify(entry, target, _marker(target))
    if problem:
        raise ChecksumError(f"{entry.name}: {target} {problem}, and the cache folder cannot be written "
                            f"({err}), so it cannot be replaced; put a good copy from {entry.url} there, "
                            f"or set ${config.CACHE_ENV} to a writable folder") from err
    return target


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
                  "deleted it, downloading a fresh copy", stacklevel=4)
    return False


def fetch_with_source(name: str, data_dir: str | os.PathLike | None = None, offline: bool = False,
                      timeout: float = 60.0) -> tuple[Path, str | None]:
    """:func:`fetch`, also returning the URL that served the file (None when it was on disk)."""
    entry = lookup(name)
    root = config.data_dir(data_dir)
    if root is not None and (root / entry.filename).is_file():
        return _user_copy(entry, root / entry.filename), None
    target = downloads_dir() / entry.filename
    with contextlib.suppress(OSError):  # a missing file has no stat, and is not remembered
        if _is_remembered(target, _marker(target), _stamp(entry, target.stat())):
            return target, None
    how = (f"download it from {entry.url} (licence: {entry.licence}) and put it in "
           f"{target.parent} or in the folder named by ${config.DATA_ENV}")
    if offline and not target.is_file():
        raise _offline_missing(entry, how)
    try:
        lock = _open_lock(target)
    except OSError as err:
        if target.is_file():
            return _read_only_copy(entry, target, err), None
        raise
    with _hold(lock, target):
        if _cached_copy_ok(entry, target, offline, how):
            return target, None
        if offline:
            raise _offline_missing(entry, how)
        url = _download(entry, target, how, timeout)
    if url != entry.url:
        print(f"{entry.name}: downloaded {entry.filename} from the mirror {url}", file=sys.stderr)
    return target, url


def fetch(name: str, data_dir: str | os.PathLike | None = None, offline: bool = False,
          timeout: float = 60.0) -> Path:
    """Return a verified local path to the registry file ``name``.

    Order: ``<data_dir>/<filename>`` (a copy the user already has), then the cache,
    then a download (skipped when ``offline``) from each of the entry's URLs in turn,
    resuming a partial download when the server allows it. Every file is checked against
    the registry's size and SHA-256 before it is returned (see the module docstring);
    ``timeout`` is in seconds per network operation. Several processes may fetch the same
    file at once: one downloads, the others wait for it and use its verified copy. A file
    that came from a mirror says so on stderr.
    """
    return fetch_with_source(name, data_dir, offline, timeout)[0]


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

    The archive is unpacked into a temporary ``.partial`` folder beside ``dest`` and then
    moved into place; the marker ``.extracted-<archive name>`` is written last. The
    ``.partial`` folders of extractions that were killed are removed first. A truncated or corrupt
    archive raises :class:`ArchiveError` naming it, and leaves neither new files in ``dest``
    nor a marker, so the next call tries again.
    """
    archive, dest = Path(archive), Path(dest)
    marker = dest / f".extracted-{archive.name}"
    if marker.exists():
        return dest
    kind = _archive_kind(archive)
    with _locked(dest):
        for leftover in _stale_siblings(dest, ".partial") if fcntl is not None else []:
            shutil.rmtree(leftover, ignore_errors=True)  # a killed extraction's half-unpacked folder
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
