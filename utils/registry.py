"""One registry of every external file the book may download, and the code that fetches it.

Explained in the *Getting started* chapter (``notebooks/00_getting_started.ipynb``);
the datasets it lists are described in the *Datasets* chapter.

Each :class:`RemoteFile` names a URL, its SHA-256, its size and its licence. :func:`fetch`
looks for the file in the data directory first (``$CVBOOK_DATA``, a local copy),
then in the cache (``$CVBOOK_CACHE``), and only then downloads it with a progress bar,
verifies the checksum, deletes the file and raises on a mismatch. Offline, a missing
file is one clear error that says what is missing and how to get it.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm  # plain text bar: no ipywidgets needed in notebooks

from . import config

CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """An external file: where it lives, what it must hash to, and under which licence."""

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
    """A downloaded file does not hash to the registry's SHA-256; the file was deleted."""


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


def _download(url: str, target: Path, size_hint: int, timeout: float) -> None:
    """Stream ``url`` into ``target`` with a progress bar (bytes)."""
    partial = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
        total = int(response.headers.get("Content-Length") or size_hint or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
    partial.replace(target)


def fetch(name: str, data_dir: str | os.PathLike | None = None, offline: bool = False,
          timeout: float = 60.0) -> Path:
    """Return a verified local path to the registry file ``name``.

    Order: ``<data_dir>/<filename>`` (a copy the user already has), then the cache,
    then a download (skipped when ``offline``). Downloads are verified against the
    registry's SHA-256; a mismatch deletes the file and raises :class:`ChecksumError`.
    """
    entry = lookup(name)
    root = config.data_dir(data_dir)
    if root is not None and (root / entry.filename).is_file():
        return root / entry.filename
    target = config.cache_dir() / "downloads" / entry.filename
    if target.is_file():
        return target
    how = (f"download it from {entry.url} (licence: {entry.licence}) and put it in "
           f"{target.parent} or in the folder named by ${config.DATA_ENV}")
    if offline:
        raise MissingDataError(f"{entry.name}: {entry.filename} is not on disk and this run is offline; {how}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download(entry.url, target, entry.size, timeout)
    except (urllib.error.URLError, OSError) as err:
        target.with_name(target.name + ".part").unlink(missing_ok=True)
        raise MissingDataError(f"{entry.name}: download failed ({err}); {how}") from err
    actual = sha256_of(target)
    if actual != entry.sha256:
        target.unlink()
        raise ChecksumError(f"{entry.name}: {entry.filename} has sha256 {actual}, expected "
                            f"{entry.sha256}; the file was deleted, try again or {how}")
    return target


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a ``.tar*``/``.tgz``/``.zip`` archive into ``dest`` (kept if already there)."""
    archive, dest = Path(archive), Path(dest)
    marker = dest / f".extracted-{archive.name}"
    if marker.exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    else:
        raise ValueError(f"{archive}: not a tar or zip archive")
    marker.touch()
    return dest

