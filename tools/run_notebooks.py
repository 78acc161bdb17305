"""Execute the chapter notebooks; a chapter's files change only when its whole notebook ran.

Used by ``make book``. Each notebook runs in its own folder ``_build/runs/<stem>.<pid>.<random>/``:
papermill writes the executed notebook there, and the kernel records its results there
(``$CVBOOK_RESULTS`` points at the folder's ``results/``). Only when every cell succeeded are
they moved into place, each file replaced in one step:

- **tiny** (what is committed): the executed notebook replaces the committed one, with the
  SHA-256 of the cells' sources, the profile and the seconds the run took in its metadata
  (``cvbook``; the book's pages read their runtimes from there); the run's
  ``<chapter>.tiny.json`` replaces the one in ``results/`` whole, so claims a chapter no longer
  checks disappear. A notebook is repeated only when its source or profile changed, or with
  ``--force``. The first failing notebook stops the run with its error (cell and traceback).
- **full** (the paper's setting): the committed notebook is never touched. The executed copy
  goes to ``_build/full/<name>`` (a failed one too, to read the failing cell), with the kernel's
  log beside it (``<stem>.log``), and the numbers to ``results/<chapter>.full.json`` (ignored by
  git), only on success. The run goes on past a chapter whose data or weights are missing
  (``MissingDataError``, ``MissingWeightsError``) and past a failed chapter, and ends with one
  table: chapter, status (ran / missing: what and how to get it / failed: cell and the error's
  last line), time; no traceback is printed. An interrupted full run prints the table of the
  chapters that finished.

A failed or interrupted run (Ctrl-C, SIGTERM) changes nothing in ``notebooks/`` or
``results/`` and removes its folder; folders a killed runner left behind (their PID is no
longer alive) are removed by the next run. Exit status: 0 when every notebook ran (or was up
to date), 1 when one did not, 2 for a bad argument (e.g. a path that is not a notebook),
128 + the signal's number when interrupted.

    python -m tools.run_notebooks [--profile tiny|full] [--force] [notebooks ...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils import results  # noqa: E402
from utils.config import DATA_ENV, PROGRESS_ENV, get_profile  # noqa: E402
from utils.models import MissingWeightsError  # noqa: E402
from utils.registry import MissingDataError  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
FULL_OUTPUT = ROOT / "_build" / "full"
RUNS = ROOT / "_build" / "runs"  # one folder per run: executed notebook + staged results
RUN_FOLDER = re.compile(r"\.(\d+)\.[A-Za-z0-9_]+$")  # <stem>.<pid>.<random>
SKIP_TAGS = {"injected-parameters"}
# A chapter whose cell raised one of these lacks data or weights (papermill gives the class name).
MISSING = {MissingDataError.__name__, MissingWeightsError.__name__}
TABLE_PAD = 60  # columns are padded to line up, up to this width; a longer cell runs on


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while the runner's handlers were installed."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Outcome:
    """How one notebook's run ended: ``status`` is ``ran``, ``missing`` or ``failed``;
    ``detail`` says what is missing (and how to get it) or where it failed; ``seconds``."""

    chapter: str
    status: str
    detail: str
    seconds: float


_signals = {"defer": 0, "pending": None}


def _on_signal(signum: int, frame: object) -> None:
    """Raise :class:`Interrupted`, or remember the signal while a commit is under way."""
    if _signals["defer"]:
        _signals["pending"] = signum
        return
    raise Interrupted(signum)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` (so ``finally`` blocks clean up);
    the previous handlers are restored afterwards."""
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold a signal that arrives inside the block until the block is done (a commit of a
    notebook and its results is never cut in half); it is raised on leaving."""
    _signals["defer"] += 1
    try:
        yield
    finally:
        _signals["defer"] -= 1
        pending, _signals["pending"] = _signals["pending"], None
        if pending is not None and not _signals["defer"]:
            raise Interrupted(pending)


def source_digest(nb: nbformat.NotebookNode) -> str:
    """SHA-256 of the cells' types and sources (papermill's injected parameters excluded)."""
    cells = [(c.cell_type, c.source) for c in nb.cells
             if not SKIP_TAGS & set(c.get("metadata", {}).get("tags", []))]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def needs_run(path: Path, profile: str) -> bool:
    """True when ``path`` was never executed by this tool, or its sources or profile changed."""
    nb = nbformat.read(path, as_version=4)
    stamp = nb.metadata.get("cvbook", {})
    return stamp.get("source_sha256") != source_digest(nb) or stamp.get("profile") != profile


def papermill_run(source: Path, target: Path, parameters: Mapping[str, object], cwd: Path,
                  env: Mapping[str, str | None] | None = None) -> float:
    """Execute ``source`` into ``target`` with papermill, the given parameters *always* injected;
    return the seconds taken. ``env`` sets (or, with ``None``, unsets) environment variables for
    the run. Raises papermill's ``PapermillExecutionError`` when a cell fails (``target`` then
    holds the failed run). Progress bars inside the notebook are silenced."""
    import papermill

    saved = dict(os.environ)
    for key, value in {PROGRESS_ENV: "0", **(env or {})}.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        start = time.perf_counter()
        papermill.execute_notebook(str(source), str(target), parameters=dict(parameters), cwd=str(cwd),
                                   kernel_name="python3", progress_bar=False)
        return time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)


def strip_injected(nb: nbformat.NotebookNode) -> None:
    """Remove papermill's injected-parameters cell (its values equal the committed defaults)."""
    nb.cells = [c for c in nb.cells if not SKIP_TAGS & set(c.get("metadata", {}).get("tags", []))]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_runs() -> list[Path]:
    """Delete the folders in :data:`RUNS` whose runner (the PID in the name) is dead: what a
    SIGKILLed or crashed run left behind. Returns the folders removed."""
    removed = []
    for folder in sorted(RUNS.glob("*")) if RUNS.is_dir() else []:
        match = RUN_FOLDER.search(folder.name)
        if folder.is_dir() and match and not pid_alive(int(match[1])):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def run_folder(stem: str) -> Iterator[Path]:
    """A fresh folder ``RUNS/<stem>.<pid>.<random>`` for one run, removed when the block ends
    (success, failure or interruption); stale folders of dead runners are removed first."""
    RUNS.mkdir(parents=True, exist_ok=True)
    remove_stale_runs()
    folder = Path(tempfile.mkdtemp(prefix=f"{stem}.{os.getpid()}.", dir=RUNS))
    try:
        yield folder
    finally:
        with signals_deferred():
            shutil.rmtree(folder, ignore_errors=True)


def replace_with(source: Path, target: Path) -> None:
    """Replace ``target`` by a copy of ``source`` in one step (a temporary file beside
    ``target``, then :func:`os.replace`), so no reader ever sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def commit_results(staging: Path, stem: str, profile: str) -> list[Path]:
    """Move the results a complete run recorded (``staging/*.json``) into :func:`results.results_dir`,
    each replacing its namesake; a chapter whose run recorded nothing loses its old
    ``<stem>.<profile>.json``. Returns the files written."""
    staged = sorted(staging.glob("*.json"))
    if f"{stem}.{profile}.json" not in {p.name for p in staged}:
        results.withdraw(f"{stem}.{profile}.json")
    return [results.publish(p) for p in staged]


def _stamp_tiny(executed: Path, path: Path, seconds: float) -> None:
    """Make the executed copy fit to commit: no injected cell, no machine paths, a ``cvbook`` stamp."""
    nb = nbformat.read(executed, as_version=4)
    strip_injected(nb)
    for key in ("input_path", "output_path"):  # keep machine paths out of the committed file
        nb.metadata.get("papermill", {})[key] = f"notebooks/{path.name}"
    nb.metadata.get("papermill", {}).pop("parameters", None)
    nb.metadata["cvbook"] = {"source_sha256": source_digest(nb), "profile": "tiny",
                             "seconds": round(seconds, 1)}
    nbformat.write(nb, executed)


@contextmanager
def _stderr_to(log: Path | None) -> Iterator[None]:
    """Send standard error (``sys.stderr`` and file descriptor 2: papermill's logging, the
    kernel's warnings) to ``log`` while the block runs; ``None`` leaves it alone."""
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log, "w") as handle, redirect_stderr(handle):
            os.dup2(handle.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def execute(path: Path, profile: str, output_dir: Path | None = None) -> tuple[Path, float]:
    """Execute ``path`` with ``profile``; return where the executed notebook is and the seconds.

    ``tiny``: the data directory is ignored (committed outputs never depend on it); on success
    the executed notebook replaces ``path`` and its results replace those in ``results/``.
    ``full``: the executed copy goes to ``output_dir/<name>`` (default ``_build/full``; also
    when a cell fails) with papermill's and the kernel's stderr in ``output_dir/<stem>.log``;
    results are published only on success. Either way a failure raises (papermill's
    ``PapermillExecutionError`` for a failing cell) and leaves ``results/`` unchanged.
    """
    get_profile(profile)
    output_dir = FULL_OUTPUT if output_dir is None else output_dir
    with run_folder(path.stem) as folder:
        staging, executed = folder / "results", folder / path.name
        staging.mkdir()
        env = {results.RESULTS_ENV: str(staging)} | ({DATA_ENV: None} if profile == "tiny" else {})
        log = None if profile == "tiny" else output_dir / f"{path.stem}.log"
        try:
            with _stderr_to(log):
                seconds = papermill_run(path, executed, {"PROFILE": profile}, path.parent, env)
        finally:
            if profile != "tiny" and executed.exists():
                with signals_deferred():
                    replace_with(executed, output_dir / path.name)
        if profile == "tiny":
            _stamp_tiny(executed, path, seconds)
        with signals_deferred():
            commit_results(staging, path.stem, profile)
            if profile == "tiny":
                replace_with(executed, path)
    return (path if profile == "tiny" else output_dir / path.name), seconds


def _last_line(text: object) -> str:
    """The last non-blank line of ``str(text)``, stripped (empty when there is none)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe_failure(err: Exception, path: Path) -> tuple[str, str]:
    """``(status, detail)`` for a run that raised ``err``: ``missing`` with the message of a
    missing-data or missing-weights error (what is missing, how to get it), or ``failed`` with
    the cell (0-based index in the committed notebook, Markdown cells included) and the error's
    last line."""
    from papermill.exceptions import PapermillExecutionError

    if not isinstance(err, PapermillExecutionError):
        return "failed", f"{type(err).__name__}: {_last_line(err) or '(no message)'}"
    if err.ename in MISSING:
        return "missing", " ".join(str(err.evalue).split())
    sources = [c.source for c in nbformat.read(path, as_version=4).cells]
    index = sources.index(err.source) if err.source in sources else err.cell_index
    return "failed", f"cell {index}: {err.ename}: {_last_line(err.evalue) or '(no message)'}"


def run_chapter(path: Path, profile: str) -> Outcome:
    """Execute one notebook and say how it ended (an interruption is not caught)."""
    start = time.perf_counter()
    try:
        execute(path, profile)
    except Exception as err:  # noqa: BLE001 - every failure becomes a row of the report
        status, detail = describe_failure(err, path)
        return Outcome(path.stem, status, detail, time.perf_counter() - start)
    return Outcome(path.stem, "ran", "", time.perf_counter() - start)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``1 h 02 min``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def report_table(outcomes: list[Outcome]) -> str:
    """One Markdown table: chapter | status | time (columns padded up to :data:`TABLE_PAD`)."""
    rows = [("chapter", "status", "time")] + [
        (o.chapter, o.status + (f": {o.detail}" if o.detail else ""), duration(o.seconds))
        for o in outcomes]
    widths = [min(TABLE_PAD, max(len(r[i]) for r in rows)) for i in range(3)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def check_paths(paths: list[Path]) -> str | None:
    """A one-line error for the first path that is not a readable notebook, else ``None``."""
    for path in paths:
        if not path.is_file():
            return f"no notebook at {path}"
        if path.suffix != ".ipynb":
            return f"{path} is not a notebook (expected a .ipynb file)"
        try:
            nbformat.read(path, as_version=4)
        except Exception as err:  # noqa: BLE001 - any reason it cannot be read is reported
            return f"{path} is not a readable notebook ({type(err).__name__}: {_last_line(err)})"
    return None


def run_all(paths: list[Path], profile: str, force: bool) -> int:
    """Run ``paths`` in order; the exit status (see the module docstring)."""
    if profile != "tiny":
        outcomes = []
        try:
            for path in paths:
                print(f"running {path.stem} ({profile} profile) ...", flush=True)
                outcomes.append(run_chapter(path, profile))
        except Interrupted:
            if outcomes:  # what finished before the interruption still counts
                print(report_table(outcomes))
            raise
        print(report_table(outcomes))
        ran = sum(o.status == "ran" for o in outcomes)
        print(f"{ran} of {len(outcomes)} chapters ran; executed copies and logs: "
              f"{_shown(FULL_OUTPUT)}")
        return 0 if ran == len(outcomes) else 1
    for path in paths:
        if not force and not needs_run(path, "tiny"):
            print(f"up to date: {path.name}")
            continue
        try:
            where, seconds = execute(path, profile)
        except Exception as err:  # noqa: BLE001 - reported without the runner's own traceback
            print(f"error: {path.name} failed; notebooks/ and results/ are unchanged\n{err}",
                  file=sys.stderr)
            return 1
        print(f"executed {path.name} ({profile}) in {seconds:.0f} s -> {_shown(where)}")
    return 0


def _shown(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    parser.add_argument("--profile", default="tiny", help="tiny (default) or full")
    parser.add_argument("--force", action="store_true", help="execute even when nothing changed")
    args = parser.parse_args(argv)
    try:
        get_profile(args.profile)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    problem = check_paths(paths)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with handle_signals():
        try:
            return run_all(paths, args.profile, args.force)
        except Interrupted as err:
            print(f"interrupted ({err}): the unfinished notebook changed nothing in notebooks/ or "
                  "results/", file=sys.stderr)
            return 128 + err.signum


if __name__ == "__main__":
    sys.exit(main())
