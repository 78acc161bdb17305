"""Execute the chapter notebooks whose source or parameters changed since their last run.

Used by ``make book``. A **tiny** run executes a committed notebook and replaces it only when
the run succeeded; it stores in the notebook's metadata (``cvbook``) the SHA-256 of the cells'
sources, the profile and the seconds the run took (the book's pages read their runtimes from
there), and is repeated only when the source or profile changed, or with ``--force``.
A **full** run never touches the committed notebook: its executed copy goes to
``_build/full/`` and its numbers to ``results/<chapter>.full.json``.

    python -m tools.run_notebooks [--profile tiny|full] [--force] [notebooks ...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.config import DATA_ENV, PROGRESS_ENV, get_profile  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
FULL_OUTPUT = ROOT / "_build" / "full"
RUNS = ROOT / "_build" / "runs"  # tiny runs are written here first, then moved over the notebook
SKIP_TAGS = {"injected-parameters"}


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


def execute(path: Path, profile: str, output_dir: Path = FULL_OUTPUT) -> tuple[Path, float]:
    """Execute ``path`` with ``profile``; return where the executed notebook is and the seconds.

    ``tiny``: into a temporary file under ``_build/runs``, which replaces ``path`` only on success (a
    failed run leaves the committed notebook as it was); the data directory is ignored so
    that committed outputs never depend on it. ``full``: into ``output_dir/<name>``.
    """
    get_profile(profile)
    parameters = {"PROFILE": profile}
    if profile != "tiny":
        output_dir.mkdir(parents=True, exist_ok=True)
        target = output_dir / path.name
        return target, papermill_run(path, target, parameters, path.parent)
    RUNS.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".ipynb", prefix=f"{path.stem}.", dir=RUNS)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        seconds = papermill_run(path, tmp_path, parameters, path.parent, {DATA_ENV: None})
        nb = nbformat.read(tmp_path, as_version=4)
        strip_injected(nb)
        for key in ("input_path", "output_path"):  # keep machine paths out of the committed file
            nb.metadata.get("papermill", {})[key] = f"notebooks/{path.name}"
        nb.metadata.get("papermill", {}).pop("parameters", None)
        nb.metadata["cvbook"] = {"source_sha256": source_digest(nb), "profile": profile,
                                 "seconds": round(seconds, 1)}
        nbformat.write(nb, tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--force", action="store_true", help="execute even when nothing changed")
    args = parser.parse_args(argv)
    get_profile(args.profile)
    paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        if not path.is_file():
            print(f"error: no notebook at {path}", file=sys.stderr)
            return 2
    for path in paths:
        if args.profile == "tiny" and not args.force and not needs_run(path, "tiny"):
            print(f"up to date: {path.name}")
            continue
        where, seconds = execute(path, args.profile)
        print(f"executed {path.name} ({args.profile}) in {seconds:.0f} s -> {where.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
