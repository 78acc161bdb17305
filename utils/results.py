"""Measured numbers beside the papers' numbers; the book's scoreboard page is built from them.

Every chapter calls :func:`record` for each claim it checks. Measured values are stored to
:data:`SIGNIFICANT_DIGITS` significant digits: enough for every comparison the book makes, and
few enough that re-running a notebook on another machine (other thread counts, other BLAS) leaves
the tracked results files unchanged. AUROC, accuracy and mAP are recorded in percent, as the papers
print them. Rows land in
``results/<chapter>.<profile>.json`` (re-recording a claim replaces its row), and
``python -m tools.scoreboard`` turns all files into ``book/scoreboard.md``.

Several processes may record into one file at once (a notebook test beside a book build): each
write holds an exclusive lock on a sibling ``.<file>.lock`` and replaces the file atomically
(temporary file in the same folder, then :func:`os.replace`), so a reader never sees half a file
and no row is lost. ``tools.run_notebooks`` points ``$CVBOOK_RESULTS`` at a staging folder and
copies the chapter's file into ``results/`` with :func:`publish` only when the whole notebook ran.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: writes stay atomic, but two concurrent writers are not serialised
    fcntl = None

from .config import Run, get_profile

RESULTS_ENV = "CVBOOK_RESULTS"
SIGNIFICANT_DIGITS = 4


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (0 stays 0)."""
    return float(f"{value:.{digits}g}")


def results_dir() -> Path:
    """``results/`` at the repository root, or ``$CVBOOK_RESULTS`` when set (tests use it)."""
    default = Path(__file__).resolve().parent.parent / "results"
    return Path(os.environ.get(RESULTS_ENV) or default)


def status_of(ours: float, paper: float | None, profile: str, tolerance: float | None,
              profile_independent: bool = False) -> str:
    """How a measurement compares with the paper.

    ``ours only`` without a paper number; ``not comparable`` in the tiny profile (different
    data and backbone) unless the value is ``profile_independent`` (e.g. a count by formula,
    the same in every profile); otherwise ``reproduced`` when within ``tolerance`` (default
    2% of the paper's value) and ``gap`` when not.
    """
    if paper is None:
        return "ours only"
    if profile != "full" and not profile_independent:
        return "not comparable (tiny profile)"
    allowed = 0.02 * abs(paper) if tolerance is None else tolerance
    return "reproduced" if abs(ours - paper) <= allowed else "gap"


def record(chapter: str, claim: str, ours: float, paper: float | None = None, unit: str | None = None,
           profile: str = "tiny", note: str = "", tolerance: float | None = None, run: Run | None = None,
           profile_independent: bool = False) -> dict:
    """Store one measured value (and the paper's, when it has one) for ``chapter``'s ``claim``.

    ``chapter`` is the notebook's stem (e.g. ``"02_cam"``). Chapters pass ``run=RUN``, which
    sets ``profile`` from the run; in a smoke run (:attr:`utils.config.Run.smoke`) nothing is
    written and the measured value is not checked (it comes from random weights and a handful of
    images, and may even be NaN). ``profile_independent``: the value does not depend on the
    profile (a count by formula, a parameter count), so it is compared with the paper's in every
    profile. Returns the row.
    """
    if run is not None:
        profile = run.profile.name
    get_profile(profile)
    if not isinstance(chapter, str) or not re.fullmatch(r"[0-9]{2}_[A-Za-z0-9_]+", chapter):
        raise ValueError(f"chapter must be a notebook stem like '06_padim' (two digits, '_', letters, digits), "
                         f"got {chapter!r}")
    if not isinstance(claim, str) or not claim.strip():
        raise ValueError("claim must be a non-empty string")
    if paper is not None and not math.isfinite(float(paper)):
        raise ValueError(f"{chapter}/{claim}: the paper's value must be finite or None, got {paper}")
    ours = float(ours)
    if run is not None and run.smoke:  # random weights, a handful of images: a NaN is possible and means nothing
        return {"claim": claim, "ours": ours, "paper": paper, "unit": unit, "profile": profile, "note": note,
                "status": "smoke run: not recorded"}
    if not math.isfinite(ours):
        raise ValueError(f"{chapter}/{claim}: measured value must be finite, got {ours}")
    row = {"claim": claim, "ours": significant(ours), "paper": None if paper is None else float(paper),
           "unit": unit, "profile": profile, "note": note,
           "status": status_of(ours, paper, profile, tolerance, profile_independent)}
    path = results_dir() / f"{chapter}.{profile}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        rows = _read(path) if path.exists() else []
        rows = [r for r in rows if r["claim"] != claim] + [row]
        _write_atomically(path, (json.dumps(rows, indent=1) + "\n").encode())
    return row


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive cross-process lock for the results file ``path`` while the block runs.

    The lock is ``fcntl.flock`` on the sibling ``.<name>.lock`` (kept: deleting a lock file
    while another process waits on it would hand out two locks); the OS releases it when the
    process dies, so a killed writer never blocks the next one.
    """
    if fcntl is None:
        yield
        return
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step: a temporary file in the same folder, then
    :func:`os.replace`; the temporary file is removed if anything fails on the way."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(staged: Path, directory: Path | None = None) -> Path:
    """Copy the results file ``staged`` over its namesake in ``directory`` (default
    :func:`results_dir`) atomically and under that file's lock; return the destination.

    The staged file replaces the old one whole, so claims a chapter no longer records disappear.
    The file is checked first: a corrupt staged file raises and leaves ``directory`` unchanged.
    """
    _read(staged)
    directory = directory or results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / staged.name
    with locked(target), open(staged, "rb") as source:
        _write_atomically(target, source.read())
    return target


def withdraw(name: str, directory: Path | None = None) -> bool:
    """Delete the results file ``name`` (e.g. ``"02_cam.tiny.json"``) from ``directory`` under its
    lock, for a chapter whose complete run recorded nothing; return whether it existed."""
    directory = directory or results_dir()
    target = directory / name
    if not target.exists():
        return False
    with locked(target):
        target.unlink(missing_ok=True)
    return True


def _read(path: Path) -> list[dict]:
    """The rows of one results file; a corrupt file is an error that names it."""
    try:
        rows = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"results file {path} is not valid JSON ({err}); fix or delete it and re-run the "
                         "notebook that writes it") from err
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "claim" in r for r in rows):
        raise ValueError(f"results file {path} must hold a list of rows with a 'claim'")
    return rows


def load_all(directory: Path | None = None) -> dict[str, list[dict]]:
    """All recorded rows keyed by file stem (``<chapter>.<profile>``), sorted by name."""
    directory = directory or results_dir()
    return {p.name.removesuffix(".json"): _read(p) for p in sorted(directory.glob("*.json"))}
